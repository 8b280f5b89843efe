//! Automatic certificates through ACME (RFC 8555) with instant-acme.
//!
//! The account key and each certificate key are made in this process; only a CSR goes to
//! the CA. The manager serves the stored certificate at start (a restart never re-issues),
//! renews when a third of the lifetime remains or earlier when the CA's renewal
//! information (ARI, RFC 9773) says so, and on failure keeps the current certificate while
//! retrying with exponential back-off. It must never log or return key material. Database
//! calls go through [`Store::call`], off the async workers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use crate::clock::now_s;
use crate::config::{AcmeSettings, ChallengeKind};
use crate::store::{Store, StoreError, StoredCertificate};
use crate::tls::{self, CertificateResolver, TlsError};

/// What can go wrong while getting a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA answered with an error or could not be reached.
    #[error("the certificate authority: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The CA offered no challenge of the configured kind.
    #[error("the certificate authority offered no {0} challenge")]
    NoChallenge(&'static str),
    /// The order ended in a state other than ready or valid.
    #[error("the order ended as {0}")]
    Order(String),
    /// An authorisation ended invalid.
    #[error("the domain authorisation ended as {0}")]
    Authorization(String),
    /// Making the key or CSR, or reading the certificate, failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored ACME account credentials did not decode.
    #[error("the stored ACME account is damaged")]
    Credentials(#[source] serde_json::Error),
}

/// HTTP-01 tokens and their key authorisations, served on the plain HTTP port.
#[derive(Debug, Default)]
pub struct HttpChallenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl HttpChallenges {
    /// The key authorisation for `token`, if a challenge is under way.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn set(&self, token: &str, key_authorization: &str) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    fn clear(&self) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// How certificate management is going, for the console and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateStatus {
    /// The ACME account URL, once there is an account.
    pub account_url: Option<String>,
    /// The CAA record the owner should publish.
    pub caa_record: Option<String>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// When the next renewal attempt is due, seconds since the Unix epoch.
    pub next_attempt_at_s: Option<i64>,
    /// How many certificates this process obtained.
    pub issued_by_this_process: u32,
    /// The CA's last suggested renewal window for the served certificate (ARI, RFC 9773),
    /// when the CA offers renewal information.
    pub renewal_window: Option<RenewalWindow>,
    /// Why the next renewal is due when it is.
    pub next_renewal_reason: Option<RenewalReason>,
    /// Why the last certificate this process obtained was ordered.
    pub last_renewal_reason: Option<RenewalReason>,
}

/// A renewal window suggested by the CA (RFC 9773 `suggestedWindow`), seconds since the
/// Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    /// The start of the window.
    pub start_s: i64,
    /// The end of the window.
    pub end_s: i64,
    /// The moment this box picked inside the window (RFC 9773 section 4.2: a random time
    /// in the window, so that many clients do not renew at once).
    pub chosen_s: i64,
}

/// Why a certificate is (or was) ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalReason {
    /// There was no stored certificate for the domain.
    NoCertificate,
    /// A third of the certificate's lifetime was left.
    ThirdOfLifetimeLeft,
    /// The CA's renewal information (ARI) suggested an earlier time, for example after
    /// revoking the certificate.
    RenewalInformation,
}

impl RenewalReason {
    /// The reason in the owner's words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoCertificate => "no certificate yet",
            Self::ThirdOfLifetimeLeft => "a third of the lifetime left",
            Self::RenewalInformation => "the CA's renewal information (ARI) asked for it",
        }
    }
}

/// What the CA's renewal information said about one certificate.
struct RenewalAnswer {
    window: RenewalWindow,
    /// The CA's hint for when to ask again (the `Retry-After` header).
    ask_again_in: Duration,
    /// The certificate's ARI identifier, for the new order's `replaces` field.
    identifier: CertificateIdentifier<'static>,
}

/// Gets and renews the certificate for one domain.
#[derive(Debug)]
pub struct CertificateManager {
    domain: String,
    settings: AcmeSettings,
    store: Arc<Store>,
    resolver: Arc<CertificateResolver>,
    http_challenges: Arc<HttpChallenges>,
    status: RwLock<CertificateStatus>,
}

/// When a certificate valid from `not_before_s` to `not_after_s` is due for renewal, and
/// why: when a third of its lifetime remains, or at `ari_chosen_s` (the time picked in the
/// CA's suggested window) if that is earlier.
pub fn renewal_due_at_s(
    not_before_s: i64,
    not_after_s: i64,
    ari_chosen_s: Option<i64>,
) -> (i64, RenewalReason) {
    let lifetime = (not_after_s - not_before_s).max(0);
    let third_left = not_after_s - lifetime / 3;
    match ari_chosen_s {
        Some(chosen) if chosen < third_left => (chosen, RenewalReason::RenewalInformation),
        _ => (third_left, RenewalReason::ThirdOfLifetimeLeft),
    }
}

/// The time to renew inside the suggested window `[start_s, end_s]`: the point at
/// `fraction` (0 to 1) of the way through it. RFC 9773 asks for a uniformly random time;
/// the caller draws `fraction` once per certificate so that asking again does not move it.
pub fn time_in_window_s(start_s: i64, end_s: i64, fraction: f64) -> i64 {
    let length = end_s.saturating_sub(start_s).max(0);
    // Lossy on purpose: a window is far shorter than 2^52 seconds.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let offset = (length as f64 * fraction.clamp(0.0, 1.0)) as i64;
    start_s.saturating_add(offset.min(length))
}

/// A fraction in [0, 1) that stays the same for one certificate and differs between
/// certificates (and so between boxes): the first 8 bytes of SHA-256 of the DER.
fn window_fraction(certificate_der: &[u8]) -> f64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(certificate_der);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The top 53 bits, as f64 holds them exactly.
    #[allow(clippy::cast_precision_loss)]
    let value = (u64::from_be_bytes(first) >> 11) as f64;
    value / (1u64 << 53) as f64
}

/// How long to wait before asking the CA's renewal information again: its `Retry-After`
/// hint, but at least a minute (or `longest`, if shorter) and at most `longest`.
pub fn renewal_info_recheck(ask_again_in: Duration, longest: Duration) -> Duration {
    let shortest = Duration::from_secs(60).min(longest);
    ask_again_in.clamp(shortest, longest)
}

/// The next wait after `failures` consecutive failures: `min` doubled each time, capped.
pub fn retry_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    min.checked_mul(factor).unwrap_or(max).min(max)
}

/// The CAA record binding the domain to this account (RFC 8657 `accounturi`).
pub fn caa_record(domain: &str, issuer: &str, account_url: &str) -> String {
    format!("{domain}. IN CAA 0 issue \"{issuer}; accounturi={account_url}\"")
}

fn guess_caa_issuer(directory_url: &str) -> String {
    if directory_url.contains("letsencrypt.org") {
        "letsencrypt.org".to_owned()
    } else if directory_url.contains("zerossl.com") {
        "sectigo.com".to_owned()
    } else {
        url::Url::parse(directory_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "ca.example".to_owned())
    }
}

impl CertificateManager {
    /// A manager for `domain`; nothing happens until [`Self::run`].
    pub fn new(
        domain: String,
        settings: AcmeSettings,
        store: Arc<Store>,
        resolver: Arc<CertificateResolver>,
        http_challenges: Arc<HttpChallenges>,
    ) -> Self {
        Self {
            domain,
            settings,
            store,
            resolver,
            http_challenges,
            status: RwLock::new(CertificateStatus::default()),
        }
    }

    /// The current status.
    pub fn status(&self) -> CertificateStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update_status(&self, change: impl FnOnce(&mut CertificateStatus)) {
        change(&mut self.status.write().unwrap_or_else(|p| p.into_inner()));
    }

    fn account_builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        Ok(match &self.settings.ca_root_pem {
            Some(path) => Account::builder_with_root(path)?,
            None => Account::builder()?,
        })
    }

    /// Restores the stored account for this directory, or creates one and stores it.
    pub async fn account(&self) -> Result<Account, AcmeError> {
        let directory = &self.settings.directory_url;
        let lookup = directory.clone();
        let account = match self.store.call(move |s| s.acme_account(&lookup)).await? {
            Some((credentials_json, _)) => {
                let credentials =
                    serde_json::from_str(&credentials_json).map_err(AcmeError::Credentials)?;
                self.account_builder()?
                    .from_credentials(credentials)
                    .await?
            }
            None => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let external = self
                    .settings
                    .external_account
                    .as_ref()
                    .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
                let (account, credentials) = self
                    .account_builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        external.as_ref(),
                    )
                    .await?;
                let credentials_json =
                    serde_json::to_string(&credentials).map_err(AcmeError::Credentials)?;
                let (directory, account_url) = (directory.clone(), account.id().to_owned());
                self.store
                    .call(move |s| s.put_acme_account(&directory, &credentials_json, &account_url))
                    .await?;
                tracing::info!(account = account.id(), "created the ACME account");
                account
            }
        };
        let issuer = self
            .settings
            .caa_issuer
            .clone()
            .unwrap_or_else(|| guess_caa_issuer(directory));
        let record = caa_record(&self.domain, &issuer, account.id());
        let first_time = self.status().caa_record.as_deref() != Some(record.as_str());
        if first_time {
            tracing::info!(
                "publish this CAA record so only this box can get certificates: {record}"
            );
        }
        self.update_status(|s| {
            s.account_url = Some(account.id().to_owned());
            s.caa_record = Some(record);
        });
        Ok(account)
    }

    /// Runs one issuance: order, challenge, CSR, certificate. Stores and serves the result.
    /// `replaces` names the certificate this one renews (RFC 9773 section 5), for a CA
    /// that offers renewal information.
    pub async fn issue(
        &self,
        account: &Account,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<StoredCertificate, AcmeError> {
        let result = self.issue_inner(account, replaces).await;
        self.http_challenges.clear();
        self.resolver.clear_challenge(&self.domain);
        let stored = result?;
        let row = stored.clone();
        self.store.call(move |s| s.put_certificate(&row)).await?;
        self.resolver.replace(tls::served_certificate(&stored)?);
        tracing::info!(
            domain = %self.domain,
            not_after_s = stored.not_after_s,
            "serving a new certificate"
        );
        Ok(stored)
    }

    async fn issue_inner(
        &self,
        account: &Account,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<StoredCertificate, AcmeError> {
        let identifiers = [Identifier::Dns(self.domain.clone())];
        let order = match replaces {
            Some(replaces) => {
                match account
                    .new_order(&NewOrder::new(&identifiers).replaces(replaces))
                    .await
                {
                    Ok(order) => Ok(order),
                    // A CA may refuse the `replaces` (say, already replaced by an order
                    // that failed later); a plain order still renews.
                    Err(instant_acme::Error::Api(problem)) => {
                        tracing::info!(problem = %problem, "order with `replaces` refused; ordering without");
                        account.new_order(&NewOrder::new(&identifiers)).await
                    }
                    Err(error) => Err(error),
                }
            }
            None => account.new_order(&NewOrder::new(&identifiers)).await,
        };
        let mut order = order?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError::Authorization(format!("{other:?}"))),
            }
            let (kind, name) = match self.settings.challenge {
                ChallengeKind::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
                ChallengeKind::Http01 => (ChallengeType::Http01, "http-01"),
            };
            let mut challenge = authorization
                .challenge(kind)
                .ok_or(AcmeError::NoChallenge(name))?;
            let key_authorization = challenge.key_authorization();
            match self.settings.challenge {
                ChallengeKind::Http01 => self
                    .http_challenges
                    .set(&challenge.token, key_authorization.as_str()),
                ChallengeKind::TlsAlpn01 => {
                    let certificate = tls::alpn_challenge_certificate(
                        &self.domain,
                        key_authorization.digest().as_ref(),
                    )?;
                    self.resolver.set_challenge(&self.domain, certificate);
                }
            }
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order(format!("{status:?}")));
        }
        // The certificate key is made here and only the CSR leaves.
        let key = KeyPair::generate().map_err(TlsError::from)?;
        let mut params =
            CertificateParams::new(vec![self.domain.clone()]).map_err(TlsError::from)?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(TlsError::from)?;
        order.finalize_csr(csr.der()).await?;
        let chain_pem = order.poll_certificate(&retries).await?;
        let leaf: CertificateDer<'static> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .next()
            .ok_or(TlsError::Pem("the CA sent no certificate"))?
            .map_err(|_| TlsError::Pem("the CA sent a bad certificate"))?;
        let facts = tls::certificate_facts(leaf.as_ref())?;
        Ok(StoredCertificate {
            domain: self.domain.clone(),
            chain_pem,
            key_pem: key.serialize_pem(),
            not_before_s: facts.not_before_s,
            not_after_s: facts.not_after_s,
            issued_at_s: now_s(),
        })
    }

    /// Asks the CA's renewal information (ARI) when it would like this certificate renewed.
    /// `None` when the CA offers no renewal information or the answer did not come.
    async fn renewal_info(
        &self,
        account: &Account,
        stored: &StoredCertificate,
    ) -> Option<RenewalAnswer> {
        let leaf = rustls_pemfile::certs(&mut stored.chain_pem.as_bytes())
            .next()?
            .ok()?;
        // base64url(AKI keyIdentifier) "." base64url(serial), made by instant-acme.
        let identifier = CertificateIdentifier::try_from(&leaf).ok()?;
        match account.renewal_info(&identifier).await {
            Ok((info, ask_again_in)) => {
                let start_s = info.suggested_window.start.unix_timestamp();
                let end_s = info.suggested_window.end.unix_timestamp();
                let chosen_s = time_in_window_s(start_s, end_s, window_fraction(leaf.as_ref()));
                Some(RenewalAnswer {
                    window: RenewalWindow {
                        start_s,
                        end_s,
                        chosen_s,
                    },
                    ask_again_in,
                    identifier: identifier.into_owned(),
                })
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(error) => {
                tracing::debug!(error = %error, "renewal information unavailable");
                None
            }
        }
    }

    /// Keeps a valid certificate served until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        let mut account: Option<Account> = None;
        loop {
            let domain = self.domain.clone();
            let stored = match self.store.call(move |s| s.certificate(&domain)).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::error!(error = %error, "cannot read the stored certificate");
                    None
                }
            };
            if account.is_none() {
                match self.account().await {
                    Ok(restored) => account = Some(restored),
                    Err(error) => {
                        failures += 1;
                        if !self.back_off(failures, &error, &mut shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(current_account) = account.clone() else {
                continue;
            };
            let longest_wait = self.settings.renewal_info_recheck_max;
            let mut replaces = None;
            let (due_at_s, reason, recheck) = match &stored {
                None => (now_s(), RenewalReason::NoCertificate, longest_wait),
                Some(stored) => {
                    let answer = self.renewal_info(&current_account, stored).await;
                    let (due_at_s, reason) = renewal_due_at_s(
                        stored.not_before_s,
                        stored.not_after_s,
                        answer.as_ref().map(|a| a.window.chosen_s),
                    );
                    let recheck = answer.as_ref().map_or(longest_wait, |a| {
                        renewal_info_recheck(a.ask_again_in, longest_wait)
                    });
                    self.update_status(|s| s.renewal_window = answer.as_ref().map(|a| a.window));
                    replaces = answer.map(|a| a.identifier);
                    (due_at_s, reason, recheck)
                }
            };
            self.update_status(|s| s.next_renewal_reason = Some(reason));
            let now = now_s();
            if due_at_s > now {
                self.update_status(|s| s.next_attempt_at_s = Some(due_at_s));
                // Wake in time to ask the renewal information again.
                let wait =
                    Duration::from_secs(u64::try_from(due_at_s - now).unwrap_or(0)).min(recheck);
                if !sleep_or_shutdown(wait, &mut shutdown).await {
                    return;
                }
                continue;
            }
            tracing::info!(domain = %self.domain, reason = reason.describe(), "ordering a certificate");
            match self.issue(&current_account, replaces).await {
                Ok(_) => {
                    failures = 0;
                    self.update_status(|s| {
                        s.last_error = None;
                        s.issued_by_this_process += 1;
                        s.last_renewal_reason = Some(reason);
                    });
                }
                Err(error) => {
                    failures += 1;
                    if matches!(error, AcmeError::Protocol(_)) && failures.is_multiple_of(4) {
                        // Maybe the directory moved or the account is gone: start afresh.
                        account = None;
                    }
                    if !self.back_off(failures, &error, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn back_off(
        &self,
        failures: u32,
        error: &AcmeError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let delay = retry_delay(failures, self.settings.retry_min, self.settings.retry_max);
        let next = now_s() + i64::try_from(delay.as_secs()).unwrap_or(i64::MAX / 2);
        tracing::warn!(
            error = %error,
            retry_in_s = delay.as_secs(),
            "certificate renewal failed; still serving the current certificate"
        );
        self.update_status(|s| {
            s.last_error = Some(error.to_string());
            s.next_attempt_at_s = Some(next);
        });
        sleep_or_shutdown(delay, shutdown).await
    }
}

/// Sleeps; false if shutdown came first.
async fn sleep_or_shutdown(wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = shutdown.changed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_left_or_at_the_ari_time() {
        use RenewalReason::{RenewalInformation, ThirdOfLifetimeLeft};
        assert_eq!(renewal_due_at_s(0, 90, None), (60, ThirdOfLifetimeLeft));
        assert_eq!(
            renewal_due_at_s(1000, 1300, None),
            (1200, ThirdOfLifetimeLeft)
        );
        assert_eq!(renewal_due_at_s(0, 90, Some(30)), (30, RenewalInformation));
        // A time in the past (a revoked certificate) means now.
        assert_eq!(renewal_due_at_s(0, 90, Some(-5)), (-5, RenewalInformation));
        // ARI never delays renewal past the one-third point.
        assert_eq!(renewal_due_at_s(0, 90, Some(80)), (60, ThirdOfLifetimeLeft));
    }

    #[test]
    fn the_time_in_the_window_is_inside_it_and_fixed_per_certificate() {
        assert_eq!(time_in_window_s(100, 200, 0.0), 100);
        assert_eq!(time_in_window_s(100, 200, 0.5), 150);
        assert_eq!(time_in_window_s(100, 200, 1.0), 200);
        assert_eq!(time_in_window_s(100, 200, 7.0), 200);
        // A backwards window collapses to its start.
        assert_eq!(time_in_window_s(200, 100, 0.5), 200);
        let a = window_fraction(b"certificate a");
        assert_eq!(a, window_fraction(b"certificate a"));
        assert_ne!(a, window_fraction(b"certificate b"));
        let fractions: Vec<f64> = (0u32..1000)
            .map(|i| window_fraction(&i.to_be_bytes()))
            .collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let below_half = fractions.iter().filter(|f| **f < 0.5).count();
        assert!(
            (400..600).contains(&below_half),
            "{below_half} of 1000 below 0.5"
        );
    }

    #[test]
    fn renewal_information_is_asked_again_within_bounds() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            renewal_info_recheck(Duration::ZERO, hour),
            Duration::from_secs(60)
        );
        assert_eq!(
            renewal_info_recheck(Duration::from_secs(600), hour),
            Duration::from_secs(600)
        );
        assert_eq!(renewal_info_recheck(6 * hour, hour), hour);
        // A test's short ceiling also lowers the floor.
        let second = Duration::from_secs(1);
        assert_eq!(renewal_info_recheck(6 * hour, second), second);
    }

    #[test]
    fn retries_back_off_from_one_minute_to_six_hours() {
        let min = Duration::from_secs(60);
        let max = Duration::from_secs(6 * 3600);
        assert_eq!(retry_delay(1, min, max), Duration::from_secs(60));
        assert_eq!(retry_delay(2, min, max), Duration::from_secs(120));
        assert_eq!(retry_delay(3, min, max), Duration::from_secs(240));
        assert_eq!(retry_delay(9, min, max), Duration::from_secs(60 * 256));
        assert_eq!(retry_delay(10, min, max), Duration::from_secs(6 * 3600));
        assert_eq!(retry_delay(200, min, max), Duration::from_secs(6 * 3600));
    }

    #[test]
    fn the_caa_record_names_the_account() {
        assert_eq!(
            caa_record("chat.example.org", "letsencrypt.org", "https://acme/acct/7"),
            "chat.example.org. IN CAA 0 issue \"letsencrypt.org; accounturi=https://acme/acct/7\""
        );
        assert_eq!(
            guess_caa_issuer("https://acme-v02.api.letsencrypt.org/directory"),
            "letsencrypt.org"
        );
    }
}
