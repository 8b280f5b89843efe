//! The shared channel vectors in Chromium: `tests/browser/protocol_vectors.mjs` loads
//! `assets/channel.js` (over the vendored @hpke/core) in a page served by a small HTTP server
//! in this test, runs `protocol/vectors/v1.json` through it, and does a live exchange with
//! the Rust server side (`cloister_protocol::server::open_chat_request`) at `/roundtrip`.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci` done in `tests/browser/`
//! (scripts/setup-test-deps.sh). Without them the browser test says SKIPPED and passes,
//! unless `CLOISTER_REQUIRE_BROWSER=1`, as CI sets, turns that into a failure. The check of
//! the vendored files' hashes always runs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloister_protocol::server::{RequestError, open_chat_request};
use cloister_protocol::{FinishReason, ReplayError, ReplayGuard, ResponseEvent, ServerKey, Usage};
use sha2::{Digest, Sha256};

const MAX_TEST_BODY_BYTES: usize = 1 << 20;

fn web_ui_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vectors_path() -> PathBuf {
    web_ui_dir().join("../protocol/vectors/v1.json")
}

/// The server key of the vectors' first case, which the page seals its live requests to.
fn first_case_key() -> ServerKey {
    let vectors: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors_path()).unwrap()).unwrap();
    let case = &vectors["cases"][0];
    let seed: [u8; 32] = hex::decode(case["server_seed"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    ServerKey::from_seed(
        u8::try_from(case["key_id"].as_u64().unwrap()).unwrap(),
        &seed,
    )
}

struct Request {
    method: String,
    target: String,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().ok()?;
        }
    }
    if content_length > MAX_TEST_BODY_BYTES {
        return None;
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        body,
    })
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The Rust side of the live exchange: open with the real server call, then stream back
/// meta, the user's text as one delta, and done (left out when `truncate` is asked for).
fn roundtrip(stream: &mut TcpStream, key: &ServerKey, guard: &ReplayGuard, request: &Request) {
    let (chat, mut sealer) = match open_chat_request(key, guard, &request.body, now_ms()) {
        Ok(opened) => opened,
        Err(RequestError::Replay(ReplayError::Replayed)) => {
            return respond(stream, "409 Conflict", "text/plain", b"replayed");
        }
        Err(error) => {
            return respond(
                stream,
                "400 Bad Request",
                "text/plain",
                error.to_string().as_bytes(),
            );
        }
    };
    let text = chat.request["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    let _ = stream.write_all(head.as_bytes());
    for event in [
        ResponseEvent::Meta {
            model: "vectors-test".into(),
        },
        ResponseEvent::Delta { text },
    ] {
        let _ = stream.write_all(&sealer.seal_chunk(&event.to_json_bytes()).unwrap());
        let _ = stream.flush();
        // Let the browser see the chunks arrive separately, as a real answer streams.
        std::thread::sleep(Duration::from_millis(20));
    }
    if !request.target.contains("truncate=1") {
        let done = ResponseEvent::Done {
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
        };
        let _ = stream.write_all(&sealer.seal_final(&done.to_json_bytes()).unwrap());
    }
}

fn serve(listener: TcpListener) {
    let key = Arc::new(first_case_key());
    let guard = Arc::new(ReplayGuard::default());
    let assets = web_ui_dir().join("assets");
    let page = b"<!doctype html><meta charset=\"utf-8\"><title>protocol vectors</title><p>protocol vectors</p>";
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let (key, guard, assets) = (key.clone(), guard.clone(), assets.clone());
        std::thread::spawn(move || {
            let Some(request) = read_request(&mut stream) else {
                return;
            };
            let path = request
                .target
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string();
            match (request.method.as_str(), path.as_str()) {
                ("GET", "/") => respond(&mut stream, "200 OK", "text/html; charset=utf-8", page),
                ("GET", "/vectors.json") => {
                    let body = std::fs::read(vectors_path()).unwrap();
                    respond(&mut stream, "200 OK", "application/json", &body);
                }
                ("GET", "/assets/channel.js" | "/assets/vendor/hpke-core-1.9.0.js") => {
                    let body = std::fs::read(assets.join(&path["/assets/".len()..])).unwrap();
                    respond(
                        &mut stream,
                        "200 OK",
                        "text/javascript; charset=utf-8",
                        &body,
                    );
                }
                ("POST", "/roundtrip") => roundtrip(&mut stream, &key, &guard, &request),
                _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found"),
            }
        });
    }
}

#[test]
fn the_shared_vectors_pass_in_chromium_and_the_browser_talks_to_the_rust_server() {
    if !common::browser::may_run("browser test", None) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || serve(listener));
    let stdout = common::browser::run_script(
        "the vectors in Chromium",
        "protocol_vectors.mjs",
        &[("VECTORS_URL", url.as_str())],
    );
    assert!(!stdout.contains("FAIL"));
    // Every case and every refused response was checked, not just some.
    let vectors: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors_path()).unwrap()).unwrap();
    let expected_checks = 1
        + 3 * vectors["cases"].as_array().unwrap().len()
        + vectors["invalid_responses"].as_array().unwrap().len()
        + 5;
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok   ")).count(),
        expected_checks
    );
}

/// The vendored files are byte for byte those recorded in `assets/vendor/vendor-lock.json`
/// (which `assets/vendor/build/build.sh` writes when it rebuilds them from the pinned
/// packages): an edit by hand, or a rebuild that was not recorded, fails here.
#[test]
fn the_vendored_hpke_files_match_their_recorded_hashes() {
    let vendor = web_ui_dir().join("assets/vendor");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vendor.join("vendor-lock.json")).unwrap()).unwrap();
    assert_eq!(lock["packages"]["@hpke/core"]["version"], "1.9.0");
    let files = lock["files"].as_object().unwrap();
    assert!(files.contains_key("hpke-core-1.9.0.js"));
    for (name, recorded) in files {
        let bytes = std::fs::read(vendor.join(name)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            recorded.as_str().unwrap(),
            "{name} differs from the hash in vendor-lock.json"
        );
    }
    let channel = std::fs::read_to_string(web_ui_dir().join("assets/channel.js")).unwrap();
    assert!(
        channel.contains("from \"./vendor/hpke-core-1.9.0.js\""),
        "channel.js loads the vendored file"
    );
}
