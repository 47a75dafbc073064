//! The real asic-rs 0.8.6 drives the emulated AvalonMiner A1466 as a real
//! one: discovery, `get_data`, `ascset` writes, faults, and refusal of
//! garbage. Where asic-rs cannot do something on this model, the test says
//! so, so the sentry knows to refuse it.
//!
//! Each test owns one address 127.203.0.N with the real fixed ports.

mod common;
use common::{identify, ths};

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use asic_rs::core::config::pools::{PoolConfig, PoolGroupConfig};
use asic_rs::core::data::hashrate::HashRateUnit;
use asic_rs::core::data::miner::TuningTarget;
use asic_rs::core::data::pool::PoolURL;
use hashfleet_sim::model::{Fault, Model, PowerMode, Reachability};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One emulated miner listening on its ports, as the sim's net layer would
/// serve it (a miner that is down drops connections).
type Harness = hashfleet_sim::net::ServedMiner;

async fn start(n: u8) -> Harness {
    common::serve(Ipv4Addr::new(127, 203, 0, n), Model::AvalonA1466)
}

/// One raw request on 4028; the reply without its NUL.
async fn rpc(ip: IpAddr, body: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect((ip, 4028)).await?;
    s.write_all(body).await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply)
        .trim_end_matches('\0')
        .to_string())
}

/// A `Power` (or anything shaped `{"watts": …}`) for asic-rs calls.
fn power<T: serde::de::DeserializeOwned>(watts: f64) -> T {
    serde_json::from_value(json!({ "watts": watts })).expect("a Power")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asic_rs_identifies_an_avalon_1466() {
    let h = start(1).await;
    let m = identify(&h).await;
    let info = m.get_device_info();
    assert!(info.make.eq_ignore_ascii_case("AvalonMiner"), "{info:?}");
    assert!(info.model.contains("1466"), "model {}", info.model);
    assert!(info.firmware.contains("AvalonMiner"), "{}", info.firmware);
    let data = m.get_data().await;
    assert_eq!(
        data.firmware_version.as_deref(),
        Some(hashfleet_sim::miners::avalon::FW_VERSION)
    );
    assert_eq!(data.api_version.as_deref(), Some("3.7"));
    let board = data.control_board_version.expect("control board");
    assert!(board.known, "{board:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_data_matches_the_readings() {
    let h = start(2).await;
    let m = identify(&h).await;
    let data = m.get_data().await;
    let r = h.miner.readings(Instant::now());

    let mac = data.mac.expect("mac").to_string();
    assert!(mac.eq_ignore_ascii_case(&h.miner.mac_string()), "{mac}");
    assert_eq!(data.serial_number.as_deref(), Some(h.miner.serial.as_str()));
    let got = ths(&data);
    assert!(
        (got - r.ths_avg).abs() < r.ths_avg * 0.05,
        "{got} vs {}",
        r.ths_avg
    );
    let expected = data
        .expected_hashrate
        .clone()
        .expect("expected hashrate")
        .as_unit(HashRateUnit::TeraHash)
        .value;
    assert!((expected - r.expected_ths).abs() < 1.0, "{expected}");
    let watts = data.wattage.expect("wattage").as_watts();
    assert!((watts - r.power_w).abs() < r.power_w * 0.05, "{watts}");
    assert_eq!(data.hashboards.len(), 3);
    for b in &data.hashboards {
        assert_eq!(b.active, Some(true), "{b:?}");
        let hot = b.outlet_chip_temperature.expect("MTmax").as_celsius();
        let avg = b.board_temperature.expect("MTavg").as_celsius();
        assert!((50.0..90.0).contains(&hot) && avg <= hot, "{avg} {hot}");
        assert_eq!(
            b.working_chips,
            Some(h.miner.model.chips_per_board() as u16)
        );
        assert!(b.frequency.is_some());
    }
    // asic-rs expects 2 fans on an A1466 and reads Fan1 and Fan2.
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
    assert_eq!(pools[0].user.as_deref(), Some(r.pools[0].user.as_str()));
    assert_eq!(pools[0].alive, Some(true));
    assert_eq!(pools[0].active, Some(true));
    let uptime = data.uptime.expect("uptime").as_secs();
    assert!(
        uptime.abs_diff(r.uptime_s) <= 2,
        "{uptime} vs {}",
        r.uptime_s
    );
    assert!(data.is_mining);
    assert_eq!(
        data.tuning_target,
        Some(TuningTarget::Power(power(h.miner.model.nominal_w())))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_stop_and_start_hashing() {
    let h = start(3).await;
    let m = identify(&h).await;
    // softoff now: "ASC 0 set OK", as a live A1466 answers.
    assert!(m.pause(Some(Duration::ZERO)).await.expect("pause"));
    assert_eq!(h.miner.mode(), PowerMode::Sleep);
    let data = m.get_data().await;
    assert!(ths(&data) < 0.1, "{}", ths(&data));
    // asic-rs's Avalon backend has no mining flag: it always says true.
    assert!(data.is_mining);

    // softon closes without a reply; asic-rs takes that as success.
    assert!(m.resume(Some(Duration::ZERO)).await.expect("resume"));
    assert_eq!(h.miner.mode(), PowerMode::Normal);
    assert!(ths(&m.get_data().await) > 100.0);

    // The firmware schedules softoff at the time asic-rs sends (default now + 5 s).
    assert!(m.pause(Some(Duration::from_secs(2))).await.expect("pause"));
    assert_eq!(h.miner.mode(), PowerMode::Normal);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(h.miner.mode(), PowerMode::Sleep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_light_and_power_limit_are_written_pools_are_not() {
    let h = start(4).await;
    let m = identify(&h).await;

    assert!(m.set_fault_light(true).await.expect("led on"));
    assert!(h.miner.readings(Instant::now()).led);
    assert_eq!(m.get_data().await.light_flashing, Some(true));
    assert!(m.set_fault_light(false).await.expect("led off"));
    assert!(!h.miner.readings(Instant::now()).led);

    // asic-rs sends the limit as text ("2.8 kW") in `worklevel,set,…`.
    assert!(m.set_power_limit(power(2800.0)).await.expect("power limit"));
    assert_eq!(h.miner.readings(Instant::now()).power_limit_w, Some(2800.0));
    let data = m.get_data().await;
    assert!(data.wattage.expect("wattage").as_watts() < 2800.0 * 1.04);
    assert_eq!(data.tuning_target, Some(TuningTarget::Power(power(2800.0))));
    // Out of range: refused in words, nothing changes.
    let refused = m.set_power_limit(power(20.0)).await.expect_err("refused");
    assert!(
        refused.to_string().contains("ASC 0 set failed"),
        "{refused}"
    );
    assert_eq!(h.miner.readings(Instant::now()).power_limit_w, Some(2800.0));

    // asic-rs cannot set pools on this backend.
    assert!(!m.supports_pools_config());
    let before = h.miner.pools();
    let group = PoolGroupConfig {
        name: String::new(),
        quota: 1,
        pools: vec![PoolConfig {
            url: PoolURL::from("stratum+tcp://new.pool.invalid:3333".to_string()),
            username: "fleet.w".into(),
            password: "x".into(),
        }],
    };
    assert!(m.set_pools_config(vec![group]).await.is_err());
    assert_eq!(h.miner.pools(), before);
    // The firmware's own cgminer pool commands do work.
    let reply = rpc(h.ip, b"removepool|2").await.expect("reply");
    assert!(reply.starts_with("STATUS=S"), "{reply}");
    let reply = rpc(
        h.ip,
        br#"{"command":"addpool","parameter":"stratum+tcp://new.pool.invalid:3333,fleet.w,x"}"#,
    )
    .await
    .expect("reply");
    assert!(reply.contains("Added pool 2"), "{reply}");
    let reply = rpc(h.ip, b"switchpool|2").await.expect("reply");
    assert!(reply.starts_with("STATUS=S"), "{reply}");
    let data = m.get_data().await;
    assert_eq!(
        data.pools[0].pools[0].url.as_ref().map(|u| u.to_string()),
        Some("stratum+tcp://new.pool.invalid:3333".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_takes_it_down_then_back() {
    let h = start(5).await;
    let m = identify(&h).await;
    // cgminer answers {"STATUS":"RESTART"}, which asic-rs 0.8.6 cannot
    // parse: the restart happens but asic-rs reports an error.
    assert!(m.restart().await.is_err());
    assert_eq!(h.miner.reachability(Instant::now()), Reachability::Down);
    assert!(m.get_data().await.mac.is_none());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let data = m.get_data().await;
    assert!(data.mac.is_some());
    assert!(data.uptime.expect("uptime") < Duration::from_secs(5));

    // The firmware's own reboot goes through ascset.
    let reply = rpc(h.ip, b"ascset|0,reboot,0").await.expect("reply");
    assert!(reply.contains("ASC 0 set OK"), "{reply}");
    assert_eq!(h.miner.reachability(Instant::now()), Reachability::Down);
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

    h.miner.set_fault(Fault::Overheat, false);
    h.miner.set_fault(Fault::HashboardLoss, true);
    let data = m.get_data().await;
    let active = data
        .hashboards
        .iter()
        .filter(|b| b.active == Some(true))
        .count();
    assert_eq!(active, 2, "{:?}", data.hashboards);
    // The firmware lists detected boards only, so the last slot is empty.
    assert_eq!(data.hashboards[2].hashrate, None);
    assert!(ths(&data) < 150.0 * 0.7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_writes_are_refused() {
    let h = start(7).await;
    for garbage in [
        &b"\x00\xffnot json"[..],
        b"{\"command\":",
        b"{\"command\":[]}",
        b"nonsense|1,2,3",
        b"ascset|9,led,1-1",
        b"ascset|0,led,blink",
        b"ascset|0,voltage,9000",
        b"ascset|0,worklevel,set,1 GW",
        b"removepool|0",
    ] {
        let reply = rpc(h.ip, garbage).await.expect("a reply");
        let refused = reply.starts_with("STATUS=E")
            || serde_json::from_str::<Value>(&reply).is_ok_and(|v| v["STATUS"][0]["STATUS"] == "E");
        assert!(refused, "{garbage:?}: {reply}");
    }
    // An endless request is cut at the bound and answered.
    let mut big = b"summary|".to_vec();
    big.resize(200_000, b'x');
    let mut s = TcpStream::connect((h.ip, 4028)).await.expect("connect");
    let _ = s.write_all(&big).await;
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply).await;
    assert_eq!(h.miner.mode(), PowerMode::Normal);
    assert!(!h.miner.readings(Instant::now()).led);
    assert_eq!(h.miner.readings(Instant::now()).power_limit_w, None);
    assert_eq!(h.miner.reachability(Instant::now()), Reachability::Up);
    // The web root names the device, as asic-rs's web probe expects.
    let page = reqwest::get(format!("http://{}/", h.ip))
        .await
        .expect("web")
        .text()
        .await
        .expect("page");
    assert!(page.contains("Avalon"));
    let reply = rpc(h.ip, b"version").await.expect("reply");
    assert!(reply.contains("PROD=AvalonMiner 1466"), "{reply}");
}
