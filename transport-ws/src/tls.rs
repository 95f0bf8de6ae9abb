//! TLS configuration helpers for `wss://`, built on rustls with the *ring* provider.
//!
//! Every configuration made here names its crypto provider explicitly
//! (`rustls::crypto::ring::default_provider()`), so nothing depends on a process-wide default
//! provider being installed, and no other provider is ever pulled in.
//!
//! ```
//! use kad_transport_ws::tls;
//! // Trust the webpki roots only (what a dialing transport uses when given no client config).
//! let client = tls::client_config(&[]);
//! assert!(client.alpn_protocols.iter().any(|p| p == b"http/1.1"));
//! // A PEM file without certificates is refused.
//! assert!(tls::certs_from_pem(b"not a certificate").is_err());
//! ```

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::debug;

/// Why a TLS configuration could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM input could not be read (malformed, or no item of the expected kind).
    Pem(rustls_pki_types::pem::Error),
    /// The PEM input holds no certificate.
    NoCertificate,
    /// rustls refused the certificate chain or the key (e.g. they do not match).
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem(e) => write!(f, "invalid PEM input: {e}"),
            Self::NoCertificate => f.write_str("no certificate found in the PEM input"),
            Self::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Pem(e) => Some(e),
            Self::NoCertificate => None,
            Self::Rustls(e) => Some(e),
        }
    }
}

impl From<rustls_pki_types::pem::Error> for TlsError {
    fn from(e: rustls_pki_types::pem::Error) -> Self {
        Self::Pem(e)
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        Self::Rustls(e)
    }
}

/// The crypto provider of every configuration built by this crate: *ring*.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `pem` (`-----BEGIN CERTIFICATE-----` blocks), in order; other PEM items
/// are skipped. Fails if the input is malformed or holds no certificate.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// A server configuration for a `wss://` listener (set it as
/// [`WsConfig::tls_server`](crate::WsConfig::tls_server)): the certificate chain in `cert_pem`
/// (leaf first) and the private key in `key_pem` (PKCS#8, PKCS#1 or SEC1). No client
/// authentication; TLS 1.2 and 1.3.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certs_from_pem(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A client configuration for dialing `wss://` (set it as
/// [`WsConfig::tls_client`](crate::WsConfig::tls_client)): the webpki roots (Mozilla's root
/// program) plus `extra_roots`, e.g. a private CA or a peer's self-signed certificate.
/// Certificates in `extra_roots` that rustls cannot use as trust anchors are skipped (and
/// logged at debug level). Offers ALPN `http/1.1`, as reverse proxies expect of WebSocket.
pub fn client_config(extra_roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        if let Err(e) = roots.add(cert.clone()) {
            debug!(error = %e, "skipped an extra root certificate");
        }
    }
    // The ring provider supports both default protocol versions, so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
