//! The supervisor's event loop: one task owns every service's state and reacts to child exits
//! (SIGCHLD, then a `waitid`/`waitpid` loop), notify datagrams, log lines, control requests and
//! timers (start timeout, watchdog, stop timeout, restart delay).
//!
//! Helper tasks only move bytes (pipes, sockets) into the loop's channel; every decision is
//! made here, in one place. This module must never block on a service, and as PID 1 it must
//! never return on an error.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::cgroup::{self, CgroupTree};
use crate::control::{
    Event, LOG_TAIL_DEFAULT_LINES, REQUEST_LINE_MAX_BYTES, Request, Response, ServiceInfo,
};
use crate::host_channel::{
    CCEL_TABLE, HostRequest, HostResponse, TDX_GUEST_DEVICE, boot_measurements, status_response,
};
use crate::host_listener::{self, Answer, HostChannelConfig};
use crate::logs::{LineSplitter, LogLine, LogRing, Stream};
use crate::manifest::{
    self, NotifySocketKind, Readiness, ServiceManifest, SignalNumber, StartLimitAction,
};
use crate::notify::{NOTIFY_DATAGRAM_MAX_BYTES, NotifyError, NotifyMessage, parse_datagram};
use crate::policy::{ExitCause, StartLimit, restart_delay_ms};
use crate::sys::{self, ChildSetup, ExitStatus, SpawnPlan};
use crate::{
    Error, ServiceStopResult, ShutdownAction, ShutdownReport, StopOutcome, SupervisorConfig,
};

/// PATH given to services that do not set one.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After SIGKILL, how long shutdown waits for an exit before giving up on a process.
const SIGKILL_WAIT_MS: u64 = 5_000;
/// A service that stayed ready this long has its restart backoff reset.
const BACKOFF_RESET_AFTER_MS: u64 = 10_000;
/// Capacity of the loop's input channel (log lines, datagrams, requests).
const INPUT_CHANNEL_CAPACITY: usize = 1_024;
/// Events queued for one subscriber before it is dropped as too slow.
const SUBSCRIBER_QUEUE_EVENTS: usize = 1_024;
/// Read buffer for a service's output pipe.
const PIPE_READ_BYTES: usize = 4_096;
/// Deepest parent chain walked when checking a notify sender.
const ANCESTRY_MAX_DEPTH: usize = 64;

/// Everything the helper tasks hand to the loop.
enum Input {
    Log {
        service: usize,
        pid: i32,
        stream: Stream,
        text: String,
    },
    Notify {
        service: usize,
        sender: Option<i32>,
        result: Result<Vec<NotifyMessage>, NotifyError>,
    },
    Control {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    Subscribe(mpsc::Sender<String>),
    /// A `logs` request with `follow`: reply with the tail and register `lines`, in one step
    /// so that no line is lost or sent twice in between.
    FollowLogs {
        request: Request,
        reply: oneshot::Sender<Response>,
        lines: mpsc::Sender<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Inactive,
    Waiting,
    Starting,
    Running,
    Reloading,
    Stopping,
    AutoRestart,
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Reloading => "reloading",
            Self::Stopping => "stopping",
            Self::AutoRestart => "auto-restart",
            Self::Failed => "failed",
        }
    }
}

struct Service {
    manifest: ServiceManifest,
    state: State,
    pid: Option<i32>,
    started_at: Option<Instant>,
    ready_at: Option<Instant>,
    ever_ready: bool,
    restarts: u32,
    backoff_attempt: u32,
    start_limit: StartLimit,
    /// Start timeout, watchdog, stop timeout or restart time, depending on the state.
    deadline: Option<Instant>,
    /// Set when the supervisor ended the run for a timeout or the watchdog.
    kill_cause: Option<ExitCause>,
    /// An operator or shutdown stopped it: no automatic restart.
    stop_requested: bool,
    restart_after_stop: bool,
    stop_started: Option<Instant>,
    sigkill_sent: bool,
    last_exit: Option<String>,
    status: Option<String>,
    errno: Option<i32>,
    restart_delay_ms: Option<u64>,
    watchdog_usec: u64,
    logs: LogRing,
    notify_env: String,
    notify_path: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    cgroup_rel: Option<String>,
    memory_warned: bool,
}

impl Service {
    fn new(manifest: ServiceManifest) -> Self {
        Self {
            state: State::Inactive,
            pid: None,
            started_at: None,
            ready_at: None,
            ever_ready: false,
            restarts: 0,
            backoff_attempt: 0,
            start_limit: StartLimit::new(
                manifest.start_limit_burst,
                manifest.start_limit_interval_ms,
            ),
            deadline: None,
            kill_cause: None,
            stop_requested: false,
            restart_after_stop: false,
            stop_started: None,
            sigkill_sent: false,
            last_exit: None,
            status: None,
            errno: None,
            restart_delay_ms: None,
            watchdog_usec: manifest.watchdog_ms.saturating_mul(1_000),
            logs: LogRing::new(manifest.log_buffer_lines),
            notify_env: String::new(),
            notify_path: None,
            cgroup: None,
            cgroup_rel: None,
            memory_warned: false,
            manifest,
        }
    }

    fn name(&self) -> &str {
        &self.manifest.name
    }

    fn depends_on(&self, other: &str) -> bool {
        self.manifest
            .requires
            .iter()
            .chain(&self.manifest.after)
            .any(|d| d == other)
    }
}

struct Shutdown {
    action: ShutdownAction,
    started: Instant,
}

struct Supervisor {
    config: SupervisorConfig,
    services: Vec<Service>,
    by_name: HashMap<String, usize>,
    by_pid: HashMap<i32, usize>,
    manifest_errors: Vec<String>,
    input: mpsc::Sender<Input>,
    subscribers: Vec<mpsc::Sender<String>>,
    /// Connections following a service's log: (service, queue).
    log_followers: Vec<(usize, mpsc::Sender<String>)>,
    shutdown: Option<Shutdown>,
    stop_results: Vec<ServiceStopResult>,
    cgroups: Option<CgroupTree>,
    all_ready_announced: bool,
}

/// Runs until shutdown completes. See [`crate::run`].
pub async fn run(config: SupervisorConfig) -> Result<ShutdownReport, Error> {
    // Signal handlers first, so that no child exit goes unnoticed.
    let mut sigchld = signal(SignalKind::child()).map_err(Error::EventLoop)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::EventLoop)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::EventLoop)?;
    if !config.pid1
        && let Err(e) = sys::become_child_subreaper()
    {
        tracing::warn!("cannot become a child subreaper, orphans go to PID 1: {e}");
    }
    let (input, mut inputs) = mpsc::channel(INPUT_CHANNEL_CAPACITY);
    let mut supervisor = Supervisor::new(config, input)?;
    supervisor.start_all();
    loop {
        supervisor.reap_children();
        supervisor.advance();
        if let Some(report) = supervisor.finished() {
            supervisor.cleanup();
            return Ok(report);
        }
        let deadline = supervisor.next_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = sigterm.recv() => supervisor.request_shutdown(ShutdownAction::PowerOff, "SIGTERM"),
            _ = sigint.recv() => {
                let action = if supervisor.config.pid1 { ShutdownAction::Reboot } else { ShutdownAction::PowerOff };
                supervisor.request_shutdown(action, "SIGINT");
            }
            Some(input) = inputs.recv() => supervisor.handle(input),
            () = sleep => supervisor.on_timers(Instant::now()),
        }
    }
}

impl Supervisor {
    fn new(config: SupervisorConfig, input: mpsc::Sender<Input>) -> Result<Self, Error> {
        let loaded = manifest::load_dir(&config.manifest_dir);
        let mut manifest_errors = Vec::new();
        for e in &loaded.errors {
            tracing::error!("bad manifest, service not loaded: {e}");
            manifest_errors.push(e.to_string());
        }
        let leaf = if config.pid1 {
            "cloister.services".to_owned()
        } else {
            format!("cloister-supervisor.{}", std::process::id())
        };
        let cgroups = CgroupTree::create(&leaf);
        match &cgroups {
            Some(tree) if !tree.memory => {
                tracing::info!(
                    "cgroup v2 is mounted without the memory controller: memory_max is not applied"
                )
            }
            None => tracing::info!("no writable cgroup v2: memory_max is not applied"),
            Some(_) => {}
        }
        let mut supervisor = Self {
            services: loaded.services.into_iter().map(Service::new).collect(),
            by_name: HashMap::new(),
            by_pid: HashMap::new(),
            manifest_errors,
            input,
            subscribers: Vec::new(),
            log_followers: Vec::new(),
            shutdown: None,
            stop_results: Vec::new(),
            cgroups,
            all_ready_announced: false,
            config,
        };
        for (i, s) in supervisor.services.iter().enumerate() {
            supervisor.by_name.insert(s.name().to_owned(), i);
        }
        if let Err(e) = supervisor.setup_runtime_dir() {
            if !supervisor.config.pid1 {
                return Err(e);
            }
            tracing::error!("{e}; notify sockets fall back to abstract names");
        }
        supervisor.open_notify_sockets();
        if let Err(e) = supervisor.open_control_socket() {
            if !supervisor.config.pid1 {
                return Err(e);
            }
            tracing::error!("{e}; running without a control socket");
        }
        if let Some(channel) = supervisor.config.host_channel.clone() {
            supervisor.open_host_channel(channel);
        }
        supervisor.fail_dependency_cycles();
        Ok(supervisor)
    }

    fn setup_runtime_dir(&self) -> Result<(), Error> {
        let dir = self.config.runtime_dir.join("notify");
        std::fs::create_dir_all(&dir).map_err(|source| Error::RuntimeDir {
            path: dir.clone(),
            source,
        })
    }

    fn open_notify_sockets(&mut self) {
        let dir = self.config.runtime_dir.join("notify");
        for i in 0..self.services.len() {
            let service = &self.services[i];
            let abstract_name = format!(
                "cloister-supervisor/{}/{}",
                std::process::id(),
                service.name()
            );
            let path = dir.join(format!("{}.sock", service.name()));
            let opened = match service.manifest.notify_socket {
                NotifySocketKind::Path => {
                    open_notify_socket(Some(&path), &abstract_name).or_else(|e| {
                        tracing::warn!(
                            "{}: cannot bind {}: {e}; using an abstract socket",
                            service.name(),
                            path.display()
                        );
                        open_notify_socket(None, &abstract_name)
                    })
                }
                NotifySocketKind::Abstract => open_notify_socket(None, &abstract_name),
            };
            match opened {
                Ok((fd, path)) => {
                    let service = &mut self.services[i];
                    service.notify_env = match &path {
                        Some(p) => p.display().to_string(),
                        None => format!("@{abstract_name}"),
                    };
                    if let (Some(p), Some(user)) = (&path, &service.manifest.user) {
                        chown_for_service(p, user, service.manifest.group.as_deref());
                    }
                    service.notify_path = path;
                    let input = self.input.clone();
                    tokio::spawn(read_notify_socket(fd, i, input));
                }
                Err(e) => tracing::error!("{}: no notify socket: {e}", self.services[i].name()),
            }
        }
    }

    fn open_control_socket(&mut self) -> Result<(), Error> {
        let path = self.config.control_socket.clone();
        let err = |source| Error::ControlSocket {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        // Connecting needs write permission: with the usual umask nobody but the owner has it
        // from the start, and the mode is then narrowed to 0600. The peer's uid is checked too.
        let listener = UnixListener::bind(&path).map_err(err)?;
        rustix::fs::chmod(&path, rustix::fs::Mode::from_raw_mode(0o600))
            .map_err(|e| err(e.into()))?;
        tokio::spawn(serve_control(listener, self.input.clone()));
        Ok(())
    }

    /// Starts the host channel (vsock). Never fatal: without it the box still serves, and
    /// the host falls back to what it sees anyway.
    fn open_host_channel(&self, channel: HostChannelConfig) {
        let input = self.input.clone();
        let expected = channel.expected_measurements;
        let answer: Answer = Arc::new(move |request| match request {
            HostRequest::Status => match ask_event_loop(&input, Request::List) {
                Some(r) if r.ok => status_response(r.services.as_deref().unwrap_or_default()),
                _ => HostResponse::error("the supervisor did not answer"),
            },
            HostRequest::Poweroff => match ask_event_loop(&input, Request::Poweroff) {
                Some(r) if r.ok => HostResponse::ok(),
                _ => HostResponse::error("the supervisor did not answer"),
            },
            HostRequest::Measurements => HostResponse {
                ok: true,
                measurements: Some(boot_measurements(
                    expected.as_deref(),
                    Path::new(TDX_GUEST_DEVICE),
                    Path::new(CCEL_TABLE),
                )),
                ..HostResponse::default()
            },
        });
        match host_listener::start(channel.port, answer) {
            Ok(()) => eprintln!(
                "supervisor: host channel on vsock port {} boottime_ms={}",
                channel.port,
                sys::boottime_ms()
            ),
            Err(e) => tracing::error!(
                "cannot listen on vsock port {}: {e}; running without the host channel",
                channel.port
            ),
        }
    }

    /// Services on a dependency cycle can never start: mark them failed with the cycle.
    fn fail_dependency_cycles(&mut self) {
        for start in 0..self.services.len() {
            let mut path = vec![start];
            if let Some(cycle) = self.find_cycle(start, &mut path) {
                let names: Vec<&str> = cycle.iter().map(|i| self.services[*i].name()).collect();
                let text = format!("dependency cycle: {}", names.join(" -> "));
                tracing::error!("{}: {text}", self.services[start].name());
                let s = &mut self.services[start];
                s.state = State::Failed;
                s.status = Some(text);
            }
        }
    }

    fn find_cycle(&self, start: usize, path: &mut Vec<usize>) -> Option<Vec<usize>> {
        let current = *path.last()?;
        let m = &self.services[current].manifest;
        for dep in m.requires.iter().chain(&m.after) {
            let Some(&d) = self.by_name.get(dep) else {
                continue;
            };
            if d == start {
                let mut cycle = path.clone();
                cycle.push(start);
                return Some(cycle);
            }
            if path.contains(&d) || path.len() > self.services.len() {
                continue;
            }
            path.push(d);
            if let Some(cycle) = self.find_cycle(start, path) {
                return Some(cycle);
            }
            path.pop();
        }
        None
    }

    fn start_all(&mut self) {
        for s in &mut self.services {
            if s.state == State::Inactive {
                s.state = State::Waiting;
            }
        }
    }

    // ---- the state machine ----

    /// Starts waiting services whose dependencies allow it; moves shutdown along.
    fn advance(&mut self) {
        if self.shutdown.is_some() {
            self.advance_shutdown();
            return;
        }
        loop {
            let mut changed = false;
            for i in 0..self.services.len() {
                if self.services[i].state != State::Waiting {
                    continue;
                }
                match self.dependencies_ready(i) {
                    Ok(true) => {
                        self.launch(i);
                        changed = true;
                    }
                    Ok(false) => {}
                    Err(reason) => {
                        self.fail(i, reason);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        self.announce_all_ready();
    }

    /// Ok(true): may start; Ok(false): must wait; Err: can never start.
    fn dependencies_ready(&mut self, i: usize) -> Result<bool, String> {
        let mut ready = true;
        for dep in self.services[i].manifest.requires.clone() {
            let Some(&d) = self.by_name.get(&dep) else {
                return Err(format!("requires `{dep}`, which has no valid manifest"));
            };
            match self.services[d].state {
                State::Running | State::Reloading => {}
                State::Failed => return Err(format!("required service `{dep}` failed")),
                State::Inactive => {
                    self.set_state(d, State::Waiting);
                    ready = false;
                }
                _ => ready = false,
            }
        }
        for dep in &self.services[i].manifest.after {
            if let Some(&d) = self.by_name.get(dep)
                && matches!(
                    self.services[d].state,
                    State::Waiting | State::Starting | State::AutoRestart
                )
            {
                ready = false;
            }
        }
        Ok(ready)
    }

    fn launch(&mut self, i: usize) {
        let now = Instant::now();
        if !self.services[i].start_limit.try_start(now) {
            let m = &self.services[i].manifest;
            let reason = format!(
                "start limit hit: more than {} starts within {} ms",
                m.start_limit_burst, m.start_limit_interval_ms
            );
            let action = m.start_limit_action;
            self.fail(i, reason);
            if action == StartLimitAction::Poweroff {
                self.request_shutdown(ShutdownAction::PowerOff, "start limit action");
            }
            return;
        }
        let s = &mut self.services[i];
        s.kill_cause = None;
        s.sigkill_sent = false;
        s.stop_started = None;
        s.stop_requested = false;
        s.ready_at = None;
        match self.spawn(i) {
            Ok(pid) => {
                let s = &mut self.services[i];
                s.pid = Some(pid);
                s.started_at = Some(now);
                self.by_pid.insert(pid, i);
                tracing::info!("{}: started, pid {pid}", self.services[i].name());
                match self.services[i].manifest.ready {
                    Readiness::Exec => self.mark_ready(i),
                    Readiness::Notify => {
                        let timeout = self.services[i].manifest.start_timeout_ms;
                        self.services[i].deadline =
                            (timeout > 0).then(|| now + Duration::from_millis(timeout));
                        self.set_state(i, State::Starting);
                    }
                }
            }
            Err(e) => {
                tracing::error!("{}: cannot start: {e}", self.services[i].name());
                self.services[i].last_exit = Some(format!("could not start: {e}"));
                self.after_run(i, ExitCause::UncleanExit);
            }
        }
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<i32> {
        let procs = self.prepare_cgroup(i);
        let s = &self.services[i];
        let m = &s.manifest;
        let identity =
            crate::users::resolve(Path::new("/etc"), m.user.as_deref(), m.group.as_deref())
                .map_err(std::io::Error::other)?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), SERVICE_PATH.into());
        if let Some(id) = &identity {
            if let Some(name) = &id.name {
                env.insert("USER".into(), name.clone());
                env.insert("LOGNAME".into(), name.clone());
            }
            if let Some(home) = &id.home {
                env.insert("HOME".into(), home.clone());
            }
        }
        env.extend(m.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
        if !s.notify_env.is_empty() {
            env.insert("NOTIFY_SOCKET".into(), s.notify_env.clone());
        }
        if s.watchdog_usec > 0 {
            env.insert("WATCHDOG_USEC".into(), s.watchdog_usec.to_string());
        }
        env.remove("WATCHDOG_PID");
        let program = find_program(&m.command, &env["PATH"])?;
        let argv = std::iter::once(m.command.as_str())
            .chain(m.args.iter().map(String::as_str))
            .map(c_string)
            .collect::<std::io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| c_string(&format!("{k}={v}")))
            .collect::<std::io::Result<Vec<_>>>()?;
        let cwd = m
            .working_directory
            .as_deref()
            .unwrap_or(Path::new("/"))
            .as_os_str()
            .as_bytes()
            .to_vec();
        let dev_null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
        let (out_read, out_write) = output_pipe()?;
        let (err_read, err_write) = output_pipe()?;
        let plan = SpawnPlan {
            program: CString::new(program.as_os_str().as_bytes()).map_err(std::io::Error::other)?,
            argv,
            envp,
            cwd: CString::new(cwd).map_err(std::io::Error::other)?,
            watchdog_pid: s.watchdog_usec > 0,
            stdio: [
                dev_null.as_raw_fd(),
                out_write.as_raw_fd(),
                err_write.as_raw_fd(),
            ],
            setup: ChildSetup {
                limit_nofile: m.limit_nofile,
                gid: identity.as_ref().map(|id| id.gid),
                uid: identity
                    .as_ref()
                    .filter(|_| m.user.is_some())
                    .map(|id| id.uid),
                cgroup_procs_fd: procs.as_ref().map(|f| f.as_raw_fd()),
                kill_on_parent_death: !self.config.pid1,
            },
        };
        let pid = sys::spawn(&plan)?;
        // Our copies of the child's ends close here.
        drop((dev_null, out_write, err_write, procs));
        for (fd, stream) in [(out_read, Stream::Stdout), (err_read, Stream::Stderr)] {
            tokio::spawn(read_output(fd, i, pid, stream, self.input.clone()));
        }
        Ok(pid)
    }

    /// Creates the service's cgroup and sets its memory limit; returns its cgroup.procs.
    fn prepare_cgroup(&mut self, i: usize) -> Option<std::fs::File> {
        let tree = self.cgroups.as_ref()?;
        let s = &mut self.services[i];
        if s.cgroup.is_none() {
            match tree.service(s.name()) {
                Ok(path) => {
                    s.cgroup_rel = cgroup::relative_path(&path);
                    s.cgroup = Some(path);
                }
                Err(e) => {
                    tracing::debug!("{}: no cgroup: {e}", s.manifest.name);
                    return None;
                }
            }
        }
        let path = s.cgroup.clone()?;
        if let Some(limit) = s.manifest.memory_max {
            let applied = tree.memory && cgroup::set_memory_max(&path, limit.0).is_ok();
            if !applied && !s.memory_warned {
                tracing::warn!(
                    "{}: memory_max not applied: no cgroup v2 memory controller",
                    s.name()
                );
                s.memory_warned = true;
            }
        }
        cgroup::open_procs(&path).ok()
    }

    fn mark_ready(&mut self, i: usize) {
        let now = Instant::now();
        let first = !self.services[i].ever_ready;
        let s = &mut self.services[i];
        s.ready_at = Some(now);
        s.ever_ready = true;
        s.deadline = (s.watchdog_usec > 0).then(|| now + Duration::from_micros(s.watchdog_usec));
        self.set_state(i, State::Running);
        if first {
            eprintln!(
                "supervisor: service {} ready boottime_ms={}",
                self.services[i].name(),
                sys::boottime_ms()
            );
        }
    }

    fn announce_all_ready(&mut self) {
        if self.all_ready_announced {
            return;
        }
        if self.services.iter().all(|s| s.ever_ready) {
            self.all_ready_announced = true;
            eprintln!(
                "supervisor: all services ready boottime_ms={}",
                sys::boottime_ms()
            );
        } else if self
            .services
            .iter()
            .all(|s| s.ever_ready || s.state == State::Failed)
        {
            self.all_ready_announced = true;
            let failed = self.services.iter().filter(|s| !s.ever_ready).count();
            eprintln!(
                "supervisor: boot settled with {failed} failed services boottime_ms={}",
                sys::boottime_ms()
            );
        }
    }

    fn fail(&mut self, i: usize, reason: String) {
        tracing::error!("{}: failed: {reason}", self.services[i].name());
        let s = &mut self.services[i];
        s.status = Some(reason);
        s.deadline = None;
        self.set_state(i, State::Failed);
    }

    /// Sends the stop signal to the service's process group; SIGKILL follows after the timeout.
    fn begin_stop(&mut self, i: usize, signal: SignalNumber) {
        let now = Instant::now();
        let s = &mut self.services[i];
        let Some(pid) = s.pid else { return };
        if let Err(e) = sys::signal_group(pid, signal.0) {
            tracing::debug!("{}: {}: {e}", s.manifest.name, signal.name());
        }
        let _ = sys::signal_group(pid, libc::SIGCONT);
        s.stop_started.get_or_insert(now);
        s.deadline = Some(now + Duration::from_millis(s.manifest.stop_timeout_ms));
        self.set_state(i, State::Stopping);
    }

    fn on_timers(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if self.services[i].deadline.is_some_and(|d| d <= now) {
                self.services[i].deadline = None;
                self.on_deadline(i);
            }
        }
    }

    fn on_deadline(&mut self, i: usize) {
        let name = self.services[i].name().to_owned();
        match self.services[i].state {
            State::Starting => {
                tracing::warn!("{name}: not ready within its start timeout; stopping it");
                self.services[i].kill_cause = Some(ExitCause::Timeout);
                let signal = self.services[i].manifest.stop_signal;
                self.begin_stop(i, signal);
            }
            State::Running | State::Reloading => self.watchdog_expired(i),
            State::Stopping => {
                let s = &mut self.services[i];
                if !s.sigkill_sent {
                    tracing::warn!("{name}: still running after its stop timeout; sending SIGKILL");
                    s.sigkill_sent = true;
                    if let Some(pid) = s.pid {
                        let _ = sys::signal_group(pid, libc::SIGKILL);
                    }
                    if let Some(cg) = &s.cgroup {
                        cgroup::kill_all(cg);
                    }
                    s.deadline = Some(Instant::now() + Duration::from_millis(SIGKILL_WAIT_MS));
                } else if self.shutdown.is_some() {
                    tracing::error!("{name}: did not exit after SIGKILL; giving up on it");
                    let pid = s.pid.take();
                    let stop_ms = elapsed_ms(s.stop_started);
                    if let Some(pid) = pid {
                        self.by_pid.remove(&pid);
                    }
                    self.stop_results.push(ServiceStopResult {
                        service: name,
                        outcome: StopOutcome::DidNotExit,
                        stop_ms,
                    });
                    self.set_state(i, State::Failed);
                }
            }
            State::AutoRestart => self.set_state(i, State::Waiting),
            _ => {}
        }
    }

    fn watchdog_expired(&mut self, i: usize) {
        tracing::warn!(
            "{}: watchdog timeout ({} ms without WATCHDOG=1); sending SIGABRT",
            self.services[i].name(),
            self.services[i].watchdog_usec / 1_000
        );
        self.services[i].kill_cause = Some(ExitCause::Watchdog);
        self.begin_stop(i, SignalNumber(libc::SIGABRT));
    }

    /// Reaps every exited child. A service's main process is peeked at first, so its process
    /// group can be killed while the group id cannot yet be reused.
    fn reap_children(&mut self) {
        while let Some(pid) = sys::peek_exited_child() {
            let service = self.by_pid.get(&pid).copied();
            if let Some(i) = service {
                // KillMode=control-group: what the main process leaves behind goes with it.
                let _ = sys::signal_group(pid, libc::SIGKILL);
                if let Some(cg) = &self.services[i].cgroup {
                    cgroup::kill_all(cg);
                }
            }
            let Some(status) = sys::reap(pid) else {
                break;
            };
            match service {
                Some(i) => self.main_exited(i, status),
                None => tracing::debug!("reaped orphan {pid}"),
            }
        }
    }

    fn main_exited(&mut self, i: usize, status: ExitStatus) {
        let s = &mut self.services[i];
        if let Some(pid) = s.pid.take() {
            self.by_pid.remove(&pid);
        }
        let exit = match (status.code, status.signal) {
            (Some(code), _) => format!("exited {code}"),
            (None, Some(sig)) => format!("killed by {}", SignalNumber(sig).name()),
            (None, None) => "ended".to_owned(),
        };
        let cause = s
            .kill_cause
            .take()
            .unwrap_or_else(|| ExitCause::from_exit(status.code, status.signal));
        s.last_exit = Some(match cause {
            ExitCause::Timeout => format!("start timeout, then {exit}"),
            ExitCause::Watchdog => format!("watchdog timeout, then {exit}"),
            _ => exit,
        });
        tracing::info!(
            "{}: {}",
            s.manifest.name,
            s.last_exit.as_deref().unwrap_or_default()
        );
        if s.ready_at
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(BACKOFF_RESET_AFTER_MS))
        {
            s.backoff_attempt = 0;
        }
        s.deadline = None;
        s.started_at = None;
        if s.stop_requested || self.shutdown.is_some() {
            let outcome = if s.sigkill_sent {
                StopOutcome::Killed
            } else {
                StopOutcome::Stopped
            };
            if self.shutdown.is_some() {
                self.stop_results.push(ServiceStopResult {
                    service: s.manifest.name.clone(),
                    outcome,
                    stop_ms: elapsed_ms(s.stop_started),
                });
            }
            s.stop_requested = false;
            if s.restart_after_stop && self.shutdown.is_none() {
                s.restart_after_stop = false;
                self.set_state(i, State::Waiting);
            } else {
                self.set_state(i, State::Inactive);
            }
            return;
        }
        self.after_run(i, cause);
    }

    /// Restart or settle after a run that ended on its own (or could not start).
    fn after_run(&mut self, i: usize, cause: ExitCause) {
        let s = &mut self.services[i];
        if self.shutdown.is_some() {
            self.set_state(i, State::Inactive);
            return;
        }
        if s.manifest.restart.restarts_on(cause) {
            s.backoff_attempt = s.backoff_attempt.saturating_add(1);
            s.restarts = s.restarts.saturating_add(1);
            let delay = restart_delay_ms(
                s.manifest.restart_delay_ms,
                s.manifest.restart_delay_max_ms,
                s.backoff_attempt,
            );
            s.restart_delay_ms = Some(delay);
            s.deadline = Some(Instant::now() + Duration::from_millis(delay));
            self.set_state(i, State::AutoRestart);
            if delay == 0 {
                self.services[i].deadline = None;
                self.set_state(i, State::Waiting);
            }
        } else if cause.is_failure() {
            self.set_state(i, State::Failed);
        } else {
            self.set_state(i, State::Inactive);
        }
    }

    // ---- inputs ----

    fn handle(&mut self, input: Input) {
        match input {
            Input::Log {
                service,
                pid,
                stream,
                text,
            } => {
                let s = &mut self.services[service];
                let mut console = std::io::stderr().lock();
                let _ = writeln!(console, "{}[{pid}]: {text}", s.manifest.name);
                let line = LogLine {
                    at_ms: unix_ms(),
                    stream,
                    text,
                };
                if self.log_followers.iter().any(|(i, _)| *i == service)
                    && let Ok(mut json) = serde_json::to_string(&line)
                {
                    json.push('\n');
                    self.log_followers
                        .retain(|(i, tx)| *i != service || tx.try_send(json.clone()).is_ok());
                }
                s.logs.push(line);
            }
            Input::Notify {
                service,
                sender,
                result,
            } => self.on_notify(service, sender, result),
            Input::Control { request, reply } => {
                let response = self.on_request(request);
                let _ = reply.send(response);
            }
            Input::Subscribe(tx) => self.subscribers.push(tx),
            Input::FollowLogs {
                request,
                reply,
                lines,
            } => {
                let service = match &request {
                    Request::Logs { service, .. } => self.by_name.get(service).copied(),
                    _ => None,
                };
                let response = self.on_request(request);
                if let (true, Some(i)) = (response.ok, service) {
                    self.log_followers.push((i, lines));
                }
                let _ = reply.send(response);
            }
        }
    }

    fn on_notify(
        &mut self,
        i: usize,
        sender: Option<i32>,
        result: Result<Vec<NotifyMessage>, NotifyError>,
    ) {
        let name = self.services[i].name().to_owned();
        let Some(sender) = sender else {
            tracing::warn!("{name}: notify datagram without sender credentials dropped");
            return;
        };
        if !self.sender_belongs(i, sender) {
            tracing::warn!(
                "{name}: notify datagram from pid {sender} rejected: it is not part of the service"
            );
            return;
        }
        let messages = match result {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!("{name}: malformed notify datagram from pid {sender} dropped: {e}");
                return;
            }
        };
        for message in messages {
            self.apply_notify(i, message);
        }
    }

    fn sender_belongs(&self, i: usize, sender: i32) -> bool {
        let s = &self.services[i];
        let Some(main) = s.pid else { return false };
        if sender == main {
            return true;
        }
        if let Some((_, pgrp, session)) = proc_stat(sender) {
            // Every service runs in its own session, led by its main process.
            if session == main || pgrp == main {
                return true;
            }
        }
        let mut pid = sender;
        for _ in 0..ANCESTRY_MAX_DEPTH {
            match proc_stat(pid) {
                Some((ppid, _, _)) if ppid == main => return true,
                Some((ppid, _, _)) if ppid > 1 => pid = ppid,
                _ => break,
            }
        }
        match (
            &s.cgroup_rel,
            u32::try_from(sender).ok().and_then(cgroup::cgroup_of),
        ) {
            (Some(ours), Some(theirs)) => *ours == theirs,
            _ => false,
        }
    }

    fn apply_notify(&mut self, i: usize, message: NotifyMessage) {
        let now = Instant::now();
        let state = self.services[i].state;
        match message {
            NotifyMessage::Ready => {
                if matches!(state, State::Starting | State::Reloading) {
                    self.mark_ready(i);
                }
            }
            NotifyMessage::Reloading => {
                if state == State::Running {
                    self.set_state(i, State::Reloading);
                }
            }
            NotifyMessage::Stopping => {
                if matches!(state, State::Running | State::Reloading | State::Starting) {
                    self.services[i].deadline = None;
                    self.set_state(i, State::Stopping);
                }
            }
            NotifyMessage::Status(text) => self.services[i].status = Some(text),
            NotifyMessage::Errno(n) => self.services[i].errno = Some(n),
            NotifyMessage::Watchdog => {
                let s = &mut self.services[i];
                if s.watchdog_usec > 0 && matches!(state, State::Running | State::Reloading) {
                    s.deadline = Some(now + Duration::from_micros(s.watchdog_usec));
                }
            }
            NotifyMessage::WatchdogTrigger => {
                if matches!(state, State::Running | State::Reloading) {
                    self.watchdog_expired(i);
                }
            }
            NotifyMessage::WatchdogUsec(usec) => {
                let s = &mut self.services[i];
                s.watchdog_usec = usec;
                if matches!(state, State::Running | State::Reloading) {
                    s.deadline = (usec > 0).then(|| now + Duration::from_micros(usec));
                }
            }
            NotifyMessage::ExtendTimeoutUsec(usec) => {
                let s = &mut self.services[i];
                if matches!(state, State::Starting | State::Stopping) {
                    let extended = now + Duration::from_micros(usec);
                    s.deadline = Some(s.deadline.map_or(extended, |d| d.max(extended)));
                }
            }
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        let service = match &request {
            Request::Start { service }
            | Request::Stop { service }
            | Request::Restart { service }
            | Request::Logs { service, .. } => match self.by_name.get(service) {
                Some(&i) => Some(i),
                None => return Response::error(format!("no service named `{service}`")),
            },
            _ => None,
        };
        if self.shutdown.is_some()
            && matches!(request, Request::Start { .. } | Request::Restart { .. })
        {
            return Response::error("the supervisor is shutting down");
        }
        match (request, service) {
            (Request::List, _) => Response {
                ok: true,
                services: Some((0..self.services.len()).map(|i| self.info(i)).collect()),
                manifest_errors: Some(self.manifest_errors.clone()),
                ..Response::default()
            },
            (Request::Start { .. }, Some(i)) => {
                self.operator_start(i);
                Response::ok()
            }
            (Request::Stop { .. }, Some(i)) => {
                self.operator_stop(i, false);
                Response::ok()
            }
            (Request::Restart { .. }, Some(i)) => {
                if self.services[i].pid.is_some() {
                    self.operator_stop(i, true);
                } else {
                    self.operator_start(i);
                }
                Response::ok()
            }
            (Request::Logs { lines, .. }, Some(i)) => Response {
                ok: true,
                lines: Some(
                    self.services[i]
                        .logs
                        .tail(lines.unwrap_or(LOG_TAIL_DEFAULT_LINES)),
                ),
                ..Response::default()
            },
            (Request::Poweroff, _) => {
                self.request_shutdown(ShutdownAction::PowerOff, "control request");
                Response::ok()
            }
            (Request::Reboot, _) => {
                self.request_shutdown(ShutdownAction::Reboot, "control request");
                Response::ok()
            }
            _ => Response::error("unsupported request"),
        }
    }

    fn operator_start(&mut self, i: usize) {
        let s = &mut self.services[i];
        if matches!(
            s.state,
            State::Inactive | State::Failed | State::AutoRestart
        ) {
            if s.state == State::Failed {
                s.start_limit.reset();
            }
            s.backoff_attempt = 0;
            s.deadline = None;
            s.status = None;
            self.set_state(i, State::Waiting);
        }
    }

    fn operator_stop(&mut self, i: usize, restart: bool) {
        let s = &mut self.services[i];
        if s.pid.is_some() {
            s.stop_requested = true;
            s.restart_after_stop = restart;
            if s.state != State::Stopping {
                let signal = s.manifest.stop_signal;
                self.begin_stop(i, signal);
            }
        } else if matches!(s.state, State::Waiting | State::AutoRestart) {
            s.deadline = None;
            self.set_state(i, State::Inactive);
        }
    }

    fn info(&self, i: usize) -> ServiceInfo {
        let s = &self.services[i];
        ServiceInfo {
            name: s.manifest.name.clone(),
            state: s.state.name().to_owned(),
            pid: s.pid.and_then(|p| u32::try_from(p).ok()),
            restarts: s.restarts,
            last_exit: s.last_exit.clone(),
            uptime_ms: s.started_at.map(|t| elapsed_ms(Some(t))),
            status: s.status.clone(),
            errno: s.errno,
            restart_delay_ms: s.restart_delay_ms,
        }
    }

    fn set_state(&mut self, i: usize, state: State) {
        let s = &mut self.services[i];
        s.state = state;
        if self.subscribers.is_empty() {
            return;
        }
        let event = Event {
            service: s.manifest.name.clone(),
            state: state.name().to_owned(),
            pid: s.pid.and_then(|p| u32::try_from(p).ok()),
            restarts: s.restarts,
            restart_delay_ms: (state == State::AutoRestart)
                .then_some(s.restart_delay_ms)
                .flatten(),
            last_exit: matches!(state, State::Inactive | State::AutoRestart | State::Failed)
                .then(|| s.last_exit.clone())
                .flatten(),
            boottime_ms: sys::boottime_ms(),
        };
        let Ok(mut line) = serde_json::to_string(&event) else {
            return;
        };
        line.push('\n');
        self.subscribers
            .retain(|tx| tx.try_send(line.clone()).is_ok());
    }

    // ---- shutdown ----

    fn request_shutdown(&mut self, action: ShutdownAction, why: &str) {
        if self.shutdown.is_some() {
            return;
        }
        tracing::info!("shutting down for {action:?} ({why})");
        self.shutdown = Some(Shutdown {
            action,
            started: Instant::now(),
        });
        for i in 0..self.services.len() {
            let s = &mut self.services[i];
            if s.pid.is_none() {
                self.stop_results.push(ServiceStopResult {
                    service: s.manifest.name.clone(),
                    outcome: StopOutcome::NotRunning,
                    stop_ms: 0,
                });
                if s.state != State::Failed {
                    s.deadline = None;
                    self.set_state(i, State::Inactive);
                }
            } else {
                s.stop_requested = true;
                s.restart_after_stop = false;
            }
        }
        self.advance_shutdown();
    }

    /// Stops each running service once nothing that depends on it is still running.
    fn advance_shutdown(&mut self) {
        for i in 0..self.services.len() {
            let s = &self.services[i];
            if s.pid.is_none() || s.stop_started.is_some() {
                continue;
            }
            let name = s.manifest.name.clone();
            let dependents_running = self
                .services
                .iter()
                .any(|other| other.pid.is_some() && other.depends_on(&name));
            if !dependents_running {
                tracing::info!("{name}: stopping");
                let signal = self.services[i].manifest.stop_signal;
                self.begin_stop(i, signal);
            }
        }
    }

    fn finished(&self) -> Option<ShutdownReport> {
        let shutdown = self.shutdown.as_ref()?;
        if self.services.iter().any(|s| s.pid.is_some()) {
            return None;
        }
        Some(ShutdownReport {
            action: shutdown.action,
            services: self.stop_results.clone(),
            duration_ms: elapsed_ms(Some(shutdown.started)),
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.services.iter().filter_map(|s| s.deadline).min()
    }

    fn cleanup(&mut self) {
        for s in &self.services {
            if let Some(path) = &s.notify_path {
                let _ = std::fs::remove_file(path);
            }
        }
        let _ = std::fs::remove_file(&self.config.control_socket);
        if let Some(tree) = &self.cgroups {
            tree.remove();
        }
    }
}

// ---- helper tasks and small functions ----

fn elapsed_ms(since: Option<Instant>) -> u64 {
    since.map_or(0, |t| {
        u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// (ppid, pgrp, session) from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(i32, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(1); // state
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some((ppid, pgrp, session))
}

fn c_string(text: &str) -> std::io::Result<CString> {
    CString::new(text).map_err(|_| std::io::Error::other(format!("`{text}` holds a NUL byte")))
}

/// The program's absolute path: as given when it holds a `/`, else the first executable file
/// of that name in `path` (a `PATH` list).
fn find_program(command: &str, path: &str) -> std::io::Result<PathBuf> {
    if command.contains('/') {
        return Ok(PathBuf::from(command));
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(command))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("`{command}` not found in PATH"),
            )
        })
}

/// A pipe for a service's output: (read end, non-blocking, for us; write end for the child).
fn output_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::ioctl_fionbio(&read, true)?;
    Ok((read, write))
}

fn open_notify_socket(
    path: Option<&Path>,
    abstract_name: &str,
) -> std::io::Result<(OwnedFd, Option<PathBuf>)> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_passcred(&fd, true)?;
    match path {
        Some(path) => {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
            rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o600))?;
            Ok((fd, Some(path.to_owned())))
        }
        None => {
            rustix::net::bind(
                &fd,
                &SocketAddrUnix::new_abstract_name(abstract_name.as_bytes())?,
            )?;
            Ok((fd, None))
        }
    }
}

/// Gives the notify socket to the service's user, so it can send after dropping root.
fn chown_for_service(path: &Path, user: &str, group: Option<&str>) {
    if let Ok(Some(id)) = crate::users::resolve(Path::new("/etc"), Some(user), group) {
        let _ = rustix::fs::chown(
            path,
            Some(rustix::fs::Uid::from_raw(id.uid)),
            Some(rustix::fs::Gid::from_raw(id.gid)),
        );
    }
}

/// Receives datagrams on a service's notify socket, with the sender's credentials.
async fn read_notify_socket(fd: OwnedFd, service: usize, input: mpsc::Sender<Input>) {
    let Ok(socket) = tokio::net::UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))
    else {
        return;
    };
    let mut buf = vec![0u8; NOTIFY_DATAGRAM_MAX_BYTES];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(16))];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let mut sender = None;
        let received = socket.try_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                &socket,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::TRUNC | RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in control.drain() {
                match message {
                    RecvAncillaryMessage::ScmCredentials(cred) => {
                        sender = Some(cred.pid.as_raw_nonzero().get());
                    }
                    RecvAncillaryMessage::ScmRights(fds) => fds.for_each(drop), // FDSTORE: not kept
                    _ => {}
                }
            }
            Ok(msg)
        });
        let msg = match received {
            Ok(msg) => msg,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::error!("notify socket: {e}");
                return;
            }
        };
        let result = if msg.bytes > buf.len() || msg.flags.contains(ReturnFlags::TRUNC) {
            Err(NotifyError::TooLarge(msg.bytes))
        } else {
            parse_datagram(&buf[..msg.bytes])
        };
        if input
            .send(Input::Notify {
                service,
                sender,
                result,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Reads a service's stdout or stderr line by line until it closes.
async fn read_output(
    fd: OwnedFd,
    service: usize,
    pid: i32,
    stream: Stream,
    input: mpsc::Sender<Input>,
) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = [0u8; PIPE_READ_BYTES];
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    let mut open = true;
    while open {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => {
                open = false;
                splitter.finish(|line| lines.push(line));
            }
            Ok(n) => splitter.feed(&buf[..n], |line| lines.push(line)),
        }
        for text in lines.drain(..) {
            if input
                .send(Input::Log {
                    service,
                    pid,
                    stream,
                    text,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// From a plain thread (the host channel's): hands `request` to the loop and waits for the
/// answer; None once the loop is gone.
fn ask_event_loop(input: &mpsc::Sender<Input>, request: Request) -> Option<Response> {
    let (reply, answer) = oneshot::channel();
    input
        .blocking_send(Input::Control { request, reply })
        .ok()?;
    answer.blocking_recv().ok()
}

/// Accepts control connections from root (or the supervisor's own user) only.
async fn serve_control(listener: UnixListener, input: mpsc::Sender<Input>) {
    let own_uid = rustix::process::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|cred| cred.uid() == 0 || cred.uid() == own_uid);
        if !allowed {
            tracing::warn!("control socket: connection from a user other than root refused");
            continue;
        }
        tokio::spawn(serve_connection(stream, input.clone()));
    }
}

async fn serve_connection(stream: UnixStream, input: mpsc::Sender<Input>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        let limit = u64::try_from(REQUEST_LINE_MAX_BYTES).unwrap_or(u64::MAX);
        match (&mut reader).take(limit).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') && line.len() >= REQUEST_LINE_MAX_BYTES {
            let _ = write_json(&mut writer, &Response::error("request line too long")).await;
            return;
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::error(format!("bad request: {e}")),
            Ok(Request::Events) => {
                let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
                if input.send(Input::Subscribe(tx)).await.is_err() {
                    return;
                }
                if write_json(&mut writer, &Response::ok()).await.is_ok() {
                    forward_events(rx, writer).await;
                }
                return;
            }
            Ok(request @ Request::Logs { follow: true, .. }) => {
                let (reply, answer) = oneshot::channel();
                let (lines, rx) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
                let follow = Input::FollowLogs {
                    request,
                    reply,
                    lines,
                };
                if input.send(follow).await.is_err() {
                    return;
                }
                let Ok(response) = answer.await else { return };
                if write_json(&mut writer, &response).await.is_ok() && response.ok {
                    forward_events(rx, writer).await;
                }
                return;
            }
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if input.send(Input::Control { request, reply }).await.is_err() {
                    return;
                }
                match answer.await {
                    Ok(response) => response,
                    Err(_) => return,
                }
            }
        };
        if write_json(&mut writer, &response).await.is_err() {
            return;
        }
    }
}

async fn forward_events(
    mut rx: mpsc::Receiver<String>,
    mut writer: tokio::net::unix::OwnedWriteHalf,
) {
    while let Some(line) = rx.recv().await {
        if writer.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn write_json(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await
}
