//! The few raw syscalls the supervisor needs that `std` and `rustix` do not wrap safely:
//! the child's setup between fork and exec, peeking at exited children without reaping them,
//! signalling process groups, and becoming a child subreaper.
//!
//! This is the crate's only module with `unsafe`. Every block says why it holds. It must
//! never hold policy: callers decide what to run, whom to signal, and when.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

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

/// A program to start, fully prepared before the fork, so that the child only makes syscalls.
#[derive(Debug)]
pub struct SpawnPlan {
    /// Absolute path of the program.
    pub program: CString,
    /// argv, starting with the program name.
    pub argv: Vec<CString>,
    /// The whole environment, `KEY=VALUE`.
    pub envp: Vec<CString>,
    /// Working directory.
    pub cwd: CString,
    /// Add `WATCHDOG_PID=<the child's pid>` (known only after the fork) to the environment.
    pub watchdog_pid: bool,
    /// Descriptors that become the child's stdin, stdout and stderr.
    pub stdio: [RawFd; 3],
    /// Identity, limits and cgroup.
    pub setup: ChildSetup,
}

/// Where a child failed before exec, sent to the parent through the error pipe.
const STEPS: [&str; 10] = [
    "signal reset",
    "stdio",
    "setsid",
    "parent-death signal",
    "cgroup",
    "RLIMIT_NOFILE",
    "setgroups/setgid",
    "setuid",
    "chdir",
    "exec",
];

/// Forks and executes `plan` in a new session (its process group is its pid), with signal
/// dispositions and mask reset, and returns the pid once exec succeeded. An error names the
/// step that failed; the failed child is reaped here.
pub fn spawn(plan: &SpawnPlan) -> io::Result<i32> {
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // Room for "WATCHDOG_PID=" and up to 10 digits and the NUL, filled in by the child.
    let mut watchdog_pid = *b"WATCHDOG_PID=0000000000\0";
    let watchdog_pid_ptr = watchdog_pid.as_mut_ptr();
    let digits_ptr = watchdog_pid_ptr.wrapping_add(13);
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    if plan.watchdog_pid {
        envp.push(watchdog_pid_ptr.cast_const().cast());
    }
    envp.push(std::ptr::null());
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let err_fd = err_write.as_raw_fd();
    let parent = rustix::process::getpid().as_raw_nonzero().get();

    // SAFETY: sigset_t is plain data; sigfillset/sigprocmask write only to the sets given.
    // Blocking every signal around fork keeps our handlers from running in the child.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid and writable.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: fork has no memory preconditions. In the child we call only async-signal-safe
    // syscalls on memory prepared before the fork (see `child_after_fork`), then exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the child of a fork; `plan`, `argv`, `envp` and `digits_ptr` point to
        // this process's private copy of the parent's memory, which no one else can touch.
        unsafe { child_after_fork(plan, &argv, &envp, digits_ptr, err_fd, parent) }
    }
    let fork_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above from a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    drop(err_write);
    if pid < 0 {
        return Err(fork_error);
    }
    // Exec closes the pipe (CLOEXEC): end of file means success, 8 bytes mean failure.
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match rustix::io::read(&err_read, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    let mut status = 0;
    // SAFETY: `status` is a valid int; the child has exited or is about to.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let error = io::Error::from_raw_os_error(errno);
    Err(io::Error::new(
        error.kind(),
        format!("{}: {error}", STEPS.get(step).copied().unwrap_or("setup")),
    ))
}

/// Sends the failed step and errno to the parent, then exits: the child's last act.
fn report_failure(err_fd: RawFd, step: u32) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&step.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write reads 8 bytes from our stack; write and _exit are async-signal-safe.
    unsafe {
        libc::write(err_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// The child's side of [`spawn`]: never returns.
///
/// # Safety
/// Must be called only in the child right after fork, with pointers into its own memory:
/// null-terminated `argv` and `envp` arrays of valid C strings, and `digits` pointing to 10
/// writable bytes followed by a NUL inside the string that `envp` may reference.
unsafe fn child_after_fork(
    plan: &SpawnPlan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    digits: *mut u8,
    err_fd: RawFd,
    parent: i32,
) -> ! {
    let fail = |step: u32| report_failure(err_fd, step);
    // SAFETY: every call below is an async-signal-safe syscall wrapper given valid pointers
    // to memory owned by this (single-threaded, just-forked) process.
    unsafe {
        for signal in 1..libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            let target = target as libc::c_int;
            let ok = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                fail(1);
            }
        }
        if libc::setsid() < 0 {
            fail(2);
        }
        if plan.setup.kill_on_parent_death {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                fail(3);
            }
            if libc::getppid() != parent {
                libc::_exit(1); // the supervisor died between fork and prctl
            }
        }
        if let Some(fd) = plan.setup.cgroup_procs_fd
            && libc::write(fd, b"0".as_ptr().cast(), 1) < 0
        {
            fail(4);
        }
        if let Some(limit) = plan.setup.limit_nofile {
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) < 0 {
                fail(5);
            }
        }
        if let Some(gid) = plan.setup.gid {
            let groups = [gid];
            if libc::setgroups(1, groups.as_ptr()) < 0 || libc::setgid(gid) < 0 {
                fail(6);
            }
        }
        if let Some(uid) = plan.setup.uid
            && libc::setuid(uid) < 0
        {
            fail(7);
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            fail(8);
        }
        if plan.watchdog_pid {
            // Write our pid's decimal digits, then end the string.
            let mut pid = libc::getpid() as u32;
            let mut text = [0u8; 10];
            let mut len = 0;
            loop {
                text[len] = b'0' + (pid % 10) as u8;
                len += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            for i in 0..len {
                *digits.add(i) = text[len - 1 - i];
            }
            *digits.add(len) = 0;
        }
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(9)
    }
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
