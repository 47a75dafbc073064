//! The QUIC endpoint: raw-public-key TLS, a stateless-reset key and a
//! connection-ID key both derived from the commander identity, and the
//! accept loop.
//!
//! Both keys matter for a restart: quinn drops packets whose connection ID
//! its generator does not recognise *before* it would answer them with a
//! stateless reset. With both derived from the identity, a restarted
//! commander recognises its predecessor's connection IDs and resets those
//! connections at once, so sentries reconnect within milliseconds instead
//! of waiting for a timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use hashfleet_shared::liveness::IDLE_TIMEOUT;
use hashfleet_shared::{tls, NodeKey};
use quinn::crypto::rustls::QuicServerConfig;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::debug;

use crate::app::App;
use crate::sessions::RevokedKeys;

/// A secret derived from the commander's seed for one purpose. Same
/// identity, same value, across restarts.
fn derive(key: &NodeKey, purpose: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(purpose);
    h.update(key.seed().as_ref());
    h.finalize().into()
}

/// The stateless-reset HMAC key.
fn reset_key(key: &NodeKey) -> ring::hmac::Key {
    ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &derive(key, b"hashfleet/v1/stateless-reset"),
    )
}

/// The key of quinn's hashed connection-ID generator.
fn cid_key(key: &NodeKey) -> u64 {
    let d = derive(key, b"hashfleet/v1/connection-id");
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // No keep-alives from this end: every sentry sends one each
    // KEEP_ALIVE, which keeps both ends' idle timers fed; a silent sentry
    // is dropped after IDLE_TIMEOUT all the same. Pinging back would double
    // the packets a big fleet costs while idle.
    t.keep_alive_interval(None);
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("fits a QUIC varint")));
    // One bidirectional stream per session; nothing else.
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(0u8.into());
    t
}

/// The server side of QUIC for the commander key `key` (also used to
/// switch a running endpoint to a rotated key).
pub fn server_config(key: &NodeKey, revoked: RevokedKeys) -> anyhow::Result<quinn::ServerConfig> {
    let tls = tls::server_config(key, Arc::new(revoked))?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow::anyhow!("QUIC TLS configuration: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport_config()));
    Ok(server)
}

/// Receive and send buffer asked for the QUIC socket.
const SOCKET_BUFFER: usize = 8 << 20;

/// Binds the QUIC endpoint.
pub fn bind(
    key: &NodeKey,
    revoked: RevokedKeys,
    addr: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    let server = server_config(key, revoked)?;
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key(key)));
    let cid_key = cid_key(key);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // One socket carries every sentry: a burst from thousands of them must
    // not overflow the kernel's default receive buffer (about 200 KiB).
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket
        .bind(&addr.into())
        .map_err(|e| anyhow::anyhow!("cannot bind QUIC on {addr}: {e}"))?;
    let socket: std::net::UdpSocket = socket.into();
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for QUIC"))?,
    )?;
    Ok(endpoint)
}

/// Accepts connections until `stop` turns true.
pub async fn accept_loop(
    app: Arc<App>,
    endpoint: quinn::Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => break,
        };
        let remote = incoming.remote_address();
        let ticket = match app.admission.admit(remote.ip()) {
            Ok(t) => t,
            Err(refusal) => {
                app.metrics.handshake(refusal.metric());
                debug!(%remote, reason = refusal.metric(), "connection refused");
                incoming.refuse();
                continue;
            }
        };
        debug!(%remote, "incoming connection");
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(super::session::serve(app, incoming, ticket, stop));
    }
}
