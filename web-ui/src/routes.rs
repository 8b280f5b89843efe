//! The routes: pages, the JSON API behind them, static assets, and the plain-HTTP side
//! (redirects and ACME HTTP-01 only). [`AppState`] is what every handler shares; the
//! attested chat adds its routes beside these.
//!
//! Handlers answer errors with fixed messages; nothing the client sent is echoed back.

// Helpers return `Result<_, Response>` so a handler can answer early with `?`-like flow; a
// Response is large, but it is built at most once per request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use sha2::{Digest, Sha384};

use crate::acme::{CertificateManager, HttpChallenges};
use crate::api::{self, BodyError};
use crate::auth::{self, AuthError, Passkeys, RateLimiter};
use crate::clock::now_s;
use crate::config::Settings;
use crate::console;
use crate::pages::{self, Frame};
use crate::security::{
    self, CSRF_COOKIE, SESSION_COOKIE, cookie, error_response, host_cookie, is_token_shaped,
    random_hex,
};
use crate::server::ClientAddress;
use crate::store::{Store, StoreError, User};
use crate::tls::CertificateResolver;

/// Longest a handler may take, reading the body included.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// A static file served from inside the binary.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Its bytes.
    pub body: &'static [u8],
    /// Its MIME type.
    pub content_type: &'static str,
    /// `sha384-...` for the `integrity` attribute.
    pub integrity: String,
}

impl Asset {
    pub(crate) fn new(body: &'static [u8], content_type: &'static str) -> Self {
        let digest = Sha384::digest(body);
        Self {
            body,
            content_type,
            integrity: format!("sha384-{}", crate::tls::base64_standard(&digest)),
        }
    }
}

/// The assets folder, compiled in (the image is measured, so are they).
#[derive(Debug, Clone)]
pub struct Assets {
    /// `assets/app.js`.
    pub script: Asset,
    /// `assets/style.css`.
    pub style: Asset,
}

impl Default for Assets {
    fn default() -> Self {
        Self {
            script: Asset::new(
                include_bytes!("../assets/app.js"),
                "text/javascript; charset=utf-8",
            ),
            style: Asset::new(
                include_bytes!("../assets/style.css"),
                "text/css; charset=utf-8",
            ),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub store: Arc<Store>,
    /// WebAuthn ceremonies.
    pub passkeys: Passkeys,
    /// The certificate being served.
    pub resolver: Arc<CertificateResolver>,
    /// ACME, when a domain is configured.
    pub certificates: Option<Arc<CertificateManager>>,
    /// HTTP-01 answers.
    pub http_challenges: Arc<HttpChallenges>,
    /// The settings the server started with.
    pub settings: Settings,
    /// The origins browsers use for this box (`https://host[:port]`).
    pub origins: Arc<Vec<String>>,
    /// `host[:port]` for redirects to HTTPS.
    pub public_authority: String,
    /// Sign-in and registration attempts, per client address.
    pub sign_in_limiter: RateLimiter,
    /// Sign-in attempts, per credential id (apart from the address's).
    pub credential_limiter: RateLimiter<String>,
    /// Request body bytes all requests together may hold (see [`guard_body`]).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Static files.
    pub assets: Assets,
    /// The attested chat (`chat.rs`).
    pub chat: Arc<crate::chat::ChatState>,
}

type Shared = State<Arc<AppState>>;

/// The CSRF token of this request (existing cookie or a fresh one).
#[derive(Debug, Clone)]
pub(crate) struct CsrfToken(pub(crate) String);

/// The HTTPS router.
pub fn https_router(state: Arc<AppState>) -> Router {
    let resolver = state.resolver.clone();
    let origins = state.origins.clone();
    Router::new()
        .route("/", get(home))
        .route("/setup", get(setup_page))
        .route("/invite", get(invitation_page))
        .route("/account", get(account_page))
        .route("/console", get(console_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/assets/app.js", get(script))
        .route("/assets/style.css", get(style))
        .route("/api/setup/begin", post(setup_begin))
        .route("/api/setup/finish", post(registration_finish))
        .route("/api/invite/begin", post(invitation_begin))
        .route("/api/invite/finish", post(registration_finish))
        .route("/api/passkeys/begin", post(add_passkey_begin))
        .route("/api/passkeys/finish", post(registration_finish))
        .route("/api/signin/begin", post(sign_in_begin))
        .route("/api/signin/finish", post(sign_in_finish))
        .route("/api/signout", post(sign_out))
        .route("/api/owner/status", get(owner_status))
        .route("/api/owner/invitations", post(create_invitation))
        .route(
            "/api/owner/invitations/{handle}/withdraw",
            post(withdraw_invitation),
        )
        .route("/api/owner/users/{id}/revoke", post(revoke_user))
        .route("/api/owner/passkeys/{id}/revoke", post(revoke_passkey))
        .merge(crate::chat::chat_routes())
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(state.clone(), guard_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rotate_session,
        ))
        .layer(middleware::from_fn(ensure_csrf_cookie))
        .layer(middleware::from_fn(move |request, next| {
            security::csrf_guard(origins.clone(), request, next)
        }))
        .layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .layer(middleware::from_fn(|request, next| {
            security::request_deadline(REQUEST_DEADLINE, request, next)
        }))
        .layer(middleware::from_fn(move |request, next| {
            // HSTS follows the certificate: on once ACME replaced the self-signed one.
            let hsts = !resolver.is_self_signed();
            security::security_headers(hsts, request, next)
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::chat::simulation_header,
        ))
        .with_state(state)
}

/// The plain HTTP router: ACME HTTP-01 answers and redirects to HTTPS, nothing else.
pub fn http_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(http_challenge))
        .fallback(redirect_to_https)
        .layer(DefaultBodyLimit::max(1024))
        .with_state(state)
}

async fn http_challenge(State(state): Shared, Path(token): Path<String>) -> Response {
    match state.http_challenges.answer(&token) {
        Some(answer) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn redirect_to_https(State(state): Shared, uri: Uri) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let target = format!("https://{}{}", state.public_authority, path);
    match HeaderValue::from_str(&target) {
        Ok(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "bad request").into_response(),
    }
}

// ---- middleware ---------------------------------------------------------------------

/// Who may send a body to a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNeeds {
    /// Anyone (sign-in, setup, invitations, sign-out).
    Nothing,
    /// A signed-in user.
    Session,
    /// The owner.
    Owner,
}

/// Longest wait for room in the body budget before answering 503.
pub const BODY_BUDGET_WAIT: Duration = Duration::from_secs(5);

/// The largest body a `POST` to `path` may carry, and who may send it. The one table of
/// body limits (docs/web-ui.md lists it).
pub fn body_policy(path: &str) -> (usize, BodyNeeds) {
    use crate::chat::{MAX_CHAT_BODY_BYTES, MAX_COLLATERAL_BYTES, MAX_HISTORY_BODY_BYTES};
    let small = api::MAX_BODY_BYTES;
    match path {
        "/api/setup/begin" | "/api/setup/finish" | "/api/invite/begin" | "/api/invite/finish"
        | "/api/signin/begin" | "/api/signin/finish" | "/api/signout" => {
            (small, BodyNeeds::Nothing)
        }
        "/api/chat" => (MAX_CHAT_BODY_BYTES, BodyNeeds::Session),
        "/api/owner/collateral" => (MAX_COLLATERAL_BYTES, BodyNeeds::Owner),
        "/api/history/keys" | "/api/history/delete-all" => (small, BodyNeeds::Session),
        p if p.starts_with("/api/owner/") => (small, BodyNeeds::Owner),
        p if p.starts_with("/api/history/") && p.ends_with("/delete") => {
            (small, BodyNeeds::Session)
        }
        p if p.starts_with("/api/history/") => (MAX_HISTORY_BODY_BYTES, BodyNeeds::Session),
        p if p.starts_with("/api/") => (small, BodyNeeds::Session),
        // Pages and the fallback read no body.
        _ => (0, BodyNeeds::Nothing),
    }
}

/// Middleware, before any handler reads a byte of a body: the header list is within
/// its limit (431); the sender may send this route a body (401 or 403 at once, unread); the
/// declared length is within the route's limit (413 at once); the body is counted against
/// the route's limit as it streams in (413 at the limit) and against the body budget of all
/// requests together (its reservation is held until the answer's head is ready; 503 if the
/// budget stays full).
async fn guard_body(State(state): Shared, request: Request, next: Next) -> Response {
    if security::header_list_size(request.headers()) > state.settings.limits.max_header_bytes {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        );
    }
    if request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD {
        return next.run(request).await;
    }
    let (limit, needs) = body_policy(request.uri().path());
    match needs {
        BodyNeeds::Nothing => {}
        BodyNeeds::Session | BodyNeeds::Owner => {
            match current_user(&state, request.headers()).await {
                None => return error_response(StatusCode::UNAUTHORIZED, "sign in first"),
                Some(user) if needs == BodyNeeds::Owner && !user.is_owner => {
                    return error_response(StatusCode::FORBIDDEN, "owner only");
                }
                Some(_) => {}
            }
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let reserve = declared.map_or(limit, |length| length as usize).min(limit);
    let _reservation = if reserve == 0 {
        None
    } else {
        let permits = u32::try_from(reserve).unwrap_or(u32::MAX);
        match tokio::time::timeout(
            BODY_BUDGET_WAIT,
            state.body_budget.clone().acquire_many_owned(permits),
        )
        .await
        {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                BODY_BUDGET_FULL.record();
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the box is busy; try again",
                );
            }
        }
    };
    let request =
        request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
    next.run(request).await
}

/// Requests refused because the body budget stayed full.
static BODY_BUDGET_FULL: security::RepeatedEvent =
    security::RepeatedEvent::new("requests refused: body budget full");
/// Sign-in attempts refused by a rate limit.
static SIGN_IN_LIMITED: security::RepeatedEvent =
    security::RepeatedEvent::new("sign-in attempts rate-limited");

async fn ensure_csrf_cookie(mut request: Request, next: Next) -> Response {
    let existing = cookie(request.headers(), CSRF_COOKIE)
        .filter(|v| is_token_shaped(v))
        .map(str::to_owned);
    let fresh = existing.is_none();
    let token = existing.unwrap_or_else(|| random_hex(16));
    request.extensions_mut().insert(CsrfToken(token.clone()));
    let mut response = next.run(request).await;
    if fresh {
        response.headers_mut().append(
            header::SET_COOKIE,
            host_cookie(CSRF_COOKIE, &token, 86_400, false),
        );
    }
    response
}

async fn rotate_session(State(state): Shared, mut request: Request, next: Next) -> Response {
    let now = now_s();
    let Some(token) = cookie(request.headers(), SESSION_COOKIE)
        .filter(|v| is_token_shaped(v))
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    let lookup = token.clone();
    let session = match state.store.call(move |s| s.session(&lookup, now)).await {
        Ok(Some(session)) => session,
        _ => return next.run(request).await,
    };
    let policy = state.settings.sessions;
    if now - session.created_at_s < policy.rotate_after_s {
        return next.run(request).await;
    }
    let new_token = random_hex(32);
    let expires = (now + policy.lifetime_s).min(session.signed_in_at_s + policy.absolute_max_s);
    let (old, new) = (token.clone(), new_token.clone());
    let rotated = state
        .store
        .call(move |s| s.rotate_session(&old, &new, now, expires))
        .await;
    if !matches!(rotated, Ok(true)) {
        return next.run(request).await;
    }
    // The handler sees the new token; the browser gets it in the answer.
    let cookie_line = format!("{SESSION_COOKIE}={new_token}");
    let other_cookies: Vec<String> = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.starts_with(&format!("{SESSION_COOKIE}=")))
        .map(str::to_owned)
        .collect();
    let mut all = other_cookies;
    all.push(cookie_line);
    if let Ok(value) = HeaderValue::from_str(&all.join("; ")) {
        request.headers_mut().remove(header::COOKIE);
        request.headers_mut().insert(header::COOKIE, value);
    }
    let mut response = next.run(request).await;
    response.headers_mut().append(
        header::SET_COOKIE,
        host_cookie(SESSION_COOKIE, &new_token, expires - now, true),
    );
    response
}

// ---- helpers ------------------------------------------------------------------------

/// The signed-in user of a request, looked up on the blocking pool ([`Store::call`]).
pub(crate) async fn current_user(state: &Arc<AppState>, headers: &HeaderMap) -> Option<User> {
    let token = cookie(headers, SESSION_COOKIE)
        .filter(|v| is_token_shaped(v))?
        .to_owned();
    let absolute_max_s = state.settings.sessions.absolute_max_s;
    state
        .store
        .call(move |store| Ok(session_user(store, &token, absolute_max_s)))
        .await
        .ok()?
}

/// The live, unrevoked account behind a session token (blocking).
fn session_user(store: &Store, token: &str, absolute_max_s: i64) -> Option<User> {
    let now = now_s();
    let session = store.session(token, now).ok()??;
    if now - session.signed_in_at_s >= absolute_max_s {
        return None;
    }
    store.user(&session.user_id).ok()?.filter(|u| !u.revoked)
}

/// Runs `work` (passkey ceremonies, which read and write the database) on the blocking
/// pool with the shared state.
async fn off_runtime<T, F>(state: &Arc<AppState>, work: F) -> Result<T, AuthError>
where
    T: Send + 'static,
    F: FnOnce(&AppState) -> Result<T, AuthError> + Send + 'static,
{
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(|_| AuthError::Store(StoreError::Interrupted))?
}

/// The answer to a database failure; the error itself goes to the log only.
fn storage_failed(error: &StoreError) -> Response {
    tracing::error!(error = %error, "database error");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the box could not store this",
    )
}

async fn owner(state: &Arc<AppState>, headers: &HeaderMap) -> Result<User, Response> {
    match current_user(state, headers).await {
        Some(user) if user.is_owner => Ok(user),
        Some(_) => Err(error_response(StatusCode::FORBIDDEN, "owner only")),
        None => Err(error_response(StatusCode::UNAUTHORIZED, "sign in first")),
    }
}

fn render(
    state: &AppState,
    csrf: &CsrfToken,
    user: Option<&User>,
    page: &str,
    title: &str,
    body: &str,
) -> Response {
    let certificate = state.resolver.facts();
    let frame = Frame {
        page,
        title,
        csrf_token: &csrf.0,
        certificate: &certificate,
        script_integrity: &state.assets.script.integrity,
        style_integrity: &state.assets.style.integrity,
        user,
        simulated: state.chat.is_simulated(),
        extra_head: "",
    };
    Html(pages::page(&frame, body)).into_response()
}

fn body_error(error: BodyError) -> Response {
    match error {
        BodyError::TooLarge => {
            error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        BodyError::Malformed => {
            error_response(StatusCode::BAD_REQUEST, "the request body is not valid")
        }
        BodyError::CarriesPrf => error_response(
            StatusCode::BAD_REQUEST,
            "the PRF output must stay in the browser",
        ),
    }
}

fn auth_error(error: AuthError) -> Response {
    let status = match &error {
        AuthError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        AuthError::Store(store_error) => {
            tracing::error!(error = %store_error, "database error during sign-in");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        AuthError::BadName => StatusCode::BAD_REQUEST,
        AuthError::Revoked => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let message = match error {
        AuthError::UnknownCeremony => "this sign-in attempt expired; start again",
        AuthError::BadSetupCode => "the setup code is not valid",
        AuthError::BadInvitation => "the invitation is not valid",
        AuthError::Verification => "the passkey could not be verified",
        AuthError::UnknownPasskey => "this passkey is not registered here",
        AuthError::Revoked => "this account is revoked",
        AuthError::BadName => "the name must be 1 to 64 characters",
        AuthError::RateLimited => "too many attempts; wait a moment",
        AuthError::Store(_) => "the box could not store this",
    };
    error_response(status, message)
}

fn rate_limited(state: &AppState, client: ClientAddress) -> Result<(), Response> {
    let address = client.0.ip();
    if state.sign_in_limiter.allow(address) {
        Ok(())
    } else {
        Err(refused_attempt(state.sign_in_limiter.wait_for(&address)))
    }
}

/// A refused sign-in attempt: counted for the log's summary, answered 429 with when to
/// try again.
fn refused_attempt(wait: Duration) -> Response {
    SIGN_IN_LIMITED.record();
    let mut response = auth_error(AuthError::RateLimited);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The per-credential limit: attempts with one passkey, whatever address they come from.
fn credential_limited(state: &AppState, credential: &serde_json::Value) -> Result<(), Response> {
    let Some(id) = credential.get("id").and_then(|id| id.as_str()) else {
        return Ok(());
    };
    let key: String = id.chars().take(256).collect();
    if state.credential_limiter.allow(key.clone()) {
        Ok(())
    } else {
        Err(refused_attempt(state.credential_limiter.wait_for(&key)))
    }
}

async fn open_session(state: &Arc<AppState>, user_id: [u8; 16]) -> Result<HeaderValue, Response> {
    let token = random_hex(32);
    let now = now_s();
    let lifetime_s = state.settings.sessions.lifetime_s;
    let stored = token.clone();
    state
        .store
        .call(move |s| s.create_session(&stored, &user_id, now, now + lifetime_s, now))
        .await
        .map_err(|error| storage_failed(&error))?;
    Ok(host_cookie(SESSION_COOKIE, &token, lifetime_s, true))
}

fn credential_value(body: &[u8]) -> Result<api::CeremonyFinish, Response> {
    let finish: api::CeremonyFinish = api::parse_body(body).map_err(body_error)?;
    if api::carries_prf(&finish.credential) {
        return Err(body_error(BodyError::CarriesPrf));
    }
    Ok(finish)
}

// ---- pages --------------------------------------------------------------------------

async fn home(
    State(state): Shared,
    Extension(csrf): Extension<CsrfToken>,
    headers: HeaderMap,
) -> Response {
    match current_user(&state, &headers).await {
        Some(user) => render(
            &state,
            &csrf,
            Some(&user),
            "home",
            "Cloister",
            &pages::home_signed_in(&user),
        ),
        None => {
            let has_owner = state.store.call(|s| s.has_owner()).await.unwrap_or(true);
            render(
                &state,
                &csrf,
                None,
                "sign-in",
                "Sign in",
                &pages::sign_in(has_owner),
            )
        }
    }
}

async fn setup_page(State(state): Shared, Extension(csrf): Extension<CsrfToken>) -> Response {
    if state.store.call(|s| s.has_owner()).await.unwrap_or(true) {
        return Redirect::to("/").into_response();
    }
    render(
        &state,
        &csrf,
        None,
        "setup",
        "Set up this box",
        &pages::setup(),
    )
}

async fn invitation_page(State(state): Shared, Extension(csrf): Extension<CsrfToken>) -> Response {
    render(
        &state,
        &csrf,
        None,
        "invitation",
        "Join this box",
        &pages::invitation(),
    )
}

async fn account_page(
    State(state): Shared,
    Extension(csrf): Extension<CsrfToken>,
    headers: HeaderMap,
) -> Response {
    let Some(user) = current_user(&state, &headers).await else {
        return Redirect::to("/").into_response();
    };
    let user_id = user.id;
    let passkeys = state
        .store
        .call(move |s| s.passkeys_of(&user_id))
        .await
        .unwrap_or_default();
    render(
        &state,
        &csrf,
        Some(&user),
        "account",
        "Your passkeys",
        &pages::account(&passkeys),
    )
}

async fn console_page(
    State(state): Shared,
    Extension(csrf): Extension<CsrfToken>,
    headers: HeaderMap,
) -> Response {
    let Ok(user) = owner(&state, &headers).await else {
        return Redirect::to("/").into_response();
    };
    let socket = state.settings.supervisor_socket.clone();
    let (services, metrics) = tokio::join!(console::services(&socket), async {
        match &state.settings.model_metrics_url {
            Some(url) => console::model_metrics(url).await,
            None => None,
        }
    });
    let measurements_file = match &state.settings.measurements_file {
        Some(path) => console::expected_measurements(path).await,
        None => state.chat.expected_measurements.clone(),
    };
    let measurements = measurements_file
        .as_deref()
        .map(|bytes| console::parse_measurements(&String::from_utf8_lossy(bytes)));
    // The box's own attestation, made as `GET /attestation` makes it and verified as users
    // verify it, against the certificate being served now.
    let attestation = match crate::attestation::served_spki_sha256(&state) {
        Some(tls_spki_sha256) => {
            let keys = crate::attestation::BoxKeys {
                hpke_public_key: *state.chat.server_key.public_key(),
                hpke_key_id: state.chat.server_key.key_id(),
                tls_spki_sha256,
            };
            console::attestation_status(
                state.chat.tee.clone(),
                &keys,
                measurements_file.as_deref(),
                state.chat.attestation.cached_collateral(),
                crate::attestation::model_name(&state).await,
            )
            .await
        }
        None => console::AttestationStatus {
            tee: state
                .chat
                .tee
                .as_ref()
                .map(|tee| tee.kind())
                .map_err(Clone::clone),
            verification: Err("the served certificate's key is not known".to_owned()),
            expected_problem: None,
        },
    };
    let logs = match &services {
        Some(services) => console::recent_logs(&socket, services, 50).await,
        None => None,
    };
    let (users, invitations) = state
        .store
        .call(|s| {
            let users: Vec<_> = s
                .users()
                .unwrap_or_default()
                .into_iter()
                .map(|u| {
                    let passkeys = s.passkeys_of(&u.id).unwrap_or_default();
                    (u, passkeys)
                })
                .collect();
            Ok((users, s.invitations().unwrap_or_default()))
        })
        .await
        .unwrap_or_default();
    let certificate = state.resolver.facts();
    let acme = state.certificates.as_ref().map(|m| m.status());
    let body = pages::console(&pages::ConsoleView {
        services: services.as_deref(),
        metrics: metrics.as_deref(),
        certificate: &certificate,
        acme: acme.as_ref(),
        users: &users,
        invitations: &invitations,
        measurements: measurements.as_deref(),
        attestation: Some(&attestation),
        logs: logs.as_deref(),
        now_s: now_s(),
    });
    render(&state, &csrf, Some(&user), "console", "Console", &body)
}

async fn script(State(state): Shared) -> Response {
    asset(&state.assets.script)
}

async fn style(State(state): Shared) -> Response {
    asset(&state.assets.style)
}

fn asset(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}

// ---- API ----------------------------------------------------------------------------

async fn setup_begin(
    State(state): Shared,
    Extension(client): Extension<ClientAddress>,
    body: Bytes,
) -> Response {
    if let Err(response) = rate_limited(&state, client) {
        return response;
    }
    let request: api::SetupBegin = match api::parse_body(&body) {
        Ok(request) => request,
        Err(error) => return body_error(error),
    };
    let begun = off_runtime(&state, move |st| {
        st.passkeys
            .begin_setup(&st.store, request.code.trim(), &request.name, now_s())
    })
    .await;
    match begun {
        Ok(begun) => Json(begun).into_response(),
        Err(error) => auth_error(error),
    }
}

async fn invitation_begin(
    State(state): Shared,
    Extension(client): Extension<ClientAddress>,
    body: Bytes,
) -> Response {
    if let Err(response) = rate_limited(&state, client) {
        return response;
    }
    let request: api::InviteBegin = match api::parse_body(&body) {
        Ok(request) => request,
        Err(error) => return body_error(error),
    };
    let begun = off_runtime(&state, move |st| {
        st.passkeys
            .begin_invitation(&st.store, &request.token, now_s())
    })
    .await;
    match begun {
        Ok(begun) => Json(begun).into_response(),
        Err(error) => auth_error(error),
    }
}

async fn add_passkey_begin(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let Some(user) = current_user(&state, &headers).await else {
        return error_response(StatusCode::UNAUTHORIZED, "sign in first");
    };
    let request: api::AddPasskeyBegin = match api::parse_body(&body) {
        Ok(request) => request,
        Err(error) => return body_error(error),
    };
    let begun = off_runtime(&state, move |st| {
        st.passkeys
            .begin_add_passkey(&st.store, &user, &request.label, now_s())
    })
    .await;
    match begun {
        Ok(begun) => Json(begun).into_response(),
        Err(error) => auth_error(error),
    }
}

async fn registration_finish(
    State(state): Shared,
    Extension(client): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let finished = finish_ceremony(
        &state,
        client,
        &body,
        |st, ceremony, credential: &webauthn_rs::prelude::RegisterPublicKeyCredential| {
            st.passkeys
                .finish_registration(&st.store, ceremony, credential, now_s())
        },
    )
    .await;
    let user_id = match finished {
        Ok(user_id) => user_id,
        Err(response) => return response,
    };
    if current_user(&state, &headers).await.is_some() {
        return Json(serde_json::json!({"next": "/account"})).into_response();
    }
    start_session(&state, user_id, "/").await
}

/// The steps that finishing a registration and a sign-in share: the rate limit, the body
/// (which must not carry PRF results), the credential decoded as `C`, then `finish` with the
/// ceremony id on the blocking pool; every failure becomes its answer.
async fn finish_ceremony<C, T, F>(
    state: &Arc<AppState>,
    client: ClientAddress,
    body: &[u8],
    finish: F,
) -> Result<T, Response>
where
    C: serde::de::DeserializeOwned + Send + 'static,
    T: Send + 'static,
    F: FnOnce(&AppState, &str, &C) -> Result<T, AuthError> + Send + 'static,
{
    rate_limited(state, client)?;
    let request = credential_value(body)?;
    credential_limited(state, &request.credential)?;
    let credential: C =
        serde_json::from_value(request.credential).map_err(|_| body_error(BodyError::Malformed))?;
    let ceremony = request.ceremony;
    off_runtime(state, move |st| finish(st, &ceremony, &credential))
        .await
        .map_err(auth_error)
}

/// Opens a session for `user_id` and answers with its cookie and the page to go to.
async fn start_session(state: &Arc<AppState>, user_id: [u8; 16], next: &str) -> Response {
    match open_session(state, user_id).await {
        Ok(cookie) => (
            [(header::SET_COOKIE, cookie)],
            Json(serde_json::json!({ "next": next })),
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn sign_in_begin(
    State(state): Shared,
    Extension(client): Extension<ClientAddress>,
) -> Response {
    if let Err(response) = rate_limited(&state, client) {
        return response;
    }
    match state.passkeys.begin_sign_in(now_s()) {
        Ok(begun) => Json(begun).into_response(),
        Err(error) => auth_error(error),
    }
}

async fn sign_in_finish(
    State(state): Shared,
    Extension(client): Extension<ClientAddress>,
    body: Bytes,
) -> Response {
    let finished = finish_ceremony(
        &state,
        client,
        &body,
        |st, ceremony, credential: &webauthn_rs::prelude::PublicKeyCredential| {
            st.passkeys
                .finish_sign_in(&st.store, ceremony, credential, now_s())
        },
    )
    .await;
    let user = match finished {
        Ok(user) => user,
        Err(response) => return response,
    };
    tracing::info!(owner = user.is_owner, "signed in");
    let next = if user.is_owner { "/console" } else { "/" };
    start_session(&state, user.id, next).await
}

async fn sign_out(State(state): Shared, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE).filter(|v| is_token_shaped(v)) {
        let token = token.to_owned();
        let _ = state.store.call(move |s| s.end_session(&token)).await;
    }
    (
        [(header::SET_COOKIE, host_cookie(SESSION_COOKIE, "", 0, true))],
        Json(serde_json::json!({"next": "/"})),
    )
        .into_response()
}

async fn owner_status(State(state): Shared, headers: HeaderMap) -> Response {
    if let Err(response) = owner(&state, &headers).await {
        return response;
    }
    let facts = state.resolver.facts();
    let acme = state.certificates.as_ref().map(|m| m.status());
    let users = state.store.call(|s| s.users()).await.unwrap_or_default();
    let services = console::services(&state.settings.supervisor_socket).await;
    Json(serde_json::json!({
        "certificate": {
            "self_signed": facts.self_signed,
            "names": facts.names,
            "not_after_s": facts.not_after_s,
            "fingerprint_sha256": facts.fingerprint_sha256,
            "issuer": facts.issuer,
        },
        "acme": acme.map(|a| serde_json::json!({
            "account_url": a.account_url,
            "caa_record": a.caa_record,
            "last_error": a.last_error,
            "next_attempt_at_s": a.next_attempt_at_s,
            "next_renewal_reason": a.next_renewal_reason.map(|r| r.describe()),
            "renewal_window": a.renewal_window.map(|w| serde_json::json!({
                "start_s": w.start_s, "end_s": w.end_s, "chosen_s": w.chosen_s,
            })),
        })),
        "users": users.iter().map(|u| serde_json::json!({
            "id": hex::encode(u.id), "name": u.name, "owner": u.is_owner, "revoked": u.revoked,
        })).collect::<Vec<_>>(),
        "services": services,
    }))
    .into_response()
}

async fn create_invitation(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = owner(&state, &headers).await {
        return response;
    }
    let request: api::CreateInvitation = match api::parse_body(&body) {
        Ok(request) => request,
        Err(error) => return body_error(error),
    };
    if !api::is_valid_name(&request.name) {
        return auth_error(AuthError::BadName);
    }
    let token = random_hex(32);
    let now = now_s();
    let stored = token.clone();
    if let Err(error) = state
        .store
        .call(move |s| {
            s.create_invitation(
                &stored,
                &request.name,
                now,
                now + auth::INVITATION_LIFETIME_S,
            )
        })
        .await
    {
        return storage_failed(&error);
    }
    let origin = state.origins.first().cloned().unwrap_or_default();
    Json(serde_json::json!({"link": format!("{origin}/invite#{token}")})).into_response()
}

async fn withdraw_invitation(
    State(state): Shared,
    headers: HeaderMap,
    Path(handle): Path<String>,
) -> Response {
    if let Err(response) = owner(&state, &headers).await {
        return response;
    }
    match state
        .store
        .call(move |s| s.withdraw_invitation(&handle))
        .await
    {
        Ok(true) => Json(serde_json::json!({"ok": true})).into_response(),
        Ok(false) => error_response(StatusCode::NOT_FOUND, "no such invitation"),
        Err(error) => storage_failed(&error),
    }
}

async fn revoke_user(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = owner(&state, &headers).await {
        return response;
    }
    let Some(user_id) = hex::decode(&id)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
    else {
        return error_response(StatusCode::NOT_FOUND, "no such user");
    };
    match state.store.call(move |s| s.revoke_user(&user_id)).await {
        Ok(true) => {
            tracing::info!("the owner revoked a user");
            Json(serde_json::json!({"ok": true})).into_response()
        }
        Ok(false) => error_response(StatusCode::NOT_FOUND, "no such user"),
        Err(error) => storage_failed(&error),
    }
}

async fn revoke_passkey(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Ok(owner_user) = owner(&state, &headers).await else {
        return error_response(StatusCode::FORBIDDEN, "owner only");
    };
    let Ok(credential_id) = hex::decode(&id) else {
        return error_response(StatusCode::NOT_FOUND, "no such passkey");
    };
    // The owner keeps at least one passkey, or nobody could ever sign in as owner again.
    // The check and the deletion run in one blocking call, as before.
    let revoked = state
        .store
        .call(move |s| {
            if let Ok(Some(passkey)) = s.passkey(&credential_id)
                && passkey.user_id == owner_user.id
                && s.passkeys_of(&owner_user.id).map(|p| p.len()).unwrap_or(0) <= 1
            {
                return Ok(None);
            }
            s.revoke_passkey(&credential_id).map(Some)
        })
        .await;
    match revoked {
        Ok(None) => error_response(StatusCode::CONFLICT, "the owner's last passkey stays"),
        Ok(Some(true)) => Json(serde_json::json!({"ok": true})).into_response(),
        Ok(Some(false)) => error_response(StatusCode::NOT_FOUND, "no such passkey"),
        Err(error) => storage_failed(&error),
    }
}
