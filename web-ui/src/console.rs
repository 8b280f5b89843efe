//! What the owner's console reads from the rest of the box: services' health and logs
//! from the supervisor's control socket, the model's queue and KV use from model-runner's
//! Prometheus `/metrics` (over its Unix socket in the image), and the box's attestation: a bundle made on the spot, exactly as
//! `GET /attestation` makes it, VERIFIED by the same code users run
//! (`cloister_measurements::attestation`, as `cloister verify` and the browser do) against
//! the image's published measurements, check by check.
//!
//! All are best effort with short deadlines: a missing part shows as unreachable, it never
//! blocks or breaks the page. Nothing here can carry chat content: the supervisor's logs
//! are built to hold none, metrics are numbers, and an attestation holds public keys,
//! registers and certificates. The simulation root is accepted only when the box's own TEE
//! is the simulation, and the console then says SIMULATED.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloister_measurements::Measurements;
use cloister_measurements::attestation::{Inputs, Report};
use cloister_tee::{Tee, TeeKind};

use crate::attestation::{BoxKeys, make_bundle};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// How long to wait for another part of the box.
pub const PART_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the console's attestation self-check (a quote, then its verification: several
/// signature checks) may take before the page shows it as not answered.
pub const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Where model-runner's metrics are, given where model-runner listens (web-ui's
/// `--model-runner`): `/metrics` on the same Unix socket or loopback port.
pub fn metrics_url_of_model_runner(model_runner: &str) -> String {
    if model_runner.starts_with("unix:") {
        model_runner.to_owned()
    } else {
        format!("{}/metrics", model_runner.trim_end_matches('/'))
    }
}

/// Fetches model-runner's metrics from `url` and parses them: `http://HOST:PORT/PATH`, or
/// `unix:/PATH` for `/metrics` over model-runner's Unix socket (as in the image). Through
/// the workspace's one HTTP client, within [`PART_TIMEOUT`].
pub async fn model_metrics(url: &str) -> Option<Vec<Sample>> {
    let url: cloister_http_client::Url = url.parse().ok()?;
    let path = match &url.endpoint {
        cloister_http_client::Endpoint::Unix(_) => "/metrics",
        cloister_http_client::Endpoint::Tcp { .. } => url.path.as_str(),
        // Metrics come from inside the box, never over TLS from elsewhere.
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    let request = cloister_http_client::Request {
        headers: &[("accept", "text/plain")],
        ..cloister_http_client::Request::get(path, MAX_ANSWER_BYTES as usize)
    };
    let answer = cloister_http_client::request(&url.endpoint, request, PART_TIMEOUT)
        .await
        .ok()?;
    if !(200..300).contains(&answer.status) {
        return None;
    }
    Some(parse_prometheus(&answer.text()))
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

/// Reads the expected measurements file at `path` (at most 1 MiB).
pub async fn expected_measurements(path: &Path) -> Option<Vec<u8>> {
    let file = tokio::fs::File::open(path).await.ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_ANSWER_BYTES)
        .read_to_end(&mut bytes)
        .await
        .ok()?;
    Some(bytes)
}

/// The box's attestation as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationStatus {
    /// The TEE's kind, or why the box has none.
    pub tee: Result<TeeKind, String>,
    /// The verifier's report on a bundle made just now (every check, passed or failed, with
    /// its values and reason), or why no bundle could be made.
    pub verification: Result<Report, String>,
    /// Why the register checks had nothing to compare with, when the image's
    /// `measurements.json` is missing or unreadable.
    pub expected_problem: Option<String>,
}

impl AttestationStatus {
    /// Whether the box's attestation verified: every check passed.
    pub fn verified(&self) -> bool {
        self.verification.as_ref().is_ok_and(|report| report.ok)
    }
}

/// Size of the console's own nonce (bytes).
pub const SELF_CHECK_NONCE_BYTES: usize = 32;

/// Makes the box's attestation bundle now (from `tee`, binding `keys` and a fresh random
/// nonce, within [`SELF_CHECK_TIMEOUT`]) and verifies it as a user's verifier would, on the
/// blocking pool: the quote's chain, the TCB status, the debug bit, the event log, the
/// registers against `expected` (a `measurements.json`), the report-data binding (with
/// `keys.tls_spki_sha256` as the TLS key observed, since it is the one being served) and
/// the nonce. The simulation root is accepted only when `tee` is the simulation.
pub async fn attestation_status(
    tee: Result<Arc<dyn Tee>, String>,
    keys: &BoxKeys,
    expected: Option<&[u8]>,
    cached_collateral: Option<Vec<u8>>,
    model: String,
) -> AttestationStatus {
    let (expected, expected_problem) = match expected.map(Measurements::from_json) {
        None => (
            None,
            Some("no measurements.json is configured for this image".to_owned()),
        ),
        Some(Err(error)) => (
            None,
            Some(format!(
                "the image's measurements.json does not parse: {error}"
            )),
        ),
        Some(Ok(measurements)) => (Some(measurements), None),
    };
    let tee = match tee {
        Ok(tee) => tee,
        Err(reason) => {
            return AttestationStatus {
                tee: Err(reason.clone()),
                verification: Err(reason),
                expected_problem,
            };
        }
    };
    let kind = tee.kind();
    let mut nonce = vec![0u8; SELF_CHECK_NONCE_BYTES];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        return AttestationStatus {
            tee: Ok(kind),
            verification: Err("no randomness for a nonce".to_owned()),
            expected_problem,
        };
    }
    let keys = *keys;
    let check = async move {
        let bundle = make_bundle(tee, &keys, nonce.clone(), cached_collateral, model)
            .await
            .map_err(|error| format!("no attestation: {error}"))?;
        let bundle_json = serde_json::to_vec(&bundle)
            .map_err(|error| format!("the attestation does not serialise: {error}"))?;
        let now_unix_s = u64::try_from(crate::clock::now_s()).unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            cloister_measurements::attestation::verify(&Inputs {
                bundle_json: &bundle_json,
                expected: expected.as_ref(),
                nonce_sent: &nonce,
                observed_tls_spki_sha256: Some(&keys.tls_spki_sha256),
                now_unix_s,
                accept_simulated: kind == TeeKind::Simulated,
            })
        })
        .await
        .map_err(|_| "the verification did not finish".to_owned())
    };
    let verification = match tokio::time::timeout(SELF_CHECK_TIMEOUT, check).await {
        Err(_) => Err("the TEE did not answer in time".to_owned()),
        Ok(result) => result,
    };
    AttestationStatus {
        tee: Ok(kind),
        verification,
        expected_problem,
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

    /// A simulated TD (real v4 quotes, development chain) claiming these registers, and
    /// the `measurements.json` it claims.
    fn simulated_td() -> (Arc<dyn Tee>, String) {
        use cloister_measurements::{Event, measurements::replay, sha384};
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
        (Arc::new(tee), json)
    }

    fn keys() -> BoxKeys {
        let server_key = cloister_protocol::ServerKey::generate().unwrap();
        BoxKeys {
            hpke_public_key: *server_key.public_key(),
            hpke_key_id: server_key.key_id(),
            tls_spki_sha256: [0x5a; 32],
        }
    }

    fn failed(status: &AttestationStatus) -> Vec<&'static str> {
        status.verification.as_ref().unwrap().failed()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_boxs_own_attestation_is_verified_check_by_check() {
        let (tee, expected) = simulated_td();
        let keys = keys();
        let status = attestation_status(
            Ok(tee.clone()),
            &keys,
            Some(expected.as_bytes()),
            None,
            "console-test-model".to_owned(),
        )
        .await;
        assert_eq!(status.tee, Ok(TeeKind::Simulated));
        assert_eq!(status.expected_problem, None);
        let report = status.verification.as_ref().unwrap();
        assert!(status.verified(), "{report:#?}");
        // Every check ran, in the verifier's order, and passed: the quote's chain (to the
        // simulation root, accepted because this box's TEE is the simulation), the event
        // log, the registers, and the binding of this box's own keys.
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, cloister_measurements::attestation::CHECK_NAMES);
        assert!(report.checks.iter().all(|c| c.ok), "{report:#?}");
        assert!(report.simulated);
        assert!(
            report.trust_root.contains("SIMULATION"),
            "{}",
            report.trust_root
        );
        assert_eq!(report.hpke_public_key, hex::encode(keys.hpke_public_key));
        assert_eq!(report.model, "console-test-model");
        let rtmr1 = report.check("rtmr1").unwrap();
        assert_eq!(rtmr1.actual, rtmr1.expected);
        assert_eq!(rtmr1.actual.len(), 96);

        // An image that expects another kernel: RTMR1 fails, by name and with both values;
        // nothing else does.
        let mut other = Measurements::from_json(expected.as_bytes()).unwrap();
        other.rtmr1 = Some([0xab; 48]);
        let status = attestation_status(
            Ok(tee.clone()),
            &keys,
            Some(other.to_json().as_bytes()),
            None,
            String::new(),
        )
        .await;
        assert!(!status.verified());
        assert_eq!(failed(&status), ["rtmr1"]);
        let rtmr1 = status
            .verification
            .as_ref()
            .unwrap()
            .check("rtmr1")
            .unwrap();
        assert_eq!(rtmr1.expected, "ab".repeat(48));
        assert_ne!(rtmr1.actual, rtmr1.expected);

        // Without a measurements file the registers cannot pass, and the console says why.
        let status = attestation_status(Ok(tee.clone()), &keys, None, None, String::new()).await;
        assert_eq!(
            failed(&status),
            ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]
        );
        assert!(
            status
                .expected_problem
                .as_deref()
                .unwrap()
                .contains("no measurements.json")
        );
        let status =
            attestation_status(Ok(tee), &keys, Some(b"{not json"), None, String::new()).await;
        assert!(
            status
                .expected_problem
                .as_deref()
                .unwrap()
                .contains("does not parse")
        );
        assert!(!status.verified());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_box_without_a_tee_says_why() {
        let status = attestation_status(
            Err("no /dev/tdx_guest".to_owned()),
            &keys(),
            None,
            None,
            String::new(),
        )
        .await;
        assert_eq!(status.tee, Err("no /dev/tdx_guest".to_owned()));
        assert_eq!(status.verification, Err("no /dev/tdx_guest".to_owned()));
        assert!(!status.verified());
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
    fn metrics_are_where_model_runner_listens() {
        assert_eq!(
            metrics_url_of_model_runner("unix:/run/cloister/model-runner.sock"),
            "unix:/run/cloister/model-runner.sock"
        );
        assert_eq!(
            metrics_url_of_model_runner("http://127.0.0.1:8081/"),
            "http://127.0.0.1:8081/metrics"
        );
    }

    /// As in the image: model-runner's `/metrics` over its Unix socket.
    #[tokio::test]
    async fn metrics_are_read_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-runner.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.unwrap();
                assert_ne!(n, 0);
                head.extend_from_slice(&buffer[..n]);
            }
            let body = "# TYPE cloister_queue_depth gauge\ncloister_queue_depth 3\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let samples = model_metrics(&format!("unix:{}", path.display()))
            .await
            .unwrap();
        assert_eq!(
            samples,
            vec![Sample {
                name: "cloister_queue_depth".into(),
                value: 3.0
            }]
        );
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /metrics HTTP/1.1\r\n"), "{head}");
        // Nothing listens there any more: unreachable, not an error page.
        assert_eq!(
            model_metrics(&format!("unix:{}", path.display())).await,
            None
        );
        assert_eq!(model_metrics("https://127.0.0.1:1/metrics").await, None);
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
