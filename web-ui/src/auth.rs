//! Passkeys and sessions: the WebAuthn ceremonies (owner setup with the one-time code,
//! invitations, adding a passkey, usernameless sign-in), session tokens with rotation, and
//! the sign-in rate limit.
//!
//! Ceremony state lives in memory only, for [`CEREMONY_LIFETIME_S`], and each is used at
//! most once. This module must never log a token, a code or a credential.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::security::random_hex;
use crate::store::{Store, StoreError, StoredPasskey, User};

/// How long a begun ceremony may take to finish.
pub const CEREMONY_LIFETIME_S: i64 = 300;
/// Most ceremonies held at once; the oldest go first.
pub const MAX_CEREMONIES: usize = 4096;
/// A session expires this long after it was opened or last rotated.
pub const SESSION_LIFETIME_S: i64 = 3600;
/// A session older than this is given a new token on its next request.
pub const SESSION_ROTATE_AFTER_S: i64 = 600;
/// No session outlives this, however often it rotates; then the user signs in again.
pub const SESSION_ABSOLUTE_MAX_S: i64 = 12 * 3600;
/// How long sessions live; the constants above by default, shorter in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session expires this long after it was opened or last rotated.
    pub lifetime_s: i64,
    /// A session older than this gets a new token on its next request.
    pub rotate_after_s: i64,
    /// No session outlives this from its sign-in.
    pub absolute_max_s: i64,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            lifetime_s: SESSION_LIFETIME_S,
            rotate_after_s: SESSION_ROTATE_AFTER_S,
            absolute_max_s: SESSION_ABSOLUTE_MAX_S,
        }
    }
}

/// Invitations are valid this long.
pub const INVITATION_LIFETIME_S: i64 = 7 * 24 * 3600;
/// Sign-in and registration attempts one client address may make at once (a token
/// bucket's size); then one more each [`SIGN_IN_REFILL`].
pub const SIGN_IN_BURST: u32 = 20;
/// How often an address's sign-in bucket gains an attempt back. Smooth: a flood from an
/// address shared by many users (NAT, a proxy, QEMU's user network) delays the others by
/// at most this once it stops.
pub const SIGN_IN_REFILL: Duration = Duration::from_secs(1);
/// Sign-in attempts with one credential (passkey id) at once; then one each
/// [`CREDENTIAL_REFILL`]. Counted apart from the address, so that no address can spend
/// another user's attempts.
pub const CREDENTIAL_BURST: u32 = 5;
/// How often a credential's bucket gains an attempt back.
pub const CREDENTIAL_REFILL: Duration = Duration::from_secs(10);

/// What can go wrong in a ceremony. Messages are fixed text, safe to show.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown, expired or already used ceremony.
    #[error("this sign-in attempt expired; start again")]
    UnknownCeremony,
    /// The setup code is wrong or used.
    #[error("the setup code is not valid")]
    BadSetupCode,
    /// The invitation is unknown, used or expired.
    #[error("the invitation is not valid")]
    BadInvitation,
    /// The authenticator's answer did not verify.
    #[error("the passkey could not be verified")]
    Verification,
    /// The passkey is not registered here (or was revoked).
    #[error("this passkey is not registered here")]
    UnknownPasskey,
    /// The account is revoked.
    #[error("this account is revoked")]
    Revoked,
    /// The name is not acceptable.
    #[error("the name must be 1 to 64 characters")]
    BadName,
    /// Too many attempts.
    #[error("too many attempts; wait a minute")]
    RateLimited,
    /// The database failed.
    #[error("the box could not store this")]
    Store(#[from] StoreError),
}

enum Ceremony {
    Setup {
        registration: PasskeyRegistration,
        user: User,
        code: String,
    },
    Invitation {
        registration: PasskeyRegistration,
        user: User,
        token: String,
    },
    AddPasskey {
        registration: PasskeyRegistration,
        user_id: [u8; 16],
        label: String,
    },
    SignIn {
        authentication: DiscoverableAuthentication,
    },
}

impl std::fmt::Debug for Ceremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Setup { .. } => "setup",
            Self::Invitation { .. } => "invitation",
            Self::AddPasskey { .. } => "add-passkey",
            Self::SignIn { .. } => "sign-in",
        };
        f.write_str(kind)
    }
}

/// The passkey side of the server.
#[derive(Debug)]
pub struct Passkeys {
    webauthn: Webauthn,
    ceremonies: Mutex<HashMap<String, (i64, Ceremony)>>,
}

/// A begun ceremony: its id and the options for `navigator.credentials`.
#[derive(Debug, serde::Serialize)]
pub struct Begun<T> {
    /// The id the finish call must quote.
    pub ceremony: String,
    /// The options, in WebAuthn's JSON form.
    pub options: T,
}

fn user_handle(user: &User) -> Uuid {
    Uuid::from_bytes(user.id)
}

impl Passkeys {
    /// Passkeys for relying party `rp_id` (the domain) at `origin` (`https://domain[:port]`).
    pub fn new(rp_id: &str, origin: &Url) -> Result<Self, webauthn_rs::prelude::WebauthnError> {
        let webauthn = WebauthnBuilder::new(rp_id, origin)?
            .rp_name("Cloister")
            .build()?;
        Ok(Self {
            webauthn,
            ceremonies: Mutex::new(HashMap::new()),
        })
    }

    fn remember(&self, now_s: i64, ceremony: Ceremony) -> String {
        let id = random_hex(16);
        let mut ceremonies = self.ceremonies.lock().unwrap_or_else(|p| p.into_inner());
        ceremonies.retain(|_, (created, _)| now_s - *created < CEREMONY_LIFETIME_S);
        if ceremonies.len() >= MAX_CEREMONIES
            && let Some(oldest) = ceremonies
                .iter()
                .min_by_key(|(_, (created, _))| *created)
                .map(|(id, _)| id.clone())
        {
            ceremonies.remove(&oldest);
        }
        ceremonies.insert(id.clone(), (now_s, ceremony));
        id
    }

    fn take(&self, id: &str, now_s: i64) -> Result<Ceremony, AuthError> {
        let mut ceremonies = self.ceremonies.lock().unwrap_or_else(|p| p.into_inner());
        match ceremonies.remove(id) {
            Some((created, ceremony)) if now_s - created < CEREMONY_LIFETIME_S => Ok(ceremony),
            _ => Err(AuthError::UnknownCeremony),
        }
    }

    fn start_registration(
        &self,
        user: &User,
        exclude: Option<Vec<webauthn_rs::prelude::CredentialID>>,
    ) -> Result<(serde_json::Value, PasskeyRegistration), AuthError> {
        let (options, registration) = self
            .webauthn
            .start_passkey_registration(user_handle(user), &user.name, &user.name, exclude)
            .map_err(|_| AuthError::Verification)?;
        let mut options = serde_json::to_value(options).map_err(|_| AuthError::Verification)?;
        // Discoverable ("resident") credentials, so sign-in needs no user name.
        options["publicKey"]["authenticatorSelection"] = serde_json::json!({
            "residentKey": "required",
            "requireResidentKey": true,
            "userVerification": "required",
        });
        Ok((options, registration))
    }

    /// Starts the owner's first registration, if `code` is the valid setup code.
    pub fn begin_setup(
        &self,
        store: &Store,
        code: &str,
        name: &str,
        now_s: i64,
    ) -> Result<Begun<serde_json::Value>, AuthError> {
        if !crate::api::is_valid_name(name) {
            return Err(AuthError::BadName);
        }
        if !store.setup_code_is_valid(code)? {
            return Err(AuthError::BadSetupCode);
        }
        let user = User {
            id: crate::security::random_16(),
            name: name.to_owned(),
            is_owner: true,
            created_at_s: now_s,
            revoked: false,
        };
        let (options, registration) = self.start_registration(&user, None)?;
        let ceremony = self.remember(
            now_s,
            Ceremony::Setup {
                registration,
                user,
                code: code.to_owned(),
            },
        );
        Ok(Begun { ceremony, options })
    }

    /// Starts registration for an invited user.
    pub fn begin_invitation(
        &self,
        store: &Store,
        token: &str,
        now_s: i64,
    ) -> Result<Begun<serde_json::Value>, AuthError> {
        let name = store
            .invitation_name(token, now_s)?
            .ok_or(AuthError::BadInvitation)?;
        let user = User {
            id: crate::security::random_16(),
            name,
            is_owner: false,
            created_at_s: now_s,
            revoked: false,
        };
        let (options, registration) = self.start_registration(&user, None)?;
        let ceremony = self.remember(
            now_s,
            Ceremony::Invitation {
                registration,
                user,
                token: token.to_owned(),
            },
        );
        Ok(Begun { ceremony, options })
    }

    /// Starts registration of another passkey for a signed-in user.
    pub fn begin_add_passkey(
        &self,
        store: &Store,
        user: &User,
        label: &str,
        now_s: i64,
    ) -> Result<Begun<serde_json::Value>, AuthError> {
        let existing = store.passkeys_of(&user.id)?;
        let exclude = existing.iter().map(|p| p.credential_id.clone()).collect();
        let (options, registration) = self.start_registration(user, Some(exclude))?;
        let label = if label.is_empty() {
            format!("passkey {}", existing.len() + 1)
        } else if crate::api::is_valid_name(label) {
            label.to_owned()
        } else {
            return Err(AuthError::BadName);
        };
        let ceremony = self.remember(
            now_s,
            Ceremony::AddPasskey {
                registration,
                user_id: user.id,
                label,
            },
        );
        Ok(Begun { ceremony, options })
    }

    /// Finishes any registration ceremony; returns the account that now holds the passkey.
    pub fn finish_registration(
        &self,
        store: &Store,
        ceremony: &str,
        credential: &RegisterPublicKeyCredential,
        now_s: i64,
    ) -> Result<[u8; 16], AuthError> {
        let ceremony = self.take(ceremony, now_s)?;
        let registration = match &ceremony {
            Ceremony::Setup { registration, .. }
            | Ceremony::Invitation { registration, .. }
            | Ceremony::AddPasskey { registration, .. } => registration,
            Ceremony::SignIn { .. } => return Err(AuthError::UnknownCeremony),
        };
        let passkey = self
            .webauthn
            .finish_passkey_registration(credential, registration)
            .map_err(|_| AuthError::Verification)?;
        let credential_id = passkey.cred_id().to_vec();
        if store.passkey(&credential_id)?.is_some() {
            // webauthn-rs asks the caller to refuse a credential registered before.
            return Err(AuthError::Verification);
        }
        let passkey_json = serde_json::to_string(&passkey).map_err(|_| AuthError::Verification)?;
        let stored = |user_id: [u8; 16], label: &str| StoredPasskey {
            credential_id: credential_id.clone(),
            user_id,
            passkey_json: passkey_json.clone(),
            label: label.to_owned(),
            created_at_s: now_s,
            last_used_at_s: 0,
        };
        match ceremony {
            Ceremony::Setup { user, code, .. } => {
                if !store.create_owner_with_code(
                    &code,
                    &user,
                    &stored(user.id, "passkey 1"),
                    now_s,
                )? {
                    return Err(AuthError::BadSetupCode);
                }
                Ok(user.id)
            }
            Ceremony::Invitation { user, token, .. } => {
                if !store.redeem_invitation(&token, &user, &stored(user.id, "passkey 1"), now_s)? {
                    return Err(AuthError::BadInvitation);
                }
                Ok(user.id)
            }
            Ceremony::AddPasskey { user_id, label, .. } => {
                match store.user(&user_id)? {
                    Some(user) if !user.revoked => {}
                    _ => return Err(AuthError::Revoked),
                }
                store.add_passkey(&stored(user_id, &label))?;
                Ok(user_id)
            }
            Ceremony::SignIn { .. } => Err(AuthError::UnknownCeremony),
        }
    }

    /// Starts a usernameless sign-in.
    pub fn begin_sign_in(&self, now_s: i64) -> Result<Begun<RequestChallengeResponse>, AuthError> {
        let (mut options, authentication) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|_| AuthError::Verification)?;
        // A button-started sign-in, not conditional mediation in the address bar.
        options.mediation = None;
        let ceremony = self.remember(now_s, Ceremony::SignIn { authentication });
        Ok(Begun { ceremony, options })
    }

    /// Finishes a sign-in; returns the account.
    pub fn finish_sign_in(
        &self,
        store: &Store,
        ceremony: &str,
        credential: &PublicKeyCredential,
        now_s: i64,
    ) -> Result<User, AuthError> {
        let Ceremony::SignIn { authentication } = self.take(ceremony, now_s)? else {
            return Err(AuthError::UnknownCeremony);
        };
        let (user_handle, credential_id) = self
            .webauthn
            .identify_discoverable_authentication(credential)
            .map_err(|_| AuthError::UnknownPasskey)?;
        let stored = store
            .passkey(credential_id)?
            .ok_or(AuthError::UnknownPasskey)?;
        if stored.user_id != *user_handle.as_bytes() {
            return Err(AuthError::UnknownPasskey);
        }
        let user = store
            .user(&stored.user_id)?
            .ok_or(AuthError::UnknownPasskey)?;
        if user.revoked {
            return Err(AuthError::Revoked);
        }
        let mut passkey: Passkey =
            serde_json::from_str(&stored.passkey_json).map_err(|_| AuthError::Verification)?;
        let result = self
            .webauthn
            .finish_discoverable_authentication_v2(credential, authentication, &passkey)
            .map_err(|_| AuthError::Verification)?;
        passkey.update_credential(&result);
        let passkey_json = serde_json::to_string(&passkey).map_err(|_| AuthError::Verification)?;
        store.update_passkey_use(&stored.credential_id, &passkey_json, now_s)?;
        Ok(user)
    }
}

/// Token buckets, one per key (a client address, a credential id): `burst` attempts at
/// once, then one more every `refill`, so a key that stops is whole again after
/// `burst * refill` and never locked out longer than `refill` after its last attempt.
#[derive(Debug)]
pub struct RateLimiter<K = IpAddr> {
    burst: f64,
    refill: Duration,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

/// Buckets kept at most; full ones are forgotten first.
const MAX_BUCKETS: usize = 65_536;

impl<K: Hash + Eq> RateLimiter<K> {
    /// `burst` attempts at once per key, one more every `refill`.
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(since).as_secs_f64() / self.refill.as_secs_f64();
        (tokens + gained).min(self.burst)
    }

    /// Takes one attempt for `key` now; false if its bucket is empty.
    pub fn allow(&self, key: K) -> bool {
        self.allow_at(key, Instant::now())
    }

    /// [`Self::allow`] at `now`.
    pub fn allow_at(&self, key: K, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            let burst = self.burst;
            buckets.retain(|_, (tokens, since)| self.level(*tokens, *since, now) < burst);
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let (tokens, since) = buckets.entry(key).or_insert((self.burst, now));
        let level = self.level(*tokens, *since, now);
        *since = now;
        if level >= 1.0 {
            *tokens = level - 1.0;
            true
        } else {
            *tokens = level;
            false
        }
    }

    /// How long until `key` has an attempt again (zero if it has one now).
    pub fn wait_for(&self, key: &K) -> Duration {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tokens, since)) = buckets.get(key) else {
            return Duration::ZERO;
        };
        let level = self.level(*tokens, *since, Instant::now());
        if level >= 1.0 {
            Duration::ZERO
        } else {
            self.refill.mul_f64(1.0 - level)
        }
    }
}

/// A new setup code: five groups of four characters from an alphabet without look-alikes
/// (about 100 bits).
pub fn new_setup_code() -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = hex::decode(random_hex(20)).unwrap_or_default();
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_counts_per_key_and_refills_smoothly() {
        let limiter = RateLimiter::new(3, Duration::from_secs(2));
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let t = Instant::now();
        assert!((0..3).all(|_| limiter.allow_at(a, t)));
        assert!(!limiter.allow_at(a, t + Duration::from_millis(100)));
        assert!(limiter.allow_at(b, t + Duration::from_millis(100)));
        // Refused attempts do not push the refill back: one attempt per 2 s, from the start.
        assert!(!limiter.allow_at(a, t + Duration::from_millis(1900)));
        assert!(limiter.allow_at(a, t + Duration::from_millis(2100)));
        assert!(!limiter.allow_at(a, t + Duration::from_millis(2200)));
        // Whole again after burst * refill.
        let later = t + Duration::from_secs(60);
        assert!((0..3).all(|_| limiter.allow_at(a, later)));
        assert!(!limiter.allow_at(a, later));
    }

    #[test]
    fn setup_codes_are_grouped_and_differ() {
        let code = new_setup_code();
        assert_eq!(code.len(), 24);
        assert_eq!(code.split('-').count(), 5);
        assert_ne!(code, new_setup_code());
    }

    #[test]
    fn a_ceremony_is_used_once() {
        let origin = Url::parse("https://localhost:8443").unwrap();
        let passkeys = Passkeys::new("localhost", &origin).unwrap();
        let begun = passkeys.begin_sign_in(1000).unwrap();
        assert!(passkeys.take(&begun.ceremony, 1001).is_ok());
        assert!(matches!(
            passkeys.take(&begun.ceremony, 1001),
            Err(AuthError::UnknownCeremony)
        ));
        let late = passkeys.begin_sign_in(1000).unwrap();
        assert!(
            passkeys
                .take(&late.ceremony, 1000 + CEREMONY_LIFETIME_S)
                .is_err()
        );
    }
}
