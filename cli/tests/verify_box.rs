//! `cloister verify https://...` against a TLS server in this test that serves attestation
//! bundles from the simulated TEE (cloister-tee, feature `simulated`), a fresh quote for each
//! nonce, bound to the TLS key it chooses. The honest box passes; a relay with its own TLS
//! key serving the honest box's bundle, a wrong expected measurement, a replayed bundle and
//! the simulation root without `--accept-simulated` each fail, with the failing check named.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use cloister_measurements::measurements::{Event, replay};
use cloister_measurements::{Measurements, sha384};
use cloister_protocol::attestation::{Bundle, TeeName};
use cloister_tee::Tee;
use cloister_tee::simulated::SimulatedTee;
use common::{cloister_verify, failed_checks, measurements, tls_identity};

const HPKE_KEY: [u8; 32] = [0x31; 32];

/// What the box in the test does with a request for /attestation?nonce=N.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Quotes N bound to its own TLS key: an honest box.
    Honest,
    /// Quotes N bound to another TLS key: a relay terminating TLS with its own key in front
    /// of an honest box, passing the box's bundle on unchanged.
    BoundTo([u8; 32]),
    /// Serves one bundle made for an old nonce, whatever is asked.
    Replay,
}

struct TestBox {
    url: String,
    spki_sha256: [u8; 32],
}

fn bundle(tee: &SimulatedTee, spki: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
    let report_data = cloister_protocol::report_data(&HPKE_KEY, spki, nonce);
    serde_json::to_vec(&Bundle {
        version: 1,
        tee: TeeName::Simulated,
        quote: tee.quote(&report_data).unwrap(),
        event_log: tee.event_log().unwrap(),
        collateral: Some(serde_json::from_slice(&tee.collateral().unwrap().unwrap()).unwrap()),
        hpke_public_key: HPKE_KEY.to_vec(),
        hpke_key_id: 3,
        tls_spki_sha256: *spki,
        nonce: nonce.to_vec(),
        model: "smollm2-135m-instruct".into(),
    })
    .unwrap()
}

fn respond(stream: &mut impl Write, status: &str, extra: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

/// Serves requests on one TLS connection until the client closes it (keep-alive).
fn serve_connection(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    tee: &SimulatedTee,
    own_spki: [u8; 32],
    behaviour: Behaviour,
    served_requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let connection = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut stream = BufReader::new(rustls::StreamOwned::new(connection, tcp));
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        served_requests.lock().unwrap().push(target.clone());
        let out = stream.get_mut();
        if let Some(nonce_hex) = target.strip_prefix("/attestation?nonce=") {
            let nonce = hex::decode(nonce_hex).unwrap();
            let body = match behaviour {
                Behaviour::Honest => bundle(tee, &own_spki, &nonce),
                Behaviour::BoundTo(spki) => bundle(tee, &spki, &nonce),
                Behaviour::Replay => bundle(tee, &own_spki, &[0x0f; 32]),
            };
            respond(
                out,
                "200 OK",
                "x-cloister-tee: SIMULATED, not confidential\r\n",
                &body,
            )?;
        } else if target == "/measurements.json" {
            respond(out, "200 OK", "", measurements().to_json().as_bytes())?;
        } else {
            respond(out, "404 Not Found", "", b"{}")?;
        }
    }
}

fn start_box(behaviour: Behaviour) -> (TestBox, Arc<Mutex<Vec<String>>>) {
    let identity = tls_identity();
    let config = identity.server_config();
    let tee = Arc::new(SimulatedTee::new(measurements().to_json().as_bytes()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let served = Arc::new(Mutex::new(Vec::new()));
    let (log, spki) = (served.clone(), identity.spki_sha256);
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (config, tee, log) = (config.clone(), tee.clone(), log.clone());
            std::thread::spawn(move || {
                let _ = serve_connection(tcp, config, &tee, spki, behaviour, &log);
            });
        }
    });
    (
        TestBox {
            url,
            spki_sha256: identity.spki_sha256,
        },
        served,
    )
}

fn write_expected(dir: &Path, m: &Measurements) -> String {
    let path = dir.join("measurements.json");
    std::fs::write(&path, m.to_json()).unwrap();
    path.to_string_lossy().into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_honest_simulated_box_verifies_over_one_connection() {
    let (b, served) = start_box(Behaviour::Honest);
    let dir = tempfile::tempdir().unwrap();
    let expected = write_expected(dir.path(), &measurements());
    let out = cloister_verify(&[&b.url, "--expected", &expected, "--accept-simulated"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(failed_checks(&out).is_empty(), "{all}");
    assert!(all.contains("VERIFIED: every check passed"), "{all}");
    assert!(all.contains("SIMULATED"), "{all}");
    assert!(all.contains(&hex::encode(b.spki_sha256)), "{all}");
    assert_eq!(
        all.lines().filter(|l| l.starts_with("ok    ")).count(),
        11,
        "{all}"
    );
    // With --expected, only the attestation is fetched.
    let served = served.lock().unwrap();
    assert_eq!(served.len(), 1);
    assert!(served[0].starts_with("/attestation?nonce="));
    assert_eq!(served[0].len(), "/attestation?nonce=".len() + 64);
}

#[test]
fn json_output_carries_the_observed_key_and_every_check() {
    let (b, _) = start_box(Behaviour::Honest);
    let dir = tempfile::tempdir().unwrap();
    let expected = write_expected(dir.path(), &measurements());
    let out = cloister_verify(&[
        &b.url,
        "--expected",
        &expected,
        "--accept-simulated",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tls_spki_sha256"], hex::encode(b.spki_sha256));
    assert_eq!(v["report"]["ok"], true);
    assert_eq!(v["report"]["simulated"], true);
    assert_eq!(v["report"]["checks"].as_array().unwrap().len(), 11);
    assert_eq!(v["simulated_header"], "SIMULATED, not confidential");
    assert_eq!(v["report"]["hpke_public_key"], hex::encode(HPKE_KEY));
}

#[test]
fn a_relay_with_another_tls_key_fails_the_binding() {
    // The honest box's key, which the relay cannot present: the relay serves bundles bound
    // to it, exactly as the honest box makes them, over its own TLS key.
    let (honest, _) = start_box(Behaviour::Honest);
    let (relay, _) = start_box(Behaviour::BoundTo(honest.spki_sha256));
    assert_ne!(relay.spki_sha256, honest.spki_sha256);
    let dir = tempfile::tempdir().unwrap();
    let expected = write_expected(dir.path(), &measurements());
    let out = cloister_verify(&[&relay.url, "--expected", &expected, "--accept-simulated"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert_eq!(failed_checks(&out), ["report_data"], "{all}");
    assert!(all.contains("another TLS key"), "{all}");
    assert!(all.contains("NOT verified: report_data failed"), "{all}");
}

#[test]
fn a_wrong_expected_measurement_fails_that_register() {
    let (b, _) = start_box(Behaviour::Honest);
    let mut wrong = measurements();
    wrong.events.rtmr2[1] = Event::new("an initrd we did not build", &sha384(b"other"));
    wrong.rtmr2 = replay(&wrong.events.rtmr2);
    let dir = tempfile::tempdir().unwrap();
    let expected = write_expected(dir.path(), &wrong);
    let out = cloister_verify(&[&b.url, "--expected", &expected, "--accept-simulated"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert_eq!(failed_checks(&out), ["rtmr2"], "{all}");
    assert!(all.contains("an initrd we did not build"), "{all}");
}

#[test]
fn a_replayed_bundle_fails_the_nonce() {
    let (b, _) = start_box(Behaviour::Replay);
    let dir = tempfile::tempdir().unwrap();
    let expected = write_expected(dir.path(), &measurements());
    let out = cloister_verify(&[&b.url, "--expected", &expected, "--accept-simulated"]);
    assert!(!out.status.success());
    assert_eq!(
        failed_checks(&out),
        ["report_data", "nonce"],
        "{}",
        text(&out)
    );
}

#[test]
fn the_simulation_root_fails_without_accept_simulated() {
    let (b, _) = start_box(Behaviour::Honest);
    let dir = tempfile::tempdir().unwrap();
    let expected = write_expected(dir.path(), &measurements());
    let out = cloister_verify(&[&b.url, "--expected", &expected]);
    let all = text(&out);
    assert!(!out.status.success());
    assert_eq!(
        failed_checks(&out),
        ["quote_signature", "tcb_status"],
        "{all}"
    );
    assert!(all.contains("NOT Intel"), "{all}");
}

#[test]
fn without_expected_the_boxs_own_measurements_are_used_with_a_warning() {
    let (b, served) = start_box(Behaviour::Honest);
    let out = cloister_verify(&[&b.url, "--accept-simulated"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("WARNING    the expected measurements are the box's own"),
        "{all}"
    );
    // Both answers came over the one connection the key was observed on.
    let served = served.lock().unwrap();
    assert_eq!(served.len(), 2);
    assert_eq!(served[1], "/measurements.json");
}

#[test]
fn a_box_that_is_not_there_or_not_https_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = cloister_verify(&[&format!("https://127.0.0.1:{port}"), "--timeout", "5"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot connect"), "{}", text(&out));
    let out = cloister_verify(&["http://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not an https:// URL"), "{}", text(&out));
    // A plain-HTTP server on the port fails the handshake, not the parser.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let out = cloister_verify(&[&url, "--timeout", "5"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("TLS handshake"), "{}", text(&out));
}
