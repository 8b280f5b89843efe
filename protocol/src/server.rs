//! The server's one call per request: open the sealed body, parse the inner JSON, and
//! check it against the replay guard, in that order (only authentic requests take room in
//! the guard). It must never log the plaintext it returns.

use crate::channel::{ChannelError, ResponseSealer};
use crate::messages::ChatRequest;
use crate::replay::{ReplayError, ReplayGuard};

/// Why a sealed chat request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("the opened request is not the expected JSON: {0}")]
    InvalidJson(String),
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Opens and checks one sealed chat request at the server's clock `now_ms`.
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub fn open_chat_request(
    key: &crate::channel::ServerKey,
    guard: &ReplayGuard,
    body: &[u8],
    now_ms: u64,
) -> Result<(ChatRequest, ResponseSealer), RequestError> {
    let (plaintext, sealer) = key.open(body)?;
    check_chat_request(guard, &plaintext, sealer, now_ms)
}

/// The checks of [`open_chat_request`] after the body was opened (also for test vectors,
/// which open with a fixed response nonce).
pub fn check_chat_request(
    guard: &ReplayGuard,
    plaintext: &[u8],
    sealer: ResponseSealer,
    now_ms: u64,
) -> Result<(ChatRequest, ResponseSealer), RequestError> {
    // serde's own message may quote the input (a prompt): keep only its kind and position.
    let request: ChatRequest = serde_json::from_slice(plaintext).map_err(|e| {
        RequestError::InvalidJson(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    guard.check(sealer.encapsulated_key(), request.ts_ms, now_ms)?;
    Ok((request, sealer))
}
