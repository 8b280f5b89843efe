//! The boot sequence of PID 1, phase by phase: mounts, modules (and the model disks,
//! mapped with dm-verity), entropy, network, then the supervisor. Each phase prints
//! `init: <phase> boottime_ms=<CLOCK_BOOTTIME ms>` on the
//! console; the image's boot-time figures are read from those lines.
//!
//! Only a missing /proc, /sys, /dev or /run stops the boot (straight to power-off); every
//! other failure is logged and boot goes on. This module never exits the process.

use std::path::{Path, PathBuf};

use crate::cmdline::parse_cmdline;
use crate::entropy::{CRNG_WAIT_MAX_MS, check_entropy};
use crate::mounts::{MountStage, create_dev_symlinks, mount_all, mount_plan};
use crate::network::{bring_up, spawn_lease_keeper};
use crate::sys::{PowerAction, System};

/// Where the kernel command line is read from.
pub const CMDLINE_PATH: &str = "/proc/cmdline";
/// The largest command line read.
pub const CMDLINE_MAX_BYTES: usize = 64 * 1024;
/// The supervisor's runtime folder, created before it starts.
pub const RUNTIME_DIR: &str = "/run/cloister";

/// The boot phases, in the order they are printed.
pub const BOOT_PHASES: [&str; 6] = [
    "start",
    "mounts_done",
    "modules_done",
    "entropy_done",
    "network_done",
    "supervisor_start",
];

/// Prints `init: <phase> boottime_ms=<ms>` on the console.
pub fn mark_phase(system: &impl System, phase: &str) {
    system.console(&format!(
        "init: {phase} boottime_ms={}",
        system.boottime_ms()
    ));
}

/// What boot leaves for the shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootOutcome {
    /// Power off or restart, as the supervisor asked.
    pub action: PowerAction,
    /// The filesystems init mounted, in order (the fallback unmount list).
    pub mounted: Vec<PathBuf>,
    /// Whether the supervisor ran.
    pub supervisor_ran: bool,
}

/// Boots the box and runs `run_supervisor` until it asks to power off or restart.
pub fn boot<S>(system: &S, run_supervisor: impl FnOnce() -> PowerAction) -> BootOutcome
where
    S: System + Clone + Send + 'static,
    S::Transport: Send + 'static,
{
    mark_phase(system, "start");
    let early = mount_all(system, &mount_plan(MountStage::Early));
    let mut mounted = early.mounted.clone();
    if let Err(error) = system.ensure_console() {
        tracing::warn!("cannot open /dev/console: {error}");
    }
    if early.required_failed {
        tracing::error!(failed = ?early.failed, "a required filesystem is missing; powering off");
        return BootOutcome {
            action: PowerAction::PowerOff,
            mounted,
            supervisor_ran: false,
        };
    }
    create_dev_symlinks(system);
    mark_phase(system, "mounts_done");

    let cmdline = match system.read_file(Path::new(CMDLINE_PATH), CMDLINE_MAX_BYTES) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => {
            tracing::warn!("cannot read {CMDLINE_PATH}, using defaults: {error}");
            String::new()
        }
    };
    let (options, errors) = parse_cmdline(&cmdline);
    for error in &errors {
        tracing::error!("{error}");
    }

    let modules =
        crate::modules::load_listed_modules(system, Path::new(crate::modules::MODULE_LIST_PATH));
    tracing::info!(
        listed = modules.modules.len(),
        failed = modules.failed(),
        "kernel modules"
    );
    mounted.extend(mount_all(system, &mount_plan(MountStage::Late)).mounted);
    mark_phase(system, "modules_done");

    // Model disks, before any service: dm-mod, dm-verity and virtio_blk are loaded now.
    crate::disks::map_model_disks(system, &options.models, crate::disks::DISK_WAIT_MAX_MS);

    if let Err(error) = system.create_dir_all(Path::new(RUNTIME_DIR)) {
        tracing::warn!("cannot create {RUNTIME_DIR}: {error}");
    }
    let entropy = check_entropy(system, &cmdline, CRNG_WAIT_MAX_MS);
    crate::entropy::record(system, &entropy);
    mark_phase(system, "entropy_done");

    let network = bring_up(system, &options);
    if let Some(session) = network.dhcp {
        spawn_lease_keeper(system.clone(), session);
    }
    mark_phase(system, "network_done");

    if let Err(error) = system.disable_ctrl_alt_del() {
        tracing::warn!("cannot route Ctrl-Alt-Del to the supervisor: {error}");
    }
    mark_phase(system, "supervisor_start");
    let action = run_supervisor();
    BootOutcome {
        action,
        mounted,
        supervisor_ran: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeSystem};

    fn phases(system: &FakeSystem) -> Vec<String> {
        system
            .console_lines()
            .iter()
            .filter_map(|line| {
                let rest = line.strip_prefix("init: ")?;
                let (phase, ms) = rest.split_once(" boottime_ms=")?;
                ms.parse::<u64>().ok()?;
                Some(phase.to_owned())
            })
            .collect()
    }

    #[test]
    fn phases_are_marked_in_order_and_the_supervisor_runs_last() {
        let system = FakeSystem::new();
        system.set_file(CMDLINE_PATH, "console=ttyS0 cloister.ip=off\n");
        system.set_file(
            crate::modules::MODULE_LIST_PATH,
            "/lib/modules/x/configfs.ko.xz\n",
        );
        let seen = system.clone();
        let outcome = boot(&system, move || {
            // Everything is in place before the supervisor starts.
            let calls = seen.calls();
            assert!(calls.contains(&Call::LoadModule {
                path: "/lib/modules/x/configfs.ko.xz".into(),
                compressed: true
            }));
            assert!(
                calls
                    .iter()
                    .any(|c| matches!(c, Call::Mount(r) if r.fstype == "configfs"))
            );
            assert!(calls.contains(&Call::SetHostname("cloister".into())));
            assert!(calls.contains(&Call::DisableCtrlAltDel));
            PowerAction::Reboot
        });
        assert!(outcome.supervisor_ran);
        assert_eq!(outcome.action, PowerAction::Reboot);
        assert_eq!(phases(&system), BOOT_PHASES);
        assert_eq!(outcome.mounted.len(), 8);
        // configfs is mounted after its module is loaded.
        let calls = system.calls();
        let load = calls
            .iter()
            .position(|c| matches!(c, Call::LoadModule { .. }))
            .unwrap();
        let configfs = calls
            .iter()
            .position(|c| matches!(c, Call::Mount(r) if r.fstype == "configfs"))
            .unwrap();
        assert!(load < configfs);
    }

    #[test]
    fn missing_dev_powers_off_without_the_supervisor() {
        let system = FakeSystem::new();
        system.fail_mount("/dev", libc::ENODEV);
        let outcome = boot(&system, || panic!("the supervisor must not run"));
        assert!(!outcome.supervisor_ran);
        assert_eq!(outcome.action, PowerAction::PowerOff);
        assert_eq!(phases(&system), ["start"]);
        assert!(
            !system
                .calls()
                .iter()
                .any(|c| matches!(c, Call::LoadModule { .. }))
        );
    }

    #[test]
    fn bad_cmdline_and_missing_files_still_boot() {
        let system = FakeSystem::new();
        system.set_file(
            CMDLINE_PATH,
            "cloister.ip=nonsense cloister.hostname=bad_name",
        );
        let outcome = boot(&system, || PowerAction::PowerOff);
        assert!(outcome.supervisor_ran);
        assert!(
            system
                .calls()
                .contains(&Call::SetHostname("cloister".into()))
        );
        assert_eq!(phases(&system), BOOT_PHASES);
    }
}
