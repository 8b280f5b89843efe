//! The shared vectors, `protocol/vectors/v1.json`: the file must be exactly what the code
//! generates today (so a change of any byte on the wire shows up as a diff to review), and
//! every case must open through the public API alone, reading only the file.
//! `CLOISTER_UPDATE_VECTORS=1` rewrites the file instead of failing.

use std::path::PathBuf;

use cloister_protocol::{ChannelError, ServerKey, report_data, seal_request_with_seed};
use serde_json::Value;

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors/v1.json")
}

fn load() -> Value {
    let text =
        std::fs::read_to_string(vectors_path()).expect("protocol/vectors/v1.json is readable");
    serde_json::from_str(&text).expect("v1.json is JSON")
}

fn bytes(value: &Value) -> Vec<u8> {
    hex::decode(value.as_str().expect("a hex string")).expect("valid hex")
}

fn array32(value: &Value) -> [u8; 32] {
    bytes(value).try_into().expect("32 bytes")
}

#[test]
fn the_committed_vectors_are_what_the_code_generates() {
    let generated = cloister_protocol::vectors::file_text();
    if std::env::var("CLOISTER_UPDATE_VECTORS").as_deref() == Ok("1") {
        std::fs::write(vectors_path(), &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(vectors_path()).unwrap_or_default();
    assert!(
        committed == generated,
        "protocol/vectors/v1.json differs from what the code generates: a wire change? \
         Review it, then rerun with CLOISTER_UPDATE_VECTORS=1"
    );
}

#[test]
fn every_case_seals_and_opens_from_the_file_alone() {
    let vectors = load();
    let cases = vectors["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let key_id = u8::try_from(case["key_id"].as_u64().unwrap()).unwrap();
        let server = ServerKey::from_seed(key_id, &array32(&case["server_seed"]));
        assert_eq!(
            server.public_key().to_vec(),
            bytes(&case["server_public_key"]),
            "{name}"
        );
        let request = bytes(&case["request_plaintext"]);
        let (body, mut opener) = seal_request_with_seed(
            server.public_key(),
            key_id,
            &request,
            &array32(&case["ephemeral_seed"]),
        )
        .unwrap();
        let expected_body = bytes(&case["request_body"]);
        assert_eq!(body, expected_body, "{name}: sealed request");
        assert_eq!(body[..7].to_vec(), bytes(&case["request_header"]), "{name}");
        assert_eq!(body[7..39].to_vec(), bytes(&case["enc"]), "{name}");
        let (opened, _) = server.open(&expected_body).unwrap();
        assert_eq!(opened, request, "{name}: opened request");

        let response = bytes(&case["response"]);
        let mut chunks = Vec::new();
        for piece in response.chunks(97) {
            chunks.extend(opener.push(piece).unwrap());
        }
        opener.finish().unwrap();
        let expected: Vec<(Vec<u8>, bool)> = case["response_chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (bytes(&c["plaintext"]), c["final"].as_bool().unwrap()))
            .collect();
        let got: Vec<(Vec<u8>, bool)> = chunks
            .into_iter()
            .map(|c| (c.plaintext, c.is_final))
            .collect();
        assert_eq!(got, expected, "{name}: response chunks");
        let mut framed = bytes(&case["response_nonce"]);
        for chunk in case["response_chunks"].as_array().unwrap() {
            framed.extend(bytes(&chunk["framed"]));
        }
        assert_eq!(
            framed, response,
            "{name}: nonce and frames make up the response"
        );
    }
}

#[test]
fn every_invalid_response_is_refused_with_its_reason() {
    let vectors = load();
    let cases = vectors["cases"].as_array().unwrap();
    let invalid = vectors["invalid_responses"].as_array().unwrap();
    assert!(invalid.len() >= 2 * 6);
    for bad in invalid {
        let case = &cases[usize::try_from(bad["case"].as_u64().unwrap()).unwrap()];
        let key_id = u8::try_from(case["key_id"].as_u64().unwrap()).unwrap();
        let server = ServerKey::from_seed(key_id, &array32(&case["server_seed"]));
        let (_, mut opener) = seal_request_with_seed(
            server.public_key(),
            key_id,
            &bytes(&case["request_plaintext"]),
            &array32(&case["ephemeral_seed"]),
        )
        .unwrap();
        let result = opener
            .push(&bytes(&bad["response"]))
            .and_then(|_| opener.finish());
        let kind = match result {
            Err(ChannelError::Truncated) => "truncated",
            Err(ChannelError::ChunkOpenFailed { .. }) => "chunk_open_failed",
            Err(ChannelError::DataAfterFinal) => "data_after_final",
            other => panic!("{}: unexpected result {other:?}", bad["name"]),
        };
        assert_eq!(kind, bad["error"].as_str().unwrap(), "{}", bad["name"]);
    }
}

#[test]
fn report_data_cases_match() {
    let vectors = load();
    for case in vectors["report_data"].as_array().unwrap() {
        let computed = report_data(
            &bytes(&case["hpke_public_key"]),
            &array32(&case["tls_spki_sha256"]),
            &bytes(&case["nonce"]),
        );
        assert_eq!(computed.to_vec(), bytes(&case["report_data"]));
    }
}
