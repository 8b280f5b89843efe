//! The wasm verifier in Chromium gives the same results as in Rust, and verify.js does the
//! browser's job (fresh nonce, pinning, refusal of changed measurements, text-only panel).
//!
//! Builds verifier.wasm with `verifier-wasm/build.sh` (or takes `CLOISTER_VERIFIER_WASM`),
//! serves it with `web-ui/assets/verify.js` and a simulated box (cloister-tee's simulated
//! backend, a fresh quote for each nonce) from a small HTTP server in this test, and runs
//! `web-ui/tests/browser/verify_same_results.mjs` with node and playwright-core on Debian's
//! Chromium. Outputs (results, timing) land in `$CARGO_TARGET_TMPDIR/browser-verify/`.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci` in web-ui/tests/browser (that folder's
//! scripts/setup-test-deps.sh) and the wasm32-unknown-unknown target. Without them the test
//! says SKIPPED and passes, unless `CLOISTER_REQUIRE_BROWSER=1` (as CI sets).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use cloister_tee::simulated::SimulatedTee;
use common::*;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>verifier test</title></head>
<body><div id="panel"></div>
<script type="module">
import * as verifier from "/assets/verify.js";
window.verifier = verifier;
window.verifierReady = true;
</script></body></html>
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn missing_dependencies(browser_dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing"));
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return Some("run `npm ci` in web-ui/tests/browser".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is missing".into());
    }
    None
}

fn wasm_file() -> PathBuf {
    if let Some(path) = std::env::var_os("CLOISTER_VERIFIER_WASM") {
        return PathBuf::from(path);
    }
    let out = Command::new(repo().join("verifier-wasm/build.sh"))
        .output()
        .expect("run verifier-wasm/build.sh");
    assert!(
        out.status.success(),
        "verifier-wasm/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The simulated box: release 1 until `POST /test/upgrade`, then release 2.
struct Box {
    release: AtomicU32,
    tees: [SimulatedTee; 2],
    measurements: [String; 2],
    wasm: Vec<u8>,
    verify_js: Vec<u8>,
    requests: Mutex<Vec<String>>,
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, extra: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n{extra}\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, state: &Box) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("{method} {target}"));
    let release = state.release.load(Ordering::SeqCst) as usize;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/verify.html") => respond(&mut stream, "200 OK", "text/html", "", PAGE.as_bytes()),
        ("GET", "/assets/verify.js") => respond(
            &mut stream,
            "200 OK",
            "text/javascript",
            "",
            &state.verify_js,
        ),
        ("GET", "/assets/verifier.wasm") => {
            respond(&mut stream, "200 OK", "application/wasm", "", &state.wasm)
        }
        ("GET", "/measurements.json") => respond(
            &mut stream,
            "200 OK",
            "application/json",
            "",
            state.measurements[release].as_bytes(),
        ),
        ("GET", "/attestation") => {
            let nonce = query
                .strip_prefix("nonce=")
                .and_then(|n| cloister_protocol::attestation::parse_nonce_hex(n).ok());
            match nonce {
                Some(nonce) => respond(
                    &mut stream,
                    "200 OK",
                    "application/json",
                    "x-cloister-tee: SIMULATED, not confidential\r\n",
                    &simulated_bundle(&state.tees[release], &SPKI, &nonce),
                ),
                None => respond(&mut stream, "400 Bad Request", "text/plain", "", b"nonce"),
            }
        }
        ("POST", "/test/upgrade") => {
            state.release.store(1, Ordering::SeqCst);
            respond(&mut stream, "204 No Content", "text/plain", "", b"");
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "", b"not found"),
    }
}

fn start_box(wasm: Vec<u8>) -> (String, Arc<Box>) {
    let state = Arc::new(Box {
        release: AtomicU32::new(0),
        tees: [simulated_tee(1), simulated_tee(2)],
        measurements: [measurements(1).to_json(), measurements(2).to_json()],
        wasm,
        verify_js: std::fs::read(repo().join("web-ui/assets/verify.js")).unwrap(),
        requests: Mutex::new(Vec::new()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let shared = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let state = shared.clone();
            std::thread::spawn(move || serve(stream, &state));
        }
    });
    (url, state)
}

#[test]
fn chromium_runs_the_wasm_verifier_with_the_same_results_as_rust() {
    let browser_dir = repo().join("web-ui/tests/browser");
    if let Some(reason) = missing_dependencies(&browser_dir) {
        assert!(
            std::env::var("CLOISTER_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "browser test dependencies missing: {reason}"
        );
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let wasm = std::fs::read(wasm_file()).unwrap();
    let (url, state) = start_box(wasm);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-verify");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let requests = request_set();
    let requests_file = out_dir.join("requests.json");
    std::fs::write(&requests_file, serde_json::to_vec(&requests).unwrap()).unwrap();

    let output = Command::new("node")
        .arg(browser_dir.join("verify_same_results.mjs"))
        .env("CLOISTER_URL", &url)
        .env("REQUESTS", &requests_file)
        .env("OUT_DIR", &out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "browser run failed:\n{stdout}");
    assert!(!stdout.contains("FAIL"));

    // Byte for byte the same JSON as the Rust verifier gives for the same request.
    let results: Vec<(String, String)> =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.len(), requests.len());
    for ((name, request), (browser_name, browser_result)) in requests.iter().zip(&results) {
        assert_eq!(name, browser_name);
        assert_eq!(
            browser_result,
            &cloister_verifier_wasm::verify_json(request.as_bytes()),
            "{name}"
        );
    }
    // Each verifyBox fetched a fresh nonce: no two attestation requests repeat one.
    let seen = state.requests.lock().unwrap();
    let nonces: Vec<&String> = seen
        .iter()
        .filter(|r| r.contains("/attestation?"))
        .collect();
    assert!(nonces.len() > 5);
    let unique: std::collections::BTreeSet<_> = nonces.iter().collect();
    assert_eq!(unique.len(), nonces.len());
    eprintln!(
        "{}",
        std::fs::read_to_string(out_dir.join("timing.json")).unwrap()
    );
}
