//! TLS 1.3 for QUIC with certificates bound to node identities.
//!
//! Each endpoint makes a fresh ECDSA P-256 key for TLS and a self-signed certificate for it.
//! The certificate carries one extra extension ([`BINDING_OID`]) holding the node's 33-byte
//! compressed secp256k1 public key and its signature over
//! `"kad-quic-tls/1" || SubjectPublicKeyInfo of the TLS key`. A peer checks that signature, so
//! the TLS handshake (which proves possession of the TLS key) also proves the node key, and the
//! node id is RIPEMD-160(SHA-256(node public key)), as in the native protocol. Both sides
//! present certificates (mutual TLS). No certificate authority is involved: trust is in the id.
//!
//! When the dialer knows which node it expects at an address, it puts that id (40 hex digits)
//! in the TLS server name; the handshake then fails unless the peer proves exactly that id.

use std::sync::Arc;

use kad_core::{NativeIdentity, NodeId, node_id_from_public_key, verify_signature};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN protocol id: the kad native protocol, version 1.
pub const ALPN: &[u8] = b"kad/1";

/// OID of the identity-binding certificate extension: 2.25.335655305914121863 (an arc under
/// the UUID root chosen for this protocol).
pub const BINDING_OID: &[u64] = &[2, 25, 335_655_305_914_121_863];

/// Domain-separation prefix of the signed binding.
const BINDING_PREFIX: &[u8] = b"kad-quic-tls/1";

/// Server name used when the dialer does not know the peer's id.
pub(crate) const ANY_PEER: &str = "kad";

/// Why a certificate does not prove a node identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// Not a parseable X.509 certificate.
    #[error("certificate does not parse")]
    Parse,
    /// The binding extension is missing or malformed.
    #[error("certificate has no valid node binding")]
    NoBinding,
    /// The node key's signature over the TLS key is wrong.
    #[error("node signature over the TLS key is invalid")]
    BadSignature,
}

/// A TLS key and certificate bound to a node identity.
pub(crate) struct Credentials {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
}

fn binding_message(spki: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(BINDING_PREFIX.len() + spki.len());
    m.extend_from_slice(BINDING_PREFIX);
    m.extend_from_slice(spki);
    m
}

/// Makes a fresh TLS key and a self-signed certificate bound to `identity`.
pub(crate) fn credentials(identity: &NativeIdentity) -> Result<Credentials, rcgen::Error> {
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let spki = key.subject_public_key_info();
    let sig = identity.sign_bytes(&binding_message(&spki));
    let mut content = Vec::with_capacity(97);
    content.extend_from_slice(&identity.public_key_bytes());
    content.extend_from_slice(&sig);
    let mut params = rcgen::CertificateParams::new(vec![ANY_PEER.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            BINDING_OID,
            content,
        ));
    let cert = params.self_signed(&key)?;
    Ok(Credentials {
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    })
}

/// The node id a certificate proves, after checking its binding signature.
pub fn peer_id(cert: &[u8]) -> Result<NodeId, BindingError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|_| BindingError::Parse)?;
    let oid = x509_parser::der_parser::oid::Oid::from(BINDING_OID)
        .map_err(|_| BindingError::NoBinding)?;
    let ext = x509
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or(BindingError::NoBinding)?;
    let v = ext.value;
    if v.len() != 33 + 64 {
        return Err(BindingError::NoBinding);
    }
    let (public, sig) = v.split_at(33);
    let spki = x509.tbs_certificate.subject_pki.raw;
    if !verify_signature(public, &binding_message(spki), sig) {
        return Err(BindingError::BadSignature);
    }
    Ok(node_id_from_public_key(public))
}

/// The TLS server name for a dial: the expected id in hex, or [`ANY_PEER`].
pub(crate) fn server_name_for(expected: Option<NodeId>) -> String {
    expected.map_or_else(|| ANY_PEER.to_owned(), |id| id.to_string())
}

fn expected_from(name: &ServerName<'_>) -> Option<NodeId> {
    match name {
        ServerName::DnsName(d) => d.as_ref().parse::<NodeId>().ok(),
        _ => None,
    }
}

fn general(e: BindingError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

/// Checks peers' certificates for both roles.
#[derive(Debug)]
pub(crate) struct Verifier {
    provider: Arc<CryptoProvider>,
}

/// QUIC runs TLS 1.3 only.
const TLS12_REFUSED: rustls::Error =
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic);

// The client and server verifier traits ask the same questions; both roles answer them here.
impl Verifier {
    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = peer_id(end_entity).map_err(general)?;
        if let Some(expected) = expected_from(server_name) {
            if expected != id {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_REFUSED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        peer_id(end_entity).map_err(general)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_REFUSED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// The rustls configurations of one endpoint.
pub(crate) fn configs(
    creds: &Credentials,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Verifier {
        provider: provider.clone(),
    });
    let key = || PrivateKeyDer::Pkcs8(creds.key.clone_key());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![creds.cert.clone()], key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: every connection proves both node keys afresh, and an endpoint
    // keeps no session state per peer (rustls would keep up to 256 sessions on each side, each
    // with the peer's certificate).
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![creds.cert.clone()], key())?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    Ok((server, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(b: u8) -> NativeIdentity {
        NativeIdentity::from_secret(&[b; 32]).unwrap()
    }

    #[test]
    fn a_certificate_proves_its_node_id() {
        let me = identity(1);
        let c = credentials(&me).unwrap();
        assert_eq!(peer_id(&c.cert).unwrap(), me.id());
    }

    #[test]
    fn a_binding_for_another_tls_key_is_refused() {
        // Graft node 1's binding (signed over TLS key A) onto a certificate for TLS key B.
        let me = identity(1);
        let a = credentials(&me).unwrap();
        let (_, xa) = x509_parser::parse_x509_certificate(&a.cert).unwrap();
        let oid = x509_parser::der_parser::oid::Oid::from(BINDING_OID).unwrap();
        let binding = xa
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .unwrap()
            .value
            .to_vec();
        let key_b = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![ANY_PEER.to_owned()]).unwrap();
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                BINDING_OID,
                binding,
            ));
        let forged = params.self_signed(&key_b).unwrap();
        assert_eq!(peer_id(forged.der()), Err(BindingError::BadSignature));
    }

    #[test]
    fn certificates_without_a_binding_or_garbage_are_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let plain = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(peer_id(plain.der()), Err(BindingError::NoBinding));
        assert_eq!(peer_id(b"\x30\x03junk"), Err(BindingError::Parse));
        assert_eq!(peer_id(&[]), Err(BindingError::Parse));
    }

    #[test]
    fn the_server_name_carries_the_expected_id() {
        let id = identity(2).id();
        let name = server_name_for(Some(id));
        let sn = ServerName::try_from(name.as_str()).unwrap();
        assert_eq!(expected_from(&sn), Some(id));
        let any = ServerName::try_from(server_name_for(None)).unwrap();
        assert_eq!(expected_from(&any), None);
    }
}
