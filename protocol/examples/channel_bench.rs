//! What the channel costs per request and per streamed chunk, next to what a plaintext
//! stream does anyway (serialising each event to JSON), printed as times and ratios.
//! Run: `cargo run --release -p cloister-protocol --example channel_bench`.

use std::hint::black_box;
use std::time::Instant;

use cloister_protocol::{ResponseEvent, ServerKey, seal_request};

fn per_iteration_ns(iterations: u32, mut body: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        body();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        body();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    let server = ServerKey::generate().expect("randomness");
    let request = br#"{"ts_ms":1700000000000,"conversation":null,"request":{"messages":[{"role":"user","content":"Say hello in three languages."}],"max_tokens":256}}"#;

    let request_ns = per_iteration_ns(2_000, || {
        let (body, opener) = seal_request(server.public_key(), server.key_id(), request).unwrap();
        let (plaintext, sealer) = server.open(&body).unwrap();
        black_box((opener, plaintext, sealer));
    });
    println!(
        "request: seal (client) + open (server), with both X25519 operations: {:.1} us",
        request_ns / 1000.0
    );

    for text in ["Hello", &"word ".repeat(800)] {
        let event = ResponseEvent::Delta {
            text: text.to_string(),
        };
        let json_ns = per_iteration_ns(100_000, || {
            black_box(black_box(&event).to_json_bytes());
        });
        let (body, mut opener) =
            seal_request(server.public_key(), server.key_id(), request).unwrap();
        let (_, mut sealer) = server.open(&body).unwrap();
        // The response nonce goes out with the first chunk; leave it out of the loop.
        opener.push(&sealer.seal_chunk(b"first").unwrap()).unwrap();
        let sealed_ns = per_iteration_ns(100_000, || {
            let bytes = black_box(&event).to_json_bytes();
            let framed = sealer.seal_chunk(&bytes).unwrap();
            black_box(opener.push(&framed).unwrap());
        });
        let plaintext_bytes = event.to_json_bytes().len();
        println!(
            "chunk of {plaintext_bytes} JSON bytes: plaintext (serialise) {:.0} ns, sealed (serialise + seal + open) {:.0} ns: {:.2}x; channel adds {:.0} ns per chunk",
            json_ns,
            sealed_ns,
            sealed_ns / json_ns,
            sealed_ns - json_ns
        );
    }
}
