//! `cloister verify https://HOST[:PORT]`: checks a running box from a fresh TLS connection.
//! It accepts whatever certificate the box presents (self-signed boxes exist; the trust
//! comes from the quote, not from a CA) but records the SHA-256 of that certificate's
//! public key, asks for `/attestation?nonce=<fresh>` over that same connection, and runs
//! `cloister_measurements::attestation::verify` with the observed key, so that a relay or a
//! swapped TLS key fails the report-data binding. Prints one line per check (or `--json`)
//! and exits non-zero on any failure.
//!
//! Only I/O and printing live here; every rule is in cloister-measurements. It must never
//! skip the TLS handshake's own signature check: accepting any certificate is safe only
//! because the server must still prove it holds that certificate's key.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cloister_measurements::Measurements;
use cloister_measurements::attestation::{self, BUNDLE_SIZE_MAX_BYTES, Inputs, Report};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};

/// Bytes of the nonce sent (the protocol allows 16 to 64).
const NONCE_BYTES: usize = 32;
/// Largest response head (status line and headers) read from the box.
const RESPONSE_HEAD_SIZE_MAX_BYTES: usize = 64 * 1024;
/// Largest measurements.json read from the box.
const MEASUREMENTS_SIZE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Check a running box: attestation, measurements, and the TLS key of this connection.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The box, as https://HOST or https://HOST:PORT.
    url: String,
    /// `measurements.json` of the image you expect (from `cloister measure` on your own
    /// build). Without it, the box's own /measurements.json is used, which only shows that
    /// the box is consistent with what it publishes.
    #[arg(long)]
    expected: Option<PathBuf>,
    /// Print the result as JSON instead of one line per check.
    #[arg(long)]
    json: bool,
    /// Accept a quote signed by Cloister's SIMULATION root (development boxes; not
    /// confidential). Never for a real box.
    #[arg(long)]
    accept_simulated: bool,
    /// Seconds to wait for the box at each step (connect, handshake, each answer).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// Where the box is: host (for SNI and the Host header) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("{url:?} is not an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        bail!("{url:?} names no host");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .with_context(|| format!("{url:?}: unclosed [ in the host"))?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse()
            .with_context(|| format!("{url:?}: {p:?} is not a port"))?,
        None => 443,
    };
    Ok(Target { host, port })
}

/// Accepts any certificate (the quote is the trust anchor) but checks the handshake
/// signature with it, so the server must hold the key of the certificate it presents.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// SHA-256 of the DER SubjectPublicKeyInfo of a certificate (docs/protocol.md, section 2).
fn spki_sha256(certificate_der: &[u8]) -> anyhow::Result<[u8; 32]> {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der)
        .map_err(|e| anyhow::anyhow!("the box's TLS certificate is not readable: {e}"))?;
    Ok(Sha256::digest(certificate.public_key().raw).into())
}

/// One TLS connection to the box, with the key it presented.
struct Connection {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    target: Target,
    tls_spki_sha256: [u8; 32],
}

/// An HTTP answer: status, the `x-cloister-tee` header, the body, and whether the box
/// keeps the connection open.
struct Answer {
    status: u16,
    simulated_header: Option<String>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Connection {
    fn open(target: &Target, timeout: Duration) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(target.host.clone())
            .with_context(|| format!("{:?} is not a host name", target.host))?;
        let address = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", target.host))?
            .next()
            .with_context(|| format!("{} has no address", target.host))?;
        let tcp = TcpStream::connect_timeout(&address, timeout)
            .with_context(|| format!("cannot connect to {address}"))?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let tls = ClientConnection::new(Arc::new(config), name)?;
        let mut stream = StreamOwned::new(tls, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .with_context(|| format!("TLS handshake with {address} failed"))?;
        }
        let certificate = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("the box presented no TLS certificate")?;
        let tls_spki_sha256 = spki_sha256(certificate)?;
        Ok(Connection {
            stream: BufReader::new(stream),
            target: target.clone(),
            tls_spki_sha256,
        })
    }

    fn get(&mut self, path: &str, body_max: usize) -> anyhow::Result<Answer> {
        let host = if self.target.host.contains(':') {
            format!("[{}]:{}", self.target.host, self.target.port)
        } else {
            format!("{}:{}", self.target.host, self.target.port)
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: cloister-verify\r\n\
             accept: application/json\r\nconnection: keep-alive\r\n\r\n"
        );
        let stream = self.stream.get_mut();
        stream.write_all(request.as_bytes())?;
        stream.flush()?;
        read_answer(&mut self.stream, body_max).with_context(|| format!("GET {path}"))
    }
}

fn read_line(reader: &mut impl BufRead, used: &mut usize) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let limit = (RESPONSE_HEAD_SIZE_MAX_BYTES - *used) as u64;
    let n = reader.take(limit).read_until(b'\n', &mut line)?;
    *used += n;
    if n == 0 {
        bail!("the box closed the connection");
    }
    if line.last() != Some(&b'\n') {
        bail!("the answer's head is longer than {RESPONSE_HEAD_SIZE_MAX_BYTES} bytes");
    }
    let text = String::from_utf8(line).context("the answer's head is not UTF-8")?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

fn read_answer(reader: &mut impl BufRead, body_max: usize) -> anyhow::Result<Answer> {
    let mut used = 0;
    let status_line = read_line(reader, &mut used)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("the box answered {status_line:?}, not HTTP/1.1");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {status_line:?}"))?;
    let (mut length, mut chunked, mut keep_alive, mut simulated_header) =
        (None, false, version == "HTTP/1.1", None);
    loop {
        let line = read_line(reader, &mut used)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("a header line without a colon: {line:?}");
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().context("a bad content-length")?)
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            "x-cloister-tee" => simulated_header = Some(value.to_owned()),
            _ => {}
        }
    }
    let too_large = |n: usize| anyhow::anyhow!("the answer is {n} bytes, more than {body_max}");
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let size_line = read_line(reader, &mut 0)?;
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .with_context(|| format!("a bad chunk size {size_hex:?}"))?;
            if size == 0 {
                // Trailers, then the blank line.
                while !read_line(reader, &mut 0)?.is_empty() {}
                break;
            }
            if body.len() + size > body_max {
                return Err(too_large(body.len() + size));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            if !read_line(reader, &mut 0)?.is_empty() {
                bail!("a chunk does not end where its size says");
            }
        }
        body
    } else if let Some(n) = length {
        if n > body_max {
            return Err(too_large(n));
        }
        let mut body = vec![0; n];
        reader.read_exact(&mut body)?;
        body
    } else {
        keep_alive = false;
        let mut body = Vec::new();
        reader.take(body_max as u64 + 1).read_to_end(&mut body)?;
        if body.len() > body_max {
            return Err(too_large(body.len()));
        }
        body
    };
    Ok(Answer {
        status,
        simulated_header,
        body,
        keep_alive,
    })
}

fn fresh_nonce() -> anyhow::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut nonce)
        .map_err(|_| anyhow::anyhow!("no randomness for the nonce"))?;
    Ok(nonce)
}

fn now_unix_s() -> anyhow::Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs())
}

/// What `--json` prints.
#[derive(Debug, serde::Serialize)]
struct Outcome<'a> {
    url: &'a str,
    tls_spki_sha256: String,
    nonce: String,
    /// `file:<path>` or `served by the box` (weaker: the box vouching for itself).
    expected_measurements: String,
    simulated_header: Option<String>,
    fetch_ms: f64,
    verify_ms: f64,
    report: &'a Report,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let target = parse_url(&args.url)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let expected_file = match &args.expected {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                Measurements::from_json(&text)
                    .with_context(|| format!("{} is not a measurements file", path.display()))?,
            )
        }
        None => None,
    };

    let started = Instant::now();
    let nonce = fresh_nonce()?;
    let mut connection = Connection::open(&target, timeout)?;
    let answer = connection.get(
        &format!("/attestation?nonce={}", hex::encode(nonce)),
        BUNDLE_SIZE_MAX_BYTES,
    )?;
    if answer.status != 200 {
        bail!(
            "the box answered {} to /attestation: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
        );
    }
    let (expected, expected_source) = match expected_file {
        Some(m) => (
            m,
            format!(
                "file:{}",
                args.expected.clone().unwrap_or_default().display()
            ),
        ),
        None => {
            // The same connection when the box keeps it open, else a new one: this file is
            // not bound to anything, so which connection carries it does not matter.
            if !answer.keep_alive {
                connection = Connection::open(&target, timeout)?;
            }
            let served = connection.get("/measurements.json", MEASUREMENTS_SIZE_MAX_BYTES)?;
            if served.status != 200 {
                bail!(
                    "no --expected was given and the box publishes no /measurements.json ({})",
                    served.status
                );
            }
            let m = Measurements::from_json(&served.body)
                .context("the box's /measurements.json is not a measurements file")?;
            (m, "served by the box".to_owned())
        }
    };
    let fetch_ms = started.elapsed().as_secs_f64() * 1e3;

    let verify_started = Instant::now();
    let report = attestation::verify(&Inputs {
        bundle_json: &answer.body,
        expected: Some(&expected),
        nonce_sent: &nonce,
        observed_tls_spki_sha256: Some(&connection.tls_spki_sha256),
        now_unix_s: now_unix_s()?,
        accept_simulated: args.accept_simulated,
    });
    let verify_ms = verify_started.elapsed().as_secs_f64() * 1e3;

    let outcome = Outcome {
        url: &args.url,
        tls_spki_sha256: hex::encode(connection.tls_spki_sha256),
        nonce: hex::encode(nonce),
        expected_measurements: expected_source,
        simulated_header: answer.simulated_header,
        fetch_ms,
        verify_ms,
        report: &report,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_summary(&outcome);
    }
    if report.ok {
        Ok(())
    } else {
        bail!(
            "{} is NOT verified: {} failed",
            args.url,
            report.failed().join(", ")
        )
    }
}

fn print_summary(o: &Outcome<'_>) {
    let r = o.report;
    println!("box        {}", o.url);
    println!("TLS key    SHA-256 {} (this connection)", o.tls_spki_sha256);
    println!(
        "box says   tee {}, model {}",
        if r.tee.is_empty() { "?" } else { &r.tee },
        if r.model.is_empty() { "?" } else { &r.model }
    );
    if o.expected_measurements == "served by the box" {
        println!(
            "WARNING    the expected measurements are the box's own /measurements.json: this only \
             shows the box is consistent with what it publishes; pass --expected with your build's"
        );
    } else {
        println!("expected   {}", o.expected_measurements);
    }
    if r.simulated {
        println!(
            "WARNING    SIMULATED: this box is NOT confidential (Cloister's development keys)"
        );
    }
    if let Some(e) = &r.error {
        println!("error      {e}");
    }
    for c in &r.checks {
        if c.ok {
            println!("ok    {:<16} {}", c.name, c.title);
        } else {
            println!(
                "FAIL  {:<16} {}: {} (expected {}, found {})",
                c.name,
                c.title,
                c.detail,
                if c.expected.is_empty() {
                    "-"
                } else {
                    &c.expected
                },
                if c.actual.is_empty() { "-" } else { &c.actual }
            );
        }
    }
    println!(
        "{}  ({:.0} ms to fetch, {:.1} ms to verify)",
        if r.ok {
            "VERIFIED: every check passed"
        } else {
            "NOT VERIFIED"
        },
        o.fetch_ms,
        o.verify_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_and_port() {
        let t = |host: &str, port| Target {
            host: host.into(),
            port,
        };
        assert_eq!(
            parse_url("https://box.example").unwrap(),
            t("box.example", 443)
        );
        assert_eq!(
            parse_url("https://box.example:8443/").unwrap(),
            t("box.example", 8443)
        );
        assert_eq!(
            parse_url("https://127.0.0.1:9/x").unwrap(),
            t("127.0.0.1", 9)
        );
        assert_eq!(parse_url("https://[::1]:8443").unwrap(), t("::1", 8443));
        assert!(parse_url("http://box.example").is_err());
        assert!(parse_url("https://").is_err());
        assert!(parse_url("https://box:port").is_err());
        assert!(parse_url("https://user@box").is_err());
    }

    #[test]
    fn answers_are_read_by_length_chunks_or_close() {
        let read = |text: &str, max| read_answer(&mut text.as_bytes(), max);
        let a = read(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Cloister-Tee: SIMULATED\r\n\r\nhelloextra",
            100,
        )
        .unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), a.keep_alive),
            (200, &b"hello"[..], true)
        );
        assert_eq!(a.simulated_header.as_deref(), Some("SIMULATED"));
        let a = read(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!(a.body, b"abcde");
        let a = read("HTTP/1.0 404 Not Found\r\n\r\nall of it", 100).unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), a.keep_alive),
            (404, &b"all of it"[..], false)
        );
        assert!(read("HTTP/1.1 200 OK\r\ncontent-length: 101\r\n\r\n", 100).is_err());
        assert!(
            read(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n65\r\n",
                100
            )
            .is_err()
        );
        assert!(read("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort", 100).is_err());
        assert!(read("SSH-2.0\r\n\r\n", 100).is_err());
        assert!(
            read(
                &format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(70_000)),
                100
            )
            .is_err()
        );
    }
}
