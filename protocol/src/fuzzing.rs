//! Entry points for the fuzz targets in `fuzz/` (and for the stable tests that run them on
//! real seeds): bytes from outside reach the server's request opener and the client's
//! response stream reader here. Both must return errors, never panic, and never buffer
//! without bound. Nothing here is for production use.

use crate::channel::{ResponseOpener, ServerKey, seal_request_with_seed};
use crate::replay::ReplayGuard;
use crate::server::check_chat_request;

const FUZZ_KEY_ID: u8 = 1;
const FUZZ_SERVER_SEED: [u8; 32] = [0x5e; 32];
const FUZZ_EPHEMERAL_SEED: [u8; 32] = [0xe0; 32];
const FUZZ_RESPONSE_NONCE: [u8; 32] = [0x42; 32];

fn fuzz_server_key() -> ServerKey {
    ServerKey::from_seed(FUZZ_KEY_ID, &FUZZ_SERVER_SEED)
}

/// A fixed request and the opener waiting for its response (the fuzz input is the response).
pub fn fuzz_opener() -> ResponseOpener {
    let server = fuzz_server_key();
    match seal_request_with_seed(
        server.public_key(),
        FUZZ_KEY_ID,
        b"{}",
        &FUZZ_EPHEMERAL_SEED,
    ) {
        Ok((_, opener)) => opener,
        // Sealing a two-byte request to a valid key cannot fail.
        Err(error) => unreachable!("the fixed fuzz request does not seal: {error}"),
    }
}

/// A valid sealed request body and the response stream that answers it (seeds for fuzzing).
pub fn fuzz_seeds() -> (Vec<u8>, Vec<u8>) {
    let server = fuzz_server_key();
    let request = br#"{"ts_ms":1700000000000,"conversation":null,"request":{"messages":[]}}"#;
    let Ok((body, _)) = seal_request_with_seed(
        server.public_key(),
        FUZZ_KEY_ID,
        request,
        &FUZZ_EPHEMERAL_SEED,
    ) else {
        unreachable!("the fixed fuzz request does not seal")
    };
    let Ok((_, mut sealer)) = server.open_with_response_nonce(&body, FUZZ_RESPONSE_NONCE) else {
        unreachable!("the fixed fuzz request does not open")
    };
    let mut response = Vec::new();
    for event in [
        &br#"{"type":"meta","model":"m"}"#[..],
        br#"{"type":"delta","text":"a"}"#,
    ] {
        response.extend(sealer.seal_chunk(event).unwrap_or_default());
    }
    response.extend(
        sealer
            .seal_final(br#"{"type":"done","finish_reason":"stop"}"#)
            .unwrap_or_default(),
    );
    (body, response)
}

/// The server side: open `data` as a sealed chat request and check it.
pub fn open_request(data: &[u8]) {
    let server = fuzz_server_key();
    let guard = ReplayGuard::default();
    if let Ok((plaintext, sealer)) = server.open_with_response_nonce(data, FUZZ_RESPONSE_NONCE) {
        let _ = check_chat_request(&guard, &plaintext, sealer, 1_700_000_000_000);
    }
}

/// The client side: read `data` as the response stream of the fixed request, pushed in
/// pieces whose sizes come from the data's first byte.
pub fn read_response(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let mut opener = fuzz_opener();
    for piece in stream.chunks(usize::from(step).max(1)) {
        if opener.push(piece).is_err() {
            return;
        }
    }
    let _ = opener.finish();
}

#[cfg(test)]
mod tests {
    //! The fuzz bodies on real seeds and cheap deterministic mutations of them.
    use super::*;

    #[test]
    fn the_seeds_are_accepted_whole() {
        let (body, response) = fuzz_seeds();
        let server = fuzz_server_key();
        let (plaintext, _) = server.open(&body).unwrap();
        assert!(plaintext.starts_with(b"{\"ts_ms\""));
        let mut opener = fuzz_opener();
        assert_eq!(opener.push(&response).unwrap().len(), 3);
        opener.finish().unwrap();
    }

    #[test]
    fn fuzz_bodies_survive_mutated_real_data() {
        let (body, response) = fuzz_seeds();
        for seed in [&body, &response] {
            for position in 0..seed.len() {
                for mutation in [0x01u8, 0x80, 0xff] {
                    let mut mutated = seed.to_vec();
                    mutated[position] ^= mutation;
                    open_request(&mutated);
                    let mut with_step = vec![position as u8];
                    with_step.extend_from_slice(&mutated);
                    read_response(&with_step);
                }
                open_request(&seed[..position]);
                let mut cut = vec![3u8];
                cut.extend_from_slice(&seed[..position]);
                read_response(&cut);
            }
        }
        let mut huge_length = vec![200u8];
        huge_length.extend_from_slice(&[0u8; 32]);
        huge_length.extend_from_slice(&[0xff; 16]);
        read_response(&huge_length);
        open_request(&[]);
        read_response(&[]);
    }
}
