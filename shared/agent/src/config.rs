//! What a sentry runtime needs to run, checked before anything starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hashfleet_shared::wire::SentryKind;
use hashfleet_shared::NodeId;
use serde::Deserialize;

use crate::outbox::DEFAULT_MAX_ENTRIES;

/// Why a sentry configuration is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("no commander configured: pass --commander HOST:PORT --commander-key HEX, or add a [[commander]] section to the config file")]
    NoCommander,
    #[error("commander `{addr}` has no pinned key: pass --commander-key with the hex public key that `hashfleet-commander info` prints")]
    NoKey { addr: String },
    #[error("commander address `{0}` is not HOST:PORT")]
    BadAddr(String),
    #[error("commander key `{0}` is neither 64 hex digits nor a 12D3KooW… node id")]
    BadKey(String),
    #[error("{count} --commander-key values for {addrs} --commander values: give one key per commander, in the same order")]
    KeyCount { count: usize, addrs: usize },
    #[error("{count} --enroll-token values for {addrs} commanders: give at most one token per commander, in the same order")]
    TokenCount { count: usize, addrs: usize },
    #[error("heartbeat interval must be between 100 ms and 1 hour, not {0:?}")]
    BadInterval(Duration),
    #[error("outbox bound must be at least 1")]
    BadOutbox,
    #[error("reconnect backoff must satisfy 10 ms <= reconnect_min_ms <= reconnect_max_ms <= 600000 ms, not {min:?}..{max:?}")]
    BadBackoff { min: Duration, max: Duration },
}

/// One commander a sentry may report to.
#[derive(Debug, Clone, PartialEq)]
pub struct CommanderTarget {
    /// `host:port`, resolved at each connection attempt.
    pub addr: String,
    /// Pinned commander keys (several while the commander rotates its key).
    pub keys: Vec<NodeId>,
    pub enroll_token: Option<String>,
}

/// The `[[commander]]` table of a sentry config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommanderEntry {
    pub addr: String,
    pub keys: Vec<String>,
    #[serde(default)]
    pub enroll_token: Option<String>,
}

impl CommanderEntry {
    pub fn to_target(&self) -> Result<CommanderTarget, ConfigError> {
        Ok(CommanderTarget {
            addr: self.addr.clone(),
            keys: self
                .keys
                .iter()
                .map(|k| parse_key(k))
                .collect::<Result<_, _>>()?,
            enroll_token: self.enroll_token.clone(),
        })
    }
}

/// A commander key: 64 hex digits of the Ed25519 public key, or its node id.
pub fn parse_key(text: &str) -> Result<NodeId, ConfigError> {
    let text = text.trim();
    NodeId::from_public_key_hex(text)
        .or_else(|_| text.parse::<NodeId>())
        .map_err(|_| ConfigError::BadKey(text.chars().take(80).collect()))
}

/// Pairs repeated `--commander`, `--commander-key` and `--enroll-token`
/// flags: the Nth key pins the Nth commander; the Nth token is for the Nth
/// commander (a single token serves the first).
pub fn targets_from_flags(
    addrs: &[String],
    keys: &[String],
    tokens: &[String],
) -> Result<Vec<CommanderTarget>, ConfigError> {
    if keys.len() != addrs.len() {
        return Err(ConfigError::KeyCount {
            count: keys.len(),
            addrs: addrs.len(),
        });
    }
    if tokens.len() > addrs.len() {
        return Err(ConfigError::TokenCount {
            count: tokens.len(),
            addrs: addrs.len(),
        });
    }
    addrs
        .iter()
        .zip(keys)
        .enumerate()
        .map(|(i, (addr, key))| {
            Ok(CommanderTarget {
                addr: addr.clone(),
                keys: vec![parse_key(key)?],
                enroll_token: tokens.get(i).cloned(),
            })
        })
        .collect()
}

/// Everything the sentry runtime needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Holds `identity.json`, the outbox and the seq file.
    pub home: PathBuf,
    /// In failover order: primary first.
    pub commanders: Vec<CommanderTarget>,
    pub interval: Duration,
    pub kind: SentryKind,
    pub agent_version: String,
    /// Sent in `Hello`: `site`, `rack`, …
    pub labels: BTreeMap<String, String>,
    pub outbox_max: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// On a backup commander, how often the primary is tried again.
    pub primary_retry: Duration,
    /// Where the local status API listens (loopback only); off when `None`.
    pub status_listen: Option<std::net::SocketAddr>,
}

impl AsRef<AgentConfig> for AgentConfig {
    fn as_ref(&self) -> &AgentConfig {
        self
    }
}

impl AgentConfig {
    pub fn new(home: PathBuf, commanders: Vec<CommanderTarget>, kind: SentryKind) -> Self {
        AgentConfig {
            home,
            commanders,
            interval: Duration::from_secs(10),
            kind,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            labels: BTreeMap::new(),
            outbox_max: DEFAULT_MAX_ENTRIES,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
            primary_retry: Duration::from_secs(30),
            status_listen: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.commanders.is_empty() {
            return Err(ConfigError::NoCommander);
        }
        for c in &self.commanders {
            if c.keys.is_empty() {
                return Err(ConfigError::NoKey {
                    addr: c.addr.clone(),
                });
            }
            let port_ok = c
                .addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(ConfigError::BadAddr(c.addr.clone()));
            }
        }
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(3600) {
            return Err(ConfigError::BadInterval(self.interval));
        }
        if self.outbox_max == 0 {
            return Err(ConfigError::BadOutbox);
        }
        if self.backoff_min < Duration::from_millis(10)
            || self.backoff_max < self.backoff_min
            || self.backoff_max > Duration::from_secs(600)
        {
            return Err(ConfigError::BadBackoff {
                min: self.backoff_min,
                max: self.backoff_max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pair_keys_and_tokens_with_commanders() {
        let key = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
        let id = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let t = targets_from_flags(
            &["a:1".into(), "b:2".into()],
            &[key.into(), id.into()],
            &["tok".into()],
        )
        .unwrap();
        assert_eq!(t[0].keys, t[1].keys);
        assert_eq!(t[0].enroll_token.as_deref(), Some("tok"));
        assert_eq!(t[1].enroll_token, None);
        assert!(matches!(
            targets_from_flags(&["a:1".into()], &[], &[]),
            Err(ConfigError::KeyCount { .. })
        ));
        assert!(matches!(
            targets_from_flags(&["a:1".into()], &["zz".into()], &[]),
            Err(ConfigError::BadKey(_))
        ));
    }

    #[test]
    fn validate_names_the_problem() {
        let mut c = AgentConfig::new("/tmp/x".into(), vec![], SentryKind::Host);
        assert_eq!(c.validate(), Err(ConfigError::NoCommander));
        c.commanders.push(CommanderTarget {
            addr: "nohost".into(),
            keys: vec![NodeId::from_public_key([1; 32])],
            enroll_token: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::BadAddr(_))));
        c.commanders[0].addr = "127.0.0.1:4433".into();
        assert_eq!(c.validate(), Ok(()));
        c.interval = Duration::from_millis(10);
        assert!(matches!(c.validate(), Err(ConfigError::BadInterval(_))));
    }
}
