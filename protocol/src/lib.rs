//! The end-to-end channel between the browser and the TD: attestation report data,
//! HPKE-sealed requests and chunked sealed responses.
//!
//! Pure logic, no I/O: the server (web-ui inside the TD) and the clients (`cloister verify`,
//! tests, and the same layout in the browser's `channel.js`) share this one definition.
//! The byte layouts are specified in `docs/protocol.md`; `protocol/vectors/v1.json` pins them.
//!
//! This crate must never log, store or print plaintext, keys or secrets, and must never panic
//! on bytes from outside: every parser returns a typed error.
//!
//! Map:
//! - [`report_data()`]: the 64 bytes a quote binds (HPKE key, TLS key, nonce).
//! - [`attestation::Bundle`]: the JSON body of `GET /attestation?nonce=HEX`.
//! - [`channel`]: [`ServerKey`], [`seal_request`], [`ResponseSealer`], [`ResponseOpener`].
//! - [`replay::ReplayGuard`]: refuses a sealed request seen before or stamped too far from now.
//! - [`messages`]: the inner JSON of a request and the events of a response.
//! - [`server`]: [`server::open_chat_request`], which puts those together for the server.
//! - `tls` (feature `rustls`): the clients' attestation-bound certificate verifier and the
//!   certificate key hash that report data binds.
#![forbid(unsafe_code)]

pub mod attestation;
pub mod channel;
pub mod fuzzing;
pub mod messages;
pub mod replay;
mod report_data;
pub mod server;
#[cfg(feature = "rustls")]
pub mod tls;
mod varint;
pub mod vectors;

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub use channel::seal_request;
pub use channel::{
    AEAD_ID, ChannelError, Chunk, ENCAPSULATED_KEY_BYTES, KDF_ID, KEM_ID,
    MAX_CHUNK_PLAINTEXT_BYTES, MAX_REQUEST_BODY_BYTES, MAX_REQUEST_PLAINTEXT_BYTES,
    PUBLIC_KEY_BYTES, REQUEST_HEADER_BYTES, RESPONSE_NONCE_BYTES, RequestHeader, ResponseOpener,
    ResponseSealer, ServerKey, seal_request_with_seed,
};
pub use messages::{ChatRequest, FinishReason, ResponseEvent, Usage};
pub use replay::{REPLAY_WINDOW_DEFAULT_MS, ReplayError, ReplayGuard};
pub use report_data::{REPORT_DATA_DOMAIN_TAG, report_data};
