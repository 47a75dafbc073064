//! Miner software and AI runtime clients against fake APIs on
//! 127.0.0.1, port 0: a small HTTP/1.1 server answering fixed replies in
//! each software's documented shape, and a fake CGMiner TCP API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashfleet_sentry_host::minersw::{MinerClient, MinerEntry, MinerKind, MAX_BODY, MAX_RAW};
use hashfleet_sentry_host::runtime_ai::{RuntimeClient, RuntimeEntry};
use hashfleet_shared::wire::{DeviceSnapshot, Severity};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake server sends for a route.
#[derive(Clone)]
enum Reply {
    /// A well-formed response with this status and body.
    Body(u16, Vec<u8>),
    /// These exact bytes, then close.
    Raw(Vec<u8>),
    /// These header bytes, then junk until the peer hangs up (at most
    /// 8 MiB).
    Endless(Vec<u8>),
    /// Read the request, then say nothing and hold the connection.
    Silent,
}

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A builder-style fake HTTP API.
#[derive(Clone, Default)]
struct FakeHttp {
    routes: HashMap<(String, String), Reply>,
    /// Requests without `Authorization: Bearer <token>` get a 401.
    bearer: Option<String>,
}

impl FakeHttp {
    fn new() -> Self {
        FakeHttp::default()
    }

    fn route(mut self, method: &str, path: &str, reply: Reply) -> Self {
        self.routes.insert((method.into(), path.into()), reply);
        self
    }

    fn json(self, method: &str, path: &str, status: u16, body: Value) -> Self {
        self.route(
            method,
            path,
            Reply::Body(status, body.to_string().into_bytes()),
        )
    }

    fn bearer(mut self, token: &str) -> Self {
        self.bearer = Some(token.into());
        self
    }

    async fn start(self) -> (SocketAddr, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Log = Arc::default();
        let (server, seen) = (Arc::new(self), log.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(server.clone().serve(stream, seen.clone()));
            }
        });
        (addr, log)
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream, log: Log) {
        let Some(req) = read_request(&mut stream).await else {
            return;
        };
        log.lock().unwrap().push(req.clone());
        let authorized = match &self.bearer {
            None => true,
            Some(t) => req.headers.get("authorization") == Some(&format!("Bearer {t}")),
        };
        let reply = if !authorized {
            Reply::Body(401, b"{\"error\":\"unauthorized\"}".to_vec())
        } else {
            self.routes
                .get(&(req.method.clone(), req.path.clone()))
                .cloned()
                .unwrap_or(Reply::Body(404, b"not found".to_vec()))
        };
        match reply {
            Reply::Body(status, body) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            }
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes).await;
            }
            Reply::Endless(head) => {
                let _ = stream.write_all(&head).await;
                let junk = vec![b'x'; 64 * 1024];
                for _ in 0..128 {
                    if stream.write_all(&junk).await.is_err() {
                        break;
                    }
                }
            }
            Reply::Silent => {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
        let _ = stream.shutdown().await;
    }
}

/// Reads one HTTP/1.1 request (head up to 64 KiB, body by Content-Length).
async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// A fake CGMiner API: records the request, answers `reply`, closes.
async fn fake_cgminer(reply: Reply) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (reply, seen) = (reply.clone(), seen.clone());
            tokio::spawn(async move {
                // The request is one small JSON object, no framing.
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"}") && req.len() < 4096 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().unwrap().push(req);
                match reply {
                    Reply::Body(_, bytes) | Reply::Raw(bytes) => {
                        let _ = stream.write_all(&bytes).await;
                    }
                    Reply::Endless(_) => {
                        let junk = vec![b'{'; 64 * 1024];
                        for _ in 0..128 {
                            if stream.write_all(&junk).await.is_err() {
                                break;
                            }
                        }
                    }
                    Reply::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, log)
}

/// A 127.0.0.1 port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn miner(kind: MinerKind, url: String, token: Option<&str>) -> MinerClient {
    MinerClient::new(MinerEntry {
        kind,
        url,
        token: token.map(Into::into),
        name: None,
    })
    .unwrap()
}

fn http_miner(kind: MinerKind, addr: SocketAddr) -> MinerClient {
    miner(kind, format!("http://{addr}"), None)
}

fn runtime(addr: SocketAddr, token: Option<&str>, load_path: Option<&str>) -> RuntimeClient {
    RuntimeClient::new(RuntimeEntry {
        url: format!("http://{addr}"),
        name: Some("llm".into()),
        token: token.map(Into::into),
        load_path: load_path.map(Into::into),
    })
    .unwrap()
}

fn assert_error_with_alert(s: &DeviceSnapshot, code: &str) {
    assert_eq!(s.labels["state"], "error", "{s:?}");
    assert!(
        s.alerts
            .iter()
            .any(|a| a.code == code && a.severity == Severity::High),
        "no {code} alert: {s:?}"
    );
    assert!(s.raw.len() <= MAX_RAW);
}

const TOKEN: &str = "tok-123";

fn xmrig_summary(paused: bool) -> Value {
    json!({
        "id": "92f3104f9a2ee78c", "worker_id": "rig-1", "uptime": 7200, "restricted": false,
        "resources": {"memory": {"free": 1, "total": 2, "resident_set_memory": 3_000_000}},
        "results": {"diff_current": 100_000, "shares_good": 310, "shares_total": 314,
                    "avg_time": 23, "hashes_total": 1_000_000_000u64},
        "algo": "rx/0",
        "connection": {"pool": "pool.example.org:3333", "ip": "192.0.2.1", "uptime": 7100,
                       "algo": "rx/0", "accepted": 300, "rejected": 4},
        "version": "6.21.0", "kind": "miner",
        "cpu": {"brand": "AMD Ryzen 9 7950X 16-Core Processor", "cores": 16, "threads": 32},
        "paused": paused,
        "hashrate": {"total": [18100.5, 18050.0, null], "highest": 18500.0}
    })
}

#[tokio::test]
async fn xmrig_summary_is_read_with_the_bearer_token() {
    let (addr, log) = FakeHttp::new()
        .bearer(TOKEN)
        .json("GET", "/2/summary", 200, xmrig_summary(false))
        .start()
        .await;
    let client = miner(MinerKind::Xmrig, format!("http://{addr}/"), Some(TOKEN));
    let s = client.poll().await;
    assert_eq!(s.id, format!("miner-xmrig-{addr}"));
    assert_eq!(s.kind, "miner");
    assert_eq!(s.make, "XMRig");
    assert_eq!(s.model, "AMD Ryzen 9 7950X 16-Core Processor");
    assert_eq!(s.firmware, "6.21.0");
    assert_eq!(s.metrics["hashrate_hs"], 18100.5);
    assert_eq!(s.metrics["hashrate_60s_hs"], 18050.0);
    assert!(
        !s.metrics.contains_key("hashrate_15m_hs"),
        "null is left out"
    );
    assert_eq!(s.metrics["shares_accepted"], 310.0);
    assert_eq!(s.metrics["shares_rejected"], 4.0);
    assert_eq!(s.metrics["uptime_s"], 7200.0);
    assert_eq!(s.labels["state"], "mining");
    assert_eq!(s.labels["pool"], "pool.example.org:3333");
    assert_eq!(s.labels["algorithm"], "rx/0");
    assert!(s.alerts.is_empty());
    assert!(s.raw.len() <= MAX_RAW && s.raw.starts_with('{'));
    let seen = log.lock().unwrap();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/2/summary");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {TOKEN}"));
}

#[tokio::test]
async fn xmrig_paused_reports_state_paused() {
    let (addr, _) = FakeHttp::new()
        .json("GET", "/2/summary", 200, xmrig_summary(true))
        .start()
        .await;
    let s = http_miner(MinerKind::Xmrig, addr).poll().await;
    assert_eq!(s.labels["state"], "paused");
}

#[tokio::test]
async fn xmrig_wrong_token_is_an_error_that_says_so() {
    let (addr, _) = FakeHttp::new()
        .bearer(TOKEN)
        .json("GET", "/2/summary", 200, xmrig_summary(false))
        .start()
        .await;
    let s = miner(MinerKind::Xmrig, format!("http://{addr}"), Some("wrong"))
        .poll()
        .await;
    assert_error_with_alert(&s, "miner_api_refused");
    assert!(s.labels["error"].contains("HTTP 401"), "{:?}", s.labels);
    assert!(s.labels["error"].contains("--http-access-token"));
}

#[tokio::test]
async fn xmrig_pause_and_resume_post_json_rpc_with_the_token() {
    let ok = json!({"id": 1, "jsonrpc": "2.0", "result": {"status": "OK"}});
    let (addr, log) = FakeHttp::new()
        .bearer(TOKEN)
        .json("POST", "/json_rpc", 200, ok)
        .start()
        .await;
    let client = miner(MinerKind::Xmrig, format!("http://{addr}"), Some(TOKEN));
    let out = client.execute("pauseMiner", &json!([])).await.unwrap();
    assert_eq!(out["reply"]["status"], "OK");
    assert_eq!(out["method"], "pauseMiner");
    client.execute("resumeMiner", &Value::Null).await.unwrap();
    let seen = log.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for (req, rpc) in seen.iter().zip(["pause", "resume"]) {
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/json_rpc")
        );
        assert_eq!(req.headers["authorization"], format!("Bearer {TOKEN}"));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["method"], rpc);
    }
}

#[tokio::test]
async fn xmrig_pause_forbidden_explains_http_no_restricted() {
    let (addr, _) = FakeHttp::new()
        .bearer(TOKEN)
        .json("POST", "/json_rpc", 403, json!({"error": "forbidden"}))
        .start()
        .await;
    let client = miner(MinerKind::Xmrig, format!("http://{addr}"), Some(TOKEN));
    let e = client.execute("pauseMiner", &json!([])).await.unwrap_err();
    assert!(
        e.contains("403") && e.contains("--http-no-restricted"),
        "{e}"
    );
}

#[tokio::test]
async fn xmrig_json_rpc_error_is_an_error() {
    let err = json!({"id": 1, "jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}});
    let (addr, _) = FakeHttp::new()
        .json("POST", "/json_rpc", 200, err)
        .start()
        .await;
    let e = http_miner(MinerKind::Xmrig, addr)
        .execute("resumeMiner", &json!([]))
        .await
        .unwrap_err();
    assert!(e.contains("Method not found"), "{e}");
}

#[tokio::test]
async fn trex_summary_values_and_pause_unsupported() {
    let summary = json!({
        "accepted_count": 1520, "rejected_count": 3, "solved_count": 0, "uptime": 86400,
        "hashrate": 125_400_000, "hashrate_minute": 125_000_000, "algorithm": "kawpow",
        "version": "0.26.8", "name": "t-rex", "paused": false,
        "active_pool": {"url": "stratum+tcp://rvn.pool.example:3333", "user": "wallet.rig"},
        "gpus": [
            {"device_id": 0, "hashrate": 62_700_000, "temperature": 61, "fan_speed": 70, "power": 210},
            {"device_id": 1, "hashrate": 62_700_000, "temperature": 64, "fan_speed": 75, "power": 215}
        ]
    });
    let (addr, log) = FakeHttp::new()
        .json("GET", "/summary", 200, summary)
        .start()
        .await;
    let client = http_miner(MinerKind::Trex, addr);
    let s = client.poll().await;
    assert_eq!(s.make, "T-Rex");
    assert_eq!(s.model, "kawpow");
    assert_eq!(s.firmware, "0.26.8");
    assert_eq!(s.metrics["hashrate_hs"], 125.4e6);
    assert_eq!(s.metrics["hashrate_60s_hs"], 125e6);
    assert_eq!(s.metrics["shares_accepted"], 1520.0);
    assert_eq!(s.metrics["shares_rejected"], 3.0);
    assert_eq!(s.metrics["uptime_s"], 86400.0);
    assert_eq!(s.metrics["gpu_1_hashrate_hs"], 62.7e6);
    assert_eq!(s.metrics["gpu_1_temp_c"], 64.0);
    assert_eq!(s.metrics["gpu_0_fan_pct"], 70.0);
    assert_eq!(s.metrics["gpu_0_power_w"], 210.0);
    assert_eq!(s.labels["state"], "mining");
    assert_eq!(s.labels["algorithm"], "kawpow");
    assert_eq!(s.labels["pool"], "stratum+tcp://rvn.pool.example:3333");

    let e = client.execute("pauseMiner", &json!([])).await.unwrap_err();
    assert!(
        e.starts_with("`pauseMiner` is not supported by trex"),
        "{e}"
    );
    assert_eq!(log.lock().unwrap().len(), 1, "no request for the pause");
}

#[tokio::test]
async fn lolminer_summary_converts_its_unit() {
    let summary = json!({
        "Software": "lolMiner 1.82",
        "Mining": {"Algorithm": "Etchash"},
        "Stratum": {"Current_Pool": "etc.pool.example:1010", "Current_User": "0xabc.rig"},
        "Session": {"Startup": 1_700_000_000, "Uptime": 5400, "Active_GPUs": 2,
                    "Performance_Summary": 120.5, "Performance_Unit": "Mh/s",
                    "Accepted": 800, "Submitted": 806},
        "GPUs": [
            {"Index": 0, "Name": "RX 6800", "Performance": 60.25, "Consumption (W)": 130,
             "Fan Speed (%)": 55, "Temp (deg C)": 58, "Session_HWErr": 0, "PCIE_Address": "3:0"},
            {"Index": 1, "Name": "RX 6800", "Performance": 60.25, "Consumption (W)": 131,
             "Fan Speed (%)": 56, "Temp (deg C)": 60, "Session_HWErr": 2, "PCIE_Address": "4:0"}
        ]
    });
    let (addr, _) = FakeHttp::new()
        .json("GET", "/summary", 200, summary)
        .start()
        .await;
    let client = http_miner(MinerKind::Lolminer, addr);
    let s = client.poll().await;
    assert_eq!(s.make, "lolMiner");
    assert_eq!(s.firmware, "1.82");
    assert_eq!(s.metrics["hashrate_hs"], 120.5e6);
    assert_eq!(s.metrics["gpu_0_hashrate_hs"], 60.25e6);
    assert_eq!(s.metrics["gpu_1_temp_c"], 60.0);
    assert_eq!(s.metrics["gpu_1_power_w"], 131.0);
    assert_eq!(s.metrics["gpu_1_fan_pct"], 56.0);
    assert_eq!(s.metrics["shares_accepted"], 800.0);
    assert_eq!(s.metrics["shares_rejected"], 6.0);
    assert_eq!(s.metrics["uptime_s"], 5400.0);
    assert_eq!(s.labels["gpu_1_bus"], "4:0");
    assert_eq!(s.labels["algorithm"], "Etchash");
    let e = client.execute("pauseMiner", &json!([])).await.unwrap_err();
    assert_eq!(
        e,
        "`pauseMiner` is not supported by lolminer: its API has no pause"
    );
}

#[tokio::test]
async fn gminer_stat_values() {
    let stat = json!({
        "uptime": 3000, "miner": "GMiner", "version": "3.44", "algorithm": "Ethash",
        "server": "eth.pool.example:2020", "user": "0xabc.rig",
        "total_accepted_shares": 90, "total_rejected_shares": 1,
        "devices": [
            {"gpu_id": 0, "bus_id": "0000:01:00.0", "name": "RTX 3070", "speed": 61_000_000,
             "temperature": 55, "power_usage": 120, "fan": 60,
             "accepted_shares": 45, "rejected_shares": 0},
            {"gpu_id": 1, "bus_id": "0000:02:00.0", "name": "RTX 3070", "speed": 60_000_000,
             "temperature": 57, "power_usage": 122, "fan": 62,
             "accepted_shares": 45, "rejected_shares": 1}
        ]
    });
    let (addr, log) = FakeHttp::new()
        .json("GET", "/stat", 200, stat)
        .start()
        .await;
    let s = http_miner(MinerKind::Gminer, addr).poll().await;
    assert_eq!(log.lock().unwrap()[0].path, "/stat");
    assert_eq!(s.make, "GMiner");
    assert_eq!(s.firmware, "3.44");
    assert_eq!(s.metrics["hashrate_hs"], 121e6);
    assert_eq!(s.metrics["shares_accepted"], 90.0);
    assert_eq!(s.metrics["shares_rejected"], 1.0);
    assert_eq!(s.metrics["gpu_0_power_w"], 120.0);
    assert_eq!(s.metrics["gpu_1_temp_c"], 57.0);
    assert_eq!(s.labels["gpu_0_bus"], "0000:01:00.0");
    assert_eq!(s.labels["pool"], "eth.pool.example:2020");
}

/// A TeamRedMiner-style `summary+devs` reply with the usual sloppiness: a
/// raw newline in a string, `,}`, a string `"inf"` and a trailing NUL.
const TRM_REPLY: &str = concat!(
    "{\"summary\":[{\"STATUS\":[{\"STATUS\":\"S\",\"When\":1700000000,\"Code\":11,",
    "\"Msg\":\"Summary\",\"Description\":\"TeamRedMiner 0.10.21\"}],",
    "\"SUMMARY\":[{\"Elapsed\":4000,\"MHS av\":95.5,\"MHS 5s\":96.25,\"MHS 1m\":95.75,",
    "\"Accepted\":400,\"Rejected\":5,\"Hardware Errors\":0,\"Best Share\":\"1\n2\",}],\"id\":1}],",
    "\"devs\":[{\"STATUS\":[{\"STATUS\":\"S\",\"Msg\":\"2 GPU(s)\"}],\"DEVS\":[",
    "{\"GPU\":0,\"Status\":\"Alive\",\"Temperature\":63.0,\"Fan Percent\":60,\"MHS av\":47.5,\"MHS 5s\":48.0},",
    "{\"GPU\":1,\"Status\":\"Alive\",\"Temperature\":\"inf\",\"Fan Percent\":61,\"MHS av\":48.0,\"MHS 5s\":48.25}",
    "]}],\"id\":1}\0"
);

#[tokio::test]
async fn cgminer_summary_devs_over_tcp() {
    let (addr, log) = fake_cgminer(Reply::Raw(TRM_REPLY.as_bytes().to_vec())).await;
    let client = miner(MinerKind::Cgminer, format!("tcp://{addr}"), None);
    let s = client.poll().await;
    assert_eq!(s.id, format!("miner-cgminer-{addr}"));
    assert_eq!(s.labels["state"], "mining", "{s:?}");
    assert_eq!(s.make, "TeamRedMiner");
    assert_eq!(s.firmware, "0.10.21");
    assert_eq!(s.metrics["hashrate_hs"], 96.25e6);
    assert_eq!(s.metrics["hashrate_avg_hs"], 95.5e6);
    assert_eq!(s.metrics["hashrate_60s_hs"], 95.75e6);
    assert_eq!(s.metrics["shares_accepted"], 400.0);
    assert_eq!(s.metrics["shares_rejected"], 5.0);
    assert_eq!(s.metrics["uptime_s"], 4000.0);
    assert_eq!(s.metrics["gpu_0_hashrate_hs"], 48e6);
    assert_eq!(s.metrics["gpu_1_hashrate_hs"], 48.25e6);
    assert_eq!(s.metrics["gpu_0_temp_c"], 63.0);
    assert!(!s.metrics.contains_key("gpu_1_temp_c"));
    assert_eq!(s.metrics["gpu_1_fan_pct"], 61.0);
    assert!(!s.raw.ends_with('\0'));
    let first = log.lock().unwrap()[0].clone();
    let req: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(req, json!({"command": "summary+devs"}));
    let e = client.execute("pauseMiner", &json!([])).await.unwrap_err();
    assert_eq!(
        e,
        "`pauseMiner` is not supported by cgminer: its API has no pause"
    );
}

#[tokio::test]
async fn cgminer_partial_reply_before_a_stall_is_still_read() {
    // The miner sends its reply but never closes: the timeout ends the read
    // and what came is parsed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(&TRM_REPLY.as_bytes()[..TRM_REPLY.len() - 40])
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let client =
        miner(MinerKind::Cgminer, addr.to_string(), None).with_timeout(Duration::from_millis(400));
    let s = client.poll().await;
    assert_eq!(s.labels["state"], "mining", "{s:?}");
    assert_eq!(s.metrics["hashrate_hs"], 96.25e6);
}

#[tokio::test]
async fn unreachable_miners_are_offline() {
    let port = closed_port().await;
    for kind in [
        MinerKind::Xmrig,
        MinerKind::Trex,
        MinerKind::Lolminer,
        MinerKind::Gminer,
    ] {
        let s = http_miner(kind, port).poll().await;
        assert_eq!(s.labels["state"], "offline", "{kind:?}: {s:?}");
        assert!(s.alerts.is_empty());
        assert!(s.labels.contains_key("error"));
    }
    let s = miner(MinerKind::Cgminer, port.to_string(), None)
        .poll()
        .await;
    assert_eq!(s.labels["state"], "offline", "{s:?}");
    let e = miner(MinerKind::Xmrig, format!("http://{port}"), Some(TOKEN))
        .execute("pauseMiner", &json!([]))
        .await
        .unwrap_err();
    assert!(e.starts_with("pauseMiner failed"), "{e}");
}

#[tokio::test]
async fn silent_miners_time_out_as_offline() {
    let (addr, _) = FakeHttp::new()
        .route("GET", "/summary", Reply::Silent)
        .start()
        .await;
    let started = Instant::now();
    let s = http_miner(MinerKind::Trex, addr)
        .with_timeout(Duration::from_millis(300))
        .poll()
        .await;
    assert_eq!(s.labels["state"], "offline", "{s:?}");
    let (addr, _) = fake_cgminer(Reply::Silent).await;
    let s = miner(MinerKind::Cgminer, addr.to_string(), None)
        .with_timeout(Duration::from_millis(300))
        .poll()
        .await;
    assert_eq!(s.labels["state"], "offline", "{s:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn garbage_replies_are_errors_with_an_alert() {
    let (addr, _) = FakeHttp::new()
        .route(
            "GET",
            "/2/summary",
            Reply::Body(200, b"<html>hello</html>".to_vec()),
        )
        .json("GET", "/summary", 200, json!({"unexpected": [1, 2, 3]}))
        .route(
            "GET",
            "/stat",
            Reply::Body(200, vec![0xff, 0xfe, 0x00, b'{']),
        )
        .start()
        .await;
    for kind in [
        MinerKind::Xmrig,
        MinerKind::Trex,
        MinerKind::Lolminer,
        MinerKind::Gminer,
    ] {
        let s = http_miner(kind, addr).poll().await;
        assert_error_with_alert(&s, "miner_bad_reply");
        assert_eq!(s.make, kind.software());
    }
    // Not HTTP at all.
    let (addr, _) = FakeHttp::new()
        .route(
            "GET",
            "/summary",
            Reply::Raw(b"\x00\x01garbage\r\n\r\n".to_vec()),
        )
        .start()
        .await;
    let s = http_miner(MinerKind::Trex, addr).poll().await;
    assert_error_with_alert(&s, "miner_bad_reply");
    // A wrong path (another program on the port).
    let (addr, _) = FakeHttp::new().start().await;
    let s = http_miner(MinerKind::Gminer, addr).poll().await;
    assert_error_with_alert(&s, "miner_api_refused");
    assert!(s.labels["error"].contains("HTTP 404"));
    // CGMiner: noise, and an API error.
    let (addr, _) = fake_cgminer(Reply::Raw(b"\xff\xfe not json }{ ,, \0".to_vec())).await;
    let s = miner(MinerKind::Cgminer, addr.to_string(), None)
        .poll()
        .await;
    assert_error_with_alert(&s, "miner_bad_reply");
    let denied = b"{\"STATUS\":[{\"STATUS\":\"E\",\"Code\":45,\"Msg\":\"Access denied to 'summary' command\"}],\"id\":1}\0";
    let (addr, _) = fake_cgminer(Reply::Raw(denied.to_vec())).await;
    let s = miner(MinerKind::Cgminer, addr.to_string(), None)
        .poll()
        .await;
    assert_error_with_alert(&s, "miner_bad_reply");
    assert!(s.labels["error"].contains("Access denied"));
}

#[tokio::test]
async fn oversized_bodies_are_cut() {
    // Content-Length lies (tiny claim would be trusted by nobody; a huge
    // one must not be allocated), and a body with no length at all.
    let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n".to_vec();
    let no_length = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    for head in [huge, no_length] {
        let (addr, _) = FakeHttp::new()
            .route("GET", "/summary", Reply::Endless(head))
            .start()
            .await;
        let started = Instant::now();
        let s = http_miner(MinerKind::Trex, addr).poll().await;
        assert_error_with_alert(&s, "miner_bad_reply");
        assert!(
            s.labels["error"].contains(&MAX_BODY.to_string()),
            "{:?}",
            s.labels
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let (addr, _) = fake_cgminer(Reply::Endless(Vec::new())).await;
    let s = miner(MinerKind::Cgminer, addr.to_string(), None)
        .poll()
        .await;
    assert_error_with_alert(&s, "miner_bad_reply");
    assert!(s.labels["error"].contains("larger than"));
}

fn vllm(health: u16) -> FakeHttp {
    FakeHttp::new()
        .route("GET", "/health", Reply::Body(health, Vec::new()))
        .json(
            "GET",
            "/v1/models",
            200,
            json!({"object": "list", "data": [
                {"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "owned_by": "vllm"},
                {"id": "sql-lora", "object": "model", "owned_by": "vllm"}
            ]}),
        )
        .json("GET", "/version", 200, json!({"version": "0.6.3"}))
        .route(
            "GET",
            "/metrics",
            Reply::Body(
                200,
                concat!(
                    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n",
                    "# TYPE vllm:num_requests_running gauge\n",
                    "vllm:num_requests_running{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 3.0\n",
                    "# TYPE vllm:num_requests_waiting gauge\n",
                    "vllm:num_requests_waiting{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 12.0\n",
                    "vllm:gpu_cache_usage_perc{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.4\n"
                )
                .as_bytes()
                .to_vec(),
            ),
        )
}

#[tokio::test]
async fn runtime_reports_health_models_and_metrics_load() {
    let (addr, log) = vllm(200).bearer("sk-1").start().await;
    let s = runtime(addr, Some("sk-1"), None).poll().await;
    assert_eq!(s.id, "runtime-llm");
    assert_eq!(s.kind, "runtime");
    assert_eq!(s.make, "vLLM");
    assert_eq!(s.model, "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(s.firmware, "0.6.3");
    assert_eq!(s.labels["state"], "online");
    assert_eq!(s.metrics["healthy"], 1.0);
    assert_eq!(s.metrics["models"], 2.0);
    assert_eq!(
        s.labels["models"],
        "meta-llama/Llama-3.1-8B-Instruct,sql-lora"
    );
    assert_eq!(s.metrics["requests_running"], 3.0);
    assert_eq!(s.metrics["requests_waiting"], 12.0);
    assert!(s.alerts.is_empty(), "{:?}", s.alerts);
    assert!(s.raw.len() <= MAX_RAW);
    let seen = log.lock().unwrap();
    assert!(seen
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer sk-1"));
}

#[tokio::test]
async fn runtime_load_path_json_and_number() {
    let (addr, log) = vllm(200)
        .json(
            "GET",
            "/load",
            200,
            json!({"num_requests_running": 1, "num_requests_waiting": 0}),
        )
        .route("GET", "/busy", Reply::Body(200, b"7\n".to_vec()))
        .route("GET", "/nonsense", Reply::Body(200, b"<html/>".to_vec()))
        .start()
        .await;
    let s = runtime(addr, None, Some("/load")).poll().await;
    assert_eq!(s.metrics["requests_running"], 1.0);
    assert_eq!(s.metrics["requests_waiting"], 0.0);
    assert!(log.lock().unwrap().iter().all(|r| r.path != "/metrics"));
    let s = runtime(addr, None, Some("/busy")).poll().await;
    assert_eq!(s.metrics["requests_running"], 7.0);
    assert!(!s.metrics.contains_key("requests_waiting"));
    let s = runtime(addr, None, Some("/nonsense")).poll().await;
    assert!(!s.metrics.contains_key("requests_running"));
    assert!(s.alerts.iter().any(|a| a.code == "runtime_bad_reply"));
    assert_eq!(s.labels["state"], "online");
}

#[tokio::test]
async fn runtime_unhealthy_and_unauthorized() {
    let (addr, _) = vllm(503).start().await;
    let s = runtime(addr, None, None).poll().await;
    assert_eq!(s.metrics["healthy"], 0.0);
    assert_eq!(s.labels["state"], "error");
    let a = s
        .alerts
        .iter()
        .find(|a| a.code == "runtime_unhealthy")
        .unwrap();
    assert_eq!(a.severity, Severity::High);
    assert!(a.message.contains("503"), "{}", a.message);
    assert_eq!(s.metrics["models"], 2.0, "models are still read");

    let (addr, _) = vllm(200).bearer("right").start().await;
    let s = runtime(addr, Some("wrong"), None).poll().await;
    // /health got a 401 too: not healthy, and the models alert says why.
    assert_eq!(s.metrics["healthy"], 0.0);
    assert!(s
        .alerts
        .iter()
        .any(|a| a.code == "runtime_auth_failed" && a.message.contains("--api-key")));
}

#[tokio::test]
async fn runtime_without_metrics_reports_no_load() {
    let (addr, _) = FakeHttp::new()
        .route("GET", "/health", Reply::Body(200, Vec::new()))
        .json("GET", "/v1/models", 200, json!({"data": [{"id": "m"}]}))
        .start()
        .await;
    let s = runtime(addr, None, None).poll().await;
    assert_eq!(s.labels["state"], "online");
    assert_eq!(s.make, "OpenAI-compatible");
    assert!(!s.metrics.contains_key("requests_running"));
    assert!(s.alerts.is_empty(), "{:?}", s.alerts);
}

#[tokio::test]
async fn runtime_unreachable_is_offline_and_garbage_is_not_a_panic() {
    let s = runtime(closed_port().await, None, None).poll().await;
    assert_eq!(s.labels["state"], "offline");
    assert!(s.metrics.is_empty());

    let (addr, _) = FakeHttp::new()
        .route("GET", "/health", Reply::Body(200, Vec::new()))
        .route("GET", "/v1/models", Reply::Body(200, b"\xff{{{".to_vec()))
        .route(
            "GET",
            "/metrics",
            Reply::Endless(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec()),
        )
        .start()
        .await;
    let s = runtime(addr, None, None).poll().await;
    assert_eq!(s.labels["state"], "online");
    assert!(s.alerts.iter().any(|a| a.code == "runtime_bad_reply"));
    assert!(!s.metrics.contains_key("models"));
    assert!(s.raw.len() <= MAX_RAW);
}
