//! Commander configuration: a TOML file (unknown keys refused), overridden
//! by flags and `HASHFLEET_*` variables, checked before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::fleet::device::StatusRules;
use crate::fleet::retention::Retention;
use crate::permissions::{validate_roles, Roles};

/// The longest retention age a config may set (100 years).
pub const MAX_RETENTION_AGE: Duration = Duration::from_secs(100 * 366 * 86_400);

/// How long an old node key works after a rotation, by default.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(300);
/// The longest grace a config may set.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 86_400);
/// The longest re-challenge and pruning period: `serve` arms them as tokio
/// intervals, which panic when `now + period` overflows.
pub const MAX_PERIOD: Duration = Duration::from_secs(30 * 86_400);

/// The `serve` settings after merging file, environment and flags.
#[derive(Debug, Clone)]
pub struct CommanderConfig {
    pub data_dir: PathBuf,
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// HTTPS listener for remote access (off when `None`).
    pub https_listen: Option<SocketAddr>,
    /// PEM certificate chain and key; both absent: generated in `DATA_DIR/https/`.
    pub https_cert: Option<PathBuf>,
    pub https_key: Option<PathBuf>,
    /// Extra DNS names or addresses for a generated certificate.
    pub https_names: Vec<String>,
    /// How often a live session is challenged again.
    pub rechallenge: Duration,
    /// How long a sentry's old node key is still accepted after it rotated.
    pub rotation_grace: Duration,
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
    /// `[auth]`: login throttling and session lifetime.
    pub auth: AuthConfig,
    /// `[roles]`: named permission sets users may hold as `role:NAME`.
    pub roles: Roles,
    /// `[actions]`: vote thresholds, automation, lifetime.
    pub actions: ActionsConfig,
    /// `[quic]`: connection admission limits.
    pub quic: crate::quic::admission::Limits,
}

/// `[actions]` after defaults.
#[derive(Debug, Clone)]
pub struct ActionsConfig {
    /// Yes votes per action name (`[actions.votes] reboot = 2`); 1 otherwise.
    pub votes: std::collections::BTreeMap<String, u32>,
    /// Action names approved without votes (pushed by automation).
    pub automation: Vec<String>,
    /// How long an action may wait for votes and execution.
    pub ttl: Duration,
    /// Sentries an action is sent to at once.
    pub parallel: usize,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            votes: Default::default(),
            automation: Vec::new(),
            ttl: Duration::from_secs(3600),
            parallel: 32,
        }
    }
}

/// `[actions]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsFile {
    #[serde(default)]
    pub votes: std::collections::BTreeMap<String, u32>,
    #[serde(default)]
    pub automation: Vec<String>,
    pub ttl_secs: Option<u64>,
    pub parallel: Option<usize>,
}

/// `[auth]` after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthConfig {
    /// Failed logins per username, and per client address, within `login_window`
    /// before further attempts are refused (429) until the window passes.
    pub login_max_failures: u32,
    pub login_window: Duration,
    /// How long a login's bearer token lives.
    pub session_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            login_max_failures: 5,
            login_window: Duration::from_secs(900),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
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
            https_listen: None,
            https_cert: None,
            https_key: None,
            https_names: Vec::new(),
            rechallenge: Duration::from_secs(300),
            rotation_grace: DEFAULT_ROTATION_GRACE,
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
            auth: AuthConfig::default(),
            roles: Roles::new(),
            actions: ActionsConfig::default(),
            quic: crate::quic::admission::Limits::default(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!(
                "data_dir is empty: pass --data-dir DIR or set data_dir in the config file"
            );
        }
        if self.rechallenge < Duration::from_secs(1) || self.rechallenge > MAX_PERIOD {
            anyhow::bail!("rechallenge_secs must be between 1 and 2592000 (30 days)");
        }
        if self.rotation_grace > MAX_ROTATION_GRACE {
            anyhow::bail!(
                "rotation_grace_secs = {}: give at most {} (7 days); an old key should not outlive its rotation for long",
                self.rotation_grace.as_secs(),
                MAX_ROTATION_GRACE.as_secs()
            );
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
        // Ages become milliseconds for the pruner: a bound keeps a huge age
        // from wrapping into a tiny one (which would delete nearly all data).
        let r = &self.retention;
        for (key, age) in [
            ("heartbeats_max_age_secs", r.heartbeats_max_age),
            ("rollup_1m_secs", r.m1),
            ("rollup_5m_secs", r.m5),
            ("rollup_1h_secs", r.h1),
            ("rollup_1d_secs", r.d1),
        ] {
            if age.is_zero() || age > MAX_RETENTION_AGE {
                anyhow::bail!(
                    "[retention] {key} = {}: give between 1 and {} (100 years)",
                    age.as_secs(),
                    MAX_RETENTION_AGE.as_secs()
                );
            }
        }
        if self.retention.interval.is_zero() || self.retention.interval > MAX_PERIOD {
            anyhow::bail!(
                "[retention] prune_interval_secs must be between 1 and 2592000 (30 days)"
            );
        }
        let auth = &self.auth;
        if !(1..=1000).contains(&auth.login_max_failures) {
            anyhow::bail!("[auth] login_max_failures must be between 1 and 1000");
        }
        if auth.login_window < Duration::from_secs(1)
            || auth.login_window > Duration::from_secs(7 * 24 * 3600)
        {
            anyhow::bail!("[auth] login_window_secs must be between 1 and 604800 (7 days)");
        }
        if auth.session_ttl < Duration::from_secs(1)
            || auth.session_ttl > Duration::from_secs(30 * 24 * 3600)
        {
            anyhow::bail!("[auth] session_ttl_secs must be between 1 and 2592000 (30 days)");
        }
        validate_roles(&self.roles).map_err(|e| anyhow::anyhow!("[roles]: {e}"))?;
        if self.https_cert.is_some() != self.https_key.is_some() {
            anyhow::bail!("set both https_cert and https_key, or neither (a certificate is then generated in DATA_DIR/https/)");
        }
        for (name, n) in &self.actions.votes {
            if *n == 0 || *n > 100 {
                anyhow::bail!(
                    "[actions.votes] {name} = {n}: a threshold is between 1 and 100 votes"
                );
            }
        }
        if self.actions.ttl < Duration::from_secs(1)
            || self.actions.ttl > Duration::from_secs(30 * 86_400)
        {
            anyhow::bail!("[actions] ttl_secs must be between 1 and 2592000 (30 days)");
        }
        if !(1..=1024).contains(&self.actions.parallel) {
            anyhow::bail!("[actions] parallel must be between 1 and 1024");
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
    /// HTTPS for remote access: `https_listen = "0.0.0.0:8443"`.
    pub https_listen: Option<SocketAddr>,
    pub https_cert: Option<PathBuf>,
    pub https_key: Option<PathBuf>,
    #[serde(default)]
    pub https_names: Vec<String>,
    pub rechallenge_secs: Option<u64>,
    /// Seconds a sentry's old node key still works after a rotation (default 300).
    pub rotation_grace_secs: Option<u64>,
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
    #[serde(default)]
    pub auth: AuthFile,
    /// `[roles]`: `operator = ["miner:rw", "container:r"]`.
    pub roles: Option<Roles>,
    #[serde(default)]
    pub actions: ActionsFile,
    #[serde(default)]
    pub quic: QuicFile,
}

/// `[quic]`: admission limits before authentication.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicFile {
    /// Connections at once, handshaking or established (default 250000).
    pub max_connections: Option<usize>,
    /// Handshakes in progress from one source address (default 64).
    pub max_handshakes_per_source: Option<usize>,
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

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Failed logins allowed per username and per address in the window (default 5).
    pub login_max_failures: Option<u32>,
    /// The throttle's window (default 900).
    pub login_window_secs: Option<u64>,
    /// Lifetime of a login's token (default 43200, 12 h).
    pub session_ttl_secs: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        hashfleet_agent::cli::read_toml(path)
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
        if let Some(n) = self.quic.max_connections {
            anyhow::ensure!(
                (1..=10_000_000).contains(&n),
                "[quic] max_connections = {n}: give 1..=10000000"
            );
            c.quic.max_connections = n;
        }
        if let Some(n) = self.quic.max_handshakes_per_source {
            anyhow::ensure!(
                (1..=100_000).contains(&n),
                "[quic] max_handshakes_per_source = {n}: give 1..=100000"
            );
            c.quic.max_handshakes_per_source = n;
        }
        if let Some(a) = self.http_listen {
            c.http_listen = a;
        }
        c.https_listen = self.https_listen;
        c.https_cert = self.https_cert;
        c.https_key = self.https_key;
        c.https_names = self.https_names;
        if let Some(s) = self.rechallenge_secs {
            c.rechallenge = Duration::from_secs(s);
        }
        if let Some(s) = self.rotation_grace_secs {
            c.rotation_grace = Duration::from_secs(s);
        }
        if let Some(n) = self.ingest_batch_max {
            c.ingest_batch_max = n;
        }
        if let Some(tz) = self.timezones {
            c.timezones = tz;
        }
        let secs = Duration::from_secs;
        let ms = |key: &str, v: u64| {
            v.checked_mul(1000)
                .ok_or_else(|| anyhow::anyhow!("[devices] {key} = {v} is too large: give seconds"))
        };
        if let Some(v) = self.devices.stale_after_secs {
            c.status_rules.stale_after_ms = ms("stale_after_secs", v)?;
        }
        if let Some(v) = self.devices.lost_after_secs {
            c.status_rules.lost_after_ms = ms("lost_after_secs", v)?;
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
        if let Some(v) = self.auth.login_max_failures {
            c.auth.login_max_failures = v;
        }
        if let Some(v) = self.auth.login_window_secs {
            c.auth.login_window = secs(v);
        }
        if let Some(v) = self.auth.session_ttl_secs {
            c.auth.session_ttl = secs(v);
        }
        c.actions.votes = self.actions.votes;
        c.actions.automation = self.actions.automation;
        if let Some(v) = self.actions.ttl_secs {
            c.actions.ttl = secs(v);
        }
        if let Some(v) = self.actions.parallel {
            c.actions.parallel = v;
        }
        if let Some(roles) = self.roles {
            c.roles = roles;
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
    fn auth_and_roles_parse_and_validate() {
        let c = FileConfig::parse("data_dir = \"/x\"\n")
            .unwrap()
            .into_config(None)
            .unwrap();
        assert_eq!(c.auth, AuthConfig::default());
        assert_eq!(c.auth.login_max_failures, 5);
        assert_eq!(c.auth.login_window, Duration::from_secs(900));
        assert_eq!(c.auth.session_ttl, Duration::from_secs(43_200));
        let f = FileConfig::parse(
            "data_dir = \"/x\"\n[auth]\nlogin_max_failures = 3\nlogin_window_secs = 2\nsession_ttl_secs = 1\n[roles]\noperator = [\"miner:rw\", \"container:r\"]\n",
        )
        .unwrap();
        let c = f.into_config(None).unwrap();
        assert_eq!(c.auth.login_max_failures, 3);
        assert_eq!(c.auth.login_window, Duration::from_secs(2));
        assert_eq!(c.auth.session_ttl, Duration::from_secs(1));
        assert_eq!(c.roles["operator"], vec!["miner:rw", "container:r"]);
        assert!(c.validate().is_ok());
        for (text, want) in [
            ("[auth]\nlogin_max_failures = 0\n", "login_max_failures"),
            ("[auth]\nlogin_window_secs = 0\n", "login_window_secs"),
            ("[auth]\nsession_ttl_secs = 0\n", "session_ttl_secs"),
            ("[auth]\nsession_ttl_secs = 99999999\n", "session_ttl_secs"),
            ("[roles]\nops = [\"miners:rw\"]\n", "unknown type `miners`"),
            ("[roles]\nops = [\"role:x\"]\n", "not other roles"),
        ] {
            let err = FileConfig::parse(&format!("data_dir = \"/x\"\n{text}"))
                .unwrap()
                .into_config(None)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = FileConfig::parse("data_dir = \"/x\"\n[auth]\nsession_ttl = 5\n").unwrap_err();
        assert!(err.to_string().contains("session_ttl"), "{err}");
    }

    #[test]
    fn action_votes_parse_and_are_bounded() {
        let f = FileConfig::parse("data_dir = \"/x\"\n[actions]\nautomation = [\"autoSleep\"]\n[actions.votes]\nreboot = 2\nrunHook = 2\n").unwrap();
        let c = f.into_config(None).unwrap();
        assert_eq!(c.actions.votes["runHook"], 2);
        assert_eq!(c.actions.automation, vec!["autoSleep"]);
        assert!(c.validate().is_ok());
        let bad = FileConfig::parse("data_dir = \"/x\"\n[actions.votes]\nreboot = 0\n").unwrap();
        assert!(bad
            .into_config(None)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reboot"));
    }

    #[test]
    fn device_thresholds_in_seconds_do_not_overflow() {
        // Seconds × 1000 overflowed u64: a panic with overflow checks (as
        // fuzz/commander_config runs it), a wrapped threshold without.
        for key in ["stale_after_secs", "lost_after_secs"] {
            let text = format!("data_dir = \"/x\"\n[devices]\n{key} = 18446744073709552\n");
            let err = FileConfig::parse(&text)
                .unwrap()
                .into_config(None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("too large"), "{err}");
        }
    }

    #[test]
    fn retention_ages_that_would_wrap_are_refused() {
        for key in [
            "heartbeats_max_age_secs",
            "rollup_1m_secs",
            "rollup_5m_secs",
            "rollup_1h_secs",
            "rollup_1d_secs",
        ] {
            for bad in ["0", "18446744073709552"] {
                let f =
                    FileConfig::parse(&format!("data_dir = \"/x\"\n[retention]\n{key} = {bad}\n"))
                        .unwrap();
                let err = f.into_config(None).and_then(|c| c.validate()).unwrap_err();
                assert!(err.to_string().contains(key), "{key} = {bad}: {err}");
            }
        }
        let f = FileConfig::parse("data_dir = \"/x\"\n[retention]\nrollup_1d_secs = 3153600000\n")
            .unwrap();
        f.into_config(None).unwrap().validate().unwrap();
    }

    #[test]
    fn periods_armed_as_intervals_are_bounded() {
        // A period this long passed validation, then tokio panicked adding
        // it to now: in every session for the re-challenge, in the pruner
        // for the prune interval (fuzz/commander_config checks for it).
        let huge = 9_223_372_036_854_775_807u64;
        assert!(std::time::Instant::now()
            .checked_add(Duration::from_secs(huge))
            .is_none());
        for (text, key) in [
            (format!("rechallenge_secs = {huge}\n"), "rechallenge_secs"),
            (
                format!("[retention]\nprune_interval_secs = {huge}\n"),
                "prune_interval_secs",
            ),
        ] {
            let err = FileConfig::parse(&format!("data_dir = \"/x\"\n{text}"))
                .unwrap()
                .into_config(None)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("30 days"), "{err}");
        }
        let ok = FileConfig::parse(
            "data_dir = \"/x\"\nrechallenge_secs = 2592000\n[retention]\nprune_interval_secs = 2592000\n",
        )
        .unwrap();
        assert!(ok.into_config(None).unwrap().validate().is_ok());
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
