//! Wall-clock time in whole seconds since the Unix epoch, the unit the database stores.

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
