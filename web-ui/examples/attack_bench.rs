//! `GET /` latency while web-ui is attacked (issue 14): p50 and p95 against an idle server,
//! during each attack, and in the first second after it ends. The server runs in this
//! process on its own runtime (2 threads) with the default limits; the attackers run on
//! another and connect from 127.0.0.2 (so that the per-address cap counts them apart from
//! the prober at 127.0.0.1), except the sign-in flood, which shares the prober's address.
//!
//! `cargo run --release -p cloister-web-ui --example attack_bench`
//! (ATTACK_SECONDS in the environment, default 5). With `--features simulated-tee` it
//! floods `/attestation` too.

#[cfg(feature = "simulated-tee")]
#[path = "../tests/chat_common/mod.rs"]
mod chat_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_web_ui::config::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const ATTACKER: [u8; 4] = [127, 0, 0, 2];

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tcp_from(source: [u8; 4], server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(source), 0))?;
    socket.connect(server).await
}

async fn tls_from(source: [u8; 4], server: SocketAddr, alpn: &[&[u8]]) -> std::io::Result<Tls> {
    let tcp = tcp_from(source, server).await?;
    tokio_rustls::TlsConnector::from(common::client_config(alpn))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
}

/// Reads one HTTP/1.1 answer (head, then a Content-Length body); its status.
async fn read_answer(stream: &mut Tls) -> Option<u16> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return common::status_of(&answer);
            }
        }
    }
}

/// One `GET /` on a new connection, as a new visitor: its latency.
async fn probe(server: SocketAddr) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = tls_from([127, 0, 0, 1], server, &[b"http/1.1"])
        .await
        .ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let status = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut stream))
        .await
        .ok()??;
    (status == 200).then(|| started.elapsed())
}

/// Probes back to back for `length`: the latencies, and how many probes failed.
async fn probe_for(server: SocketAddr, length: Duration) -> (Vec<Duration>, usize) {
    let started = Instant::now();
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while started.elapsed() < length {
        match probe(server).await {
            Some(latency) => latencies.push(latency),
            None => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (latencies, failed)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn summary(mut latencies: Vec<Duration>) -> (f64, f64, usize) {
    latencies.sort();
    (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        latencies.len(),
    )
}

fn upload_head(length: usize) -> String {
    format!(
        "POST /api/history/0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nCookie: __Host-csrf={TOKEN}\r\nX-CSRF-Token: {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// 16 connections, each uploading 3 MiB without a session, over and over.
fn uploads(set: &mut JoinSet<()>, server: SocketAddr) {
    let body = Arc::new(vec![b' '; 3 * 1024 * 1024]);
    for _ in 0..16 {
        let body = body.clone();
        set.spawn(async move {
            loop {
                let Ok(mut stream) = tls_from(ATTACKER, server, &[b"http/1.1"]).await else {
                    continue;
                };
                let _ = stream.write_all(upload_head(body.len()).as_bytes()).await;
                for chunk in body.chunks(64 * 1024) {
                    if stream.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                let _ = read_answer(&mut stream).await;
            }
        });
    }
}

/// 100 HTTP/2 connections granting no window, pinging, each holding a `GET /`.
fn zero_window(set: &mut JoinSet<()>, server: SocketAddr) {
    for _ in 0..100 {
        set.spawn(async move {
            loop {
                let Ok(tls) = tls_from(ATTACKER, server, &[b"h2"]).await else {
                    continue;
                };
                let Ok((mut sender, connection)) =
                    hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .timer(hyper_util::rt::TokioTimer::new())
                        .initial_stream_window_size(0)
                        .keep_alive_interval(Duration::from_secs(1))
                        .keep_alive_while_idle(true)
                        .handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                else {
                    continue;
                };
                let connection = tokio::spawn(connection);
                let request = hyper::Request::get("https://localhost/")
                    .body(http_body_util::Empty::<axum::body::Bytes>::new())
                    .unwrap();
                let _response = sender.send_request(request).await;
                let _ = connection.await;
            }
        });
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// 100 HTTP/2 connections trickling a header block as CONTINUATION frames.
fn trickled_headers(set: &mut JoinSet<()>, server: SocketAddr) {
    for _ in 0..100 {
        set.spawn(async move {
            loop {
                let Ok(mut stream) = tls_from(ATTACKER, server, &[b"h2"]).await else {
                    continue;
                };
                let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                start.extend_from_slice(&frame(0x4, 0, 0, &[]));
                start.extend_from_slice(&frame(0x1, 0x1, 1, &[0x82]));
                if stream.write_all(&start).await.is_err() {
                    continue;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if stream.write_all(&frame(0x9, 0, 1, &[0x84])).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
}

/// 100 HTTP/1.1 connections sending their headers a byte every 500 ms.
fn slowloris(set: &mut JoinSet<()>, server: SocketAddr) {
    for _ in 0..100 {
        set.spawn(async move {
            loop {
                let Ok(mut stream) = tls_from(ATTACKER, server, &[b"http/1.1"]).await else {
                    continue;
                };
                if stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
                    .await
                    .is_err()
                {
                    continue;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if stream.write_all(b"X").await.is_err() {
                        break;
                    }
                }
            }
        });
    }
}

/// 4 kept-alive connections asking to begin a sign-in as fast as they are answered, from
/// the prober's own address.
fn sign_in_flood(set: &mut JoinSet<()>, server: SocketAddr) {
    for _ in 0..4 {
        set.spawn(async move {
            loop {
                let Ok(mut stream) = tls_from([127, 0, 0, 1], server, &[b"http/1.1"]).await
                else {
                    continue;
                };
                loop {
                    let request = format!(
                        "POST /api/signin/begin HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nCookie: __Host-csrf={TOKEN}\r\nX-CSRF-Token: {TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}"
                    );
                    if stream.write_all(request.as_bytes()).await.is_err()
                        || read_answer(&mut stream).await.is_none()
                    {
                        break;
                    }
                }
            }
        });
    }
}

/// 4 kept-alive connections asking for attestations with fresh nonces.
#[cfg(feature = "simulated-tee")]
fn attestation_flood(set: &mut JoinSet<()>, server: SocketAddr) {
    for task in 0..4u64 {
        set.spawn(async move {
            let mut n = 0u64;
            loop {
                let Ok(mut stream) = tls_from(ATTACKER, server, &[b"http/1.1"]).await else {
                    continue;
                };
                loop {
                    n += 1;
                    let nonce = format!("{:016x}{:016x}", task, n);
                    let request = format!(
                        "GET /attestation?nonce={nonce} HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    );
                    if stream.write_all(request.as_bytes()).await.is_err()
                        || read_answer(&mut stream).await.is_none()
                    {
                        break;
                    }
                }
            }
        });
    }
}

#[cfg(feature = "simulated-tee")]
fn simulated(settings: &mut Settings, root: &std::path::Path) {
    let measurements = root.join("measurements.json");
    std::fs::write(&measurements, chat_common::measurements_json("firmware")).unwrap();
    settings.chat.tee = cloister_web_ui::chat::TeeChoice::Simulated;
    settings.chat.expected_measurements = Some(measurements);
}

fn main() {
    let seconds: u64 = std::env::var("ATTACK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let attack_length = Duration::from_secs(seconds);
    let root = tempfile::tempdir().unwrap();
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut settings = Settings::new(root.path().join("state"));
    settings.listen_address = [127, 0, 0, 1].into();
    settings.https_port = 0;
    settings.http_port = None;
    settings.supervisor_socket = root.path().join("none.sock");
    #[cfg(feature = "simulated-tee")]
    simulated(&mut settings, root.path());
    let server = server_runtime
        .block_on(cloister_web_ui::start(settings))
        .unwrap();
    let address = server.https_address;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    type Attack = fn(&mut JoinSet<()>, SocketAddr);
    let mut attacks: Vec<(&str, Attack)> = vec![
        ("16 x 3 MiB unauthenticated uploads", uploads),
        ("100 HTTP/2 zero-window clients", zero_window),
        ("100 trickled HTTP/2 header blocks", trickled_headers),
        ("100 HTTP/1.1 slowloris", slowloris),
        ("sign-in flood, same address", sign_in_flood),
    ];
    #[cfg(feature = "simulated-tee")]
    attacks.push(("attestation flood, fresh nonces", attestation_flood));
    let _ = &mut attacks;

    println!(
        "GET / on a new TLS connection each, back to back; {seconds} s per attack; server: 2 threads"
    );
    println!(
        "{:<40} {:>8} {:>8} {:>6} {:>6} | {:>12} {:>12}",
        "", "p50 ms", "p95 ms", "n", "fail", "after p50 ms", "after p95 ms"
    );
    client_runtime.block_on(async {
        let (idle, failed) = probe_for(address, attack_length).await;
        let (p50, p95, n) = summary(idle);
        println!(
            "{:<40} {p50:>8.1} {p95:>8.1} {n:>6} {failed:>6} |",
            "idle"
        );
        let idle_p95 = p95;
        for (name, attack) in &attacks {
            let mut set = JoinSet::new();
            attack(&mut set, address);
            // Let the attack build up, then measure while it goes on.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (during, failed) = probe_for(address, attack_length).await;
            set.abort_all();
            while set.join_next().await.is_some() {}
            let (after, _) = probe_for(address, Duration::from_secs(1)).await;
            let (p50, p95, n) = summary(during);
            let (after_p50, after_p95, _) = summary(after);
            println!(
                "{name:<40} {p50:>8.1} {p95:>8.1} {n:>6} {failed:>6} | {after_p50:>12.1} {after_p95:>12.1}  (p95 {:.2}x idle during, {:.2}x after)",
                p95 / idle_p95,
                after_p95 / idle_p95
            );
            // Let connections the attack left behind go before the next.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    server_runtime.block_on(server.stop());
}
