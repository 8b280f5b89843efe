//! The mount plan: which virtual filesystems PID 1 mounts, in which order, and how they come
//! down again at shutdown.
//!
//! Early mounts come before the kernel modules (everything needed to read files and
//! devices); late mounts need a module first (configfs is a module in Debian's cloud
//! kernel). This module must never decide to power off by itself: it reports failures of
//! required mounts and the caller decides.

use std::path::{Path, PathBuf};

use crate::sys::{MountFlags, MountRequest, System, is_errno};

/// One filesystem in the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMount {
    /// The `mount(2)` call.
    pub request: MountRequest,
    /// Whether boot cannot go on without it.
    pub required: bool,
}

/// When a mount happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountStage {
    /// Before kernel modules are loaded.
    Early,
    /// After kernel modules are loaded.
    Late,
}

fn planned(
    fstype: &str,
    target: &str,
    flags: MountFlags,
    data: &str,
    required: bool,
) -> PlannedMount {
    PlannedMount {
        request: MountRequest {
            source: fstype.to_owned(),
            target: PathBuf::from(target),
            fstype: fstype.to_owned(),
            flags,
            data: data.to_owned(),
        },
        required,
    }
}

const SECURE: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: true,
};
const NOSUID_NODEV: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: false,
};
const NOSUID_NOEXEC: MountFlags = MountFlags {
    nosuid: true,
    nodev: false,
    noexec: true,
};
const NOSUID: MountFlags = MountFlags {
    nosuid: true,
    nodev: false,
    noexec: false,
};

/// The mounts of one stage, in the order they are made.
pub fn mount_plan(stage: MountStage) -> Vec<PlannedMount> {
    match stage {
        MountStage::Early => vec![
            planned("proc", "/proc", SECURE, "", true),
            planned("sysfs", "/sys", SECURE, "", true),
            // DEVTMPFS_MOUNT is off in the kernel, so /dev is ours to mount.
            planned("devtmpfs", "/dev", NOSUID, "mode=0755", true),
            planned(
                "devpts",
                "/dev/pts",
                NOSUID_NOEXEC,
                "mode=0620,ptmxmode=0666",
                false,
            ),
            planned("tmpfs", "/dev/shm", NOSUID_NODEV, "mode=1777", false),
            planned("tmpfs", "/run", NOSUID_NODEV, "mode=0755", true),
            planned("cgroup2", "/sys/fs/cgroup", SECURE, "nsdelegate", false),
        ],
        MountStage::Late => vec![planned("configfs", "/sys/kernel/config", SECURE, "", false)],
    }
}

/// The symlinks under /dev that programs expect, as (link, target).
pub const DEV_SYMLINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// What one stage of mounting did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountReport {
    /// Targets mounted by this call, in order.
    pub mounted: Vec<PathBuf>,
    /// Targets that were already mounted (EBUSY), left as they were.
    pub already_mounted: Vec<PathBuf>,
    /// Targets that failed, with the error text.
    pub failed: Vec<(PathBuf, String)>,
    /// Whether a required mount failed.
    pub required_failed: bool,
}

/// Mounts every filesystem of a stage, creating mount points as needed. Failures are
/// logged and recorded; the rest of the plan goes on.
pub fn mount_all(system: &impl System, plan: &[PlannedMount]) -> MountReport {
    let mut report = MountReport::default();
    for planned in plan {
        let target = &planned.request.target;
        // A mount point on sysfs already exists and cannot be created; mount() reports
        // the real problem if there is one.
        let _ = system.create_dir_all(target);
        match system.mount(&planned.request) {
            Ok(()) => report.mounted.push(target.clone()),
            Err(error) if is_errno(&error, libc::EBUSY) => {
                tracing::info!(target = %target.display(), "already mounted");
                report.already_mounted.push(target.clone());
            }
            Err(error) => {
                tracing::error!(
                    target = %target.display(),
                    fstype = %planned.request.fstype,
                    required = planned.required,
                    "mount failed: {error}"
                );
                report.failed.push((target.clone(), error.to_string()));
                report.required_failed |= planned.required;
            }
        }
    }
    report
}

/// Creates the /dev symlinks. An existing link is left alone.
pub fn create_dev_symlinks(system: &impl System) {
    for (link, target) in DEV_SYMLINKS {
        match system.symlink(Path::new(target), Path::new(link)) {
            Ok(()) => {}
            Err(error) if is_errno(&error, libc::EEXIST) => {}
            Err(error) => tracing::warn!(link, "cannot create symlink: {error}"),
        }
    }
}

/// Decodes the octal escapes (`\040` for a space) that /proc/self/mounts uses in paths.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = u32::from(digits[0] - b'0') * 64
                    + u32::from(digits[1] - b'0') * 8
                    + u32::from(digits[2] - b'0');
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points listed in /proc/self/mounts, in the order they appear (the order they
/// were mounted), without the root.
pub fn parse_mount_points(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(unescape_mount_path)
        .filter(|point| point != "/")
        .map(PathBuf::from)
        .collect()
}

/// The largest /proc/self/mounts init reads.
pub const MOUNTS_FILE_MAX_BYTES: usize = 1 << 20;

/// Unmounts everything but the root, newest mount first. A filesystem that stays busy is
/// remounted read-only and detached, so its data is safe on disk. Returns the mount points
/// that could not be unmounted cleanly.
pub fn unmount_all(system: &impl System, fallback: &[PathBuf]) -> Vec<PathBuf> {
    let points = match system.read_file(Path::new("/proc/self/mounts"), MOUNTS_FILE_MAX_BYTES) {
        Ok(bytes) => parse_mount_points(&String::from_utf8_lossy(&bytes)),
        Err(error) => {
            tracing::warn!("cannot read /proc/self/mounts, unmounting init's own mounts: {error}");
            fallback.to_vec()
        }
    };
    let mut unclean = Vec::new();
    for point in points.iter().rev() {
        if system.unmount(point, false).is_ok() {
            continue;
        }
        if let Err(error) = system.remount_read_only(point) {
            tracing::debug!(point = %point.display(), "read-only remount failed: {error}");
        }
        if let Err(error) = system.unmount(point, true) {
            tracing::warn!(point = %point.display(), "cannot unmount: {error}");
        }
        unclean.push(point.clone());
    }
    unclean
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeSystem};

    #[test]
    fn early_plan_mounts_parents_before_children() {
        let plan = mount_plan(MountStage::Early);
        let targets: Vec<_> = plan.iter().map(|m| m.request.target.clone()).collect();
        for (i, target) in targets.iter().enumerate() {
            for earlier_child in &targets[..i] {
                assert!(
                    !earlier_child.starts_with(target) || earlier_child == target,
                    "{} is mounted before its parent {}",
                    earlier_child.display(),
                    target.display()
                );
            }
        }
        let fstypes: Vec<_> = plan.iter().map(|m| m.request.fstype.as_str()).collect();
        assert_eq!(
            fstypes,
            [
                "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "tmpfs", "cgroup2"
            ]
        );
        assert!(
            plan.iter()
                .any(|m| m.request.target == Path::new("/dev") && m.required)
        );
    }

    #[test]
    fn configfs_waits_for_modules() {
        let late = mount_plan(MountStage::Late);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].request.fstype, "configfs");
        assert_eq!(late[0].request.target, Path::new("/sys/kernel/config"));
        assert!(
            !mount_plan(MountStage::Early)
                .iter()
                .any(|m| m.request.fstype == "configfs")
        );
    }

    #[test]
    fn mount_all_creates_points_and_mounts_in_order() {
        let system = FakeSystem::new();
        let plan = mount_plan(MountStage::Early);
        let report = mount_all(&system, &plan);
        assert!(!report.required_failed);
        assert_eq!(report.mounted.len(), plan.len());
        let mounts: Vec<_> = system
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(
            mounts,
            plan.iter().map(|p| p.request.clone()).collect::<Vec<_>>()
        );
        // Each mount point is created before it is mounted.
        let calls = system.calls();
        let mkdir_proc = calls
            .iter()
            .position(|c| *c == Call::CreateDir("/proc".into()));
        let mount_proc = calls
            .iter()
            .position(|c| matches!(c, Call::Mount(r) if r.target == Path::new("/proc")));
        assert!(mkdir_proc.unwrap() < mount_proc.unwrap());
    }

    #[test]
    fn failed_optional_mount_is_recorded_and_the_rest_go_on() {
        let system = FakeSystem::new();
        system.fail_mount("/dev/pts", libc::ENODEV);
        system.fail_mount("/proc", libc::EBUSY);
        let report = mount_all(&system, &mount_plan(MountStage::Early));
        assert!(!report.required_failed);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0, Path::new("/dev/pts"));
        assert_eq!(report.already_mounted, [PathBuf::from("/proc")]);
        assert!(report.mounted.contains(&PathBuf::from("/dev/shm")));
    }

    #[test]
    fn failed_required_mount_is_flagged() {
        let system = FakeSystem::new();
        system.fail_mount("/dev", libc::ENODEV);
        let report = mount_all(&system, &mount_plan(MountStage::Early));
        assert!(report.required_failed);
    }

    #[test]
    fn dev_symlinks_point_into_proc() {
        let system = FakeSystem::new();
        create_dev_symlinks(&system);
        let links: Vec<_> = system
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Symlink { target, link } => Some((link, target)),
                _ => None,
            })
            .collect();
        assert_eq!(links.len(), 4);
        assert!(links.contains(&("/dev/fd".into(), "/proc/self/fd".into())));
        assert!(links.contains(&("/dev/stderr".into(), "/proc/self/fd/2".into())));
    }

    #[test]
    fn mount_points_are_parsed_with_escapes() {
        let mounts = "rootfs / rootfs rw 0 0\n\
                      proc /proc proc rw 0 0\n\
                      tmpfs /run/my\\040disk tmpfs rw 0 0\n\
                      short\n";
        assert_eq!(
            parse_mount_points(mounts),
            [PathBuf::from("/proc"), PathBuf::from("/run/my disk")]
        );
    }

    #[test]
    fn unmount_goes_newest_first_and_detaches_busy_ones() {
        let system = FakeSystem::new();
        system.set_file(
            "/proc/self/mounts",
            "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n\
             devtmpfs /dev devtmpfs rw 0 0\n/dev/vdb /var/lib/cloister ext4 rw 0 0\n",
        );
        system.fail_unmount("/dev", libc::EBUSY);
        let unclean = unmount_all(&system, &[]);
        assert_eq!(unclean, [PathBuf::from("/dev")]);
        let calls: Vec<_> = system
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Unmount { .. } | Call::RemountReadOnly(_)))
            .collect();
        assert_eq!(
            calls,
            [
                Call::Unmount {
                    target: "/var/lib/cloister".into(),
                    detach: false
                },
                Call::Unmount {
                    target: "/dev".into(),
                    detach: false
                },
                Call::RemountReadOnly("/dev".into()),
                Call::Unmount {
                    target: "/dev".into(),
                    detach: true
                },
                Call::Unmount {
                    target: "/sys".into(),
                    detach: false
                },
                Call::Unmount {
                    target: "/proc".into(),
                    detach: false
                },
            ]
        );
    }

    #[test]
    fn unmount_falls_back_to_own_plan_without_proc() {
        let system = FakeSystem::new();
        let unclean = unmount_all(&system, &[PathBuf::from("/proc"), PathBuf::from("/run")]);
        assert!(unclean.is_empty());
        let order: Vec<_> = system
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Unmount { target, .. } => Some(target),
                _ => None,
            })
            .collect();
        assert_eq!(order, [PathBuf::from("/run"), PathBuf::from("/proc")]);
    }
}
