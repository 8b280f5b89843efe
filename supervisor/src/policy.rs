//! Restart decisions: how a process ended ([`ExitCause`]), whether a [`RestartPolicy`] restarts
//! it (systemd's table for `Restart=`), the exponential backoff, and the start limit.
//!
//! Pure logic over numbers and instants: it must never touch processes or clocks itself.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How a service's main process ended, in systemd's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// Exit code 0, or killed by SIGHUP, SIGINT, SIGTERM or SIGPIPE (systemd's "clean" signals).
    Clean,
    /// Exit code other than 0.
    UncleanExit,
    /// Killed by any other signal (SIGSEGV, SIGABRT, SIGKILL, ...).
    UncleanSignal,
    /// It did not get ready within the start timeout and was stopped.
    Timeout,
    /// It stopped pinging the watchdog and was aborted.
    Watchdog,
}

impl ExitCause {
    /// Classifies a wait status: `Some(code)` for an exit, or the terminating signal.
    pub fn from_exit(exit_code: Option<i32>, signal: Option<i32>) -> Self {
        match (exit_code, signal) {
            (Some(0), _) => Self::Clean,
            (Some(_), _) => Self::UncleanExit,
            (None, Some(libc::SIGHUP | libc::SIGINT | libc::SIGTERM | libc::SIGPIPE)) => {
                Self::Clean
            }
            (None, _) => Self::UncleanSignal,
        }
    }

    /// Whether this counts as a failure (the service is shown `failed` when not restarted).
    pub fn is_failure(self) -> bool {
        self != Self::Clean
    }
}

/// systemd's `Restart=` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Restart only after a clean exit.
    OnSuccess,
    /// Restart after an unclean exit code, an unclean signal, a timeout or the watchdog.
    OnFailure,
    /// Restart after an unclean signal, a timeout or the watchdog.
    OnAbnormal,
    /// Restart only after the watchdog.
    OnWatchdog,
    /// Restart only after an unclean signal.
    OnAbort,
    /// Always restart.
    Always,
}

impl RestartPolicy {
    /// systemd's table (systemd.service(5), "Table 2. Exit causes and the effect of the
    /// Restart= settings").
    pub fn restarts_on(self, cause: ExitCause) -> bool {
        use ExitCause::*;
        match self {
            Self::No => false,
            Self::Always => true,
            Self::OnSuccess => cause == Clean,
            Self::OnFailure => cause != Clean,
            Self::OnAbnormal => matches!(cause, UncleanSignal | Timeout | Watchdog),
            Self::OnWatchdog => cause == Watchdog,
            Self::OnAbort => cause == UncleanSignal,
        }
    }
}

/// The delay before automatic restart number `attempt` (1 for the first): `base`, doubled on
/// each further attempt, capped at `max`.
pub fn restart_delay_ms(base_ms: u64, max_ms: u64, attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(63);
    base_ms
        .checked_shl(doublings)
        .filter(|d| d >> doublings == base_ms)
        .unwrap_or(u64::MAX)
        .min(max_ms)
}

/// Counts starts in a sliding window: more than `burst` starts within `interval` is too many.
#[derive(Debug, Clone)]
pub struct StartLimit {
    burst: u32,
    interval: Duration,
    starts: VecDeque<Instant>,
}

impl StartLimit {
    /// A limit of `burst` starts per `interval_ms`; an interval of 0 turns it off.
    pub fn new(burst: u32, interval_ms: u64) -> Self {
        Self {
            burst,
            interval: Duration::from_millis(interval_ms),
            starts: VecDeque::new(),
        }
    }

    /// Records a start at `now`; returns false, recording nothing, when it would exceed the limit.
    pub fn try_start(&mut self, now: Instant) -> bool {
        if self.interval.is_zero() {
            return true;
        }
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.interval)
        {
            self.starts.pop_front();
        }
        if self.starts.len() >= self.burst as usize {
            return false;
        }
        self.starts.push_back(now);
        true
    }

    /// Forgets past starts (after an operator's explicit start of a failed service).
    pub fn reset(&mut self) {
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExitCause::*;
    use RestartPolicy::*;

    #[test]
    fn systemd_restart_table() {
        // Rows: exit causes; columns: no, always, on-success, on-failure, on-abnormal,
        // on-abort, on-watchdog. Copied from the meaning of systemd.service(5)'s table.
        let policies = [
            No, Always, OnSuccess, OnFailure, OnAbnormal, OnAbort, OnWatchdog,
        ];
        let table = [
            (Clean, [false, true, true, false, false, false, false]),
            (UncleanExit, [false, true, false, true, false, false, false]),
            (UncleanSignal, [false, true, false, true, true, true, false]),
            (Timeout, [false, true, false, true, true, false, false]),
            (Watchdog, [false, true, false, true, true, false, true]),
        ];
        for (cause, row) in table {
            for (policy, expected) in policies.iter().zip(row) {
                assert_eq!(
                    policy.restarts_on(cause),
                    expected,
                    "{policy:?} on {cause:?}"
                );
            }
        }
    }

    #[test]
    fn exit_classification() {
        assert_eq!(ExitCause::from_exit(Some(0), None), Clean);
        assert_eq!(ExitCause::from_exit(Some(1), None), UncleanExit);
        assert_eq!(ExitCause::from_exit(None, Some(libc::SIGTERM)), Clean);
        assert_eq!(ExitCause::from_exit(None, Some(libc::SIGPIPE)), Clean);
        assert_eq!(
            ExitCause::from_exit(None, Some(libc::SIGKILL)),
            UncleanSignal
        );
        assert_eq!(
            ExitCause::from_exit(None, Some(libc::SIGSEGV)),
            UncleanSignal
        );
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let delays: Vec<u64> = (1..=7).map(|n| restart_delay_ms(100, 1_000, n)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000, 1_000]);
        assert_eq!(restart_delay_ms(0, 1_000, 50), 0);
        assert_eq!(restart_delay_ms(3, u64::MAX, 200), u64::MAX);
        assert_eq!(restart_delay_ms(u64::MAX / 2, u64::MAX, 3), u64::MAX);
    }

    #[test]
    fn start_limit_window_slides() {
        let t0 = Instant::now();
        let mut limit = StartLimit::new(3, 1_000);
        assert!(limit.try_start(t0));
        assert!(limit.try_start(t0 + Duration::from_millis(10)));
        assert!(limit.try_start(t0 + Duration::from_millis(20)));
        assert!(!limit.try_start(t0 + Duration::from_millis(30)));
        // The first start leaves the window after 1 s.
        assert!(limit.try_start(t0 + Duration::from_millis(1_000)));
        assert!(!limit.try_start(t0 + Duration::from_millis(1_005)));
        let mut off = StartLimit::new(1, 0);
        assert!((0..100).all(|_| off.try_start(t0)));
    }
}
