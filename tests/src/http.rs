//! Plain HTTP to forwarded guest ports, for the boot test, through the workspace's one client
//! (`cloister_http_client`). QEMU accepts a forwarded connection before the guest listens, so
//! a connection alone proves nothing: callers wait for a whole HTTP answer. Host side only
//! (the probe built from this crate for the guest has no use for it), never used for
//! anything but tests.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cloister_http_client::{Endpoint, Request, blocking};

/// Longest response accepted.
pub const RESPONSE_MAX_BYTES: usize = 1 << 20;

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body, invalid UTF-8 replaced.
    pub body: String,
}

/// Sends one request (`GET` or `POST` with an empty body) and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<Response> {
    let endpoint = Endpoint::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let answer = blocking::request(
        &endpoint,
        Request {
            method,
            ..Request::get(path, RESPONSE_MAX_BYTES)
        },
        timeout,
    )
    .map_err(io::Error::other)?;
    Ok(Response {
        status: answer.status,
        body: answer.text(),
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
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn an_answer_is_read_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n{\"a\":1}");
        });
        let answer = request(addr, "GET", "/report", Duration::from_secs(5)).unwrap();
        assert_eq!(
            answer,
            Response {
                status: 200,
                body: "{\"a\":1}".into()
            }
        );
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

    #[test]
    fn a_non_http_answer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.write_all(b"SSH-2.0-x\r\n\r\n");
        });
        assert!(request(addr, "GET", "/", Duration::from_secs(5)).is_err());
    }
}
