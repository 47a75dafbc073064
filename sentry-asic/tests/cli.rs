//! The `hashfleet-sentry-asic` binary: `validate` accepts a good config
//! and names what is wrong in a bad one (exit 64).

use std::process::Command;

const KEY: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

fn validate(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentry-asic.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_hashfleet-sentry-asic"))
        .env_remove("HASHFLEET_HOME")
        .env_remove("HASHFLEET_CONFIG")
        .args(["validate", "--home"])
        .arg(dir.path().join("home"))
        .args([
            "--commander",
            "127.0.0.1:4433",
            "--commander-key",
            KEY,
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap()
}

const GOOD: &str = r#"
interval_secs = 10
site = "dc1"
[[scan]]
range = "10.0.1.1-254"
[[scan]]
subnet = "10.0.2.0/24"
[[container]]
name = "c1"
address = "10.0.3.10"
kind = "hk3"
[[powermeter]]
name = "m1"
address = "10.0.3.20:502"
registers = { power_w = { address = 0, type = "f32" }, voltage_v = { address = 2, type = "f32" }, current_a = { address = 4, type = "f32" }, energy_kwh = { address = 6, type = "u32", scale = 0.01 } }
[[relay]]
name = "r1"
address = "10.0.3.30"
channels = 8
outlets = { "0" = "10.0.1.1", "1" = "10.0.1.2" }
"#;

#[test]
fn the_readme_config_validates() {
    let out = validate(GOOD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_name_what_to_change() {
    for (bad, says) in [
        (
            GOOD.replace("10.0.1.1-254", "10.0.1.9-3"),
            "ends before it starts",
        ),
        (GOOD.replace("10.0.2.0/24", "10.0.0.0/8"), "65,536"),
        (
            GOOD.replace("address = \"10.0.3.10\"", "address = \"cooler.lan\""),
            "c1",
        ),
        (GOOD.replace("kind = \"hk3\"", "kind = \"air\""), "air"),
        (
            GOOD.replace(
                "interval_secs = 10",
                "interval_secs = 10\nscan_everything = true",
            ),
            "scan_everything",
        ),
        (
            GOOD.replace("interval_secs = 10", "interval_secs = 10\nconcurrency = 0"),
            "give 1..=4096",
        ),
    ] {
        let out = validate(&bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad}\n{err}");
        assert!(err.contains(says), "expected `{says}` in: {err}");
    }
}
