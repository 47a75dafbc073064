//! `hashfleet-commander backup` and `restore` with the real binary: a
//! backup taken while `serve` runs and sentries stream, restored into a
//! fresh data dir, serves the same sentries and heartbeats.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{spawn, Commander};

use hashfleet_agent::{AgentConfig, CommanderTarget, StatusHandle};
use hashfleet_shared::wire::SentryKind;
use hashfleet_shared::NodeId;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hashfleet-commander");

fn kill(mut commander: Commander) {
    commander.kill();
}

/// Runs the binary to completion.
fn run(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    cmd.env("RUST_LOG", "warn")
        .env_remove("HASHFLEET_DATA_DIR")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn backup(data: &Path, file: &Path) -> Output {
    run(&["backup"], &[("--data-dir", data), ("--out", file)])
}

fn restore(data: &Path, file: &Path) -> Output {
    run(&["restore"], &[("--data-dir", data), ("--in", file)])
}

fn admin_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> Value {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Every sentry (without the `connected` flag, which a restart changes) and
/// all its heartbeats.
async fn snapshot(client: &reqwest::Client, http: &str, token: &str) -> Vec<(Value, Value)> {
    let sentries = get(client, &format!("{http}/api/v1/sentries?limit=1000"), token).await;
    let mut out = Vec::new();
    for s in sentries.as_array().unwrap() {
        let id = s["sentry_id"].as_str().unwrap();
        let hbs = get(
            client,
            &format!("{http}/api/v1/sentries/{id}/heartbeats?limit=10000"),
            token,
        )
        .await;
        let mut s = s.clone();
        s.as_object_mut().unwrap().remove("connected");
        out.push((s, hbs));
    }
    out
}

/// Each sentry's stored heartbeats are exactly seqs 1..=last_seq and its
/// count says so: the store was copied at one moment.
fn assert_consistent(snapshot: &[(Value, Value)]) {
    for (s, hbs) in snapshot {
        let mut seqs: Vec<u64> = hbs
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["seq"].as_u64().unwrap())
            .collect();
        seqs.reverse();
        let last = s["last_seq"].as_u64().unwrap();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{s}");
        assert_eq!(s["heartbeats"].as_u64().unwrap(), last, "{s}");
    }
}

fn copy_private(from: &Path, to: &Path, name: &str) {
    std::fs::copy(from.join(name), to.join(name)).unwrap();
    std::fs::set_permissions(to.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A fresh data dir holding the old commander's identity and admin token.
fn data_dir_like(old: &Path, new: &Path) {
    std::fs::create_dir_all(new).unwrap();
    std::fs::set_permissions(new, std::fs::Permissions::from_mode(0o700)).unwrap();
    copy_private(old, new, "identity.json");
    copy_private(old, new, "admin.token");
}

struct Sentry {
    status: StatusHandle,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_sentry(home: &Path, quic: SocketAddr, key: NodeId, token: String) -> Sentry {
    let target = CommanderTarget {
        addr: quic.to_string(),
        keys: vec![key],
        enroll_token: Some(token),
    };
    let mut config = AgentConfig::new(home.to_path_buf(), vec![target], SentryKind::Host);
    config.interval = Duration::from_millis(100);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    let agent = hashfleet_sentry_host::agent(config).unwrap();
    let status = agent.status();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stop_rx.await;
    }));
    Sentry { status, stop, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_then_restore_into_a_fresh_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("commander");
    let commander = spawn(&data, "127.0.0.1:0", &[]);
    assert!(data.join("http.addr").exists(), "serve records its address");
    let admin = admin_token(&data);
    let key: NodeId = {
        let out = run(&["info", "--json"], &[("--data-dir", &data)]);
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        NodeId::from_public_key_hex(v["public_key"].as_str().unwrap()).unwrap()
    };
    let client = reqwest::Client::new();
    let mut sentries = Vec::new();
    for i in 0..2 {
        let token = common::enrollment_token(&client, &commander.http, &admin).await;
        sentries.push(start_sentry(
            &dir.path().join(format!("sentry{i}")),
            commander.quic,
            key,
            token,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sentries.iter().any(|s| s.status.get().last_ack_seq < 20) {
        assert!(Instant::now() < deadline, "sentries never got 20 acks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. While heartbeats stream in: through the server's API.
    let streaming = dir.path().join("streaming.hfbackup");
    let out = backup(&data, &streaming);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("from the commander at"), "{stdout}");
    assert!(stdout.contains("entries"), "{stdout}");
    let mode = std::fs::metadata(&streaming).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // No temporary files anywhere.
    for d in [dir.path(), data.as_path()] {
        for e in std::fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp"), "left behind: {name}");
        }
    }

    // Restore is refused while the server runs.
    let out = restore(&data, &streaming);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop the commander first"),
        "{}",
        text(&out)
    );

    // 2. Sentries stopped, server still up: the reference state.
    for s in sentries {
        let _ = s.stop.send(());
        s.task.await.unwrap().unwrap();
        assert!(s.status.get().last_ack_seq >= 20);
    }
    let before = snapshot(&client, &commander.http, &admin).await;
    assert_eq!(before.len(), 2);
    assert_consistent(&before);
    let quiet = dir.path().join("quiet.hfbackup");
    let out = backup(&data, &quiet);
    assert!(out.status.success(), "{}", text(&out));
    kill(commander);

    // A stale http.addr (SIGKILL left it): backup falls back to the store.
    assert!(data.join("http.addr").exists());
    let offline = dir.path().join("offline.hfbackup");
    let out = backup(&data, &offline);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from the store"),
        "{}",
        text(&out)
    );

    // 3. Restore into a fresh data dir and serve it.
    let data2 = dir.path().join("restored");
    data_dir_like(&data, &data2);
    let out = restore(&data2, &quiet);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("restore:"));
    let restored = spawn(&data2, "127.0.0.1:0", &[]);
    let after = snapshot(&client, &restored.http, &admin).await;
    assert_eq!(after, before, "the restored commander serves the same data");
    eprintln!(
        "restored {} sentries with {:?} heartbeats",
        after.len(),
        after
            .iter()
            .map(|(s, _)| s["heartbeats"].as_u64().unwrap())
            .collect::<Vec<_>>()
    );

    // Restoring over a store that exists is refused, running or not.
    let out = restore(&data2, &quiet);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop the commander first"),
        "{}",
        text(&out)
    );
    kill(restored);
    let out = restore(&data2, &quiet);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already holds a store"), "{}", text(&out));
    assert!(stderr.contains("--data-dir"), "{}", text(&out));

    // 4. The backup taken while writers ran is one consistent moment.
    let data3 = dir.path().join("from-streaming");
    data_dir_like(&data, &data3);
    let out = restore(&data3, &streaming);
    assert!(out.status.success(), "{}", text(&out));
    let third = spawn(&data3, "127.0.0.1:0", &[]);
    let mid = snapshot(&client, &third.http, &admin).await;
    assert_eq!(mid.len(), 2);
    assert_consistent(&mid);
    kill(third);

    // 5. A flipped byte: refused with a checksum message, nothing written.
    let mut bytes = std::fs::read(&quiet).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    let damaged = dir.path().join("damaged.hfbackup");
    std::fs::write(&damaged, &bytes).unwrap();
    let data4 = dir.path().join("damaged-target");
    data_dir_like(&data, &data4);
    let out = restore(&data4, &damaged);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        text(&out)
    );
    assert!(!data4.join("store").exists(), "nothing half-written");
}
