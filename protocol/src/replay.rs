//! Replay protection for sealed requests: a request whose timestamp is outside the window
//! around the server's clock is refused, and so is one whose encapsulated key was already
//! seen inside the window. Memory is bounded: at most `capacity` keys are remembered, each
//! only until its timestamp leaves the window.
//!
//! This guard must never let a remembered key go before its timestamp has left the window
//! (that would reopen the replay); when it is full it refuses instead.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use crate::ENCAPSULATED_KEY_BYTES;

/// The default window: a request stamped more than 5 minutes from the server's clock is refused.
pub const REPLAY_WINDOW_DEFAULT_MS: u64 = 5 * 60 * 1000;
/// The default number of encapsulated keys remembered at once (about 100 bytes each).
pub const REPLAY_CAPACITY_DEFAULT: usize = 100_000;

/// Why a request was refused as a possible replay.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error(
        "the request is stamped {ts_ms} ms, more than {window_ms} ms from the server's clock ({now_ms} ms); check the device's clock"
    )]
    OutsideWindow {
        ts_ms: u64,
        now_ms: u64,
        window_ms: u64,
    },
    #[error("this sealed request was already received: a replay")]
    Replayed,
    #[error("too many requests in the replay window; try again shortly")]
    Full,
}

/// The server's memory of recent requests. Shared by all request handlers (it locks inside).
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// (time after which the key may be forgotten, key), oldest first.
    by_expiry: BTreeSet<(u64, [u8; ENCAPSULATED_KEY_BYTES])>,
    keys: HashSet<[u8; ENCAPSULATED_KEY_BYTES]>,
    /// The latest clock reading seen, so a clock that steps back does not revive old requests.
    latest_now_ms: u64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(REPLAY_WINDOW_DEFAULT_MS, REPLAY_CAPACITY_DEFAULT)
    }
}

impl ReplayGuard {
    /// A guard refusing timestamps more than `window_ms` from now, remembering at most
    /// `capacity` keys.
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        Self {
            window_ms,
            capacity,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Accepts a request (and remembers its key) or refuses it. Call it only after the
    /// request was opened, so that only authentic requests take room.
    pub fn check(
        &self,
        encapsulated_key: &[u8; ENCAPSULATED_KEY_BYTES],
        ts_ms: u64,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.latest_now_ms = seen.latest_now_ms.max(now_ms);
        let now_ms = seen.latest_now_ms;
        if ts_ms.abs_diff(now_ms) > self.window_ms {
            return Err(ReplayError::OutsideWindow {
                ts_ms,
                now_ms,
                window_ms: self.window_ms,
            });
        }
        while let Some(&(expiry_ms, key)) = seen.by_expiry.first() {
            if expiry_ms >= now_ms {
                break;
            }
            seen.by_expiry.pop_first();
            seen.keys.remove(&key);
        }
        if seen.keys.contains(encapsulated_key) {
            return Err(ReplayError::Replayed);
        }
        if seen.keys.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        let expiry_ms = ts_ms.saturating_add(self.window_ms);
        seen.by_expiry.insert((expiry_ms, *encapsulated_key));
        seen.keys.insert(*encapsulated_key);
        Ok(())
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys
            .len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_key_is_refused_the_second_time() {
        let guard = ReplayGuard::default();
        guard.check(&[1; 32], T0, T0).unwrap();
        assert_eq!(
            guard.check(&[1; 32], T0, T0 + 10),
            Err(ReplayError::Replayed)
        );
        guard.check(&[2; 32], T0, T0 + 10).unwrap();
    }

    #[test]
    fn timestamps_outside_the_window_are_refused_both_ways() {
        let guard = ReplayGuard::new(1000, 10);
        assert!(matches!(
            guard.check(&[1; 32], T0 - 1001, T0),
            Err(ReplayError::OutsideWindow { .. })
        ));
        assert!(matches!(
            guard.check(&[2; 32], T0 + 1001, T0),
            Err(ReplayError::OutsideWindow { .. })
        ));
        guard.check(&[3; 32], T0 - 1000, T0).unwrap();
        guard.check(&[4; 32], T0 + 1000, T0).unwrap();
        assert_eq!(guard.len(), 2, "refused requests take no room");
    }

    #[test]
    fn keys_are_forgotten_only_after_their_timestamp_left_the_window() {
        let guard = ReplayGuard::new(1000, 10);
        guard.check(&[1; 32], T0, T0).unwrap();
        // Still inside the window: remembered, and a replay is refused.
        assert_eq!(
            guard.check(&[1; 32], T0, T0 + 1000),
            Err(ReplayError::Replayed)
        );
        // Past the window the timestamp itself is refused, and the key is forgotten.
        assert!(matches!(
            guard.check(&[1; 32], T0, T0 + 1001),
            Err(ReplayError::OutsideWindow { .. })
        ));
        guard.check(&[2; 32], T0 + 1001, T0 + 1001).unwrap();
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn a_full_guard_refuses_rather_than_forgets() {
        let guard = ReplayGuard::new(1000, 2);
        guard.check(&[1; 32], T0, T0).unwrap();
        guard.check(&[2; 32], T0, T0).unwrap();
        assert_eq!(guard.check(&[3; 32], T0, T0), Err(ReplayError::Full));
        assert_eq!(guard.check(&[1; 32], T0, T0), Err(ReplayError::Replayed));
        // Once the first two expire there is room again.
        guard.check(&[3; 32], T0 + 1500, T0 + 1500).unwrap();
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn a_clock_stepping_back_does_not_revive_an_expired_timestamp() {
        let guard = ReplayGuard::new(1000, 10);
        guard.check(&[1; 32], T0, T0).unwrap();
        guard.check(&[2; 32], T0 + 5000, T0 + 5000).unwrap();
        // The clock steps back to T0: the first request's key was forgotten, so it must
        // still be refused by its timestamp.
        assert!(matches!(
            guard.check(&[1; 32], T0, T0),
            Err(ReplayError::OutsideWindow { .. })
        ));
    }
}
