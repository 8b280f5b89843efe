//! Generation speed through the sealed channel against plaintext SSE straight from
//! model-runner, in the same run, on the same model-runner: alternating requests with the
//! same prompt, greedy sampling and the same length, so both paths generate the same tokens.
//! Prints tokens per second for each path and the channel's overhead.
//!
//! `cargo run --release -p cloister-web-ui --features simulated-tee --example chat_bench`
//! (CLOISTER_MODEL or the fetch-model.sh cache; ROUNDS and MAX_TOKENS in the environment).

#[path = "../tests/chat_common/mod.rs"]
mod chat_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Bytes;
use cloister_protocol::{ChatRequest, ResponseEvent};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body_json(max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 7,
    })
}

/// (completion tokens, seconds from the first to the last token).
struct Run {
    tokens: u64,
    seconds: f64,
}

async fn direct(model_runner: SocketAddr, max_tokens: usize) -> Run {
    let stream = tokio::net::TcpStream::connect(model_runner).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut body = body_json(max_tokens);
    body["stream"] = serde_json::json!(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let request = hyper::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("x-cloister-user", "bench")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let mut answer = sender.send_request(request).await.unwrap().into_body();
    let (mut first, mut last, mut tokens) = (None, Instant::now(), 0);
    let mut buffer = Vec::new();
    while let Some(frame) = answer.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            buffer.extend_from_slice(data);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buffer.drain(..end + 2).collect();
                let Some(json) = event.strip_prefix(b"data: ") else {
                    continue;
                };
                let Ok(value) =
                    serde_json::from_slice::<serde_json::Value>(&json[..json.len() - 2])
                else {
                    continue;
                };
                if value["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
                {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                }
                if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
                    tokens = n;
                }
            }
        }
    }
    Run {
        tokens,
        seconds: (last - first.unwrap()).as_secs_f64(),
    }
}

async fn sealed(
    address: SocketAddr,
    session: &str,
    bundle: &cloister_protocol::attestation::Bundle,
    max_tokens: usize,
) -> Run {
    let stream = common::tls_connect(address, "localhost").await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let inner = ChatRequest {
        ts_ms: now_ms,
        conversation: None,
        request: body_json(max_tokens),
    };
    let (body, mut opener) = cloister_protocol::seal_request(
        &bundle.hpke_public_key,
        bundle.hpke_key_id,
        &inner.to_json_bytes(),
    )
    .unwrap();
    let request = hyper::Request::post("/api/chat")
        .header("host", "localhost")
        .header("content-type", "message/cloister-chat-req")
        .header("x-csrf-token", chat_common::CSRF)
        .header(
            "cookie",
            format!(
                "__Host-csrf={}; __Host-session={session}",
                chat_common::CSRF
            ),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let mut answer = sender.send_request(request).await.unwrap().into_body();
    let (mut first, mut last, mut tokens) = (None, Instant::now(), 0);
    while let Some(frame) = answer.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            for chunk in opener.push(data).unwrap() {
                match ResponseEvent::from_json_bytes(&chunk.plaintext).unwrap() {
                    ResponseEvent::Delta { .. } => {
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                    }
                    ResponseEvent::Done { usage, .. } => tokens = usage.completion_tokens,
                    ResponseEvent::Error { message } => panic!("the chat failed: {message}"),
                    ResponseEvent::Meta { .. } => {}
                }
            }
        }
    }
    opener.finish().unwrap();
    Run {
        tokens,
        seconds: (last - first.unwrap()).as_secs_f64(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = env_number("ROUNDS", 5);
    let max_tokens = env_number("MAX_TOKENS", 128);
    let model = chat_common::model_path().expect("the test model");
    let model_runner = chat_common::spawn_model_runner(&model).await;
    let root = tempfile::tempdir().unwrap();
    let measurements = root.path().join("measurements.json");
    std::fs::write(&measurements, chat_common::measurements_json("bench")).unwrap();
    let web_ui = chat_common::start_web_ui(root.path(), &measurements, model_runner, &[]);
    let (_, session) = chat_common::owner(&web_ui, 1);

    // One attestation, as the browser would fetch before its first message.
    let nonce = hex::encode([7u8; 32]);
    let started = Instant::now();
    let stream = common::tls_connect(web_ui.address, "localhost").await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let answer = sender
        .send_request(
            hyper::Request::get(format!("/attestation?nonce={nonce}"))
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = answer.into_body().collect().await.unwrap().to_bytes();
    let attestation_ms = started.elapsed().as_secs_f64() * 1e3;
    let bundle = cloister_protocol::attestation::Bundle::from_json(&bytes).unwrap();

    // Warm up both paths (prefix cache, page cache), then alternate.
    let _ = direct(model_runner, 8).await;
    let _ = sealed(web_ui.address, &session, &bundle, 8).await;
    let (mut direct_tokens, mut direct_s, mut sealed_tokens, mut sealed_s) = (0, 0.0, 0, 0.0);
    println!("round  direct tok/s  channel tok/s");
    for round in 0..rounds {
        let d = direct(model_runner, max_tokens).await;
        let s = sealed(web_ui.address, &session, &bundle, max_tokens).await;
        let rate = |r: &Run| (r.tokens.saturating_sub(1)) as f64 / r.seconds;
        println!("{round:>5}  {:>12.1}  {:>13.1}", rate(&d), rate(&s));
        direct_tokens += d.tokens.saturating_sub(1);
        direct_s += d.seconds;
        sealed_tokens += s.tokens.saturating_sub(1);
        sealed_s += s.seconds;
    }
    let direct_rate = direct_tokens as f64 / direct_s;
    let sealed_rate = sealed_tokens as f64 / sealed_s;
    println!(
        "total: direct {direct_rate:.1} tok/s, channel {sealed_rate:.1} tok/s, channel overhead {:.2}% ({rounds} rounds of {max_tokens} tokens)",
        (1.0 - sealed_rate / direct_rate) * 100.0
    );
    println!(
        "attestation fetch (quote, event log, collateral; server side + loopback TLS): {attestation_ms:.1} ms"
    );
}
