//! End to end, the host channel (docs/vsock.md): build a small image (PID 1 and the test-only
//! `cloister-probe` service), then with the `cloister` binary: `cloister run --detach`
//! returns only once the box says on vsock that it is ready (the probe answers at once
//! afterwards), `cloister status` lists the service as running, `--measurements` answers,
//! and `cloister stop` powers the box off in order (init's `poweroff` phase on the console)
//! with QEMU and the vsock backend gone within a bound. On this kind of host (no
//! `/dev/vhost-vsock`) the channel goes through `vhost-device-vsock` (scripts/setup.sh).
//!
//! The `cloister` binary is the one beside this test's target folder (`cargo test
//! --workspace` builds it; alone, run `cargo build -p cloister` first) or `CLOISTER_BIN`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cloister_image::build::{self, BuildOptions, Contents, GuestBinary};
use cloister_image::progress::Progress;
use cloister_image::vsock::{self, RunState};
use cloister_tests::{http, serial};

/// Port the probe listens on inside the guest.
const PROBE_GUEST_PORT: u16 = 8080;
/// `cloister run --detach` must return within this (a TCG boot is 15-40 s here).
const READY_DEADLINE_S: u64 = 300;
/// From `cloister stop` to QEMU's exit.
const POWEROFF_DEADLINE_S: u64 = 60;

fn cloister_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CLOISTER_BIN") {
        return PathBuf::from(p);
    }
    // <target>/<profile>/deps/<this test>: the binary is <target>/<profile>/cloister.
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile.join("cloister");
    assert!(
        bin.is_file(),
        "no {}: run `cargo build -p cloister` first, or set CLOISTER_BIN",
        bin.display()
    );
    bin
}

fn build_test_image(out: &Path) {
    let mut opts = BuildOptions::new(cloister_tests::workspace_root(), out);
    opts.no_model = true;
    opts.contents = Some(
        Contents::load(&cloister_tests::workspace_root())
            .expect("image/contents.toml reads")
            .pid1_only(),
    );
    opts.target_dir = Some(cloister_tests::guest_target_dir(&build::default_cache_dir()));
    opts.progress = Progress::stderr();
    opts.extra_binaries.push(GuestBinary::new(
        "cloister-tests",
        "cloister-probe",
        "/usr/bin/cloister-probe",
    ));
    opts.extra_services.push((
        "probe.toml".into(),
        format!(
            "command = \"/usr/bin/cloister-probe\"\nargs = [\"{PROBE_GUEST_PORT}\"]\nready = \"notify\"\n"
        ),
    ));
    build::build(&opts).expect("the test image builds");
}

fn cloister(args: &[&str]) -> Output {
    Command::new(cloister_binary())
        .args(args)
        .output()
        .expect("cloister runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Kills whatever the run left, if the test ends early.
struct BoxGuard<'a>(&'a Path);

impl Drop for BoxGuard<'_> {
    fn drop(&mut self) {
        if let Ok(state) = RunState::read(self.0) {
            let pids = [state.qemu_pid, state.backend_pid].into_iter().flatten();
            for pid in pids.filter_map(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

#[test]
fn run_detach_waits_for_readiness_then_status_and_stop_work_over_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    build_test_image(&image);
    let image_arg = image.to_str().unwrap();
    let log = dir.path().join("serial.log");
    let host_port = cloister_tests::free_port();
    let port = format!("{host_port}:{PROBE_GUEST_PORT}");
    let _guard = BoxGuard(&image);

    let started = Instant::now();
    let out = cloister(&[
        "run",
        "--image",
        image_arg,
        "--detach",
        "--log",
        log.to_str().unwrap(),
        "--memory",
        "1024",
        "--cpus",
        "1",
        "--port",
        &port,
        "--ready-timeout",
        &READY_DEADLINE_S.to_string(),
    ]);
    let serial_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "cloister run --detach failed:\n{}\n{}\nserial log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        serial_text()
    );
    let ready_after = started.elapsed();
    assert!(text(&out.stdout).contains("The box is ready"), "{out:?}");

    // Ready means the service is up: the probe answers on the first try, no polling.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
    let report = http::request(addr, "GET", "/report", Duration::from_secs(10))
        .expect("the probe answers right after run returned");
    assert_eq!(report.status, 200, "{report:?}");
    let state = RunState::read(&image).expect("run recorded the box");
    let qemu_pid = state.qemu_pid.expect("a detached box has QEMU's pid");
    assert!(vsock::process_exists(qemu_pid));
    if !vsock::kernel_vhost_vsock_available() {
        let backend = state
            .backend_pid
            .expect("no vhost-vsock here: a backend runs");
        assert!(vsock::process_exists(backend));
    }

    let out = cloister(&["status", "--image", image_arg]);
    assert!(out.status.success(), "{out:?}");
    let shown = text(&out.stdout);
    assert!(shown.starts_with("box: ready\n"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().eq(["probe", "running"])),
        "{shown}"
    );
    let out = cloister(&["status", "--image", image_arg, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(
        json,
        serde_json::json!({"ok": true, "ready": true, "services": [{"name": "probe", "state": "running"}]}),
        "names and states only"
    );
    let out = cloister(&["status", "--image", image_arg, "--measurements"]);
    assert!(out.status.success(), "{out:?}");
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("measurements JSON");
    assert_eq!(m["tee"], "none", "{m}");
    assert!(
        m.get("expected").is_none(),
        "no fw_cfg file was passed: {m}"
    );

    let asked = Instant::now();
    let out = cloister(&[
        "stop",
        "--image",
        image_arg,
        "--timeout",
        &POWEROFF_DEADLINE_S.to_string(),
    ]);
    assert!(
        out.status.success(),
        "cloister stop failed:\n{}\nserial log:\n{}",
        text(&out.stderr),
        serial_text()
    );
    let stop_took = asked.elapsed();
    assert!(!vsock::process_exists(qemu_pid), "QEMU still runs");
    if let Some(backend) = state.backend_pid {
        assert!(!vsock::process_exists(backend), "the backend still runs");
    }
    assert!(!image.join(vsock::RUN_STATE_FILE).exists());
    let log_text = serial_text();
    assert!(
        log_text.contains("supervisor: host channel on vsock port 1024"),
        "{log_text}"
    );
    let phases = serial::phases(&log_text);
    assert!(
        serial::phase_ms(&phases, "init:poweroff").is_some(),
        "no orderly poweroff on the console:\n{log_text}"
    );
    assert_eq!(serial::first_panic(&log_text), None, "{log_text}");
    let out = cloister(&["status", "--image", image_arg]);
    assert!(!out.status.success(), "status of a stopped box must fail");
    assert!(text(&out.stderr).contains("no running box"), "{out:?}");
    println!("vsock: run --detach returned ready after {ready_after:?}; stop took {stop_took:?}");
}
