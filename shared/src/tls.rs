//! rustls configurations that authenticate both ends by RFC 7250 raw public
//! keys: the sentry presents its node key, the commander its own, and each
//! checks the other's. ring is the only crypto provider (configs are built
//! with `builder_with_provider`), TLS 1.3 only, ALPN `hashfleet/1`, no
//! 0-RTT and no session resumption (a resumed session would skip the
//! client's key check).
//!
//! Building a config is not network I/O; the QUIC endpoints that use these
//! configs live in the commander and the agent.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{AlwaysResolvesClientRawPublicKeys, Resumption};
use rustls::crypto::{
    verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{AlwaysResolvesServerRawPublicKeys, NoServerSessionStorage};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use crate::node_id::NodeId;
use crate::node_key::NodeKey;
use crate::wire::ALPN;

/// The server name a sentry passes to QUIC; the pinned-key check ignores it.
pub const SERVER_NAME: &str = "hashfleet-commander";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring provider, the only one Hashfleet uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(key: &NodeKey, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der().to_vec()));
    let signer = provider.key_provider.load_private_key(der)?;
    let spki = CertificateDer::from(key.node_id().to_spki_der().to_vec());
    Ok(Arc::new(CertifiedKey::new(vec![spki], signer)))
}

/// Decides which sentry keys may complete a TLS handshake with the
/// commander (revoked keys are refused here, before any message).
pub trait ClientKeyPolicy: Send + Sync + fmt::Debug {
    fn allow(&self, node: &NodeId) -> bool;
}

/// A sentry key was refused at TLS.
#[derive(Debug, thiserror::Error)]
#[error("node key {0} is revoked on this commander")]
pub struct KeyRevoked(pub NodeId);

/// The commander presented a key that is not pinned.
#[derive(Debug, thiserror::Error)]
#[error("commander presented key {presented} (public key {hex}), which is not among the pinned commander keys [{pins}]: check --commander-key", hex = presented.public_key_hex())]
pub struct NotPinned {
    pub presented: NodeId,
    pub pins: String,
}

fn node_from_cert(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    NodeId::from_spki_der(cert.as_ref()).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::BadEncoding,
    ))
}

fn verify_raw(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        algs,
    )
}

#[derive(Debug)]
struct ClientKeyVerifier {
    policy: Arc<dyn ClientKeyPolicy>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let node = node_from_cert(end_entity)?;
        if !self.policy.allow(&node) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(KeyRevoked(node))),
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_raw(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Shared between a sentry's TLS verifier and its session code: the last
/// commander key refused, so the error can name it plainly.
#[derive(Debug, Default, Clone)]
pub struct PinReport(Arc<Mutex<Option<NodeId>>>);

impl PinReport {
    pub fn take(&self) -> Option<NodeId> {
        self.0.lock().map(|mut g| g.take()).unwrap_or(None)
    }
}

#[derive(Debug)]
struct PinnedServerVerifier {
    pins: Vec<NodeId>,
    algs: WebPkiSupportedAlgorithms,
    report: PinReport,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let node = node_from_cert(end_entity)?;
        if self.pins.contains(&node) {
            return Ok(ServerCertVerified::assertion());
        }
        if let Ok(mut slot) = self.report.0.lock() {
            *slot = Some(node);
        }
        let pins = self
            .pins
            .iter()
            .map(|p| p.public_key_hex())
            .collect::<Vec<_>>()
            .join(", ");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(NotPinned {
                presented: node,
                pins,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_raw(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The commander's TLS config: presents `key`, requires a sentry key that
/// `policy` allows.
pub fn server_config(
    key: &NodeKey,
    policy: Arc<dyn ClientKeyPolicy>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ClientKeyVerifier {
        policy,
        algs: provider.signature_verification_algorithms,
    });
    let resolver = AlwaysResolvesServerRawPublicKeys::new(certified_key(key, &provider)?);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(config)
}

/// A sentry's TLS config: presents `key`, accepts only commander keys in
/// `pins`. Refusals are noted in `report`.
pub fn client_config(
    key: &NodeKey,
    pins: Vec<NodeId>,
    report: PinReport,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier {
        pins,
        algs: provider.signature_verification_algorithms,
        report,
    });
    let resolver = AlwaysResolvesClientRawPublicKeys::new(certified_key(key, &provider)?);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = Resumption::disabled();
    Ok(config)
}
