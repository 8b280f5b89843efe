//! The host's end of the host channel (docs/vsock.md): how QEMU gives the box its vsock device,
//! the vhost-user backend where the host kernel has no vhost-vsock, connecting to the box's
//! port, and the readiness wait, status and poweroff that `cloister run`, `status` and `stop`
//! are made of.
//!
//! Where `/dev/vhost-vsock` opens, QEMU uses the kernel's vhost-vsock (`vhost-vsock-pci`).
//! Elsewhere it uses `vhost-device-vsock` (rust-vmm's vhost-user vsock backend, installed by
//! scripts/setup.sh) over a vhost-user socket, with the guest's memory in a shared memfd; host
//! connections then go through the backend's Unix socket with its `CONNECT <port>` handshake.
//! A running box's endpoints are recorded in the image folder's [`RUN_STATE_FILE`] so that
//! `cloister status` and `stop` find it. Nothing here trusts the box's answers beyond their
//! shape: they are parsed with limits by [`cloister_supervisor::host_channel`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloister_supervisor::host_channel::{self, HostChannelError};
use serde::{Deserialize, Serialize};

pub use cloister_supervisor::host_channel::{
    HOST_CHANNEL_VSOCK_PORT, HostRequest, HostResponse, ServiceState,
};

/// The guest's vsock context id unless told otherwise (2 is the host; 3 is the first free).
pub const GUEST_CID_DEFAULT: u32 = 3;
/// The host kernel's vhost-vsock device.
pub const VHOST_VSOCK_DEVICE: &str = "/dev/vhost-vsock";
/// The vhost-user vsock backend's binary.
pub const BACKEND_BINARY: &str = "vhost-device-vsock";
/// The backend's version scripts/setup.sh installs under `$CLOISTER_CACHE`.
pub const BACKEND_VERSION: &str = "0.3.0";
/// Names the backend's binary, overriding the search.
pub const BACKEND_ENV: &str = "CLOISTER_VHOST_DEVICE_VSOCK";
/// A running box's endpoints, in the image folder.
pub const RUN_STATE_FILE: &str = "run.json";
/// The backend's vhost-user socket (QEMU connects to it), in the image folder.
pub const VHOST_USER_SOCKET: &str = "vhost-user-vsock.sock";
/// The backend's socket for host connections (`CONNECT <port>`), in the image folder.
pub const HOST_SOCKET: &str = "vsock.sock";
/// The backend's own log, in the image folder.
pub const BACKEND_LOG: &str = "vhost-device-vsock.log";
/// How long the backend may take to create its socket.
pub const BACKEND_START_TIMEOUT_MS: u64 = 10_000;
/// How long one connection attempt, or one answer, may take.
pub const ANSWER_TIMEOUT_MS: u64 = 10_000;
/// Pause between readiness questions.
pub const READY_POLL_MS: u64 = 500;
/// Longest path of a Unix socket (`sun_path` holds 108 bytes with its NUL).
const UNIX_SOCKET_PATH_MAX_BYTES: usize = 107;
/// Longest line of the backend's handshake answer (`OK <port>`).
const HANDSHAKE_LINE_MAX_BYTES: usize = 32;

/// Why the host channel could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The backend binary is nowhere to be found.
    #[error(
        "no {BACKEND_BINARY} here and no {VHOST_VSOCK_DEVICE}: run scripts/setup.sh (it installs \
         {BACKEND_BINARY} {BACKEND_VERSION}), or name the binary in {BACKEND_ENV}"
    )]
    NoBackend,
    /// A socket path is too long for a Unix socket.
    #[error("{0} is longer than a Unix socket path may be; use a shorter image folder")]
    PathTooLong(PathBuf),
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The backend exited or never made its socket.
    #[error("{BACKEND_BINARY} did not start: {0}")]
    Backend(String),
    /// No box answers on the channel (not booted yet, or gone).
    #[error("the box does not answer on vsock port {port}")]
    NoAnswer {
        /// The port.
        port: u32,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The box answered something unusable.
    #[error("the box's answer is unusable")]
    Channel(#[from] HostChannelError),
    /// The box refused the request.
    #[error("the box refused: {0}")]
    Refused(String),
    /// No box was started from this image folder (or it is already stopped).
    #[error("no running box recorded in {0} (start one with `cloister run --detach`)")]
    NotRunning(PathBuf),
    /// QEMU exited while the box was awaited.
    #[error("QEMU exited before the box was ready")]
    QemuExited,
    /// A service of the box failed for good.
    #[error("the box will not be ready: service(s) failed: {}", .0.join(", "))]
    ServiceFailed(Vec<String>),
    /// The box did not become ready in time.
    #[error("the box was not ready after {} s ({last})", .waited.as_secs())]
    NotReady {
        /// How long it was awaited.
        waited: Duration,
        /// The last answer or error.
        last: String,
    },
    /// The box did not power off in time.
    #[error("QEMU (pid {pid}) still runs {} s after the poweroff request", .waited.as_secs())]
    StillRunning {
        /// QEMU's pid.
        pid: u32,
        /// How long it was awaited.
        waited: Duration,
    },
}

/// How QEMU gives the box its vsock device, and where the host connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VsockDevice {
    /// The host kernel's vhost-vsock: `-device vhost-vsock-pci,guest-cid=N`; the host
    /// connects with AF_VSOCK to (N, port).
    Kernel {
        /// The guest's context id (unique on the host).
        guest_cid: u32,
    },
    /// A vhost-user backend: QEMU connects to `socket`; the host to `host_socket`.
    VhostUser {
        /// The backend's vhost-user socket.
        socket: PathBuf,
        /// The backend's socket for host connections.
        host_socket: PathBuf,
    },
}

/// Whether the host kernel's vhost-vsock can be used (the device opens read-write).
pub fn kernel_vhost_vsock_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_VSOCK_DEVICE)
        .is_ok()
}

/// The QEMU arguments for the device. A vhost-user backend maps the guest's memory, so the
/// memory becomes a shared memfd of `memory_mib` (the same as `-m`).
pub fn qemu_arguments(device: &VsockDevice, memory_mib: u32) -> Vec<String> {
    match device {
        VsockDevice::Kernel { guest_cid } => vec![
            "-device".into(),
            format!("vhost-vsock-pci,guest-cid={guest_cid}"),
        ],
        VsockDevice::VhostUser { socket, .. } => vec![
            "-object".into(),
            format!("memory-backend-memfd,id=mem0,size={memory_mib}M,share=on"),
            "-machine".into(),
            "memory-backend=mem0".into(),
            "-chardev".into(),
            format!(
                "socket,id=vsock0,path={}",
                socket.display().to_string().replace(',', ",,")
            ),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vsock0".into(),
        ],
    }
}

/// The backend binary: [`BACKEND_ENV`], else the one scripts/setup.sh installed under
/// `cache`, else `PATH`.
pub fn find_backend(cache: &Path) -> Result<PathBuf, VsockError> {
    if let Some(p) = std::env::var_os(BACKEND_ENV) {
        return Ok(PathBuf::from(p));
    }
    let installed = cache
        .join(format!("{BACKEND_BINARY}-{BACKEND_VERSION}"))
        .join("bin")
        .join(BACKEND_BINARY);
    if installed.is_file() {
        return Ok(installed);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(BACKEND_BINARY))
        .find(|p| p.is_file())
        .ok_or(VsockError::NoBackend)
}

/// A started vhost-user backend.
#[derive(Debug)]
pub struct Backend {
    /// The process (it keeps running when this is dropped).
    pub child: Child,
    /// The device QEMU gets.
    pub device: VsockDevice,
}

impl Backend {
    /// Stops the backend and waits for it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_sockets(&self.device);
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VsockError {
    let what = what.into();
    move |source| VsockError::Io { what, source }
}

fn unix_socket_path(dir: &Path, name: &str) -> Result<PathBuf, VsockError> {
    let path =
        std::path::absolute(dir.join(name)).map_err(io("cannot resolve the image folder"))?;
    // The backend also makes `<host socket>_<port>` for connections the box opens.
    if path.as_os_str().len() + 11 > UNIX_SOCKET_PATH_MAX_BYTES {
        return Err(VsockError::PathTooLong(path));
    }
    Ok(path)
}

fn remove_sockets(device: &VsockDevice) {
    if let VsockDevice::VhostUser {
        socket,
        host_socket,
    } = device
    {
        let _ = std::fs::remove_file(socket);
        let _ = std::fs::remove_file(host_socket);
    }
}

/// Starts `binary` as the box's vsock backend, its sockets and log in `dir`, in its own
/// process group (a Ctrl-C meant for QEMU's console does not reach it), and waits until its
/// vhost-user socket exists.
pub fn start_backend(binary: &Path, dir: &Path, guest_cid: u32) -> Result<Backend, VsockError> {
    let socket = unix_socket_path(dir, VHOST_USER_SOCKET)?;
    let host_socket = unix_socket_path(dir, HOST_SOCKET)?;
    let device = VsockDevice::VhostUser {
        socket: socket.clone(),
        host_socket: host_socket.clone(),
    };
    remove_sockets(&device);
    let log_path = dir.join(BACKEND_LOG);
    let log = std::fs::File::create(&log_path)
        .map_err(io(format!("cannot create {}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io(format!("cannot reopen {}", log_path.display())))?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(binary)
            .arg("--vm")
            .arg(format!(
                "guest-cid={guest_cid},socket={},uds-path={}",
                socket.display(),
                host_socket.display()
            ))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(io(format!("cannot start {}", binary.display())))?
    };
    let started = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(VsockError::Backend(format!(
                "it exited ({status}): {}",
                text.trim()
            )));
        }
        if started.elapsed() > Duration::from_millis(BACKEND_START_TIMEOUT_MS) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VsockError::Backend(format!(
                "no socket {} after {BACKEND_START_TIMEOUT_MS} ms",
                socket.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Backend { child, device })
}

/// A connection to the box's host-channel port.
#[derive(Debug)]
pub enum ChannelStream {
    /// Through the vhost-user backend's Unix socket, after the handshake.
    Unix(UnixStream),
    /// Straight AF_VSOCK (kernel vhost-vsock).
    Vsock(vsock::VsockStream),
}

impl Read for ChannelStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ChannelStream::Unix(s) => s.read(buf),
            ChannelStream::Vsock(s) => s.read(buf),
        }
    }
}

impl Write for ChannelStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ChannelStream::Unix(s) => s.write(buf),
            ChannelStream::Vsock(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ChannelStream::Unix(s) => s.flush(),
            ChannelStream::Vsock(s) => s.flush(),
        }
    }
}

/// Connects to the box's `port`. Through the backend: `CONNECT <port>\n`, answered by
/// `OK <local port>\n` once the box accepted (the backend closes the socket when it did not).
pub fn connect(device: &VsockDevice, port: u32) -> Result<ChannelStream, VsockError> {
    let timeout = Some(Duration::from_millis(ANSWER_TIMEOUT_MS));
    let no_answer = |source| VsockError::NoAnswer { port, source };
    match device {
        VsockDevice::Kernel { guest_cid } => {
            let s =
                vsock::VsockStream::connect_with_cid_port(*guest_cid, port).map_err(no_answer)?;
            s.set_read_timeout(timeout).map_err(no_answer)?;
            s.set_write_timeout(timeout).map_err(no_answer)?;
            Ok(ChannelStream::Vsock(s))
        }
        VsockDevice::VhostUser { host_socket, .. } => {
            let mut s = UnixStream::connect(host_socket).map_err(no_answer)?;
            s.set_read_timeout(timeout).map_err(no_answer)?;
            s.set_write_timeout(timeout).map_err(no_answer)?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())
                .map_err(no_answer)?;
            let line = read_handshake_line(&mut s).map_err(no_answer)?;
            if !line.starts_with("OK ") {
                return Err(no_answer(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("the backend answered {line:?}"),
                )));
            }
            Ok(ChannelStream::Unix(s))
        }
    }
}

/// One line, byte by byte, so that nothing after it is consumed.
fn read_handshake_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.len() < HANDSHAKE_LINE_MAX_BYTES {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the box refused the connection (nothing listens on the port yet)",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Asks the box one question on a fresh connection.
pub fn ask(device: &VsockDevice, request: HostRequest) -> Result<HostResponse, VsockError> {
    let mut stream = connect(device, HOST_CHANNEL_VSOCK_PORT)?;
    let response = host_channel::ask(&mut stream, request)?;
    if !response.ok {
        return Err(VsockError::Refused(
            response.error.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    Ok(response)
}

/// Asks the box for its status until it says ready; fails early when `qemu_running` turns
/// false or a service failed for good, and after `timeout`.
pub fn wait_ready(
    device: &VsockDevice,
    timeout: Duration,
    mut qemu_running: impl FnMut() -> bool,
) -> Result<HostResponse, VsockError> {
    let started = Instant::now();
    loop {
        if !qemu_running() {
            return Err(VsockError::QemuExited);
        }
        let last = match ask(device, HostRequest::Status) {
            Ok(r) if r.ready == Some(true) => return Ok(r),
            Ok(r) => {
                let services = r.services.unwrap_or_default();
                let failed: Vec<String> = services
                    .iter()
                    .filter(|s| s.state == "failed")
                    .map(|s| s.name.clone())
                    .collect();
                if !failed.is_empty() {
                    return Err(VsockError::ServiceFailed(failed));
                }
                services
                    .iter()
                    .map(|s| format!("{} {}", s.name, s.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            Err(e) => error_chain(&e),
        };
        if started.elapsed() > timeout {
            return Err(VsockError::NotReady {
                waited: started.elapsed(),
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(READY_POLL_MS));
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A box started by `cloister run`, as recorded in its image folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Where the host connects.
    pub device: VsockDevice,
    /// QEMU's pid, for a detached box (a foreground `cloister run` removes the file itself
    /// when QEMU exits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<u32>,
    /// The vhost-user backend's pid, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_pid: Option<u32>,
}

impl RunState {
    /// Writes `dir`/[`RUN_STATE_FILE`].
    pub fn write(&self, dir: &Path) -> Result<(), VsockError> {
        let path = dir.join(RUN_STATE_FILE);
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other);
        json.and_then(|j| std::fs::write(&path, j + "\n"))
            .map_err(io(format!("cannot write {}", path.display())))
    }

    /// Reads `dir`/[`RUN_STATE_FILE`].
    pub fn read(dir: &Path) -> Result<RunState, VsockError> {
        let path = dir.join(RUN_STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VsockError::NotRunning(dir.to_path_buf()));
            }
            Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| VsockError::Io {
            what: format!("{} is not a run record", path.display()),
            source: std::io::Error::other(e),
        })
    }

    /// Removes the record.
    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(RUN_STATE_FILE));
    }
}

/// Whether process `pid` exists.
pub fn process_exists(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

fn terminate(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

/// What [`stop`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// From the request to QEMU's exit (or the record's removal by a foreground run).
    pub took: Duration,
}

/// Asks the box recorded in `dir` to power off, waits up to `timeout` for QEMU to exit, then
/// stops the backend and removes the record and sockets.
pub fn stop(dir: &Path, timeout: Duration) -> Result<Stopped, VsockError> {
    let state = RunState::read(dir)?;
    ask(&state.device, HostRequest::Poweroff)?;
    let asked = Instant::now();
    loop {
        let gone = match state.qemu_pid {
            Some(pid) => !process_exists(pid),
            // A foreground run removes the record when its QEMU exits.
            None => !dir.join(RUN_STATE_FILE).exists(),
        };
        if gone {
            break;
        }
        if asked.elapsed() > timeout {
            return Err(VsockError::StillRunning {
                pid: state.qemu_pid.unwrap_or(0),
                waited: asked.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = asked.elapsed();
    if let Some(pid) = state.backend_pid
        && state.qemu_pid.is_some()
    {
        terminate(pid);
        let until = Instant::now() + Duration::from_secs(5);
        while process_exists(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_sockets(&state.device);
        RunState::remove(dir);
    }
    Ok(Stopped { took })
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn qemu_gets_a_kernel_or_a_vhost_user_device() {
        let args = qemu_arguments(&VsockDevice::Kernel { guest_cid: 7 }, 1024);
        assert_eq!(args, ["-device", "vhost-vsock-pci,guest-cid=7"]);
        let args = qemu_arguments(
            &VsockDevice::VhostUser {
                socket: "/run/a,b/v.sock".into(),
                host_socket: "/run/h.sock".into(),
            },
            2048,
        );
        assert_eq!(
            args,
            [
                "-object",
                "memory-backend-memfd,id=mem0,size=2048M,share=on",
                "-machine",
                "memory-backend=mem0",
                "-chardev",
                "socket,id=vsock0,path=/run/a,,b/v.sock",
                "-device",
                "vhost-user-vsock-pci,chardev=vsock0",
            ]
        );
    }

    #[test]
    fn run_state_round_trips_and_its_absence_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            RunState::read(dir.path()),
            Err(VsockError::NotRunning(_))
        ));
        let state = RunState {
            device: VsockDevice::VhostUser {
                socket: "/x/v.sock".into(),
                host_socket: "/x/h.sock".into(),
            },
            qemu_pid: Some(12),
            backend_pid: None,
        };
        state.write(dir.path()).unwrap();
        assert_eq!(RunState::read(dir.path()).unwrap(), state);
        std::fs::write(dir.path().join(RUN_STATE_FILE), b"{").unwrap();
        assert!(matches!(
            RunState::read(dir.path()),
            Err(VsockError::Io { .. })
        ));
    }

    #[test]
    fn a_long_image_folder_is_refused_for_sockets() {
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        assert!(matches!(
            unix_socket_path(&long, HOST_SOCKET),
            Err(VsockError::PathTooLong(_))
        ));
    }

    /// A stand-in for the backend's host socket: answers the handshake as told, then one
    /// host-channel answer.
    fn fake_backend(dir: &Path, handshake: &'static [u8]) -> VsockDevice {
        let host_socket = dir.join(HOST_SOCKET);
        let listener = UnixListener::bind(&host_socket).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            s.write_all(handshake).unwrap();
            if handshake.starts_with(b"OK") {
                let mut req = [0u8; 19];
                s.read_exact(&mut req).unwrap();
                assert_eq!(&req, b"{\"cmd\":\"poweroff\"}\n");
                s.write_all(b"{\"ok\":false,\"error\":\"busy\"}\n").unwrap();
            }
        });
        VsockDevice::VhostUser {
            socket: dir.join(VHOST_USER_SOCKET),
            host_socket,
        }
    }

    #[test]
    fn requests_go_through_the_backend_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let device = fake_backend(dir.path(), b"OK 1073741824\n");
        // The box's refusal comes back as such.
        match ask(&device, HostRequest::Poweroff) {
            Err(VsockError::Refused(why)) => assert_eq!(why, "busy"),
            other => panic!("{other:?}"),
        }

        let dir = tempfile::tempdir().unwrap();
        let device = fake_backend(dir.path(), b"");
        assert!(matches!(
            ask(&device, HostRequest::Status),
            Err(VsockError::NoAnswer { port: 1024, .. })
        ));
    }

    #[test]
    fn waiting_for_readiness_ends_when_qemu_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let device = VsockDevice::VhostUser {
            socket: dir.path().join("a"),
            host_socket: dir.path().join("b"),
        };
        assert!(matches!(
            wait_ready(&device, Duration::from_secs(60), || false),
            Err(VsockError::QemuExited)
        ));
        assert!(matches!(
            wait_ready(&device, Duration::ZERO, || true),
            Err(VsockError::NotReady { .. })
        ));
    }
}
