//! TLS: the rustls server configuration (ring provider, TLS 1.3 and TLS 1.2 with AEAD
//! suites only), the certificate being served, swapped in place on renewal, and the
//! TLS-ALPN-01 challenge certificates that an ACME validator asks for.
//!
//! Keys are made here with rcgen and never leave the process except into the state
//! database. This module must never log key material.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::store::StoredCertificate;

/// The ALPN protocol name of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// How long a self-signed certificate is valid.
pub const SELF_SIGNED_LIFETIME_S: i64 = 397 * 24 * 3600;

/// What can go wrong with certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not make a key, certificate or CSR.
    #[error("cannot make a key or certificate")]
    Generate(#[from] rcgen::Error),
    /// The stored PEM did not parse.
    #[error("the certificate or key is not valid PEM: {0}")]
    Pem(&'static str),
    /// rustls refused the key or configuration.
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
    /// The certificate's DER did not parse.
    #[error("the certificate does not parse")]
    X509,
}

/// The ring provider restricted to modern suites: TLS 1.3's three, and TLS 1.2's ECDHE
/// with AES-GCM or ChaCha20-Poly1305. No CBC, no RSA key exchange.
pub fn crypto_provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    provider
}

/// Facts about the certificate being served, for the console and the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The names it covers.
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_before_s: i64,
    /// Seconds since the Unix epoch.
    pub not_after_s: i64,
    /// SHA-256 of the leaf certificate's DER, colon-separated hex as browsers show it.
    pub fingerprint_sha256: String,
    /// Base64 SHA-256 of the leaf's SubjectPublicKeyInfo (what HPKP-style pins and Chromium's
    /// `--ignore-certificate-errors-spki-list` take).
    pub spki_sha256_base64: String,
    /// Whether it is our own self-signed certificate rather than one from a CA.
    pub self_signed: bool,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
}

/// A certificate chain and key ready for rustls, with its facts.
#[derive(Debug, Clone)]
pub struct ServedCertificate {
    /// What rustls serves.
    pub certified_key: Arc<CertifiedKey>,
    /// What the console shows.
    pub facts: CertificateFacts,
}

/// Parses a stored chain and key into something rustls can serve.
pub fn served_certificate(stored: &StoredCertificate) -> Result<ServedCertificate, TlsError> {
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut stored.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem("the chain"))?;
    let leaf = chain.first().ok_or(TlsError::Pem("the chain is empty"))?;
    let facts = certificate_facts(leaf.as_ref())?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut stored.key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("the key"))?
        .ok_or(TlsError::Pem("no key"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(ServedCertificate {
        certified_key: Arc::new(CertifiedKey::new(chain, signing_key)),
        facts,
    })
}

/// Reads names, validity and fingerprints from a DER certificate.
pub fn certificate_facts(der: &[u8]) -> Result<CertificateFacts, TlsError> {
    use x509_parser::prelude::*;
    let (_, certificate) = X509Certificate::from_der(der).map_err(|_| TlsError::X509)?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::IPAddress(ip) => names.push(format!("ip:{}", hex::encode(ip))),
                _ => {}
            }
        }
    }
    let fingerprint = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    // The key hash that report data binds, computed as every client computes it.
    let spki = cloister_protocol::tls::spki_sha256(der).map_err(|_| TlsError::X509)?;
    Ok(CertificateFacts {
        names,
        not_before_s: certificate.validity().not_before.timestamp(),
        not_after_s: certificate.validity().not_after.timestamp(),
        fingerprint_sha256: fingerprint,
        spki_sha256_base64: base64_standard(&spki),
        self_signed: certificate.issuer() == certificate.subject(),
        issuer: certificate.issuer().to_string(),
    })
}

/// Makes a self-signed certificate for the names, valid from a day ago for
/// [`SELF_SIGNED_LIFETIME_S`].
pub fn self_signed_certificate(
    names: &[String],
    now_s: i64,
) -> Result<StoredCertificate, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "Cloister box (self-signed)");
    params.distinguished_name = subject;
    params.not_before = unix_to_offset(now_s - 24 * 3600);
    params.not_after = unix_to_offset(now_s + SELF_SIGNED_LIFETIME_S);
    let certificate = params.self_signed(&key)?;
    Ok(StoredCertificate {
        domain: String::new(),
        chain_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
        not_before_s: now_s - 24 * 3600,
        not_after_s: now_s + SELF_SIGNED_LIFETIME_S,
        issued_at_s: now_s,
    })
}

/// The TLS-ALPN-01 certificate for `domain` (RFC 8737 section 3): self-signed, the domain as
/// its only SAN, and the critical acmeIdentifier extension holding SHA-256 of the key
/// authorisation.
pub fn alpn_challenge_certificate(
    domain: &str,
    key_authorization_digest: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(
        key_authorization_digest,
    )];
    let certificate = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|_| TlsError::Pem("key"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![certificate.der().clone()],
        signing_key,
    )))
}

fn unix_to_offset(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Standard base64 with padding (for SPKI pins).
pub fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Picks what certificate each handshake gets: the TLS-ALPN-01 challenge certificate when
/// an ACME validator asks for `acme-tls/1`, the current certificate otherwise.
#[derive(Debug)]
pub struct CertificateResolver {
    current: RwLock<ServedCertificate>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertificateResolver {
    /// Starts serving `certificate`.
    pub fn new(certificate: ServedCertificate) -> Self {
        Self {
            current: RwLock::new(certificate),
            challenges: RwLock::new(HashMap::new()),
        }
    }

    /// Swaps in a new certificate; handshakes already under way finish with the old one.
    pub fn replace(&self, certificate: ServedCertificate) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = certificate;
    }

    /// Facts about the certificate being served.
    pub fn facts(&self) -> CertificateFacts {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .facts
            .clone()
    }

    /// Whether the certificate being served is our self-signed one (no HSTS then).
    pub fn is_self_signed(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .facts
            .self_signed
    }

    /// Starts answering TLS-ALPN-01 for `domain`.
    pub fn set_challenge(&self, domain: &str, certificate: Arc<CertifiedKey>) {
        self.challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_ascii_lowercase(), certificate);
    }

    /// Stops answering TLS-ALPN-01 for `domain`.
    pub fn clear_challenge(&self, domain: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&domain.to_ascii_lowercase());
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if wants_acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .certified_key
                .clone(),
        )
    }
}

/// The server configuration: TLS 1.3 and 1.2, ALPN h2, http/1.1 and acme-tls/1.
pub fn server_config(
    resolver: Arc<CertificateResolver>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_standard(b""), "");
        assert_eq!(base64_standard(b"f"), "Zg==");
        assert_eq!(base64_standard(b"fo"), "Zm8=");
        assert_eq!(base64_standard(b"foo"), "Zm9v");
        assert_eq!(base64_standard(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn a_self_signed_certificate_round_trips_with_its_facts() {
        let now = 1_800_000_000;
        let stored = self_signed_certificate(&["localhost".to_owned()], now).unwrap();
        let served = served_certificate(&stored).unwrap();
        assert!(served.facts.self_signed);
        assert_eq!(served.facts.names, vec!["localhost".to_owned()]);
        assert_eq!(served.facts.not_after_s, now + SELF_SIGNED_LIFETIME_S);
        assert_eq!(served.facts.fingerprint_sha256.len(), 32 * 3 - 1);
        // A second certificate gets a fresh key, so a different SPKI pin.
        let other =
            served_certificate(&self_signed_certificate(&["localhost".into()], now).unwrap())
                .unwrap();
        assert_ne!(
            other.facts.spki_sha256_base64,
            served.facts.spki_sha256_base64
        );
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        let mut stored = self_signed_certificate(&["localhost".to_owned()], 0).unwrap();
        stored.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        assert!(served_certificate(&stored).is_err());
        stored.chain_pem = "nothing".into();
        assert!(served_certificate(&stored).is_err());
    }
}
