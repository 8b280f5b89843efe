//! The one HTTP/1.1 client of Cloister: `cloister verify`, web-ui's owner console (model-runner's
//! metrics over its Unix socket) and the tests all call it, instead of each writing requests
//! and parsing answers by hand. It is hyper's client connection API over three transports:
//!
//! - plain TCP (`http://HOST:PORT`),
//! - TLS (`https://HOST:PORT`, feature `tls`) with `cloister_protocol::tls`'s
//!   attestation-bound verifier: any certificate, its handshake signature checked, and its key
//!   hash kept on the [`Connection`] for the attestation's binding,
//! - a Unix socket (`unix:/ABSOLUTE/PATH`).
//!
//! A [`Connection`] carries any number of requests in turn (keep-alive); every answer is read
//! whole, up to the caller's size limit, within the caller's timeout. The [`blocking`] module
//! wraps it for callers without an async runtime.
//!
//! It must never follow redirects, retry, or trust a certificate for any other reason than
//! the caller's own check of its key hash.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Plain HTTP over TCP.
    Tcp { host: String, port: u16 },
    /// HTTPS: TLS over TCP, the host also the TLS server name.
    #[cfg(feature = "tls")]
    Tls { host: String, port: u16 },
    /// Plain HTTP over a Unix socket.
    Unix(PathBuf),
}

impl Endpoint {
    /// The `Host` header for requests to it.
    fn authority(&self) -> String {
        let host_port = |host: &str, port: u16| {
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        };
        match self {
            Endpoint::Tcp { host, port } => host_port(host, *port),
            #[cfg(feature = "tls")]
            Endpoint::Tls { host, port } => host_port(host, *port),
            Endpoint::Unix(_) => "localhost".to_owned(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { .. } => write!(f, "http://{}", self.authority()),
            #[cfg(feature = "tls")]
            Endpoint::Tls { .. } => write!(f, "https://{}", self.authority()),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not http://HOST[:PORT][/PATH], https://HOST[:PORT][/PATH] or unix:/ABSOLUTE/PATH"
)]
pub struct UrlError(pub String);

/// A URL split into where to connect and the path to ask for (`/` for a Unix socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The path and query, starting with `/`.
    pub path: String,
}

impl FromStr for Url {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let bad = || UrlError(text.to_owned());
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad());
            }
            return Ok(Url {
                endpoint: Endpoint::Unix(path),
                path: "/".to_owned(),
            });
        }
        let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tls => 443,
            None => 80,
        };
        let host = host.to_owned();
        let endpoint = if tls {
            #[cfg(feature = "tls")]
            {
                Endpoint::Tls { host, port }
            }
            #[cfg(not(feature = "tls"))]
            return Err(bad());
        } else {
            Endpoint::Tcp { host, port }
        };
        Ok(Url { endpoint, path })
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No connection could be made.
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (a bad signature included: the server lacks its key).
    #[cfg(feature = "tls")]
    #[error("the TLS handshake with {endpoint} failed")]
    Handshake {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The host is not a name TLS can carry.
    #[cfg(feature = "tls")]
    #[error("{0:?} is not a TLS server name")]
    ServerName(String),
    /// The TLS configuration could not be made.
    #[cfg(feature = "tls")]
    #[error("the TLS configuration could not be made")]
    TlsConfig(#[source] rustls::Error),
    /// The server's certificate has no readable key.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Certificate(#[from] cloister_protocol::tls::CertificateError),
    /// The request could not be written as HTTP (a bad method, path or header).
    #[error("the request is not valid HTTP")]
    Request(#[source] hyper::http::Error),
    /// The exchange broke (the server closed, or did not speak HTTP/1.1).
    #[error("the HTTP exchange failed")]
    Exchange(#[source] hyper::Error),
    /// The answer's body is larger than the caller allows.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// No whole answer came in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The blocking wrapper could not start its runtime.
    #[error("cannot start the I/O runtime")]
    Runtime(#[source] std::io::Error),
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// Extra headers (`Host` and `Content-Length` are set by the client).
    pub headers: &'a [(&'a str, &'a str)],
    /// The body (empty for none).
    pub body: &'a [u8],
    /// Largest answer body accepted.
    pub body_max: usize,
}

impl<'a> Request<'a> {
    /// `GET path`, no body, answers up to `body_max` bytes.
    pub fn get(path: &'a str, body_max: usize) -> Self {
        Request {
            method: "GET",
            path,
            headers: &[],
            body: &[],
            body_max,
        }
    }
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name` (lower case).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Aborts the connection's driver task when dropped, which closes the socket.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One open HTTP/1.1 connection.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDrop,
    authority: String,
    tls_spki_sha256: Option<[u8; 32]>,
}

impl Connection {
    /// Connects (and, for HTTPS, completes the handshake) within `timeout`. Needs a tokio
    /// runtime with I/O and time enabled.
    pub async fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Self, HttpError> {
        tokio::time::timeout(timeout, Self::open_now(endpoint, None))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    /// Like [`Connection::open`], but connects to `address` whatever `endpoint`'s host
    /// resolves to; the host still names the server (TLS server name, `Host` header). For a
    /// box behind a forwarded port, reached by the name its certificate and passkeys use.
    pub async fn open_at(
        endpoint: &Endpoint,
        address: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<Self, HttpError> {
        tokio::time::timeout(timeout, Self::open_now(endpoint, Some(address)))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    async fn open_now(
        endpoint: &Endpoint,
        address: Option<std::net::SocketAddr>,
    ) -> Result<Self, HttpError> {
        let connect_error = |source| HttpError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let tcp = |host: &str, port: u16| {
            let host = host.to_owned();
            async move {
                match address {
                    Some(address) => tokio::net::TcpStream::connect(address).await,
                    None => tokio::net::TcpStream::connect((host.as_str(), port)).await,
                }
            }
        };
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let tcp = tcp(host, *port).await.map_err(connect_error)?;
                Self::over(tcp, endpoint, None).await
            }
            #[cfg(feature = "tls")]
            Endpoint::Tls { host, port } => {
                let tcp = tcp(host, *port).await.map_err(connect_error)?;
                let config = cloister_protocol::tls::client_config(&[b"http/1.1"])
                    .map_err(HttpError::TlsConfig)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| HttpError::ServerName(host.clone()))?;
                let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|source| HttpError::Handshake {
                        endpoint: endpoint.to_string(),
                        source,
                    })?;
                let spki = cloister_protocol::tls::peer_spki_sha256(tls.get_ref().1)?;
                Self::over(tls, endpoint, Some(spki)).await
            }
            Endpoint::Unix(path) => {
                let unix = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_error)?;
                Self::over(unix, endpoint, None).await
            }
        }
    }

    async fn over<S>(
        stream: S,
        endpoint: &Endpoint,
        tls_spki_sha256: Option<[u8; 32]>,
    ) -> Result<Self, HttpError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(HttpError::Exchange)?;
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        Ok(Connection {
            sender,
            _driver: driver,
            authority: endpoint.authority(),
            tls_spki_sha256,
        })
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo of the certificate the server presented (HTTPS
    /// only): the key that an attestation must bind.
    pub fn tls_spki_sha256(&self) -> Option<[u8; 32]> {
        self.tls_spki_sha256
    }

    /// Whether the server still keeps the connection open for another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends `request` and reads the whole answer within `timeout`.
    pub async fn send(
        &mut self,
        request: Request<'_>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(timeout, self.send_now(request))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    async fn send_now(&mut self, request: Request<'_>) -> Result<Response, HttpError> {
        let mut builder = hyper::Request::builder()
            .method(request.method)
            .uri(request.path)
            .header(hyper::header::HOST, &self.authority);
        for (name, value) in request.headers {
            builder = builder.header(*name, *value);
        }
        let outgoing = builder
            .body(Full::new(Bytes::copy_from_slice(request.body)))
            .map_err(HttpError::Request)?;
        self.sender.ready().await.map_err(HttpError::Exchange)?;
        let answer = self
            .sender
            .send_request(outgoing)
            .await
            .map_err(HttpError::Exchange)?;
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = read_capped(answer.into_body(), request.body_max).await?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Reads a body whole, refusing more than `limit` bytes.
async fn read_capped(mut body: Incoming, limit: usize) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(HttpError::Exchange)?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(HttpError::TooLarge { limit });
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// Opens a connection to `endpoint`, sends `request` and reads the answer, all within
/// `timeout`.
pub async fn request(
    endpoint: &Endpoint,
    request: Request<'_>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let exchange = async {
        let mut connection = Connection::open_now(endpoint, None).await?;
        connection.send_now(request).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

/// The same client for callers without an async runtime: each connection runs its own
/// single-threaded one.
pub mod blocking {
    use std::time::Duration;

    use super::{Endpoint, HttpError, Request, Response};

    fn runtime() -> Result<tokio::runtime::Runtime, HttpError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(HttpError::Runtime)
    }

    /// A blocking [`super::Connection`].
    #[derive(Debug)]
    pub struct Connection {
        // Declared first so that it drops first, while its runtime still exists.
        inner: super::Connection,
        runtime: tokio::runtime::Runtime,
    }

    impl Connection {
        /// See [`super::Connection::open`].
        pub fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Self, HttpError> {
            let runtime = runtime()?;
            let inner = runtime.block_on(super::Connection::open(endpoint, timeout))?;
            Ok(Connection { inner, runtime })
        }

        /// See [`super::Connection::open_at`].
        pub fn open_at(
            endpoint: &Endpoint,
            address: std::net::SocketAddr,
            timeout: Duration,
        ) -> Result<Self, HttpError> {
            let runtime = runtime()?;
            let inner = runtime.block_on(super::Connection::open_at(endpoint, address, timeout))?;
            Ok(Connection { inner, runtime })
        }

        /// See [`super::Connection::tls_spki_sha256`].
        pub fn tls_spki_sha256(&self) -> Option<[u8; 32]> {
            self.inner.tls_spki_sha256()
        }

        /// See [`super::Connection::is_open`].
        pub fn is_open(&self) -> bool {
            self.inner.is_open()
        }

        /// See [`super::Connection::send`].
        pub fn send(
            &mut self,
            request: Request<'_>,
            timeout: Duration,
        ) -> Result<Response, HttpError> {
            self.runtime.block_on(self.inner.send(request, timeout))
        }
    }

    /// See [`super::request`].
    pub fn request(
        endpoint: &Endpoint,
        request: Request<'_>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        runtime()?.block_on(super::request(endpoint, request, timeout))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn urls_name_the_transport_the_host_the_port_and_the_path() {
        let url = |text: &str| text.parse::<Url>();
        let tcp = |host: &str, port| Endpoint::Tcp {
            host: host.into(),
            port,
        };
        assert_eq!(
            url("http://127.0.0.1:9/metrics").unwrap(),
            Url {
                endpoint: tcp("127.0.0.1", 9),
                path: "/metrics".into()
            }
        );
        assert_eq!(url("http://box").unwrap().endpoint, tcp("box", 80));
        assert_eq!(url("http://box?x=1").unwrap().path, "/?x=1");
        assert_eq!(
            url("http://[::1]:8080/").unwrap().endpoint,
            tcp("::1", 8080)
        );
        assert_eq!(
            url("https://box.example:8443/a").unwrap().endpoint,
            Endpoint::Tls {
                host: "box.example".into(),
                port: 8443
            }
        );
        assert_eq!(
            url("https://box.example").unwrap().endpoint.to_string(),
            "https://box.example:443"
        );
        assert_eq!(
            url("unix:/run/m.sock").unwrap().endpoint,
            Endpoint::Unix("/run/m.sock".into())
        );
        for bad in [
            "unix:relative.sock",
            "ftp://box",
            "https://",
            "http://:80",
            "https://box:port",
            "https://user@box",
            "http://[::1",
            "http://[::1]x",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }

    /// Answers each request on a connection with `answer`, keeping it open.
    async fn serve<S>(mut stream: S, answer: &'static [u8])
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Cloister-Tee: SIMULATED\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";

    #[tokio::test]
    async fn tcp_answers_are_read_whole_and_the_connection_is_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream, CHUNKED).await;
            // A second connection would be accepted here: none may come.
            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                .await
                .is_err()
        });
        let endpoint = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        let mut connection = Connection::open(&endpoint, WAIT).await.unwrap();
        assert_eq!(connection.tls_spki_sha256(), None);
        for _ in 0..2 {
            let answer = connection.send(Request::get("/", 100), WAIT).await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, b"abcde");
            assert_eq!(answer.header("x-cloister-tee"), Some("SIMULATED"));
            assert!(connection.is_open());
        }
        let too_small = connection.send(Request::get("/", 4), WAIT).await;
        assert!(matches!(too_small, Err(HttpError::TooLarge { limit: 4 })));
        drop(connection);
        assert!(
            accepted.await.unwrap(),
            "the client opened a second connection"
        );
    }

    #[tokio::test]
    async fn a_unix_socket_carries_the_same_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(
                stream,
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\n\r\nloading",
            )
            .await;
        });
        let url: Url = format!("unix:{}", path.display()).parse().unwrap();
        let answer = request(&url.endpoint, Request::get("/metrics", 100), WAIT)
            .await
            .unwrap();
        assert_eq!((answer.status, answer.text().as_str()), (503, "loading"));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_and_a_closed_port_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        let silent = request(
            &endpoint,
            Request::get("/", 100),
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(silent, Err(HttpError::Timeout(_))), "{silent:?}");
        drop(listener);
        let closed = request(&endpoint, Request::get("/", 100), WAIT).await;
        assert!(
            matches!(closed, Err(HttpError::Connect { .. })),
            "{closed:?}"
        );
    }

    #[tokio::test]
    async fn https_keeps_the_key_hash_of_the_certificate_the_server_proved_it_holds() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["box.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            serve(tls, CHUNKED).await;
        });
        let endpoint = Endpoint::Tls {
            host: "127.0.0.1".into(),
            port,
        };
        let mut connection = Connection::open(&endpoint, WAIT).await.unwrap();
        assert_eq!(
            connection.tls_spki_sha256(),
            Some(cloister_protocol::tls::spki_sha256(certificate.der()).unwrap())
        );
        let answer = connection.send(Request::get("/", 100), WAIT).await.unwrap();
        assert_eq!(answer.body, b"abcde");
    }

    #[test]
    fn the_blocking_client_needs_no_runtime_of_the_caller() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = listener.accept().unwrap();
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil close");
        });
        let endpoint = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        let answer = blocking::request(
            &endpoint,
            Request {
                method: "POST",
                path: "/poweroff",
                headers: &[("x-test", "1")],
                body: b"{}",
                body_max: 100,
            },
            WAIT,
        )
        .unwrap();
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "until close")
        );
    }
}
