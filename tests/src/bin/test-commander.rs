//! A commander for the crash tests: `start` on the given addresses, one
//! JSON line on stdout with where it listens, then serve until SIGTERM or
//! SIGINT (or until SIGKILLed, which is the point).
//!
//! `test-commander DATA_DIR QUIC_LISTEN` (HTTP on 127.0.0.1, port 0)

use std::io::Write;
use std::process::ExitCode;

use hashfleet_commander::{shutdown_signal, CommanderConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, quic] = args.as_slice() else {
        eprintln!("usage: test-commander DATA_DIR QUIC_LISTEN");
        return ExitCode::from(64);
    };
    let mut config = CommanderConfig::new(data_dir.into());
    config.http_listen = ([127, 0, 0, 1], 0).into();
    match quic.parse() {
        Ok(addr) => config.quic_listen = addr,
        Err(e) => {
            eprintln!("QUIC_LISTEN {quic}: {e}");
            return ExitCode::from(64);
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        let running = hashfleet_commander::start(config).await?;
        let line = serde_json::json!({
            "quic": running.quic_addr.to_string(),
            "http": running.http_addr.to_string(),
            "public_key": running.node_id.public_key_hex(),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        drop(out);
        shutdown_signal().await;
        running.shutdown().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-commander: {e:#}");
            ExitCode::FAILURE
        }
    }
}
