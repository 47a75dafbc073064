//! End-to-end: `MinerPoller` through asic-rs against the emulated stock
//! firmwares of `hashfleet-sim`, one emulated miner per test on its own
//! loopback address (127.205.0.N), serving the model's real ports.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashfleet_sentry_asic::miners::{MinerPoller, PollerConfig};
use hashfleet_shared::wire::{DeviceSnapshot, Severity};
use hashfleet_sim::model::{Fault, Miner, Model};
use serde_json::json;

/// One emulated miner, served until dropped.
type Rig = hashfleet_sim::net::ServedMiner;

/// Serves `model` on 127.205.0.`n` the way the sim's net layer does:
/// a miner that is down (offline fault, booting) drops the connection.
async fn rig(n: u8, model: Model) -> Rig {
    rig_with_mac(n, model, None).await
}

/// As [`rig`], optionally with another miner's MAC (a DHCP move).
async fn rig_with_mac(n: u8, model: Model, mac: Option<[u8; 6]>) -> Rig {
    let addr = Ipv4Addr::new(127, 205, 0, n);
    let mut miner = Miner::new(0, addr, model, Duration::from_millis(500));
    if let Some(mac) = mac {
        miner.mac = mac;
    }
    hashfleet_sim::net::serve_miner(Arc::new(miner)).expect("serving the miner (root?)")
}

fn poller() -> MinerPoller {
    MinerPoller::new(PollerConfig {
        call_timeout: Duration::from_secs(20),
        write_timeout: Duration::from_secs(90),
        identify_timeout: Duration::from_secs(15),
        concurrency: 4,
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        ..PollerConfig::default()
    })
}

fn find(snaps: &[DeviceSnapshot], id: &str) -> DeviceSnapshot {
    snaps
        .iter()
        .find(|s| s.id == id)
        .cloned()
        .unwrap_or_else(|| panic!("no snapshot for {id}: {snaps:#?}"))
}

/// Polls until `ok` holds for the miner's snapshot (about 30 s at most).
async fn poll_until(
    p: &mut MinerPoller,
    id: &str,
    what: &str,
    ok: impl Fn(&DeviceSnapshot) -> bool,
) -> DeviceSnapshot {
    let mut last = None;
    for _ in 0..60 {
        let snaps = p.poll().await;
        if let Some(s) = snaps.iter().find(|s| s.id == id) {
            if ok(s) {
                return s.clone();
            }
            last = Some(s.clone());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: never seen; last snapshot: {last:#?}");
}

fn hashrate(s: &DeviceSnapshot) -> f64 {
    s.metrics.get("hashrate_hs").copied().unwrap_or(f64::NAN)
}

fn has_alert(s: &DeviceSnapshot, codes: &[&str]) -> bool {
    s.alerts.iter().any(|a| codes.contains(&a.code.as_str()))
}

/// Discover, read, sleep, wake, faults, offline: the whole life of one miner.
async fn end_to_end(n: u8, model: Model) {
    let rig = rig(n, model).await;
    let m = rig.miner.clone();
    let nominal = model.nominal_ths() * 1e12;
    let mut p = poller();

    assert_eq!(p.discover(&[rig.ip]).await, 1, "{model:?} not identified");
    let id = m.mac_string().to_lowercase();

    // A healthy reading, in base units.
    let snaps = p.poll().await;
    let want = m.readings(Instant::now());
    let s = find(&snaps, &id);
    assert_eq!(s.kind, "miner");
    assert_eq!(s.labels["state"], "mining", "{s:#?}");
    assert_eq!(s.labels["ip"], rig.ip.to_string());
    assert_eq!(p.address_of(&id), Some(rig.ip));
    let hs = hashrate(&s);
    let want_hs = want.ths_5s * 1e12;
    assert!(
        (hs - want_hs).abs() <= want_hs * 0.05,
        "hashrate_hs {hs} vs emulated {want_hs}"
    );
    let power = s.metrics.get("power_w").copied().unwrap_or(f64::NAN);
    assert!(
        (power - want.power_w).abs() <= want.power_w * 0.05,
        "power_w {power} vs emulated {}",
        want.power_w
    );
    assert!(
        !s.alerts
            .iter()
            .any(|a| matches!(a.severity, Severity::Critical | Severity::High)),
        "healthy miner raised {:#?}",
        s.alerts
    );
    let (make, model_name) = (s.make.clone(), s.model.clone());

    // Sleep, then back to normal.
    p.execute("setPowerMode", &json!(["sleep"]), &id)
        .await
        .unwrap_or_else(|e| panic!("sleep: {e}"));
    let s = poll_until(&mut p, &id, "asleep", |s| {
        s.labels.get("state").map(String::as_str) == Some("sleeping")
            && hashrate(s) < nominal * 0.01
    })
    .await;
    assert!(!has_alert(&s, &["hashrate_low"]), "{:#?}", s.alerts);
    p.execute("setPowerMode", &json!(["normal"]), &id)
        .await
        .unwrap_or_else(|e| panic!("normal: {e}"));
    poll_until(&mut p, &id, "awake", |s| {
        s.labels.get("state").map(String::as_str) == Some("mining") && hashrate(s) > nominal * 0.9
    })
    .await;

    // Faults become alerts.
    m.set_fault(Fault::Overheat, true);
    poll_until(&mut p, &id, "overheat alert", |s| {
        s.alerts.iter().any(|a| {
            (a.code == "temp_critical" && a.severity == Severity::Critical)
                || (a.code == "temp_high" && a.severity == Severity::High)
        })
    })
    .await;
    m.set_fault(Fault::Overheat, false);
    m.set_fault(Fault::HashboardLoss, true);
    let s = poll_until(&mut p, &id, "hashboard_missing", |s| {
        has_alert(s, &["hashboard_missing"])
    })
    .await;
    let expected = s.metrics["expected_hashboards"];
    assert_eq!(
        s.metrics.get("hashboards"),
        Some(&(expected - 1.0)),
        "{:#?}",
        s.metrics
    );
    m.set_fault(Fault::HashboardLoss, false);

    // Offline: same id, state offline, last make and model.
    m.set_fault(Fault::Offline, true);
    let s = poll_until(&mut p, &id, "offline", |s| {
        s.labels.get("state").map(String::as_str) == Some("offline")
    })
    .await;
    assert_eq!(
        (s.make.as_str(), s.model.as_str()),
        (make.as_str(), model_name.as_str())
    );
    assert_eq!(s.labels["ip"], rig.ip.to_string());
    assert!(s.metrics.is_empty(), "{:#?}", s.metrics);
    // Still offline on the next rounds, never dropped.
    for _ in 0..3 {
        let s = find(&p.poll().await, &id);
        assert_eq!(s.labels["state"], "offline");
    }
    m.set_fault(Fault::Offline, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn antminer_s21_end_to_end() {
    end_to_end(11, Model::AntminerS21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsminer_m56s_end_to_end() {
    end_to_end(12, Model::WhatsminerM56S).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avalon_a1466_end_to_end() {
    end_to_end(13, Model::AvalonA1466).await;
}

/// What each model can and cannot do through asic-rs, with the error texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_actions_are_refused_by_name() {
    let ant = rig(21, Model::AntminerS21).await;
    let avalon = rig(22, Model::AvalonA1466).await;
    let mut p = poller();
    assert_eq!(p.discover(&[ant.ip, avalon.ip]).await, 2);
    let snaps = p.poll().await;
    let ant_id = ant.miner.mac_string().to_lowercase();
    let avalon_id = avalon.miner.mac_string().to_lowercase();
    let a = find(&snaps, &ant_id);
    let v = find(&snaps, &avalon_id);

    let err = p
        .execute("setPowerLimit", &json!([3000]), &ant_id)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "setPowerLimit 3000 W is not supported on {} {} (miner `{ant_id}`, AntMiner Stock firmware): asic-rs offers no way to do it for this model",
            a.make, a.model
        )
    );
    let err = p
        .execute("setPowerMode", &json!(["low"]), &avalon_id)
        .await
        .unwrap_err();
    assert!(
        err.starts_with(&format!(
            "setPowerMode low is not supported on {} {} (miner `{avalon_id}`",
            v.make, v.model
        )),
        "{err}"
    );
    let err = p
        .execute(
            "setupPools",
            &json!([{"pools": [{"url": "stratum+tcp://p.example:3333", "user": "a.b"}]}]),
            &avalon_id,
        )
        .await
        .unwrap_err();
    assert!(err.contains("is not supported on"), "{err}");
    let err = p
        .execute("setLED", &json!(["yes"]), &ant_id)
        .await
        .unwrap_err();
    assert!(err.contains("setLED takes [true|false]"), "{err}");
    assert_eq!(
        p.execute("reboot", &json!([]), "02:00:00:00:00:00")
            .await
            .unwrap_err(),
        "no miner `02:00:00:00:00:00` on this sentry"
    );
}

/// Writes that the stock firmwares take: LED and pools show in the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn led_and_pools_round_trip_on_antminer() {
    let rig = rig(23, Model::AntminerS21).await;
    let mut p = poller();
    assert_eq!(p.discover(&[rig.ip]).await, 1);
    let id = rig.miner.mac_string().to_lowercase();
    find(&p.poll().await, &id);

    p.execute("setLED", &json!([true]), &id)
        .await
        .unwrap_or_else(|e| panic!("setLED: {e}"));
    poll_until(&mut p, &id, "led on", |s| {
        s.metrics.get("led") == Some(&1.0)
    })
    .await;

    let pools = json!([{"pools": [
        {"url": "stratum+tcp://new-pool.example:3333", "user": "acct.rig23", "password": "x"}
    ]}]);
    p.execute("setupPools", &pools, &id)
        .await
        .unwrap_or_else(|e| panic!("setupPools: {e}"));
    assert_eq!(
        rig.miner.pools()[0].url,
        "stratum+tcp://new-pool.example:3333"
    );
    assert_eq!(rig.miner.pools()[0].user, "acct.rig23");
}

/// A miner that comes back at another address (DHCP) keeps its id, and
/// its old address entry is dropped rather than reported offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_move_keeps_the_id_and_drops_the_old_address() {
    let old = rig(41, Model::AntminerS21).await;
    let id = old.miner.mac_string().to_lowercase();
    let mut p = poller();
    let range = [old.ip, IpAddr::from([127, 205, 0, 42])];
    assert_eq!(p.discover(&range).await, 1);
    assert_eq!(find(&p.poll().await, &id).labels["ip"], old.ip.to_string());

    old.miner.set_fault(Fault::Offline, true);
    assert_eq!(find(&p.poll().await, &id).labels["state"], "offline");
    let new = rig_with_mac(42, Model::AntminerS21, Some(old.miner.mac)).await;
    // .42 did not answer the first time: it waits out its backoff.
    assert_eq!(p.discover(&range).await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.discover(&range).await, 1);
    let snaps = p.poll().await;
    assert_eq!(snaps.len(), 1, "{snaps:#?}");
    assert_eq!(snaps[0].id, id);
    assert_eq!(snaps[0].labels["ip"], new.ip.to_string());
    assert_eq!(snaps[0].labels["state"], "mining");
    assert_eq!(p.address_of(&id), Some(new.ip));
    assert_eq!(p.known(), 1);
}

/// WhatsMiner has power levels and a power limit; Avalon a power limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_levels_and_limits_where_asic_rs_has_them() {
    let wm = rig(24, Model::WhatsminerM56S).await;
    let av = rig(25, Model::AvalonA1466).await;
    let mut p = poller();
    assert_eq!(p.discover(&[wm.ip, av.ip]).await, 2);
    p.poll().await;
    let wm_id = wm.miner.mac_string().to_lowercase();
    let av_id = av.miner.mac_string().to_lowercase();

    p.execute("setPowerMode", &json!(["low"]), &wm_id)
        .await
        .unwrap_or_else(|e| panic!("low: {e}"));
    assert_eq!(wm.miner.mode(), hashfleet_sim::model::PowerMode::Low);
    poll_until(&mut p, &wm_id, "power_mode low", |s| {
        s.labels.get("power_mode").map(String::as_str) == Some("low")
    })
    .await;
    p.execute("setPowerMode", &json!(["normal"]), &wm_id)
        .await
        .unwrap_or_else(|e| panic!("normal: {e}"));
    assert_eq!(wm.miner.mode(), hashfleet_sim::model::PowerMode::Normal);

    p.execute("setPowerLimit", &json!([4000]), &wm_id)
        .await
        .unwrap_or_else(|e| panic!("WhatsMiner setPowerLimit: {e}"));
    poll_until(&mut p, &wm_id, "power under the limit", |s| {
        s.metrics
            .get("power_w")
            .is_some_and(|w| *w <= 4000.0 * 1.04)
    })
    .await;
    p.execute("setPowerLimit", &json!([2800]), &av_id)
        .await
        .unwrap_or_else(|e| panic!("Avalon setPowerLimit: {e}"));
    poll_until(&mut p, &av_id, "power under the limit", |s| {
        s.metrics
            .get("power_w")
            .is_some_and(|w| *w <= 2800.0 * 1.04)
    })
    .await;
}
