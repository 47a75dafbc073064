//! The Antminer S21 emulation as the real asic-rs sees it: identified as an
//! S21 on stock firmware, read in full, and driven by asic-rs's own writes.
//! Each test serves one miner on its own loopback address (127.201.0.N) on
//! the real ports 80 and 4028, so the tests run in parallel.

mod common;
use common::{identify, ths};

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use asic_rs::core::config::pools::{PoolConfig, PoolGroupConfig};
use asic_rs::core::config::tuning::TuningConfig;
use asic_rs::core::data::hashrate::HashRateUnit;
use asic_rs::core::data::miner::{MinerData, MiningMode, TuningTarget};
use asic_rs::core::data::pool::PoolURL;
use hashfleet_sim::model::{Fault, Model, PowerMode, Reachability};
use md5::{Digest as _, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One emulated S21 on 127.201.0.`n`, ports 80 and 4028, dropping
/// connections while the miner is down as the sim's net layer does.
type Rig = hashfleet_sim::net::ServedMiner;

async fn rig(n: u8) -> Rig {
    common::serve(Ipv4Addr::new(127, 201, 0, n), Model::AntminerS21)
}

fn near(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= expected.abs() * tolerance
}

fn board_temps(data: &MinerData) -> Vec<f64> {
    data.hashboards
        .iter()
        .filter_map(|b| b.board_temperature.map(|t| t.as_celsius()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asic_rs_identifies_an_s21_and_reads_everything() {
    let rig = rig(1).await;
    let miner = identify(&rig).await;
    let info = miner.get_device_info();
    // asic-rs spells the make "Antminer" here, "AntMiner" in its firmware name.
    assert!(info.make.eq_ignore_ascii_case("AntMiner"), "{}", info.make);
    assert_eq!(info.model, "S21");
    assert_eq!(info.firmware, "AntMiner Stock");

    let data = miner.get_data().await;
    let r = rig.miner.readings(Instant::now());
    let mac = data.mac.expect("mac").to_string();
    assert!(
        mac.eq_ignore_ascii_case(&rig.miner.mac_string()),
        "{mac} vs {}",
        rig.miner.mac_string()
    );
    assert_eq!(
        data.serial_number.as_deref(),
        Some(rig.miner.serial.as_str())
    );
    assert_eq!(data.hostname.as_deref(), Some(rig.miner.hostname.as_str()));
    assert_eq!(data.api_version.as_deref(), Some("3.1"));
    assert!(data.firmware_version.is_some());
    assert!(data.control_board_version.is_some());
    assert!(
        near(ths(&data), r.ths_5s, 0.05),
        "{} vs {}",
        ths(&data),
        r.ths_5s
    );
    let expected = data
        .expected_hashrate
        .clone()
        .expect("expected hashrate")
        .as_unit(HashRateUnit::TeraHash)
        .value;
    assert!(near(expected, r.expected_ths, 0.01), "{expected}");
    let watts = data.wattage.expect("wattage").as_watts();
    assert!(near(watts, r.power_w, 0.05), "{watts} vs {}", r.power_w);
    assert_eq!(data.hashboards.len(), 3);
    for board in &data.hashboards {
        assert_eq!(board.working_chips, Some(108), "{board:?}");
        assert_eq!(board.active, Some(true));
        assert!(board.hashrate.is_some());
        assert!(board.frequency.is_some());
        let t = board
            .board_temperature
            .expect("board temperature")
            .as_celsius();
        assert!((40.0..80.0).contains(&t), "{t}");
    }
    assert_eq!(data.total_chips, Some(324));
    assert_eq!(data.fans.len(), 4);
    assert!(data
        .fans
        .iter()
        .all(|f| f.rpm.is_some_and(|rpm| rpm.as_rpm() > 3000.0)));
    let pools = &data.pools[0].pools;
    assert_eq!(pools.len(), 3);
    assert_eq!(pools[0].alive, Some(true));
    assert_eq!(pools[0].active, Some(true));
    assert_eq!(pools[0].user.as_deref(), Some(r.pools[0].user.as_str()));
    let uptime = data.uptime.expect("uptime").as_secs();
    assert!(
        uptime.abs_diff(r.uptime_s) <= 2,
        "{uptime} vs {}",
        r.uptime_s
    );
    assert!(data.is_mining);
    assert_eq!(data.light_flashing, Some(false));
    assert_eq!(
        data.tuning_target,
        Some(TuningTarget::MiningMode(MiningMode::Normal))
    );
    assert!(data.messages.is_empty(), "{:?}", data.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_sleeps_the_miner_and_resume_wakes_it() {
    let rig = rig(2).await;
    let miner = identify(&rig).await;
    assert!(miner.supports_pause() && miner.supports_resume());

    assert!(miner.pause(None).await.expect("pause"));
    assert_eq!(rig.miner.mode(), PowerMode::Sleep);
    let data = miner.get_data().await;
    assert!(ths(&data) < 0.01, "{}", ths(&data));
    assert!(!data.is_mining);

    assert!(miner.resume(None).await.expect("resume"));
    assert_eq!(rig.miner.mode(), PowerMode::Normal);
    let data = miner.get_data().await;
    assert!(data.is_mining);
    assert!(ths(&data) > 150.0, "{}", ths(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_light_turns_the_led_on_and_off() {
    let rig = rig(3).await;
    let miner = identify(&rig).await;
    assert!(miner.supports_set_fault_light());
    assert!(miner.set_fault_light(true).await.expect("light on"));
    assert!(rig.miner.readings(Instant::now()).led);
    assert_eq!(miner.get_data().await.light_flashing, Some(true));
    assert!(miner.set_fault_light(false).await.expect("light off"));
    assert!(!rig.miner.readings(Instant::now()).led);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_takes_the_miner_down_then_back() {
    let rig = rig(4).await;
    let miner = identify(&rig).await;
    let before = miner.get_data().await.uptime.expect("uptime");
    assert!(miner.restart().await.expect("restart"));

    let deadline = Instant::now() + Duration::from_secs(2);
    while rig.miner.reachability(Instant::now()) == Reachability::Up {
        assert!(Instant::now() < deadline, "the miner never went down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While booting nothing answers.
    let down = miner.get_data().await;
    assert!(down.hashrate.is_none() && down.mac.is_none());

    let deadline = Instant::now() + Duration::from_secs(5);
    let data = loop {
        let data = miner.get_data().await;
        if data.hashrate.is_some() {
            break data;
        }
        assert!(Instant::now() < deadline, "the miner never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(data.uptime.expect("uptime") < before);
    assert!(ths(&data) > 150.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_config_replaces_the_pools() {
    let rig = rig(5).await;
    let miner = identify(&rig).await;
    assert!(miner.supports_pools_config());
    let pool = |n: u8| PoolConfig {
        url: PoolURL::from(format!("stratum+tcp://new{n}.example.org:3333")),
        username: format!("fleet.worker{n}"),
        password: "x".into(),
    };
    let config = vec![PoolGroupConfig {
        name: String::new(),
        quota: 1,
        pools: vec![pool(1), pool(2)],
    }];
    assert!(miner.set_pools_config(config).await.expect("set pools"));
    let pools = rig.miner.pools();
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0].url, "stratum+tcp://new1.example.org:3333");
    assert_eq!(pools[1].user, "fleet.worker2");

    let read_back = miner.get_pools_config().await.expect("read pools");
    assert_eq!(read_back[0].pools.len(), 2);
    assert_eq!(read_back[0].pools[0].url.host, "new1.example.org");
    let data = miner.get_data().await;
    assert_eq!(data.pools[0].pools.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_limit_is_unsupported_and_work_modes_are_the_way() {
    let rig = rig(6).await;
    let miner = identify(&rig).await;
    assert!(!miner.supports_set_power_limit());
    // `measurements::Power` is not re-exported; the miner's own reading is one.
    let watts = miner.get_data().await.wattage.expect("wattage");
    assert!(miner.set_power_limit(watts).await.is_err());
    assert_eq!(rig.miner.readings(Instant::now()).power_limit_w, None);

    // Stock has low and high power modes instead.
    assert!(miner.supports_tuning_config());
    let low = TuningConfig::new(TuningTarget::MiningMode(MiningMode::Low));
    assert!(miner.set_tuning_config(low, None).await.expect("low power"));
    assert_eq!(rig.miner.mode(), PowerMode::Low);
    let data = miner.get_data().await;
    assert_eq!(
        data.tuning_target,
        Some(TuningTarget::MiningMode(MiningMode::Low))
    );
    assert!(ths(&data) < 170.0 && data.is_mining, "{}", ths(&data));
    let normal = TuningConfig::new(TuningTarget::MiningMode(MiningMode::Normal));
    assert!(miner.set_tuning_config(normal, None).await.expect("normal"));
    assert_eq!(rig.miner.mode(), PowerMode::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overheat_shows_as_hotter_boards() {
    let rig = rig(7).await;
    let miner = identify(&rig).await;
    let cool = board_temps(&miner.get_data().await);
    rig.miner.set_fault(Fault::Overheat, true);
    let data = miner.get_data().await;
    let hot = board_temps(&data);
    assert_eq!(cool.len(), 3);
    assert_eq!(hot.len(), 3);
    for (c, h) in cool.iter().zip(&hot) {
        assert!(h - c > 15.0, "{cool:?} -> {hot:?}");
    }
    assert!(!data.messages.is_empty(), "the temp light goes red");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashboard_loss_shows_as_a_board_without_chips_or_hashrate() {
    let rig = rig(8).await;
    let miner = identify(&rig).await;
    rig.miner.set_fault(Fault::HashboardLoss, true);
    let data = miner.get_data().await;
    assert_eq!(data.hashboards.len(), 3);
    let lost = &data.hashboards[0];
    assert_eq!(lost.working_chips, Some(0));
    assert!(lost.hashrate.as_ref().is_none_or(|h| h.value == 0.0));
    assert!(lost.board_temperature.is_none());
    assert_eq!(lost.active, Some(false));
    for board in &data.hashboards[1..] {
        assert_eq!(board.working_chips, Some(108));
        assert_eq!(board.active, Some(true));
    }
    assert_eq!(data.total_chips, Some(216));
    let r = rig.miner.readings(Instant::now());
    assert!(near(ths(&data), r.ths_5s, 0.05));
    assert!(ths(&data) < 200.0 * 0.7);
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The digest `Authorization` for a challenge, the way a browser makes it.
fn digest_answer(challenge: &str, method: &str, password: &str, uri: &str) -> String {
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("challenge has a nonce");
    let realm = "antMiner Configuration";
    let user = "root";
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"{response}\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_credentials_get_401_with_a_fresh_challenge() {
    let rig = rig(9).await;
    let client = reqwest::Client::new();
    let uri = "/cgi-bin/get_system_info.cgi";
    let url = format!("http://{}{uri}", rig.ip);

    let first = client.get(&url).send().await.expect("request");
    assert_eq!(first.status().as_u16(), 401);
    let challenge = first
        .headers()
        .get("www-authenticate")
        .and_then(|h| h.to_str().ok())
        .expect("a challenge")
        .to_string();
    assert!(challenge.starts_with("Digest realm=\"antMiner Configuration\""));

    let wrong = client
        .get(&url)
        .header(
            "authorization",
            digest_answer(&challenge, "GET", "hunter2", uri),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status().as_u16(), 401);
    let fresh = wrong
        .headers()
        .get("www-authenticate")
        .and_then(|h| h.to_str().ok())
        .expect("a fresh challenge")
        .to_string();
    assert_ne!(fresh, challenge);

    let forged = client
        .get(&url)
        .header("authorization", "Digest username=\"root\", response=\"x\"")
        .send()
        .await
        .expect("request");
    assert_eq!(forged.status().as_u16(), 401);

    let right = client
        .get(&url)
        .header("authorization", digest_answer(&fresh, "GET", "root", uri))
        .send()
        .await
        .expect("request");
    assert_eq!(right.status().as_u16(), 200);
    let info: serde_json::Value = right.json().await.expect("JSON");
    assert_eq!(info["minertype"], "Antminer S21");
    assert_eq!(info["serinum"], rig.miner.serial.as_str());

    // Authenticated but oversized: refused, not read.
    let uri = "/cgi-bin/set_miner_conf.cgi";
    let url = format!("http://{}{uri}", rig.ip);
    let challenge = client.post(&url).send().await.expect("request");
    let challenge = challenge
        .headers()
        .get("www-authenticate")
        .and_then(|h| h.to_str().ok())
        .expect("a challenge")
        .to_string();
    let huge = client
        .post(&url)
        .header(
            "authorization",
            digest_answer(&challenge, "POST", "root", uri),
        )
        .body(vec![b' '; 32 * 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(huge.status().as_u16(), 413);
    assert_eq!(rig.miner.mode(), PowerMode::Normal);
}

async fn rpc_raw(ip: IpAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect((ip, 4028)).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("the miner answers and closes")
        .expect("read");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_rpc_port_gets_an_error_reply() {
    let rig = rig(10).await;
    let reply = rpc_raw(rig.ip, b"{\"command\": \"summ").await;
    assert_eq!(reply.last(), Some(&0));
    let v: serde_json::Value = serde_json::from_slice(&reply[..reply.len() - 1]).expect("JSON");
    assert_eq!(v["STATUS"][0]["STATUS"], "E");

    let reply = rpc_raw(
        rig.ip,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage",
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("STATUS=E,"), "{text}");
    assert!(text.contains("Msg=Invalid command"), "{text}");

    let reply = rpc_raw(rig.ip, &vec![b'{'; 70 * 1024]).await;
    assert!(String::from_utf8_lossy(&reply).contains("\"STATUS\":\"E\""));

    let reply = rpc_raw(rig.ip, br#"{"command":"melt"}"#).await;
    let v: serde_json::Value = serde_json::from_slice(&reply[..reply.len() - 1]).expect("JSON");
    assert_eq!(v["STATUS"][0]["Msg"], "Invalid command");

    // Still serving afterwards.
    let reply = rpc_raw(rig.ip, br#"{"command":"version"}"#).await;
    assert!(String::from_utf8_lossy(&reply).contains("Antminer S21"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_and_plain_text_rpc_commands() {
    let rig = rig(11).await;
    let reply = rpc_raw(rig.ip, br#"{"command":"summary+pools+stats"}"#).await;
    let v: serde_json::Value = serde_json::from_slice(&reply[..reply.len() - 1]).expect("JSON");
    assert!(v["summary"][0]["SUMMARY"][0]["GHS 5s"].as_f64().unwrap() > 150_000.0);
    assert_eq!(v["pools"][0]["POOLS"].as_array().unwrap().len(), 3);
    assert_eq!(v["stats"][0]["STATS"][1]["chain_acn3"], 108);

    let reply = rpc_raw(rig.ip, b"pools|").await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("STATUS=S,"), "{text}");
    assert!(text.contains("POOL=2"), "{text}");
    assert!(text.ends_with("|\0"));
}
