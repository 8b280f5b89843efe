//! The `model-runner` binary end to end, over its Unix socket and TCP: the OpenAI API,
//! streaming, limits and malformed bodies, overload, cancellation, and that prompts and
//! completions never reach the logs; and the official `openai` Python client, installed
//! from PyPI into a virtual environment the test makes (cached under $CLOISTER_CACHE).
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running server, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server on the test model with extra arguments; waits until healthy.
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let log = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_model-runner"))
            .arg("--model")
            .arg(model)
            .arg("--socket")
            .arg(&socket)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--kv-cache-mb",
                "64",
                "--threads",
                "2",
            ])
            .args(extra)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            _dir: dir,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((200, _, _)) = server.try_request("GET", "/health", None) {
                return server;
            }
            assert!(Instant::now() < deadline, "the server never became healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The TCP address from the server's log.
    pub fn tcp_addr(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap();
        let at = log.find("tcp=").expect("the log names the TCP address") + 4;
        log[at..].split_whitespace().next().unwrap().to_owned()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn connect(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &str,
    ) -> std::io::Result<UnixStream> {
        let mut s = UnixStream::connect(&self.socket)?;
        let body = body.unwrap_or("");
        // HTTP/1.0: the body, streamed or not, ends when the connection closes.
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nhost: localhost\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        Ok(s)
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String, String)> {
        let mut s = self.connect(method, path, body, "")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, head.to_ascii_lowercase(), body.to_owned()))
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
        self.try_request(method, path, body).unwrap()
    }

    /// A metric's value from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, _, text) = self.request("GET", "/metrics", None);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .parse()
            .unwrap()
    }
}

fn start(extra: &[&str]) -> Option<Server> {
    let path = common::model_path();
    if path.is_none() {
        common::model()?; // fails under CI, skips elsewhere
    }
    Some(Server::start(&path?, extra))
}

fn chat_body(content: &str, max_tokens: usize, stream: bool) -> String {
    serde_json::json!({
        "model": "whatever", "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "stream_options": {"include_usage": true},
        "an_unknown_field": {"is": "ignored"},
    })
    .to_string()
}

fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn chat_stream_completions_models_and_metrics() {
    let Some(server) = start(&[]) else { return };
    let (status, _, body) = server.request(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("Hi", 6, false)),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let whole = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!whole.is_empty());
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 6);

    // The same request streamed gives the same text, then usage, then [DONE].
    let (status, head, body) = server.request(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("Hi", 6, true)),
    );
    assert_eq!(status, 200);
    assert!(head.contains("text/event-stream"));
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, whole);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage_chunk["usage"], *usage);

    // Legacy completions, with a stop string cutting the text.
    let body = r#"{"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": [" 7"]}"#;
    let (status, _, body) = server.request("POST", "/v1/completions", Some(body));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(
        !text.contains(" 7"),
        "the stop string was not cut: {text:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (status, _, body) = server.request("GET", "/v1/models", None);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["object"], "model");

    assert!(server.metric("cloister_requests_total") >= 3.0);
    assert!(server.metric("cloister_generated_tokens_total") >= 3.0);
    assert!(server.metric("cloister_time_to_first_token_seconds_count") >= 3.0);
    // The last request ended on a stop string; its blocks free as soon as it is dropped.
    wait_for("blocks freed", Duration::from_secs(1), || {
        server.metric("cloister_kv_blocks_used") == 0.0
    });
}

#[test]
fn malformed_and_oversized_requests_get_400_in_openai_shape() {
    let Some(server) = start(&["--max-body-bytes", "4096"]) else {
        return;
    };
    let long = "x".repeat(5000);
    let cases = [
        "{bad".to_owned(),
        "".to_owned(),
        "[]".to_owned(),
        r#"{"messages": "not a list"}"#.to_owned(),
        r#"{"messages": []}"#.to_owned(),
        r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}"#.to_owned(),
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}"#.to_owned(),
        // Prompt plus max_tokens can never fit the KV pool or the context.
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10000000}"#.to_owned(),
        format!(r#"{{"messages": [{{"role": "user", "content": "{long}"}}]}}"#),
    ];
    for body in &cases {
        let (status, _, resp) = server.request("POST", "/v1/chat/completions", Some(body));
        assert_eq!(status, 400, "for {:?}: {resp}", &body[..body.len().min(60)]);
        let v: Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, _, _) = server.request("GET", "/health", None);
    assert_eq!(status, 200, "the server survives bad input");
}

#[test]
fn a_flood_gets_503_with_retry_after_not_a_crash() {
    let Some(server) = start(&["--max-queued-requests", "2", "--max-running", "1"]) else {
        return;
    };
    let server = std::sync::Arc::new(server);
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let s = server.clone();
            std::thread::spawn(move || {
                s.request(
                    "POST",
                    "/v1/chat/completions",
                    Some(&chat_body(&format!("Count to {i}"), 8, false)),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(ok >= 1, "nothing was served");
    assert!(!busy.is_empty(), "no request was refused");
    assert_eq!(ok + busy.len(), results.len(), "only 200 and 503 expected");
    for (_, head, body) in busy {
        assert!(head.contains("retry-after: 1"), "{head}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert!(v["error"]["message"].is_string());
    }
    assert_eq!(server.request("GET", "/health", None).0, 200);
    assert!(server.metric("cloister_rejected_requests_total") >= 1.0);
}

/// Opens a stream and reads until its first event, so it is admitted.
fn open_stream(server: &Server, i: usize) -> BufReader<UnixStream> {
    let body = serde_json::json!({"messages": [{"role": "user", "content": format!("Tell a long story number {i}")}],
        "max_tokens": 400, "stream": true, "temperature": 0.7, "seed": i})
    .to_string();
    let s = server
        .connect("POST", "/v1/chat/completions", Some(&body), "")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "stream {i} closed early"
        );
        if line.starts_with("data: ") {
            return r;
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dropped_streams_free_their_kv_blocks_within_a_second() {
    // Cancellations are seen between steps: a small step budget keeps steps short on this
    // shared 2-core machine.
    let Some(server) = start(&["--max-running", "256", "--max-batch-tokens", "16"]) else {
        return;
    };
    let baseline = server.metric("cloister_kv_blocks_used");
    let mut streams: Vec<_> = (0..200).map(|i| open_stream(&server, i)).collect();
    wait_for(
        "all 200 sequences running",
        Duration::from_secs(120),
        || {
            server.metric("cloister_running_sequences") + server.metric("cloister_queue_depth")
                >= 200.0
        },
    );
    let kept = streams.split_off(100);
    drop(streams);
    wait_for(
        "100 dropped streams cancelled",
        Duration::from_secs(1),
        || {
            server.metric("cloister_running_sequences") + server.metric("cloister_queue_depth")
                <= 100.0
        },
    );
    drop(kept);
    wait_for("KV blocks back to baseline", Duration::from_secs(1), || {
        server.metric("cloister_kv_blocks_used") == baseline
    });
}

#[test]
fn prompts_and_completions_never_reach_the_logs() {
    let Some(server) = start(&[]) else { return };
    let marker = "zebra-quartz-71829";
    let body = chat_body(&format!("Repeat after me: {marker}"), 12, false);
    let (status, _, resp) = server.request("POST", "/v1/chat/completions", Some(&body));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&resp).unwrap();
    let completion = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = server.request(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(marker, 4, true)),
    );
    assert_eq!(status, 200);
    let logs = server.logs();
    assert!(logs.contains("model ready"), "the log is being written");
    assert!(!logs.contains(marker), "a prompt reached the log");
    assert!(!logs.contains("zebra"), "part of a prompt reached the log");
    let words: Vec<&str> = completion
        .split_whitespace()
        .filter(|w| w.len() >= 6)
        .collect();
    for w in words {
        assert!(!logs.contains(w), "completion text {w:?} reached the log");
    }
}

#[test]
fn tcp_serves_the_same_api() {
    let Some(server) = start(&[]) else { return };
    let addr = server.tcp_addr();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /v1/models HTTP/1.0\r\nhost: x\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(
        raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"),
        "{raw}"
    );
    assert!(raw.contains("\"object\":\"list\""));
}

/// The `openai` client release the test pins.
const OPENAI_CLIENT_VERSION: &str = "3.57.0";

/// A virtual environment with the pinned `openai` client, made once and cached.
fn openai_venv() -> Option<PathBuf> {
    let cache = std::env::var("CLOISTER_CACHE").unwrap_or_else(|_| "/var/cache/cloister".into());
    let venv = PathBuf::from(cache).join(format!("venv-openai-{OPENAI_CLIENT_VERSION}"));
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if ready.exists() {
        return Some(python);
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("openai=={OPENAI_CLIENT_VERSION}"))
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "could not install the openai client"
        );
        eprintln!("SKIPPED: could not install the openai client");
        return None;
    }
    std::fs::write(&ready, "").ok();
    Some(python)
}

const OPENAI_SCRIPT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused")
messages = [{"role": "user", "content": "What is the capital of France?"}]
r = client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0, seed=1)
text = r.choices[0].message.content
assert text, "empty reply"
assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, r.usage
parts = []
usage = None
with client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True}) as stream:
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
assert "".join(parts) == text, ("stream differs", parts, text)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
models = client.models.list()
assert len(models.data) == 1
print("openai client OK")
"#;

#[test]
fn the_official_openai_client_chats_and_streams() {
    let Some(server) = start(&[]) else { return };
    let Some(python) = openai_venv() else { return };
    let base = format!("http://{}/v1", server.tcp_addr());
    let out = Command::new(python)
        .args(["-c", OPENAI_SCRIPT, &base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("openai client OK"));
}
