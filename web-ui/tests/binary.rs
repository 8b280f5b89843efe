//! The `web-ui` binary as the supervisor runs it: it prints the addresses, the certificate
//! fingerprint and the one-time setup code, sends READY=1 to `$NOTIFY_SOCKET` once it
//! listens, and exits cleanly on SIGTERM. A second start on the same state keeps the
//! self-signed certificate and, with still no owner, prints a new setup code.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Started {
    child: std::process::Child,
    lines: Vec<String>,
    ready: bool,
}

fn start(state: &std::path::Path, notify: &std::path::Path) -> Started {
    let socket = UnixDatagram::bind(notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_web-ui"))
        .arg("--state-dir")
        .arg(state)
        .args([
            "--listen",
            "127.0.0.1",
            "--https-port",
            "0",
            "--http-port",
            "0",
        ])
        .arg("--supervisor-socket")
        .arg(state.join("none.sock"))
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 256];
    let ready = match socket.recv(&mut buffer) {
        Ok(n) => String::from_utf8_lossy(&buffer[..n]).contains("READY=1"),
        Err(_) => false,
    };
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    // Without an owner the banner ends with the setup URL, printed before READY=1.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let done = line.contains("open https://");
        lines.push(line.trim_end().to_owned());
        if done {
            break;
        }
    }
    std::fs::remove_file(notify).unwrap();
    Started {
        child,
        lines,
        ready,
    }
}

fn stop(mut started: Started) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    let sent = unsafe { libc::kill(started.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = started.child.try_wait().unwrap() {
            assert!(status.success(), "web-ui exited with {status} on SIGTERM");
            return;
        }
        assert!(Instant::now() < deadline, "web-ui did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_binary_prints_the_setup_code_notifies_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let notify = dir.path().join("notify.sock");
    let first = start(&state, &notify);
    assert!(
        first.ready,
        "no READY=1 on NOTIFY_SOCKET; stdout: {:?}",
        first.lines
    );
    let text = first.lines.join("\n");
    assert!(text.contains("web-ui: HTTPS on 127.0.0.1:"), "{text}");
    let fingerprint = first
        .lines
        .iter()
        .find_map(|l| l.split("fingerprint ").nth(1))
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 95);
    let code = first
        .lines
        .iter()
        .find_map(|l| l.split("owner setup code (one use): ").nth(1))
        .expect("a setup code is printed while there is no owner")
        .to_owned();
    assert_eq!(code.len(), 24);
    stop(first);

    // Same state: the same self-signed certificate; a new code, since there is no owner yet.
    let second = start(&state, &notify);
    assert!(second.ready);
    let text = second.lines.join("\n");
    assert!(
        text.contains(&fingerprint),
        "the certificate changed across restarts"
    );
    let new_code = second
        .lines
        .iter()
        .find_map(|l| l.split("owner setup code (one use): ").nth(1))
        .unwrap();
    assert_ne!(new_code, code);
    stop(second);
}
