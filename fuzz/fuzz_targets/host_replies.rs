//! Device replies as sentry-host reads them: nvidia-smi CSV, DCGM
//! Prometheus text, the miner software APIs (xmrig, T-Rex, lolMiner,
//! gminer as JSON; CGMiner-style sloppy JSON over TCP) and an AI runtime's
//! models and load. Every parser must return (a value or an error), never
//! panic, whatever the bytes.
#![no_main]

use hashfleet_sentry_host::{gpu, minersw, runtime_ai};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = gpu::parse_smi(&text);
    let _ = gpu::parse_dcgm(&text);
    let _ = minersw::parse_cgminer(data);
    let _ = minersw::parse_sloppy_json(data);
    let _ = minersw::rate_unit(&text);
    let _ = runtime_ai::parse_load(&text);
    let _ = runtime_ai::parse_prometheus_load(&text);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = minersw::parse_xmrig(&value);
        let _ = minersw::parse_trex(&value);
        let _ = minersw::parse_lolminer(&value);
        let _ = minersw::parse_gminer(&value);
        let _ = runtime_ai::parse_models(&value);
    }
});
