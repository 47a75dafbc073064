//! QUIC admission before authentication: handshakes in progress from one
//! source address are capped, and so are connections in all; a refused
//! client is told at once, and slots free up when handshakes end.

use std::time::Duration;

use hashfleet_agent::endpoint::{client_config, client_endpoint};
use hashfleet_shared::tls::{PinReport, SERVER_NAME};
use hashfleet_shared::NodeKey;
use hashfleet_tests::{init_logs, TestCommander};

/// A connection that completes TLS (any client key passes TLS; the
/// application handshake comes after) and then says nothing, holding a
/// handshake slot until it is closed or times out.
async fn silent(
    c: &TestCommander,
    endpoint: &quinn::Endpoint,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let config =
        client_config(&NodeKey::generate(), vec![c.node_id], PinReport::default()).unwrap();
    endpoint
        .connect_with(config, c.quic, SERVER_NAME)
        .unwrap()
        .await
}

fn refused(r: &Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    matches!(r, Err(quinn::ConnectionError::ConnectionClosed(close)) if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_per_source_and_connections_are_capped() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_with(&dir.path().join("c"), None, |cfg| {
        cfg.quic.max_handshakes_per_source = 2;
        cfg.quic.max_connections = 3;
    })
    .await;
    let ep = client_endpoint(c.quic).unwrap();

    let a = silent(&c, &ep).await.expect("first handshake admitted");
    let b = silent(&c, &ep).await.expect("second handshake admitted");
    let third = silent(&c, &ep).await;
    assert!(
        refused(&third),
        "a third handshake from one source is refused: {third:?}"
    );
    assert_eq!(
        c.metric("hashfleet_handshakes_total{result=\"refused_source\"}")
            .await,
        1.0
    );

    // One handshake ends (the client gives up): the source may try again.
    a.close(0u32.into(), b"bye");
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(conn) = silent(&c, &ep).await {
            again = Some(conn);
            break;
        }
    }
    let again = again.expect("a slot freed when the handshake ended");

    // Now b and again hold two of three connections; from a second source
    // address, one more is admitted and the next is over capacity.
    let other = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let d = silent(&c, &other).await.expect("third connection admitted");
    let e = silent(&c, &other).await;
    assert!(refused(&e), "over max_connections: {e:?}");
    assert!(
        c.metric("hashfleet_handshakes_total{result=\"refused_capacity\"}")
            .await
            >= 1.0
    );
    drop((b, again, d));
}
