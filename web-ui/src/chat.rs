//! The attested chat's server side: its settings, the state it shares, its routes (the chat
//! page and its assets, `/api/chat`, the history API, the owner's chat settings) and the
//! simulation mark on every answer. `/attestation` and what it serves beside it live in
//! [`crate::attestation`]; the stored history in [`crate::history`].
//!
//! `/api/chat` takes a request sealed to the TD's HPKE key (made at start, kept only in
//! memory), forwards the inner OpenAI request to model-runner and streams the answer back
//! sealed, chunk by chunk, the last chunk marked (docs/protocol.md). The plaintext exists
//! only inside this process and model-runner: this module must never log it, store it, or
//! put it in an error answer. Errors about the content go back sealed, to the user only.

// Helpers return `Result<_, Response>` so a handler can answer early.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use cloister_tee::{Tee, TeeKind};
use serde::Deserialize;

use crate::api::{self, BodyError};
use crate::attestation;
use crate::clock::now_s;
use crate::history::{History, HistoryError, HistoryPolicy, WrappedKey};
use crate::model_client::{ModelClient, ModelError, ModelRunnerAddress, is_last};
use crate::pages::{self, Frame, escape};
use crate::routes::{AppState, Asset, CsrfToken, current_user};
use crate::security::error_response;
use crate::store::User;
use cloister_protocol::ResponseEvent;

/// The header every answer carries under simulation.
pub const TEE_HEADER: &str = "x-cloister-tee";
/// Its value.
pub const SIMULATED_MARK: &str = "SIMULATED, not confidential";
/// The media type of a sealed chat request body.
pub const SEALED_REQUEST_TYPE: &str = "message/cloister-chat-req";
/// The media type of a sealed chat answer stream.
pub const SEALED_RESPONSE_TYPE: &str = "message/cloister-chat-res";
/// The chat page's CSP: the site's, plus WebAssembly compilation for the verifier (no
/// JavaScript eval).
pub const CHAT_PAGE_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Largest sealed chat request, in bytes.
pub const MAX_CHAT_BODY_BYTES: usize = 1024 * 1024 + 1024;
/// Largest history write (two base64 blobs of the largest bucket, in JSON).
pub const MAX_HISTORY_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Largest collateral upload.
pub const MAX_COLLATERAL_BYTES: usize = 1024 * 1024;
/// Sealed answer chunks buffered between model-runner and the browser.
const ANSWER_BUFFER_CHUNKS: usize = 32;

/// Which TEE backend the box uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeChoice {
    /// Intel TDX (the default).
    Tdx,
    /// The simulation: NOT confidential; only in builds with the `simulated-tee` feature.
    Simulated,
}

/// The chat's settings.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Which TEE to ask for quotes.
    pub tee: TeeChoice,
    /// The image's published `measurements.json`, served at `/measurements.json` (and, under
    /// simulation, the measurements the simulated TD claims).
    pub expected_measurements: Option<PathBuf>,
    /// The verifier compiled to WebAssembly, served at `/assets/verifier.wasm`.
    pub verifier_wasm: Option<PathBuf>,
    /// Where model-runner listens; without it the chat answers that no model is configured.
    pub model_runner: Option<ModelRunnerAddress>,
    /// Attestations one client address may ask for per minute (quotes are expensive).
    pub attestations_per_minute: u32,
    /// Quotes made at once, all clients together.
    pub concurrent_quotes: usize,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            tee: TeeChoice::Tdx,
            expected_measurements: None,
            verifier_wasm: None,
            model_runner: None,
            attestations_per_minute: 30,
            concurrent_quotes: 2,
        }
    }
}

/// Why the chat could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// `--tee simulated` in a build without the simulation.
    #[error(
        "this build has no simulated TEE (it is compiled out of production builds); build web-ui with --features simulated-tee for development"
    )]
    SimulationNotBuilt,
    /// The simulation needs the measurements it should claim.
    #[error("--tee simulated needs --expected-measurements FILE")]
    SimulationNeedsMeasurements,
    /// A configured file could not be read.
    #[error("cannot read {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The simulated TEE refused its input.
    #[error("the TEE could not start: {0}")]
    Tee(#[from] cloister_tee::TeeError),
    /// The history database could not be opened.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The channel key could not be made.
    #[error("cannot make the channel key")]
    Key,
}

/// The chat's compiled-in assets.
#[derive(Debug, Clone)]
pub struct ChatAssets {
    /// `assets/chat.js`, the chat page's module.
    pub chat: Asset,
    /// `assets/markdown.js`, the safe Markdown renderer.
    pub markdown: Asset,
    /// `assets/history.js`, history encryption.
    pub history: Asset,
    /// `assets/chat.css`.
    pub style: Asset,
}

impl Default for ChatAssets {
    fn default() -> Self {
        const JS: &str = "text/javascript; charset=utf-8";
        Self {
            chat: Asset::new(include_bytes!("../assets/chat.js"), JS),
            markdown: Asset::new(include_bytes!("../assets/markdown.js"), JS),
            history: Asset::new(include_bytes!("../assets/history.js"), JS),
            style: Asset::new(
                include_bytes!("../assets/chat.css"),
                "text/css; charset=utf-8",
            ),
        }
    }
}

/// What the chat's handlers share (inside [`AppState`]).
pub struct ChatState {
    /// The TEE, or why there is none (the chat then refuses, the rest of the site works).
    pub tee: Result<Arc<dyn Tee>, String>,
    /// The channel key: made at start, only in memory.
    pub server_key: cloister_protocol::ServerKey,
    replay: cloister_protocol::ReplayGuard,
    /// model-runner, when configured.
    pub model: Option<ModelClient>,
    /// The expected measurements file's bytes.
    pub expected_measurements: Option<Vec<u8>>,
    /// The verifier's WebAssembly bytes.
    pub verifier_wasm: Option<Vec<u8>>,
    /// Quotes and collateral.
    pub attestation: attestation::AttestationState,
    /// Stored history (reach it through [`History::call`] from async code).
    pub history: Arc<History>,
    user_salt_key: ring::hmac::Key,
    /// Compiled-in assets.
    pub assets: ChatAssets,
    /// The channel's browser modules (the protocol's).
    pub channel_assets: attestation::ChannelAssets,
}

impl std::fmt::Debug for ChatState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatState")
            .field(
                "tee",
                &self.tee.as_ref().map(|t| t.kind()).map_err(|e| e.as_str()),
            )
            .field("server_key", &self.server_key)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Reads an optional file: one that does not exist is `None`, with a warning (a box booted
/// without its host passing the expected measurements still serves, and the page says the
/// box names no measurements); any other failure is an error.
fn read_optional_file(path: &Path) -> Result<Option<Vec<u8>>, ChatError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "not found: serving without it");
            Ok(None)
        }
        Err(source) => Err(ChatError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(feature = "simulated-tee")]
fn simulated_tee(measurements: &[u8]) -> Result<Arc<dyn Tee>, ChatError> {
    Ok(Arc::new(cloister_tee::simulated::SimulatedTee::new(
        measurements,
    )?))
}

#[cfg(not(feature = "simulated-tee"))]
fn simulated_tee(_measurements: &[u8]) -> Result<Arc<dyn Tee>, ChatError> {
    Err(ChatError::SimulationNotBuilt)
}

/// Whether this build can simulate a TEE.
pub const SIMULATION_BUILT: bool = cfg!(feature = "simulated-tee");

impl ChatState {
    /// Sets the chat up: reads the configured files, opens the TEE and the history, makes the
    /// channel key. A missing TDX device is not an error (the chat then refuses, saying why);
    /// a simulation that cannot start is.
    pub fn new(settings: &ChatSettings, state_dir: &Path) -> Result<Self, ChatError> {
        let expected_measurements = settings
            .expected_measurements
            .as_deref()
            .map(read_optional_file)
            .transpose()?
            .flatten();
        let verifier_wasm = settings
            .verifier_wasm
            .as_deref()
            .map(read_optional_file)
            .transpose()?
            .flatten();
        let tee: Result<Arc<dyn Tee>, String> = match settings.tee {
            TeeChoice::Simulated => {
                let measurements = expected_measurements
                    .as_deref()
                    .ok_or(ChatError::SimulationNeedsMeasurements)?;
                let tee = simulated_tee(measurements)?;
                tracing::warn!("the TEE is SIMULATED: nothing here is confidential");
                Ok(tee)
            }
            TeeChoice::Tdx => match cloister_tee::tdx::TdxTee::open() {
                Ok(tee) => Ok(Arc::new(tee) as Arc<dyn Tee>),
                Err(error) => {
                    tracing::warn!(error = %error, "no TDX: the chat will refuse to start conversations");
                    Err(error.to_string())
                }
            },
        };
        let server_key = cloister_protocol::ServerKey::generate().map_err(|_| ChatError::Key)?;
        let mut salt = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| ChatError::Key)?;
        Ok(Self {
            tee,
            server_key,
            replay: cloister_protocol::ReplayGuard::default(),
            model: settings.model_runner.clone().map(ModelClient::new),
            expected_measurements,
            verifier_wasm,
            attestation: attestation::AttestationState::new(settings, state_dir),
            history: Arc::new(History::open(state_dir)?),
            user_salt_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salt),
            assets: ChatAssets::default(),
            channel_assets: attestation::ChannelAssets::default(),
        })
    }

    /// Whether the TEE is the simulation (then every page and answer says so).
    pub fn is_simulated(&self) -> bool {
        matches!(&self.tee, Ok(tee) if tee.kind() == TeeKind::Simulated)
    }

    /// The prefix-cache salt model-runner gets for `user`: keyed by a secret made at start,
    /// so it names nobody outside this process and differs between users.
    pub fn user_salt(&self, user: &User) -> String {
        let tag = ring::hmac::sign(&self.user_salt_key, &user.id);
        hex::encode(&tag.as_ref()[..16])
    }
}

type Shared = State<Arc<AppState>>;

/// The chat's routes, merged into the HTTPS router (so they get its CSRF check, session
/// rotation and security headers).
pub fn chat_routes() -> Router<Arc<AppState>> {
    let history = Router::new()
        .route("/api/history", get(history_list))
        .route("/api/history/keys", get(keys_list).post(keys_put))
        .route("/api/history/delete-all", post(history_delete_all))
        .route("/api/history/{id}", get(history_get).post(history_put))
        .route("/api/history/{id}/delete", post(history_delete))
        .layer(DefaultBodyLimit::max(MAX_HISTORY_BODY_BYTES));
    Router::new()
        .route("/chat", get(chat_page))
        .route(
            "/assets/chat.js",
            get(|s: Shared| async move { serve(&s.chat.assets.chat) }),
        )
        .route(
            "/assets/markdown.js",
            get(|s: Shared| async move { serve(&s.chat.assets.markdown) }),
        )
        .route(
            "/assets/history.js",
            get(|s: Shared| async move { serve(&s.chat.assets.history) }),
        )
        .route(
            "/assets/chat.css",
            get(|s: Shared| async move { serve(&s.chat.assets.style) }),
        )
        .route(
            "/api/chat",
            post(chat_api).layer(DefaultBodyLimit::max(MAX_CHAT_BODY_BYTES)),
        )
        .route("/api/owner/chat-settings", post(owner_chat_settings))
        .merge(history)
        .merge(attestation::routes())
}

/// Serves a compiled-in asset.
pub fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}

/// Middleware: under simulation, marks every answer with [`TEE_HEADER`].
pub async fn simulation_header(State(state): Shared, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if state.chat.is_simulated() {
        response
            .headers_mut()
            .insert(TEE_HEADER, HeaderValue::from_static(SIMULATED_MARK));
    }
    response
}

fn database_error(error: HistoryError) -> Response {
    match error {
        HistoryError::BadSize => error_response(
            StatusCode::BAD_REQUEST,
            "the blob is not one of the allowed sizes",
        ),
        HistoryError::BadId => error_response(StatusCode::NOT_FOUND, "no such conversation"),
        HistoryError::Full => {
            error_response(StatusCode::INSUFFICIENT_STORAGE, "the history is full")
        }
        other => {
            tracing::error!(error = %other, "history database error");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the box could not store this",
            )
        }
    }
}

async fn user_or_401(state: &Arc<AppState>, headers: &HeaderMap) -> Result<User, Response> {
    current_user(state, headers)
        .await
        .ok_or_else(|| error_response(StatusCode::UNAUTHORIZED, "sign in first"))
}

fn body_error(error: BodyError) -> Response {
    match error {
        BodyError::TooLarge => {
            error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        _ => error_response(StatusCode::BAD_REQUEST, "the request body is not valid"),
    }
}

/// Parses a JSON body of any size the route allows (history blobs are larger than the
/// site's usual cap); the error text never quotes the input.
fn parse_large<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let text = std::str::from_utf8(body).map_err(|_| body_error(BodyError::Malformed))?;
    serde_json::from_str(text).map_err(|_| body_error(BodyError::Malformed))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, Response> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| body_error(BodyError::Malformed))
}

// ---- the page -------------------------------------------------------------------------

/// The chat page's body: the verification panel first, then the conversations.
pub fn chat_body(user: &User, policy: HistoryPolicy, simulated: bool) -> String {
    let owner_settings = if user.is_owner {
        format!(
            "<section id=\"owner-chat-settings\"><h2>History settings (owner)</h2>\
<form id=\"history-policy-form\"><label><input type=\"checkbox\" id=\"policy-allowed\"{}> \
People may keep an encrypted history</label><label><input type=\"checkbox\" id=\"policy-ephemeral\"{}> \
New conversations are ephemeral by default</label><button type=\"submit\">Save</button></form></section>",
            if policy.allowed { " checked" } else { "" },
            if policy.default_ephemeral {
                " checked"
            } else {
                ""
            },
        )
    } else {
        String::new()
    };
    format!(
        "<div id=\"chat-app\" data-history-allowed=\"{allowed}\" data-default-ephemeral=\"{ephemeral}\" \
data-simulated=\"{simulated}\" data-user=\"{user}\">\
<section id=\"verification\" class=\"panel\" aria-live=\"polite\"><h2>Is this box what it claims to be?</h2>\
<p id=\"verify-status\" class=\"pending\">Checking the box's attestation before anything is sent…</p>\
<div id=\"verify-checks\"></div>\
<details id=\"verify-details\"><summary>Values</summary><pre id=\"verify-values\"></pre></details>\
<button type=\"button\" id=\"verify-again\">Check again</button></section>\
<div class=\"chat-layout\"><aside id=\"conversations-panel\">\
<button type=\"button\" id=\"new-conversation\">New conversation</button>\
<ul id=\"conversations\"></ul><p id=\"history-state\"></p>\
<button type=\"button\" id=\"unlock-history\" hidden>Unlock the history with another passkey</button>\
<button type=\"button\" id=\"export-history\">Export all as JSON</button>\
<button type=\"button\" id=\"delete-history\">Delete all history</button></aside>\
<section id=\"conversation\"><p class=\"model\">Model: <span id=\"model-name\">not known yet</span></p>\
<div id=\"thread\" aria-live=\"polite\"></div>\
<form id=\"composer\"><label for=\"prompt\">Your message</label>\
<textarea id=\"prompt\" rows=\"4\" maxlength=\"100000\" required></textarea>\
<div class=\"composer-actions\"><label><input type=\"checkbox\" id=\"ephemeral\"> Ephemeral (not saved)</label>\
<button type=\"submit\" id=\"send\" disabled>Send</button>\
<button type=\"button\" id=\"stop\" disabled>Stop</button>\
<button type=\"button\" id=\"regenerate\" disabled>Regenerate</button>\
<button type=\"button\" id=\"delete-conversation\" disabled>Delete this conversation</button></div></form>\
<p id=\"chat-error\" role=\"alert\"></p></section></div>{owner_settings}</div>",
        allowed = policy.allowed,
        ephemeral = policy.default_ephemeral,
        user = escape(&hex::encode(user.id)),
    )
}

async fn chat_page(
    State(state): Shared,
    Extension(csrf): Extension<CsrfToken>,
    headers: HeaderMap,
) -> Response {
    let Some(user) = current_user(&state, &headers).await else {
        return Redirect::to("/").into_response();
    };
    let policy = history_policy(&state).await;
    let simulated = state.chat.is_simulated();
    let certificate = state.resolver.facts();
    let assets = &state.chat.assets;
    // Dependencies first: a module imported by a later one is then already in the module
    // map, fetched with its integrity hash.
    let mut head = format!(
        "<link rel=\"stylesheet\" href=\"/assets/chat.css\" integrity=\"{}\">\
<script type=\"module\" src=\"/assets/markdown.js\" integrity=\"{}\"></script>\
<script type=\"module\" src=\"/assets/history.js\" integrity=\"{}\"></script>",
        escape(&assets.style.integrity),
        escape(&assets.markdown.integrity),
        escape(&assets.history.integrity),
    );
    for (path, integrity) in attestation::module_scripts(&state) {
        head.push_str(&format!(
            "<script type=\"module\" src=\"{}\" integrity=\"{}\"></script>",
            escape(path),
            escape(&integrity)
        ));
    }
    head.push_str(&format!(
        "<script type=\"module\" src=\"/assets/chat.js\" integrity=\"{}\"></script>",
        escape(&assets.chat.integrity)
    ));
    let frame = Frame {
        page: "chat",
        title: "Chat",
        csrf_token: &csrf.0,
        certificate: &certificate,
        script_integrity: &state.assets.script.integrity,
        style_integrity: &state.assets.style.integrity,
        user: Some(&user),
        simulated,
        extra_head: &head,
    };
    let mut response =
        Html(pages::page(&frame, &chat_body(&user, policy, simulated))).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CHAT_PAGE_CSP),
    );
    response
}

// ---- /api/chat ------------------------------------------------------------------------

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn chat_api(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let chat = &state.chat;
    if chat.tee.is_err() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "this box cannot attest, so it does not chat",
        );
    }
    let Some(model) = chat.model.clone() else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no model is configured");
    };
    let opened = cloister_protocol::server::open_chat_request(
        &chat.server_key,
        &chat.replay,
        &body,
        now_ms(),
    );
    let (request, mut sealer) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            // The error names what failed (a replay, a stale stamp, a bad seal), never content.
            tracing::info!(error = %error, "a sealed chat request was refused");
            return error_response(
                StatusCode::BAD_REQUEST,
                "the sealed request could not be opened",
            );
        }
    };
    let Some(openai) = request.request.as_object().cloned() else {
        let last = ResponseEvent::Error {
            message: "the request must be a chat completion object".to_owned(),
        };
        return match sealer.seal_final(&last.to_json_bytes()) {
            Ok(bytes) => sealed_answer(Body::from(bytes)),
            Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "sealing failed"),
        };
    };
    let salt = chat.user_salt(&user);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(ANSWER_BUFFER_CHUNKS);
    tokio::spawn(async move {
        // Returns (dropping the stream and with it model-runner's connection, which cancels
        // the generation) as soon as the browser is gone.
        let mut stream = match model.chat(openai, &salt).await {
            Ok(stream) => stream,
            Err(error) => {
                let message = match error {
                    ModelError::Refused { message, .. } => message,
                    other => other.to_string(),
                };
                let last = ResponseEvent::Error { message };
                if let Ok(bytes) = sealer.seal_final(&last.to_json_bytes()) {
                    let _ = sender.send(bytes).await;
                }
                return;
            }
        };
        loop {
            let chunk = tokio::select! {
                chunk = stream.next() => chunk,
                () = sender.closed() => return,
            };
            let chunk = chunk.unwrap_or(ResponseEvent::Error {
                message: "the model's answer broke off".to_owned(),
            });
            if is_last(&chunk) {
                if let Ok(bytes) = sealer.seal_final(&chunk.to_json_bytes()) {
                    let _ = sender.send(bytes).await;
                }
                return;
            }
            let Ok(bytes) = sealer.seal_chunk(&chunk.to_json_bytes()) else {
                return;
            };
            if sender.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let bytes = receiver.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(bytes)),
            receiver,
        ))
    });
    sealed_answer(Body::from_stream(stream))
}

fn sealed_answer(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, SEALED_RESPONSE_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

// ---- history API ----------------------------------------------------------------------

/// The owner's history policy, read off the async workers (the default if it cannot be
/// read).
async fn history_policy(state: &AppState) -> HistoryPolicy {
    state
        .chat
        .history
        .call(|h| h.policy())
        .await
        .unwrap_or_default()
}

async fn history_list(State(state): Shared, headers: HeaderMap) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let id = user.id;
    let listed = state
        .chat
        .history
        .call(move |h| Ok((h.policy().unwrap_or_default(), h.list(&id)?)))
        .await;
    match listed {
        Ok((policy, list)) => Json(serde_json::json!({
            "allowed": policy.allowed,
            "default_ephemeral": policy.default_ephemeral,
            "buckets": crate::history::BUCKET_SIZES_BYTES,
            "conversations": list.iter().map(|c| serde_json::json!({
                "id": c.id, "updated_at_s": c.updated_at_s, "meta": b64(&c.meta),
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(error) => database_error(error),
    }
}

async fn history_get(
    State(state): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let (user_id, wanted) = (user.id, id.clone());
    let found = state
        .chat
        .history
        .call(move |h| h.get(&user_id, &wanted))
        .await;
    match found {
        Ok(Some((updated_at_s, meta, body))) => Json(serde_json::json!({
            "id": id, "updated_at_s": updated_at_s, "meta": b64(&meta), "body": b64(&body),
        }))
        .into_response(),
        Ok(None) => error_response(StatusCode::NOT_FOUND, "no such conversation"),
        Err(error) => database_error(error),
    }
}

/// `POST /api/history/{id}`: both blobs, base64.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutConversation {
    meta: String,
    body: String,
}

async fn history_put(
    State(state): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    if !history_policy(&state).await.allowed {
        return error_response(
            StatusCode::FORBIDDEN,
            "the owner does not allow keeping history on this box",
        );
    }
    let put: PutConversation = match parse_large(&body) {
        Ok(put) => put,
        Err(response) => return response,
    };
    let (meta, blob) = match (unb64(&put.meta), unb64(&put.body)) {
        (Ok(meta), Ok(blob)) => (meta, blob),
        _ => return body_error(BodyError::Malformed),
    };
    let user_id = user.id;
    let now = now_s();
    let stored = state
        .chat
        .history
        .call(move |h| h.put(&user_id, &id, &meta, &blob, now))
        .await;
    match stored {
        Ok(()) => Json(serde_json::json!({"ok": true})).into_response(),
        Err(error) => database_error(error),
    }
}

async fn history_delete(
    State(state): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let user_id = user.id;
    let deleted = state
        .chat
        .history
        .call(move |h| h.delete(&user_id, &id))
        .await;
    match deleted {
        Ok(true) => Json(serde_json::json!({"ok": true})).into_response(),
        Ok(false) => error_response(StatusCode::NOT_FOUND, "no such conversation"),
        Err(error) => database_error(error),
    }
}

async fn history_delete_all(State(state): Shared, headers: HeaderMap) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let user_id = user.id;
    let deleted = state
        .chat
        .history
        .call(move |h| h.delete_all(&user_id))
        .await;
    match deleted {
        Ok(deleted) => Json(serde_json::json!({"ok": true, "deleted": deleted})).into_response(),
        Err(error) => database_error(error),
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The credential ids of the user's registered passkeys (off the async workers).
async fn passkeys_of(state: &Arc<AppState>, user: &User) -> Vec<Vec<u8>> {
    let id = user.id;
    state
        .store
        .call(move |store| store.passkeys_of(&id))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.credential_id)
        .collect()
}

async fn keys_list(State(state): Shared, headers: HeaderMap) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    // Only keys of passkeys the user still has: a revoked passkey's copy is useless and
    // is not handed out.
    let live: Vec<Vec<u8>> = passkeys_of(&state, &user).await;
    let user_id = user.id;
    let keys = state
        .chat
        .history
        .call(move |h| h.wrapped_keys(&user_id))
        .await;
    match keys {
        Ok(keys) => Json(serde_json::json!({
            "passkeys": live.iter().map(|id| b64url(id)).collect::<Vec<_>>(),
            "keys": keys.iter().filter(|k| live.contains(&k.credential_id)).map(|k| serde_json::json!({
                "credential_id": b64url(&k.credential_id), "wrapped": b64(&k.wrapped),
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(error) => database_error(error),
    }
}

/// `POST /api/history/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutKey {
    /// base64url, as `PublicKeyCredential.id`.
    credential_id: String,
    /// base64.
    wrapped: String,
}

async fn keys_put(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let user = match user_or_401(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let put: PutKey = match api::parse_body(&body) {
        Ok(put) => put,
        Err(error) => return body_error(error),
    };
    let Ok(credential_id) = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(put.credential_id.trim_end_matches('='))
    else {
        return body_error(BodyError::Malformed);
    };
    let wrapped = match unb64(&put.wrapped) {
        Ok(wrapped) => wrapped,
        Err(response) => return response,
    };
    let owns = passkeys_of(&state, &user).await.contains(&credential_id);
    if !owns {
        return error_response(StatusCode::FORBIDDEN, "that passkey is not yours");
    }
    let key = WrappedKey {
        credential_id,
        wrapped,
    };
    let user_id = user.id;
    let now = now_s();
    let stored = state
        .chat
        .history
        .call(move |h| h.put_wrapped_key(&user_id, &key, now))
        .await;
    match stored {
        Ok(()) => Json(serde_json::json!({"ok": true})).into_response(),
        Err(error) => database_error(error),
    }
}

/// `POST /api/owner/chat-settings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatSettingsBody {
    history_allowed: bool,
    default_ephemeral: bool,
}

async fn owner_chat_settings(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    match current_user(&state, &headers).await {
        Some(user) if user.is_owner => {}
        Some(_) => return error_response(StatusCode::FORBIDDEN, "owner only"),
        None => return error_response(StatusCode::UNAUTHORIZED, "sign in first"),
    }
    let settings: ChatSettingsBody = match api::parse_body(&body) {
        Ok(settings) => settings,
        Err(error) => return body_error(error),
    };
    let policy = HistoryPolicy {
        allowed: settings.history_allowed,
        default_ephemeral: settings.default_ephemeral,
    };
    match state.chat.history.call(move |h| h.set_policy(policy)).await {
        Ok(()) => {
            tracing::info!(
                history_allowed = policy.allowed,
                default_ephemeral = policy.default_ephemeral,
                "the owner changed the history settings"
            );
            Json(serde_json::json!({"ok": true})).into_response()
        }
        Err(error) => database_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_file_that_is_missing_is_none_and_an_unreadable_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("measurements.json");
        std::fs::write(&present, b"{}").unwrap();
        assert_eq!(read_optional_file(&present).unwrap(), Some(b"{}".to_vec()));
        assert_eq!(
            read_optional_file(&dir.path().join("absent")).unwrap(),
            None
        );
        // A folder exists but cannot be read as a file: that is an error, not "absent".
        assert!(matches!(
            read_optional_file(dir.path()),
            Err(ChatError::File { .. })
        ));
    }
}
