//! `/init` in Cloister's initramfs: wires the real system to the boot sequence, runs the
//! supervisor in-process, and powers off. It must never exit or unwind out of `main`:
//! whatever fails is logged and ends in `reboot(2)`, and if even that fails PID 1 parks.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use cloister_init::boot::{RUNTIME_DIR, boot};
use cloister_init::linux::LinuxSystem;
use cloister_init::shutdown::shutdown;
use cloister_init::sys::PowerAction;
use cloister_supervisor::host_channel::{
    EXPECTED_MEASUREMENTS_GUEST_PATH, HOST_CHANNEL_VSOCK_PORT,
};
use cloister_supervisor::{HostChannelConfig, ShutdownAction, SupervisorConfig};

/// The one place init calls the supervisor.
fn run_supervisor() -> PowerAction {
    let config = SupervisorConfig {
        manifest_dir: "/etc/cloister/services".into(),
        control_socket: PathBuf::from(RUNTIME_DIR).join("supervisor.sock"),
        runtime_dir: RUNTIME_DIR.into(),
        pid1: true,
        // The host's readiness, status and poweroff channel (docs/vsock.md).
        host_channel: Some(HostChannelConfig {
            port: HOST_CHANNEL_VSOCK_PORT,
            expected_measurements: Some(EXPECTED_MEASUREMENTS_GUEST_PATH.into()),
        }),
    };
    match cloister_supervisor::run(config) {
        Ok(report) => {
            tracing::info!(duration_ms = report.duration_ms, "services stopped");
            match report.action {
                ShutdownAction::PowerOff => PowerAction::PowerOff,
                ShutdownAction::Reboot => PowerAction::Reboot,
            }
        }
        Err(error) => {
            tracing::error!("supervisor failed, powering off: {error}");
            PowerAction::PowerOff
        }
    }
}

fn park_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        // kill(-1) and reboot(2) on a working host would be a disaster.
        eprintln!("cloister-init: must run as PID 1 (it is /init in the Cloister image)");
        std::process::exit(2);
    }
    // try_init: a second subscriber is no reason for PID 1 to panic.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("init panicked: {info}");
    }));

    let system = LinuxSystem;
    let outcome = catch_unwind(AssertUnwindSafe(|| boot(&system, run_supervisor)));
    let (action, mounted) = match outcome {
        Ok(outcome) => (outcome.action, outcome.mounted),
        Err(_) => (PowerAction::PowerOff, Vec::new()),
    };
    let _ = catch_unwind(AssertUnwindSafe(|| shutdown(&system, action, &mounted)));
    // Only reached when reboot(2) failed.
    park_forever();
}
