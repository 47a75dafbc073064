//! The real asic-rs 0.8.6 drives the emulated WhatsMiner M56S as a real
//! one: discovery, `get_data`, writes over API v3, faults, and refusal of
//! forged tokens and garbage.
//!
//! Each test owns one address 127.202.0.N with the real fixed ports.

mod common;
use common::{identify, ths};

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use asic_rs::core::config::pools::{PoolConfig, PoolGroupConfig};
use asic_rs::core::config::tuning::TuningConfig;
use asic_rs::core::data::miner::{MiningMode, TuningTarget};
use asic_rs::core::data::pool::PoolURL;
use hashfleet_sim::miners::whatsminer;
use hashfleet_sim::model::{Fault, Model, PowerMode, Reachability};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One emulated miner listening on its ports, as the sim's net layer would
/// serve it (a miner that is down drops connections).
type Harness = hashfleet_sim::net::ServedMiner;

async fn start(n: u8) -> Harness {
    common::serve(Ipv4Addr::new(127, 202, 0, n), Model::WhatsminerM56S)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sends one API v3 frame and reads the framed reply.
async fn v3_call(ip: IpAddr, body: &[u8]) -> std::io::Result<Value> {
    let mut s = TcpStream::connect((ip, 4433)).await?;
    s.write_all(&(body.len() as u32).to_le_bytes()).await?;
    s.write_all(body).await?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let mut reply = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut reply).await?;
    Ok(serde_json::from_slice(&reply)?)
}

async fn v2_call(ip: IpAddr, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect((ip, 4028)).await?;
    s.write_all(body).await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    Ok(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asic_rs_identifies_an_m56s_on_api_v3() {
    let h = start(1).await;
    let m = identify(&h).await;
    let info = m.get_device_info();
    assert!(
        info.make.eq_ignore_ascii_case("whatsminer"),
        "make {}",
        info.make
    );
    assert!(info.model.starts_with("M56S"), "model {}", info.model);
    assert!(info.firmware.contains("WhatsMiner"), "{}", info.firmware);
    let data = m.get_data().await;
    assert_eq!(
        data.firmware_version.as_deref(),
        Some(whatsminer::FW_VERSION)
    );
    assert_eq!(data.api_version.as_deref(), Some("3.0.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_data_matches_the_readings() {
    let h = start(2).await;
    let m = identify(&h).await;
    let data = m.get_data().await;
    let r = h.miner.readings(Instant::now());

    let mac = data.mac.expect("mac").to_string();
    assert!(mac.eq_ignore_ascii_case(&h.miner.mac_string()), "{mac}");
    assert_eq!(data.hostname.as_deref(), Some(h.miner.hostname.as_str()));
    // asic-rs's v3 backend maps `miner-sn` but never parses it.
    assert_eq!(data.serial_number, None);
    let got = ths(&data);
    assert!(
        (got - r.ths_avg).abs() < r.ths_avg * 0.05,
        "{got} vs {}",
        r.ths_avg
    );
    let watts = data.wattage.expect("wattage").as_watts();
    assert!((watts - r.power_w).abs() < r.power_w * 0.05, "{watts}");
    let active: Vec<_> = data
        .hashboards
        .iter()
        .filter(|b| b.active == Some(true))
        .collect();
    assert_eq!(active.len(), 4, "{:?}", data.hashboards);
    for b in &active {
        let t = b.outlet_chip_temperature.expect("chip temp").as_celsius();
        assert!((50.0..90.0).contains(&t), "chip temp {t}");
        assert!(b.board_temperature.is_some());
        assert_eq!(
            b.working_chips,
            Some(h.miner.model.chips_per_board() as u16)
        );
    }
    assert_eq!(data.fans.len(), 2);
    assert!(data
        .fans
        .iter()
        .all(|f| f.rpm.expect("rpm").as_rpm() > 3000.0));
    let pools = &data.pools[0].pools;
    assert_eq!(pools.len(), 3);
    assert_eq!(
        pools[0].url.as_ref().map(|u| u.to_string()),
        Some(r.pools[0].url.clone())
    );
    assert_eq!(pools[0].alive, Some(true));
    let uptime = data.uptime.expect("uptime").as_secs();
    assert!(
        uptime.abs_diff(r.uptime_s) <= 2,
        "{uptime} vs {}",
        r.uptime_s
    );
    assert!(data.is_mining);
    assert_eq!(data.light_flashing, Some(false));
    assert!(data.messages.is_empty(), "{:?}", data.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_stop_and_start_hashing() {
    let h = start(3).await;
    let m = identify(&h).await;
    assert!(m.pause(None).await.expect("pause"));
    assert_eq!(h.miner.mode(), PowerMode::Sleep);
    let data = m.get_data().await;
    assert!(ths(&data) < 0.1, "{}", ths(&data));
    assert!(!data.is_mining);

    assert!(m.resume(None).await.expect("resume"));
    assert_eq!(h.miner.mode(), PowerMode::Normal);
    let data = m.get_data().await;
    assert!(ths(&data) > 150.0);
    assert!(data.is_mining);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_light_power_limit_modes_and_pools_are_written() {
    let h = start(4).await;
    let m = identify(&h).await;

    assert!(m.set_fault_light(true).await.expect("led on"));
    assert!(h.miner.readings(Instant::now()).led);
    assert_eq!(m.get_data().await.light_flashing, Some(true));
    assert!(m.set_fault_light(false).await.expect("led off"));
    assert!(!h.miner.readings(Instant::now()).led);

    let limit = serde_json::from_value(json!({ "watts": 4000.0 })).expect("a Power");
    assert!(m.set_power_limit(limit).await.expect("power limit"));
    assert_eq!(h.miner.readings(Instant::now()).power_limit_w, Some(4000.0));
    let data = m.get_data().await;
    assert!(data.wattage.expect("wattage").as_watts() < 4000.0 * 1.04);
    assert_eq!(
        data.tuning_target,
        Some(TuningTarget::Power(
            serde_json::from_value(json!({ "watts": 4000.0 })).expect("a Power")
        ))
    );
    // Out of range: refused, nothing changes.
    let absurd = serde_json::from_value(json!({ "watts": 50.0 })).expect("a Power");
    assert!(!m.set_power_limit(absurd).await.expect("answered"));
    assert_eq!(h.miner.readings(Instant::now()).power_limit_w, Some(4000.0));

    let low = TuningConfig::new(TuningTarget::MiningMode(MiningMode::Low));
    assert!(m.set_tuning_config(low, None).await.expect("low power"));
    assert_eq!(h.miner.mode(), PowerMode::Low);
    let high = TuningConfig::new(TuningTarget::MiningMode(MiningMode::High));
    assert!(m.set_tuning_config(high, None).await.expect("high power"));
    assert_eq!(h.miner.mode(), PowerMode::High);

    let group = PoolGroupConfig {
        name: String::new(),
        quota: 1,
        pools: vec![
            PoolConfig {
                url: PoolURL::from("stratum+tcp://new.pool.invalid:3333".to_string()),
                username: "fleet.worker1".into(),
                password: "pw1".into(),
            },
            PoolConfig {
                url: PoolURL::from("stratum+tcp://backup.pool.invalid:443".to_string()),
                username: "fleet.worker1".into(),
                password: "x".into(),
            },
        ],
    };
    assert!(m.set_pools_config(vec![group]).await.expect("pools"));
    let pools = h.miner.pools();
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0].url, "stratum+tcp://new.pool.invalid:3333");
    assert_eq!(pools[0].user, "fleet.worker1");
    assert_eq!(pools[0].password, "pw1");
    let data = m.get_data().await;
    assert_eq!(data.pools[0].pools.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_takes_it_down_then_back() {
    let h = start(5).await;
    let m = identify(&h).await;
    assert!(m.restart().await.expect("restart"));
    assert_eq!(h.miner.reachability(Instant::now()), Reachability::Down);
    assert!(v3_call(h.ip, br#"{"cmd":"get.device.info"}"#)
        .await
        .is_err());
    assert!(m.get_data().await.mac.is_none());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let data = m.get_data().await;
    assert!(data.mac.is_some());
    assert!(data.uptime.expect("uptime") < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overheat_and_hashboard_loss_show_in_get_data() {
    let h = start(6).await;
    let m = identify(&h).await;
    h.miner.set_fault(Fault::Overheat, true);
    let data = m.get_data().await;
    let hottest = data
        .hashboards
        .iter()
        .filter_map(|b| b.outlet_chip_temperature)
        .map(|t| t.as_celsius())
        .fold(0.0, f64::max);
    assert!(hottest > 90.0, "{hottest}");
    assert!(data.messages.iter().any(|msg| msg.code == 360));

    h.miner.set_fault(Fault::Overheat, false);
    h.miner.set_fault(Fault::HashboardLoss, true);
    let data = m.get_data().await;
    let active = data
        .hashboards
        .iter()
        .filter(|b| b.active == Some(true))
        .count();
    assert_eq!(active, 3, "{:?}", data.hashboards);
    assert!(ths(&data) < 212.0 * 0.8);
    assert!(
        data.messages
            .iter()
            .any(|msg| msg.code == 530 && msg.message == "Slot 0 not found."),
        "{:?}",
        data.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_and_garbage_are_refused() {
    let h = start(7).await;
    let ts = unix_now();
    let forged = json!({
        "cmd": "set.miner.service", "param": "stop", "account": "super",
        "ts": ts, "token": "AAAAAAAA",
    });
    let reply = v3_call(h.ip, forged.to_string().as_bytes())
        .await
        .expect("a reply");
    assert_eq!(reply["code"], -4, "{reply}");
    assert_eq!(h.miner.mode(), PowerMode::Normal);

    // The right password with another salt is still wrong.
    let wrong_salt = json!({
        "cmd": "set.system.reboot", "account": "super", "ts": ts,
        "token": whatsminer::token("set.system.reboot", "super", "AAAAAAAA", ts),
    });
    let reply = v3_call(h.ip, wrong_salt.to_string().as_bytes())
        .await
        .expect("a reply");
    assert_eq!(reply["code"], -4, "{reply}");
    assert_eq!(h.miner.reachability(Instant::now()), Reachability::Up);

    // A correctly signed write goes through.
    let salt = v3_call(h.ip, br#"{"cmd":"get.device.info","param":"salt"}"#)
        .await
        .expect("salt")["msg"]["salt"]
        .as_str()
        .expect("salt string")
        .to_string();
    let signed = json!({
        "cmd": "set.miner.service", "param": "stop", "account": "super", "ts": ts,
        "token": whatsminer::token("set.miner.service", "super", &salt, ts),
    });
    let reply = v3_call(h.ip, signed.to_string().as_bytes())
        .await
        .expect("a reply");
    assert_eq!(reply["code"], 0, "{reply}");
    assert_eq!(h.miner.mode(), PowerMode::Sleep);

    for garbage in [&b"\x00\xffnot json"[..], b"{}", b"[1,2]", b"{\"cmd\":[]}"] {
        let reply = v3_call(h.ip, garbage).await.expect("a reply");
        assert!(reply["code"].as_i64().is_some_and(|c| c < 0), "{reply}");
        let reply = v2_call(h.ip, garbage).await.expect("a reply");
        let reply: Value = serde_json::from_slice(&reply).expect("JSON");
        assert_eq!(reply["STATUS"], "E", "{reply}");
    }
    // A frame claiming 4 GiB is dropped without a reply.
    let mut s = TcpStream::connect((h.ip, 4433)).await.expect("connect");
    s.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);
    // v2 writes are off: the encrypted form is refused in words.
    let reply = v2_call(h.ip, br#"{"enc":1,"data":"AAAA"}"#)
        .await
        .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply).expect("JSON");
    assert_eq!(reply["STATUS"], "E");
    // And the miner still answers.
    let reply = v3_call(h.ip, br#"{"cmd":"get.miner.status","param":"summary"}"#)
        .await
        .expect("a reply");
    assert_eq!(reply["code"], 0);
}
