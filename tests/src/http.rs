//! A tiny blocking HTTP/1.0 client and server helpers over std's TCP, for the boot test
//! and the probe. QEMU accepts a forwarded connection before the guest listens, so a
//! connection alone proves nothing: callers wait for a whole HTTP answer. Never used for
//! anything but tests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest response accepted.
pub const RESPONSE_MAX_BYTES: usize = 1 << 20;

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

/// Sends one request (`GET` or `POST` with an empty body) and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: cloister\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .take(RESPONSE_MAX_BYTES as u64)
        .read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parses `HTTP/1.x CODE ...\r\n headers \r\n\r\n body`.
pub fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let text = std::str::from_utf8(raw).map_err(|_| bad("response is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status_line = head.lines().next().ok_or_else(|| bad("empty response"))?;
    let mut words = status_line.split_whitespace();
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad("not an HTTP/1 response"));
    }
    let status = words
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// Repeats `GET path` until a 200 answer or `deadline`; returns it with the time waited.
pub fn wait_for_ok(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> io::Result<(Response, Duration)> {
    let start = Instant::now();
    let mut last_error = io::Error::other("no attempt made");
    while start.elapsed() < deadline {
        match request(addr, "GET", path, Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => return Ok((r, start.elapsed())),
            Ok(r) => last_error = io::Error::other(format!("status {}", r.status)),
            Err(e) => last_error = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no 200 answer on {addr}{path} within {deadline:?}: {last_error}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_response_parses() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: "{\"a\":1}".into()
            }
        );
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    #[test]
    fn a_listener_that_closes_without_answering_is_not_ready() {
        // What QEMU's hostfwd does before the guest listens: accept, then close.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                drop(stream);
            }
        });
        let err = wait_for_ok(addr, "/", Duration::from_millis(1500)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
