//! The client side of model-runner's OpenAI-compatible API, for the chat: one connection
//! per request (over model-runner's Unix socket or a loopback TCP port), a streamed chat
//! completion read as server-sent events and turned into the channel's inner chunks
//! (`meta`, `delta`, `done`, `error`; docs/protocol.md).
//!
//! Dropping a [`ChatStream`] closes its connection, which is how a stop in the browser
//! reaches model-runner: it notices the closed socket and cancels the sequence.
//!
//! This module handles prompts and answers in plaintext, inside the TD. It must never log
//! them or put them in an error: errors here carry only statuses and fixed texts.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use cloister_protocol::{FinishReason, ResponseEvent, Usage};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The header model-runner takes as the per-user prefix-cache salt.
pub const USER_HEADER: &str = "x-cloister-user";
/// Longest wait for model-runner to accept a connection and answer the request's head.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for model-runner's answer head (it queues requests when busy).
pub const ANSWER_HEAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of one server-sent event; more means model-runner is not what we expect.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Most bytes of an error answer read.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Where model-runner listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRunnerAddress {
    /// Its Unix socket, `unix:/run/cloister/model-runner.sock`.
    Unix(PathBuf),
    /// A loopback TCP port, `http://127.0.0.1:PORT`.
    Http { host: String, port: u16 },
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Neither `unix:/ABSOLUTE/PATH` nor `http://LOOPBACK:PORT`.
    #[error(
        "the model-runner address must be unix:/ABSOLUTE/PATH or http://127.0.0.1:PORT (loopback only: the traffic is plaintext)"
    )]
    Malformed,
}

impl std::str::FromStr for ModelRunnerAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, AddressError> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(AddressError::Malformed);
            }
            return Ok(Self::Unix(path));
        }
        let rest = text
            .strip_prefix("http://")
            .ok_or(AddressError::Malformed)?
            .trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or(AddressError::Malformed)?;
        let port: u16 = port.parse().map_err(|_| AddressError::Malformed)?;
        let loopback = matches!(host, "127.0.0.1" | "[::1]" | "localhost");
        if !loopback || port == 0 {
            return Err(AddressError::Malformed);
        }
        Ok(Self::Http {
            host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
            port,
        })
    }
}

/// Why a chat request to model-runner failed before any answer text.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// model-runner is not reachable.
    #[error("the model is not reachable")]
    Unreachable,
    /// model-runner took too long to answer.
    #[error("the model did not answer in time")]
    Timeout,
    /// model-runner refused the request; `message` is its own (it may quote the request, so
    /// it goes only to the user, sealed, never to a log).
    #[error("the model refused the request (status {status})")]
    Refused { status: u16, message: String },
}

/// Whether `event` ends an answer stream (it goes in the final, marked chunk).
pub fn is_last(event: &ResponseEvent) -> bool {
    matches!(
        event,
        ResponseEvent::Done { .. } | ResponseEvent::Error { .. }
    )
}

fn finish_reason(name: &str) -> FinishReason {
    match name {
        "length" => FinishReason::Length,
        "cancelled" => FinishReason::Cancelled,
        _ => FinishReason::Stop,
    }
}

/// Aborts a spawned task when dropped: the connection task, whose end closes the socket.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client for one model-runner.
#[derive(Debug, Clone)]
pub struct ModelClient {
    address: ModelRunnerAddress,
}

type Answer = (hyper::Response<Incoming>, AbortOnDrop);

impl ModelClient {
    /// A client for model-runner at `address`.
    pub fn new(address: ModelRunnerAddress) -> Self {
        Self { address }
    }

    /// Where it talks to.
    pub fn address(&self) -> &ModelRunnerAddress {
        &self.address
    }

    async fn exchange(
        &self,
        request: hyper::Request<Full<Bytes>>,
        head_timeout: Duration,
    ) -> Result<Answer, ModelError> {
        match &self.address {
            ModelRunnerAddress::Unix(path) => {
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| ModelError::Timeout)?
                        .map_err(|_| ModelError::Unreachable)?;
                send(stream, request, head_timeout).await
            }
            ModelRunnerAddress::Http { host, port } => {
                let stream = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| ModelError::Timeout)?
                .map_err(|_| ModelError::Unreachable)?;
                let _ = stream.set_nodelay(true);
                send(stream, request, head_timeout).await
            }
        }
    }

    fn authority(&self) -> String {
        match &self.address {
            ModelRunnerAddress::Unix(_) => "localhost".to_owned(),
            ModelRunnerAddress::Http { host, port } => format!("{host}:{port}"),
        }
    }

    /// The id of the model model-runner serves (`GET /v1/models`), if it answers.
    pub async fn model_name(&self) -> Option<String> {
        let request = hyper::Request::get("/v1/models")
            .header(hyper::header::HOST, self.authority())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let (answer, _connection) = self.exchange(request, CONNECT_TIMEOUT).await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body = read_capped(answer.into_body(), MAX_ERROR_BYTES).await?;
        let value: Value = serde_json::from_slice(&body).ok()?;
        value["data"][0]["id"].as_str().map(str::to_owned)
    }

    /// Starts a streamed chat completion. `request` is the OpenAI request body the browser
    /// sent (an object); streaming and usage reporting are forced on. `user_salt` goes in
    /// [`USER_HEADER`].
    pub async fn chat(
        &self,
        mut request: serde_json::Map<String, Value>,
        user_salt: &str,
    ) -> Result<ChatStream, ModelError> {
        request.insert("stream".into(), Value::Bool(true));
        request.insert("stream_options".into(), json!({"include_usage": true}));
        let body = Value::Object(request).to_string();
        let request = hyper::Request::post("/v1/chat/completions")
            .header(hyper::header::HOST, self.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(USER_HEADER, user_salt)
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ModelError::Unreachable)?;
        let (answer, connection) = self.exchange(request, ANSWER_HEAD_TIMEOUT).await?;
        let status = answer.status().as_u16();
        if status != 200 {
            let body = read_capped(answer.into_body(), MAX_ERROR_BYTES)
                .await
                .unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "the model refused the request".to_owned());
            return Err(ModelError::Refused { status, message });
        }
        Ok(ChatStream {
            body: answer.into_body(),
            _connection: connection,
            buffer: Vec::new(),
            pending: VecDeque::new(),
            sent_meta: false,
            finish_reason: None,
            usage: Usage::default(),
            ended: false,
        })
    }
}

async fn send<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
    head_timeout: Duration,
) -> Result<Answer, ModelError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|_| ModelError::Unreachable)?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let answer = tokio::time::timeout(head_timeout, sender.send_request(request))
        .await
        .map_err(|_| ModelError::Timeout)?
        .map_err(|_| ModelError::Unreachable)?;
    Ok((answer, connection))
}

async fn read_capped(mut body: Incoming, cap: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > cap {
                return None;
            }
            out.extend_from_slice(data);
        }
    }
    Some(out)
}

/// A streamed answer from model-runner, read chunk by chunk.
#[derive(Debug)]
pub struct ChatStream {
    body: Incoming,
    _connection: AbortOnDrop,
    buffer: Vec<u8>,
    pending: VecDeque<ResponseEvent>,
    sent_meta: bool,
    finish_reason: Option<FinishReason>,
    usage: Usage,
    ended: bool,
}

impl ChatStream {
    /// The next inner chunk; `None` after the last (a `done` or an `error`).
    pub async fn next(&mut self) -> Option<ResponseEvent> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                if is_last(&chunk) {
                    self.ended = true;
                    self.pending.clear();
                }
                return Some(chunk);
            }
            if self.ended {
                return None;
            }
            if let Some(event) = self.take_event() {
                self.handle_event(&event);
                continue;
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                return self.fail("the model's answer could not be read");
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                Some(Err(_)) => return self.fail("the model's answer broke off"),
                None => {
                    // The stream closed: fine after `[DONE]` (handled above), else cut off.
                    return match self.finish_reason.take() {
                        Some(finish_reason) => self.finish(finish_reason),
                        None => self.fail("the model's answer broke off"),
                    };
                }
            }
        }
    }

    fn fail(&mut self, message: &str) -> Option<ResponseEvent> {
        self.ended = true;
        Some(ResponseEvent::Error {
            message: message.to_owned(),
        })
    }

    fn finish(&mut self, finish_reason: FinishReason) -> Option<ResponseEvent> {
        self.ended = true;
        Some(ResponseEvent::Done {
            finish_reason,
            usage: std::mem::take(&mut self.usage),
        })
    }

    /// Takes one complete event (up to a blank line) from the buffer.
    fn take_event(&mut self) -> Option<Vec<u8>> {
        let end = self
            .buffer
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| (i, 2))
            .or_else(|| {
                self.buffer
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| (i, 4))
            })?;
        let event = self.buffer[..end.0].to_vec();
        self.buffer.drain(..end.0 + end.1);
        Some(event)
    }

    fn handle_event(&mut self, event: &[u8]) {
        let mut data = Vec::new();
        for line in event.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"data:") {
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
            }
        }
        if data.is_empty() {
            return; // a keep-alive comment
        }
        if data == b"[DONE]" {
            let finish_reason = self.finish_reason.take().unwrap_or(FinishReason::Stop);
            let chunk = ResponseEvent::Done {
                finish_reason,
                usage: std::mem::take(&mut self.usage),
            };
            self.pending.push_back(chunk);
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&data) else {
            self.pending.push_back(ResponseEvent::Error {
                message: "the model's answer could not be read".to_owned(),
            });
            return;
        };
        if !self.sent_meta {
            self.sent_meta = true;
            let model = value["model"].as_str().unwrap_or("").to_owned();
            self.pending.push_back(ResponseEvent::Meta { model });
        }
        if let Ok(usage) = serde_json::from_value::<Usage>(value["usage"].clone()) {
            self.usage = usage;
        }
        let choice = &value["choices"][0];
        if let Some(text) = choice["delta"]["content"].as_str()
            && !text.is_empty()
        {
            self.pending.push_back(ResponseEvent::Delta {
                text: text.to_owned(),
            });
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(finish_reason(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unix_paths_or_loopback_http() {
        assert_eq!(
            "unix:/run/cloister/model-runner.sock".parse(),
            Ok(ModelRunnerAddress::Unix(
                "/run/cloister/model-runner.sock".into()
            ))
        );
        assert_eq!(
            "http://127.0.0.1:8080".parse(),
            Ok(ModelRunnerAddress::Http {
                host: "127.0.0.1".into(),
                port: 8080
            })
        );
        for bad in [
            "unix:relative.sock",
            "http://10.0.0.1:80",
            "https://127.0.0.1:80",
            "http://127.0.0.1",
            "http://127.0.0.1:0",
            "127.0.0.1:80",
        ] {
            assert!(bad.parse::<ModelRunnerAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn model_runner_finish_reasons_map_to_the_channel_s() {
        assert_eq!(finish_reason("length"), FinishReason::Length);
        assert_eq!(finish_reason("stop"), FinishReason::Stop);
        assert_eq!(finish_reason("cancelled"), FinishReason::Cancelled);
        assert!(is_last(&ResponseEvent::Error {
            message: String::new()
        }));
        assert!(!is_last(&ResponseEvent::Meta {
            model: String::new()
        }));
    }
}
