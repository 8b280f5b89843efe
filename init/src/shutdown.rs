//! The end of the box's life: after the supervisor has stopped its services in order, end
//! whatever is left (SIGTERM, a grace period, SIGKILL), sync, unmount newest first, and call
//! `reboot(2)`.
//!
//! This must never return control to a caller that might exit: [`shutdown`] returns only
//! when `reboot(2)` itself failed, and the binary then parks PID 1 forever.

use std::path::PathBuf;

use crate::sys::{PowerAction, ShutdownSignal, System};

/// How long processes get to exit after SIGTERM.
pub const TERM_GRACE_MS: u64 = 3_000;
/// How long to wait for the kernel to reap them after SIGKILL.
pub const KILL_WAIT_MS: u64 = 1_000;
/// How often to reap while waiting.
pub const REAP_INTERVAL_MS: u64 = 20;

/// What the shutdown did, for the log and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownOutcome {
    /// Whether SIGKILL was needed.
    pub killed: bool,
    /// Mount points that did not unmount cleanly.
    pub unclean_unmounts: Vec<PathBuf>,
    /// The error of `reboot(2)`, if it returned.
    pub reboot_error: Option<String>,
}

/// Reaps until no children remain or `wait_ms` passes. `true` when none remain.
fn reap_until_gone(system: &impl System, wait_ms: u64) -> bool {
    let deadline_ms = system.boottime_ms().saturating_add(wait_ms);
    loop {
        match system.reap_children() {
            Ok(reaped) if !reaped.children_left => return true,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!("cannot reap children: {error}");
                return false;
            }
        }
        if system.boottime_ms() >= deadline_ms {
            return false;
        }
        system.sleep_ms(REAP_INTERVAL_MS);
    }
}

/// Ends every process, syncs, unmounts and powers off (or restarts).
pub fn shutdown(
    system: &impl System,
    action: PowerAction,
    own_mounts: &[PathBuf],
) -> ShutdownOutcome {
    crate::boot::mark_phase(system, "shutdown_start");
    if let Err(error) = system.signal_all_processes(ShutdownSignal::Terminate) {
        tracing::warn!("cannot send SIGTERM to all processes: {error}");
    }
    let mut killed = false;
    if !reap_until_gone(system, TERM_GRACE_MS) {
        tracing::warn!("processes left after {TERM_GRACE_MS} ms, sending SIGKILL");
        killed = true;
        if let Err(error) = system.signal_all_processes(ShutdownSignal::Kill) {
            tracing::warn!("cannot send SIGKILL to all processes: {error}");
        }
        reap_until_gone(system, KILL_WAIT_MS);
    }
    system.sync();
    let unclean_unmounts = crate::mounts::unmount_all(system, own_mounts);
    system.sync();
    let phase = match action {
        PowerAction::PowerOff => "poweroff",
        PowerAction::Reboot => "reboot",
    };
    crate::boot::mark_phase(system, phase);
    let reboot_error = system.reboot(action).err().map(|e| {
        tracing::error!("reboot(2) failed: {e}");
        e.to_string()
    });
    ShutdownOutcome {
        killed,
        unclean_unmounts,
        reboot_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeSystem};
    use crate::sys::Clock;

    fn sequence(system: &FakeSystem) -> Vec<Call> {
        system
            .calls()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::Signal(_) | Call::Sync | Call::Unmount { .. } | Call::Reboot(_)
                )
            })
            .collect()
    }

    #[test]
    fn polite_processes_get_term_only() {
        let system = FakeSystem::new();
        system.set_children(3, 0);
        system.set_file(
            "/proc/self/mounts",
            "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n",
        );
        let outcome = shutdown(&system, PowerAction::PowerOff, &[]);
        assert!(!outcome.killed);
        assert_eq!(outcome.reboot_error, None);
        assert_eq!(
            sequence(&system),
            [
                Call::Signal(ShutdownSignal::Terminate),
                Call::Sync,
                Call::Unmount {
                    target: "/proc".into(),
                    detach: false
                },
                Call::Sync,
                Call::Reboot(PowerAction::PowerOff),
            ]
        );
        assert!(system.boottime_ms() < TERM_GRACE_MS);
    }

    #[test]
    fn stubborn_processes_get_kill_after_the_grace_period() {
        let system = FakeSystem::new();
        system.set_children(1, 2);
        let outcome = shutdown(&system, PowerAction::Reboot, &[PathBuf::from("/run")]);
        assert!(outcome.killed);
        assert!(system.boottime_ms() >= TERM_GRACE_MS);
        assert_eq!(
            sequence(&system),
            [
                Call::Signal(ShutdownSignal::Terminate),
                Call::Signal(ShutdownSignal::Kill),
                Call::Sync,
                Call::Unmount {
                    target: "/run".into(),
                    detach: false
                },
                Call::Sync,
                Call::Reboot(PowerAction::Reboot),
            ]
        );
        let lines = system.console_lines();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("init: shutdown_start boottime_ms="))
        );
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("init: reboot boottime_ms=")
        );
    }

    #[test]
    fn failed_reboot_is_reported() {
        let system = FakeSystem::new();
        system.fail_reboot(libc::EPERM);
        let outcome = shutdown(&system, PowerAction::PowerOff, &[]);
        assert!(outcome.reboot_error.is_some());
    }
}
