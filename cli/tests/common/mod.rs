//! Fixtures shared by the `cloister verify` tests (`verify_box.rs`, `verify_web_ui.rs`): the
//! measurements.json the simulated box claims, a TLS identity whose key hash the tests know,
//! and running `cloister verify` and reading its summary.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::Arc;

use cloister_measurements::Measurements;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The measurements.json of the simulated box in these tests (cloister-tee's example
/// measurements: made-up firmware, kernel and initrd events).
pub fn measurements() -> Measurements {
    cloister_tee::simulated::example_measurements(
        "firmware",
        [
            ("firmware configuration", 11),
            ("kernel", 3),
            ("command line and initrd", 2),
            ("runtime", 0),
        ],
    )
}

/// A TLS key and self-signed certificate, and the SHA-256 of its SubjectPublicKeyInfo.
pub struct TlsIdentity {
    pub certificate: CertificateDer<'static>,
    /// The private key, PKCS#8 DER.
    pub key: Vec<u8>,
    pub spki_sha256: [u8; 32],
}

/// A fresh key and a self-signed certificate for `localhost` and `127.0.0.1`.
pub fn tls_identity() -> TlsIdentity {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let certificate = params.self_signed(&key).unwrap();
    TlsIdentity {
        certificate: certificate.der().clone(),
        spki_sha256: cloister_protocol::tls::spki_sha256(certificate.der()).unwrap(),
        key: key.serialize_der(),
    }
}

impl TlsIdentity {
    /// A rustls server configuration (ring, safe default versions) presenting this identity.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.certificate.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .unwrap(),
        )
    }
}

/// Runs `cloister verify ARGS` to completion.
pub fn cloister_verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloister"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap()
}

/// The names on the summary's FAIL lines, in order.
pub fn failed_checks(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL  "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}
