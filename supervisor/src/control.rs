//! The control protocol: JSON lines over a Unix socket (specified in docs/supervisor.md), and a
//! small blocking [`ControlClient`] for the `ctl` subcommand, tests and other parts.
//!
//! Only the message types and the client live here; the server side is in the supervisor's
//! event loop. This module must never act on a request itself.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::logs::LogLine;

/// Longest request line the server reads.
pub const REQUEST_LINE_MAX_BYTES: usize = 64 * 1024;
/// Lines returned by `logs` when the request names no count.
pub const LOG_TAIL_DEFAULT_LINES: usize = 100;

/// A request: one JSON object on one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every service with its state.
    List,
    /// Start a stopped or failed service (and what it requires).
    Start {
        /// Service name.
        service: String,
    },
    /// Stop a service; it is not restarted until started again.
    Stop {
        /// Service name.
        service: String,
    },
    /// Stop then start a service.
    Restart {
        /// Service name.
        service: String,
    },
    /// The last lines of a service's log.
    Logs {
        /// Service name.
        service: String,
        /// How many lines (default 100).
        #[serde(default)]
        lines: Option<usize>,
        /// Keep the connection open and send each new line as it comes, one [`LogLine`]
        /// object per line, after the reply.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        follow: bool,
    },
    /// Stop every service in order, then power off.
    Poweroff,
    /// Stop every service in order, then reboot.
    Reboot,
    /// Subscribe: the server answers `{"ok":true}`, then writes one [`Event`] per line.
    Events,
}

/// A service as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// `inactive`, `waiting`, `starting`, `running`, `reloading`, `stopping`,
    /// `auto-restart` or `failed`.
    pub state: String,
    /// Main process id while one runs.
    pub pid: Option<u32>,
    /// Automatic restarts since the supervisor started.
    pub restarts: u32,
    /// How the last run ended, e.g. `exited 1`, `killed by SIGSEGV`, `watchdog timeout`.
    pub last_exit: Option<String>,
    /// Milliseconds since the current process started.
    pub uptime_ms: Option<u64>,
    /// The last STATUS= text, or why the service failed.
    pub status: Option<String>,
    /// The last ERRNO= value.
    pub errno: Option<i32>,
    /// The delay of the last scheduled automatic restart.
    pub restart_delay_ms: Option<u64>,
}

/// A reply: `ok`, and the fields the request calls for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceInfo>>,
    /// For `list`: manifests that could not be loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_errors: Option<Vec<String>>,
    /// For `logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LogLine>>,
}

impl Response {
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

/// What an `events` subscriber receives: a service changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Service name.
    pub service: String,
    /// The new state (as in [`ServiceInfo::state`]).
    pub state: String,
    /// Main process id, when one runs.
    pub pid: Option<u32>,
    /// Automatic restarts so far.
    pub restarts: u32,
    /// For `auto-restart`: the delay before the restart.
    pub restart_delay_ms: Option<u64>,
    /// For `inactive`, `auto-restart` and `failed`: how the last run ended.
    pub last_exit: Option<String>,
    /// CLOCK_BOOTTIME in milliseconds when it happened.
    pub boottime_ms: u64,
}

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached or broke.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a reply.
    #[error("bad reply from the supervisor: {0}")]
    BadReply(#[from] serde_json::Error),
    /// The connection closed before a reply.
    #[error("the supervisor closed the connection")]
    Closed,
}

/// A blocking client: one connection, requests answered in order.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(path)?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sets how long a read may block (None: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ControlError> {
        self.writer.set_read_timeout(timeout)?;
        Ok(())
    }

    /// Sends a request and reads its reply.
    pub fn request(&mut self, request: &Request) -> Result<Response, ControlError> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let reply = self.read_line()?;
        Ok(serde_json::from_str(&reply)?)
    }

    /// After an `events` request: the next event.
    pub fn next_event(&mut self) -> Result<Event, ControlError> {
        let line = self.read_line()?;
        Ok(serde_json::from_str(&line)?)
    }

    /// After a `logs` request with `follow`: the next line of the service's output.
    pub fn next_log_line(&mut self) -> Result<LogLine, ControlError> {
        let line = self.read_line()?;
        Ok(serde_json::from_str(&line)?)
    }

    fn read_line(&mut self) -> Result<String, ControlError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ControlError::Closed);
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_shape() {
        let cases = [
            (Request::List, r#"{"cmd":"list"}"#),
            (
                Request::Start {
                    service: "web-ui".into(),
                },
                r#"{"cmd":"start","service":"web-ui"}"#,
            ),
            (
                Request::Logs {
                    service: "a".into(),
                    lines: Some(5),
                    follow: false,
                },
                r#"{"cmd":"logs","service":"a","lines":5}"#,
            ),
            (Request::Poweroff, r#"{"cmd":"poweroff"}"#),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"logs","service":"a"}"#).unwrap(),
            Request::Logs {
                service: "a".into(),
                lines: None,
                follow: false,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"logs","service":"a","follow":true}"#)
                .unwrap(),
            Request::Logs {
                service: "a".into(),
                lines: None,
                follow: true,
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"stop"}"#).is_err());
    }

    #[test]
    fn responses_omit_absent_fields() {
        assert_eq!(
            serde_json::to_string(&Response::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error("no such service")).unwrap(),
            r#"{"ok":false,"error":"no such service"}"#
        );
    }
}
