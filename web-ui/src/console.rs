//! What the owner's console reads from the rest of the box: services' health and logs
//! from the supervisor's control socket, the model's queue and KV use from model-runner's
//! Prometheus `/metrics`, and the TD's registers from a quote its TEE makes on the spot,
//! set against the image's published measurements.
//!
//! Both are best effort with short deadlines: a missing part shows as unreachable, it never
//! blocks or breaks the page. Nothing here can carry chat content: the supervisor's logs
//! are built to hold none, and metrics are numbers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloister_tee::{Tee, TeeKind};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// How long to wait for another part of the box.
pub const PART_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from another part.
pub const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// One service as the supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceHealth {
    /// The service's name.
    pub name: String,
    /// Its state in the supervisor's words ("running", "backoff", ...).
    pub state: String,
    /// Anything else the supervisor said about it, as `key=value` pairs.
    pub details: Vec<(String, String)>,
}

/// Sends one JSON-lines request to the supervisor and returns its one-line answer.
pub async fn supervisor_request(
    socket: &Path,
    request: &serde_json::Value,
) -> Option<serde_json::Value> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
        let mut line = serde_json::to_vec(request).ok()?;
        line.push(b'\n');
        stream.write_all(&line).await.ok()?;
        let mut reader = BufReader::new(stream).take(MAX_ANSWER_BYTES);
        let mut answer = String::new();
        reader.read_line(&mut answer).await.ok()?;
        serde_json::from_str(&answer).ok()
    };
    tokio::time::timeout(PART_TIMEOUT, exchange).await.ok()?
}

/// Services' health: `{"cmd":"list"}` answered by `{"ok":true,"services":[{"name":..,"state":..},..]}`
/// (the supervisor's control protocol, docs/supervisor.md).
pub async fn services(socket: &Path) -> Option<Vec<ServiceHealth>> {
    let answer = supervisor_request(socket, &serde_json::json!({"cmd": "list"})).await?;
    Some(parse_services(&answer))
}

/// Reads services from a `list` answer; tolerant of extra fields.
pub fn parse_services(answer: &serde_json::Value) -> Vec<ServiceHealth> {
    let list = answer
        .get("services")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter_map(|service| {
            let object = service.as_object()?;
            let name = object.get("name")?.as_str()?.to_owned();
            let state = object
                .get("state")
                .map(value_text)
                .unwrap_or_else(|| "unknown".to_owned());
            let details = object
                .iter()
                .filter(|(k, v)| *k != "name" && *k != "state" && !v.is_null())
                .map(|(k, v)| (k.clone(), value_text(v)))
                .collect();
            Some(ServiceHealth {
                name,
                state,
                details,
            })
        })
        .collect()
}

fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The last log lines of each service: `{"cmd":"logs","service":..,"lines":N}` answered by
/// `{"ok":true,"lines":[{"at_ms":..,"stream":..,"text":..},..]}`. Each line comes back as
/// `service: text`.
pub async fn recent_logs(
    socket: &Path,
    services: &[ServiceHealth],
    lines: usize,
) -> Option<Vec<String>> {
    let mut all = Vec::new();
    for service in services {
        let answer = supervisor_request(
            socket,
            &serde_json::json!({"cmd": "logs", "service": service.name, "lines": lines}),
        )
        .await?;
        for line in answer.get("lines")?.as_array()?.iter().take(lines) {
            let text = line
                .get("text")
                .map(value_text)
                .unwrap_or_else(|| value_text(line));
            all.push(format!("{}: {text}", service.name));
        }
    }
    Some(all)
}

/// One Prometheus sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Metric name with its labels, as written.
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// Parses Prometheus text exposition format, keeping only well-formed samples.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            // The value follows the name (and its braces, which may hold spaces).
            let name_end = match line.find('{') {
                Some(open) if line[..open].find(' ').is_none() => {
                    open + line[open..].find('}')? + 1
                }
                _ => line.find(' ')?,
            };
            let name = line[..name_end].trim().to_owned();
            let value = line[name_end..].split_whitespace().next()?.parse().ok()?;
            Some(Sample { name, value })
        })
        .take(500)
        .collect()
}

/// Fetches `http://host:port/path` with plain HTTP/1.0 and parses it as metrics.
pub async fn model_metrics(url: &str) -> Option<Vec<Sample>> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed.scheme() != "http" {
        return None;
    }
    let host = parsed.host_str()?.to_owned();
    let port = parsed.port_or_known_default()?;
    let path = parsed.path().to_owned();
    let fetch = async move {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/plain\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut body)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.") || !head.split_whitespace().nth(1)?.starts_with('2') {
            return None;
        }
        Some(parse_prometheus(body))
    };
    tokio::time::timeout(PART_TIMEOUT, fetch).await.ok()?
}

/// The registers of a `measurements.json` (docs/measurements.md), in order, as
/// `(register, lower-case hex)`; registers that are absent or not hex are left out.
pub fn parse_measurements(text: &str) -> Vec<(String, String)> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]
        .iter()
        .filter_map(|register| {
            let hex = value.get(register)?.as_str()?;
            let valid = hex.len() == 96 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            valid.then(|| ((*register).to_owned(), hex.to_ascii_lowercase()))
        })
        .collect()
}

/// Reads the expected measurements from `path` (at most 1 MiB).
pub async fn expected_measurements(path: &Path) -> Option<Vec<(String, String)>> {
    let file = tokio::fs::File::open(path).await.ok()?;
    let mut text = String::new();
    file.take(MAX_ANSWER_BYTES)
        .read_to_string(&mut text)
        .await
        .ok()?;
    Some(parse_measurements(&text))
}

/// One register of the TD: its value in a quote made now, and what the image's
/// `measurements.json` says it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterCheck {
    /// `mrtd`, `rtmr0` .. `rtmr3`.
    pub register: String,
    /// Lower-case hex from `measurements.json`, when it names this register.
    pub expected: Option<String>,
    /// Lower-case hex from the quote.
    pub current: String,
}

impl RegisterCheck {
    /// Whether the register holds the expected value; `None` when nothing is expected.
    pub fn matches(&self) -> Option<bool> {
        self.expected.as_ref().map(|e| *e == self.current)
    }
}

/// The box's attestation as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationStatus {
    /// The TEE's kind, or why the box has none.
    pub tee: Result<TeeKind, String>,
    /// The registers of a quote made just now, or why none was made.
    pub registers: Result<Vec<RegisterCheck>, String>,
    /// Whether the TD runs with DEBUG set (its memory is then readable by the host).
    pub debug: Option<bool>,
}

/// Report data of the console's own quotes: a label, so such a quote can never be taken
/// for one that binds a channel key.
pub const SELF_CHECK_REPORT_DATA: [u8; 64] = {
    let label = b"cloister console self-check, binds no key";
    let mut data = [0u8; 64];
    let mut i = 0;
    while i < label.len() {
        data[i] = label[i];
        i += 1;
    }
    data
};

/// Asks `tee` for a quote now (on the blocking pool, within [`PART_TIMEOUT`]) and sets its
/// registers against `expected` (from [`parse_measurements`]). The quote is only parsed,
/// not verified: its signature is what a client's verifier checks, against roots it trusts.
pub async fn attestation_status(
    tee: Result<Arc<dyn Tee>, String>,
    expected: Option<&[(String, String)]>,
) -> AttestationStatus {
    let tee = match tee {
        Ok(tee) => tee,
        Err(reason) => {
            return AttestationStatus {
                tee: Err(reason.clone()),
                registers: Err(reason),
                debug: None,
            };
        }
    };
    let kind = tee.kind();
    let quote = tokio::task::spawn_blocking(move || tee.quote(&SELF_CHECK_REPORT_DATA));
    let report = match tokio::time::timeout(PART_TIMEOUT, quote).await {
        Err(_) => Err("the TEE did not answer in time".to_owned()),
        Ok(Err(_)) => Err("the quote request did not finish".to_owned()),
        Ok(Ok(Err(error))) => Err(format!("the TEE refused a quote: {error}")),
        Ok(Ok(Ok(bytes))) => cloister_measurements::Quote::parse(&bytes)
            .map(|quote| quote.report)
            .map_err(|error| format!("the TEE's quote does not parse: {error}")),
    };
    let report = match report {
        Ok(report) => report,
        Err(reason) => {
            return AttestationStatus {
                tee: Ok(kind),
                registers: Err(reason),
                debug: None,
            };
        }
    };
    let expected_of = |register: &str| {
        expected?
            .iter()
            .find(|(name, _)| name == register)
            .map(|(_, hex)| hex.clone())
    };
    let current = [
        ("mrtd", &report.mrtd),
        ("rtmr0", &report.rtmrs[0]),
        ("rtmr1", &report.rtmrs[1]),
        ("rtmr2", &report.rtmrs[2]),
        ("rtmr3", &report.rtmrs[3]),
    ];
    AttestationStatus {
        tee: Ok(kind),
        registers: Ok(current
            .iter()
            .map(|(register, value)| RegisterCheck {
                register: (*register).to_owned(),
                expected: expected_of(register),
                current: hex::encode(value),
            })
            .collect()),
        debug: Some(report.debug()),
    }
}

/// Runs every parser of other parts' answers on `data`; for the fuzz target and its corpus
/// test.
pub fn parse_everything(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = parse_prometheus(&text);
    let _ = parse_measurements(&text);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = parse_services(&value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated TD (real v4 quotes, development chain) claiming these registers.
    fn simulated_td() -> (Arc<dyn Tee>, Vec<(String, String)>) {
        use cloister_measurements::{Event, Measurements, measurements::replay, sha384};
        let mut m = Measurements {
            mrtd: Some(sha384(b"console test firmware")),
            ..Default::default()
        };
        m.events.rtmr1 = vec![Event::new("kernel".to_owned(), &sha384(b"kernel"))];
        m.rtmr0 = replay(&m.events.rtmr0);
        m.rtmr1 = replay(&m.events.rtmr1);
        m.rtmr2 = replay(&m.events.rtmr2);
        m.rtmr3 = replay(&m.events.rtmr3);
        let json = m.to_json();
        let tee = cloister_tee::simulated::SimulatedTee::new(json.as_bytes()).unwrap();
        (Arc::new(tee), parse_measurements(&json))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_fresh_quote_is_set_against_the_expected_registers() {
        let (tee, expected) = simulated_td();
        assert_eq!(expected.len(), 5);
        let status = attestation_status(Ok(tee.clone()), Some(&expected)).await;
        assert_eq!(status.tee, Ok(TeeKind::Simulated));
        assert_eq!(status.debug, Some(false));
        let registers = status.registers.unwrap();
        assert_eq!(registers.len(), 5);
        assert!(
            registers.iter().all(|r| r.matches() == Some(true)),
            "{registers:?}"
        );

        // An image that expects another kernel: RTMR1 differs, the rest still match.
        let mut other = expected.clone();
        other[2].1 = "ab".repeat(48);
        let registers = attestation_status(Ok(tee.clone()), Some(&other))
            .await
            .registers
            .unwrap();
        let differing: Vec<&str> = registers
            .iter()
            .filter(|r| r.matches() == Some(false))
            .map(|r| r.register.as_str())
            .collect();
        assert_eq!(differing, ["rtmr1"]);

        // Without a measurements file nothing is judged, but the values are shown.
        let registers = attestation_status(Ok(tee), None).await.registers.unwrap();
        assert!(registers.iter().all(|r| r.matches().is_none()));
        assert_eq!(registers[0].current, expected[0].1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_box_without_a_tee_says_why() {
        let status = attestation_status(Err("no /dev/tdx_guest".to_owned()), None).await;
        assert_eq!(status.tee, Err("no /dev/tdx_guest".to_owned()));
        assert!(status.registers.is_err());
    }

    #[test]
    fn prometheus_text_is_parsed() {
        let text = "# HELP queue_depth waiting requests\n# TYPE queue_depth gauge\nqueue_depth 3\nkv_blocks_used{model=\"smol lm\"} 12.5 1700000000\nbad line here\n\nnan_value NaN\n";
        let samples = parse_prometheus(text);
        assert_eq!(
            samples[0],
            Sample {
                name: "queue_depth".into(),
                value: 3.0
            }
        );
        assert_eq!(samples[1].name, "kv_blocks_used{model=\"smol lm\"}");
        assert_eq!(samples[1].value, 12.5);
        assert_eq!(samples.len(), 3);
        assert!(samples[2].value.is_nan());
    }

    #[test]
    fn the_fuzz_corpus_never_panics() {
        for input in [
            &b""[..],
            b"x{",
            b"a{b=\"}\"} 1",
            b"{\"services\":[{\"name\":1},{\"name\":\"a\",\"state\":[1]}]}",
            b"m{ 1\n{} 2\n} 3\n\xff\xfe 4",
        ] {
            parse_everything(input);
        }
    }

    #[test]
    fn measurements_keep_only_hex_registers() {
        let good = "a".repeat(96);
        let text = format!(
            "{{\"mrtd\":\"{good}\",\"rtmr0\":\"zz\",\"rtmr2\":\"{}\",\"events\":{{}}}}",
            "B".repeat(96)
        );
        let registers = parse_measurements(&text);
        assert_eq!(
            registers,
            vec![
                ("mrtd".to_owned(), good),
                ("rtmr2".to_owned(), "b".repeat(96))
            ]
        );
        assert!(parse_measurements("not json").is_empty());
    }

    #[test]
    fn services_are_read_tolerantly() {
        let answer = serde_json::json!({"ok": true, "services": [
            {"name": "model-runner", "state": "running", "pid": 42, "restarts": 0, "errno": null},
            {"name": "web-ui", "status": "ready"},
            {"state": "nameless"},
            "junk"
        ]});
        let services = parse_services(&answer);
        assert_eq!(services.len(), 2);
        assert_eq!(services[0].state, "running");
        assert!(
            services[0]
                .details
                .contains(&("pid".to_owned(), "42".to_owned()))
        );
        assert_eq!(services[1].state, "unknown");
        assert!(!services[0].details.iter().any(|(k, _)| k == "errno"));
    }

    #[tokio::test]
    async fn the_supervisor_socket_is_asked_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sup.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            assert_eq!(line.trim(), r#"{"cmd":"list"}"#);
            write
                .write_all(b"{\"services\":[{\"name\":\"init\",\"state\":\"running\"}]}\n")
                .await
                .unwrap();
        });
        let services = services(&path).await.unwrap();
        assert_eq!(services[0].name, "init");
        server.await.unwrap();
        assert!(
            super::services(&dir.path().join("missing.sock"))
                .await
                .is_none()
        );
    }
}
