//! `cloister-probe`: a test-only guest service. It tells the supervisor it is ready
//! (sd_notify `READY=1`), then answers HTTP on the port given as its argument:
//! `GET /report` with what it observes inside the guest, `POST /poweroff` with 202, then
//! it asks the supervisor to power off. Only test images carry it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

use cloister_tests::probe;

const REQUEST_MAX_BYTES: usize = 8 * 1024;

fn notify_ready() -> std::io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(&target)?,
    };
    UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr)?;
    Ok(())
}

fn answer(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_MAX_BYTES {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/report")) => {
            answer(&mut stream, "200 OK", &probe::observe().to_json())
        }
        (Some("POST"), Some("/poweroff")) => {
            // Answer first: stopping the services stops this probe too, so the
            // supervisor's own reply may never come back.
            answer(&mut stream, "202 Accepted", "{\"poweroff\":\"requested\"}")?;
            stream.shutdown(std::net::Shutdown::Both)?;
            match probe::request_poweroff(Path::new(probe::SUPERVISOR_SOCKET)) {
                Ok(reply) => eprintln!("cloister-probe: supervisor answered {reply}"),
                Err(e) => eprintln!("cloister-probe: poweroff request failed: {e}"),
            }
            Ok(())
        }
        _ => answer(&mut stream, "404 Not Found", "{}"),
    }
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cloister-probe: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = notify_ready() {
        eprintln!("cloister-probe: sd_notify failed: {e}");
    }
    eprintln!("cloister-probe: listening on port {port}");
    for stream in listener.incoming().flatten() {
        if let Err(e) = serve(stream) {
            eprintln!("cloister-probe: {e}");
        }
    }
}
