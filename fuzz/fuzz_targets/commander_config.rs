//! A commander config file: TOML into `FileConfig`, merged onto the
//! defaults (`into_config`, with and without a `--data-dir`), then
//! `CommanderConfig::validate`, the checks `serve` and `validate` run
//! before any port is bound. Bad input is an error, never a panic, and a
//! config that passes can be served: the periods `serve` arms as tokio
//! intervals (re-challenge, checkpoint, pruning) can be added to now
//! (tokio panics when they cannot).
#![no_main]

use std::time::Instant;

use hashfleet_commander::config::FileConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if FileConfig::parse(text).is_err() {
        return;
    }
    for data_dir in [None, Some("/var/lib/hashfleet".into())] {
        let file = FileConfig::parse(text).expect("parsed above");
        let Ok(config) = file.into_config(data_dir) else {
            continue;
        };
        if config.validate().is_err() {
            continue;
        }
        let now = Instant::now();
        for (name, period) in [
            ("rechallenge", config.rechallenge),
            ("checkpoint", config.checkpoint),
            ("retention.interval", config.retention.interval),
        ] {
            assert!(
                now.checked_add(period).is_some(),
                "a valid config's {name} period {period:?} cannot be armed"
            );
        }
    }
});
