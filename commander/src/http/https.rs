//! HTTPS for the API: an optional second listener (`https_listen`) that
//! serves the same routes over TLS, for reaching the API from another
//! machine. The plain listener stays for 127.0.0.1 (and the CLI).
//!
//! The certificate is the configured one (`https_cert`, `https_key`, PEM),
//! or one generated once and kept in `DATA_DIR/https/` (key 0600): clients
//! then trust `DATA_DIR/https/cert.pem`. rustls with ring only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hashfleet_shared::secure_file;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info};

use crate::app::App;

/// A TLS handshake must finish within this.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Open connections get this long to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

pub fn generated_cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("https").join("cert.pem")
}

/// The certificate chain and key: configured, or generated once and kept.
pub fn load_or_create(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let dir = data_dir.join("https");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                secure_file::ensure_private_dir(&dir)?;
                let mut sans = vec![
                    "localhost".to_string(),
                    "127.0.0.1".to_string(),
                    "::1".to_string(),
                ];
                sans.extend(names.iter().cloned());
                let generated = rcgen::generate_simple_self_signed(sans)
                    .context("generating the HTTPS certificate")?;
                secure_file::write_atomic(
                    &k,
                    generated.signing_key.serialize_pem().as_bytes(),
                    0o600,
                )?;
                secure_file::write_atomic(&c, generated.cert.pem().as_bytes(), 0o644)?;
                info!(cert = %c.display(), "generated a self-signed HTTPS certificate; clients trust this file");
            }
            (c, k)
        }
        _ => anyhow::bail!(
            "set both https_cert and https_key, or neither (a certificate is then generated)"
        ),
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds no PEM certificate", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    }
    let key_bytes = secure_file::read_private(&key_path, 64 * 1024)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .with_context(|| format!("{} holds no PEM private key", key_path.display()))?;
    Ok((certs, key))
}

/// The rustls server config (ring, TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = hashfleet_shared::tls::provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the HTTPS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the API over TLS until `stop`.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = super::router(app);
    let mut connections = JoinSet::new();
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    error!("HTTPS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => break,
        };
        let acceptor = acceptor.clone();
        let service = router
            .clone()
            .layer(axum::Extension(ConnectInfo::<SocketAddr>(addr)));
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%addr, "HTTPS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(e) = served {
                debug!(%addr, "HTTPS connection ended: {e}");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}
