//! A harness for the supervisor's integration tests: runs the real `cloister-supervisor`
//! binary on a folder of manifests and talks to it over its control socket.

#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloister_supervisor::control::{ControlClient, Event, Request, ServiceInfo};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub socket: PathBuf,
}

/// The scripted test service (an example of this package, built by `cargo test`).
pub fn test_service() -> String {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("test_service");
    assert!(
        path.exists(),
        "build the examples first: {}",
        path.display()
    );
    path.display().to_string()
}

/// A manifest line `command = ...` plus `args = [...]` for the test service.
pub fn service(steps: &[&str]) -> String {
    let args: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "command = {:?}\nargs = [{}]\n",
        test_service(),
        args.join(", ")
    )
}

/// A manifest running a shell script.
pub fn shell(script: &str) -> String {
    format!("command = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n")
}

impl Harness {
    /// Writes the manifests, starts the supervisor, and waits for its control socket.
    pub fn start(manifests: &[(&str, String)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), manifests)
    }

    /// As `start`, in a folder made beforehand (so manifests can name paths in it). The notify
    /// socket of service `x` is `<dir>/run/notify/x.sock`.
    pub fn start_in(dir: tempfile::TempDir, manifests: &[(&str, String)]) -> Self {
        let manifest_dir = dir.path().join("services");
        std::fs::create_dir(&manifest_dir).unwrap();
        for (name, text) in manifests {
            std::fs::write(manifest_dir.join(format!("{name}.toml")), text).unwrap();
        }
        let socket = dir.path().join("ctl.sock");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let stdout = std::fs::File::create(dir.path().join("stdout.json")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cloister-supervisor"))
            .arg("run")
            .arg("--manifests")
            .arg(&manifest_dir)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--runtime-dir")
            .arg(dir.path().join("run"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut harness = Self {
            dir,
            child: Some(child),
            socket,
        };
        // A supervisor that powers off at once (a start limit hit in its first milliseconds)
        // may be gone before the socket is ever seen; `wait_exit` then reads its report.
        let start = Instant::now();
        loop {
            if ControlClient::connect(&harness.socket).is_ok() {
                break;
            }
            let child = harness.child.as_mut().unwrap();
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for the control socket; supervisor stderr:\n{}",
                harness.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        harness
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn client(&self) -> ControlClient {
        let client = ControlClient::connect(&self.socket).unwrap();
        client.set_timeout(Some(Duration::from_secs(20))).unwrap();
        client
    }

    pub fn request(&self, request: &Request) -> cloister_supervisor::Response {
        self.client().request(request).unwrap()
    }

    pub fn list(&self) -> Vec<ServiceInfo> {
        self.request(&Request::List).services.unwrap()
    }

    pub fn info(&self, name: &str) -> ServiceInfo {
        self.list().into_iter().find(|s| s.name == name).unwrap()
    }

    /// An event subscription.
    pub fn events(&self) -> ControlClient {
        let mut client = self.client();
        assert!(client.request(&Request::Events).unwrap().ok);
        client
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; supervisor stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_state(&self, name: &str, state: &str, timeout: Duration) -> ServiceInfo {
        let mut last = None;
        self.wait_until(&format!("{name} to be {state}"), timeout, || {
            let info = self.info(name);
            let done = info.state == state;
            last = Some(info);
            done
        });
        last.unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the supervisor to exit; returns its JSON report.
    pub fn terminate(&mut self) -> serde_json::Value {
        let pid = self.pid();
        Command::new("kill").arg(pid.to_string()).status().unwrap();
        self.wait_exit()
    }

    /// Waits for the supervisor to exit on its own; returns its JSON report.
    pub fn wait_exit(&mut self) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                assert!(status.success(), "supervisor failed: {}", self.stderr());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "supervisor did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = std::fs::read_to_string(self.dir.path().join("stdout.json")).unwrap();
        serde_json::from_str(out.trim()).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // SIGTERM first, so the supervisor stops its services and removes its cgroups.
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for the next event matching `pred`.
pub fn next_event(events: &mut ControlClient, mut pred: impl FnMut(&Event) -> bool) -> Event {
    loop {
        let event = events.next_event().unwrap();
        if pred(&event) {
            return event;
        }
    }
}

/// Open file descriptors and resident memory (KiB) of a process.
pub fn fds_and_rss_kib(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (fds, rss)
}

/// Children of `pid` that are zombies.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|(_, state)| state == "Z")
        .map(|(p, _)| p)
        .collect()
}

/// Children of `pid`, with their state letter.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid {
            zombies.push((child, state.to_owned()));
        }
    }
    zombies
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
