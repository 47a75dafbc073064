//! The real sentry binary SIGKILLed at random moments (0–20 ms after
//! `identity rotate`: the whole rotation takes a few milliseconds here) of a node key rotation: every restart resumes, the commander and the sentry end on the
//! same key, and every heartbeat is stored exactly once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hashfleet_shared::Identity;
use hashfleet_tests::{init_logs, wait_until, TestCommander};

const WAIT: Duration = Duration::from_secs(40);
const ROUNDS: usize = 10;

fn sentry(c: &TestCommander, home: &Path, token: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-sentry-host"));
    cmd.args(["run", "--interval-secs", "1", "--commander"])
        .arg(c.quic.to_string())
        .arg("--commander-key")
        .arg(c.node_id.public_key_hex())
        .arg("--home")
        .arg(home)
        .env_remove("HASHFLEET_CONFIG")
        .env_remove("HASHFLEET_HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = token {
        cmd.arg("--enroll-token").arg(t);
    }
    cmd.spawn().expect("the sentry binary starts")
}

fn rotate_cli(home: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_test-sentry-host"))
        .args(["identity", "rotate", "--home"])
        .arg(home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the CLI starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_rotation_resumes_every_time() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_with(&dir.path().join("c"), None, |c| {
        c.rotation_grace = Duration::from_secs(60)
    })
    .await;
    let home = dir.path().join("s");
    let token = c.enrollment_token(1).await;
    let mut child = sentry(&c, &home, Some(&token));
    wait_until(WAIT, "enrollment", || async {
        c.sentries().await.len() == 1
    })
    .await;
    let id = c.sentries().await[0]["sentry_id"]
        .as_str()
        .unwrap()
        .to_string();
    let get = |path: String| {
        let c = &c;
        async move { c.get(&path).await }
    };
    let mut rng = fastrand::Rng::with_seed(0x7077);
    for round in 0..ROUNDS {
        let before = get(format!("/api/v1/sentries/{id}")).await["heartbeats"]
            .as_u64()
            .unwrap();
        wait_until(WAIT, "the sentry reports", || async {
            get(format!("/api/v1/sentries/{id}")).await["heartbeats"].as_u64() > Some(before)
        })
        .await;
        let mut cli = rotate_cli(&home);
        let delay = rng.u64(0..20_000);
        // Off the runtime, so that the commander keeps serving meanwhile.
        let cli_ok = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_micros(delay));
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
            cli.wait().unwrap().success()
        })
        .await
        .unwrap();
        // Where the kill landed: was the next key still pending, and had the
        // commander already rebound the sentry to it?
        let pending = home.join("identity.next.json").exists();
        let on_disk = Identity::load(&Identity::path_in(&home))
            .unwrap()
            .node_id()
            .to_string();
        let rebound = get(format!("/api/v1/sentries/{id}")).await["node_id"] != on_disk.as_str();
        eprintln!(
            "round {round}: killed {delay} µs after `identity rotate`; \
             `identity rotate` answered: {cli_ok}, next key pending: {pending}, \
             commander ahead of identity.json: {rebound}"
        );
        child = sentry(&c, &home, None);
        // Resumed: the rotation completed (or was never started), the
        // commander holds the sentry's key, and heartbeats flow again.
        wait_until(WAIT, "the sentry resumes on one key", || async {
            let s = get(format!("/api/v1/sentries/{id}")).await;
            let Ok(identity) = Identity::load(&Identity::path_in(&home)) else {
                return false;
            };
            !home.join("identity.next.json").exists()
                && s["node_id"] == identity.node_id().to_string()
                && s["connected"] == true
        })
        .await;
        let after = get(format!("/api/v1/sentries/{id}")).await["heartbeats"]
            .as_u64()
            .unwrap();
        wait_until(WAIT, "heartbeats after resuming", || async {
            get(format!("/api/v1/sentries/{id}")).await["heartbeats"].as_u64() >= Some(after + 2)
        })
        .await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let s = get(format!("/api/v1/sentries/{id}")).await;
    let rotations = s["rotations"].as_array().unwrap().len();
    assert_eq!(s["node_id_history"].as_array().unwrap().len(), rotations);
    eprintln!("{ROUNDS} kills, {rotations} rotations completed");
    let seqs = c.stored_seqs(&id).await;
    let want: Vec<u64> = (1..=*seqs.last().unwrap()).collect();
    assert_eq!(seqs, want, "a heartbeat was lost or stored twice");
}
