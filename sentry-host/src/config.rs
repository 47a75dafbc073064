//! The sentry-host config file (TOML, unknown keys refused).
//!
//! ```toml
//! home = "/var/lib/hashfleet/sentry-host"
//! interval_secs = 10
//! site = "hel1"
//! rack = "r12"
//! reconnect_min_ms = 500     # first reconnect wait (jittered, doubling)
//! reconnect_max_ms = 5000    # longest reconnect wait
//!
//! [[commander]]
//! addr = "commander.example:4433"
//! keys = ["<64 hex digits from `hashfleet-commander info`>"]
//! enroll_token = "hfe_…"
//! ```

use std::path::Path;

use hashfleet_agent::cli::{agent_config, read_toml, CommonFile, RunArgs};
use hashfleet_agent::AgentConfig;
use hashfleet_shared::wire::SentryKind;

pub const DEFAULT_HOME: &str = "/var/lib/hashfleet/sentry-host";

/// Loads the file (if any) and applies the flags.
pub fn load(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let file: CommonFile = match &args.config {
        Some(path) => read_toml(Path::new(path))?,
        None => CommonFile::default(),
    };
    agent_config(file, args, SentryKind::Host, DEFAULT_HOME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_flags_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "interval_secs = 3\nsite = \"hel1\"\nreconnect_min_ms = 200\nreconnect_max_ms = 2000\n[[commander]]\naddr = \"127.0.0.1:4433\"\nkeys = [\"3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29\"]\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            home: Some(dir.path().join("home")),
            ..Default::default()
        };
        let c = load(&args).unwrap();
        assert_eq!(c.interval.as_secs(), 3);
        assert_eq!(c.labels["site"], "hel1");
        assert_eq!(c.backoff_min.as_millis(), 200);
        assert_eq!(c.backoff_max.as_millis(), 2000);
        assert_eq!(c.commanders.len(), 1);

        std::fs::write(&path, "intervall_secs = 3\n").unwrap();
        let err = load(&args).unwrap_err().to_string();
        assert!(err.contains("intervall_secs"), "{err}");
    }
}
