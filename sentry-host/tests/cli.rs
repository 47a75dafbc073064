//! The `hashfleet-sentry-host` binary: identity commands, refusal of
//! unsafe or corrupt identity files, and config errors.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hashfleet-sentry-host"));
    c.env_remove("HASHFLEET_HOME")
        .env_remove("HASHFLEET_CONFIG");
    c
}

/// Runs `cmd`, which must succeed; its stdout.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const KEY: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

#[test]
fn identity_init_then_show_prints_no_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let node_id = stdout_of(bin().args(["identity", "init", "--home"]).arg(&home))
        .trim()
        .to_string();
    assert!(node_id.starts_with("12D3KooW"), "{node_id}");

    // init again keeps the same identity.
    let again = bin()
        .args(["identity", "init", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), node_id);

    // HASHFLEET_HOME works like --home.
    let out = stdout_of(
        bin()
            .args(["identity", "show", "--json"])
            .env("HASHFLEET_HOME", &home),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node_id"], node_id.as_str());
    for field in [
        "node_public_key",
        "wallet_address",
        "wallet_public_key",
        "created_at",
    ] {
        assert!(v[field].is_string(), "missing {field}: {v}");
    }
    assert!(v["wallet_address"].as_str().unwrap().starts_with("0x"));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert!(keys.iter().all(|k| !k.contains("private")), "{keys:?}");
    assert!(!out.contains(
        &serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(home.join("identity.json")).unwrap()
        )
        .unwrap()["node_private_key"]
            .as_str()
            .unwrap()
            .to_string()
    ));
}

#[test]
fn run_refuses_an_open_key_file_and_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert!(bin()
        .args(["identity", "init", "--home"])
        .arg(&home)
        .status()
        .unwrap()
        .success());
    let file = home.join("identity.json");
    let original = std::fs::read(&file).unwrap();

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args([
            "run",
            "--commander",
            "127.0.0.1:9",
            "--commander-key",
            KEY,
            "--home",
        ])
        .arg(&home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&file, b"{\"node_id\": \"broken").unwrap();
    let out = bin()
        .args([
            "run",
            "--commander",
            "127.0.0.1:9",
            "--commander-key",
            KEY,
            "--home",
        ])
        .arg(&home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid Hashfleet identity"), "{err}");
    // Never regenerated over.
    assert_eq!(std::fs::read(&file).unwrap(), b"{\"node_id\": \"broken");
    assert_ne!(original.len(), 0);
}

#[test]
fn config_errors_exit_64_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "--home"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--commander"));

    let out = bin()
        .args([
            "validate",
            "--commander",
            "127.0.0.1:4433",
            "--commander-key",
            "nothex",
            "--home",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothex"));

    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, "unknown_key = 1\n").unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_key"));

    stdout_of(
        bin()
            .args([
                "validate",
                "--commander",
                "127.0.0.1:4433",
                "--commander-key",
                KEY,
                "--home",
            ])
            .arg(dir.path()),
    );
}

#[test]
fn identity_rotate_on_a_stopped_sentry_prepares_one_next_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let node_id = stdout_of(bin().args(["identity", "init", "--home"]).arg(&home))
        .trim()
        .to_string();
    let rotate = |what: &str| {
        let text = stdout_of(bin().args(["identity", what, "--home"]).arg(&home));
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no `{name}` in {text}"))
                .trim()
                .to_string()
        };
        assert!(text.contains("pending"), "{text}");
        (field("old:"), field("new:"))
    };
    let (old, new) = rotate("rotate");
    assert_eq!(old, node_id);
    assert!(new.starts_with("12D3KooW") && new != node_id, "{new}");
    // Asked again before it completed: the same next key.
    assert_eq!(rotate("rotate"), (old.clone(), new.clone()));
    let next = home.join("identity.next.json");
    let mode = std::fs::metadata(&next).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The current identity is unchanged until the commander binds the key.
    let show = bin()
        .args(["identity", "show", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    let show = String::from_utf8(show.stdout).unwrap();
    assert!(
        show.contains(&format!("node_id:           {node_id}")),
        "{show}"
    );
    assert!(
        show.contains(&format!("pending node_id:   {new}")),
        "{show}"
    );
    // A wallet rotation waits beside it.
    let (old_wallet, new_wallet) = rotate("rotate-wallet");
    assert!(old_wallet.starts_with("0x") && new_wallet.starts_with("0x"));
    assert_ne!(old_wallet, new_wallet);
    // An unsafe next file is refused like an unsafe identity.
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args(["identity", "rotate", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("identity.next.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
