//! Helpers shared by web-ui's integration tests: a TLS client with the shared
//! attestation-bound verifier (the tests check the certificate themselves), raw HTTP over it, a stand-in for the
//! supervisor's control socket that answers `list` and `logs`, and the browser tests'
//! start-up ([`browser`]).

#![allow(dead_code)]

pub mod browser;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A TLS client config as every Cloister client has: any certificate, its handshake
/// signature checked (`cloister_protocol::tls`), offering `alpn`. The tests check the
/// certificate themselves.
pub fn client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_config_with_versions(alpn, rustls::DEFAULT_VERSIONS)
}

/// Like [`client_config`], limited to `versions`.
pub fn client_config_with_versions(
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    Arc::new(cloister_protocol::tls::client_config_with_versions(alpn, versions).unwrap())
}

/// Connects with TLS to `address`, naming `sni`.
pub async fn tls_connect(address: SocketAddr, sni: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&[b"http/1.1"]));
    connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

/// The leaf certificate the server presents for `sni`.
pub async fn served_leaf(address: SocketAddr, sni: &str) -> Vec<u8> {
    let stream = tls_connect(address, sni).await;
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Sends raw bytes, then reads until the server closes or `wait` passes; returns what came.
pub async fn exchange<S>(stream: &mut S, request: &[u8], wait: Duration) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Write and read at once: a server may answer (413, 431) and close before it has read
    // everything, and a write error then must not hide its answer.
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        let _ = writer.write_all(request).await;
        let _ = writer.flush().await;
        std::future::pending::<()>().await
    };
    let mut answer = Vec::new();
    let read = async {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(wait, async {
        tokio::select! {
            () = read => {}
            () = write => {}
        }
    })
    .await;
    answer
}

/// The status code of an HTTP/1.1 answer, if it is one.
pub fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Serves Prometheus text at `http://127.0.0.1:PORT/metrics`, as model-runner does; returns
/// the URL.
pub async fn spawn_metrics_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = [0u8; 2048];
                let _ = stream.read(&mut buffer).await;
                let body = "# TYPE cloister_queue_depth gauge\ncloister_queue_depth 2\n# TYPE cloister_kv_blocks_used gauge\ncloister_kv_blocks_used{model=\"SmolLM2-135M\"} 37\n";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/metrics")
}

/// Answers the supervisor's control protocol (`list`, `logs`) on `path`, forever.
pub fn spawn_supervisor_socket(path: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let request: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let answer = match request["cmd"].as_str() {
                    Some("list") => serde_json::json!({"ok": true, "services": [
                        {"name": "model-runner", "state": "running", "pid": 41, "restarts": 0},
                        {"name": "web-ui", "state": "running", "pid": 42, "restarts": 1},
                    ]}),
                    Some("logs") => serde_json::json!({"ok": true, "lines": [
                        {"at_ms": 1, "stream": "stderr", "text": "listening on 127.0.0.1:8081"},
                    ]}),
                    _ => serde_json::json!({"ok": false, "error": "unknown command"}),
                };
                let mut bytes = serde_json::to_vec(&answer).unwrap();
                bytes.push(b'\n');
                let _ = write.write_all(&bytes).await;
            })
            .await
            .ok();
        }
    })
}
