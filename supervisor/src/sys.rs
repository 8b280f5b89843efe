//! The few raw syscalls the supervisor needs that `std` and `rustix` do not wrap safely:
//! the child's setup between fork and exec, peeking at exited children without reaping them,
//! signalling process groups, and becoming a child subreaper.
//!
//! This is the crate's only module with `unsafe`. Every block says why it holds. It must
//! never hold policy: callers decide what to run, whom to signal, and when.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// What to set up in the child between fork and exec.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildSetup {
    /// RLIMIT_NOFILE, soft and hard.
    pub limit_nofile: Option<u64>,
    /// Group to switch to (supplementary groups are set to just this one).
    pub gid: Option<u32>,
    /// User to switch to, after the group.
    pub uid: Option<u32>,
    /// An open `cgroup.procs` file of the service's cgroup: the child writes "0" to join it.
    pub cgroup_procs_fd: Option<RawFd>,
    /// Send SIGKILL to the child if the supervisor thread dies.
    pub kill_on_parent_death: bool,
}

/// Spawns `command` in a new session (so its process group is its pid) with `setup` applied.
/// `std` already resets the signal mask and SIGPIPE in the child and reports exec errors.
pub fn spawn(command: &mut Command, setup: ChildSetup) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec. It calls only
    // async-signal-safe syscalls (setsid, prctl, getppid, write, setrlimit, setgroups, setgid,
    // setuid) on values copied in before the fork, and allocates nothing: errors are built
    // with `last_os_error`, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if setup.kill_on_parent_death {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // The supervisor died between fork and prctl.
                    libc::_exit(1);
                }
            }
            if let Some(fd) = setup.cgroup_procs_fd {
                let zero = b"0";
                if libc::write(fd, zero.as_ptr().cast(), zero.len()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(limit) = setup.limit_nofile {
                let rlim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(gid) = setup.gid {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) < 0 || libc::setgid(gid) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(uid) = setup.uid
                && libc::setuid(uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Terminating signal, when it was killed.
    pub signal: Option<i32>,
}

/// The pid of some child that has exited, without reaping it (waitid with WNOWAIT), so that
/// its process group id cannot be reused while we signal what is left of the group.
pub fn peek_exited_child() -> Option<i32> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value, and si_pid stays 0 when no
    // child has exited (WNOHANG), as waitid(2) documents.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc < 0 {
        return None;
    }
    // SAFETY: waitid filled `info` for SIGCHLD (or left it zeroed); si_pid is valid for both.
    let pid = unsafe { info.si_pid() };
    (pid > 0).then_some(pid)
}

/// Reaps `pid` if it has exited.
pub fn reap(pid: i32) -> Option<ExitStatus> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable int for the duration of the call.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc <= 0 {
        return None;
    }
    Some(if libc::WIFEXITED(status) {
        ExitStatus {
            code: Some(libc::WEXITSTATUS(status)),
            signal: None,
        }
    } else {
        ExitStatus {
            code: None,
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        }
    })
}

/// Sends `signal` to process group `pgid` (the service's session). Errors (ESRCH: the group is
/// gone) are returned for the caller to ignore or log.
pub fn signal_group(pgid: i32, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill has no memory preconditions; a negative pid names a process group, and
    // pgid > 1 rules out "every process" (-1) and our own group (0).
    if unsafe { libc::kill(-pgid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes orphaned descendants be re-parented to this process (PR_SET_CHILD_SUBREAPER).
pub fn become_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CLOCK_BOOTTIME in milliseconds (time since boot, counting suspend).
pub fn boottime_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_signal_everyone() {
        assert!(signal_group(1, 0).is_err());
        assert!(signal_group(0, 0).is_err());
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(boottime_ms() > a);
    }
}
