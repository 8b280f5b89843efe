//! `cloister verify https://HOST[:PORT]`: checks a running box from a fresh TLS connection.
//! It accepts whatever certificate the box presents (self-signed boxes exist; the trust
//! comes from the quote, not from a CA) but records the SHA-256 of that certificate's
//! public key, asks for `/attestation?nonce=<fresh>` over that same connection, and runs
//! `cloister_measurements::attestation::verify` with the observed key, so that a relay or a
//! swapped TLS key fails the report-data binding. Prints one line per check (or `--json`)
//! and exits non-zero on any failure.
//!
//! Only I/O and printing live here; every rule is in cloister-measurements, and the TLS
//! client is `cloister_http_client` with `cloister_protocol::tls`'s verifier. That verifier
//! never skips the handshake's own signature check: accepting any certificate is safe only
//! because the server must still prove it holds that certificate's key.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cloister_http_client::{Endpoint, Request, Url, blocking};
use cloister_measurements::Measurements;
use cloister_measurements::attestation::{self, BUNDLE_SIZE_MAX_BYTES, Inputs, Report};

/// Bytes of the nonce sent (the protocol allows 16 to 64).
const NONCE_BYTES: usize = 32;
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

/// The box's address: an https:// URL, any path ignored.
fn parse_url(url: &str) -> anyhow::Result<Endpoint> {
    if !url.starts_with("https://") {
        bail!("{url:?} is not an https:// URL");
    }
    let parsed: Url = url.parse()?;
    Ok(parsed.endpoint)
}

/// One connection to the box, with the key its certificate holds.
struct Connection {
    inner: blocking::Connection,
    tls_spki_sha256: [u8; 32],
    endpoint: Endpoint,
    timeout: Duration,
}

/// An HTTP answer: status, the `x-cloister-tee` header and the body.
struct Answer {
    status: u16,
    simulated_header: Option<String>,
    body: Vec<u8>,
}

impl Connection {
    fn open(endpoint: &Endpoint, timeout: Duration) -> anyhow::Result<Self> {
        let inner = blocking::Connection::open(endpoint, timeout)?;
        let tls_spki_sha256 = inner
            .tls_spki_sha256()
            .context("the connection to the box is not TLS")?;
        Ok(Connection {
            inner,
            tls_spki_sha256,
            endpoint: endpoint.clone(),
            timeout,
        })
    }

    /// Whether the box keeps this connection open for another request.
    fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    fn get(&mut self, path: &str, body_max: usize) -> anyhow::Result<Answer> {
        let request = Request {
            headers: &[
                ("user-agent", "cloister-verify"),
                ("accept", "application/json"),
            ],
            ..Request::get(path, body_max)
        };
        let answer = self
            .inner
            .send(request, self.timeout)
            .with_context(|| format!("GET {path} from {}", self.endpoint))?;
        Ok(Answer {
            status: answer.status,
            simulated_header: answer.header("x-cloister-tee").map(str::to_owned),
            body: answer.body,
        })
    }
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
            if !connection.is_open() {
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
    fn the_box_is_named_by_an_https_url() {
        let t = |host: &str, port| Endpoint::Tls {
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
        assert_eq!(parse_url("https://[::1]:8443").unwrap(), t("::1", 8443));
        assert!(parse_url("http://box.example").is_err());
        assert!(parse_url("unix:/run/box.sock").is_err());
        assert!(parse_url("https://").is_err());
        assert!(parse_url("https://box:port").is_err());
        assert!(parse_url("https://user@box").is_err());
    }
}
