//! Host actions: what an approved action may do on this machine.
//!
//! - `runHook` with params `["NAME"]` runs the hook NAME from the sentry's
//!   own config (`[hooks] NAME = ["/path/to/program", "arg", …]`). The
//!   program and its arguments come only from that config: no shell, and
//!   nothing from the network reaches the command line. stdin is
//!   `/dev/null`; stdout and stderr are captured, keeping the last 4 KiB of
//!   each. A hook still running after `hook_timeout_secs` is killed with its
//!   whole process group.
//!   - The outcome is `ok` whenever the hook ran and exited on its own,
//!     whatever its exit code: the detail is
//!     `{"exit_code": N, "stdout_tail": "…", "stderr_tail": "…", "duration_ms": N}`
//!     and the exit code says how it went. It fails (`ok = false`) when the
//!     hook is unknown, cannot start, times out or dies of a signal.
//! - `reboot` (params `[]`) runs `reboot_command` (default `systemctl
//!   reboot`), only when the config sets `allow_reboot = true`. Unlike a
//!   hook, a non-zero exit is a failure. If the machine goes down before
//!   the outcome is journaled, the restarted sentry reports the action as
//!   interrupted, and never reboots again for it.
//! - Anything else fails with "sentry-host does not support `METHOD`".
//!
//! Targets: sentry-host has one device, the host, whose id is the sentry id
//! as 16 hex digits (the commander assigns it). Every such target means
//! the host; the sentry does not check which sentry id it is (the request
//! is already bound to this sentry's node key). A target that is not 16
//! hex digits is refused. A request naming the host twice runs once (the
//! agent executes each distinct target once).

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use hashfleet_agent::Executor;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::HostActions;

/// Bytes kept from the end of stdout and of stderr.
pub const OUTPUT_TAIL: usize = 4 * 1024;
/// After the program exits, how long its output may still take to arrive
/// (a background child may hold the pipes open).
const DRAIN: Duration = Duration::from_secs(1);

/// Runs host actions as the config allows.
#[derive(Debug, Clone, Default)]
pub struct HostExecutor {
    actions: HostActions,
    miners: std::sync::Arc<Vec<std::sync::Arc<crate::minersw::MinerClient>>>,
}

impl HostExecutor {
    pub fn new(actions: HostActions) -> Self {
        HostExecutor {
            actions,
            miners: Default::default(),
        }
    }

    /// Also routes `pauseMiner`/`resumeMiner` to these miner APIs (by id).
    pub fn with_miners(
        mut self,
        miners: std::sync::Arc<Vec<std::sync::Arc<crate::minersw::MinerClient>>>,
    ) -> Self {
        self.miners = miners;
        self
    }

    async fn run_hook(&self, params: &Value) -> Result<Value, String> {
        let name = match params.as_array().map(Vec::as_slice) {
            Some([Value::String(name)]) => name,
            _ => return Err("runHook takes [\"NAME\"]: exactly one hook name".into()),
        };
        let Some(argv) = self.actions.hooks.get(name) else {
            let known: Vec<&str> = self.actions.hooks.keys().map(String::as_str).collect();
            return Err(if known.is_empty() {
                format!("no hook named `{name}`: this sentry's config defines no hooks (add `[hooks] {name} = [\"/path/to/program\", …]`)")
            } else {
                format!(
                    "no hook named `{name}` in this sentry's config; configured hooks: {}",
                    known.join(", ")
                )
            });
        };
        info!(hook = %name, "running a hook");
        let run = run_program(argv, self.actions.hook_timeout)
            .await
            .map_err(|e| format!("hook `{name}` {e}"))?;
        match run.exit_code {
            Some(code) => {
                if code != 0 {
                    warn!(hook = %name, code, "hook exited with a non-zero code");
                }
                Ok(run.to_json(code))
            }
            None => Err(format!(
                "hook `{name}` was killed by signal {}{}",
                run.signal.unwrap_or(0),
                stderr_note(&run.stderr_tail)
            )),
        }
    }

    async fn reboot(&self, params: &Value) -> Result<Value, String> {
        if !self.actions.allow_reboot {
            return Err("reboot is disabled on this sentry: set allow_reboot = true in the sentry config to allow it".into());
        }
        if !params.as_array().is_some_and(Vec::is_empty) {
            return Err("reboot takes no params ([])".into());
        }
        let argv = &self.actions.reboot_command;
        warn!(command = ?argv, "rebooting this host on an approved action");
        let run = run_program(argv, self.actions.hook_timeout)
            .await
            .map_err(|e| format!("reboot command {e}"))?;
        match run.exit_code {
            Some(0) => Ok(run.to_json(0)),
            Some(code) => Err(format!(
                "reboot command `{}` exited with {code}{}",
                argv.join(" "),
                stderr_note(&run.stderr_tail)
            )),
            None => Err(format!(
                "reboot command `{}` was killed by signal {}",
                argv.join(" "),
                run.signal.unwrap_or(0)
            )),
        }
    }
}

impl Executor for HostExecutor {
    async fn execute(&self, method: &str, params: &Value, target: &str) -> Result<Value, String> {
        if let Some(m) = self.miners.iter().find(|m| m.id() == target) {
            return m.execute(method, params).await;
        }
        if target.len() != 16 || !target.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "sentry-host runs actions on the host (its sentry id as 16 hex digits) and its [[miner]] entries; `{target}` is neither"
            ));
        }
        match method {
            "runHook" => self.run_hook(params).await,
            "reboot" => self.reboot(params).await,
            "pauseMiner" | "resumeMiner" => Err(format!(
                "sentry-host does not support `{method}` on the host: target a [[miner]] device"
            )),
            other => Err(format!("sentry-host does not support `{other}`")),
        }
    }
}

fn stderr_note(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        return String::new();
    }
    let mut start = tail.len().saturating_sub(512);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    format!("; stderr ends with: {}", &tail[start..])
}

/// How a program ended.
#[derive(Debug)]
struct Run {
    exit_code: Option<i32>,
    signal: Option<i32>,
    stdout_tail: String,
    stderr_tail: String,
    duration: Duration,
}

impl Run {
    fn to_json(&self, exit_code: i32) -> Value {
        json!({
            "exit_code": exit_code,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "duration_ms": self.duration.as_millis() as u64,
        })
    }
}

/// The last [`OUTPUT_TAIL`] bytes of a stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * OUTPUT_TAIL {
            let cut = self.0.len() - OUTPUT_TAIL;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let mut bytes = &self.0[self.0.len().saturating_sub(OUTPUT_TAIL)..];
        // Do not start inside a UTF-8 character.
        while let [first, rest @ ..] = bytes {
            if first & 0xc0 != 0x80 {
                break;
            }
            bytes = rest;
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Kills a process group when dropped, unless disarmed: a hook abandoned
/// mid-run (its action task cancelled) leaves nothing behind.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals the process group
            // `pgid`, which the hook leads (it was spawned with
            // `process_group(0)`); no memory is shared with the call.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `argv` directly (no shell) with stdin from `/dev/null`, keeping
/// the tails of stdout and stderr; kills its process group after `timeout`.
async fn run_program(argv: &[String], timeout: Duration) -> Result<Run, String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "has no program configured".to_string())?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let mut group = GroupKill(child.id().map(|id| id as i32));
    let mut stdout = child.stdout.take().ok_or("has no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("has no stderr pipe")?;
    let (mut out, mut err) = (Tail::default(), Tail::default());
    let (mut out_buf, mut err_buf) = (vec![0u8; 8192], vec![0u8; 8192]);
    let (mut out_open, mut err_open) = (true, true);
    let mut status = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while status.is_none() || out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => out.push(&out_buf[..n]),
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => err.push(&err_buf[..n]),
            },
            exit = child.wait(), if status.is_none() => {
                let exit = exit.map_err(|e| format!("`{program}`: cannot wait for it: {e}"))?;
                status = Some(exit);
                // It exited: leave its background children alone, and
                // wait a moment only for the rest of its output.
                group.0 = None;
                deadline.as_mut().reset(Instant::now() + DRAIN);
            },
            _ = &mut deadline => {
                if status.is_some() {
                    break;
                }
                group.kill();
                let _ = child.kill().await;
                return Err(format!(
                    "timed out after {}s and was killed{}",
                    timeout.as_secs(),
                    stderr_note(&err.text())
                ));
            }
        }
    }
    let status = status.expect("the loop ends only after the exit");
    Ok(Run {
        exit_code: status.code(),
        signal: status.signal(),
        stdout_tail: out.text(),
        stderr_tail: err.text(),
        duration: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const HOST: &str = "00000000000000a1";

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn executor(hooks: &[(&str, Vec<String>)], allow_reboot: bool) -> HostExecutor {
        HostExecutor::new(HostActions {
            hooks: hooks
                .iter()
                .map(|(n, argv)| (n.to_string(), argv.clone()))
                .collect::<BTreeMap<_, _>>(),
            allow_reboot,
            reboot_command: vec!["/bin/false".into()],
            hook_timeout: Duration::from_secs(10),
        })
    }

    #[tokio::test]
    async fn a_hook_runs_without_a_shell_of_ours_and_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ran");
        // The argument is passed as is: no shell expands `$HOME` or `;`.
        let append = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$1\" >> \"$2\"; echo done; echo warn >&2".into(),
            "sh".into(),
            "a line; $HOME".into(),
            file.display().to_string(),
        ];
        let ex = executor(&[("append", append)], false);
        let out = ex
            .execute("runHook", &json!(["append"]), HOST)
            .await
            .unwrap();
        assert_eq!(out["exit_code"], 0);
        assert_eq!(out["stdout_tail"], "done\n");
        assert_eq!(out["stderr_tail"], "warn\n");
        assert!(out["duration_ms"].as_u64().is_some());
        ex.execute("runHook", &json!(["append"]), HOST)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "a line; $HOME\na line; $HOME\n"
        );
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_reported_in_the_outcome() {
        let ex = executor(&[("fail", sh("echo oops >&2; exit 3"))], false);
        let out = ex.execute("runHook", &json!(["fail"]), HOST).await.unwrap();
        assert_eq!(out["exit_code"], 3);
        assert_eq!(out["stderr_tail"], "oops\n");
    }

    #[tokio::test]
    async fn only_the_last_4_kib_of_output_is_kept() {
        let ex = executor(
            &[(
                "loud",
                sh("i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"),
            )],
            false,
        );
        let out = ex.execute("runHook", &json!(["loud"]), HOST).await.unwrap();
        let tail = out["stdout_tail"].as_str().unwrap();
        assert_eq!(tail.len(), OUTPUT_TAIL);
        assert!(tail.ends_with("line-2999\n"), "{tail}");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let mut ex = executor(
            &[("slow", sh(&format!("sleep 5; touch {}", marker.display())))],
            false,
        );
        ex.actions.hook_timeout = Duration::from_secs(1);
        let started = std::time::Instant::now();
        let err = ex
            .execute("runHook", &json!(["slow"]), HOST)
            .await
            .unwrap_err();
        assert!(err.contains("timed out after 1s"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        // The whole group died: the shell did not go on to touch the file.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn bad_hook_requests_say_what_is_wrong() {
        let ex = executor(&[("a", sh("true")), ("b", sh("true"))], false);
        let err = ex
            .execute("runHook", &json!(["c"]), HOST)
            .await
            .unwrap_err();
        assert!(
            err.contains("no hook named `c`") && err.contains("a, b"),
            "{err}"
        );
        for params in [json!([]), json!(["a", "b"]), json!([1]), json!({"a": 1})] {
            let err = ex.execute("runHook", &params, HOST).await.unwrap_err();
            assert!(err.contains("runHook takes [\"NAME\"]"), "{params}: {err}");
        }
        let none = executor(&[], false);
        let err = none
            .execute("runHook", &json!(["x"]), HOST)
            .await
            .unwrap_err();
        assert!(err.contains("defines no hooks"), "{err}");
        let missing = executor(&[("gone", vec!["/nonexistent/program".into()])], false);
        let err = missing
            .execute("runHook", &json!(["gone"]), HOST)
            .await
            .unwrap_err();
        assert!(err.contains("cannot start `/nonexistent/program`"), "{err}");
        let err = ex
            .execute("pauseMiner", &json!([]), HOST)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "sentry-host does not support `pauseMiner` on the host: target a [[miner]] device"
        );
        let err = ex
            .execute("runHook", &json!(["a"]), "00:1a:2b:3c:4d:5e")
            .await
            .unwrap_err();
        assert!(err.contains("is neither"), "{err}");
    }

    #[tokio::test]
    async fn reboot_is_refused_unless_allowed() {
        let ex = executor(&[], false);
        let err = ex.execute("reboot", &json!([]), HOST).await.unwrap_err();
        assert!(err.contains("set allow_reboot = true"), "{err}");
    }

    #[tokio::test]
    async fn reboot_runs_the_configured_command_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("rebooted");
        let mut ex = executor(&[], true);
        ex.actions.reboot_command = vec!["/bin/touch".into(), marker.display().to_string()];
        let out = ex.execute("reboot", &json!([]), HOST).await.unwrap();
        assert_eq!(out["exit_code"], 0);
        assert!(marker.exists());

        let err = ex
            .execute("reboot", &json!(["now"]), HOST)
            .await
            .unwrap_err();
        assert!(err.contains("reboot takes no params"), "{err}");
        ex.actions.reboot_command = sh("echo no permission >&2; exit 1");
        let err = ex.execute("reboot", &json!([]), HOST).await.unwrap_err();
        assert!(
            err.contains("exited with 1") && err.contains("no permission"),
            "{err}"
        );
    }
}
