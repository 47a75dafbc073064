//! Approved actions end to end: users vote, the commander signs and sends,
//! the sentry runs its configured hook exactly once and signs the result.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hashfleet_sentry_host::config::HostConfig;
use hashfleet_tests::{init_logs, wait_until, TestCommander, TestSentry};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// A hook script that appends one line to `file`.
fn append_hook(dir: &Path, file: &Path) -> Vec<String> {
    let script = dir.join("append.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran >> \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    vec![script.display().to_string(), file.display().to_string()]
}

fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

async fn user(c: &TestCommander, name: &str, perms: &[&str]) -> String {
    let password = format!("{name}-correct-horse-battery");
    let (status, body) = c
        .post(
            "/api/v1/users",
            json!({"username": name, "password": password, "permissions": perms}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = c
        .request(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            Some(json!({"username": name, "password": password})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

async fn as_user(c: &TestCommander, token: &str, path: &str, body: Value) -> (u16, Value) {
    c.request(reqwest::Method::POST, path, Some(body), Some(token))
        .await
}

struct Fixture {
    _dir: tempfile::TempDir,
    c: TestCommander,
    sentry: TestSentry,
    file: std::path::PathBuf,
    home: std::path::PathBuf,
    hooks: Vec<String>,
}

async fn fixture(votes: u32) -> Fixture {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_with(&dir.path().join("c"), None, |cfg| {
        cfg.actions.votes.insert("runHook".into(), votes);
    })
    .await;
    let file = dir.path().join("ran.txt");
    let hooks = append_hook(dir.path(), &file);
    let home = dir.path().join("s");
    let token = c.enrollment_token(1).await;
    let mut host = HostConfig::new(c.sentry_config(&home, Some(token)));
    host.actions.hooks.insert("append".into(), hooks.clone());
    let sentry = TestSentry::start_with(host);
    wait_until(WAIT, "host device registered", || async {
        c.post("/api/v1/devices/query", json!({"query": {"type": "host"}}))
            .await
            .1["total"]
            == 1
    })
    .await;
    Fixture {
        _dir: dir,
        c,
        sentry,
        file,
        home,
        hooks,
    }
}

async fn state(c: &TestCommander, id: &str) -> Value {
    c.get(&format!("/api/v1/actions/{id}")).await
}

#[tokio::test]
async fn two_approvals_run_the_hook_exactly_once() {
    let mut f = fixture(2).await;
    let c = &f.c;
    let alice = user(c, "alice", &["host:rw"]).await;
    let bob = user(c, "bob", &["host:rw"]).await;
    let carol = user(c, "carol", &["miner:rw", "host:r"]).await;

    let push = json!({"query": {"type": "host"}, "action": "runHook", "params": ["append"]});
    let (status, body) = as_user(c, &carol, "/api/v1/actions", push.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("ERR_MISSING_WRITE_PERMISSIONS")),
        "{body}"
    );

    let (status, action) = as_user(c, &alice, "/api/v1/actions", push).await;
    assert_eq!(status, 201, "{action}");
    assert_eq!(action["state"], "voting");
    assert_eq!(action["required_perms"], json!(["host:w"]));
    assert_eq!(action["votes"], json!({"alice": true}));
    assert_eq!(
        (
            action["req_votes_pos"].as_u64(),
            action["req_votes_neg"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let id = action["id"].as_str().unwrap().to_string();
    let vote = format!("/api/v1/actions/{id}/vote");

    let (status, body) = as_user(c, &carol, &vote, json!({"approve": true})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("ERR_ACTION_DENIED")),
        "{body}"
    );
    let (status, body) = as_user(c, &alice, &vote, json!({"approve": true})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("ERR_VOTER_EXISTS")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lines(&f.file), 0, "nothing runs before the threshold");

    let voted = Instant::now();
    let (status, body) = as_user(c, &bob, &vote, json!({"approve": true})).await;
    assert_eq!(status, 200, "{body}");
    wait_until(WAIT, "action done", || async {
        state(c, &id).await["state"] == "done"
    })
    .await;
    let latency = voted.elapsed();
    let done = state(c, &id).await;
    let result = done["results"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(result["ok"], true, "{done}");
    assert_eq!(result["detail"]["exit_code"], 0, "{done}");
    assert_eq!(lines(&f.file), 1);
    eprintln!("last vote → stored result: {latency:?}");

    // The action is never run twice: not after more time, nor after a
    // restart of the sentry (the commander has nothing more to send).
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.sentry.stop().await;
    let token = f.c.enrollment_token(1).await;
    let mut host = HostConfig::new(f.c.sentry_config(&f.home, Some(token)));
    host.actions.hooks.insert("append".into(), f.hooks.clone());
    let mut again = TestSentry::start_with(host);
    wait_until(WAIT, "reconnected", || async {
        again.status.get().connected
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines(&f.file), 1);

    // Every write is in the audit log, with who did it.
    let audit = f.c.get("/api/v1/audit?limit=100").await;
    let entries = audit.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["actor"] == "alice"
            && e["operation"] == "POST /api/v1/actions"
            && e["status"] == 201),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "carol" && e["status"] == 403),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "bob"
                && e["operation"] == format!("POST /api/v1/actions/{id}/vote")),
        "{audit}"
    );
    let (status, _) =
        f.c.request(reqwest::Method::GET, "/api/v1/audit", None, Some(&carol))
            .await;
    assert_eq!(status, 403, "audit needs audit:r");

    let (_, listed) =
        f.c.post("/api/v1/actions/query", json!({"state": "done", "gte": 0}))
            .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    again.stop().await;
    f.c.stop().await;
}

#[tokio::test]
async fn a_no_vote_cancels_and_nothing_runs() {
    let mut f = fixture(2).await;
    let c = &f.c;
    let alice = user(c, "alice", &["host:rw"]).await;
    let bob = user(c, "bob", &["host:rw"]).await;
    let (_, action) = as_user(
        c,
        &alice,
        "/api/v1/actions",
        json!({"query": {"type": "host"}, "action": "runHook", "params": ["append"]}),
    )
    .await;
    let id = action["id"].as_str().unwrap();
    let (status, body) = as_user(
        c,
        &bob,
        &format!("/api/v1/actions/{id}/vote"),
        json!({"approve": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lines(&f.file), 0);

    // Cancelling: only the creator or an admin; batches share a uid.
    let (_, batch) = as_user(
        c,
        &alice,
        "/api/v1/actions/batch",
        json!({"batch_uid": "b1", "actions": [
            {"query": {"type": "host"}, "action": "runHook", "params": ["append"]},
            {"query": {"type": "miner"}, "action": "runHook", "params": ["append"]}
        ]}),
    )
    .await;
    assert_eq!(batch[0]["action"]["batch_uid"], "b1");
    assert_eq!(batch[1]["error"]["code"], "ERR_ORK_ACTION_CALLS_EMPTY");
    let bid = batch[0]["action"]["id"].as_str().unwrap().to_string();
    let (_, res) = as_user(c, &bob, "/api/v1/actions/cancel", json!({"ids": [bid]})).await;
    assert_eq!(res[0]["error"]["code"], "ERR_CALLER_NOT_CREATOR");
    let (_, res) = as_user(c, &alice, "/api/v1/actions/cancel", json!({"ids": [bid]})).await;
    assert_eq!(res[0]["state"], "cancelled");
    let (_, grouped) = c
        .post("/api/v1/actions/query", json!({"group_batch": true}))
        .await;
    assert_eq!(grouped["b1"].as_array().unwrap().len(), 1);
    f.sentry.stop().await;
    f.c.stop().await;
}

#[tokio::test]
async fn a_sentry_offline_at_dispatch_runs_the_action_when_it_returns() {
    let mut f = fixture(1).await;
    f.sentry.stop().await;
    let (status, action) =
        f.c.post(
            "/api/v1/actions",
            json!({"query": {"type": "host"}, "action": "runHook", "params": ["append"]}),
        )
        .await;
    assert_eq!(status, 201, "{action}");
    let id = action["id"].as_str().unwrap().to_string();
    wait_until(WAIT, "executing", || async {
        state(&f.c, &id).await["state"] == "executing"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines(&f.file), 0);

    let token = f.c.enrollment_token(1).await;
    let mut host = HostConfig::new(f.c.sentry_config(&f.home, Some(token)));
    host.actions.hooks.insert("append".into(), f.hooks.clone());
    let mut sentry = TestSentry::start_with(host);
    wait_until(WAIT, "done after reconnect", || async {
        state(&f.c, &id).await["state"] == "done"
    })
    .await;
    assert_eq!(lines(&f.file), 1);
    sentry.stop().await;
    f.c.stop().await;
}
