//! sentry-host with every collector on fake sources, through a real
//! session: the commander stores GPUs (nvidia-smi merged with DCGM), miner
//! software, the AI runtime and the host; a dead source fails softly; an
//! approved `pauseMiner` reaches xmrig's json_rpc with its token.

use std::time::Duration;

use hashfleet_sentry_host::config::HostConfig;
use hashfleet_tests::fakes::{self, GPU0, GPU1};
use hashfleet_tests::{init_logs, wait_until, TestCommander, TestSentry};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn device(c: &TestCommander, id: &str) -> Value {
    let (status, body) = c
        .post("/api/v1/devices/query", json!({"query": {"id": id}}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["devices"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_collector_reports_through_the_commander_and_fails_softly() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let fakes = fakes::start(dir.path()).await.unwrap();
    // A dead miner API as well: it must not stop the others.
    let config_text = format!(
        "{}\n[[miner]]\nkind = \"lolminer\"\nname = \"dead\"\nurl = \"http://127.0.0.1:1\"\n",
        fakes.config_toml()
    );
    let file: hashfleet_sentry_host::config::HostFile = toml::from_str(&config_text).unwrap();
    let agent = c.sentry_config(&dir.path().join("s"), Some(c.enrollment_token(1).await));
    let mut host = HostConfig::new(agent);
    host.sources = hashfleet_sentry_host::config::HostSources {
        gpu: hashfleet_sentry_host::gpu::GpuConfig {
            nvidia_smi: file.nvidia_smi.clone(),
            dcgm_url: file.dcgm_url.clone(),
            ..Default::default()
        },
        miners: file.miner.clone(),
        runtimes: file.runtime.clone(),
    };
    let mut sentry = TestSentry::start_with(host);

    wait_until(WAIT, "GPUs, miners and the runtime stored", || async {
        let (_, body) = c
            .post("/api/v1/devices/query", json!({"query": {}, "limit": 100}))
            .await;
        body["total"].as_u64().unwrap_or(0) >= 7
    })
    .await;
    let gpu = device(&c, GPU0).await;
    assert_eq!(gpu["type"], "gpu");
    assert_eq!(gpu["make"], "NVIDIA");
    assert_eq!(gpu["temp_c"], 64.0);
    assert_eq!(gpu["power_w"], 310.5);
    assert_eq!(gpu["mem_used_bytes"], 9000.0 * 1024.0 * 1024.0);
    assert_eq!(gpu["xid_errors"], 0.0, "DCGM merged in: {gpu}");
    assert_eq!(device(&c, GPU1).await["util_pct"], 97.0);

    let (_, miners) = c
        .post(
            "/api/v1/devices/query",
            json!({"query": {"type": "miner"}, "sort": {"id": 1}}),
        )
        .await;
    let miners = miners["devices"].as_array().unwrap().clone();
    let by_make = |make: &str| {
        miners
            .iter()
            .find(|m| m["make"] == make)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let xmrig = by_make("XMRig");
    assert_eq!(xmrig["hashrate_hs"], 12000.5, "{xmrig}");
    assert_eq!(xmrig["shares_accepted"], 120.0);
    assert_eq!(by_make("T-Rex")["hashrate_hs"], 120_000_000.0);
    assert_eq!(by_make("T-Rex")["gpu_1_temp_c"], 61.0);
    assert_eq!(by_make("GMiner")["gpu_0_hashrate_hs"], 60_000_000.0);
    // The dead one is there, offline, and did not hold the others back.
    let dead = device(&c, "miner-dead").await;
    assert_eq!(dead["status"], "offline", "{dead}");

    let (_, runtimes) = c
        .post(
            "/api/v1/devices/query",
            json!({"query": {"type": "runtime"}}),
        )
        .await;
    let runtime = &runtimes["devices"][0];
    assert_eq!(runtime["healthy"], 1.0, "{runtime}");
    assert_eq!(runtime["requests_running"], 3.0);
    assert!(runtime["labels"]["models"]
        .as_str()
        .unwrap()
        .contains("Llama-3.1-8B"));
    assert_eq!(
        c.post("/api/v1/devices/query", json!({"query": {"type": "host"}}))
            .await
            .1["total"],
        1
    );

    // pauseMiner through the approval system reaches xmrig with its token.
    let xmrig_id = xmrig["id"].as_str().unwrap().to_string();
    let (status, action) = c
        .post(
            "/api/v1/actions",
            json!({"query": {"id": xmrig_id}, "action": "pauseMiner", "params": []}),
        )
        .await;
    assert_eq!(status, 201, "{action}");
    let id = action["id"].as_str().unwrap().to_string();
    wait_until(WAIT, "pauseMiner done", || async {
        c.get(&format!("/api/v1/actions/{id}")).await["state"] == "done"
    })
    .await;
    let done = c.get(&format!("/api/v1/actions/{id}")).await;
    assert!(
        done["results"]
            .as_object()
            .unwrap()
            .values()
            .all(|r| r["ok"] == true),
        "{done}"
    );
    assert_eq!(*fakes.xmrig_rpc.lock().unwrap(), ["pause"]);
    // T-Rex cannot be paused here: a clear per-target failure.
    let trex_id = by_make("T-Rex")["id"].as_str().unwrap().to_string();
    let (_, action) = c
        .post(
            "/api/v1/actions",
            json!({"query": {"id": trex_id}, "action": "pauseMiner", "params": []}),
        )
        .await;
    let id = action["id"].as_str().unwrap().to_string();
    wait_until(WAIT, "T-Rex pause answered", || async {
        c.get(&format!("/api/v1/actions/{id}")).await["state"] == "done"
    })
    .await;
    let done = c.get(&format!("/api/v1/actions/{id}")).await;
    let result = done["results"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(result["ok"], false, "{done}");
    assert!(
        result["detail"]
            .as_str()
            .unwrap()
            .contains("not supported by trex"),
        "{done}"
    );

    // The sentry's own view of its collectors.
    let states = sentry.status.get();
    assert!(states.connected);
    sentry.stop().await;
}
