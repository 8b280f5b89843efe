//! cgroup v2, where it is mounted: one cgroup per service, for the memory limit
//! (`memory.max`), for telling whether a process belongs to a service, and for killing what a
//! service leaves behind (`cgroup.kill`).
//!
//! Everything here is best effort: without cgroup v2 (or without the memory controller) the
//! supervisor still runs services, and says once that limits are not applied. It must never
//! touch cgroups outside the folder it created.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The folder holding the services' cgroups.
#[derive(Debug)]
pub struct CgroupTree {
    base: PathBuf,
    /// Whether `memory.max` can be set in the services' cgroups.
    pub memory: bool,
}

impl CgroupTree {
    /// Finds the cgroup2 mount and our cgroup, and creates `<ours>/<leaf>` for the services.
    /// Returns None when cgroup v2 is not mounted or not writable.
    pub fn create(leaf: &str) -> Option<Self> {
        let mount = cgroup2_mount()?;
        let ours = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let ours = ours
            .lines()
            .find_map(|l| l.strip_prefix("0::"))?
            .trim_start_matches('/');
        let parent = mount.join(ours);
        remove_stale(&parent);
        let base = parent.join(leaf);
        std::fs::create_dir_all(&base).ok()?;
        let controllers =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let mut memory = controllers.split_whitespace().any(|c| c == "memory");
        if !memory {
            // Enabling it needs it in the parent's subtree_control; that works when the parent
            // holds no processes of its own (the root cgroup is exempt).
            let parent_has = std::fs::read_to_string(parent.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == "memory");
            if parent_has {
                memory = std::fs::write(parent.join("cgroup.subtree_control"), "+memory").is_ok();
            }
        }
        if memory {
            memory = std::fs::write(base.join("cgroup.subtree_control"), "+memory").is_ok();
        }
        Some(Self { base, memory })
    }

    /// The service's cgroup folder, created if missing.
    pub fn service(&self, name: &str) -> std::io::Result<PathBuf> {
        let path = self.base.join(format!("{name}.service"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(path)
    }

    /// Removes the (empty) service cgroups and the base folder.
    pub fn remove(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.base) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Removes the empty cgroup folders of supervisors that died without cleaning up
/// (`cloister-supervisor.<pid>` whose pid is gone). Only empty cgroups can be removed.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cloister-supervisor."))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let tree = CgroupTree {
            base: entry.path(),
            memory: false,
        };
        tree.remove();
    }
}

/// Sets `memory.max` in a service cgroup.
pub fn set_memory_max(cgroup: &Path, bytes: u64) -> std::io::Result<()> {
    std::fs::write(cgroup.join("memory.max"), bytes.to_string())
}

/// Opens the cgroup's `cgroup.procs` for a child to join by writing "0".
pub fn open_procs(cgroup: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
}

/// Kills every process left in the cgroup (`cgroup.kill`, Linux 5.14 and later).
pub fn kill_all(cgroup: &Path) {
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
}

/// The cgroup v2 path (relative to the mount, with a leading `/`) of `pid`.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The cgroup path of a service folder as `/proc/<pid>/cgroup` would show it.
pub fn relative_path(cgroup: &Path) -> Option<String> {
    let mount = cgroup2_mount()?;
    let rel = cgroup.strip_prefix(&mount).ok()?;
    Some(format!("/{}", rel.display()))
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_mount_in(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The first cgroup2 mount point in mountinfo text (the filesystem type follows " - ").
fn cgroup2_mount_in(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_in("32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n"),
            None
        );
    }
}
