//! Mutual TLS 1.3 with pinned device ids: no CA, no names. Each side presents its
//! self-signed certificate; the verifiers accept a certificate only if BLAKE3 of its
//! SubjectPublicKeyInfo is a trusted device id (the server side) or exactly the device the
//! client meant to dial. Signatures are still checked, so holding a certificate without its
//! key gets nobody in.
//!
//! An untrusted device is refused during the handshake and logged by id, so a user can
//! `tandem peer add` it if it was expected.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use tandem_proto::model::DeviceId;
use tandem_proto::wire::ALPN;

/// The devices allowed to connect; shared with the config so a running daemon can change it.
#[derive(Clone, Debug, Default)]
pub struct TrustedPeers(Arc<RwLock<BTreeSet<DeviceId>>>);

impl TrustedPeers {
    /// A list holding `ids`.
    pub fn new(ids: impl IntoIterator<Item = DeviceId>) -> Self {
        Self(Arc::new(RwLock::new(ids.into_iter().collect())))
    }

    /// Replaces the list.
    pub fn replace(&self, ids: impl IntoIterator<Item = DeviceId>) {
        if let Ok(mut set) = self.0.write() {
            *set = ids.into_iter().collect();
        }
    }

    /// True when `id` may connect.
    pub fn contains(&self, id: &DeviceId) -> bool {
        self.0.read().map(|set| set.contains(id)).unwrap_or(false)
    }
}

/// Why TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] TlsError),
    /// quinn refused the rustls configuration.
    #[error("quic crypto configuration: {0}")]
    Quic(String),
}

/// The device id a certificate belongs to.
pub fn device_of(cert: &CertificateDer<'_>) -> Result<DeviceId, TlsError> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    Ok(DeviceId::from_public_key_info(parsed.subject_public_key_info().as_ref()))
}

/// ring's provider with AES-128-GCM preferred over rustls's first choice, AES-256-GCM: 10
/// AES rounds per block instead of 14, and QUIC spends a large share of a transfer's CPU in
/// packet encryption. The other TLS 1.3 suites stay acceptable.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// The QUIC server configuration: our certificate, and a client verifier that admits
/// trusted devices only.
pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    trusted: TrustedPeers,
) -> Result<quinn::ServerConfig, TlsSetupError> {
    let provider = provider();
    let verifier =
        Arc::new(PinnedClients { trusted, algorithms: provider.signature_verification_algorithms });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The QUIC client configuration for dialing `expected`, presenting our certificate.
pub fn client_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    expected: DeviceId,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    let provider = provider();
    let verifier =
        Arc::new(PinnedServer { expected, algorithms: provider.signature_verification_algorithms });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Server side: admit a client whose device id is trusted.
#[derive(Debug)]
struct PinnedClients {
    trusted: TrustedPeers,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let id = device_of(end_entity)?;
        if self.trusted.contains(&id) {
            return Ok(ClientCertVerified::assertion());
        }
        tracing::warn!(
            device = %id,
            "refused a connection from untrusted device {id}; if you expected it: tandem peer add {id} --addr HOST:PORT"
        );
        Err(TlsError::General(format!("device {id} is not trusted")))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client side: accept only the device we dialed.
#[derive(Debug)]
struct PinnedServer {
    expected: DeviceId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let id = device_of(end_entity)?;
        if id == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        tracing::warn!("expected device {} but the peer is {id}; refusing", self.expected);
        Err(TlsError::General(format!("peer is {id}, not the expected {}", self.expected)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PublicKeyData};

    use super::*;

    #[test]
    fn the_device_id_read_from_a_certificate_is_the_key_s_id() {
        let key = KeyPair::generate().unwrap();
        let cert =
            CertificateParams::new(vec!["tandem".into()]).unwrap().self_signed(&key).unwrap();
        let from_key = DeviceId::from_public_key_info(&key.subject_public_key_info());
        assert_eq!(device_of(cert.der()).unwrap(), from_key);
    }

    #[test]
    fn trusted_peers_can_change_while_shared() {
        let a = DeviceId::from_public_key_info(b"a");
        let b = DeviceId::from_public_key_info(b"b");
        let trusted = TrustedPeers::new([a]);
        let shared = trusted.clone();
        assert!(shared.contains(&a) && !shared.contains(&b));
        trusted.replace([b]);
        assert!(!shared.contains(&a) && shared.contains(&b));
    }
}
