//! A service supervisor: starts services from TOML manifests in dependency order, speaks the
//! sd_notify protocol, restarts with backoff, captures logs and shuts down in order. It must
//! never log what services say about users' chats; it only relays service output.
//!
//! The entry point is [`run`]; it blocks until SIGTERM/SIGINT or a poweroff/reboot request,
//! then stops every service in reverse dependency order and returns a [`ShutdownReport`].
//! While it runs, it reaps every child of the calling process (`waitpid(-1)`): the caller must
//! not wait for children of its own meanwhile.

#![deny(unsafe_code)]

pub mod cgroup;
pub mod control;
mod event_loop;
pub mod host_channel;
mod host_listener;
pub mod logs;
pub mod manifest;
pub mod notify;
pub mod policy;
mod sys;
pub mod users;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use control::{ControlClient, Request, Response, ServiceInfo};
pub use host_listener::HostChannelConfig;
pub use manifest::{ManifestError, ServiceManifest};

/// Where the supervisor finds its services and puts its sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Folder of `*.toml` service manifests.
    pub manifest_dir: PathBuf,
    /// The control socket, e.g. `/run/cloister/supervisor.sock`.
    pub control_socket: PathBuf,
    /// Folder for the notify sockets, e.g. `/run/cloister`.
    pub runtime_dir: PathBuf,
    /// True when running as PID 1 (inside init): SIGTERM means poweroff, SIGINT reboot, and
    /// errors are logged, never fatal.
    pub pid1: bool,
    /// The host channel on vsock (docs/vsock.md), inside the image; None elsewhere.
    pub host_channel: Option<HostChannelConfig>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            manifest_dir: PathBuf::from("/etc/cloister/services"),
            control_socket: PathBuf::from("/run/cloister/supervisor.sock"),
            runtime_dir: PathBuf::from("/run/cloister"),
            pid1: false,
            host_channel: None,
        }
    }
}

/// What the caller should do once the services are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownAction {
    /// Power the machine off (also the answer to SIGTERM or SIGINT when not PID 1).
    PowerOff,
    /// Reboot the machine.
    Reboot,
}

/// How one service's stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopOutcome {
    /// It was not running.
    NotRunning,
    /// It exited after its stop signal, within its stop timeout.
    Stopped,
    /// It outlived its stop timeout and was killed with SIGKILL.
    Killed,
    /// It did not even exit after SIGKILL (stuck in the kernel); the supervisor gave up.
    DidNotExit,
}

/// One service's line in the shutdown report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStopResult {
    /// Service name.
    pub service: String,
    /// How it went.
    pub outcome: StopOutcome,
    /// From its stop signal to its exit, in milliseconds (0 when it was not running).
    pub stop_ms: u64,
}

/// The result of [`run`]: what to do next, and how each service stopped, in stop order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// Power off or reboot.
    pub action: ShutdownAction,
    /// Per service, in the order they finished stopping.
    pub services: Vec<ServiceStopResult>,
    /// From the shutdown request to the last service gone, in milliseconds.
    pub duration_ms: u64,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            ShutdownAction::PowerOff => "poweroff",
            ShutdownAction::Reboot => "reboot",
        };
        write!(f, "shutdown for {action} took {} ms", self.duration_ms)?;
        for s in &self.services {
            write!(
                f,
                "\n  {}: {:?} after {} ms",
                s.service, s.outcome, s.stop_ms
            )?;
        }
        Ok(())
    }
}

/// Why the supervisor could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The async runtime or the signal handlers could not be set up.
    #[error("cannot set up the event loop")]
    EventLoop(#[source] std::io::Error),
    /// The control socket could not be created (never fatal as PID 1).
    #[error("cannot create the control socket {path}")]
    ControlSocket {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The runtime folder could not be created (never fatal as PID 1).
    #[error("cannot create the runtime folder {path}")]
    RuntimeDir {
        /// The folder.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the supervisor: builds its own single-threaded runtime, starts the services, and
/// blocks until SIGTERM/SIGINT or a poweroff/reboot request; then stops the services in
/// reverse dependency order and returns. As PID 1 the caller does sync, unmount and reboot(2).
pub fn run(config: SupervisorConfig) -> Result<ShutdownReport, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::EventLoop)?;
    runtime.block_on(event_loop::run(config))
}

/// CLOCK_BOOTTIME in milliseconds: the clock of the `boottime_ms=` lines.
pub fn boottime_ms() -> u64 {
    sys::boottime_ms()
}
