//! The sd_notify datagram format (systemd's `sd_notify(3)`): newline-separated `KEY=VALUE`
//! assignments, parsed into [`NotifyMessage`]s.
//!
//! Pure parsing of untrusted bytes (it is a fuzz target): it must never panic, allocate without
//! bound, or decide anything about which service a sender belongs to (the supervisor checks
//! the sender's credentials).

#![forbid(unsafe_code)]

/// Largest datagram accepted, as systemd (`NOTIFY_BUFFER_MAX`, one page).
pub const NOTIFY_DATAGRAM_MAX_BYTES: usize = 4096;
/// Longest STATUS= text kept.
pub const STATUS_TEXT_MAX_BYTES: usize = 1024;

/// One assignment the supervisor acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyMessage {
    /// `READY=1`: startup finished (or a reload finished).
    Ready,
    /// `RELOADING=1`: the service is reloading its configuration.
    Reloading,
    /// `STOPPING=1`: the service is shutting down on its own.
    Stopping,
    /// `STATUS=...`: free text shown in the service list.
    Status(String),
    /// `ERRNO=n`: the service failed with this errno.
    Errno(i32),
    /// `WATCHDOG=1`: keep-alive ping.
    Watchdog,
    /// `WATCHDOG=trigger`: the service asks to be treated as hung now.
    WatchdogTrigger,
    /// `WATCHDOG_USEC=n`: change the watchdog interval.
    WatchdogUsec(u64),
    /// `EXTEND_TIMEOUT_USEC=n`: the current start or stop timeout is at least n µs from now.
    ExtendTimeoutUsec(u64),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// Nothing in it.
    #[error("empty datagram")]
    Empty,
    /// Bigger than [`NOTIFY_DATAGRAM_MAX_BYTES`].
    #[error("datagram of {0} bytes is over the {NOTIFY_DATAGRAM_MAX_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not UTF-8, or holds a NUL byte.
    #[error("datagram is not UTF-8 text")]
    NotText,
    /// A line that is not `KEY=VALUE`.
    #[error("line {0} is not KEY=VALUE")]
    NotAssignment(usize),
    /// A known key with a value that makes no sense.
    #[error("invalid value for {0}")]
    BadValue(&'static str),
}

/// Parses one datagram. Unknown keys (MAINPID, FDSTORE, BARRIER, MONOTONIC_USEC, X_...) are
/// ignored, as systemd ignores what it does not handle; anything malformed drops it whole.
pub fn parse_datagram(bytes: &[u8]) -> Result<Vec<NotifyMessage>, NotifyError> {
    if bytes.len() > NOTIFY_DATAGRAM_MAX_BYTES {
        return Err(NotifyError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| NotifyError::NotText)?;
    if text.contains('\0') {
        return Err(NotifyError::NotText);
    }
    if text.trim().is_empty() {
        return Err(NotifyError::Empty);
    }
    let mut messages = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(NotifyError::NotAssignment(index + 1))?;
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(NotifyError::NotAssignment(index + 1));
        }
        let message = match key {
            "READY" => Some(flag(value, "READY", NotifyMessage::Ready)?),
            "RELOADING" => Some(flag(value, "RELOADING", NotifyMessage::Reloading)?),
            "STOPPING" => Some(flag(value, "STOPPING", NotifyMessage::Stopping)?),
            "STATUS" => Some(NotifyMessage::Status(truncate(
                value,
                STATUS_TEXT_MAX_BYTES,
            ))),
            "ERRNO" => Some(NotifyMessage::Errno(
                value
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or(NotifyError::BadValue("ERRNO"))?,
            )),
            "WATCHDOG" => Some(match value {
                "1" => NotifyMessage::Watchdog,
                "trigger" => NotifyMessage::WatchdogTrigger,
                _ => return Err(NotifyError::BadValue("WATCHDOG")),
            }),
            "WATCHDOG_USEC" => Some(NotifyMessage::WatchdogUsec(usec(value, "WATCHDOG_USEC")?)),
            "EXTEND_TIMEOUT_USEC" => Some(NotifyMessage::ExtendTimeoutUsec(usec(
                value,
                "EXTEND_TIMEOUT_USEC",
            )?)),
            _ => None,
        };
        messages.extend(message);
    }
    Ok(messages)
}

fn flag(
    value: &str,
    key: &'static str,
    message: NotifyMessage,
) -> Result<NotifyMessage, NotifyError> {
    if value == "1" {
        Ok(message)
    } else {
        Err(NotifyError::BadValue(key))
    }
}

fn usec(value: &str, key: &'static str) -> Result<u64, NotifyError> {
    value.parse::<u64>().map_err(|_| NotifyError::BadValue(key))
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_message() {
        let got = parse_datagram(
            b"READY=1\nSTATUS=Serving 3 models\nERRNO=2\nWATCHDOG=1\nWATCHDOG=trigger\n\
              RELOADING=1\nMONOTONIC_USEC=123\nSTOPPING=1\nWATCHDOG_USEC=500000\n\
              EXTEND_TIMEOUT_USEC=1000000\nX_CUSTOM=yes\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                NotifyMessage::Ready,
                NotifyMessage::Status("Serving 3 models".into()),
                NotifyMessage::Errno(2),
                NotifyMessage::Watchdog,
                NotifyMessage::WatchdogTrigger,
                NotifyMessage::Reloading,
                NotifyMessage::Stopping,
                NotifyMessage::WatchdogUsec(500_000),
                NotifyMessage::ExtendTimeoutUsec(1_000_000),
            ]
        );
    }

    #[test]
    fn status_may_hold_equals_signs_and_be_empty() {
        assert_eq!(
            parse_datagram(b"STATUS=a=b").unwrap(),
            vec![NotifyMessage::Status("a=b".into())]
        );
        assert_eq!(
            parse_datagram(b"STATUS=").unwrap(),
            vec![NotifyMessage::Status(String::new())]
        );
    }

    #[test]
    fn malformed_datagrams_are_rejected() {
        assert_eq!(parse_datagram(b""), Err(NotifyError::Empty));
        assert_eq!(parse_datagram(b"\n\n"), Err(NotifyError::Empty));
        assert_eq!(parse_datagram(b"READY"), Err(NotifyError::NotAssignment(1)));
        assert_eq!(
            parse_datagram(b"READY=1\n=x"),
            Err(NotifyError::NotAssignment(2))
        );
        assert_eq!(
            parse_datagram(b"ready=1"),
            Err(NotifyError::NotAssignment(1))
        );
        assert_eq!(
            parse_datagram(b"READY=2"),
            Err(NotifyError::BadValue("READY"))
        );
        assert_eq!(
            parse_datagram(b"ERRNO=-1"),
            Err(NotifyError::BadValue("ERRNO"))
        );
        assert_eq!(
            parse_datagram(b"WATCHDOG=0"),
            Err(NotifyError::BadValue("WATCHDOG"))
        );
        assert_eq!(parse_datagram(b"READY=1\xff"), Err(NotifyError::NotText));
        assert_eq!(parse_datagram(b"READY=1\0"), Err(NotifyError::NotText));
        let big = vec![b'A'; NOTIFY_DATAGRAM_MAX_BYTES + 1];
        assert_eq!(
            parse_datagram(&big),
            Err(NotifyError::TooLarge(NOTIFY_DATAGRAM_MAX_BYTES + 1))
        );
    }

    #[test]
    fn long_status_is_cut_on_a_char_boundary() {
        let text = format!("STATUS={}", "é".repeat(STATUS_TEXT_MAX_BYTES));
        let got = parse_datagram(text.as_bytes()).unwrap();
        let NotifyMessage::Status(s) = &got[0] else {
            panic!("{got:?}")
        };
        assert!(s.len() <= STATUS_TEXT_MAX_BYTES && s.len() >= STATUS_TEXT_MAX_BYTES - 1);
    }
}
