//! Fake data sources for sentry-host, built from the documented response
//! shapes: a fake `nvidia-smi`, a DCGM exporter, xmrig, T-Rex and gminer
//! APIs and an OpenAI-compatible runtime, all on 127.0.0.1 port 0.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;

/// The running fakes and their addresses.
pub struct Fakes {
    pub nvidia_smi: PathBuf,
    pub dcgm: String,
    pub xmrig: String,
    pub trex: String,
    pub gminer: String,
    pub runtime: String,
    /// `method`s posted to xmrig's `/json_rpc`.
    pub xmrig_rpc: Arc<Mutex<Vec<String>>>,
}

pub const XMRIG_TOKEN: &str = "fake-xmrig-token";
pub const GPU0: &str = "GPU-11111111-2222-3333-4444-555555555555";
pub const GPU1: &str = "GPU-66666666-7777-8888-9999-000000000000";

async fn serve(router: Router) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(format!("http://{addr}"))
}

fn json(
    body: &'static str,
) -> impl Fn() -> std::future::Ready<([(&'static str, &'static str); 1], &'static str)> + Clone {
    move || std::future::ready(([("content-type", "application/json")], body))
}

// The GPU0/GPU1 UUIDs are spelled out in the replies below.

/// Starts every fake; the nvidia-smi script goes into `dir`.
pub async fn start(dir: &Path) -> std::io::Result<Fakes> {
    let smi = dir.join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\necho '0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA GeForce RTX 4090, 00000000:01:00.0, 550.54, P2, 64, 55, 310.50, 450.00, 2520, 10501, 98, 40, 24564, 9000'\necho '1, GPU-66666666-7777-8888-9999-000000000000, NVIDIA GeForce RTX 4090, 00000000:02:00.0, 550.54, P2, 61, 50, 300.10, 450.00, 2505, 10501, 97, 38, 24564, 8800'\n",
    )?;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755))?;
    let dcgm = serve(Router::new().route(
        "/metrics",
        get(|| async {
            "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n# TYPE DCGM_FI_DEV_GPU_TEMP gauge\nDCGM_FI_DEV_GPU_TEMP{gpu=\"0\",UUID=\"GPU-11111111-2222-3333-4444-555555555555\",device=\"nvidia0\",modelName=\"NVIDIA GeForce RTX 4090\",Hostname=\"rig\"} 64\n# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.\n# TYPE DCGM_FI_DEV_XID_ERRORS gauge\nDCGM_FI_DEV_XID_ERRORS{gpu=\"0\",UUID=\"GPU-11111111-2222-3333-4444-555555555555\",device=\"nvidia0\",modelName=\"NVIDIA GeForce RTX 4090\",Hostname=\"rig\"} 0\n"
        }),
    ))
    .await?;
    let xmrig_rpc = Arc::new(Mutex::new(Vec::new()));
    let calls = xmrig_rpc.clone();
    let xmrig = serve(Router::new().route(
        "/2/summary",
        get(json(r#"{"id":"x","worker_id":"rig","uptime":3600,"paused":false,"version":"6.21.0","algo":"rx/0","cpu":{"brand":"AMD EPYC"},"hashrate":{"total":[12000.5,11990.1,11950.0],"highest":12100.0},"results":{"shares_good":120,"shares_total":121},"connection":{"pool":"pool.example:3333","uptime":3500,"accepted":120,"rejected":1}}"#)),
    ).route(
        "/json_rpc",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let calls = calls.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                if auth != format!("Bearer {XMRIG_TOKEN}") {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                }
                let method = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["method"].as_str().map(str::to_string))
                    .unwrap_or_default();
                calls.lock().unwrap().push(method);
                (axum::http::StatusCode::OK, r#"{"id":1,"jsonrpc":"2.0","result":{"status":"OK"}}"#.to_string())
            }
        }),
    ))
    .await?;
    let trex = serve(Router::new().route(
        "/summary",
        get(json(r#"{"hashrate":120000000,"accepted_count":300,"rejected_count":2,"uptime":7200,"version":"0.26.8","algorithm":"kawpow","gpus":[{"hashrate":60000000,"temperature":60,"fan_speed":55,"power":200},{"hashrate":60000000,"temperature":61,"fan_speed":56,"power":201}]}"#)),
    ))
    .await?;
    let gminer = serve(Router::new().route(
        "/stat",
        get(json(r#"{"uptime":5000,"miner":"GMiner","algorithm":"Ethash","devices":[{"gpu_id":0,"bus_id":"0000:01:00.0","speed":60000000,"temperature":60,"power_usage":200,"accepted_shares":100,"rejected_shares":1}]}"#)),
    ))
    .await?;
    let runtime = serve(
        Router::new()
            .route("/health", get(|| async { "" }))
            .route(
                "/v1/models",
                get(json(r#"{"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model"}]}"#)),
            )
            .route(
                "/metrics",
                get(|| async { "vllm:num_requests_running{model_name=\"m\"} 3\nvllm:num_requests_waiting{model_name=\"m\"} 1\n" }),
            ),
    )
    .await?;
    Ok(Fakes {
        nvidia_smi: smi,
        dcgm: format!("{dcgm}/metrics"),
        xmrig,
        trex,
        gminer,
        runtime,
        xmrig_rpc,
    })
}

impl Fakes {
    /// A sentry-host config (without commanders) using every fake.
    pub fn config_toml(&self) -> String {
        format!(
            "interval_secs = 10\nnvidia_smi = \"{}\"\ndcgm_url = \"{}\"\n\n[[miner]]\nkind = \"xmrig\"\nurl = \"{}\"\ntoken = \"{XMRIG_TOKEN}\"\n\n[[miner]]\nkind = \"trex\"\nurl = \"{}\"\n\n[[miner]]\nkind = \"gminer\"\nurl = \"{}\"\n\n[[runtime]]\nurl = \"{}\"\n",
            self.nvidia_smi.display(),
            self.dcgm,
            self.xmrig,
            self.trex,
            self.gminer,
            self.runtime
        )
    }
}
