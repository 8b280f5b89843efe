//! The supervisor's benchmark: crash-to-READY restart latency (p50/p99 over 100 trials, no
//! restart delay) and the supervisor's RSS and CPU at idle with 10 services.
//!
//! Runs the release binary next to it (`target/release/cloister-supervisor`) with the
//! `test_service` example as the services:
//!
//! ```sh
//! cargo build --release -p cloister-supervisor --bins --examples
//! target/release/examples/bench
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloister_supervisor::control::{ControlClient, Request};
use rustix::process::{Pid, Signal, kill_process};

const TRIALS: usize = 100;
const IDLE_SERVICES: usize = 10;
const IDLE_SECONDS: u64 = 10;

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/examples")
        .to_owned()
}

struct Supervisor {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Supervisor {
    fn start(manifests: &[(String, String)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let services = dir.path().join("services");
        std::fs::create_dir(&services).unwrap();
        for (name, text) in manifests {
            std::fs::write(services.join(format!("{name}.toml")), text).unwrap();
        }
        let socket = dir.path().join("ctl.sock");
        let child = Command::new(profile_dir().join("cloister-supervisor"))
            .arg("run")
            .arg("--manifests")
            .arg(&services)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--runtime-dir")
            .arg(dir.path().join("run"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("build the release binary first: cargo build --release -p cloister-supervisor --bins --examples");
        let start = Instant::now();
        while ControlClient::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no control socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn client(&self) -> ControlClient {
        ControlClient::connect(&self.socket).unwrap()
    }

    fn wait_all_running(&self, count: usize) {
        let start = Instant::now();
        loop {
            let services = self
                .client()
                .request(&Request::List)
                .unwrap()
                .services
                .unwrap();
            if services.iter().filter(|s| s.state == "running").count() == count {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "services did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), Signal::TERM);
        let _ = self.child.wait();
    }
}

fn test_service_manifest(steps: &[&str], extra: &str) -> String {
    let program = profile_dir().join("examples").join("test_service");
    let args: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "command = {:?}\nargs = [{}]\n{extra}",
        program.display().to_string(),
        args.join(", ")
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn restart_latency() {
    let supervisor = Supervisor::start(&[(
        "svc".into(),
        test_service_manifest(
            &["ready"],
            "ready = \"notify\"\nrestart = \"always\"\nrestart_delay_ms = 0\nstart_limit_interval_ms = 0\n",
        ),
    )]);
    supervisor.wait_all_running(1);
    let mut events = supervisor.client();
    assert!(events.request(&Request::Events).unwrap().ok);
    let mut latencies_ms = Vec::with_capacity(TRIALS);
    for _ in 0..TRIALS {
        let pid = supervisor
            .client()
            .request(&Request::List)
            .unwrap()
            .services
            .unwrap()[0]
            .pid
            .expect("running");
        let crash = Instant::now();
        kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
        loop {
            let event = events.next_event().unwrap();
            if event.state == "running" && event.pid.is_some_and(|p| p != pid) {
                break;
            }
        }
        latencies_ms.push(crash.elapsed().as_secs_f64() * 1_000.0);
    }
    latencies_ms.sort_by(f64::total_cmp);
    println!(
        "crash-to-READY restart latency over {TRIALS} trials (SIGKILL to READY=1 seen, restart_delay_ms = 0): \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal: p99 < 50 ms)",
        percentile(&latencies_ms, 50.0),
        percentile(&latencies_ms, 99.0),
        latencies_ms[latencies_ms.len() - 1]
    );
}

fn proc_field_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn idle_footprint() {
    let manifests: Vec<(String, String)> = (0..IDLE_SERVICES)
        .map(|n| {
            let text = if n % 2 == 0 {
                test_service_manifest(&["ready", "status", "idle"], "ready = \"notify\"\n")
            } else {
                test_service_manifest(&[], "")
            };
            (format!("idle-{n}"), text)
        })
        .collect();
    let supervisor = Supervisor::start(&manifests);
    supervisor.wait_all_running(IDLE_SERVICES);
    let pid = supervisor.child.id();
    std::thread::sleep(Duration::from_secs(1));
    let ticks_before = cpu_ticks(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    let ticks = cpu_ticks(pid) - ticks_before;
    let seconds = start.elapsed().as_secs_f64();
    // SAFETY: sysconf reads a constant of the system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let rss = proc_field_kib(pid, "VmRSS:");
    let hwm = proc_field_kib(pid, "VmHWM:");
    println!(
        "idle with {IDLE_SERVICES} services: RSS {rss} KiB ({:.2} MiB; peak {hwm} KiB), \
         CPU {:.3}% over {IDLE_SECONDS} s (goal: RSS < 5 MiB)",
        rss as f64 / 1024.0,
        100.0 * ticks as f64 / ticks_per_second / seconds
    );
}

fn main() {
    restart_latency();
    idle_footprint();
}
