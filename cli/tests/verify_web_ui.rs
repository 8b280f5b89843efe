//! `cloister verify` against a running web-ui with the simulated TEE: it passes; it fails on
//! a wrong expected measurement, and on a relay that terminates TLS with its own key in
//! front of the real box (every byte of the box's answers passed on unchanged).
//!
//! Needs a web-ui binary built with the simulated TEE, named by `CLOISTER_WEB_UI_BIN`
//! (`cargo build -p cloister-web-ui --features simulated-tee`, then
//! `CLOISTER_WEB_UI_BIN=$CARGO_TARGET_DIR/debug/web-ui`): the cli crate does not build
//! web-ui itself. Without it the test says SKIPPED and passes, unless
//! `CLOISTER_REQUIRE_WEB_UI=1` turns that into a failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{cloister_verify, failed_checks, measurements, tls_identity};
use rustls::pki_types::ServerName;

struct WebUi {
    child: Child,
    port: u16,
}

impl Drop for WebUi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_web_ui(binary: &str, dir: &std::path::Path) -> WebUi {
    let expected = dir.join("measurements.json");
    std::fs::write(&expected, measurements().to_json()).unwrap();
    let mut child = Command::new(binary)
        .args([
            "--listen",
            "127.0.0.1",
            "--https-port",
            "0",
            "--no-http",
            "--tee",
            "simulated",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--expected-measurements")
        .arg(&expected)
        .arg("--supervisor-socket")
        .arg(dir.join("no-supervisor.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("web-ui exited before listening")
            .unwrap();
        if let Some(address) = line.strip_prefix("web-ui: HTTPS on ") {
            break address.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep reading so that web-ui never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    WebUi { child, port }
}

/// A TLS terminator with its own key in front of the box: decrypts, forwards each request to
/// the box over TLS, and passes the box's answers back unchanged. Returns its URL.
fn start_relay(box_port: u16) -> String {
    let server = tls_identity().server_config();
    // The relay accepts the box's certificate as any client would: the shared verifier.
    let client = Arc::new(cloister_protocol::tls::client_config(&[b"http/1.1"]).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (server, client) = (server.clone(), client.clone());
            std::thread::spawn(move || {
                let front =
                    rustls::StreamOwned::new(rustls::ServerConnection::new(server).unwrap(), tcp);
                let back_tcp = TcpStream::connect(("127.0.0.1", box_port)).unwrap();
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let back = rustls::StreamOwned::new(
                    rustls::ClientConnection::new(client, name).unwrap(),
                    back_tcp,
                );
                let _ = forward(front, back);
            });
        }
    });
    url
}

/// Forwards one request at a time (the client waits for each answer) with answers read by
/// their content-length.
fn forward(front: impl Read + Write, back: impl Read + Write) -> std::io::Result<()> {
    let mut front = BufReader::new(front);
    let mut back = BufReader::new(back);
    loop {
        let head = read_head(&mut front)?;
        if head.is_empty() {
            return Ok(());
        }
        back.get_mut().write_all(&head)?;
        back.get_mut().flush()?;
        let answer_head = read_head(&mut back)?;
        let text = String::from_utf8_lossy(&answer_head).to_ascii_lowercase();
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        back.read_exact(&mut body)?;
        front.get_mut().write_all(&answer_head)?;
        front.get_mut().write_all(&body)?;
        front.get_mut().flush()?;
    }
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 || head.ends_with(b"\r\n\r\n") {
            return Ok(head);
        }
    }
}

#[test]
fn cloister_verify_passes_against_web_ui_and_fails_on_a_relay_or_a_wrong_measurement() {
    let Ok(binary) = std::env::var("CLOISTER_WEB_UI_BIN") else {
        assert!(
            std::env::var("CLOISTER_REQUIRE_WEB_UI").as_deref() != Ok("1"),
            "CLOISTER_WEB_UI_BIN is not set"
        );
        eprintln!(
            "SKIPPED: set CLOISTER_WEB_UI_BIN to a web-ui built with --features simulated-tee"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let web_ui = start_web_ui(&binary, dir.path());
    let url = format!("https://127.0.0.1:{}", web_ui.port);
    let expected = dir.path().join("measurements.json");
    let expected = expected.to_str().unwrap();

    let out = cloister_verify(&[&url, "--expected", expected, "--accept-simulated"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("VERIFIED: every check passed"), "{stdout}");

    let mut wrong = measurements();
    wrong.rtmr1.as_mut().unwrap()[0] ^= 1;
    let wrong_path = dir.path().join("wrong.json");
    std::fs::write(&wrong_path, wrong.to_json()).unwrap();
    let out = cloister_verify(&[
        &url,
        "--expected",
        wrong_path.to_str().unwrap(),
        "--accept-simulated",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        failed_checks(&out),
        ["rtmr1"],
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let relay = start_relay(web_ui.port);
    let out = cloister_verify(&[&relay, "--expected", expected, "--accept-simulated"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert_eq!(failed_checks(&out), ["report_data"], "{stdout}");
    assert!(stdout.contains("another TLS key"), "{stdout}");
}
