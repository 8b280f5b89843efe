//! The attested chat through the real `web-ui` binary under the simulated TEE, with the real
//! model-runner on the real model: attestation verified by the same verifier as
//! `cloister verify`, a sealed chat streamed back and opened, replay refused, stop cancelling
//! generation in model-runner, the history API's shape checks and per-user isolation, the
//! owner's history switch, and no plaintext anywhere on disk or in the logs afterwards.
//!
//! Run with `cargo test -p cloister-web-ui --features simulated-tee --test chat_api`.

#![cfg(feature = "simulated-tee")]

mod chat_common;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use base64::Engine as _;
use chat_common::{CSRF, contains, files_under};
use cloister_protocol::{ChatRequest, ResponseEvent, ResponseOpener};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Incoming,
    _connection: tokio::task::JoinHandle<()>,
}

async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    session: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let stream = common::tls_connect(address, "localhost").await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", content_type)
        .header("x-csrf-token", CSRF);
    let mut cookie = format!("__Host-csrf={CSRF}");
    if let Some(session) = session {
        cookie.push_str(&format!("; __Host-session={session}"));
    }
    builder = builder.header("cookie", cookie);
    let answer = sender
        .send_request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    Answer {
        status: answer.status().as_u16(),
        headers: answer.headers().clone(),
        body: answer.into_body(),
        _connection: connection,
    }
}

async fn text(answer: Answer) -> (u16, String) {
    let status = answer.status;
    let bytes = answer.body.collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn get(address: SocketAddr, path: &str, session: Option<&str>) -> (u16, String) {
    text(
        request(
            address,
            "GET",
            path,
            session,
            "application/json",
            Vec::new(),
        )
        .await,
    )
    .await
}

async fn post_json(address: SocketAddr, path: &str, session: &str, body: &str) -> (u16, String) {
    text(
        request(
            address,
            "POST",
            path,
            Some(session),
            "application/json",
            body.as_bytes().to_vec(),
        )
        .await,
    )
    .await
}

/// Fetches and verifies an attestation as `cloister verify` would; returns the bundle.
async fn attest(
    address: SocketAddr,
    measurements: &str,
    accept_simulated: bool,
) -> (cloister_protocol::attestation::Bundle, bool) {
    let nonce = [0x5a_u8; 32];
    let answer = request(
        address,
        "GET",
        &format!("/attestation?nonce={}", hex::encode(nonce)),
        None,
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(
        answer.headers.get("x-cloister-tee").unwrap(),
        "SIMULATED, not confidential"
    );
    let (status, body) = text(answer).await;
    assert_eq!(status, 200, "{body}");
    let leaf = common::served_leaf(address, "localhost").await;
    let facts = cloister_web_ui::tls::certificate_facts(&leaf).unwrap();
    let spki: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&facts.spki_sha256_base64)
        .unwrap()
        .try_into()
        .unwrap();
    let expected = cloister_measurements::Measurements::from_json(measurements.as_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let report =
        cloister_measurements::attestation::verify(&cloister_measurements::attestation::Inputs {
            bundle_json: body.as_bytes(),
            expected: Some(&expected),
            nonce_sent: &nonce,
            observed_tls_spki_sha256: Some(&spki),
            now_unix_s: now,
            accept_simulated,
        });
    let bundle = cloister_protocol::attestation::Bundle::from_json(body.as_bytes()).unwrap();
    (bundle, report.ok)
}

/// Seals `request` to the attested key and posts it; returns the answer and the opener.
async fn send_chat(
    address: SocketAddr,
    session: &str,
    bundle: &cloister_protocol::attestation::Bundle,
    request_json: serde_json::Value,
) -> (Answer, ResponseOpener, Vec<u8>) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let inner = ChatRequest {
        ts_ms: now_ms,
        conversation: None,
        request: request_json,
    };
    let (sealed, opener) = cloister_protocol::seal_request(
        &bundle.hpke_public_key,
        bundle.hpke_key_id,
        &inner.to_json_bytes(),
    )
    .unwrap();
    let answer = request(
        address,
        "POST",
        "/api/chat",
        Some(session),
        "message/cloister-chat-req",
        sealed.clone(),
    )
    .await;
    (answer, opener, sealed)
}

/// Reads a sealed answer to its end: the events, and whether the stream was complete.
async fn read_events(answer: Answer, mut opener: ResponseOpener) -> (Vec<ResponseEvent>, bool) {
    let mut body = answer.body;
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            for chunk in opener.push(data).unwrap() {
                events.push(ResponseEvent::from_json_bytes(&chunk.plaintext).unwrap());
            }
        }
    }
    (events, opener.finish().is_ok())
}

fn answer_text(events: &[ResponseEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ResponseEvent::Delta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

async fn running_sequences(model_runner: SocketAddr) -> u64 {
    let mut stream = tokio::net::TcpStream::connect(model_runner).await.unwrap();
    let answer = common::exchange(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .find_map(|l| l.strip_prefix("cloister_running_sequences "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_sealed_chat_history_and_no_plaintext_left_behind() {
    let Some(model) = chat_common::model_path() else {
        return;
    };
    let model_runner = chat_common::spawn_model_runner(&model).await;
    let root = tempfile::tempdir().unwrap();
    let measurements = chat_common::measurements_json("chat test firmware");
    let measurements_path = root.path().join("measurements.json");
    std::fs::write(&measurements_path, &measurements).unwrap();
    let mut web_ui = chat_common::start_web_ui(root.path(), &measurements_path, model_runner, &[]);
    let address = web_ui.address;
    let (_owner, owner_session) = chat_common::owner(&web_ui, 1);
    let (_bob, bob_session) = chat_common::invited(&web_ui, 2, "Bob");

    // The expected measurements are served as given; the attestation verifies against them,
    // binding this connection's TLS key, only when simulation is accepted.
    let (status, served) = get(address, "/measurements.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(served, measurements);
    let (bundle, verified) = attest(address, &measurements, true).await;
    assert!(
        verified,
        "the simulated attestation verifies when simulation is accepted"
    );
    assert_eq!(
        bundle.tee,
        cloister_protocol::attestation::TeeName::Simulated
    );
    assert!(!bundle.model.is_empty(), "the bundle names the model");
    let (_, verified_strict) = attest(address, &measurements, false).await;
    assert!(
        !verified_strict,
        "the simulation root is refused by default"
    );
    let wrong = chat_common::measurements_json("another firmware");
    let (_, verified_wrong) = attest(address, &wrong, true).await;
    assert!(
        !verified_wrong,
        "a different expected MRTD fails verification"
    );
    for bad in [
        "/attestation",
        "/attestation?nonce=abcd",
        "/attestation?nonce=zz",
    ] {
        assert_eq!(get(address, bad, None).await.0, 400, "{bad}");
    }
    // Every page says SIMULATED.
    let (status, page) = get(address, "/chat", Some(&owner_session)).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"simulated-banner\""));
    assert!(page.contains("SIMULATED, not confidential"));

    // A sealed chat: meta (the model), deltas, then done in the final chunk.
    let prompt = "Write one sentence about the harbour lighthouse of Quillhaven-7341.";
    let request_json = serde_json::json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24,
        "temperature": 0.0,
    });
    let (answer, opener, sealed) =
        send_chat(address, &owner_session, &bundle, request_json.clone()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers.get("content-type").unwrap(),
        "message/cloister-chat-res"
    );
    let (events, complete) = read_events(answer, opener).await;
    assert!(complete, "the stream ends with its final chunk");
    assert!(matches!(&events[0], ResponseEvent::Meta { model } if *model == bundle.model));
    assert!(
        matches!(events.last(), Some(ResponseEvent::Done { usage, .. }) if usage.completion_tokens > 0)
    );
    let answer_text = answer_text(&events);
    assert!(answer_text.len() > 8, "the model answered: {answer_text:?}");

    // The same sealed bytes again: a replay, refused before model-runner sees it.
    let replay = request(
        address,
        "POST",
        "/api/chat",
        Some(&owner_session),
        "message/cloister-chat-req",
        sealed,
    )
    .await;
    assert_eq!(replay.status, 400);
    // Not signed in, or without the CSRF header's match: refused.
    let (anonymous, _, _) = send_chat(
        address,
        "00".repeat(32).as_str(),
        &bundle,
        request_json.clone(),
    )
    .await;
    assert_eq!(anonymous.status, 401);

    // Stop: the browser goes away mid-answer; model-runner's sequence ends soon after.
    let long = serde_json::json!({
        "messages": [{"role": "user", "content": "Count from one to five hundred, in words."}],
        "max_tokens": 600,
    });
    let (answer, mut opener, _) = send_chat(address, &bob_session, &bundle, long).await;
    assert_eq!(answer.status, 200);
    let Answer {
        mut body,
        _connection: connection,
        ..
    } = answer;
    let mut deltas = 0;
    while deltas < 2 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Some(data) = frame.data_ref() {
            for chunk in opener.push(data).unwrap() {
                if matches!(
                    ResponseEvent::from_json_bytes(&chunk.plaintext).unwrap(),
                    ResponseEvent::Delta { .. }
                ) {
                    deltas += 1;
                }
            }
        }
    }
    assert_eq!(running_sequences(model_runner).await, 1);
    drop(body);
    connection.abort();
    let mut cancelled = false;
    for _ in 0..100 {
        if running_sequences(model_runner).await == 0 {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cancelled,
        "the generation was cancelled when the client left"
    );

    // History: only bucket-sized blobs, only the owner's own rows.
    let id = "00112233445566778899aabbccddeeff";
    let blob = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![0xa5_u8; n]);
    let put = |meta: usize, body: usize| {
        format!(
            "{{\"meta\":\"{}\",\"body\":\"{}\"}}",
            blob(meta),
            blob(body)
        )
    };
    let path = format!("/api/history/{id}");
    assert_eq!(
        post_json(address, &path, &owner_session, &put(256, 1000))
            .await
            .0,
        400
    );
    assert_eq!(
        post_json(address, &path, &owner_session, &put(256, 4096))
            .await
            .0,
        200
    );
    let (status, stored) = get(address, &path, Some(&owner_session)).await;
    assert_eq!(status, 200);
    assert!(stored.contains(&blob(4096)));
    assert_eq!(
        get(address, &path, Some(&bob_session)).await.0,
        404,
        "Bob cannot read Olivia's conversation"
    );
    let (_, bob_list) = get(address, "/api/history", Some(&bob_session)).await;
    assert!(bob_list.contains("\"conversations\":[]"), "{bob_list}");
    assert_eq!(
        post_json(address, &format!("{path}/delete"), &bob_session, "{}")
            .await
            .0,
        404
    );
    assert_eq!(
        get(address, &path, Some(&owner_session)).await.0,
        200,
        "Bob's delete did not touch it"
    );
    // Wrapped keys: only for one's own passkeys.
    let credential = |byte: u8| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([byte; 32]);
    let key = |byte: u8| {
        format!(
            "{{\"credential_id\":\"{}\",\"wrapped\":\"{}\"}}",
            credential(byte),
            blob(61)
        )
    };
    assert_eq!(
        post_json(address, "/api/history/keys", &bob_session, &key(1))
            .await
            .0,
        403
    );
    assert_eq!(
        post_json(address, "/api/history/keys", &bob_session, &key(2))
            .await
            .0,
        200
    );
    let (_, keys) = get(address, "/api/history/keys", Some(&bob_session)).await;
    assert!(keys.contains(&credential(2)) && !keys.contains(&credential(1)));
    // The owner turns history off: writes are refused; only the owner may.
    let off = "{\"history_allowed\":false,\"default_ephemeral\":true}";
    assert_eq!(
        post_json(address, "/api/owner/chat-settings", &bob_session, off)
            .await
            .0,
        403
    );
    assert_eq!(
        post_json(address, "/api/owner/chat-settings", &owner_session, off)
            .await
            .0,
        200
    );
    assert_eq!(
        post_json(address, &path, &owner_session, &put(256, 1024))
            .await
            .0,
        403
    );
    let (_, list) = get(address, "/api/history", Some(&owner_session)).await;
    assert!(list.contains("\"allowed\":false") && list.contains("\"default_ephemeral\":true"));
    assert_eq!(
        post_json(address, "/api/history/delete-all", &owner_session, "{}")
            .await
            .0,
        200
    );
    assert_eq!(get(address, &path, Some(&owner_session)).await.0, 404);

    // The owner's console verifies the box's own attestation as users' verifiers do: each
    // check is listed and passes (against the simulation root, said loudly), and the page
    // carries no chat content.
    let (status, console) = get(address, "/console", Some(&owner_session)).await;
    assert_eq!(status, 200);
    for name in cloister_measurements::attestation::CHECK_NAMES {
        assert!(
            console.contains(&format!("<tr class=\"check pass\" data-check=\"{name}\">")),
            "the console shows {name} passing: {console}"
        );
    }
    assert!(!console.contains("class=\"check fail\""), "{console}");
    assert!(console.contains("VERIFIED, but SIMULATED, not confidential"));
    for needle in [prompt, "Quillhaven-7341", answer_text.trim()] {
        assert!(!console.contains(needle), "the console shows chat content");
    }

    // No plaintext: neither the prompt nor the answer is anywhere in the state folder or the
    // logs, byte for byte, once web-ui has stopped and flushed everything.
    web_ui.stop();
    let log = std::fs::read(&web_ui.log_file).unwrap();
    assert!(!log.is_empty(), "web-ui logged something (at debug level)");
    let mut searched = vec![(web_ui.log_file.clone(), log)];
    for file in files_under(&web_ui.state_dir) {
        let bytes = std::fs::read(&file).unwrap();
        searched.push((file, bytes));
    }
    assert!(searched.len() >= 3, "the database files were searched too");
    for (file, bytes) in &searched {
        for needle in [prompt, "Quillhaven-7341", answer_text.trim()] {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{} contains chat plaintext",
                file.display()
            );
        }
    }
}
