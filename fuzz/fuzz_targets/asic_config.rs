//! A sentry-asic config file: TOML into `AsicFile`, then every check the
//! sentry runs on it before it starts (`load_config`: the device entries,
//! scan ranges and allow-list, the limits, the shared agent settings) and
//! what start-up builds from it without I/O (meter and relay clients, the
//! scan list). Bad input is an error, never a panic; a config that passes
//! allows every device it names.
#![no_main]

use std::net::IpAddr;

use hashfleet_agent::cli::{agent_config, RunArgs};
use hashfleet_sentry_asic::allow::{self, MAX_SCAN_HOSTS};
use hashfleet_sentry_asic::config::AsicFile;
use hashfleet_sentry_asic::container::parse_address;
use hashfleet_sentry_asic::modbus::{MeterClient, RelayClient};
use hashfleet_sentry_asic::DEFAULT_HOME;
use hashfleet_shared::wire::SentryKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<AsicFile>(text) else {
        return;
    };
    // The order of `load_config`.
    if let Ok(asic) = file.asic_config() {
        // What `devices()` checks before the sentry runs: every device
        // address is in the allow-list.
        let mut addrs = Vec::new();
        for c in &asic.containers {
            c.validate().expect("validated by asic_config");
            addrs.push(parse_address(&c.address, 80).expect("validated").ip());
        }
        for m in &asic.meters {
            addrs.push(MeterClient::new(m.clone()).expect("validated").addr().ip());
        }
        for r in &asic.relays {
            let relay = RelayClient::new(r.clone()).expect("validated");
            assert!(relay.outlets().keys().all(|c| *c < r.channels));
            addrs.push(relay.addr().ip());
        }
        for addr in addrs {
            assert!(matches!(addr, IpAddr::V4(_)));
            allow::check(&asic.allow, addr).expect("a configured device is allowed");
        }
        let total: usize = asic.allow.scan.iter().map(|r| r.len()).sum();
        assert!(total <= MAX_SCAN_HOSTS);
        assert!(asic.allow.scan_hosts().len() <= total);
        let _ = asic.allow.describe();
        assert!((1..=4096).contains(&asic.concurrency));
    }
    let _ = agent_config(
        file.common(),
        &RunArgs::default(),
        SentryKind::Asic,
        DEFAULT_HOME,
    );
});
