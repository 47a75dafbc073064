//! The sentry-host config file (TOML, unknown keys refused).
//!
//! ```toml
//! home = "/var/lib/hashfleet/sentry-host"
//! interval_secs = 10
//! site = "hel1"
//! rack = "r12"
//! reconnect_min_ms = 500     # first reconnect wait (jittered, doubling)
//! reconnect_max_ms = 5000    # longest reconnect wait
//! primary_retry_secs = 30     # on a backup commander, how often to try the primary
//!
//! # Host actions (top-level keys, so before any [table]).
//! allow_reboot = false                    # `reboot` is refused unless true
//! reboot_command = ["systemctl", "reboot"]
//! hook_timeout_secs = 30                  # a hook still running then is killed
//!
//! [[commander]]
//! addr = "commander.example:4433"
//! keys = ["<64 hex digits from `hashfleet-commander info`>"]
//! enroll_token = "hfe_…"
//!
//! # `runHook` with params ["NAME"] runs hook NAME: the program and its
//! # arguments come from here only (no shell, nothing from the network).
//! # Collectors besides the host (top-level keys, then tables).
//! nvidia_smi = "/usr/bin/nvidia-smi"      # default: from PATH if present, else GPUs off
//! dcgm_url = "http://127.0.0.1:9400/metrics"
//!
//! [hooks]
//! restart-miner = ["/usr/bin/systemctl", "restart", "miner"]
//! backup = ["/usr/local/bin/backup", "--quick"]
//!
//! [[miner]]                               # xmrig, trex, lolminer, gminer, cgminer
//! kind = "xmrig"
//! url = "http://127.0.0.1:8080"
//! token = "…"                             # xmrig's --http-access-token
//!
//! [[runtime]]                             # OpenAI-compatible (vLLM)
//! url = "http://127.0.0.1:8000"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hashfleet_agent::cli::{agent_config, read_toml, CommonFile, RunArgs};
use hashfleet_agent::config::CommanderEntry;
use hashfleet_agent::AgentConfig;

use crate::gpu::GpuConfig;
use crate::minersw::MinerEntry;
use crate::runtime_ai::RuntimeEntry;
use hashfleet_shared::wire::SentryKind;
use serde::Deserialize;

pub const DEFAULT_HOME: &str = "/var/lib/hashfleet/sentry-host";
/// How long a hook (or the reboot command) may run, by default.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `hook_timeout_secs` (one day).
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest hook name, in bytes.
pub const MAX_HOOK_NAME_LEN: usize = 64;

/// The whole file: the settings every sentry has, plus host actions. The
/// common fields are repeated here (rather than flattened) because serde
/// cannot refuse unknown keys of a flattened struct.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub home: Option<PathBuf>,
    pub interval_secs: Option<u64>,
    pub site: Option<String>,
    pub rack: Option<String>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    pub primary_retry_secs: Option<u64>,
    pub status_listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub commander: Vec<CommanderEntry>,
    /// `reboot` is refused unless this is true.
    #[serde(default)]
    pub allow_reboot: bool,
    /// What `reboot` runs; default `["systemctl", "reboot"]`.
    pub reboot_command: Option<Vec<String>>,
    /// How long a hook may run before it is killed; default 30.
    pub hook_timeout_secs: Option<u64>,
    /// `NAME = ["/path/to/program", "arg", …]`.
    #[serde(default)]
    pub hooks: BTreeMap<String, Vec<String>>,
    /// The nvidia-smi to run; default: `nvidia-smi` from PATH if present.
    pub nvidia_smi: Option<PathBuf>,
    /// A DCGM exporter's `/metrics`, as fallback and supplement.
    pub dcgm_url: Option<String>,
    /// How long one nvidia-smi run or DCGM fetch may take, default 5000.
    pub gpu_timeout_ms: Option<u64>,
    /// Miner software APIs: `[[miner]] kind = "xmrig" url = "http://127.0.0.1:8080" token = "…"`.
    #[serde(default)]
    pub miner: Vec<MinerEntry>,
    /// OpenAI-compatible runtimes: `[[runtime]] url = "http://127.0.0.1:8000"`.
    #[serde(default)]
    pub runtime: Vec<RuntimeEntry>,
}

/// What sentry-host collects besides the host itself.
#[derive(Debug, Clone, Default)]
pub struct HostSources {
    pub gpu: GpuConfig,
    pub miners: Vec<MinerEntry>,
    pub runtimes: Vec<RuntimeEntry>,
}

impl HostSources {
    /// Checks every entry; the error names the one that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.gpu.validate()?;
        let mut ids = std::collections::BTreeSet::new();
        for m in &self.miners {
            m.validate()?;
            let id = crate::minersw::MinerClient::new(m.clone())?.id();
            anyhow::ensure!(
                ids.insert(id.clone()),
                "[[miner]] entries share the id `{id}`: give each a distinct `name`"
            );
        }
        for r in &self.runtimes {
            r.validate()?;
            let id = crate::runtime_ai::RuntimeClient::new(r.clone())?.id();
            anyhow::ensure!(
                ids.insert(id.clone()),
                "[[runtime]] entries share the id `{id}`: give each a distinct `name`"
            );
        }
        Ok(())
    }
}

/// What host actions may do on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct HostActions {
    /// Hook name → program and arguments.
    pub hooks: BTreeMap<String, Vec<String>>,
    pub allow_reboot: bool,
    pub reboot_command: Vec<String>,
    /// For hooks and the reboot command.
    pub hook_timeout: Duration,
}

impl Default for HostActions {
    /// No hooks, no reboot.
    fn default() -> Self {
        HostActions {
            hooks: BTreeMap::new(),
            allow_reboot: false,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

impl HostActions {
    /// Checks hook names, programs and the timeout; the error says which.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, argv) in &self.hooks {
            let name_ok = !name.is_empty()
                && name.len() <= MAX_HOOK_NAME_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                anyhow::bail!("hook name `{name}`: use 1 to {MAX_HOOK_NAME_LEN} letters, digits, `-`, `_` or `.`");
            }
            check_argv(&format!("[hooks] {name}"), argv)?;
        }
        check_argv("reboot_command", &self.reboot_command)?;
        if self.hook_timeout.is_zero() || self.hook_timeout > MAX_HOOK_TIMEOUT {
            anyhow::bail!(
                "hook_timeout_secs must be between 1 and {}, not {}",
                MAX_HOOK_TIMEOUT.as_secs(),
                self.hook_timeout.as_secs()
            );
        }
        Ok(())
    }
}

fn check_argv(what: &str, argv: &[String]) -> anyhow::Result<()> {
    match argv.first() {
        None => anyhow::bail!("{what} is empty: give the program, then its arguments, as in [\"/usr/local/bin/backup\", \"--quick\"]"),
        Some(program) if program.trim().is_empty() => {
            anyhow::bail!("{what}: the program (first element) is empty")
        }
        _ => {}
    }
    if argv.iter().any(|a| a.contains('\0')) {
        anyhow::bail!("{what}: an argument contains a NUL byte");
    }
    Ok(())
}

impl HostFile {
    /// Splits the file into the common part and the host actions.
    pub fn split(self) -> (CommonFile, HostActions) {
        let defaults = HostActions::default();
        let actions = HostActions {
            hooks: self.hooks,
            allow_reboot: self.allow_reboot,
            reboot_command: self.reboot_command.unwrap_or(defaults.reboot_command),
            hook_timeout: self
                .hook_timeout_secs
                .map_or(defaults.hook_timeout, Duration::from_secs),
        };
        let common = CommonFile {
            home: self.home,
            interval_secs: self.interval_secs,
            site: self.site,
            rack: self.rack,
            reconnect_min_ms: self.reconnect_min_ms,
            reconnect_max_ms: self.reconnect_max_ms,
            primary_retry_secs: self.primary_retry_secs,
            status_listen: self.status_listen,
            commander: self.commander,
        };
        (common, actions)
    }
}

/// Everything sentry-host runs with.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub agent: AgentConfig,
    pub actions: HostActions,
    pub sources: HostSources,
}

impl HostConfig {
    /// The runtime config with the default actions (no hooks, no reboot).
    pub fn new(agent: AgentConfig) -> Self {
        HostConfig {
            agent,
            actions: HostActions::default(),
            sources: HostSources::default(),
        }
    }
}

impl AsRef<AgentConfig> for HostConfig {
    fn as_ref(&self) -> &AgentConfig {
        &self.agent
    }
}

/// Loads the file (if any), applies the flags and checks the host actions.
pub fn load_host(args: &RunArgs) -> anyhow::Result<HostConfig> {
    let file: HostFile = match &args.config {
        Some(path) => read_toml(Path::new(path))?,
        None => HostFile::default(),
    };
    let mut gpu = GpuConfig {
        nvidia_smi: file.nvidia_smi.clone(),
        dcgm_url: file.dcgm_url.clone(),
        ..GpuConfig::default()
    };
    if let Some(ms) = file.gpu_timeout_ms {
        gpu.timeout_ms = ms;
    }
    let sources = HostSources {
        gpu,
        miners: file.miner.clone(),
        runtimes: file.runtime.clone(),
    };
    let (common, actions) = file.split();
    let in_file = |e: anyhow::Error| match &args.config {
        Some(path) => e.context(format!("config {}", path.display())),
        None => e,
    };
    actions.validate().map_err(in_file)?;
    sources.validate().map_err(in_file)?;
    let agent = agent_config(common, args, SentryKind::Host, DEFAULT_HOME)?;
    Ok(HostConfig {
        agent,
        actions,
        sources,
    })
}

/// [`load_host`] without the actions.
pub fn load(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    load_host(args).map(|c| c.agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

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

    fn load_text(text: &str) -> anyhow::Result<HostConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        let args = RunArgs {
            config: Some(path),
            home: Some(dir.path().join("home")),
            ..Default::default()
        };
        load_host(&args)
    }

    #[test]
    fn actions_default_to_no_hooks_and_no_reboot() {
        let c = load_text(&format!(
            "[[commander]]\naddr = \"127.0.0.1:4433\"\nkeys = [\"{KEY}\"]\n"
        ))
        .unwrap();
        assert_eq!(c.actions, HostActions::default());
        assert!(!c.actions.allow_reboot);
        assert_eq!(c.actions.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(c.actions.hook_timeout, Duration::from_secs(30));
        assert!(c.actions.hooks.is_empty());
    }

    #[test]
    fn hooks_and_reboot_settings_are_read() {
        let c = load_text(&format!(
            "allow_reboot = true\nreboot_command = [\"/sbin/shutdown\", \"-r\", \"now\"]\nhook_timeout_secs = 5\n\
             [[commander]]\naddr = \"127.0.0.1:4433\"\nkeys = [\"{KEY}\"]\n\
             [hooks]\nbackup = [\"/usr/local/bin/backup\", \"--quick\"]\nrestart-miner = [\"/usr/bin/systemctl\", \"restart\", \"miner\"]\n"
        ))
        .unwrap();
        assert!(c.actions.allow_reboot);
        assert_eq!(c.actions.reboot_command, ["/sbin/shutdown", "-r", "now"]);
        assert_eq!(c.actions.hook_timeout, Duration::from_secs(5));
        assert_eq!(
            c.actions.hooks["backup"],
            ["/usr/local/bin/backup", "--quick"]
        );
        assert_eq!(c.actions.hooks.len(), 2);
        assert_eq!(c.agent.commanders.len(), 1);
    }

    #[test]
    fn bad_actions_settings_are_refused_with_the_reason() {
        let commander = format!("[[commander]]\naddr = \"127.0.0.1:4433\"\nkeys = [\"{KEY}\"]\n");
        for (text, wanted) in [
            ("[hooks]\nempty = []\n", "[hooks] empty is empty"),
            (
                "[hooks]\n\"bad name\" = [\"/bin/true\"]\n",
                "hook name `bad name`",
            ),
            ("reboot_command = []\n", "reboot_command is empty"),
            (
                "hook_timeout_secs = 0\n",
                "hook_timeout_secs must be between 1",
            ),
            ("allow_reboots = true\n", "allow_reboots"),
            ("[hooks]\nx = \"/bin/true\"\n", "invalid type"),
        ] {
            let err = load_text(&format!("{text}{commander}"))
                .map(|_| ())
                .unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
