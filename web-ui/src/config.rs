//! The server's settings: ports, the state folder, the domain, and how to reach ACME.
//! `main.rs` fills this from the command line; tests fill it directly.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::SessionPolicy;
use crate::server::ConnectionLimits;

/// How the box proves to the CA that it controls the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// TLS-ALPN-01 on the HTTPS port (the default: needs no plain HTTP).
    TlsAlpn01,
    /// HTTP-01 on the plain HTTP port.
    Http01,
}

/// Settings for automatic certificates.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The directory URL (production, staging, or a test CA).
    pub directory_url: String,
    /// Which challenge to answer.
    pub challenge: ChallengeKind,
    /// Extra root certificate (PEM file) to trust when talking to the CA, for test CAs.
    pub ca_root_pem: Option<PathBuf>,
    /// External account binding: key id and the MAC key, raw bytes.
    pub external_account: Option<(String, Vec<u8>)>,
    /// Contact URIs (`mailto:...`) for the account.
    pub contact: Vec<String>,
    /// The CA's identity for the CAA record (e.g. `letsencrypt.org`).
    pub caa_issuer: Option<String>,
    /// Shortest wait after a failed attempt; doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest wait after failed attempts.
    pub retry_max: Duration,
    /// Longest wait before asking the CA's renewal information (ARI) again, whatever its
    /// `Retry-After` says (the floor is a minute, or this if shorter).
    pub renewal_info_recheck_max: Duration,
}

impl AcmeSettings {
    /// Settings for `directory_url` with the defaults: TLS-ALPN-01, retries 1 min to 6 h,
    /// renewal information asked at least hourly.
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            challenge: ChallengeKind::TlsAlpn01,
            ca_root_pem: None,
            external_account: None,
            contact: Vec::new(),
            caa_issuer: None,
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
            renewal_info_recheck_max: Duration::from_secs(3600),
        }
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address to listen on.
    pub listen_address: IpAddr,
    /// The HTTPS port (0 picks a free one).
    pub https_port: u16,
    /// The plain HTTP port (0 picks a free one); `None` serves no plain HTTP.
    pub http_port: Option<u16>,
    /// The port browsers use to reach HTTPS, when it differs from `https_port` (port
    /// forwarding); used in redirects and the WebAuthn origin.
    pub public_https_port: Option<u16>,
    /// The state folder: the database with keys, accounts and certificates.
    pub state_dir: PathBuf,
    /// The box's domain; without one, the box serves a self-signed certificate.
    pub domain: Option<String>,
    /// How to get a certificate for `domain`; `None` keeps the self-signed one.
    pub acme: Option<AcmeSettings>,
    /// The supervisor's control socket, for services' health and logs.
    pub supervisor_socket: PathBuf,
    /// model-runner's Prometheus endpoint, `http://127.0.0.1:PORT/metrics`.
    pub model_metrics_url: Option<String>,
    /// The image's published `measurements.json` (docs/measurements.md), shown in the console.
    pub measurements_file: Option<PathBuf>,
    /// Timeouts and size caps for every connection.
    pub limits: ConnectionLimits,
    /// Session lifetime and rotation.
    pub sessions: SessionPolicy,
    /// The attested chat: TEE, expected measurements, verifier, model-runner.
    pub chat: crate::chat::ChatSettings,
}

impl Settings {
    /// Defaults for a state folder: all addresses, 443 and 80, no domain.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen_address: IpAddr::from([0, 0, 0, 0]),
            https_port: 443,
            http_port: Some(80),
            public_https_port: None,
            state_dir: state_dir.into(),
            domain: None,
            acme: None,
            supervisor_socket: PathBuf::from("/run/cloister/supervisor.sock"),
            model_metrics_url: None,
            measurements_file: None,
            limits: ConnectionLimits::default(),
            sessions: SessionPolicy::default(),
            chat: crate::chat::ChatSettings::default(),
        }
    }
}

/// Whether `name` is a plausible DNS name (letters, digits, hyphens, dots; 253 bytes at most).
pub fn is_valid_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked() {
        assert!(is_valid_domain("chat.example.org"));
        assert!(is_valid_domain("localhost"));
        assert!(!is_valid_domain(""));
        assert!(!is_valid_domain("a..b"));
        assert!(!is_valid_domain("-a.b"));
        assert!(!is_valid_domain("a b.c"));
        assert!(!is_valid_domain("evil.com\r\nSet-Cookie: x"));
        assert!(!is_valid_domain(&"a".repeat(64)));
    }
}
