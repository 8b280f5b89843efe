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
    start_with(|_| {}).await
}

/// [`start`], with `adjust` changing the settings first.
async fn start_with(
    adjust: impl FnOnce(&mut Settings),
) -> (cloister_web_ui::RunningServer, tempfile::TempDir) {
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
    adjust(&mut settings);
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

// ---- issue 14: what an outside attacker found ----------------------------------------

/// Raw HTTP/2 frames over TLS, for clients no library would be: trickled headers, a
/// look at the server's SETTINGS.
mod raw_h2 {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::client::TlsStream;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const CONTINUATION: u8 = 0x9;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len() as u32;
        let mut out = length.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub async fn connect(address: SocketAddr) -> TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(super::common::client_config(&[b"h2"]))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls
    }

    /// The preface and an empty SETTINGS frame.
    pub async fn start(stream: &mut TlsStream<tokio::net::TcpStream>) {
        stream.write_all(PREFACE).await.unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        stream.flush().await.unwrap();
    }

    /// The next frame: (type, flags, stream, payload); None at the end of the connection.
    pub async fn read_frame(
        stream: &mut TlsStream<tokio::net::TcpStream>,
    ) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.ok()?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await.ok()?;
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        Some((header[3], header[4], id, payload))
    }
}

/// Makes the owner and a session for it in the running server's database; returns the
/// session token.
fn signed_in(server: &cloister_web_ui::RunningServer) -> String {
    use cloister_web_ui::store::{StoredPasskey, User};
    let now = cloister_web_ui::clock::now_s();
    let owner = User {
        id: [9; 16],
        name: "Olivia".into(),
        is_owner: true,
        created_at_s: now,
        revoked: false,
    };
    let passkey = StoredPasskey {
        credential_id: vec![9; 32],
        user_id: owner.id,
        passkey_json: "{}".into(),
        label: "passkey 1".into(),
        created_at_s: now,
        last_used_at_s: 0,
    };
    let store = &server.state.store;
    assert!(
        store
            .create_owner_with_code(server.setup_code.as_deref().unwrap(), &owner, &passkey, now)
            .unwrap()
    );
    let token = "b".repeat(64);
    store
        .create_session(&token, &owner.id, now, now + 3600, now)
        .unwrap();
    token
}

/// Sends `head` and the first `sent` bytes of a body, then waits: the status of the answer
/// and how long it took, if one came within `wait`.
async fn answer_to_partial_upload(
    address: SocketAddr,
    head: &str,
    sent: usize,
    wait: Duration,
) -> Option<(u16, Duration)> {
    let mut stream = common::tls_connect(address, "localhost").await;
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; sent]).await.unwrap();
    stream.flush().await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < wait {
        match tokio::time::timeout(wait - started.elapsed(), stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buffer[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    return common::status_of(&answer).map(|s| (s, started.elapsed()));
                }
            }
            _ => break,
        }
    }
    None
}

fn upload_head(path: &str, length: usize, session: Option<&str>) -> String {
    let cookie = match session {
        Some(token) => format!("__Host-csrf={TOKEN}; __Host-session={token}"),
        None => format!("__Host-csrf={TOKEN}"),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nCookie: {cookie}\r\nX-CSRF-Token: {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_refused_before_they_are_read() {
    let (server, _state) = start().await;
    let https = server.https_address;
    // Without a session: 401 at once, with most of the body never sent.
    for (path, length) in [
        (
            "/api/history/0123456789abcdef0123456789abcdef",
            3 * 1024 * 1024,
        ),
        ("/api/chat", 1024 * 1024),
        ("/api/owner/collateral", 1024 * 1024),
        ("/api/passkeys/begin", 60 * 1024),
    ] {
        let answer = answer_to_partial_upload(
            https,
            &upload_head(path, length, None),
            1024,
            Duration::from_secs(1),
        )
        .await;
        assert!(
            matches!(answer, Some((401, _))),
            "{path} without a session: {answer:?}"
        );
    }
    let session = signed_in(&server);
    // With a session: a declared length over the route's limit gets 413 at once.
    for (path, length) in [
        (
            "/api/history/0123456789abcdef0123456789abcdef",
            3 * 1024 * 1024 + 1,
        ),
        ("/api/chat", 1024 * 1024 + 1025),
        ("/api/history/keys", 64 * 1024 + 1),
        ("/api/owner/invitations", 64 * 1024 + 1),
    ] {
        let answer = answer_to_partial_upload(
            https,
            &upload_head(path, length, Some(&session)),
            1024,
            Duration::from_secs(1),
        )
        .await;
        assert!(
            matches!(answer, Some((413, _))),
            "{path} oversized: {answer:?}"
        );
    }
    // Chunked, no length: 413 once the limit is crossed, not after the whole body.
    let mut stream = common::tls_connect(https, "localhost").await;
    let head = format!(
        "POST /api/history/keys HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nCookie: __Host-csrf={TOKEN}; __Host-session={session}\r\nX-CSRF-Token: {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..9 {
        stream.write_all(b"2000\r\n").await.unwrap();
        stream.write_all(&[b' '; 8192]).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(n) if n > 0 => answer.extend_from_slice(&buffer[..n]),
                _ => break,
            }
        }
    })
    .await;
    assert_eq!(
        common::status_of(&answer),
        Some(413),
        "chunked over the limit"
    );

    // HTTP/2: 401 at once to a stream whose body has barely started.
    use http_body_util::BodyExt;
    let tls = raw_h2::connect(https).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (body_sender, body) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<axum::body::Bytes>, std::convert::Infallible>,
    >(4);
    body_sender
        .send(Ok(hyper::body::Frame::data(axum::body::Bytes::from(
            vec![b' '; 1024],
        ))))
        .await
        .unwrap();
    let request =
        hyper::Request::post("https://localhost/api/history/0123456789abcdef0123456789abcdef")
            .header("content-type", "application/json")
            .header("content-length", (3 * 1024 * 1024).to_string())
            .header("cookie", format!("__Host-csrf={TOKEN}"))
            .header("x-csrf-token", TOKEN)
            .body(
                http_body_util::StreamBody::new(futures_util::stream::unfold(
                    body,
                    |mut body| async move { body.recv().await.map(|frame| (frame, body)) },
                ))
                .boxed(),
            )
            .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(1), sender.send_request(request))
        .await
        .expect("HTTP/2: no answer while the body is unsent")
        .unwrap();
    assert_eq!(response.status(), 401);
    drop(body_sender);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_memory_is_capped_across_connections() {
    // Room for one history upload at a time.
    let (server, _state) = start_with(|settings| {
        settings.limits.max_body_bytes_in_flight = 4 * 1024 * 1024;
    })
    .await;
    let https = server.https_address;
    let session = signed_in(&server);
    let path = "/api/history/0123456789abcdef0123456789abcdef";
    let length = 3 * 1024 * 1024;
    // The first upload stalls half-way, holding its reservation.
    let mut first = common::tls_connect(https, "localhost").await;
    first
        .write_all(upload_head(path, length, Some(&session)).as_bytes())
        .await
        .unwrap();
    first.write_all(&vec![b' '; 1024 * 1024]).await.unwrap();
    first.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.state.body_budget.available_permits() <= 1024 * 1024,
        "the stalled upload holds no reservation"
    );
    // The second (2 MiB) waits for room: no answer while the first holds it, one once the
    // idle limit (2 s) has closed the first.
    let upload = || async {
        let started = Instant::now();
        let mut stream = common::tls_connect(https, "localhost").await;
        let mut request = upload_head(path, 2 * 1024 * 1024, Some(&session)).into_bytes();
        request.extend_from_slice(&vec![b' '; 2 * 1024 * 1024]);
        let answer = common::exchange(&mut stream, &request, Duration::from_secs(8)).await;
        let status = common::status_of(&answer).expect("an upload never got an answer");
        assert_ne!(status, 503, "the budget stayed full");
        started.elapsed()
    };
    let waited = upload().await;
    drop(first);
    // The same upload with the budget free, for comparison.
    let alone = upload().await;
    println!("a 2 MiB upload took {waited:?} behind a stalled one, {alone:?} alone");
    assert!(
        waited >= alone + Duration::from_millis(1000),
        "the second upload did not wait for room ({waited:?} behind a stalled one, {alone:?} alone)"
    );
    server.stop().await;
}

/// The `web-ui` binary, started on 127.0.0.1 with a fresh state folder; stderr (the logs)
/// to `log`.
struct Binary {
    child: std::process::Child,
    address: SocketAddr,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    fn start(root: &std::path::Path, log: &std::path::Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let state_dir = root.join("state");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_web-ui"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--listen", "127.0.0.1", "--https-port", "0", "--no-http"])
            .arg("--supervisor-socket")
            .arg(root.join("none.sock"))
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut address = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("web-ui: HTTPS on ") {
                address = Some(rest.trim().parse().unwrap());
            }
            if line.starts_with("web-ui: open https://") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            address: address.unwrap(),
        }
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// The bound stated in docs/web-ui.md: what 16 unauthenticated 3 MiB uploads over
/// HTTP/1.1, and 8 over one HTTP/2 connection, may add to web-ui's peak memory.
const UNAUTHENTICATED_UPLOAD_BOUND_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_uploads_leave_memory_flat() {
    let root = tempfile::tempdir().unwrap();
    let binary = Binary::start(root.path(), &root.path().join("log"), &[]);
    let address = binary.address;
    // Warm up: a page and a refused upload, so that buffers a first request allocates
    // are not counted.
    send(
        address,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let path = "/api/history/0123456789abcdef0123456789abcdef";
    let _ = answer_to_partial_upload(
        address,
        &upload_head(path, 3 * 1024 * 1024, None),
        1024,
        Duration::from_secs(2),
    )
    .await;
    let before = binary.memory_kib("VmHWM");
    let body = Arc::new(vec![b' '; 3 * 1024 * 1024]);
    let mut uploads = Vec::new();
    for _ in 0..16 {
        let body = body.clone();
        uploads.push(tokio::spawn(async move {
            let mut stream = common::tls_connect(address, "localhost").await;
            let mut request = upload_head(path, body.len(), None).into_bytes();
            request.extend_from_slice(&body);
            let answer = common::exchange(&mut stream, &request, Duration::from_secs(10)).await;
            common::status_of(&answer)
        }));
    }
    // And one HTTP/2 connection with 8 streams.
    let tls = raw_h2::connect(address).await;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut sender = sender.clone();
        let body = axum::body::Bytes::from(body.to_vec());
        streams.push(tokio::spawn(async move {
            let request = hyper::Request::post(format!("https://localhost{path}"))
                .header("content-type", "application/json")
                .header("cookie", format!("__Host-csrf={TOKEN}"))
                .header("x-csrf-token", TOKEN)
                .body(http_body_util::Full::new(body))
                .unwrap();
            match tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await
            {
                Ok(Ok(response)) => Some(response.status().as_u16()),
                _ => None,
            }
        }));
    }
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), Some(401));
    }
    for stream in streams {
        assert_eq!(stream.await.unwrap(), Some(401));
    }
    let after = binary.memory_kib("VmHWM");
    println!("web-ui peak memory: {before} KiB before, {after} KiB after the uploads");
    assert!(
        after.saturating_sub(before) < UNAUTHENTICATED_UPLOAD_BOUND_KIB,
        "the uploads grew web-ui's peak memory by {} KiB (bound {UNAUTHENTICATED_UPLOAD_BOUND_KIB} KiB)",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_are_logged_as_one_line_per_interval() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("log");
    let mut binary = Binary::start(root.path(), &log, &["--log-summary-interval-s", "1"]);
    let mut refused = 0;
    for _ in 0..60 {
        let answer = send(
            binary.address,
            &post("/api/signin/begin", &csrf_headers(), b"{}"),
        )
        .await;
        if common::status_of(&answer) == Some(429) {
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} attempts were refused");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    binary.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("sign-in attempts rate-limited"))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 3,
        "{} log lines for {refused} refusals:\n{text}",
        lines.len()
    );
    let counted: u64 = lines
        .iter()
        .filter_map(|line| {
            let rest = line.split("rate-limited: ").nth(1)?;
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(
        counted, refused,
        "the summaries count every refusal:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_http2_client_is_closed_at_the_idle_limit() {
    use http_body_util::Empty;
    let (server, _state) = start().await;
    let tls = raw_h2::connect(server.https_address).await;
    // No window for any answer, and a PING every 300 ms, answered.
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(0)
            .keep_alive_interval(Duration::from_millis(300))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("https://localhost/")
        .body(Empty::<axum::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), connection).await;
    assert!(
        ended.is_ok(),
        "a zero-window client kept its connection {:?} past the 2 s idle limit",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
    drop(response);
    server.stop().await;
}

/// Opens an HTTP/2 connection, sends `first`, then each of `then` every `every`: how long
/// until the server closed the connection, if it did within `limit`.
async fn trickle_h2(
    address: SocketAddr,
    first: Vec<u8>,
    then: Vec<Vec<u8>>,
    every: Duration,
    limit: Duration,
) -> Option<Duration> {
    let mut stream = raw_h2::connect(address).await;
    raw_h2::start(&mut stream).await;
    stream.write_all(&first).await.unwrap();
    stream.flush().await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let closed = tokio::spawn(async move {
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    });
    let writer = tokio::spawn(async move {
        for piece in then {
            tokio::time::sleep(every).await;
            if writer.write_all(&piece).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    });
    let closed_at = tokio::time::timeout(limit, closed).await;
    writer.abort();
    closed_at.ok().map(|at| at.unwrap() - started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_http2_headers_are_cut_at_the_header_deadline() {
    // Header deadline 1 s; idle time 10 s, so only the header deadline can act.
    let (server, _state) = start_with(|settings| {
        settings.limits.idle_timeout = Duration::from_secs(10);
    })
    .await;
    // A HEADERS frame (END_STREAM | END_HEADERS) of 24 bytes, its payload trickled a byte
    // every 300 ms: every byte moves, but the header block stays open.
    let frame = raw_h2::frame(raw_h2::HEADERS, 0x1 | 0x4, 1, &[0x82; 24]);
    let (head, payload) = frame.split_at(9);
    let took = trickle_h2(
        server.https_address,
        head.to_vec(),
        payload.iter().map(|b| vec![*b]).collect(),
        Duration::from_millis(300),
        Duration::from_secs(6),
    )
    .await;
    println!("a trickled HEADERS frame: closed after {took:?}");
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(2500)),
        "a trickled HEADERS frame was waited on for {took:?} (header deadline 1 s)"
    );
    // A header block trickled as CONTINUATION frames, one every 400 ms.
    let took = trickle_h2(
        server.https_address,
        raw_h2::frame(raw_h2::HEADERS, 0x1, 3, &[0x82]),
        (0..12)
            .map(|_| raw_h2::frame(raw_h2::CONTINUATION, 0, 3, &[0x84]))
            .collect(),
        Duration::from_millis(400),
        Duration::from_secs(6),
    )
    .await;
    println!("CONTINUATION frames: closed after {took:?}");
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(2500)),
        "trickled CONTINUATION frames were waited on for {took:?} (header deadline 1 s)"
    );
    // The server is fine afterwards.
    let answer = send(
        server.https_address,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(200));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_and_connections_per_address_are_capped() {
    let (server, _state) = start_with(|settings| {
        settings.limits.max_connections_per_address = 3;
    })
    .await;
    // The server's SETTINGS announce the stream cap.
    let mut first = raw_h2::connect(server.https_address).await;
    raw_h2::start(&mut first).await;
    let (kind, _, _, payload) = raw_h2::read_frame(&mut first).await.unwrap();
    assert_eq!(kind, raw_h2::SETTINGS);
    let streams = payload.chunks(6).find_map(|setting| {
        (u16::from_be_bytes([setting[0], setting[1]]) == 0x3)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    });
    assert_eq!(
        streams,
        Some(cloister_web_ui::server::ConnectionLimits::default().max_streams_per_connection)
    );
    assert!(streams.unwrap() <= 32);
    // Three connections from 127.0.0.1 are served; a fourth is closed at once.
    let second = common::tls_connect(server.https_address, "localhost").await;
    let third = common::tls_connect(server.https_address, "localhost").await;
    let mut fourth = tokio::net::TcpStream::connect(server.https_address)
        .await
        .unwrap();
    let closed = time_to_close(&mut fourth, Duration::from_secs(1)).await;
    assert!(
        closed.is_some(),
        "a fourth connection from one address was kept"
    );
    // One closes: a new one is served again.
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = send(
        server.https_address,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(200));
    drop((first, third));
    server.stop().await;
}

/// The security headers every answer must carry.
fn assert_security_headers(answer: &[u8], what: &str) {
    let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    for needed in [
        "\r\ncontent-security-policy: default-src 'none'",
        "\r\nx-frame-options: deny",
        "\r\nx-content-type-options: nosniff",
    ] {
        assert!(head.contains(needed), "{what}: no {needed:?} in\n{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_library_s_own_errors_carry_the_security_headers() {
    let (server, _state) = start().await;
    let https = server.https_address;
    // A head over hyper's buffer: hyper's own 431.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = send(https, huge.as_bytes()).await;
    assert_eq!(common::status_of(&answer), Some(431));
    assert_security_headers(&answer, "hyper's 431");
    // A header line without a colon: hyper's own 400.
    let answer = send(
        https,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nNo colon here\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(400));
    assert_security_headers(&answer, "hyper's 400");
    // A bad method: 400 again.
    let answer = send(https, b"G(T / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(common::status_of(&answer), Some(400));
    assert_security_headers(&answer, "hyper's 400 for a bad method");
    // The plain HTTP redirect too.
    let mut plain = tokio::net::TcpStream::connect(server.http_address.unwrap())
        .await
        .unwrap();
    let answer = common::exchange(
        &mut plain,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(308));
    assert_security_headers(&answer, "the plain HTTP redirect");
    // HTTP/2: a header list over the limit is answered by the router, with the headers.
    use http_body_util::Empty;
    let tls = raw_h2::connect(https).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("https://localhost/")
        .header("x-filler", "a".repeat(20 * 1024))
        .body(Empty::<axum::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 431);
    for name in [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
    ] {
        assert!(
            response.headers().contains_key(name),
            "HTTP/2 431 without {name}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_flood_locks_nobody_out_after_it_ends() {
    let (server, _state) = start().await;
    let https = server.https_address;
    // The flood, over one kept-alive HTTP/1.1 connection and over HTTP/2.
    let mut stream = common::tls_connect(https, "localhost").await;
    let mut refused = 0;
    for _ in 0..40 {
        let request = format!(
            "POST /api/signin/begin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n{}\r\n{{}}",
            csrf_headers()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 8192];
        // One answer: its head, then its body by Content-Length.
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0);
            answer.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if answer.len() >= end + 4 + length {
                    break;
                }
            }
        }
        if common::status_of(&answer) == Some(429) {
            refused += 1;
        }
    }
    assert!(
        refused >= 15,
        "the flood was not limited ({refused} refused)"
    );
    let tls = raw_h2::connect(https).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut last = 0;
    for _ in 0..10 {
        let request = hyper::Request::post("https://localhost/api/signin/begin")
            .header("content-type", "application/json")
            .header("cookie", format!("__Host-csrf={TOKEN}"))
            .header("x-csrf-token", TOKEN)
            .body(http_body_util::Full::new(axum::body::Bytes::from_static(
                b"{}",
            )))
            .unwrap();
        last = sender
            .send_request(request)
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 429, "the HTTP/2 flood was not limited");
    // The flood ends; another user at the same address can begin a sign-in within seconds.
    let ended = Instant::now();
    let mut status = None;
    while ended.elapsed() < Duration::from_secs(5) {
        let answer = send(https, &post("/api/signin/begin", &csrf_headers(), b"{}")).await;
        status = common::status_of(&answer);
        if status == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, Some(200), "still locked out 5 s after the flood");
    assert!(
        ended.elapsed() < Duration::from_secs(2),
        "locked out for {:?} after the flood",
        ended.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_are_limited_per_credential_too() {
    let (server, _state) = start().await;
    let finish = |credential: &str| {
        let body = format!(
            "{{\"ceremony\":\"00000000000000000000000000000000\",\"credential\":{{\"id\":\"{credential}\",\"rawId\":\"{credential}\",\"type\":\"public-key\",\"response\":{{}}}}}}"
        );
        post("/api/signin/finish", &csrf_headers(), body.as_bytes())
    };
    let mut statuses = Vec::new();
    for _ in 0..(cloister_web_ui::auth::CREDENTIAL_BURST + 2) {
        let answer = send(server.https_address, &finish("AAAAAAAAAAAAAAAAAAAAAA")).await;
        statuses.push(common::status_of(&answer).unwrap());
    }
    let burst = cloister_web_ui::auth::CREDENTIAL_BURST as usize;
    assert!(statuses[..burst].iter().all(|s| *s != 429), "{statuses:?}");
    assert!(statuses[burst..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another credential, from the same address, is not refused.
    let answer = send(server.https_address, &finish("BBBBBBBBBBBBBBBBBBBBBB")).await;
    assert_ne!(common::status_of(&answer), Some(429));
    server.stop().await;
}

/// The content type of a sealed chat request, as docs/protocol.md section 4.1 gives it.
fn documented_sealed_type() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    let section = doc
        .split("### 4.1 Request: `POST /api/chat`")
        .nth(1)
        .expect("docs/protocol.md has section 4.1");
    let after = section
        .split("`Content-Type: ")
        .nth(1)
        .expect("section 4.1 names the content type");
    after.split('`').next().unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_request_built_from_the_protocol_document_is_accepted() {
    let documented = documented_sealed_type();
    // The browser and the box say the same.
    assert_eq!(documented, cloister_web_ui::chat::SEALED_REQUEST_TYPE);
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat.js")).unwrap();
    assert!(script.contains(&format!("\"content-type\": \"{documented}\"")));

    let (server, _state) = start().await;
    let session = signed_in(&server);
    // Section 4.1's framing: key id, the suite (0x0020, 0x0001, 0x0002), enc, then the
    // sealed request; this one is sealed to nobody, so it must fail to open, after the
    // box has accepted its type and framing.
    let mut body = vec![0u8, 0x00, 0x20, 0x00, 0x01, 0x00, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[9u8; 64]);
    let headers = |content_type: &str| {
        format!(
            "Content-Type: {content_type}\r\nCookie: __Host-csrf={TOKEN}; __Host-session={session}\r\nX-CSRF-Token: {TOKEN}\r\n"
        )
    };
    let answer = send(
        server.https_address,
        &post("/api/chat", &headers(&documented), &body),
    )
    .await;
    // Past the type, the CSRF check and the session: the box refuses it for its own
    // reasons (it does not open; this test box has no TEE, so it does not chat at all).
    let status = common::status_of(&answer).unwrap();
    assert!(
        !matches!(status, 401 | 403 | 413 | 415),
        "the documented type got {status}"
    );
    // Without a session: 401, not 415.
    let answer = send(
        server.https_address,
        &post(
            "/api/chat",
            &format!(
                "Content-Type: {documented}\r\nCookie: __Host-csrf={TOKEN}\r\nX-CSRF-Token: {TOKEN}\r\n"
            ),
            &body,
        ),
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(401));
    // Any other type is refused.
    let answer = send(
        server.https_address,
        &post("/api/chat", &headers("application/octet-stream"), &body),
    )
    .await;
    assert_eq!(common::status_of(&answer), Some(415));
    server.stop().await;
}
