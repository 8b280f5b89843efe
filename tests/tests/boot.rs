//! End to end: build a small image (no model, plus the test-only `cloister-probe`
//! service), boot it under QEMU with TCG, and check from the host that init mounted
//! everything and loaded the modules, the guest got a DHCP address from QEMU's user
//! network, the supervisor started a service that answers on a forwarded port, a poweroff
//! request makes QEMU exit 0 in bounded time, and the serial log shows no panic. Prints
//! the boot phases (the figures in docs/benchmarks.md).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloister_image::build::{self, BuildOptions, Contents, GuestBinary};
use cloister_image::progress::Progress;
use cloister_image::qemu::{self, Accelerator, Console, PortForward, RunSettings};
use cloister_tests::{KillOnDrop, http, serial};

/// Port the probe listens on inside the guest.
const PROBE_GUEST_PORT: u16 = 8080;
/// TCG boots take 10-20 s here; a loaded CI machine may take several times that.
const BOOT_DEADLINE_S: u64 = 300;
/// From the poweroff request to QEMU's exit.
const POWEROFF_DEADLINE_S: u64 = 60;

fn build_test_image(out: &Path) -> build::BuildOutput {
    let mut opts = BuildOptions::new(cloister_tests::workspace_root(), out);
    opts.no_model = true;
    // PID 1 and the probe: web-ui and model-runner boot in tests/tests/booted_chat.rs.
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
    build::build(&opts).expect("the test image builds")
}

#[test]
fn the_image_boots_serves_and_powers_off() {
    let qemu_binary = qemu::find_qemu().expect("QEMU is needed: apt-get install qemu-system-x86");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    let built = build_test_image(&image);
    assert!(!built.manifest.model_included);

    let log = dir.path().join("serial.log");
    let host_port = cloister_tests::free_port();
    let settings = RunSettings {
        image: image.clone(),
        memory_mib: 1024,
        cpus: 1,
        ports: vec![PortForward {
            host: host_port,
            guest: PROBE_GUEST_PORT,
        }],
        accelerator: Accelerator::Tcg,
        console: Console::File(log.clone()),
        cmdline: qemu::read_cmdline(&image).unwrap(),
        tdx: None,
        fw_cfg: Vec::new(),
        drives: Vec::new(),
    };
    let started = Instant::now();
    let mut vm = KillOnDrop(
        Command::new(&qemu_binary)
            .args(qemu::command_line(&settings))
            .arg("-monitor")
            .arg("none")
            .stdin(Stdio::null())
            .spawn()
            .expect("QEMU starts"),
    );

    // The banner's arrival on the host clock: QEMU start plus firmware.
    let mut banner_after = None;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
    let mut report = None;
    while started.elapsed() < Duration::from_secs(BOOT_DEADLINE_S) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if banner_after.is_none() && text.contains("Linux version") {
            banner_after = Some(started.elapsed());
        }
        if let Some(status) = vm.0.try_wait().unwrap() {
            panic!("QEMU exited early ({status}); serial log:\n{text}");
        }
        if let Ok(r) = http::request(addr, "GET", "/report", Duration::from_secs(5))
            && r.status == 200
        {
            report = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let serial_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let report = report.unwrap_or_else(|| {
        panic!(
            "no answer from the probe within {BOOT_DEADLINE_S} s; serial log:\n{}",
            serial_text()
        )
    });
    let answered_after = started.elapsed();
    let report: serde_json::Value = serde_json::from_str(&report.body).expect("the report is JSON");

    // init mounted everything and loaded the modules.
    let mounts: Vec<(String, String)> = report["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_string(),
                m["point"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (fstype, point) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("devpts", "/dev/pts"),
        ("tmpfs", "/dev/shm"),
        ("tmpfs", "/run"),
        ("cgroup2", "/sys/fs/cgroup"),
        ("configfs", "/sys/kernel/config"),
    ] {
        assert!(
            mounts.contains(&(fstype.to_string(), point.to_string())),
            "{fstype} on {point} missing from {mounts:?}"
        );
    }
    assert_eq!(report["vsock"], true, "/dev/vsock is missing: {report}");
    let modules: Vec<&str> = report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    for module in [
        "vsock",
        "vmw_vsock_virtio_transport",
        "virtio_net",
        "dm_crypt",
        "dm_verity",
        "xts",
        "configfs",
    ] {
        assert!(
            modules.contains(&module),
            "module {module} not loaded: {modules:?}"
        );
    }

    // The guest got its address by DHCP from QEMU's user network (10.0.2.15 via 10.0.2.2).
    assert_eq!(report["ipv4"], "10.0.2.15", "{report}");
    assert_eq!(report["gateway"], "10.0.2.2", "{report}");

    // A poweroff request makes QEMU exit 0 within a bound.
    let reply = http::request(addr, "POST", "/poweroff", Duration::from_secs(10))
        .expect("poweroff answered");
    assert_eq!(reply.status, 202, "{reply:?}");
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = vm.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(POWEROFF_DEADLINE_S),
            "QEMU still runs {POWEROFF_DEADLINE_S} s after the poweroff request; serial log:\n{}",
            serial_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let poweroff_took = asked.elapsed();
    let text = serial_text();
    assert!(
        status.success(),
        "QEMU exited with {status}; serial log:\n{text}"
    );
    assert_eq!(serial::first_panic(&text), None, "serial log:\n{text}");

    // The figures.
    let phases = serial::phases(&text);
    let init_start = serial::phase_ms(&phases, "init:start").expect("init printed its start");
    let ready =
        serial::phase_ms(&phases, "supervisor:ready").expect("the supervisor reported readiness");
    println!(
        "boot under TCG (host clock): kernel banner after {banner_after:?}, probe answered after {answered_after:?}, poweroff took {poweroff_took:?}"
    );
    println!(
        "kernel: Run /init at {:?} ms guest time",
        serial::kernel_ms(&text, "Run /init")
    );
    for p in &phases {
        println!(
            "  {:<28} {:>7} ms  (+{} ms from init start)",
            p.name,
            p.boottime_ms,
            p.boottime_ms.saturating_sub(init_start)
        );
    }
    println!(
        "our share, init start -> services ready: {} ms guest time under TCG",
        ready - init_start
    );
}
