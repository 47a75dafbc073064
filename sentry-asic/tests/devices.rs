//! The sentry's container, meter and relay clients against the sim's
//! emulated devices on real loopback sockets (port 0, one 127.204.0.N
//! address per test), and against fakes that answer garbage.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashfleet_sentry_asic::container::{ContainerClient, ContainerEntry};
use hashfleet_sentry_asic::modbus::{
    MeterClient, MeterEntry, RegisterSpec, RegisterType, RelayClient, RelayEntry,
};
use hashfleet_shared::wire::{DeviceSnapshot, Severity};
use hashfleet_sim::devices::container::{self as sim_container, Container};
use hashfleet_sim::devices::modbus::{self as sim_modbus, Meter, Relay};
use hashfleet_sim::model::{Miner, Model, PowerMode};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `ip:0` forever, each handed to `serve`.
async fn listen<F, Fut>(ip: &str, serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// An address nothing listens on.
async fn dead_addr(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

fn miner(last: u8) -> Arc<Miner> {
    Arc::new(Miner::new(
        usize::from(last),
        Ipv4Addr::new(127, 204, 100, last),
        Model::AntminerS21,
        Duration::from_millis(100),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Devices {
    #[serde(default)]
    container: Vec<ContainerEntry>,
    #[serde(default)]
    powermeter: Vec<MeterEntry>,
    #[serde(default)]
    relay: Vec<RelayEntry>,
}

fn container_entry(c: &Container, addr: SocketAddr) -> ContainerEntry {
    let mut doc: Devices = toml::from_str(&sim_container::container_config_toml(c)).unwrap();
    let mut e = doc.container.remove(0);
    e.address = addr.to_string();
    e
}

fn meter_entry(m: &Meter, addr: SocketAddr) -> MeterEntry {
    let mut doc: Devices = toml::from_str(&sim_modbus::meter_config_toml(m)).unwrap();
    let mut e = doc.powermeter.remove(0);
    e.address = addr.to_string();
    e
}

fn relay_entry(r: &Relay, addr: SocketAddr) -> RelayEntry {
    let mut doc: Devices = toml::from_str(&sim_modbus::relay_config_toml(r)).unwrap();
    let mut e = doc.relay.remove(0);
    e.address = addr.to_string();
    e
}

async fn sim_container(ip: &str, index: usize) -> (Arc<Container>, ContainerClient) {
    let c = Arc::new(Container::new(index, ip.parse().unwrap()));
    let served = c.clone();
    let addr = listen(ip, move |s| sim_container::serve(s, served.clone())).await;
    let client = ContainerClient::new(container_entry(&c, addr)).unwrap();
    (c, client)
}

fn alert<'a>(s: &'a DeviceSnapshot, code: &str) -> Option<&'a hashfleet_shared::wire::DeviceAlert> {
    s.alerts.iter().find(|a| a.code == code)
}

#[tokio::test]
async fn container_poll_reports_values_and_injected_alarms_as_alerts() {
    let (c, client) = sim_container("127.204.0.1", 0).await;
    let s = client.poll().await;
    assert_eq!(s.labels["state"], "online", "{:?}", s.labels);
    assert_eq!(s.id, "container-sim-0");
    assert_eq!(s.kind, "container");
    assert_eq!(s.model, "Antspace HK3");
    assert_eq!(s.labels["container_type"], "hk3");
    assert_eq!(s.labels["cooling"], "on");
    assert!(
        (s.metrics["supply_temp_c"] - 30.0).abs() < 2.0,
        "{:?}",
        s.metrics
    );
    assert_eq!(s.metrics["temp_c"], s.metrics["supply_temp_c"]);
    assert!(s.metrics["return_temp_c"] > s.metrics["supply_temp_c"]);
    assert!(s.metrics["supply_pressure_bar"] > 1.5);
    assert!(s.metrics["flow_m3h"] > 100.0);
    assert!(s.metrics["power_w"] > 1000.0);
    for fan in 1..=3 {
        assert!(s.metrics[&format!("tower_fan_{fan}_rpm")] > 0.0);
    }
    assert_eq!(s.metrics["spray_pump_on"], 1.0);
    assert!(s.alerts.is_empty(), "{:?}", s.alerts);
    assert!(!s.raw.is_empty() && s.raw.len() <= 16 * 1024);

    c.set_alarm("leakage", true).unwrap();
    c.set_alarm("tower_fan_fault", true).unwrap();
    let s = client.poll().await;
    assert_eq!(alert(&s, "leakage").unwrap().severity, Severity::Critical);
    assert_eq!(
        alert(&s, "tower_fan_fault").unwrap().severity,
        Severity::High
    );
    assert_eq!(s.metrics["tower_fan_1_rpm"], 0.0);
    c.set_alarm("leakage", false).unwrap();
    c.set_alarm("tower_fan_fault", false).unwrap();
    assert!(client.poll().await.alerts.is_empty());

    let (imm, client) = sim_container("127.204.0.2", 1).await;
    imm.set_alarm("phase_failure", true).unwrap();
    imm.set_alarm("level_sensor_fault", true).unwrap();
    let s = client.poll().await;
    assert_eq!(s.labels["container_type"], "immersion");
    assert_eq!(
        alert(&s, "phase_failure").unwrap().severity,
        Severity::Critical
    );
    assert_eq!(
        alert(&s, "level_sensor_fault").unwrap().severity,
        Severity::Medium
    );
    assert_eq!(s.metrics["secondary_pump_on"], 0.0);
    assert!(s.metrics.contains_key("pdb_temp_c") && s.metrics.contains_key("level_sensor_2_pct"));
}

#[tokio::test]
async fn container_actions_change_set_point_and_switch_pumps_off() {
    let (c, client) = sim_container("127.204.0.3", 1).await;
    let reply = client
        .execute("setLiquidSupplyTemperature", &json!([25]))
        .await
        .unwrap();
    assert_eq!(reply["reply"]["setTemp"], 25.0);
    assert_eq!(c.set_point_c(), 25.0);
    assert_eq!(client.poll().await.metrics["set_temp_c"], 25.0);

    client
        .execute("switchCoolingSystem", &json!([false]))
        .await
        .unwrap();
    let s = client.poll().await;
    assert_eq!(s.labels["cooling"], "off");
    assert_eq!(s.metrics["circulation_pump_on"], 0.0);
    assert_eq!(s.metrics["secondary_pump_on"], 0.0);
    assert_eq!(s.metrics["flow_m3h"], 0.0);
    assert_eq!(s.metrics["dry_cooler_hz"], 0.0);
    client
        .execute("switchCoolingSystem", &json!([true]))
        .await
        .unwrap();
    assert_eq!(client.poll().await.metrics["circulation_pump_on"], 1.0);
    let reply = client
        .execute("resetCoolingSystem", &json!([]))
        .await
        .unwrap();
    assert!(reply["reply"]["cleared"].is_u64());

    let e = client
        .execute("setLiquidSupplyTemperature", &json!([50]))
        .await
        .unwrap_err();
    assert!(e.contains("out of range 10..=45"), "{e}");
    assert_eq!(c.set_point_c(), 25.0);
    let e = client
        .execute("switchCoolingSystem", &json!(["off"]))
        .await
        .unwrap_err();
    assert!(e.contains("[true]"), "{e}");
    let e = client.execute("reboot", &json!([])).await.unwrap_err();
    assert!(e.contains("`reboot` is not supported"), "{e}");
    assert!(e.contains("setLiquidSupplyTemperature"), "{e}");
}

#[tokio::test]
async fn container_unreachable_or_garbage_gives_offline_or_error_snapshots() {
    let entry = |addr: SocketAddr| ContainerEntry {
        name: "bad".into(),
        address: addr.to_string(),
        kind: hashfleet_sentry_asic::container::ContainerKind::Hk3,
        timeout_ms: 500,
    };
    let s = ContainerClient::new(entry(dead_addr("127.204.0.4").await))
        .unwrap()
        .poll()
        .await;
    assert_eq!(s.labels["state"], "offline");
    assert!(
        s.labels["error"].contains("no reply"),
        "{}",
        s.labels["error"]
    );
    let e = ContainerClient::new(entry(dead_addr("127.204.0.4").await))
        .unwrap()
        .execute("resetCoolingSystem", &json!([]))
        .await
        .unwrap_err();
    assert!(e.starts_with("resetCoolingSystem failed"), "{e}");

    // Each fake replies once with `reply`, then closes.
    async fn fake(ip: &str, reply: &'static [u8]) -> SocketAddr {
        listen(ip, move |mut s| async move {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
            let _ = s.shutdown().await;
        })
        .await
    }
    let cases: [(&[u8], &str); 5] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nxx{{[!",
            "not JSON",
        ),
        (
            b"\x00\x01garbage that is not http at all\r\n\r\n",
            "not an HTTP reply",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n[1]\n",
            "no `code`",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 21\r\n\r\n{\"code\":0,\"data\":[1]}",
            "no `data` object",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n{\"code\":0",
            "cut short",
        ),
    ];
    for (i, (reply, expect)) in cases.into_iter().enumerate() {
        let addr = fake(&format!("127.204.0.{}", 10 + i), reply).await;
        let s = ContainerClient::new(entry(addr)).unwrap().poll().await;
        assert_eq!(s.labels["state"], "error", "case {i}: {:?}", s.labels);
        assert!(
            s.labels["error"].contains(expect),
            "case {i}: {}",
            s.labels["error"]
        );
        assert!(s.metrics.is_empty());
    }

    // A body bigger than the cap, whatever Content-Length says.
    let addr = listen("127.204.0.20", |mut s| async move {
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n")
            .await;
        let _ = s.write_all(&vec![b' '; 300 * 1024]).await;
    })
    .await;
    let s = ContainerClient::new(entry(addr)).unwrap().poll().await;
    assert_eq!(s.labels["state"], "error", "{:?}", s.labels);
    let addr = listen("127.204.0.21", |mut s| async move {
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        for _ in 0..40 {
            let chunk = format!("2000\r\n{}\r\n", " ".repeat(0x2000));
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let s = ContainerClient::new(entry(addr)).unwrap().poll().await;
    assert_eq!(s.labels["state"], "error");
    assert!(
        s.labels["error"].contains("larger than"),
        "{}",
        s.labels["error"]
    );
}

#[tokio::test]
async fn meter_power_follows_its_miners() {
    let miners = vec![miner(1), miner(2)];
    let meter = Arc::new(Meter::new(
        0,
        "127.204.0.30".parse().unwrap(),
        miners.clone(),
    ));
    let served = meter.clone();
    let addr = listen("127.204.0.30", move |s| {
        sim_modbus::serve_meter(s, served.clone())
    })
    .await;
    let client = MeterClient::new(meter_entry(&meter, addr)).unwrap();
    assert_eq!(client.addr(), addr);
    let s = client.poll_meter().await;
    assert_eq!(s.labels["state"], "online", "{:?}", s.labels);
    assert_eq!(s.id, "powermeter-sim-0");
    assert_eq!(s.kind, "powermeter");
    let before = s.metrics["power_w"];
    assert!((6900.0..7500.0).contains(&before), "{before}");
    assert!((225.0..235.0).contains(&s.metrics["voltage_v"]));
    assert!(s.metrics["current_a"] > 5.0);
    assert!(s.metrics["energy_kwh"] >= 10_000.0);
    assert!((49.9..50.1).contains(&s.metrics["frequency_hz"]));
    assert!(s.metrics["power_factor"] > 0.9);
    assert!(s.metrics["reactive_power_var"] > 0.0);

    miners[0].set_mode(PowerMode::Sleep);
    let after = client.poll_meter().await.metrics["power_w"];
    assert!(after < before - 3000.0, "{before} -> {after}");
    miners[1].set_power(false);
    let off = client.poll_meter().await.metrics["power_w"];
    assert!(off < 300.0, "{off}");
}

#[tokio::test]
async fn meter_exceptions_truncated_frames_and_silence_are_error_snapshots() {
    let meter = Arc::new(Meter::new(1, "127.204.0.31".parse().unwrap(), vec![]));
    let served = meter.clone();
    let addr = listen("127.204.0.31", move |s| {
        sim_modbus::serve_meter(s, served.clone())
    })
    .await;
    let mut entry = meter_entry(&meter, addr);
    entry.registers.insert(
        "missing".into(),
        RegisterSpec {
            address: 200,
            kind: RegisterType::U16,
            scale: 1.0,
        },
    );
    let s = MeterClient::new(entry.clone()).unwrap().poll_meter().await;
    assert_eq!(s.labels["state"], "error");
    assert!(
        s.labels["error"].contains("IllegalDataAddress"),
        "{}",
        s.labels["error"]
    );
    assert!(
        s.labels["error"].contains("200..201"),
        "{}",
        s.labels["error"]
    );

    entry.registers.remove("missing");
    entry.timeout_ms = 300;
    entry.address = dead_addr("127.204.0.32").await.to_string();
    let s = MeterClient::new(entry.clone()).unwrap().poll_meter().await;
    assert_eq!(s.labels["state"], "offline");

    // Reads a request, then answers with `reply` (and closes unless told
    // to hang on).
    async fn fake(ip: &str, reply: &'static [u8], hang: bool) -> SocketAddr {
        listen(ip, move |mut s| async move {
            let mut buf = [0u8; 260];
            let _ = s.read(&mut buf).await;
            let mut reply = reply.to_vec();
            if reply.len() >= 2 {
                reply[..2].copy_from_slice(&buf[..2]);
            }
            let _ = s.write_all(&reply).await;
            if hang {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
        .await
    }
    let cases: [(&[u8], bool); 5] = [
        // The header promises 29 bytes; 3 arrive, then EOF.
        (&[0, 0, 0, 0, 0, 29, 1, 3, 28], false),
        // Same, but the device stays silent.
        (&[0, 0, 0, 0, 0, 29, 1, 3, 28], true),
        // Not Modbus TCP: protocol id 7.
        (&[0, 0, 0, 7, 0, 3, 1, 0x83, 2], false),
        // A reply of another function.
        (&[0, 0, 0, 0, 0, 3, 1, 0x81, 2], false),
        // Fewer registers than asked for.
        (&[0, 0, 0, 0, 0, 5, 1, 3, 2, 0, 1], false),
    ];
    for (i, (reply, hang)) in cases.into_iter().enumerate() {
        entry.address = fake(&format!("127.204.0.{}", 40 + i), reply, hang)
            .await
            .to_string();
        let started = Instant::now();
        let s = MeterClient::new(entry.clone()).unwrap().poll_meter().await;
        assert_eq!(s.labels["state"], "error", "case {i}: {:?}", s.labels);
        assert!(s.metrics.is_empty(), "case {i}");
        assert!(started.elapsed() < Duration::from_secs(2), "case {i}");
    }
}

#[tokio::test]
async fn relay_power_cycle_switches_the_miner_off_then_on() {
    let (m0, m1) = (miner(10), miner(11));
    let relay = Arc::new(Relay::new(
        0,
        "127.204.0.50".parse().unwrap(),
        vec![Some(m0.clone()), Some(m1.clone()), None],
    ));
    let served = relay.clone();
    let addr = listen("127.204.0.50", move |s| {
        sim_modbus::serve_relay(s, served.clone())
    })
    .await;
    let mut entry = relay_entry(&relay, addr);
    entry.off_ms = 600;
    let client = Arc::new(RelayClient::new(entry).unwrap());
    assert_eq!(client.addr(), addr);

    let s = client.poll_relay().await;
    assert_eq!(s.id, "relay-sim-0");
    assert_eq!(s.kind, "relay");
    assert_eq!(s.labels["state"], "online", "{:?}", s.labels);
    assert_eq!(s.labels["channel_1_miner"], "127.204.100.11");
    assert!(!s.labels.contains_key("channel_2_miner"));
    assert_eq!(
        (
            s.metrics["channel_0_on"],
            s.metrics["channel_1_on"],
            s.metrics["channel_2_on"]
        ),
        (1.0, 1.0, 1.0)
    );

    let cycling = client.clone();
    let task = tokio::spawn(async move { cycling.execute("powerCycle", &json!([1])).await });
    let deadline = Instant::now() + Duration::from_millis(400);
    while m1.powered() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!m1.powered(), "channel 1 should be off during the window");
    assert!(m0.powered());
    assert_eq!(client.poll_relay().await.metrics["channel_1_on"], 0.0);
    let reply = task.await.unwrap().unwrap();
    assert!(m1.powered());
    assert_eq!(reply["miner"], "127.204.100.11");
    assert_eq!(reply["on"], true);
    assert_eq!(client.poll_relay().await.metrics["channel_1_on"], 1.0);

    client
        .execute("powerCycle", &json!([{"channel": 0}]))
        .await
        .unwrap();
    assert!(m0.powered());

    let e = client.execute("powerCycle", &json!([5])).await.unwrap_err();
    assert!(e.contains("no channel 5"), "{e}");
    let e = client
        .execute("powerCycle", &json!(["1"]))
        .await
        .unwrap_err();
    assert!(e.contains("powerCycle takes"), "{e}");
    let e = client.execute("switchOff", &json!([1])).await.unwrap_err();
    assert!(e.contains("`switchOff` is not supported"), "{e}");
    assert!(m0.powered() && m1.powered());
}

#[tokio::test]
async fn relay_unreachable_is_offline_and_a_failed_cycle_says_so() {
    let relay = Relay::new(1, "127.204.0.60".parse().unwrap(), vec![None, None]);
    let mut entry = relay_entry(&relay, dead_addr("127.204.0.60").await);
    entry.timeout_ms = 300;
    let client = RelayClient::new(entry).unwrap();
    let s = client.poll_relay().await;
    assert_eq!(s.labels["state"], "offline");
    let e = client.power_cycle(0).await.unwrap_err();
    assert!(e.contains("nothing was cycled"), "{e}");
}

#[test]
fn rendered_config_blocks_parse_into_valid_entries() {
    let miners: Vec<_> = (1..=3).map(miner).collect();
    let container = Container::new(1, "127.204.1.1".parse().unwrap());
    let meter = Meter::new(2, "127.204.1.2".parse().unwrap(), miners.clone());
    let relay = Relay::new(
        3,
        "127.204.1.3".parse().unwrap(),
        vec![Some(miners[0].clone()), None, Some(miners[2].clone())],
    );
    let text = [
        sim_container::container_config_toml(&container),
        sim_modbus::meter_config_toml(&meter),
        sim_modbus::relay_config_toml(&relay),
    ]
    .join("\n");
    let doc: Devices = toml::from_str(&text).unwrap();

    let c = ContainerClient::new(doc.container[0].clone()).unwrap();
    assert_eq!(c.name(), "sim-1");
    assert_eq!(c.addr(), "127.204.1.1:80".parse().unwrap());
    assert_eq!(c.entry().kind.as_str(), "immersion");

    let m = MeterClient::new(doc.powermeter[0].clone()).unwrap();
    assert_eq!(m.name(), "sim-2");
    assert_eq!(m.addr(), "127.204.1.2:502".parse().unwrap());
    let regs = &m.entry().registers;
    assert_eq!(regs.len(), sim_modbus::METER_REGISTERS.len());
    for r in sim_modbus::METER_REGISTERS {
        assert_eq!(regs[r.name].address, r.address);
        assert_eq!(regs[r.name].scale, r.scale);
    }
    assert_eq!(regs["energy_kwh"].kind, RegisterType::U32);

    let r = RelayClient::new(doc.relay[0].clone()).unwrap();
    assert_eq!(r.name(), "sim-3");
    assert_eq!(r.entry().channels, 3);
    let outlets: Vec<_> = r
        .outlets()
        .iter()
        .map(|(c, ip)| (*c, ip.to_string()))
        .collect();
    assert_eq!(
        outlets,
        [
            (0, "127.204.100.1".to_string()),
            (2, "127.204.100.3".to_string())
        ]
    );
}
