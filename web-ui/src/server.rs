//! The listeners: HTTPS (rustls, HTTP/1.1 and HTTP/2 by ALPN) and plain HTTP, each
//! driving hyper connections with limits against slow and greedy clients.
//!
//! Limits: a TLS handshake deadline, a header read deadline (HTTP/1.1: hyper's; HTTP/2: a
//! header block left open, see [`FrameWatch`]), an idle deadline (no progress of any
//! request or answer, see [`Activity`]; a socket on which no byte moves is idle too), a
//! maximum connection age, a header size cap, HTTP/2 streams and windows per connection,
//! and caps on concurrent connections, all together and per client address.
//!
//! Answers that hyper writes itself (its bare 400, 414 and 431 to a request it cannot
//! parse) get the security headers too: [`FrameWatch`] adds them to any HTTP/1.1 answer
//! head that lacks them. This module must never log request contents.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

use crate::security::RepeatedEvent;
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
    /// Time allowed to receive a request's headers (HTTP/1.1 head, HTTP/2 header block).
    pub header_read_timeout: Duration,
    /// A connection on which nothing progresses for this long is closed (see [`Activity`]).
    pub idle_timeout: Duration,
    /// No connection lives longer than this.
    pub max_connection_age: Duration,
    /// Largest accepted request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Most connections served at once for one client address; more are closed at once.
    pub max_connections_per_address: usize,
    /// Most HTTP/2 streams open at once on one connection.
    pub max_streams_per_connection: u32,
    /// Request body bytes all requests together may hold; a request reserves its route's
    /// limit (or its smaller declared length) before its body is read.
    pub max_body_bytes_in_flight: usize,
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
            max_connections_per_address: 256,
            max_streams_per_connection: 32,
            max_body_bytes_in_flight: 24 * 1024 * 1024,
        }
    }
}

/// HTTP/2 flow-control windows: what one client can make the server buffer unread.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// The connection's window (all streams together).
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// HTTP/2 header lists up to this reach the router, which answers 431 itself (with the
/// security headers) above `max_header_bytes`; longer ones get the HTTP/2 library's 431.
const H2_HEADER_LIST_CEILING: u32 = 64 * 1024;

fn connection_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let header_list = u32::try_from(limits.max_header_bytes)
        .unwrap_or(u32::MAX)
        .max(H2_HEADER_LIST_CEILING);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(header_list)
        .max_concurrent_streams(limits.max_streams_per_connection.max(1))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(256 * 1024);
    builder
}

/// The security headers for answers the router never saw (hyper's own errors), as
/// HTTP/1.1 header lines.
#[derive(Debug, Clone)]
pub struct ErrorHeaders(Arc<[u8]>);

impl ErrorHeaders {
    /// The site's headers; `simulated` adds the simulation mark.
    pub fn new(simulated: bool) -> Self {
        let mut lines = format!(
            "content-security-policy: {}\r\nx-frame-options: DENY\r\nx-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\ncross-origin-opener-policy: same-origin\r\ncross-origin-resource-policy: same-origin\r\ncache-control: no-store\r\n",
            crate::security::CONTENT_SECURITY_POLICY
        );
        if simulated {
            lines.push_str(&format!(
                "{}: {}\r\n",
                crate::chat::TEE_HEADER,
                crate::chat::SIMULATED_MARK
            ));
        }
        Self(lines.into_bytes().into())
    }
}

/// Logged once per interval with their count, never once per event.
static IDLE_CLOSED: RepeatedEvent = RepeatedEvent::new("connections closed: no progress");
static HEADERS_TOO_SLOW: RepeatedEvent =
    RepeatedEvent::new("connections closed: HTTP/2 headers too slow");
static ADDRESS_FULL: RepeatedEvent =
    RepeatedEvent::new("connections refused: too many from one address");

#[allow(clippy::too_many_arguments)]
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    transport: Transport,
    router: Router,
    limits: ConnectionLimits,
    activity: Activity,
    error_headers: ErrorHeaders,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let activity = service_activity.clone();
        activity.progressed();
        // Busy (the server works) until the head is ready, except while the handler waits
        // for the client's body.
        let work = Arc::new(activity.begin());
        let mut request = request.map(|body| {
            axum::body::Body::new(TrackedRequestBody {
                body,
                work: work.clone(),
            })
        });
        request.extensions_mut().insert(ClientAddress(peer));
        request.extensions_mut().insert(transport);
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await?;
            activity.progressed();
            work.set_busy(false);
            Ok::<_, std::convert::Infallible>(
                response.map(|body| axum::body::Body::new(CountedBody { body, work })),
            )
        }
    });
    let builder = connection_builder(&limits);
    let io = FrameWatch::new(io, activity.clone(), error_headers);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let age_limit = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(age_limit);
    let stalled = watch_progress(&activity, &limits);
    tokio::pin!(stalled);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        }
        why = &mut stalled => {
            why.record();
            // Nothing moves: a GOAWAY if it can be written at once, then the socket closes.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_millis(200), connection.as_mut()).await;
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

/// Why a connection was closed for lack of progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stalled {
    /// An HTTP/2 header block stayed open past the header deadline.
    Headers,
    /// No request or answer progressed for the idle time.
    Idle,
}

impl Stalled {
    fn record(self) {
        match self {
            Self::Headers => HEADERS_TOO_SLOW.record(),
            Self::Idle => IDLE_CLOSED.record(),
        }
    }
}

/// Resolves when the connection has made no progress for a limit (see [`Activity`]).
async fn watch_progress(activity: &Activity, limits: &ConnectionLimits) -> Stalled {
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 8)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if activity
            .header_block_open_for()
            .is_some_and(|open| open >= limits.header_read_timeout)
        {
            return Stalled::Headers;
        }
        if !activity.busy() && activity.idle_for() >= limits.idle_timeout {
            return Stalled::Idle;
        }
    }
}

/// Serves HTTPS on `listener` until `shutdown` turns true.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ConnectionLimits,
    error_headers: ErrorHeaders,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(listener, limits, shutdown.clone(), move |tcp, peer| {
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let error_headers = error_headers.clone();
        async move {
            let activity = Activity::new();
            let idle = IdleTimeout::new(tcp, limits.idle_timeout, activity.clone());
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
            activity.progressed();
            serve_connection(
                stream,
                peer,
                Transport::Https,
                router,
                limits,
                activity,
                error_headers,
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
    error_headers: ErrorHeaders,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(listener, limits, shutdown.clone(), move |tcp, peer| {
        let router = router.clone();
        let shutdown = shutdown.clone();
        let error_headers = error_headers.clone();
        async move {
            let activity = Activity::new();
            let idle = IdleTimeout::new(tcp, limits.idle_timeout, activity.clone());
            serve_connection(
                idle,
                peer,
                Transport::PlainHttp,
                router,
                limits,
                activity,
                error_headers,
                shutdown,
            )
            .await;
        }
    })
    .await;
}

/// Connections open per client address.
#[derive(Debug, Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted in [`PerAddress`] until dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    address: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, address: IpAddr, cap: usize) -> Option<AddressSlot> {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = table.entry(address).or_insert(0);
        if *count >= cap.max(1) {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = table.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.remove(&self.address);
            }
        }
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
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
                let Some(slot) = per_address.take(peer.ip(), limits.max_connections_per_address)
                else {
                    ADDRESS_FULL.record();
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let connection = handle(tcp, peer);
                tokio::spawn(async move {
                    connection.await;
                    drop(slot);
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

/// What one connection has done lately: when a request or an answer last progressed (a
/// request head arrived, request body bytes reached a handler, answer bytes left a
/// handler), how many of its requests the server itself is working on (a handler running
/// and not waiting for the client's body, or an answer whose next bytes the server has not
/// produced yet: a model thinking), and whether an HTTP/2 header block is open.
///
/// PINGs, SETTINGS and window updates are not progress: a client that grants no window, or
/// trickles headers, is closed at the limit however chatty it is.
#[derive(Debug, Clone)]
pub struct Activity(Arc<ActivityInner>);

#[derive(Debug)]
struct ActivityInner {
    origin: Instant,
    last_progress_ms: AtomicU64,
    busy: AtomicUsize,
    /// Milliseconds since `origin` + 1 when a header block opened; 0 when none is open.
    header_block_since: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection that progressed just now.
    pub fn new() -> Self {
        Self(Arc::new(ActivityInner {
            origin: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            header_block_since: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Something progressed now.
    pub fn progressed(&self) {
        self.0
            .last_progress_ms
            .store(self.now_ms(), Ordering::Release);
    }

    /// Time since the last progress.
    pub fn idle_for(&self) -> Duration {
        let last = self.0.last_progress_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Whether the server itself is working on one of the connection's requests.
    pub fn busy(&self) -> bool {
        self.0.busy.load(Ordering::Acquire) > 0
    }

    /// One request, counted as busy until [`Work::set_busy`] says otherwise.
    pub fn begin(&self) -> Work {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
        Work {
            activity: self.clone(),
            busy: AtomicBool::new(true),
        }
    }

    fn header_block_opened(&self) {
        let now = self.now_ms().saturating_add(1);
        let _ =
            self.0
                .header_block_since
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    fn header_block_closed(&self) {
        self.0.header_block_since.store(0, Ordering::Release);
    }

    /// How long an HTTP/2 header block has been open, if one is.
    pub fn header_block_open_for(&self) -> Option<Duration> {
        match self.0.header_block_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(
                self.now_ms().saturating_sub(since - 1),
            )),
        }
    }
}

/// One request of a connection (see [`Activity`]).
#[derive(Debug)]
pub struct Work {
    activity: Activity,
    busy: AtomicBool,
}

impl Work {
    /// Whether the server (not the client) is the one to move this request on now.
    pub fn set_busy(&self, busy: bool) {
        if self.busy.swap(busy, Ordering::AcqRel) != busy {
            if busy {
                self.activity.0.busy.fetch_add(1, Ordering::AcqRel);
            } else {
                self.activity.0.busy.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.set_busy(false);
    }
}

/// A request body: its bytes are progress; while the handler waits for them, the client
/// is the one to move.
struct TrackedRequestBody {
    body: Incoming,
    work: Arc<Work>,
}

impl axum::body::HttpBody for TrackedRequestBody {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Pending => self.work.set_busy(false),
            Poll::Ready(_) => {
                self.work.activity.progressed();
                self.work.set_busy(true);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body: its bytes are progress; while the server has not produced the next
/// ones, the server is busy; once produced, the client (its window, its reading) must move.
struct CountedBody {
    body: axum::body::Body,
    work: Arc<Work>,
}

impl axum::body::HttpBody for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Pending => self.work.set_busy(true),
            Poll::Ready(_) => {
                self.work.activity.progressed();
                self.work.set_busy(false);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where [`FrameWatch`] is in the client's byte stream.
#[derive(Debug, Clone, Copy)]
enum FrameState {
    /// Matching the HTTP/2 preface; this many bytes matched so far.
    Preface(usize),
    /// Reading a 9-byte frame header; this many bytes so far.
    Header([u8; 9], usize),
    /// Skipping a frame's payload; `ends_block`: it is a header frame with END_HEADERS.
    Payload { remaining: usize, ends_block: bool },
    /// HTTP/1.1: nothing to watch on the way in.
    Http1,
}

/// The decrypted connection, watched both ways. Reading: for HTTP/2, the frame headers
/// only (a HEADERS or PUSH_PROMISE frame opens a header block, the frame that carries
/// END_HEADERS closes it once its payload is in), so a header block trickled in
/// CONTINUATION frames meets the same deadline as an HTTP/1.1 head. Writing: for HTTP/1.1,
/// an answer head without a Content-Security-Policy is one the router never saw (hyper's
/// own 400/414/431); the security headers are added to it.
#[derive(Debug)]
pub struct FrameWatch<T> {
    inner: T,
    activity: Activity,
    state: FrameState,
    error_headers: ErrorHeaders,
    /// Bytes accepted from hyper but not yet written (a rewritten head).
    pending: Vec<u8>,
    written: usize,
}

impl<T> FrameWatch<T> {
    /// Wraps the decrypted stream of one connection.
    pub fn new(inner: T, activity: Activity, error_headers: ErrorHeaders) -> Self {
        Self {
            inner,
            activity,
            state: FrameState::Preface(0),
            error_headers,
            pending: Vec::new(),
            written: 0,
        }
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                FrameState::Http1 => return,
                FrameState::Preface(matched) => {
                    let want = &H2_PREFACE[*matched..];
                    let n = want.len().min(bytes.len());
                    if bytes[..n] != want[..n] {
                        self.state = FrameState::Http1;
                        return;
                    }
                    *matched += n;
                    bytes = &bytes[n..];
                    if *matched == H2_PREFACE.len() {
                        self.state = FrameState::Header([0; 9], 0);
                    }
                }
                FrameState::Header(header, have) => {
                    let n = (9 - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == 9 {
                        let length = usize::from(header[0]) << 16
                            | usize::from(header[1]) << 8
                            | usize::from(header[2]);
                        let (kind, flags) = (header[3], header[4]);
                        // HEADERS, PUSH_PROMISE, CONTINUATION.
                        let header_frame = matches!(kind, 0x1 | 0x5 | 0x9);
                        if header_frame {
                            self.activity.header_block_opened();
                        }
                        let ends_block = header_frame && flags & 0x4 != 0;
                        self.state = FrameState::Payload {
                            remaining: length,
                            ends_block,
                        };
                    }
                }
                FrameState::Payload { remaining, .. } => {
                    let n = (*remaining).min(bytes.len());
                    *remaining -= n;
                    bytes = &bytes[n..];
                }
            }
            if let FrameState::Payload {
                remaining: 0,
                ends_block,
            } = self.state
            {
                if ends_block {
                    self.activity.header_block_closed();
                }
                self.state = FrameState::Header([0; 9], 0);
            }
        }
    }

    /// `buf` with the security headers after its status line, if it is an HTTP/1.1 answer
    /// head (2xx to 5xx) that lacks them.
    fn rewritten_head(&self, buf: &[u8]) -> Option<Vec<u8>> {
        if !matches!(self.state, FrameState::Http1 | FrameState::Preface(_)) {
            return None;
        }
        let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
        if !matches!(rest.first(), Some(b'2'..=b'5')) {
            return None;
        }
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = buf[..head_end].to_ascii_lowercase();
        if head
            .windows(26)
            .any(|w| w == b"\r\ncontent-security-policy:")
        {
            return None;
        }
        let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
        let mut out = Vec::with_capacity(buf.len() + self.error_headers.0.len());
        out.extend_from_slice(&buf[..line_end]);
        out.extend_from_slice(&self.error_headers.0);
        out.extend_from_slice(&buf[line_end..]);
        Some(out)
    }
}

/// Runs [`FrameWatch`]'s parsing on `data` as a client's bytes (in pieces of every size
/// from 1 to 17, and whole) and as an answer head; for the fuzz target and its corpus test.
pub fn observe_connection_bytes(data: &[u8]) {
    let headers = ErrorHeaders::new(true);
    for piece in [1, 2, 3, 5, 7, 9, 17, data.len().max(1)] {
        let mut watch = FrameWatch::new(tokio::io::empty(), Activity::new(), headers.clone());
        for chunk in data.chunks(piece) {
            watch.observe(chunk);
        }
        let _ = watch.activity.header_block_open_for();
        let _ = watch.rewritten_head(data);
    }
    let mut preface = H2_PREFACE.to_vec();
    preface.extend_from_slice(data);
    let mut watch = FrameWatch::new(tokio::io::empty(), Activity::new(), headers);
    watch.observe(&preface);
}

impl<T: AsyncWrite + Unpin> FrameWatch<T> {
    /// Writes what is pending; Ready(Ok) once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() && buf.filled().len() > before {
            let new = buf.filled()[before..].to_vec();
            self.observe(&new);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if let Some(rewritten) = self.rewritten_head(buf) {
            self.pending = rewritten;
            self.written = 0;
            // Accepted whole; the rest is written by the next calls (flush included).
            if let Poll::Ready(Err(error)) = self.drain(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A socket that fails with `TimedOut` once no byte has moved in either direction for the
/// idle time. This is what closes a connection whose client went quiet mid-request. While
/// the server itself is working on a request (a model thinking for minutes before its next
/// words, see [`Activity`]), waiting to read is not idleness; a client that stops reading
/// what the server writes still is.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    activity: Activity,
}

impl<T> IdleTimeout<T> {
    /// Wraps `inner`; `activity` says when the server is working on a request.
    pub fn new(inner: T, idle: Duration, activity: Activity) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            activity,
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Whether the idle time is up. `reading`: the caller waits for the client's bytes,
    /// which is not idleness while the server works (the deadline moves on).
    fn check_deadline(&mut self, cx: &mut Context<'_>, reading: bool) -> Poll<io::Error> {
        loop {
            match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) if reading && self.activity.busy() => self.progressed(),
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
        let mut server = IdleTimeout::new(server, Duration::from_millis(200), Activity::new());
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
        let answering = Activity::new();
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

    #[test]
    fn a_header_block_is_open_from_its_first_frame_until_end_headers() {
        let activity = Activity::new();
        let mut watch = FrameWatch::new(
            tokio::io::empty(),
            activity.clone(),
            ErrorHeaders::new(false),
        );
        watch.observe(H2_PREFACE);
        // SETTINGS, empty.
        watch.observe(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        assert!(activity.header_block_open_for().is_none());
        // HEADERS without END_HEADERS, 3 bytes, given a byte at a time.
        for byte in [0, 0, 3, 0x1, 0x1, 0, 0, 0, 1, 0x82, 0x84, 0x86] {
            watch.observe(&[byte]);
        }
        assert!(activity.header_block_open_for().is_some());
        // CONTINUATION with END_HEADERS: open until its payload is in.
        watch.observe(&[0, 0, 2, 0x9, 0x4, 0, 0, 0, 1, 0x87]);
        assert!(activity.header_block_open_for().is_some());
        watch.observe(&[0x88]);
        assert!(activity.header_block_open_for().is_none());
        // HTTP/1.1 is never taken for HTTP/2.
        let activity = Activity::new();
        let mut watch = FrameWatch::new(
            tokio::io::empty(),
            activity.clone(),
            ErrorHeaders::new(false),
        );
        watch.observe(b"PRI / HTTP/1.1\r\n\x00\x00\x03\x01\x00");
        assert!(activity.header_block_open_for().is_none());
    }

    #[test]
    fn heads_without_the_security_headers_get_them() {
        let watch = FrameWatch::new(tokio::io::empty(), Activity::new(), ErrorHeaders::new(true));
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let rewritten = String::from_utf8(watch.rewritten_head(bare).unwrap()).unwrap();
        assert!(rewritten.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-security-policy: default-src 'none'"));
        assert!(rewritten.contains("\r\nx-frame-options: DENY\r\n"));
        assert!(rewritten.contains("\r\nx-cloister-tee: SIMULATED"));
        assert!(rewritten.ends_with("content-length: 0\r\n\r\n"));
        let ours = b"HTTP/1.1 200 OK\r\ncontent-security-policy: default-src 'none'\r\n\r\nbody";
        assert!(watch.rewritten_head(ours).is_none());
        assert!(
            watch
                .rewritten_head(b"HTTP/1.1 100 Continue\r\n\r\n")
                .is_none()
        );
        assert!(watch.rewritten_head(b"{\"HTTP/1.1 400\"}").is_none());
    }

    #[test]
    fn the_fuzz_corpus_never_panics() {
        for input in [
            &b""[..],
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"HTTP/1.1 4",
            b"HTTP/1.1 431\r\n\r\n\r\n",
            b"\xff\xff\xff\x01\x00\x00\x00\x00\x01",
            b"\x00\x00\x00\x09\x04\x00\x00\x00\x01\x00\x00\x01\x01",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x40\x00\x01",
        ] {
            observe_connection_bytes(input);
        }
    }
}
