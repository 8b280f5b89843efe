//! The HTTPS front of the box. It owns the TLS key, made inside the box, and must never log
//! or echo chat content or secrets.
//!
//! [`start`] opens the state database, picks the certificate (stored, self-signed, or from
//! ACME in the background), binds the HTTPS and plain HTTP listeners, and returns a
//! [`RunningServer`]. The binary `web-ui` is a thin wrapper over it.

#![forbid(unsafe_code)]

pub mod acme;
pub mod api;
pub mod attestation;
pub mod auth;
pub mod chat;
pub mod clock;
pub mod config;
pub mod console;
pub mod history;
pub mod model_client;
pub mod pages;
pub mod routes;
pub mod security;
pub mod server;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acme::{CertificateManager, HttpChallenges};
use crate::auth::{Passkeys, RateLimiter};
use crate::clock::now_s;
use crate::config::Settings;
use crate::routes::{AppState, Assets};
use crate::store::Store;
use crate::tls::CertificateResolver;

/// The self-signed certificate is replaced when it has less than this left.
pub const SELF_SIGNED_RENEW_BEFORE_S: i64 = 30 * 24 * 3600;
/// How often expired sessions and invitations are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// The database key of the self-signed certificate.
const SELF_SIGNED_KEY: &str = "";

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A certificate could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A port could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The domain is not a valid DNS name.
    #[error("the domain is not a valid DNS name")]
    BadDomain,
    /// The attested chat could not be set up.
    #[error(transparent)]
    Chat(#[from] chat::ChatError),
    /// WebAuthn refused the origin.
    #[error("passkeys cannot work with this origin")]
    Origin,
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    /// Where HTTPS listens.
    pub https_address: SocketAddr,
    /// Where plain HTTP listens, if it does.
    pub http_address: Option<SocketAddr>,
    /// The one-time owner setup code, while the box has no owner.
    pub setup_code: Option<String>,
    /// Everything the handlers share.
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets connections finish briefly, and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Waits until the server stops (it stops only through [`Self::stop`] or an error).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn load_or_make_self_signed(
    store: &Store,
    names: &[String],
) -> Result<tls::ServedCertificate, StartError> {
    let now = now_s();
    if let Some(stored) = store.certificate(SELF_SIGNED_KEY)?
        && let Ok(served) = tls::served_certificate(&stored)
        && served.facts.names == names
        && stored.not_after_s - now > SELF_SIGNED_RENEW_BEFORE_S
    {
        return Ok(served);
    }
    let stored = tls::self_signed_certificate(names, now)?;
    store.put_certificate(&stored)?;
    Ok(tls::served_certificate(&stored)?)
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })
}

/// Starts the server as `settings` say; returns once it listens.
pub async fn start(settings: Settings) -> Result<RunningServer, StartError> {
    if let Some(domain) = &settings.domain
        && !config::is_valid_domain(domain)
    {
        return Err(StartError::BadDomain);
    }
    let store = Arc::new(Store::open(&settings.state_dir)?);
    let host = settings
        .domain
        .clone()
        .unwrap_or_else(|| "localhost".to_owned());

    // The certificate: the stored one for the domain (restarts never re-issue), else the
    // self-signed one until ACME delivers.
    let stored_for_domain = match &settings.domain {
        Some(domain) => store.certificate(domain)?,
        None => None,
    };
    let served = match stored_for_domain.as_ref().map(tls::served_certificate) {
        Some(Ok(served)) => served,
        _ => load_or_make_self_signed(&store, std::slice::from_ref(&host))?,
    };
    let resolver = Arc::new(CertificateResolver::new(served));
    let tls_config = tls::server_config(resolver.clone())?;

    let https_listener = bind(SocketAddr::new(
        settings.listen_address,
        settings.https_port,
    ))
    .await?;
    let https_address = https_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            address: SocketAddr::new(settings.listen_address, settings.https_port),
            source,
        })?;
    let http_listener = match settings.http_port {
        Some(port) => Some(bind(SocketAddr::new(settings.listen_address, port)).await?),
        None => None,
    };
    let http_address = http_listener.as_ref().and_then(|l| l.local_addr().ok());

    let public_port = settings.public_https_port.unwrap_or(https_address.port());
    let public_authority = if public_port == 443 {
        host.clone()
    } else {
        format!("{host}:{public_port}")
    };
    let origin = format!("https://{public_authority}");
    let origin_url = webauthn_rs::prelude::Url::parse(&origin).map_err(|_| StartError::Origin)?;
    let passkeys = Passkeys::new(&host, &origin_url).map_err(|_| StartError::Origin)?;

    let http_challenges = Arc::new(HttpChallenges::default());
    let certificates = match (&settings.domain, &settings.acme) {
        (Some(domain), Some(acme_settings)) => Some(Arc::new(CertificateManager::new(
            domain.clone(),
            acme_settings.clone(),
            store.clone(),
            resolver.clone(),
            http_challenges.clone(),
        ))),
        _ => None,
    };

    let setup_code = if store.has_owner()? {
        None
    } else {
        let code = auth::new_setup_code();
        store.replace_setup_code(&code, now_s())?;
        Some(code)
    };

    let state = Arc::new(AppState {
        store: store.clone(),
        passkeys,
        resolver: resolver.clone(),
        certificates: certificates.clone(),
        http_challenges,
        settings: settings.clone(),
        origins: Arc::new(vec![origin]),
        public_authority,
        sign_in_limiter: RateLimiter::new(auth::SIGN_IN_BURST, auth::SIGN_IN_REFILL),
        credential_limiter: RateLimiter::new(auth::CREDENTIAL_BURST, auth::CREDENTIAL_REFILL),
        body_budget: Arc::new(tokio::sync::Semaphore::new(
            settings.limits.max_body_bytes_in_flight,
        )),
        assets: Assets::default(),
        chat: Arc::new(chat::ChatState::new(&settings.chat, &settings.state_dir)?),
    });

    let (shutdown, shutdown_receiver) = watch::channel(false);
    let limits = settings.limits;
    let error_headers = server::ErrorHeaders::new(state.chat.is_simulated());
    let mut tasks = vec![tokio::spawn(server::serve_https(
        https_listener,
        tls_config,
        routes::https_router(state.clone()),
        limits,
        error_headers.clone(),
        shutdown_receiver.clone(),
    ))];
    if let Some(listener) = http_listener {
        tasks.push(tokio::spawn(server::serve_plain_http(
            listener,
            routes::http_router(state.clone()),
            limits,
            error_headers,
            shutdown_receiver.clone(),
        )));
    }
    if let Some(manager) = certificates {
        tasks.push(tokio::spawn(manager.run(shutdown_receiver.clone())));
    }
    let mut sweep_shutdown = shutdown_receiver;
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWEEP_INTERVAL) => {
                    if let Err(error) = store.call(|s| s.sweep_expired(now_s())).await {
                        tracing::warn!(error = %error, "cannot sweep expired sessions");
                    }
                }
                _ = sweep_shutdown.changed() => return,
            }
        }
    }));

    Ok(RunningServer {
        https_address,
        http_address,
        setup_code,
        state,
        shutdown,
        tasks,
    })
}
