//! Helpers for tests that run the real commander binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Commander {
    pub child: Child,
    pub quic: SocketAddr,
    pub http: String,
}

/// Starts `hashfleet-commander serve` and waits for its "listening" line.
pub fn spawn(data: &Path, quic: &str, extra: &[&str]) -> Commander {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hashfleet-commander"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--quic-listen", quic, "--http-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("commander binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("commander listening") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(str::to_string)
                };
                let _ = tx.send((field("quic_addr="), field("http_addr=")));
            }
        }
    });
    let (quic, http) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("commander reports its addresses");
    Commander {
        child,
        quic: quic.expect("quic_addr").parse().unwrap(),
        http: format!("http://{}", http.expect("http_addr")),
    }
}

impl Commander {
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test that fails never leaves a commander running.
impl Drop for Commander {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The commander's public key, read with `hashfleet-commander info --json`
/// (which works while `serve` runs).
#[allow(dead_code)]
pub fn commander_key(data: &Path) -> hashfleet_shared::NodeId {
    let out = Command::new(env!("CARGO_BIN_EXE_hashfleet-commander"))
        .args(["info", "--json", "--data-dir"])
        .arg(data)
        .output()
        .expect("info runs");
    assert!(out.status.success(), "info works while serve runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["node_id"].as_str().unwrap().starts_with("12D3KooW"));
    hashfleet_shared::NodeId::from_public_key_hex(v["public_key"].as_str().unwrap()).unwrap()
}

/// A one-use enrollment token from the commander at `http`.
#[allow(dead_code)]
pub async fn enrollment_token(client: &reqwest::Client, http: &str, admin: &str) -> String {
    let body: serde_json::Value = client
        .post(format!("{http}/api/v1/enrollment-tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"uses": 1, "ttl_secs": 600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["token"].as_str().expect("a token").to_string()
}
