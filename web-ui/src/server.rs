//! The listeners: HTTPS (rustls, HTTP/1.1 and HTTP/2 by ALPN) and plain HTTP, each
//! driving hyper connections with limits against slow and greedy clients.
//!
//! Limits: a TLS handshake deadline, a header read deadline, an idle deadline on the socket
//! (no byte moved either way), a maximum connection age, a header size cap and a cap on
//! concurrent connections. This module must never log request contents.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::tls::ACME_TLS_ALPN;

/// The address a request came from, put in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub SocketAddr);

/// Which listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The HTTPS listener.
    Https,
    /// The plain HTTP listener (redirects and HTTP-01 only).
    PlainHttp,
}

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request's headers.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves for this long is closed.
    pub idle_timeout: Duration,
    /// No connection lives longer than this.
    pub max_connection_age: Duration,
    /// Largest accepted request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(3600),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
        }
    }
}

fn connection_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(64)
        .max_send_buf_size(256 * 1024);
    builder
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    transport: Transport,
    router: Router,
    limits: ConnectionLimits,
    answering: Answering,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ClientAddress(peer));
        request.extensions_mut().insert(transport);
        let response = router.clone().oneshot(request);
        let answering = answering.clone();
        async move {
            let response = response.await?;
            // Counted from the answer's head until its last byte (or the answer is dropped);
            // not while the request is still being read, so a stalled upload stays idle.
            let answer = answering.begin();
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                axum::body::Body::new(CountedBody {
                    body,
                    _answer: answer,
                })
            }))
        }
    });
    let builder = connection_builder(&limits);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let age_limit = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(age_limit);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        }
        () = &mut age_limit => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection.as_mut()).await;
        }
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection.as_mut()).await;
        }
    }
}

/// Serves HTTPS on `listener` until `shutdown` turns true.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    accept_loop(listener, permits, shutdown.clone(), move |tcp, peer| {
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        async move {
            let answering = Answering::default();
            let idle = IdleTimeout::new(tcp, limits.idle_timeout, answering.clone());
            let handshake =
                tokio::time::timeout(limits.handshake_timeout, acceptor.accept(idle)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, error = %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                // TLS-ALPN-01: the validator only looks at the certificate.
                return;
            }
            serve_connection(
                stream,
                peer,
                Transport::Https,
                router,
                limits,
                answering,
                shutdown,
            )
            .await;
        }
    })
    .await;
}

/// Serves plain HTTP on `listener` until `shutdown` turns true.
pub async fn serve_plain_http(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    accept_loop(listener, permits, shutdown.clone(), move |tcp, peer| {
        let router = router.clone();
        let shutdown = shutdown.clone();
        async move {
            let answering = Answering::default();
            let idle = IdleTimeout::new(tcp, limits.idle_timeout, answering.clone());
            serve_connection(
                idle,
                peer,
                Transport::PlainHttp,
                router,
                limits,
                answering,
                shutdown,
            )
            .await;
        }
    })
    .await;
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let connection = handle(tcp, peer);
                tokio::spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How many answers of one connection are in progress: from the answer's head until its
/// body has ended or been dropped.
#[derive(Debug, Clone, Default)]
pub struct Answering(Arc<AtomicUsize>);

impl Answering {
    /// Counts one answer until the returned guard drops.
    pub fn begin(&self) -> AnswerInProgress {
        self.0.fetch_add(1, Ordering::AcqRel);
        AnswerInProgress(self.0.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// One answer in progress (see [`Answering`]).
#[derive(Debug)]
pub struct AnswerInProgress(Arc<AtomicUsize>);

impl Drop for AnswerInProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body, counted as in progress until it ends or is dropped.
struct CountedBody {
    body: axum::body::Body,
    _answer: AnswerInProgress,
}

impl axum::body::HttpBody for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that fails with `TimedOut` once no byte has moved in either direction for the
/// idle time. This is what closes a connection whose client went quiet mid-request. While
/// the server itself is still producing an answer (a model thinking for minutes before its
/// next words, see [`Answering`]), waiting to read is not idleness; a client that stops
/// reading what the server writes still is.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    answering: Answering,
}

impl<T> IdleTimeout<T> {
    /// Wraps `inner`; `answering` counts the connection's answers in progress.
    pub fn new(inner: T, idle: Duration, answering: Answering) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            answering,
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Whether the idle time is up. `reading`: the caller waits for the client's bytes,
    /// which is not idleness while an answer is in progress (the deadline moves on).
    fn check_deadline(&mut self, cx: &mut Context<'_>, reading: bool) -> Poll<io::Error> {
        loop {
            match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) if reading && self.answering.any() => self.progressed(),
                Poll::Ready(()) => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle for too long",
                    ));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.check_deadline(cx, true) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.check_deadline(cx, false) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.check_deadline(cx, false) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_quiet_peer_times_out_and_a_chatty_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_millis(200), Answering::default());
        let mut client = client;
        let writer = tokio::spawn(async move {
            for _ in 0..5 {
                client.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Then go quiet, keeping the pipe open.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(client);
        });
        let mut got = 0;
        let mut buf = [0u8; 8];
        let error = loop {
            match server.read(&mut buf).await {
                Ok(n) => got += n,
                Err(error) => break error,
            }
        };
        assert_eq!(got, 5);
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        writer.abort();
    }

    #[tokio::test]
    async fn waiting_for_the_client_is_not_idleness_while_an_answer_is_in_progress() {
        let (client, server) = tokio::io::duplex(64);
        let answering = Answering::default();
        let mut server = IdleTimeout::new(server, Duration::from_millis(100), answering.clone());
        let answer = answering.begin();
        let mut buf = [0u8; 8];
        // Five idle times pass without a byte, and the read is still waiting.
        let waited = tokio::time::timeout(Duration::from_millis(500), server.read(&mut buf)).await;
        assert!(waited.is_err(), "the read ended: {waited:?}");
        // The answer is done: the next idle time closes the connection.
        drop(answer);
        let started = Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        // A client that stops reading what the server writes is idle even mid-answer.
        let _answer = answering.begin();
        let big = vec![0u8; 1024];
        let error = loop {
            match server.write(&big).await {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
