//! Malformed and hostile HTTP against a running server: oversized headers and bodies,
//! slow clients at each stage, bad UTF-8, forged CSRF, secrets in bodies. Each must answer
//! 4xx or be cut off, never panic, and the server must keep answering afterwards.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloister_web_ui::config::Settings;
use cloister_web_ui::server::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn start() -> (cloister_web_ui::RunningServer, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(state.path().join("state"));
    settings.listen_address = [127, 0, 0, 1].into();
    settings.https_port = 0;
    settings.http_port = Some(0);
    settings.supervisor_socket = state.path().join("none.sock");
    settings.limits = ConnectionLimits {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..ConnectionLimits::default()
    };
    (cloister_web_ui::start(settings).await.unwrap(), state)
}

async fn send(address: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = common::tls_connect(address, "localhost").await;
    common::exchange(&mut stream, request, Duration::from_secs(5)).await
}

fn post(path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn csrf_headers() -> String {
    format!(
        "Content-Type: application/json\r\nCookie: __Host-csrf={TOKEN}\r\nX-CSRF-Token: {TOKEN}\r\n"
    )
}

/// How long until the server closes a connection we leave in some state.
async fn time_to_close<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut sink)).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_or_are_cut_off_and_nothing_panics() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let (server, _state) = start().await;
    let https = server.https_address;

    // Oversized header: 431 (or the connection cut).
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = send(https, huge.as_bytes()).await;
    let status = common::status_of(&answer);
    assert!(
        status.is_none() || status == Some(431),
        "oversized header: {status:?}"
    );

    // Oversized body, declared: 413 before reading it.
    let answer = send(
        https,
        &post("/api/setup/begin", &csrf_headers(), &vec![b'x'; 200 * 1024]),
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(413));
    // Oversized body, chunked with no length: 413 once the limit is crossed.
    let mut chunked = format!(
        "POST /api/setup/begin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n{}\r\n",
        csrf_headers()
    )
    .into_bytes();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend_from_slice(&[b' '; 8192]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = send(https, &chunked).await;
    assert_eq!(common::status_of(&answer), Some(413));

    // Bad UTF-8 in a JSON body: 400, with our own words.
    let answer = send(
        https,
        &post(
            "/api/setup/begin",
            &csrf_headers(),
            b"{\"code\":\"\xff\xfe\",\"name\":\"x\"}",
        ),
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(400));
    // Bad UTF-8 in a header and in the path: still an answer, no panic.
    let mut weird = b"GET /%FF%FE/\xc3\x28 HTTP/1.1\r\nHost: localhost\r\nCookie: __Host-session=\xff\xfe\r\nConnection: close\r\n\r\n".to_vec();
    weird.extend_from_slice(b"");
    let answer = send(https, &weird).await;
    let status = common::status_of(&answer);
    assert!(
        status.is_none() || (400..500).contains(&status.unwrap()),
        "bad UTF-8 path: {status:?}"
    );

    // A wrong secret is never echoed back.
    let secret = "WRONG-SETUP-CODE-7Q2X";
    let body = format!("{{\"code\":\"{secret}\",\"name\":\"Mallory\"}}");
    let answer = send(
        https,
        &post("/api/setup/begin", &csrf_headers(), body.as_bytes()),
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(401));
    assert!(!String::from_utf8_lossy(&answer).contains(secret));
    let body = format!("{{\"code\": 7, \"name\":\"{secret}\"}}");
    let answer = send(
        https,
        &post("/api/setup/begin", &csrf_headers(), body.as_bytes()),
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(400));
    assert!(!String::from_utf8_lossy(&answer).contains(secret));

    // Forged CSRF: no token, a wrong token, a foreign origin, a form body, another method.
    let forged = [
        post("/api/signout", "Content-Type: application/json\r\n", b"{}"),
        post(
            "/api/signout",
            &format!(
                "Content-Type: application/json\r\nCookie: __Host-csrf={TOKEN}\r\nX-CSRF-Token: ffffffffffffffffffffffffffffffff\r\n"
            ),
            b"{}",
        ),
        post(
            "/api/signout",
            &format!("{}Origin: https://evil.example\r\n", csrf_headers()),
            b"{}",
        ),
        post(
            "/api/signout",
            &format!("{}Sec-Fetch-Site: cross-site\r\n", csrf_headers()),
            b"{}",
        ),
        post(
            "/api/signout",
            &format!(
                "Content-Type: application/x-www-form-urlencoded\r\nCookie: __Host-csrf={TOKEN}\r\nX-CSRF-Token: {TOKEN}\r\n"
            ),
            b"a=b",
        ),
        format!(
            "DELETE /api/signout HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{}\r\n",
            csrf_headers()
        )
        .into_bytes(),
    ];
    for request in &forged {
        let status = common::status_of(&send(https, request).await);
        assert!(
            matches!(status, Some(403 | 405 | 415)),
            "forged request got {status:?}: {}",
            String::from_utf8_lossy(request).lines().next().unwrap()
        );
    }
    // The same request with a matching token passes.
    let answer = send(https, &post("/api/signout", &csrf_headers(), b"{}")).await;
    assert_eq!(common::status_of(&answer), Some(200));

    // Slow clients. A TCP connection that never starts TLS is dropped after the handshake
    // deadline.
    let mut silent = tokio::net::TcpStream::connect(https).await.unwrap();
    let closed = time_to_close(&mut silent, Duration::from_secs(6)).await;
    assert!(closed.is_some(), "a silent TLS client is never cut off");
    // Headers trickled a byte at a time are cut off by the header deadline.
    let mut trickle = common::tls_connect(https, "localhost").await;
    trickle
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut cut_off = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if trickle.write_all(b"X").await.is_err() || trickle.flush().await.is_err() {
            cut_off = true;
            break;
        }
        let mut probe = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut probe)).await
        {
            let _ = n;
            cut_off = true;
            break;
        }
    }
    assert!(
        cut_off,
        "a slowloris header was still accepted after {:?}",
        started.elapsed()
    );
    // A body that stops half-way is cut off by the idle deadline.
    let mut stalled = common::tls_connect(https, "localhost").await;
    stalled
        .write_all(format!("POST /api/setup/begin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n{}\r\n{{\"co", csrf_headers()).as_bytes())
        .await
        .unwrap();
    let closed = time_to_close(&mut stalled, Duration::from_secs(8)).await;
    assert!(closed.is_some(), "a stalled body is never cut off");
    // Plain HTTP: a silent client is cut off by the header deadline too.
    let mut silent_plain = tokio::net::TcpStream::connect(server.http_address.unwrap())
        .await
        .unwrap();
    silent_plain.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert!(
        time_to_close(&mut silent_plain, Duration::from_secs(6))
            .await
            .is_some()
    );

    // The server still answers, and nothing panicked.
    let answer = send(
        https,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(200));
    assert_eq!(panics.load(Ordering::SeqCst), 0, "something panicked");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_and_the_plain_http_redirect() {
    let (server, _state) = start().await;
    let answer = send(
        server.https_address,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(text.contains("frame-ancestors 'none'"));
    assert!(text.contains("referrer-policy: no-referrer"));
    assert!(text.contains("set-cookie: __host-csrf="));
    // Self-signed: no HSTS, or a browser would lock users out when they move to a real one.
    assert!(!text.contains("strict-transport-security"));
    // Plain HTTP only redirects.
    let mut plain = tokio::net::TcpStream::connect(server.http_address.unwrap())
        .await
        .unwrap();
    let answer = common::exchange(&mut plain, b"POST /api/signout?x=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(common::status_of(&answer), Some(308));
    assert!(text.contains(&format!(
        "location: https://localhost:{}/api/signout?x=1",
        server.https_address.port()
    )));
    // TLS 1.2 with a modern suite works; HTTP/2 is offered.
    let config = common::client_config(&[b"h2", b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(server.https_address)
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tls12 = common::client_config_with_versions(&[b"http/1.1"], &[&rustls::version::TLS12]);
    let tcp = tokio::net::TcpStream::connect(server.https_address)
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls12)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_are_rate_limited_per_address() {
    let (server, _state) = start().await;
    let mut statuses = Vec::new();
    for _ in 0..(cloister_web_ui::auth::SIGN_IN_ATTEMPTS_PER_WINDOW + 5) {
        let answer = send(
            server.https_address,
            &post("/api/signin/begin", &csrf_headers(), b"{}"),
        )
        .await;
        statuses.push(common::status_of(&answer).unwrap());
    }
    let allowed = cloister_web_ui::auth::SIGN_IN_ATTEMPTS_PER_WINDOW as usize;
    assert!(
        statuses[..allowed].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert!(
        statuses[allowed..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_serves_pages_and_refuses_oversized_headers() {
    use http_body_util::{BodyExt, Empty};
    let (server, _state) = start().await;
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(server.https_address)
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(common::client_config(&[b"h2"]))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        sender
    };
    let mut sender = connect().await;
    let request = hyper::Request::get("https://localhost/healthz")
        .body(Empty::<axum::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert!(response.headers().contains_key("content-security-policy"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");

    // A header list far over the limit: refused (431 or a stream/connection error).
    let request = hyper::Request::get("https://localhost/")
        .header("x-filler", "a".repeat(64 * 1024))
        .body(Empty::<axum::body::Bytes>::new())
        .unwrap();
    if let Ok(response) = sender.send_request(request).await {
        assert_eq!(response.status(), 431);
    }
    // The server is fine afterwards, on a new connection.
    let mut sender = connect().await;
    let request = hyper::Request::get("https://localhost/healthz")
        .body(Empty::<axum::body::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    server.stop().await;
}
