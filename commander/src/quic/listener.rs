//! The QUIC endpoint: raw-public-key TLS, a stateless-reset key derived
//! from the commander identity (so a restarted commander resets the old
//! connections of its sentries at once instead of leaving them to time out),
//! and the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;

use hashfleet_shared::liveness::{IDLE_TIMEOUT, KEEP_ALIVE};
use hashfleet_shared::{tls, NodeKey};
use quinn::crypto::rustls::QuicServerConfig;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::debug;

use crate::app::App;
use crate::sessions::RevokedKeys;

/// The stateless-reset HMAC key: SHA-256 over a domain tag and the
/// commander's secret seed. Same identity, same key, across restarts.
fn reset_key(key: &NodeKey) -> ring::hmac::Key {
    let mut h = Sha256::new();
    h.update(b"hashfleet/v1/stateless-reset");
    h.update(key.seed().as_ref());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &h.finalize())
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("fits a QUIC varint")));
    // One bidirectional stream per session; nothing else.
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(0u8.into());
    t
}

/// Binds the QUIC endpoint.
pub fn bind(key: &NodeKey, revoked: RevokedKeys, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let tls = tls::server_config(key, Arc::new(revoked))?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow::anyhow!("QUIC TLS configuration: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport_config()));
    let endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key(key)));
    let socket = std::net::UdpSocket::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind QUIC on {addr}: {e}"))?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for QUIC"))?,
    )?;
    Ok(endpoint)
}

/// Accepts connections until `stop` turns true.
pub async fn accept_loop(app: Arc<App>, endpoint: quinn::Endpoint, mut stop: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => break,
        };
        debug!(remote = %incoming.remote_address(), "incoming connection");
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(super::session::serve(app, incoming, stop));
    }
}
