//! web-ui's log lines are plain text when stderr is not a terminal, as under the supervisor,
//! whose logs go to the serial console: no ANSI escape (ESC, 0x1b) in them.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn logs_to_a_pipe_carry_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_web-ui"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1", "--https-port", "0", "--no-http"])
        .arg("--supervisor-socket")
        .arg(dir.path().join("none.sock"))
        // Debug level: many lines, each with a level and a target, which a terminal would
        // get coloured and dimmed.
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let collector = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    // The banner ends with the setup URL once web-ui listens.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 || line.contains("open https://") {
            break;
        }
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "web-ui did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = collector.join().unwrap();
    let text = String::from_utf8_lossy(&logs);
    assert!(
        text.lines().any(|l| ["WARN", "INFO", "DEBUG"]
            .iter()
            .any(|level| l.contains(level))),
        "web-ui logged no line with a level: {text}"
    );
    assert!(
        !logs.contains(&0x1b),
        "an escape code in web-ui's logs to a pipe: {:?}",
        &text[..text.len().min(400)]
    );
}
