//! HTTPS to a booted box that serves a self-signed certificate, through the workspace's one
//! client (`cloister_http_client`, with `cloister_protocol::tls`'s attestation-bound
//! verifier): any certificate is accepted, the handshake signature is checked with it, and
//! each answer carries the SHA-256 of the certificate's public key, which the attestation
//! must bind. One request per connection. Test code only.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use cloister_http_client::{Endpoint, Request, blocking};

/// Longest answer read.
pub const RESPONSE_MAX_BYTES: usize = 8 << 20;

/// One answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// SHA-256 of the DER SubjectPublicKeyInfo of the certificate the connection presented.
    pub tls_spki_sha256: [u8; 32],
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name`.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with `headers` and `body` to `addr` (TLS server name and Host header
/// from `host`, `NAME:PORT`) and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    // Connect to `addr`, but name the box as a browser does: TLS server name and Host.
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, port.parse().unwrap_or(addr.port())),
        None => (host, addr.port()),
    };
    let endpoint = Endpoint::Tls {
        host: name.to_owned(),
        port,
    };
    let mut connection =
        blocking::Connection::open_at(&endpoint, addr, timeout).map_err(io::Error::other)?;
    let tls_spki_sha256 = connection
        .tls_spki_sha256()
        .ok_or_else(|| io::Error::other("the connection is not TLS"))?;
    let answer = connection
        .send(
            Request {
                method,
                path,
                headers,
                body,
                body_max: RESPONSE_MAX_BYTES,
            },
            timeout,
        )
        .map_err(io::Error::other)?;
    Ok(Response {
        status: answer.status,
        headers: answer.headers,
        body: answer.body,
        tls_spki_sha256,
    })
}
