//! The real commander binary SIGKILLed while an action executes: after the
//! restart the action ends `done`, and the hook ran exactly once (the
//! sentry answers the resent request from its journal).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::spawn;
use hashfleet_agent::{AgentConfig, CommanderTarget};
use hashfleet_sentry_host::config::HostConfig;
use hashfleet_shared::wire::SentryKind;
use serde_json::{json, Value};

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Value {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_executing_neither_loses_nor_repeats_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("commander");
    let mut commander = spawn(&data, "127.0.0.1:0", &[]);
    let quic = commander.quic;
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let client = reqwest::Client::new();
    let key = common::commander_key(&data);
    let token = common::enrollment_token(&client, &commander.http, &admin).await;

    // A hook that marks its start, takes two seconds, then appends a line.
    let started = dir.path().join("started");
    let ran = dir.path().join("ran.txt");
    let script = dir.path().join("slow.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ntouch \"$1\"\nsleep 2\necho ran >> \"$2\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = CommanderTarget {
        addr: quic.to_string(),
        keys: vec![key],
        enroll_token: Some(token),
    };
    let mut config = AgentConfig::new(dir.path().join("sentry"), vec![target], SentryKind::Host);
    config.interval = Duration::from_millis(200);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    let mut host = HostConfig::new(config);
    host.actions.hooks.insert(
        "slow".into(),
        vec![
            script.display().to_string(),
            started.display().to_string(),
            ran.display().to_string(),
        ],
    );
    let agent = hashfleet_sentry_host::agent_with(host).unwrap();
    let status = agent.status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sentry = tokio::spawn(agent.run(async {
        let _ = stop_rx.await;
    }));
    wait_for("the sentry to report", || status.get().last_ack_seq >= 2).await;

    let action = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/v1/actions", commander.http),
        &admin,
        Some(json!({"query": {"type": "host"}, "action": "runHook", "params": ["slow"]})),
    )
    .await;
    let id = action["id"].as_str().expect("action created").to_string();

    // Kill the commander while the hook runs, then bring it back.
    wait_for("the hook to start", || started.exists()).await;
    commander.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let commander = spawn(&data, &quic.to_string(), &[]);
    let url = format!("{}/api/v1/actions/{id}", commander.http);
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let a = call(&client, reqwest::Method::GET, url.clone(), &admin, None).await;
        if a["state"] == "done" {
            break a;
        }
        assert!(Instant::now() < deadline, "action never finished: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let result = done["results"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(result["ok"], true, "{done}");
    assert_eq!(result["detail"]["exit_code"], 0, "{done}");
    // Give a wrongly repeated execution time to show itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = std::fs::read_to_string(&ran).unwrap().lines().count();
    assert_eq!(lines, 1, "the hook ran exactly once");
    let _ = stop_tx.send(());
    sentry.await.unwrap().unwrap();
    let mut commander = commander;
    commander.kill();
}
