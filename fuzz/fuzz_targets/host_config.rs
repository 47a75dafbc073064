//! A sentry-host config file: TOML into `HostFile`, then every check the
//! sentry runs on it (hooks, GPU, miner and runtime entries). Bad input is
//! an error, never a panic.
#![no_main]

use hashfleet_sentry_host::config::HostFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<HostFile>(text) else {
        return;
    };
    for m in &file.miner {
        let _ = m.validate();
    }
    for r in &file.runtime {
        let _ = r.validate();
    }
    let (_, actions) = file.split();
    let _ = actions.validate();
});
