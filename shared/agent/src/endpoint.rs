//! The sentry's QUIC client endpoint and per-commander client configs.

use std::net::SocketAddr;
use std::sync::Arc;

use hashfleet_shared::liveness::{IDLE_TIMEOUT, KEEP_ALIVE};
use hashfleet_shared::tls::{self, PinReport};
use hashfleet_shared::{NodeId, NodeKey};
use quinn::crypto::rustls::QuicClientConfig;

use crate::session::SessionError;

/// Transport settings of a sentry connection.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("idle timeout fits a QUIC varint"),
    ));
    // In v1 the sentry opens the session's one stream; the commander opens none.
    t.max_concurrent_uni_streams(0u8.into());
    t.max_concurrent_bidi_streams(0u8.into());
    t
}

/// A client config presenting `key` and pinning `pins`.
pub fn client_config(
    key: &NodeKey,
    pins: Vec<NodeId>,
    report: PinReport,
) -> Result<quinn::ClientConfig, SessionError> {
    let tls =
        tls::client_config(key, pins, report).map_err(|e| SessionError::Config(e.to_string()))?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| SessionError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(for_addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if for_addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind)
}
