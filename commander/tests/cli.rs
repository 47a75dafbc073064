//! The operator subcommands against the real `hashfleet-commander serve`:
//! the URL and the admin token come from `--data-dir`; exit codes 0, 1
//! (the API refused, with its message) and 64 (bad input).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Kills the server even when an assertion fails.
struct Server(common::Commander);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Runs `hashfleet-commander ARGS --data-dir DATA` with `stdin` piped in.
fn run(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hashfleet-commander"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("HASHFLEET_TOKEN")
        .env_remove("HASHFLEET_DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn expect_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

#[test]
fn operator_subcommands_call_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("commander");
    let server = Server(common::spawn(&data, "127.0.0.1:0", &[]));
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    // The CLI finds the server through the address it left in the data dir.
    let recorded = std::fs::read_to_string(data.join("http.addr")).unwrap();
    assert_eq!(server.0.http, format!("http://{}", recorded.trim()));
    assert_ne!(server.0.quic.port(), 0);

    // token create: only the token on stdout.
    let o = run(
        &data,
        &["token", "create", "--uses", "1", "--ttl-secs", "60"],
        None,
    );
    expect_code(&o, 0);
    let token = stdout(&o).trim().to_string();
    assert!(token.starts_with("hfe_"), "{token:?}");
    assert_eq!(token.lines().count(), 1);
    assert!(
        !stderr(&o).contains(admin.trim()),
        "the admin token never prints"
    );

    let o = run(
        &data,
        &[
            "token",
            "create",
            "--uses",
            "2",
            "--ttl-secs",
            "60",
            "--json",
        ],
        None,
    );
    expect_code(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).expect("--json prints JSON");
    assert!(v["token"].as_str().unwrap().starts_with("hfe_"));
    assert_eq!(v["uses"], 2);

    // user add: the password from stdin; the API's rules apply.
    let o = run(
        &data,
        &[
            "user",
            "add",
            "--username",
            "alice",
            "--permissions",
            "host:rw",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    );
    expect_code(&o, 0);
    assert!(stdout(&o).contains("alice"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("correct horse"));
    let o = run(
        &data,
        &[
            "user",
            "add",
            "--username",
            "bob",
            "--permissions",
            "host:rw",
            "--password-stdin",
        ],
        Some("short\n"),
    );
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.starts_with("error: ERR_PARAMS_INVALID: "), "{err}");
    assert!(err.contains("12"), "the API's message: {err}");

    // sentry list: nothing enrolled, only the header.
    let o = run(&data, &["sentry", "list"], None);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    for column in ["ID", "STATUS", "KIND", "NODE_ID", "HEARTBEATS", "LAST_SEEN"] {
        assert!(out.contains(column), "{out}");
    }
    let o = run(&data, &["sentry", "list", "--json"], None);
    expect_code(&o, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap(),
        Value::Array(vec![])
    );

    // action list: an empty table.
    let o = run(&data, &["action", "list"], None);
    expect_code(&o, 0);
    assert!(stdout(&o).starts_with("ID"), "{}", stdout(&o));
    let o = run(
        &data,
        &[
            "action", "list", "--state", "voting", "--limit", "5", "--json",
        ],
        None,
    );
    expect_code(&o, 0);
    assert!(serde_json::from_str::<Value>(&stdout(&o))
        .unwrap()
        .is_array());

    // action push with no devices: the API refuses, exit 1.
    let o = run(
        &data,
        &[
            "action",
            "push",
            "--query",
            r#"{"type":"host"}"#,
            "--action",
            "runHook",
            "--params",
            r#"["x"]"#,
        ],
        None,
    );
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("ERR_ORK_ACTION_CALLS_EMPTY"),
        "{}",
        stderr(&o)
    );

    // Bad input never reaches the API: exit 64.
    let o = run(
        &data,
        &["action", "push", "--query", "{type:", "--action", "runHook"],
        None,
    );
    expect_code(&o, 64);
    assert!(
        stderr(&o).contains("--query is not valid JSON"),
        "{}",
        stderr(&o)
    );
    let o = run(&data, &["sentry", "approve", "not-an-id"], None);
    expect_code(&o, 64);

    // An unknown sentry: the API's 404.
    let o = run(&data, &["sentry", "approve", "0000000000000001"], None);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("ERR_NOT_FOUND"), "{err}");
    assert!(err.contains("no sentry 0000000000000001"), "{err}");

    // A wrong token is the API's 401, not a crash.
    let o = run(
        &data,
        &["sentry", "list", "--token", "hfa_not_a_token"],
        None,
    );
    expect_code(&o, 1);
    assert!(stderr(&o).contains("ERR_UNAUTHORIZED"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("hfa_not_a_token"));

    // Nothing serving there any more: a clear message, exit 1.
    drop(server);
    let o = run(&data, &["sentry", "list"], None);
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("no commander answers at http://127.0.0.1:"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn rotate_key_is_picked_up_by_the_running_commander_and_switches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("commander");
    let _server = Server(common::spawn(&data, "127.0.0.1:0", &[]));
    let node_id = |o: &Output| {
        stdout(o)
            .lines()
            .find_map(|l| l.strip_prefix("node_id:"))
            .expect("a node_id line")
            .trim()
            .to_string()
    };
    let before = node_id(&run(&data, &["info"], None));
    let o = run(&data, &["rotate-key", "--grace-secs", "2"], None);
    expect_code(&o, 0);
    let text = stdout(&o);
    assert!(text.contains(&format!("old: {before}")), "{text}");
    let new = text
        .lines()
        .find_map(|l| l.strip_prefix("new: "))
        .expect("a new key")
        .trim()
        .to_string();
    assert!(new.starts_with("12D3KooW") && new != before, "{text}");
    // Asked again while pending: the same rotation.
    let again = run(&data, &["rotate-key", "--grace-secs", "99"], None);
    expect_code(&again, 0);
    assert!(
        stdout(&again).contains("already pending"),
        "{}",
        stdout(&again)
    );
    assert!(stdout(&again).contains(&new));
    // The running commander switches when the grace period ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if node_id(&run(&data, &["info"], None)) == new {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the commander did not switch to {new}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!data.join("key-rotation.json").exists());
}
