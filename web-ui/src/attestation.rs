//! What a browser or `cloister verify` needs to check the box before it says a word:
//! `GET /attestation?nonce=HEX` (a fresh quote binding the channel key, the TLS key and the
//! nonce, with the event log and the collateral), `/measurements.json` (the expected
//! measurements) and `/assets/verifier.wasm` (the verifier). The owner can upload collateral
//! for a TD that cannot fetch it (`POST /api/owner/collateral`).
//!
//! Quotes are expensive: each signed-in user, and each client address without a session,
//! gets a few per minute (a token bucket, refilled smoothly), and only a few are made at once.
//! A nonce asked for again within [`RECENT_BUNDLE_LIFETIME`] is answered from the bundle
//! made for it, free. A bundle made for another nonce is never served: the nonce is what
//! tells the client the quote is fresh (docs/web-ui.md, "Rate limits"). The served certificate can change (ACME renewal); each quote binds the one being
//! served at that moment, and the browser attests again when it sees a different one.
//!
//! This module must never put anything but public values in an answer: the private channel
//! key stays in [`crate::chat::ChatState`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;

use cloister_protocol::attestation::TeeName;
use cloister_tee::TeeKind;

use crate::auth::RateLimiter;
use crate::chat::{ChatSettings, MAX_COLLATERAL_BYTES, serve};
use crate::routes::{AppState, Asset, current_user};
use crate::security::error_response;
use crate::server::ClientAddress;

/// The cached collateral's file name in the state folder.
pub const COLLATERAL_FILE_NAME: &str = "tdx-collateral.json";
/// Longest wait for a free quote slot before answering 503.
pub const QUOTE_SLOT_WAIT: Duration = Duration::from_secs(5);

/// How long a bundle is answered again for the same nonce.
pub const RECENT_BUNDLE_LIFETIME: Duration = Duration::from_secs(300);
/// Recent bundles kept.
const RECENT_BUNDLES: usize = 256;

/// A bundle made recently, kept for a client that asks again with the same nonce.
#[derive(Debug)]
struct RecentBundle {
    nonce: Vec<u8>,
    keys: BoxKeys,
    made: std::time::Instant,
    json: Bytes,
}

/// Rate limits, the collateral cache and the model's name.
#[derive(Debug)]
pub struct AttestationState {
    /// Fresh quotes per signed-in user (`u:` id) or, without a session, per address (`a:`).
    limiter: RateLimiter<String>,
    recent: std::sync::Mutex<std::collections::VecDeque<RecentBundle>>,
    slots: tokio::sync::Semaphore,
    collateral_file: PathBuf,
    collateral: RwLock<Option<Vec<u8>>>,
    model_name: RwLock<Option<String>>,
}

impl AttestationState {
    /// Limits from `settings`; the collateral cached in `state_dir`, if any.
    pub fn new(settings: &ChatSettings, state_dir: &Path) -> Self {
        let collateral_file = state_dir.join(COLLATERAL_FILE_NAME);
        let collateral = std::fs::read(&collateral_file).ok();
        Self {
            limiter: RateLimiter::new(
                settings.attestations_per_minute.max(1),
                Duration::from_secs(60) / settings.attestations_per_minute.max(1),
            ),
            recent: std::sync::Mutex::new(std::collections::VecDeque::new()),
            slots: tokio::sync::Semaphore::new(settings.concurrent_quotes.max(1)),
            collateral_file,
            collateral: RwLock::new(collateral),
            model_name: RwLock::new(None),
        }
    }

    /// The bundle made within [`RECENT_BUNDLE_LIFETIME`] for this nonce and these keys.
    fn recent_bundle(&self, nonce: &[u8], keys: &BoxKeys) -> Option<Bytes> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .find(|b| {
                b.nonce == nonce && b.keys == *keys && b.made.elapsed() < RECENT_BUNDLE_LIFETIME
            })
            .map(|b| b.json.clone())
    }

    fn remember_bundle(&self, nonce: Vec<u8>, keys: BoxKeys, json: Bytes) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|b| b.made.elapsed() < RECENT_BUNDLE_LIFETIME);
        if recent.len() >= RECENT_BUNDLES {
            recent.pop_front();
        }
        recent.push_back(RecentBundle {
            nonce,
            keys,
            made: std::time::Instant::now(),
            json,
        });
    }

    /// The collateral the owner uploaded, if any.
    pub fn cached_collateral(&self) -> Option<Vec<u8>> {
        self.collateral
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stores uploaded collateral (atomically: a temporary file, then a rename).
    fn store_collateral(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let temporary = self.collateral_file.with_extension("json.new");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.collateral_file)?;
        *self.collateral.write().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(())
    }
}

/// The attestation routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/attestation", get(attestation))
        .route("/measurements.json", get(measurements))
        .route("/assets/verifier.wasm", get(verifier_wasm))
        .route(
            HPKE_PATH,
            get(|s: State<Arc<AppState>>| async move { serve(&s.chat.channel_assets.hpke) }),
        )
        .route(
            CHANNEL_PATH,
            get(|s: State<Arc<AppState>>| async move { serve(&s.chat.channel_assets.channel) }),
        )
        .route(
            VERIFY_PATH,
            get(|s: State<Arc<AppState>>| async move { serve(&s.chat.channel_assets.verify) }),
        )
        .route(
            "/api/owner/collateral",
            post(upload_collateral).layer(DefaultBodyLimit::max(MAX_COLLATERAL_BYTES)),
        )
}

/// The modules other parts ship for the chat page, compiled in like every asset.
#[derive(Debug, Clone)]
pub struct ChannelAssets {
    /// The vendored `@hpke/core` (`assets/vendor/`).
    pub hpke: Asset,
    /// `assets/channel.js`: sealing requests, opening answers.
    pub channel: Asset,
    /// `assets/verify.js`: the verifier's browser side.
    pub verify: Asset,
}

/// Where [`ChannelAssets`] are served.
pub const HPKE_PATH: &str = "/assets/vendor/hpke-core-1.9.0.js";
/// Where `channel.js` is served.
pub const CHANNEL_PATH: &str = "/assets/channel.js";
/// Where `verify.js` is served.
pub const VERIFY_PATH: &str = "/assets/verify.js";

impl Default for ChannelAssets {
    fn default() -> Self {
        const JS: &str = "text/javascript; charset=utf-8";
        Self {
            hpke: Asset::new(include_bytes!("../assets/vendor/hpke-core-1.9.0.js"), JS),
            channel: Asset::new(include_bytes!("../assets/channel.js"), JS),
            verify: Asset::new(include_bytes!("../assets/verify.js"), JS),
        }
    }
}

/// Module scripts other parts ship for the chat page, in load order (dependencies first):
/// (path, integrity).
pub fn module_scripts(state: &AppState) -> Vec<(&'static str, String)> {
    let assets = &state.chat.channel_assets;
    vec![
        (HPKE_PATH, assets.hpke.integrity.clone()),
        (CHANNEL_PATH, assets.channel.integrity.clone()),
        (VERIFY_PATH, assets.verify.integrity.clone()),
    ]
}

/// The nonce of `nonce=HEX` in a query string.
pub fn parse_nonce(query: Option<&str>) -> Option<Vec<u8>> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("nonce="))?;
    cloister_protocol::attestation::parse_nonce_hex(value).ok()
}

/// The name of the model model-runner serves (asked once, then remembered; empty when it
/// cannot be asked).
pub(crate) async fn model_name(state: &AppState) -> String {
    let attestation = &state.chat.attestation;
    if let Some(name) = attestation
        .model_name
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        return name;
    }
    let Some(model) = &state.chat.model else {
        return String::new();
    };
    match model.model_name().await {
        Some(name) => {
            *attestation
                .model_name
                .write()
                .unwrap_or_else(|p| p.into_inner()) = Some(name.clone());
            name
        }
        None => String::new(),
    }
}

/// The box's public keys that its attestation binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxKeys {
    /// The channel's HPKE public key (X25519), made at start, only in memory.
    pub hpke_public_key: [u8; 32],
    /// The channel key's id.
    pub hpke_key_id: u8,
    /// SHA-256 of the served certificate's public key (DER SubjectPublicKeyInfo).
    pub tls_spki_sha256: [u8; 32],
}

/// Why the TEE gave no evidence for a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The TEE refused a quote, its event log or its collateral.
    #[error("the TEE refused: {0}")]
    Tee(#[from] cloister_tee::TeeError),
    /// The blocking task that asked the TEE panicked or was cancelled.
    #[error("the request to the TEE did not finish")]
    Interrupted,
}

/// The SHA-256 of the served certificate's public key, from the resolver's facts.
pub fn served_spki_sha256(state: &AppState) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(&state.resolver.facts().spki_sha256_base64)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

/// The box's attestation bundle for `nonce`, exactly as `GET /attestation` serves it: a
/// fresh quote from `tee` whose report data binds `keys` and the nonce, the event log, and
/// the collateral (the TEE's own, else `cached_collateral`). Asks the TEE on the blocking
/// pool. Used by the route and by the owner console's self-check, so that the console
/// verifies what clients are served.
pub async fn make_bundle(
    tee: Arc<dyn cloister_tee::Tee>,
    keys: &BoxKeys,
    nonce: Vec<u8>,
    cached_collateral: Option<Vec<u8>>,
    model: String,
) -> Result<cloister_protocol::attestation::Bundle, BundleError> {
    let report_data =
        cloister_protocol::report_data(&keys.hpke_public_key, &keys.tls_spki_sha256, &nonce);
    let (kind, quote, event_log, collateral) = tokio::task::spawn_blocking(move || {
        let quote = tee.quote(&report_data)?;
        let event_log = tee.event_log()?;
        let collateral = tee.collateral()?;
        Ok::<_, cloister_tee::TeeError>((tee.kind(), quote, event_log, collateral))
    })
    .await
    .map_err(|_| BundleError::Interrupted)??;
    let collateral = collateral
        .or(cached_collateral)
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    Ok(cloister_protocol::attestation::Bundle {
        version: cloister_protocol::attestation::BUNDLE_VERSION,
        tee: match kind {
            TeeKind::Tdx => TeeName::Tdx,
            TeeKind::Simulated => TeeName::Simulated,
        },
        quote,
        event_log,
        collateral,
        hpke_public_key: keys.hpke_public_key.to_vec(),
        hpke_key_id: keys.hpke_key_id,
        tls_spki_sha256: keys.tls_spki_sha256,
        nonce,
        model,
    })
}

async fn attestation(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientAddress>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(nonce) = parse_nonce(query.as_deref()) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "nonce must be 16 to 64 bytes of hex",
        );
    };
    let chat = &state.chat;
    let tee = match &chat.tee {
        Ok(tee) => tee.clone(),
        Err(_) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "this box has no TEE to attest with",
            );
        }
    };
    let Some(spki) = served_spki_sha256(&state) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "no certificate key");
    };
    let keys = BoxKeys {
        hpke_public_key: *chat.server_key.public_key(),
        hpke_key_id: chat.server_key.key_id(),
        tls_spki_sha256: spki,
    };
    if let Some(json) = chat.attestation.recent_bundle(&nonce, &keys) {
        return bundle_answer(json);
    }
    // Signed-in users spend their own budget, which nobody else can spend; the rest share
    // their address's.
    let budget = match current_user(&state, &headers).await {
        Some(user) => format!("u:{}", hex::encode(user.id)),
        None => format!("a:{}", client.0.ip()),
    };
    if !chat.attestation.limiter.allow(budget.clone()) {
        ATTESTATIONS_LIMITED.record();
        let wait = chat.attestation.limiter.wait_for(&budget);
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too many attestations; wait a moment",
        );
        let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        if let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let Ok(Ok(_slot)) =
        tokio::time::timeout(QUOTE_SLOT_WAIT, chat.attestation.slots.acquire()).await
    else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the box is busy; try again",
        );
    };
    let model = model_name(&state).await;
    let cached = chat.attestation.cached_collateral();
    let bundle = match make_bundle(tee, &keys, nonce.clone(), cached, model).await {
        Ok(bundle) => bundle,
        Err(error) => {
            tracing::error!(error = %error, "the TEE could not make a quote");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the TEE could not make a quote",
            );
        }
    };
    let json = match serde_json::to_vec(&bundle) {
        Ok(json) => Bytes::from(json),
        Err(_) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the bundle",
            );
        }
    };
    chat.attestation.remember_bundle(nonce, keys, json.clone());
    bundle_answer(json)
}

/// Attestations refused by the rate limit, for the log's summary.
static ATTESTATIONS_LIMITED: crate::security::RepeatedEvent =
    crate::security::RepeatedEvent::new("attestations rate-limited");

fn bundle_answer(json: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        json,
    )
        .into_response()
}

async fn measurements(State(state): State<Arc<AppState>>) -> Response {
    match &state.chat.expected_measurements {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            "no expected measurements are configured",
        ),
    }
}

async fn verifier_wasm(State(state): State<Arc<AppState>>) -> Response {
    match &state.chat.verifier_wasm {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "application/wasm"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => error_response(StatusCode::NOT_FOUND, "the verifier is not installed"),
    }
}

async fn upload_collateral(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match current_user(&state, &headers).await {
        Some(user) if user.is_owner => {}
        Some(_) => return error_response(StatusCode::FORBIDDEN, "owner only"),
        None => return error_response(StatusCode::UNAUTHORIZED, "sign in first"),
    }
    if serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| !v.is_object())
        .unwrap_or(true)
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the collateral must be a JSON object",
        );
    }
    match state.chat.attestation.store_collateral(body.to_vec()) {
        Ok(()) => {
            tracing::info!("the owner uploaded TDX collateral");
            Json(serde_json::json!({"ok": true})).into_response()
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot store the collateral");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the box could not store this",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_hex_of_bounded_length() {
        let good = "ab".repeat(16);
        assert_eq!(
            parse_nonce(Some(&format!("nonce={good}"))),
            Some(vec![0xab; 16])
        );
        assert_eq!(
            parse_nonce(Some(&format!("x=1&nonce={}", "01".repeat(64)))),
            Some(vec![1; 64])
        );
        assert_eq!(
            parse_nonce(Some(&format!("nonce={}", "ab".repeat(15)))),
            None
        );
        assert_eq!(
            parse_nonce(Some(&format!("nonce={}", "ab".repeat(65)))),
            None
        );
        assert_eq!(parse_nonce(Some("nonce=zz")), None);
        assert_eq!(parse_nonce(None), None);
    }
}
