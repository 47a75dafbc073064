//! Commander configuration: a TOML file (unknown keys refused), overridden
//! by flags and `HASHFLEET_*` variables, checked before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::fleet::device::StatusRules;
use crate::fleet::retention::Retention;

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
    /// Timezones whose local days get daily buckets.
    pub timezones: Vec<Timezone>,
    pub status_rules: StatusRules,
    /// How often the fleet state is checkpointed to the store.
    pub checkpoint: Duration,
    /// Metrics rolled up per device type and tag.
    pub group_metrics: Vec<String>,
    /// Tags (by prefix) that get group rollups.
    pub group_tag_prefixes: Vec<String>,
    pub retention: Retention,
    /// Serve `/metrics` without a bearer token.
    pub metrics_public: bool,
}

/// A timezone for daily buckets: `{code = "UTC", offset_ms = 0}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timezone {
    pub code: String,
    pub offset_ms: i64,
}

/// Metrics with group rollups unless the config says otherwise.
pub const DEFAULT_GROUP_METRICS: [&str; 8] = [
    "hashrate_hs",
    "expected_hashrate_hs",
    "power_w",
    "efficiency_j_per_th",
    "temp_c",
    "fan_rpm",
    "online",
    "offline",
];

impl CommanderConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        CommanderConfig {
            data_dir,
            quic_listen: "0.0.0.0:4433".parse().expect("valid"),
            http_listen: "127.0.0.1:8080".parse().expect("valid"),
            rechallenge: Duration::from_secs(300),
            ingest_batch_max: 2048,
            timezones: vec![Timezone {
                code: "UTC".into(),
                offset_ms: 0,
            }],
            status_rules: StatusRules::default(),
            checkpoint: Duration::from_secs(30),
            group_metrics: DEFAULT_GROUP_METRICS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            group_tag_prefixes: crate::fleet::DEFAULT_GROUP_TAG_PREFIXES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            retention: Retention::default(),
            metrics_public: false,
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
        for tz in &self.timezones {
            let valid = tz.offset_ms % 60_000 == 0
                && (-14 * 3_600_000..=14 * 3_600_000).contains(&tz.offset_ms);
            if !valid {
                anyhow::bail!(
                    "timezone `{}` has offset_ms {}: use whole minutes between -14 h and +14 h (for example 10800000 for UTC+3)",
                    tz.code,
                    tz.offset_ms
                );
            }
        }
        if self.timezones.len() > 16 {
            anyhow::bail!("at most 16 timezones: each adds a daily bucket to every series");
        }
        let rules = &self.status_rules;
        if rules.stale_after_ms == 0 || rules.lost_after_ms <= rules.stale_after_ms {
            anyhow::bail!("[devices] needs 0 < stale_after_secs < lost_after_secs");
        }
        if self.checkpoint < Duration::from_millis(100)
            || self.checkpoint > Duration::from_secs(3600)
        {
            anyhow::bail!("[rollups] checkpoint_secs must be between 1 and 3600");
        }
        if self.retention.heartbeats_max_per_sentry == 0 {
            anyhow::bail!("[retention] heartbeats_max_per_sentry must be at least 1");
        }
        if self.retention.interval.is_zero() {
            anyhow::bail!("[retention] prune_interval_secs must be at least 1");
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
    pub timezones: Option<Vec<Timezone>>,
    #[serde(default)]
    pub devices: DevicesFile,
    #[serde(default)]
    pub rollups: RollupsFile,
    #[serde(default)]
    pub retention: RetentionFile,
    #[serde(default)]
    pub metrics: MetricsFile,
}

/// `[devices]`: when a silent device becomes stale, then lost.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesFile {
    pub stale_after_secs: Option<u64>,
    pub lost_after_secs: Option<u64>,
}

/// `[rollups]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupsFile {
    pub checkpoint_secs: Option<u64>,
    pub group_metrics: Option<Vec<String>>,
    /// Tag prefixes with group rollups, default `["t-", "site-", "rack-"]`.
    pub group_tag_prefixes: Option<Vec<String>>,
}

/// `[retention]`: ages in seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    pub heartbeats_max_age_secs: Option<u64>,
    pub heartbeats_max_per_sentry: Option<u64>,
    pub rollup_1m_secs: Option<u64>,
    pub rollup_5m_secs: Option<u64>,
    pub rollup_1h_secs: Option<u64>,
    pub rollup_1d_secs: Option<u64>,
    pub prune_interval_secs: Option<u64>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Serve `/metrics` without a bearer token (for a Prometheus on a trusted network).
    pub public: Option<bool>,
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
        if let Some(tz) = self.timezones {
            c.timezones = tz;
        }
        let secs = Duration::from_secs;
        if let Some(v) = self.devices.stale_after_secs {
            c.status_rules.stale_after_ms = v * 1000;
        }
        if let Some(v) = self.devices.lost_after_secs {
            c.status_rules.lost_after_ms = v * 1000;
        }
        if let Some(v) = self.rollups.checkpoint_secs {
            c.checkpoint = secs(v);
        }
        if let Some(v) = self.rollups.group_metrics {
            c.group_metrics = v;
        }
        if let Some(v) = self.rollups.group_tag_prefixes {
            c.group_tag_prefixes = v;
        }
        let r = &self.retention;
        let ret = &mut c.retention;
        if let Some(v) = r.heartbeats_max_age_secs {
            ret.heartbeats_max_age = secs(v);
        }
        if let Some(v) = r.heartbeats_max_per_sentry {
            ret.heartbeats_max_per_sentry = v;
        }
        if let Some(v) = r.rollup_1m_secs {
            ret.m1 = secs(v);
        }
        if let Some(v) = r.rollup_5m_secs {
            ret.m5 = secs(v);
        }
        if let Some(v) = r.rollup_1h_secs {
            ret.h1 = secs(v);
        }
        if let Some(v) = r.rollup_1d_secs {
            ret.d1 = secs(v);
        }
        if let Some(v) = r.prune_interval_secs {
            ret.interval = secs(v);
        }
        if let Some(v) = self.metrics.public {
            c.metrics_public = v;
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
    fn data_plane_sections_parse_and_validate() {
        let f = FileConfig::parse(
            "data_dir = \"/x\"\ntimezones = [{code = \"UTC\", offset_ms = 0}, {code = \"EAT\", offset_ms = 10800000}]\n[devices]\nstale_after_secs = 30\nlost_after_secs = 600\n[retention]\nheartbeats_max_per_sentry = 50\n[metrics]\npublic = true\n",
        )
        .unwrap();
        let c = f.into_config(None).unwrap();
        assert_eq!(c.timezones.len(), 2);
        assert_eq!(c.status_rules.stale_after_ms, 30_000);
        assert_eq!(c.retention.heartbeats_max_per_sentry, 50);
        assert!(c.metrics_public);
        assert!(c.validate().is_ok());
        let bad =
            FileConfig::parse("data_dir = \"/x\"\ntimezones = [{code = \"X\", offset_ms = 1}]\n")
                .unwrap();
        let err = bad
            .into_config(None)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole minutes"), "{err}");
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
