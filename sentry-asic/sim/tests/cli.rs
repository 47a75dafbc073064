//! The `hashfleet-sim` binary: what it prints, the config it writes, a
//! second sim refused on the same block, bad flags, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hashfleet-sim"))
}

#[test]
fn prints_its_fleet_writes_a_config_refuses_a_second_sim_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sentry.toml");
    let mut child = sim()
        .args([
            "--miners",
            "4",
            "--base-ip",
            "127.211.0.1",
            "--containers",
            "1",
            "--meters",
            "1",
            "--relays",
            "1",
            "--relay-channels",
            "2",
            "--write-sentry-config",
        ])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.iter().any(|l: &String| l.starts_with("sentry")) {
        assert!(Instant::now() < deadline, "sim printed {lines:?}");
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("sim exited early: {lines:?}");
        }
        lines.push(line.trim_end().to_string());
    }
    let text = lines.join("\n");
    assert!(
        text.contains("miners          4  127.211.0.1-127.211.0.4"),
        "{text}"
    );
    assert!(
        text.contains("containers      1  127.211.0.5-127.211.0.5"),
        "{text}"
    );
    assert!(
        text.contains("meters          1  127.211.0.6-127.211.0.6"),
        "{text}"
    );
    assert!(
        text.contains("relays          1  127.211.0.7-127.211.0.7"),
        "{text}"
    );

    // The config covers exactly the fleet.
    let written: toml::Value = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        written["scan"][0]["range"].as_str(),
        Some("127.211.0.1-127.211.0.4")
    );
    assert_eq!(written["scan"].as_array().unwrap().len(), 1);
    assert!(written["interval_secs"].as_integer().unwrap() <= 10);
    assert_eq!(written["container"].as_array().unwrap().len(), 1);
    assert_eq!(written["powermeter"].as_array().unwrap().len(), 1);
    assert_eq!(written["relay"].as_array().unwrap().len(), 1);

    // A second sim on the same block is refused, naming it.
    let second = sim()
        .args(["--miners", "1", "--base-ip", "127.211.0.200"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("127.211.0.0/24"), "{err}");

    // SIGTERM: a clean exit.
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_flags_say_what_to_change() {
    let out = sim()
        .args([
            "--miners",
            "1",
            "--base-ip",
            "127.212.0.1",
            "--models",
            "antminer-s9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model `antminer-s9`"));
    let out = sim()
        .args([
            "--miners",
            "1",
            "--base-ip",
            "127.212.0.1",
            "--models",
            "avalon-a1346",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("use avalon-a1466"));
    let out = sim()
        .args(["--miners", "1", "--base-ip", "10.0.0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"));
    let out = sim()
        .args([
            "--miners",
            "1",
            "--base-ip",
            "127.212.0.1",
            "--fault",
            "melt",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault `melt`"));
}
