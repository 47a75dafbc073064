//! The ASIC sentry end to end: `hashfleet-sim` serves a mixed fleet on
//! 127.210.0.0/24, a sentry-asic watches it (through asic-rs for the
//! miners) and reports to a commander; actions go through the approval
//! system and change the emulated devices.
//!
//! Runs as root (the emulated firmware serves ports 80, 502, 4028, 4433).
//! Tests in this file use disjoint 127.21x.0.0/24 blocks.

use std::net::Ipv4Addr;
use std::time::Duration;

use hashfleet_sentry_asic::SentryAsicConfig;
use hashfleet_shared::wire::SentryKind;
use hashfleet_sim::{Sim, SimConfig};
use hashfleet_tests::{init_logs, wait_until, TestCommander};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    _dir: tempfile::TempDir,
    c: TestCommander,
    sim: Sim,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    sentry: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Fixture {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.sentry.take() {
            task.await
                .expect("sentry task")
                .expect("sentry ends cleanly");
        }
        self.c.stop().await;
        self.sim.shutdown().await;
    }
}

/// A sim with `miners` miners (every model in turn) plus one miner more
/// that the sentry's scan range leaves out, two containers, a meter and a
/// relay whose channels power the first two miners.
async fn fixture(block: u8, miners: usize) -> Fixture {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let base = Ipv4Addr::new(127, block, 0, 1);
    let path = dir.path().join("sentry-asic.toml");
    let mut sim = SimConfig::new(miners + 1, base);
    sim.layout.containers = 2;
    sim.layout.meters = 1;
    sim.layout.relays = 1;
    sim.layout.relay_channels = 2;
    sim.layout.boot_time = Duration::from_secs(3);
    sim.write_sentry_config = Some(path.clone());
    sim.sentry_interval_secs = 1;
    let sim = Sim::start(sim).await.expect("the sim starts (run as root)");

    // Leave the last miner outside the allow-list.
    let last = sim.fleet.miners[miners].addr;
    let before_last = sim.fleet.miners[miners - 1].addr;
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.replace(&format!("-{last}\""), &format!("-{before_last}\""));
    assert_ne!(text, cut, "the scan range ends at the last miner");
    std::fs::write(&path, cut).unwrap();

    let token = c.enrollment_token(1).await;
    let mut agent = c.sentry_config(&dir.path().join("s"), Some(token));
    agent.kind = SentryKind::Asic;
    agent.interval = Duration::from_secs(1);
    let config = SentryAsicConfig::from_file(agent, &path).expect("the sim's config loads");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sentry = tokio::spawn(hashfleet_sentry_asic::run_with(config, async {
        let _ = rx.await;
    }));
    Fixture {
        _dir: dir,
        c,
        sim,
        stop: Some(tx),
        sentry: Some(sentry),
    }
}

async fn query(c: &TestCommander, q: Value) -> Vec<Value> {
    let (status, body) = c
        .post("/api/v1/devices/query", json!({"query": q, "limit": 1000}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["devices"].as_array().cloned().unwrap_or_default()
}

async fn device(c: &TestCommander, id: &str) -> Value {
    query(c, json!({"id": id}))
        .await
        .pop()
        .unwrap_or(Value::Null)
}

fn mac_id(mac: &str) -> String {
    mac.to_ascii_lowercase()
}

/// Pushes an action with the admin token (one vote: ready at once) and
/// waits for it to be done; returns the action.
async fn act(c: &TestCommander, q: Value, action: &str, params: Value) -> Value {
    let (status, body) = c
        .post(
            "/api/v1/actions",
            json!({"query": q, "action": action, "params": params}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        last = c.get(&format!("/api/v1/actions/{id}")).await;
        if last["state"] == "done" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("action {action} not done in time: {last}");
}

fn all_ok(action: &Value) -> bool {
    action["results"]
        .as_object()
        .is_some_and(|r| !r.is_empty() && r.values().all(|v| v["ok"] == true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_emulated_fleet_is_identified_read_and_controlled() {
    let f = fixture(210, 6).await;
    let c = &f.c;

    // Every miner identified as its model, hashing and drawing power.
    wait_until(WAIT, "six miners reporting hashrate", || async {
        query(
            c,
            json!({"type": "miner", "hashrate_hs": {"$gt": 0}, "power_w": {"$gt": 0}}),
        )
        .await
        .len()
            == 6
    })
    .await;
    for m in &f.sim.fleet.miners[..6] {
        let d = device(c, &mac_id(&m.mac_string())).await;
        let make = d["make"].as_str().unwrap_or_default();
        assert!(
            make.eq_ignore_ascii_case(m.model.make()),
            "{make} vs {}: {d}",
            m.model.make()
        );
        let model = d["model"].as_str().unwrap_or_default().to_ascii_uppercase();
        let want = match m.model {
            hashfleet_sim::Model::AntminerS21 => "S21",
            hashfleet_sim::Model::WhatsminerM56S => "M56S",
            hashfleet_sim::Model::AvalonA1466 => "1466",
        };
        assert!(
            model.contains(want),
            "{} reported as {model}: {d}",
            m.model.cli_name()
        );
        let nominal = m.model.nominal_ths() * 1e12;
        let h = d["hashrate_hs"].as_f64().unwrap();
        assert!((h - nominal).abs() < nominal * 0.1, "{h} vs {nominal}: {d}");
        assert_eq!(d["status"], "active", "{d}");
    }
    // Containers, the meter and the relay, with their values.
    wait_until(WAIT, "containers, meter and relay", || async {
        query(c, json!({"type": "container", "supply_temp_c": {"$gt": 0}, "flow_m3h": {"$gt": 0}}))
            .await
            .len()
            == 2
            && query(
                c,
                json!({"type": "powermeter", "power_w": {"$gt": 1000}, "voltage_v": {"$gt": 100}, "energy_kwh": {"$gte": 0}}),
            )
            .await
            .len()
                == 1
            && query(c, json!({"type": "relay", "channel_0_on": 1, "channel_1_on": 1}))
                .await
                .len()
                == 1
    })
    .await;
    let kinds: Vec<String> = query(c, json!({"type": "container"}))
        .await
        .iter()
        .map(|d| {
            d["labels"]["container_type"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["hk3", "immersion"]);

    // A container alarm raised in the sim becomes a critical alert.
    let container = f.sim.fleet.containers[0].addr;
    let raised = reqwest::Client::new()
        .post(format!(
            "http://{}/containers/{container}/alarms",
            f.sim.control_addr
        ))
        .json(&json!({"code": "leakage"}))
        .send()
        .await
        .unwrap();
    assert!(raised.status().is_success());
    wait_until(WAIT, "container leakage alert", || async {
        query(
            c,
            json!({"type": "container", "alerts.severity": "critical"}),
        )
        .await
        .len()
            == 1
    })
    .await;

    // Sleep through the action system: ~0 hashrate next round, then back.
    let m0 = f.sim.fleet.miners[2].clone();
    let id = mac_id(&m0.mac_string());
    let done = act(c, json!({"id": id}), "setPowerMode", json!(["sleep"])).await;
    assert!(all_ok(&done), "{done}");
    wait_until(WAIT, "miner asleep", || async {
        let d = device(c, &id).await;
        d["hashrate_hs"].as_f64().unwrap_or(1.0) < 1e9 && d["status"] == "sleeping"
    })
    .await;
    let done = act(c, json!({"id": id}), "setPowerMode", json!(["normal"])).await;
    assert!(all_ok(&done), "{done}");
    wait_until(WAIT, "miner hashing again", || async {
        device(c, &id).await["hashrate_hs"].as_f64().unwrap_or(0.0) > 1e13
    })
    .await;

    // Relay power-cycle: the miner on channel 0 goes offline, then returns.
    let relay = query(c, json!({"type": "relay"})).await.remove(0);
    let powered = f.sim.fleet.miners[0].clone();
    let powered_id = mac_id(&powered.mac_string());
    let cycle = tokio::spawn({
        let relay_id = relay["id"].as_str().unwrap().to_string();
        let http = c.http.clone();
        let token = c.token.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{http}/api/v1/actions"))
                .bearer_auth(token)
                .json(&json!({"query": {"id": relay_id}, "action": "powerCycle", "params": [0]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    assert_eq!(cycle.await.unwrap(), 201);
    wait_until(WAIT, "power-cycled miner offline", || async {
        device(c, &powered_id).await["status"] == "offline"
    })
    .await;
    wait_until(WAIT, "power-cycled miner back", || async {
        let d = device(c, &powered_id).await;
        d["status"] == "active" && d["hashrate_hs"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;

    // Injected faults, through the sim's control API.
    let control = format!("http://{}", f.sim.control_addr);
    let hot = f.sim.fleet.miners[3].clone();
    let broken = f.sim.fleet.miners[4].clone();
    for (m, fault) in [(&hot, "overheat"), (&broken, "hashboard-loss")] {
        let status = reqwest::Client::new()
            .post(format!("{control}/faults"))
            .json(&json!({"target": m.addr.to_string(), "fault": fault}))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success());
    }
    let hot_id = mac_id(&hot.mac_string());
    wait_until(WAIT, "critical overheat alert", || async {
        device(c, &hot_id).await["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["severity"] == "critical"))
    })
    .await;
    let broken_id = mac_id(&broken.mac_string());
    wait_until(WAIT, "hashboard loss shows as degraded", || async {
        device(c, &broken_id).await["status"] == "degraded"
    })
    .await;

    // A miner whose API breaks (malformed replies) is reported offline,
    // and comes back when it heals; the sentry carries on.
    let garbled = f.sim.fleet.miners[5].clone();
    let garbled_id = mac_id(&garbled.mac_string());
    let set = |on: bool| {
        let url = format!("{control}/faults");
        let target = garbled.addr.to_string();
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"target": target, "fault": "malformed", "on": on}))
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        }
    };
    assert!(set(true).await);
    wait_until(WAIT, "garbled miner offline", || async {
        device(c, &garbled_id).await["status"] == "offline"
    })
    .await;
    assert!(set(false).await);
    wait_until(WAIT, "garbled miner back", || async {
        device(c, &garbled_id).await["status"] == "active"
    })
    .await;

    // The miner outside the allow-list was never contacted.
    let outside = f.sim.fleet.miners[6].addr;
    let contacts = f.sim.fleet.contacts();
    assert_eq!(
        contacts.get(&outside),
        None,
        "{outside} was contacted: {contacts:?}"
    );
    assert!(
        contacts
            .get(&f.sim.fleet.miners[5].addr)
            .copied()
            .unwrap_or(0)
            > 0
    );
    f.stop().await;
}
