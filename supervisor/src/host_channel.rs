//! The host channel: the three questions the host may ask the box over vsock, and the
//! answers (specified in docs/vsock.md). The host learns here only what it can already see
//! (which services run, what it passed in through fw_cfg) and can only do what it can already
//! do (power the box off).
//!
//! Every byte on this channel comes from the host, which is untrusted: a request is one line
//! of at most [`HOST_REQUEST_LINE_MAX_BYTES`], parsed by [`parse_host_request`] into one of
//! three fixed requests, and anything else is refused. Answers carry service names and states
//! only: never a service's status text, logs, or anything a user wrote. The listener itself
//! is in `host_listener`; this module does no I/O but on the stream it is given, and on the
//! two files [`boot_measurements`] reads.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::ServiceInfo;

/// The vsock port the box listens on for the host (any CID may connect; only the host can).
pub const HOST_CHANNEL_VSOCK_PORT: u32 = 1024;
/// Longest request line, newline included.
pub const HOST_REQUEST_LINE_MAX_BYTES: usize = 128;
/// Requests answered on one connection before it is closed.
pub const HOST_REQUESTS_PER_CONNECTION_MAX: usize = 64;
/// Connections served at once; more are closed at once.
pub const HOST_CONNECTIONS_MAX: usize = 4;
/// A connection that sends no complete request for this long is closed.
pub const HOST_CONNECTION_IDLE_MS: u64 = 10_000;
/// Largest expected-measurements file relayed (the host's own fw_cfg file).
pub const EXPECTED_MEASUREMENTS_MAX_BYTES: u64 = 64 * 1024;
/// Where the box finds the expected measurements the host passed in through QEMU's fw_cfg
/// (`opt/cloister/measurements.json`, see `cloister_image::qemu`).
pub const EXPECTED_MEASUREMENTS_GUEST_PATH: &str =
    "/sys/firmware/qemu_fw_cfg/by_name/opt/cloister/measurements.json/raw";
/// The TDX guest device: present only inside a TD.
pub const TDX_GUEST_DEVICE: &str = "/dev/tdx_guest";
/// The TDX event log (CCEL) the firmware left, present only inside a TD.
pub const CCEL_TABLE: &str = "/sys/firmware/acpi/tables/data/CCEL";

/// What the host may ask. Nothing else parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostRequest {
    /// Readiness and every service's state.
    Status,
    /// What the box knows of the measurements it booted with.
    Measurements,
    /// Stop every service in order, then power off.
    Poweroff,
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostRequestError {
    /// Longer than [`HOST_REQUEST_LINE_MAX_BYTES`].
    #[error("request line longer than {HOST_REQUEST_LINE_MAX_BYTES} bytes")]
    TooLong,
    /// Not one of the three requests.
    #[error("not a request: expected {{\"cmd\":\"status\"|\"measurements\"|\"poweroff\"}}")]
    Unknown,
}

/// Parses one request line (the trailing newline optional).
pub fn parse_host_request(line: &[u8]) -> Result<HostRequest, HostRequestError> {
    if line.len() > HOST_REQUEST_LINE_MAX_BYTES {
        return Err(HostRequestError::TooLong);
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // By hand rather than serde's tagged enum, which ignores extra fields on unit variants:
    // exactly one field, `cmd`, naming one of the three.
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|_| HostRequestError::Unknown)?;
    let serde_json::Value::Object(fields) = value else {
        return Err(HostRequestError::Unknown);
    };
    if fields.len() != 1 {
        return Err(HostRequestError::Unknown);
    }
    match fields.get("cmd").and_then(serde_json::Value::as_str) {
        Some("status") => Ok(HostRequest::Status),
        Some("measurements") => Ok(HostRequest::Measurements),
        Some("poweroff") => Ok(HostRequest::Poweroff),
        _ => Err(HostRequestError::Unknown),
    }
}

/// A service as the host sees it: its name and state, nothing it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Service name (from the image's manifests).
    pub name: String,
    /// As in [`ServiceInfo::state`].
    pub state: String,
}

/// What the box knows of its measurements: which TEE it runs in, the expected values the
/// host passed in (as the box read them; the host chose them), and the size of the event log
/// the firmware left. The measured values themselves are in the attested quote
/// (`GET /attestation`), which the host cannot forge; this channel carries no quote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootMeasurements {
    /// `tdx` inside a TD, else `none`.
    pub tee: String,
    /// The expected measurements from fw_cfg, when the host passed a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
    /// Why `expected` is absent, when a file was configured but not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_error: Option<String>,
    /// Size of the CCEL event log, inside a TD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log_bytes: Option<u64>,
}

/// An answer: one JSON object on one line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResponse {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`: every service is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// For `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceState>>,
    /// For `measurements`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements: Option<BootMeasurements>,
}

impl HostResponse {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// `{"ok":false,"error":...}`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::default()
        }
    }
}

/// The `status` answer for the supervisor's service list: names and states only; ready when
/// there is at least one service and every one is running.
pub fn status_response(services: &[ServiceInfo]) -> HostResponse {
    let ready = !services.is_empty()
        && services
            .iter()
            .all(|s| s.state == "running" || s.state == "reloading");
    HostResponse {
        ok: true,
        ready: Some(ready),
        services: Some(
            services
                .iter()
                .map(|s| ServiceState {
                    name: s.name.clone(),
                    state: s.state.clone(),
                })
                .collect(),
        ),
        ..HostResponse::default()
    }
}

/// Reads what the box knows of its measurements: the expected-measurements file (when
/// configured; at most [`EXPECTED_MEASUREMENTS_MAX_BYTES`], a JSON object), whether
/// `tdx_device` exists, and the size of the event log at `ccel`.
pub fn boot_measurements(
    expected_file: Option<&Path>,
    tdx_device: &Path,
    ccel: &Path,
) -> BootMeasurements {
    let mut m = BootMeasurements {
        tee: if tdx_device.exists() { "tdx" } else { "none" }.to_owned(),
        event_log_bytes: std::fs::metadata(ccel).ok().map(|m| m.len()),
        ..BootMeasurements::default()
    };
    if let Some(file) = expected_file {
        match read_expected(file) {
            Ok(value) => m.expected = Some(value),
            Err(why) => m.expected_error = Some(why),
        }
    }
    m
}

fn read_expected(file: &Path) -> Result<serde_json::Value, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("cannot open it: {e}"))?;
    let mut bytes = Vec::new();
    f.take(EXPECTED_MEASUREMENTS_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > EXPECTED_MEASUREMENTS_MAX_BYTES {
        return Err(format!(
            "larger than {EXPECTED_MEASUREMENTS_MAX_BYTES} bytes"
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Serves one connection: reads request lines (each bounded), answers each with
/// `answer(request)`, and returns at end of stream, on a read error or time-out (the caller
/// sets it on the stream), after a refused line, or after
/// [`HOST_REQUESTS_PER_CONNECTION_MAX`] requests. A `poweroff` ends it too.
pub fn serve_host_connection<S: Read + Write>(
    stream: S,
    mut answer: impl FnMut(HostRequest) -> HostResponse,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(HOST_REQUEST_LINE_MAX_BYTES);
    for _ in 0..HOST_REQUESTS_PER_CONNECTION_MAX {
        line.clear();
        let limit = HOST_REQUEST_LINE_MAX_BYTES as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (response, last) = match parse_host_request(&line) {
            Ok(request) => (answer(request), request == HostRequest::Poweroff),
            Err(e) => (HostResponse::error(e.to_string()), true),
        };
        if write_response(reader.get_mut(), &response).is_err() || last {
            return;
        }
        if !line.ends_with(b"\n") {
            // End of stream in the middle of a line: nothing more will come.
            return;
        }
    }
}

fn write_response(w: &mut impl Write, response: &HostResponse) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(std::io::Error::other)?;
    text.push('\n');
    w.write_all(text.as_bytes())?;
    w.flush()
}

/// Errors of the host side.
#[derive(Debug, thiserror::Error)]
pub enum HostChannelError {
    /// The stream broke.
    #[error("the host channel broke")]
    Io(#[from] std::io::Error),
    /// The box sent something that is not an answer.
    #[error("the box sent a malformed answer")]
    BadReply(#[from] serde_json::Error),
    /// The box closed the connection before answering.
    #[error("the box closed the connection without answering")]
    Closed,
    /// The answer line exceeded [`HOST_RESPONSE_LINE_MAX_BYTES`].
    #[error("the box's answer is longer than {HOST_RESPONSE_LINE_MAX_BYTES} bytes")]
    TooLong,
}

/// Longest answer line the host reads (the expected measurements are the bulk).
pub const HOST_RESPONSE_LINE_MAX_BYTES: usize = 256 * 1024;

/// Sends `request` on `stream` and reads the answer (the host side; the stream is already
/// connected to the box's port).
pub fn ask<S: Read + Write>(
    stream: &mut S,
    request: HostRequest,
) -> Result<HostResponse, HostChannelError> {
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()?;
    let mut reply = Vec::new();
    let limit = HOST_RESPONSE_LINE_MAX_BYTES as u64 + 1;
    let mut reader = BufReader::new(stream.take(limit));
    reader.read_until(b'\n', &mut reply)?;
    if reply.is_empty() {
        return Err(HostChannelError::Closed);
    }
    if reply.len() > HOST_RESPONSE_LINE_MAX_BYTES {
        return Err(HostChannelError::TooLong);
    }
    Ok(serde_json::from_slice(&reply)?)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn only_the_three_requests_parse() {
        assert_eq!(
            parse_host_request(b"{\"cmd\":\"status\"}\n"),
            Ok(HostRequest::Status)
        );
        assert_eq!(
            parse_host_request(b"{\"cmd\":\"measurements\"}\r\n"),
            Ok(HostRequest::Measurements)
        );
        assert_eq!(
            parse_host_request(b"{\"cmd\":\"poweroff\"}"),
            Ok(HostRequest::Poweroff)
        );
        for bad in [
            &b"{\"cmd\":\"list\"}"[..],
            b"{\"cmd\":\"logs\",\"service\":\"web-ui\"}",
            b"{\"cmd\":\"status\",\"extra\":1}",
            b"{\"cmd\":\"reboot\"}",
            b"status",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(
                parse_host_request(bad),
                Err(HostRequestError::Unknown),
                "{bad:?}"
            );
        }
        let long = format!(
            "{{\"cmd\":\"status\"{}}}",
            " ".repeat(HOST_REQUEST_LINE_MAX_BYTES)
        );
        assert_eq!(
            parse_host_request(long.as_bytes()),
            Err(HostRequestError::TooLong)
        );
    }

    fn info(name: &str, state: &str) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            state: state.into(),
            pid: Some(7),
            restarts: 2,
            last_exit: Some("exited 1".into()),
            uptime_ms: Some(5),
            status: Some("a user's words".into()),
            errno: None,
            restart_delay_ms: None,
        }
    }

    #[test]
    fn status_carries_names_and_states_only() {
        let r = status_response(&[info("model-runner", "running"), info("web-ui", "starting")]);
        assert_eq!(r.ready, Some(false));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"ok":true,"ready":false,"services":[{"name":"model-runner","state":"running"},{"name":"web-ui","state":"starting"}]}"#
        );
        let r = status_response(&[info("model-runner", "running"), info("web-ui", "running")]);
        assert_eq!(r.ready, Some(true));
        assert_eq!(status_response(&[]).ready, Some(false));
    }

    /// A stream that reads from `input` and records what is written.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serve(input: &[u8]) -> (Vec<HostRequest>, String) {
        let mut asked = Vec::new();
        let mut d = Duplex {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
        };
        serve_host_connection(&mut d, |r| {
            asked.push(r);
            HostResponse::ok()
        });
        (asked, String::from_utf8(d.output).unwrap())
    }

    #[test]
    fn a_connection_answers_each_line_and_stops_at_the_first_bad_one() {
        let (asked, out) = serve(
            b"{\"cmd\":\"status\"}\n{\"cmd\":\"measurements\"}\nnonsense\n{\"cmd\":\"poweroff\"}\n",
        );
        assert_eq!(asked, [HostRequest::Status, HostRequest::Measurements]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[2].contains("\"ok\":false"), "{out}");

        // A line that never ends within the limit is refused without reading it all.
        let mut flood = b"{\"cmd\":\"status\"".to_vec();
        flood.extend(std::iter::repeat_n(b' ', 10 * HOST_REQUEST_LINE_MAX_BYTES));
        let (asked, out) = serve(&flood);
        assert!(asked.is_empty());
        assert!(out.contains("longer than"), "{out}");

        // Nothing is read after a poweroff.
        let (asked, _) = serve(b"{\"cmd\":\"poweroff\"}\n{\"cmd\":\"status\"}\n");
        assert_eq!(asked, [HostRequest::Poweroff]);
    }

    #[test]
    fn the_host_side_reads_one_answer() {
        let mut d = Duplex {
            input: Cursor::new(b"{\"ok\":true,\"ready\":true,\"services\":[]}\n".to_vec()),
            output: Vec::new(),
        };
        let r = ask(&mut d, HostRequest::Status).unwrap();
        assert_eq!(r.ready, Some(true));
        assert_eq!(d.output, b"{\"cmd\":\"status\"}\n");
        let mut closed = Duplex {
            input: Cursor::new(Vec::new()),
            output: Vec::new(),
        };
        assert!(matches!(
            ask(&mut closed, HostRequest::Status),
            Err(HostChannelError::Closed)
        ));
    }

    #[test]
    fn measurements_relay_a_json_object_and_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        let none = dir.path().join("absent");
        std::fs::write(&file, br#"{"mrtd":"00"}"#).unwrap();
        let m = boot_measurements(Some(&file), &none, &none);
        assert_eq!(m.tee, "none");
        assert_eq!(m.expected, Some(serde_json::json!({"mrtd": "00"})));
        assert_eq!(m.event_log_bytes, None);
        std::fs::write(&file, b"[1]").unwrap();
        let m = boot_measurements(Some(&file), &file, &file);
        assert_eq!(m.tee, "tdx");
        assert_eq!(m.event_log_bytes, Some(3));
        assert_eq!(m.expected_error.as_deref(), Some("not a JSON object"));
        std::fs::write(
            &file,
            vec![b' '; EXPECTED_MEASUREMENTS_MAX_BYTES as usize + 1],
        )
        .unwrap();
        let m = boot_measurements(Some(&file), &none, &none);
        assert!(m.expected_error.unwrap().contains("larger than"));
        assert!(boot_measurements(None, &none, &none).expected.is_none());
    }
}
