//! Request hardening shared by every route: security headers, the CSRF check on every
//! request that changes state, cookie parsing, random tokens and error answers that never
//! echo what the client sent.
//!
//! CSRF: state changes are only `POST` with a JSON body. Each must carry the
//! `X-CSRF-Token` header equal to the `__Host-csrf` cookie (double submit; the `__Host-`
//! prefix stops a sibling domain from planting it), and, when the browser sends them,
//! `Origin` must be ours and `Sec-Fetch-Site` must be `same-origin`. Session cookies are
//! also `SameSite=Strict`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::store::constant_time_eq;

/// The CSRF cookie's name.
pub const CSRF_COOKIE: &str = "__Host-csrf";
/// The header that must echo the CSRF cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "__Host-session";

/// The Content-Security-Policy of every answer: only our own scripts, styles and
/// connections, no framing, no plugins, no inline code.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// HSTS, sent only when the certificate comes from a CA.
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // SystemRandom reads the kernel's getrandom; it fails only if the kernel has no
    // randomness, in which case nothing here is safe: stop.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        std::process::abort();
    }
    hex::encode(bytes)
}

/// 16 random bytes.
pub fn random_16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        std::process::abort();
    }
    bytes
}

/// The value of cookie `name`, if the request carries it once or more (first wins).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value for a `__Host-` cookie.
pub fn host_cookie(name: &str, value: &str, max_age_s: i64, http_only: bool) -> HeaderValue {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    let text =
        format!("{name}={value}; Path=/; Secure; SameSite=Strict; Max-Age={max_age_s}{http_only}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// Whether a cookie value is one of ours in shape (hex, bounded), so a forged one is never
/// reflected anywhere.
pub fn is_token_shaped(value: &str) -> bool {
    (16..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A short error answer. The text is chosen by us, never copied from the request.
pub fn error_response(status: StatusCode, message: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"error\":\"{message}\"}}"),
    )
        .into_response()
}

/// Adds the security headers to every answer.
pub async fn security_headers(hsts: bool, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // A page may set a stricter or more specific policy itself (the chat page allows
    // WebAssembly for its verifier); every other answer gets the site's.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(STRICT_TRANSPORT_SECURITY),
        );
    }
    response
}

/// Why a state-changing request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfRefusal {
    /// Not POST (state changes are POST only).
    Method,
    /// The token header is missing or does not match the cookie.
    Token,
    /// The browser says the request came from another site.
    CrossSite,
    /// The body is not declared as JSON (forms can be sent cross-site without preflight).
    ContentType,
}

/// Checks a state-changing request; `expected_origins` are the origins this box answers as.
pub fn check_csrf(
    method: &Method,
    headers: &HeaderMap,
    expected_origins: &[String],
) -> Result<(), CsrfRefusal> {
    if method != Method::POST {
        return Err(CsrfRefusal::Method);
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(CsrfRefusal::CrossSite);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| CsrfRefusal::CrossSite)?;
        if !expected_origins.iter().any(|expected| expected == origin) {
            return Err(CsrfRefusal::CrossSite);
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The sealed chat body is not JSON; its type, like JSON, cannot be sent cross-site
    // without a preflight.
    if !content_type.starts_with("application/json")
        && content_type != crate::chat::SEALED_REQUEST_TYPE
    {
        return Err(CsrfRefusal::ContentType);
    }
    let cookie_token = cookie(headers, CSRF_COOKIE).filter(|v| is_token_shaped(v));
    let header_token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match (cookie_token, header_token) {
        (Some(cookie_token), Some(header_token))
            if constant_time_eq(cookie_token, header_token) =>
        {
            Ok(())
        }
        _ => Err(CsrfRefusal::Token),
    }
}

/// Middleware: every method other than GET and HEAD must pass [`check_csrf`].
pub async fn csrf_guard(
    origins: std::sync::Arc<Vec<String>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(request).await;
    }
    match check_csrf(&method, request.headers(), &origins) {
        Ok(()) => next.run(request).await,
        Err(CsrfRefusal::Method) => {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        Err(CsrfRefusal::ContentType) => {
            error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send JSON")
        }
        Err(_) => error_response(StatusCode::FORBIDDEN, "cross-site request refused"),
    }
}

/// Middleware: answers 408 when a handler (including reading the body) takes too long.
pub async fn request_deadline(
    limit: std::time::Duration,
    request: Request<Body>,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

/// How often repeated events are summarised in the log (see [`RepeatedEvent`]).
static SUMMARY_INTERVAL_MS: AtomicU64 = AtomicU64::new(60_000);

/// Sets how often repeated events are summarised (the default is a minute).
pub fn set_summary_interval(interval: std::time::Duration) {
    let ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    SUMMARY_INTERVAL_MS.store(ms, Ordering::Relaxed);
}

/// An event that an attacker can repeat at will (a refused sign-in, a closed connection):
/// counted, and written to the log once per interval with its count, never once per
/// event, so that a flood cannot push everything else out of the owner's view of the log.
#[derive(Debug)]
pub struct RepeatedEvent {
    what: &'static str,
    count: AtomicU64,
    scheduled: AtomicBool,
}

impl RepeatedEvent {
    /// An event described by `what` in the log.
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            count: AtomicU64::new(0),
            scheduled: AtomicBool::new(false),
        }
    }

    /// Counts one; the first of an interval schedules the interval's summary line.
    pub fn record(&'static self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let interval =
            std::time::Duration::from_millis(SUMMARY_INTERVAL_MS.load(Ordering::Relaxed));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(interval).await;
                    self.flush(interval);
                });
            }
            Err(_) => self.flush(interval),
        }
    }

    fn flush(&self, interval: std::time::Duration) {
        self.scheduled.store(false, Ordering::Release);
        let count = self.count.swap(0, Ordering::AcqRel);
        if count > 0 {
            tracing::info!(
                "{}: {count} in the last {} s",
                self.what,
                interval.as_secs_f64()
            );
        }
    }
}

/// The size of a header list as HTTP/2 counts it (RFC 9113 section 6.5.2: name, value and
/// 32 bytes per field).
pub fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    const TOKEN: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn a_same_origin_json_post_with_the_token_passes() {
        let origins = vec!["https://box.example".to_owned()];
        let good = headers(&[
            ("cookie", &format!("a=b; {CSRF_COOKIE}={TOKEN}")),
            (CSRF_HEADER, TOKEN),
            ("origin", "https://box.example"),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(check_csrf(&Method::POST, &good, &origins), Ok(()));
    }

    #[test]
    fn forged_requests_are_refused() {
        let origins = vec!["https://box.example".to_owned()];
        let base = [
            ("cookie", format!("{CSRF_COOKIE}={TOKEN}")),
            (CSRF_HEADER, TOKEN.to_owned()),
            ("content-type", "application/json".to_owned()),
        ];
        let with = |extra: &[(&'static str, &str)], drop: &str| {
            let mut pairs: Vec<(&'static str, &str)> = base
                .iter()
                .filter(|(k, _)| *k != drop)
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            pairs.extend_from_slice(extra);
            headers(&pairs)
        };
        assert_eq!(
            check_csrf(&Method::POST, &with(&[], CSRF_HEADER), &origins),
            Err(CsrfRefusal::Token)
        );
        assert_eq!(
            check_csrf(
                &Method::POST,
                &with(
                    &[(CSRF_HEADER, "ffff2233445566778899aabbccddeeff")],
                    CSRF_HEADER
                ),
                &origins
            ),
            Err(CsrfRefusal::Token)
        );
        assert_eq!(
            check_csrf(
                &Method::POST,
                &with(&[("origin", "https://evil.example")], ""),
                &origins
            ),
            Err(CsrfRefusal::CrossSite)
        );
        assert_eq!(
            check_csrf(
                &Method::POST,
                &with(&[("sec-fetch-site", "cross-site")], ""),
                &origins
            ),
            Err(CsrfRefusal::CrossSite)
        );
        assert_eq!(
            check_csrf(
                &Method::POST,
                &with(&[("content-type", "text/plain")], "content-type"),
                &origins
            ),
            Err(CsrfRefusal::ContentType)
        );
        assert_eq!(
            check_csrf(&Method::PUT, &with(&[], ""), &origins),
            Err(CsrfRefusal::Method)
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let map = headers(&[
            ("cookie", "x__Host-csrf=no; __Host-csrf=yes"),
            ("cookie", "b=c"),
        ]);
        assert_eq!(cookie(&map, CSRF_COOKIE), Some("yes"));
        assert_eq!(cookie(&map, "b"), Some("c"));
        assert_eq!(cookie(&map, "missing"), None);
    }
}
