//! The shared test vectors (`protocol/vectors/v1.json`): deterministic inputs (key seeds,
//! ephemeral seeds, response nonces, plaintexts) and every byte they must produce, for the
//! Rust tests and the browser test of `channel.js` alike.
//!
//! Generated here, from the same code that serves, and compared with the committed file by
//! `protocol/tests/vectors.rs`. The seeds are public: nothing here may ever be used as a key.

use serde_json::{Value, json};

use crate::channel::{
    AEAD_ID, KDF_ID, KEM_ID, RESPONSE_NONCE_BYTES, RequestHeader, ServerKey, response_key_material,
    seal_request_with_seed,
};
use crate::report_data::{REPORT_DATA_DOMAIN_TAG, report_data};

/// One deterministic exchange.
struct CaseInput {
    name: &'static str,
    key_id: u8,
    server_seed: [u8; 32],
    ephemeral_seed: [u8; 32],
    response_nonce: [u8; RESPONSE_NONCE_BYTES],
    request: Vec<u8>,
    /// Non-final chunk plaintexts, then the final one.
    chunks: Vec<Vec<u8>>,
    last: Vec<u8>,
}

fn counting_bytes(length: usize, start: u8) -> Vec<u8> {
    (0..length)
        .map(|i| start.wrapping_add((i % 251) as u8))
        .collect()
}

fn cases() -> Vec<CaseInput> {
    vec![
        CaseInput {
            name: "chat",
            key_id: 7,
            server_seed: [0x11; 32],
            ephemeral_seed: [0x22; 32],
            response_nonce: [0x33; 32],
            request: br#"{"ts_ms":1700000000000,"conversation":null,"request":{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}}"#.to_vec(),
            chunks: vec![
                br#"{"type":"meta","model":"tiny-test"}"#.to_vec(),
                br#"{"type":"delta","text":"Hello"}"#.to_vec(),
                br#"{"type":"delta","text":", world"}"#.to_vec(),
            ],
            last: br#"{"type":"done","finish_reason":"stop","usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#.to_vec(),
        },
        CaseInput {
            name: "empty chunks",
            key_id: 0,
            server_seed: counting_bytes(32, 0x40).try_into().unwrap_or([0x40; 32]),
            ephemeral_seed: counting_bytes(32, 0x80).try_into().unwrap_or([0x80; 32]),
            response_nonce: [0x00; 32],
            request: Vec::new(),
            chunks: vec![Vec::new()],
            last: Vec::new(),
        },
        CaseInput {
            name: "long chunks (2- and 4-byte lengths)",
            key_id: 255,
            server_seed: [0xfe; 32],
            ephemeral_seed: [0x01; 32],
            response_nonce: [0xff; 32],
            request: counting_bytes(300, 7),
            chunks: vec![counting_bytes(100, 1), counting_bytes(16_500, 2)],
            last: counting_bytes(64, 3),
        },
    ]
}

/// The whole vectors document.
pub fn generate() -> Value {
    let mut case_values = Vec::new();
    let mut invalid = Vec::new();
    for (index, case) in cases().into_iter().enumerate() {
        let (value, frames) = generate_case(&case);
        // The long case would repeat its 16 KB chunk in every variant; the short ones suffice.
        if frames.concat().len() < 4096 {
            invalid.extend(invalid_responses(index, &frames));
        }
        case_values.push(value);
    }
    let report_data_cases: Vec<Value> = [
        ([0x11u8; 32], [0xaau8; 32], vec![0x01u8; 16]),
        ([0x5a; 32], [0x00; 32], counting_bytes(64, 9)),
    ]
    .iter()
    .map(|(key, spki, nonce)| {
        json!({
            "hpke_public_key": hex::encode(key),
            "tls_spki_sha256": hex::encode(spki),
            "nonce": hex::encode(nonce),
            "report_data": hex::encode(report_data(key, spki, nonce)),
        })
    })
    .collect();
    json!({
        "description": "Cloister channel protocol v1 test vectors (docs/protocol.md). All byte strings are hex. Regenerate with CLOISTER_UPDATE_VECTORS=1 cargo test -p cloister-protocol --test vectors.",
        "suite": { "mode": 0, "kem_id": KEM_ID, "kdf_id": KDF_ID, "aead_id": AEAD_ID },
        "report_data_tag": String::from_utf8_lossy(REPORT_DATA_DOMAIN_TAG),
        "report_data": report_data_cases,
        "cases": case_values,
        "invalid_responses": invalid,
    })
}

/// The file text: pretty JSON and a final newline.
pub fn file_text() -> String {
    let mut text = serde_json::to_string_pretty(&sorted_keys(generate())).unwrap_or_default();
    text.push('\n');
    text
}

/// The same value with every object's keys in sorted order, so the file's bytes do not
/// depend on whether some other crate in the build turned on serde_json's `preserve_order`
/// (dcap-qvl does, through measurements).
fn sorted_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted_keys(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted_keys).collect()),
        other => other,
    }
}

fn generate_case(case: &CaseInput) -> (Value, Vec<Vec<u8>>) {
    let server = ServerKey::from_seed(case.key_id, &case.server_seed);
    let Ok((body, opener)) = seal_request_with_seed(
        server.public_key(),
        case.key_id,
        &case.request,
        &case.ephemeral_seed,
    ) else {
        unreachable!("vector case {} does not seal", case.name)
    };
    let header = RequestHeader::for_key(case.key_id).to_bytes();
    let enc = &body[header.len()..header.len() + 32];
    let Ok((_, mut sealer)) = server.open_with_response_nonce(&body, case.response_nonce) else {
        unreachable!("vector case {} does not open", case.name)
    };
    let secret = *opener.exported_secret();
    let mut enc_array = [0u8; 32];
    enc_array.copy_from_slice(enc);
    let (key, base_nonce) = response_key_material(&secret, &enc_array, &case.response_nonce);
    let mut frames = Vec::new();
    let mut chunk_values = Vec::new();
    for plaintext in &case.chunks {
        let framed = sealer.seal_chunk(plaintext).unwrap_or_default();
        chunk_values.push(json!({"plaintext": hex::encode(plaintext), "final": false, "framed": hex::encode(strip_nonce(&frames, &framed))}));
        frames.push(framed);
    }
    let framed = sealer.seal_final(&case.last).unwrap_or_default();
    chunk_values.push(json!({"plaintext": hex::encode(&case.last), "final": true, "framed": hex::encode(strip_nonce(&frames, &framed))}));
    frames.push(framed);
    let value = json!({
        "name": case.name,
        "key_id": case.key_id,
        "server_seed": hex::encode(case.server_seed),
        "server_public_key": hex::encode(server.public_key()),
        "ephemeral_seed": hex::encode(case.ephemeral_seed),
        "request_plaintext": hex::encode(&case.request),
        "request_header": hex::encode(header),
        "enc": hex::encode(enc),
        "request_body": hex::encode(&body),
        "exported_secret": hex::encode(secret),
        "response_nonce": hex::encode(case.response_nonce),
        "response_key": hex::encode(key),
        "response_base_nonce": hex::encode(base_nonce),
        "response_chunks": chunk_values,
        "response": hex::encode(frames.concat()),
    });
    (value, frames)
}

/// The first sealed buffer starts with the response nonce; the chunk's own frame follows it.
fn strip_nonce<'a>(earlier: &[Vec<u8>], framed: &'a [u8]) -> &'a [u8] {
    if earlier.is_empty() {
        &framed[RESPONSE_NONCE_BYTES..]
    } else {
        framed
    }
}

/// Responses that a reader must refuse, with the error kind it must report:
/// `truncated`, `chunk_open_failed` or `data_after_final`.
fn invalid_responses(case: usize, frames: &[Vec<u8>]) -> Vec<Value> {
    let whole = frames.concat();
    let without_final = frames[..frames.len() - 1].concat();
    let mut out = vec![
        json!({"case": case, "name": "final chunk dropped", "response": hex::encode(&without_final), "error": "truncated"}),
        json!({"case": case, "name": "cut inside the final chunk", "response": hex::encode(&whole[..whole.len() - 1]), "error": "truncated"}),
        json!({"case": case, "name": "only the response nonce", "response": hex::encode(&whole[..RESPONSE_NONCE_BYTES]), "error": "truncated"}),
    ];
    let mut tampered = whole.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    out.push(json!({"case": case, "name": "last tag bit flipped", "response": hex::encode(&tampered), "error": "chunk_open_failed"}));
    let mut other_nonce = whole.clone();
    other_nonce[0] ^= 0x80;
    out.push(json!({"case": case, "name": "response nonce altered", "response": hex::encode(&other_nonce), "error": "chunk_open_failed"}));
    let mut trailing = whole.clone();
    trailing.push(0x00);
    out.push(json!({"case": case, "name": "a byte after the final chunk", "response": hex::encode(&trailing), "error": "data_after_final"}));
    if frames.len() >= 2 {
        // The first non-final chunk re-framed behind the final marker: its AAD was empty.
        let first = &frames[0][RESPONSE_NONCE_BYTES..];
        if let Some((length, used)) = crate::varint::decode(first) {
            let sealed = &first[used..];
            let mut relabelled = frames[0][..RESPONSE_NONCE_BYTES].to_vec();
            relabelled.push(0);
            crate::varint::encode(length, &mut relabelled);
            relabelled.extend_from_slice(sealed);
            out.push(json!({"case": case, "name": "non-final chunk marked final", "response": hex::encode(&relabelled), "error": "chunk_open_failed"}));
        }
    }
    if frames.len() >= 3 {
        let nonce = &frames[0][..RESPONSE_NONCE_BYTES];
        let reordered = [
            nonce,
            &frames[1],
            &frames[0][RESPONSE_NONCE_BYTES..],
            &frames[2..].concat(),
        ]
        .concat();
        out.push(json!({"case": case, "name": "first two chunks swapped", "response": hex::encode(&reordered), "error": "chunk_open_failed"}));
    }
    out
}
