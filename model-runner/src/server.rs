//! The OpenAI-compatible HTTP API: chat and text completions (plain and SSE), the model
//! list, health and Prometheus metrics.
//!
//! Request bodies are outside bytes: they are read up to a size limit and parsed here, and
//! every refusal is a 400 (or 503 when busy) in OpenAI's error shape, never a panic.
//! Unknown fields are ignored. The prefix-cache salt comes from the `x-cloister-user`
//! header that the front end (web-ui) sets on the local socket, never from the body. This
//! module never logs prompts, completions or user names.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::FinishReason;
use crate::sampling::SamplingParams;
use crate::service::{Event, Generation, Runner, SubmitError, TextStream};
use crate::tokenizer::ChatMessage;

/// Header carrying the user name that web-ui vouches for; it keys the prefix-cache salt.
pub const USER_HEADER: &str = "x-cloister-user";
/// Seconds a refused client is asked to wait.
const RETRY_AFTER_S: u32 = 1;
/// Most stop strings per request, and the longest.
const MAX_STOP_STRINGS: usize = 4;
const MAX_STOP_BYTES: usize = 256;
/// Most messages in one chat request.
const MAX_MESSAGES: usize = 1024;

/// Limits on what a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    pub max_prompt_bytes: usize,
    pub default_max_tokens: usize,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            max_body_bytes: 1 << 20,
            max_prompt_bytes: 256 << 10,
            default_max_tokens: 512,
        }
    }
}

/// What the handlers share: the runner once the model is loaded, and the limits.
#[derive(Debug, Clone)]
pub struct AppState {
    pub runner: Arc<OnceLock<Arc<Runner>>>,
    pub limits: ApiLimits,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

fn api_error(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::SERVICE_UNAVAILABLE => "server_overloaded",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    resp
}

/// A refusal, turned into OpenAI's error JSON when answered.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.status, &self.message)
    }
}

fn bad_request_response(message: impl AsRef<str>) -> Response {
    bad_request(message).into_response()
}

fn bad_request(message: impl AsRef<str>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: message.as_ref().to_owned(),
    }
}

fn ready(state: &AppState) -> Result<Arc<Runner>, ApiError> {
    match state.runner.get() {
        Some(r) if r.is_alive() => Ok(r.clone()),
        _ => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the model is not loaded yet".into(),
        }),
    }
}

async fn health(State(state): State<AppState>) -> Response {
    match ready(&state) {
        Ok(_) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = match state.runner.get() {
        Some(r) => r.metrics.render(),
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(state): State<AppState>) -> Response {
    let runner = match ready(&state) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    axum::Json(json!({"object": "list", "data": [
        {"id": runner.model_name, "object": "model", "created": 0, "owned_by": "cloister"}
    ]}))
    .into_response()
}

/// `stop` may be one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The sampling fields both endpoints share. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct CommonFields {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    stop: Option<StopField>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

/// Message content: a string, or a list of parts of which the text parts count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<InMessage>,
    #[serde(flatten)]
    common: CommonFields,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: PromptField,
    #[serde(flatten)]
    common: CommonFields,
}

struct Parsed {
    params: SamplingParams,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn check_range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(bad_request(format!("{name} must be between {lo} and {hi}")))
        }
        _ => Ok(()),
    }
}

fn parse_common(c: CommonFields, limits: &ApiLimits) -> Result<Parsed, ApiError> {
    check_range("temperature", c.temperature, 0.0, 2.0)?;
    check_range("top_p", c.top_p, 0.0, 1.0)?;
    check_range("presence_penalty", c.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", c.frequency_penalty, -2.0, 2.0)?;
    if c.top_p == Some(0.0) {
        return Err(bad_request("top_p must be above 0"));
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(bad_request("only n = 1 is supported"));
    }
    let max_tokens = c
        .max_completion_tokens
        .or(c.max_tokens)
        .unwrap_or(limits.default_max_tokens);
    if max_tokens == 0 {
        return Err(bad_request("max_tokens must be at least 1"));
    }
    let stop = match c.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(bad_request(format!(
            "at most {MAX_STOP_STRINGS} stop strings of {MAX_STOP_BYTES} bytes"
        )));
    }
    let defaults = SamplingParams::default();
    Ok(Parsed {
        params: SamplingParams {
            max_tokens,
            temperature: c.temperature.unwrap_or(defaults.temperature),
            top_p: c.top_p.unwrap_or(defaults.top_p),
            top_k: c.top_k.unwrap_or(0),
            seed: c.seed,
            presence_penalty: c.presence_penalty.unwrap_or(0.0),
            frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        },
        stop,
        stream: c.stream.unwrap_or(false),
        include_usage: c
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// Reads a JSON body within the size limit, answering 400 for anything malformed.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request,
    limits: &ApiLimits,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), limits.max_body_bytes)
        .await
        .map_err(|_| {
            bad_request(format!(
                "the request body is over {} bytes, or was cut short",
                limits.max_body_bytes
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde_json's message names the field and position, never echoes the content.
        bad_request(format!("the request body is not valid: {e}"))
    })
}

fn user_of(req: &Request) -> String {
    req.headers()
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn chat_completions(State(state): State<AppState>, req: Request) -> Response {
    let runner = match ready(&state) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let user = user_of(&req);
    let body: ChatBody = match read_json(req, &state.limits).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if body.messages.is_empty() || body.messages.len() > MAX_MESSAGES {
        return bad_request_response(format!("messages must hold 1 to {MAX_MESSAGES} messages"));
    }
    let messages: Vec<ChatMessage> = body
        .messages
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
            },
        })
        .collect();
    let total: usize = messages
        .iter()
        .map(|m| m.content.len() + m.role.len())
        .sum();
    if total > state.limits.max_prompt_bytes {
        return bad_request_response(format!(
            "the messages are over {} bytes",
            state.limits.max_prompt_bytes
        ));
    }
    let parsed = match parse_common(body.common, &state.limits) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let prompt = match runner.tokenizer.apply_chat_template(&messages) {
        Ok(p) => p,
        Err(e) => return bad_request_response(e.to_string()),
    };
    generate(runner, prompt, parsed, &user, Kind::Chat).await
}

async fn completions(State(state): State<AppState>, req: Request) -> Response {
    let runner = match ready(&state) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let user = user_of(&req);
    let body: CompletionBody = match read_json(req, &state.limits).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let prompt = match body.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => {
            return bad_request_response("only one prompt per request is supported");
        }
    };
    if prompt.len() > state.limits.max_prompt_bytes {
        return bad_request_response(format!(
            "the prompt is over {} bytes",
            state.limits.max_prompt_bytes
        ));
    }
    let mut common = body.common;
    // OpenAI's default for the legacy endpoint.
    if common.max_tokens.is_none() && common.max_completion_tokens.is_none() {
        common.max_tokens = Some(16);
    }
    let parsed = match parse_common(common, &state.limits) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    generate(runner, prompt, parsed, &user, Kind::Text).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn generate(
    runner: Arc<Runner>,
    prompt: String,
    parsed: Parsed,
    user: &str,
    kind: Kind,
) -> Response {
    let tokens = match runner.tokenizer.encode(&prompt) {
        Ok(t) => t,
        Err(e) => return bad_request_response(e.to_string()),
    };
    let generation = match runner.submit(tokens, parsed.params.clone(), user) {
        Ok(g) => g,
        Err(SubmitError::Busy) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy; retry shortly",
            );
        }
        Err(SubmitError::Stopped) => {
            return api_error(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped");
        }
        Err(SubmitError::Invalid(e)) => return bad_request_response(e.to_string()),
    };
    let id = format!(
        "{}-{:016x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        rand_id()
    );
    let text = TextStream::new(runner.tokenizer.clone(), parsed.stop.clone());
    let meta = Meta {
        id,
        created: now_s(),
        model: runner.model_name.clone(),
        kind,
    };
    if parsed.stream {
        stream_response(generation, text, meta, parsed.include_usage)
    } else {
        whole_response(generation, text, meta).await
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_s());
    h.finish()
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Meta {
    fn usage(&self, prompt: usize, completion: usize) -> Value {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn chunk(&self, delta: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut d = serde_json::Map::new();
                if first {
                    d.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = delta {
                    d.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice]})
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }
}

/// What one engine event means for the client.
enum Step {
    /// New text to show (possibly empty).
    Text(String),
    /// The end: the reason, completion tokens, and the last text held back.
    Done(FinishReason, usize, String),
    Failed,
}

/// Waits for the next event and turns it into text.
async fn next_step(generation: &mut Generation, text: &mut TextStream) -> Step {
    match generation.next().await {
        Some(Event::Token(t)) => {
            let (delta, stopped) = text.push(t);
            if stopped {
                Step::Done(FinishReason::Stop, text.tokens(), delta)
            } else {
                Step::Text(delta)
            }
        }
        Some(Event::Finished(reason)) => Step::Done(reason, text.tokens(), text.flush()),
        Some(Event::Failed) | None => Step::Failed,
    }
}

async fn whole_response(mut generation: Generation, mut text: TextStream, meta: Meta) -> Response {
    let mut content = String::new();
    let (reason, completion) = loop {
        match next_step(&mut generation, &mut text).await {
            Step::Text(d) => content.push_str(&d),
            Step::Done(reason, n, rest) => {
                content.push_str(&rest);
                break (reason, n);
            }
            Step::Failed => {
                return api_error(StatusCode::INTERNAL_SERVER_ERROR, "generation failed");
            }
        }
    };
    let choice = match meta.kind {
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": content},
            "logprobs": null, "finish_reason": finish_name(reason)}),
        Kind::Text => json!({"index": 0, "text": content, "logprobs": null,
            "finish_reason": finish_name(reason)}),
    };
    axum::Json(json!({
        "id": meta.id, "object": meta.object(false), "created": meta.created, "model": meta.model,
        "choices": [choice], "usage": meta.usage(generation.prompt_tokens, completion),
    }))
    .into_response()
}

/// Chunks per stream buffered between the generation task and the client.
const STREAM_BUFFER_CHUNKS: usize = 64;

/// How often an idle stream writes an SSE comment, so that a client that went away is
/// noticed (by the failed write) and its sequence cancelled.
const STREAM_KEEPALIVE_MS: u64 = 200;

fn stream_response(
    generation: Generation,
    text: TextStream,
    meta: Meta,
    include_usage: bool,
) -> Response {
    // None is a keep-alive comment.
    let (tx, rx) = tokio::sync::mpsc::channel::<Option<String>>(STREAM_BUFFER_CHUNKS);
    tokio::spawn(pump_stream(generation, text, meta, include_usage, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await? {
            Some(data) => SseEvent::default().data(data),
            None => SseEvent::default().comment(""),
        };
        Some((Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream).into_response()
}

/// Feeds a stream's chunks to the client. Returns (dropping the generation, which cancels
/// it) as soon as the client is gone.
async fn pump_stream(
    mut generation: Generation,
    mut text: TextStream,
    meta: Meta,
    include_usage: bool,
    tx: tokio::sync::mpsc::Sender<Option<String>>,
) {
    let first = meta.chunk(
        if meta.kind == Kind::Chat {
            Some("")
        } else {
            None
        },
        true,
        None,
    );
    if tx.send(Some(first.to_string())).await.is_err() {
        return;
    }
    let mut keepalive =
        tokio::time::interval(std::time::Duration::from_millis(STREAM_KEEPALIVE_MS));
    keepalive.reset();
    let (reason, completion) = loop {
        // next_step only awaits a channel receive, so dropping it in select loses nothing.
        let step = tokio::select! {
            s = next_step(&mut generation, &mut text) => s,
            _ = tx.closed() => return,
            _ = keepalive.tick() => {
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(None) {
                    return;
                }
                continue;
            }
        };
        let (delta, done) = match step {
            Step::Text(d) => (d, None),
            Step::Done(reason, n, rest) => (rest, Some((reason, n))),
            Step::Failed => return,
        };
        if !delta.is_empty()
            && tx
                .send(Some(meta.chunk(Some(&delta), false, None).to_string()))
                .await
                .is_err()
        {
            return;
        }
        if let Some(d) = done {
            break d;
        }
    };
    // Free the sequence before the last chunks go out.
    let prompt_tokens = generation.prompt_tokens;
    drop(generation);
    let last = meta.chunk(None, false, Some(finish_name(reason)));
    let _ = tx.send(Some(last.to_string())).await;
    if include_usage {
        let u = json!({"id": meta.id, "object": meta.object(true), "created": meta.created,
            "model": meta.model, "choices": [], "usage": meta.usage(prompt_tokens, completion)});
        let _ = tx.send(Some(u.to_string())).await;
    }
    let _ = tx.send(Some("[DONE]".to_owned())).await;
}

/// Serves `router` on a TCP listener until the process ends.
pub async fn serve_tcp(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app).await
}

/// Serves `router` on a Unix socket listener until the process ends.
pub async fn serve_unix(listener: tokio::net::UnixListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app).await
}
