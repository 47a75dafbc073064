//! The API over HTTPS: a generated certificate, trusted by clients that pin
//! it, refused by clients that do not.

use std::sync::Arc;

use hashfleet_tests::{init_logs, TestCommander};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(hashfleet_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn get(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test]
async fn the_api_is_served_over_https_with_a_generated_certificate() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    let mut c = TestCommander::start_with(&data, None, |cfg| {
        cfg.https_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = c.running.as_ref().unwrap().https_addr.expect("HTTPS bound");
    let cert = CertificateDer::from_pem_file(data.join("https").join("cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let trusted = client(roots);

    let health = get(&trusted, addr, "/healthz", "").await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let sentries = get(&trusted, addr, "/api/v1/sentries", &c.token)
        .await
        .unwrap();
    assert!(sentries.starts_with("HTTP/1.1 200"), "{sentries}");
    let denied = get(&trusted, addr, "/api/v1/sentries", "hfa_wrong")
        .await
        .unwrap();
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");

    // A client that does not trust the certificate never gets an answer.
    let stranger = client(rustls::RootCertStore::empty());
    let err = get(&stranger, addr, "/healthz", "").await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // The key is private, and the certificate is kept across restarts.
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("https").join("key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let before = std::fs::read(data.join("https").join("cert.pem")).unwrap();
    c.stop().await;
    let mut c = TestCommander::start_with(&data, None, |cfg| {
        cfg.https_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    assert_eq!(
        std::fs::read(data.join("https").join("cert.pem")).unwrap(),
        before
    );
    let addr = c.running.as_ref().unwrap().https_addr.unwrap();
    assert!(get(&trusted, addr, "/healthz", "")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    c.stop().await;
}
