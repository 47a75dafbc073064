//! Commander configuration: a TOML file (unknown keys refused), overridden
//! by flags and `HASHFLEET_*` variables, checked before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// No config file is anywhere near this large.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The `serve` settings after merging file, environment and flags.
#[derive(Debug, Clone)]
pub struct CommanderConfig {
    pub data_dir: PathBuf,
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// How often a live session is challenged again.
    pub rechallenge: Duration,
    /// Most heartbeats written in one group commit.
    pub ingest_batch_max: usize,
}

impl CommanderConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        CommanderConfig {
            data_dir,
            quic_listen: "0.0.0.0:4433".parse().expect("valid"),
            http_listen: "127.0.0.1:8080".parse().expect("valid"),
            rechallenge: Duration::from_secs(300),
            ingest_batch_max: 2048,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!(
                "data_dir is empty: pass --data-dir DIR or set data_dir in the config file"
            );
        }
        if self.rechallenge < Duration::from_secs(1) {
            anyhow::bail!("rechallenge_secs must be at least 1");
        }
        if !(1..=100_000).contains(&self.ingest_batch_max) {
            anyhow::bail!("ingest_batch_max must be between 1 and 100000");
        }
        Ok(())
    }
}

/// The TOML file. Every field is optional; flags override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub quic_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub rechallenge_secs: Option<u64>,
    pub ingest_batch_max: Option<usize>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        if meta.len() > MAX_CONFIG_BYTES {
            anyhow::bail!(
                "config {} is {} bytes; a config file is at most 1 MiB",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies the file on top of defaults for `data_dir`.
    pub fn into_config(self, data_dir: Option<PathBuf>) -> anyhow::Result<CommanderConfig> {
        let data_dir = data_dir.or(self.data_dir).ok_or_else(|| {
            anyhow::anyhow!(
                "no data directory: pass --data-dir DIR or set data_dir in the config file"
            )
        })?;
        let mut c = CommanderConfig::new(data_dir);
        if let Some(a) = self.quic_listen {
            c.quic_listen = a;
        }
        if let Some(a) = self.http_listen {
            c.http_listen = a;
        }
        if let Some(s) = self.rechallenge_secs {
            c.rechallenge = Duration::from_secs(s);
        }
        if let Some(n) = self.ingest_batch_max {
            c.ingest_batch_max = n;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err =
            FileConfig::parse("data_dir = \"/x\"\nhttp_lisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("http_lisen"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let f = FileConfig::parse("data_dir = \"/from-file\"\nrechallenge_secs = 9\n").unwrap();
        let c = f.into_config(Some("/from-flag".into())).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from-flag"));
        assert_eq!(c.rechallenge, Duration::from_secs(9));
        assert!(c.validate().is_ok());
    }
}
