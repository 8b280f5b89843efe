//! The client's side of the attestation-bound TLS connection (feature `rustls`): the one
//! certificate verifier of the workspace, and the one computation of the key hash that a
//! quote's report data binds (docs/protocol.md, section 2).
//!
//! A Cloister box may serve a self-signed certificate: trust comes from its quote, not from a
//! CA. So [`AttestedKeyVerifier`] accepts whatever certificate the server presents, but it
//! still checks the handshake's signature with that certificate's key, so the server must
//! hold the key it shows. The caller then reads the certificate's [`spki_sha256`] and hands
//! it to the attestation check, which fails unless the quote binds that very key. Skipping
//! the signature check would let a relay show the box's certificate without its key: it must
//! never be skipped.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use sha2_011::{Digest, Sha256};

/// Why a certificate's key hash could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The bytes are not a DER X.509 certificate.
    #[error("the TLS certificate is not readable X.509")]
    NotX509(#[source] x509_parser::error::X509Error),
    /// The server presented no certificate at all.
    #[error("the server presented no TLS certificate")]
    Missing,
}

/// SHA-256 of the DER SubjectPublicKeyInfo of a DER certificate: what a quote's report data
/// binds as the TLS key, on the server's side and on every client's.
pub fn spki_sha256(certificate_der: &[u8]) -> Result<[u8; 32], CertificateError> {
    let (_, certificate) =
        x509_parser::parse_x509_certificate(certificate_der).map_err(|e| match e {
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => {
                CertificateError::NotX509(e)
            }
            x509_parser::nom::Err::Incomplete(_) => {
                CertificateError::NotX509(x509_parser::error::X509Error::InvalidCertificate)
            }
        })?;
    Ok(Sha256::digest(certificate.public_key().raw).into())
}

/// The key hash of the leaf certificate a TLS connection's server presented.
pub fn peer_spki_sha256(connection: &rustls::CommonState) -> Result<[u8; 32], CertificateError> {
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(CertificateError::Missing)?;
    spki_sha256(leaf)
}

/// Accepts any server certificate (the quote is the trust anchor) but checks the handshake
/// signature with it, so that the server must hold the key of the certificate it presents.
#[derive(Debug)]
pub struct AttestedKeyVerifier {
    provider: Arc<CryptoProvider>,
}

impl AttestedKeyVerifier {
    /// A verifier checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ServerCertVerifier for AttestedKeyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Any certificate: the caller binds its key to the attestation (module docs).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration (ring, TLS 1.2 and 1.3) that verifies with
/// [`AttestedKeyVerifier`] and offers the ALPN protocols `alpn`.
pub fn client_config(alpn: &[&[u8]]) -> Result<ClientConfig, rustls::Error> {
    client_config_with_versions(alpn, rustls::DEFAULT_VERSIONS)
}

/// Like [`client_config`], limited to the protocol `versions` (tests of version limits).
pub fn client_config_with_versions(
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedKeyVerifier::new(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;

    use super::*;

    /// A server identity: a self-signed certificate for `key`, signing with `signer`.
    #[derive(Debug)]
    struct Identity(Arc<CertifiedKey>);

    impl ResolvesServerCert for Identity {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    fn key_pair() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// A server presenting a certificate for `shown` and signing the handshake with `held`.
    fn server(shown: &rcgen::KeyPair, held: &rcgen::KeyPair) -> (rustls::ServerConfig, Vec<u8>) {
        let certificate = rcgen::CertificateParams::new(vec!["box.test".to_owned()])
            .unwrap()
            .self_signed(shown)
            .unwrap();
        let der = certificate.der().to_vec();
        let signer = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(held.serialize_der()),
        ))
        .unwrap();
        let key = CertifiedKey::new(vec![CertificateDer::from(der.clone())], signer);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Identity(Arc::new(key))));
        (config, der)
    }

    /// Runs a handshake in memory; returns the client once done, or the first error.
    fn handshake(
        client: ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<rustls::ClientConnection, rustls::Error> {
        let mut client =
            rustls::ClientConnection::new(Arc::new(client), "box.test".try_into().unwrap())?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..20 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(client);
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn any_certificate_is_accepted_and_its_key_hash_is_what_the_server_holds() {
        let key = key_pair();
        let (server, der) = server(&key, &key);
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let client = handshake(
                client_config_with_versions(&[], versions).unwrap(),
                server.clone(),
            )
            .unwrap();
            let expected: [u8; 32] =
                Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
            assert_eq!(peer_spki_sha256(&client).unwrap(), expected);
            assert_eq!(spki_sha256(&der).unwrap(), expected);
        }
    }

    #[test]
    fn a_server_without_the_certificate_s_key_fails_the_handshake() {
        // The box's certificate, shown by a relay that holds another key.
        let (shown, held) = (key_pair(), key_pair());
        let (server, _) = server(&shown, &held);
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let error = handshake(
                client_config_with_versions(&[], versions).unwrap(),
                server.clone(),
            )
            .map(|_| ())
            .unwrap_err();
            assert!(
                matches!(
                    error,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
                ),
                "{error:?}"
            );
        }
    }

    #[test]
    fn bytes_that_are_not_a_certificate_have_no_key_hash() {
        assert!(matches!(
            spki_sha256(b"not a certificate"),
            Err(CertificateError::NotX509(_))
        ));
        assert!(matches!(
            spki_sha256(&[]),
            Err(CertificateError::NotX509(_))
        ));
    }
}
