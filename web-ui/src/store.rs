//! The box's database: accounts, passkeys, invitations, sessions, the setup code and the
//! ACME state, in one SQLite file inside the state folder.
//!
//! Every public method is one transaction, committed with `synchronous=FULL` in WAL mode,
//! so a write that returned `Ok` survives a crash or a SIGKILL. Secrets that the browser
//! holds (session tokens, invitation links, the setup code) are stored only as SHA-256
//! hashes. This module must never log a row's secret content.
//!
//! The methods block (a commit waits for `fsync`), so async code never calls them on a
//! runtime worker: it goes through [`Store::call`], which runs them on tokio's blocking
//! pool.
//!
//! [`open_database`] is how every SQLite file of the box is opened (this one and the chat
//! history's), so that they share one set of durability and privacy settings.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

/// The database file's name inside the state folder.
pub const DATABASE_FILE_NAME: &str = "web-ui.sqlite3";

/// What can go wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state folder or the database file could not be created or secured.
    #[error("cannot prepare the state folder {path}")]
    StateFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be created or made private.
    #[error("cannot prepare the database file {path}")]
    DatabaseFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite reported an error.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("a stored record is damaged: {0}")]
    Damaged(&'static str),
    /// The blocking task that ran the database call panicked or was cancelled.
    #[error("the database call did not finish")]
    Interrupted,
}

/// A person with an account on the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The WebAuthn user handle: 16 random bytes, stable for the account's life.
    pub id: [u8; 16],
    /// The name the owner or the invitation gave.
    pub name: String,
    /// Whether this is the box's owner (who sees the console).
    pub is_owner: bool,
    /// Seconds since the Unix epoch.
    pub created_at_s: i64,
    /// Set once the owner revoked the account; a revoked user cannot sign in.
    pub revoked: bool,
}

/// One stored passkey, as webauthn-rs serialises it.
#[derive(Debug, Clone)]
pub struct StoredPasskey {
    /// The credential ID, raw bytes.
    pub credential_id: Vec<u8>,
    /// The account it belongs to.
    pub user_id: [u8; 16],
    /// webauthn-rs `Passkey` as JSON (public key and counter; no secret).
    pub passkey_json: String,
    /// A short label shown in the console.
    pub label: String,
    /// Seconds since the Unix epoch.
    pub created_at_s: i64,
    /// Seconds since the Unix epoch, or 0 if never used.
    pub last_used_at_s: i64,
}

/// An invitation as the console lists it (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// First 8 hex characters of the token's hash: enough to name it, useless to redeem it.
    pub handle: String,
    /// The name the new account will get.
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created_at_s: i64,
    /// Seconds since the Unix epoch.
    pub expires_at_s: i64,
    /// Whether someone already used it.
    pub used: bool,
}

/// A signed-in session, found by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Whose session it is.
    pub user_id: [u8; 16],
    /// Seconds since the Unix epoch.
    pub created_at_s: i64,
    /// Seconds since the Unix epoch.
    pub expires_at_s: i64,
    /// Seconds since the Unix epoch at which the session was first opened (rotation keeps it).
    pub signed_in_at_s: i64,
}

/// The certificate being served and its key (PEM), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    /// The domain it was issued for.
    pub domain: String,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM. Never leaves the box.
    pub key_pem: String,
    /// Seconds since the Unix epoch.
    pub not_before_s: i64,
    /// Seconds since the Unix epoch.
    pub not_after_s: i64,
    /// Seconds since the Unix epoch.
    pub issued_at_s: i64,
}

/// Hex SHA-256 of a secret, the only form in which secrets are stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The database, shared by the whole server.
#[derive(Debug)]
pub struct Store {
    connection: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    is_owner INTEGER NOT NULL,
    created_at_s INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS passkeys (
    credential_id BLOB PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id),
    passkey_json TEXT NOT NULL,
    label TEXT NOT NULL,
    created_at_s INTEGER NOT NULL,
    last_used_at_s INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS passkeys_by_user ON passkeys(user_id);
CREATE TABLE IF NOT EXISTS invitations (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at_s INTEGER NOT NULL,
    expires_at_s INTEGER NOT NULL,
    used_at_s INTEGER
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id),
    created_at_s INTEGER NOT NULL,
    expires_at_s INTEGER NOT NULL,
    signed_in_at_s INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS setup_code (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    code_hash TEXT NOT NULL,
    created_at_s INTEGER NOT NULL,
    used_at_s INTEGER
);
CREATE TABLE IF NOT EXISTS acme_account (
    directory_url TEXT PRIMARY KEY,
    credentials_json TEXT NOT NULL,
    account_url TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    domain TEXT PRIMARY KEY,
    chain_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    not_before_s INTEGER NOT NULL,
    not_after_s INTEGER NOT NULL,
    issued_at_s INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
";

/// Why [`open_database`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenDatabaseError {
    /// The file could not be created or made private (mode 0600).
    #[error("cannot prepare the database file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused to open the file or to apply a pragma.
    #[error("cannot open the database")]
    Sqlite(#[from] rusqlite::Error),
}

impl From<OpenDatabaseError> for StoreError {
    fn from(error: OpenDatabaseError) -> Self {
        match error {
            OpenDatabaseError::File { path, source } => StoreError::DatabaseFile { path, source },
            OpenDatabaseError::Sqlite(error) => StoreError::Sqlite(error),
        }
    }
}

/// How long a statement waits for another connection's lock before it fails.
pub const DATABASE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens (creating if needed) an SQLite file of the box with the settings every one of its
/// databases shares: the file is mode 0600 before SQLite writes a byte (SQLite gives its WAL
/// and shared-memory files the same mode), statements wait [`DATABASE_BUSY_TIMEOUT`] for a
/// lock, the journal is a WAL and `synchronous=FULL`, so a commit is on disk before it
/// returns. `extra_pragmas` (name, value) are then applied in order, for what one database
/// needs and another does not (`foreign_keys`, `secure_delete`). The folder must exist.
///
/// The connection blocks on `fsync`: async code uses it only from tokio's blocking pool.
pub fn open_database(
    path: &Path,
    extra_pragmas: &[(&str, &str)],
) -> Result<Connection, OpenDatabaseError> {
    let file_error = |source| OpenDatabaseError::File {
        path: path.to_path_buf(),
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error)?;
    // The file may predate this code, or have been made under another umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(file_error)?;
    let connection = Connection::open(path)?;
    connection.busy_timeout(DATABASE_BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before it returns, in WAL mode too.
    connection.pragma_update(None, "synchronous", "FULL")?;
    for (name, value) in extra_pragmas {
        connection.pragma_update(None, name, value)?;
    }
    Ok(connection)
}

/// Runs `work` on tokio's blocking pool with its own handle to `database`, so that an
/// `fsync` never holds up an async worker thread; `interrupted` is the error when the task
/// panicked or was cancelled. What [`Store::call`] and `History::call` do. Needs a tokio
/// runtime.
pub(crate) async fn on_blocking_pool<D, T, E, F>(
    database: &Arc<D>,
    work: F,
    interrupted: E,
) -> Result<T, E>
where
    D: Send + Sync + 'static,
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(&D) -> Result<T, E> + Send + 'static,
{
    let database = Arc::clone(database);
    tokio::task::spawn_blocking(move || work(&database))
        .await
        .map_err(|_| interrupted)?
}

/// Locks a database's connection. A panic while holding the lock cannot leave a
/// half-written transaction (SQLite rolls back), so a poisoned lock is still safe to use.
pub(crate) fn lock_connection(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    connection
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn user_id_from_blob(blob: Vec<u8>) -> Result<[u8; 16], StoreError> {
    blob.try_into()
        .map_err(|_| StoreError::Damaged("a user id is not 16 bytes"))
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`, which is made mode 0700, with the
    /// file itself mode 0600. SQLite gives its WAL and shared-memory files the same mode.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let folder_error = |source| StoreError::StateFolder {
            path: state_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(folder_error)?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(folder_error)?;
        let path = state_dir.join(DATABASE_FILE_NAME);
        let connection = open_database(&path, &[("foreign_keys", "ON")])?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self {
            connection: Mutex::new(connection),
            path,
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` (one or more of the blocking methods) on tokio's blocking pool, so
    /// that an `fsync` never holds up an async worker thread. Needs a tokio runtime.
    pub async fn call<T, F>(self: &Arc<Self>, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        on_blocking_pool(self, work, StoreError::Interrupted).await
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        lock_connection(&self.connection)
    }

    // ---- setup code -------------------------------------------------------------------

    /// Stores a fresh setup code unless the owner already exists. Returns false if an owner
    /// exists (then no code is needed).
    pub fn replace_setup_code(&self, code: &str, now_s: i64) -> Result<bool, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let owners: i64 =
            transaction.query_row("SELECT COUNT(*) FROM users WHERE is_owner = 1", [], |r| {
                r.get(0)
            })?;
        if owners > 0 {
            return Ok(false);
        }
        transaction.execute(
            "INSERT OR REPLACE INTO setup_code (id, code_hash, created_at_s, used_at_s) VALUES (1, ?1, ?2, NULL)",
            params![secret_hash(code), now_s],
        )?;
        transaction.commit()?;
        Ok(true)
    }

    /// Whether `code` is the current, unused setup code (does not consume it).
    pub fn setup_code_is_valid(&self, code: &str) -> Result<bool, StoreError> {
        let connection = self.lock();
        let stored: Option<String> = connection
            .query_row(
                "SELECT code_hash FROM setup_code WHERE id = 1 AND used_at_s IS NULL",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(stored.is_some_and(|hash| constant_time_eq(&hash, &secret_hash(code))))
    }

    /// Whether the box has an owner yet.
    pub fn has_owner(&self) -> Result<bool, StoreError> {
        let connection = self.lock();
        let owners: i64 =
            connection.query_row("SELECT COUNT(*) FROM users WHERE is_owner = 1", [], |r| {
                r.get(0)
            })?;
        Ok(owners > 0)
    }

    /// Creates the owner with its first passkey and burns the setup code, atomically. Fails
    /// (returns false, writes nothing) if the code is not the current unused one.
    pub fn create_owner_with_code(
        &self,
        code: &str,
        owner: &User,
        passkey: &StoredPasskey,
        now_s: i64,
    ) -> Result<bool, StoreError> {
        self.claim_then_create_account(
            "UPDATE setup_code SET used_at_s = ?1 WHERE id = 1 AND used_at_s IS NULL AND code_hash = ?2",
            params![now_s, secret_hash(code)],
            owner,
            passkey,
        )
    }

    /// In one transaction: `claim` (an UPDATE that marks a one-time secret used) must change
    /// exactly one row, then `user` is created with its first `passkey`. Returns false and
    /// writes nothing if the claim changed no row.
    fn claim_then_create_account(
        &self,
        claim: &str,
        claim_parameters: &[&dyn rusqlite::ToSql],
        user: &User,
        passkey: &StoredPasskey,
    ) -> Result<bool, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        if transaction.execute(claim, claim_parameters)? != 1 {
            return Ok(false);
        }
        insert_user(&transaction, user)?;
        insert_passkey(&transaction, passkey)?;
        transaction.commit()?;
        Ok(true)
    }

    // ---- users and passkeys -----------------------------------------------------------

    /// The account with this user handle, if any.
    pub fn user(&self, id: &[u8; 16]) -> Result<Option<User>, StoreError> {
        let connection = self.lock();
        connection
            .query_row(
                "SELECT id, name, is_owner, created_at_s, revoked FROM users WHERE id = ?1",
                params![&id[..]],
                user_from_row,
            )
            .optional()?
            .transpose()
    }

    /// Every account, oldest first.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT id, name, is_owner, created_at_s, revoked FROM users ORDER BY created_at_s, name",
        )?;
        let rows = statement.query_map([], user_from_row)?;
        rows.map(|row| row?).collect()
    }

    /// Adds a passkey to an existing account (for a second device).
    pub fn add_passkey(&self, passkey: &StoredPasskey) -> Result<(), StoreError> {
        let connection = self.lock();
        insert_passkey(&connection, passkey)
    }

    /// The passkey with this credential ID, if any.
    pub fn passkey(&self, credential_id: &[u8]) -> Result<Option<StoredPasskey>, StoreError> {
        let connection = self.lock();
        connection
            .query_row(
                "SELECT credential_id, user_id, passkey_json, label, created_at_s, last_used_at_s FROM passkeys WHERE credential_id = ?1",
                params![credential_id],
                passkey_from_row,
            )
            .optional()?
            .transpose()
    }

    /// All passkeys of one account.
    pub fn passkeys_of(&self, user_id: &[u8; 16]) -> Result<Vec<StoredPasskey>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT credential_id, user_id, passkey_json, label, created_at_s, last_used_at_s FROM passkeys WHERE user_id = ?1 ORDER BY created_at_s",
        )?;
        let rows = statement.query_map(params![&user_id[..]], passkey_from_row)?;
        let mut passkeys = Vec::new();
        for row in rows {
            passkeys.push(row??);
        }
        Ok(passkeys)
    }

    /// Records a successful sign-in: the new counter state and the time.
    pub fn update_passkey_use(
        &self,
        credential_id: &[u8],
        passkey_json: &str,
        now_s: i64,
    ) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute(
            "UPDATE passkeys SET passkey_json = ?1, last_used_at_s = ?2 WHERE credential_id = ?3",
            params![passkey_json, now_s, credential_id],
        )?;
        Ok(())
    }

    /// Removes one passkey. Its sessions stay until they expire unless the account is revoked.
    pub fn revoke_passkey(&self, credential_id: &[u8]) -> Result<bool, StoreError> {
        let connection = self.lock();
        Ok(connection.execute(
            "DELETE FROM passkeys WHERE credential_id = ?1",
            params![credential_id],
        )? == 1)
    }

    /// Revokes an account: marks it, deletes its passkeys and ends its sessions, atomically.
    /// The owner cannot be revoked this way (returns false).
    pub fn revoke_user(&self, user_id: &[u8; 16]) -> Result<bool, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let changed = transaction.execute(
            "UPDATE users SET revoked = 1 WHERE id = ?1 AND is_owner = 0",
            params![&user_id[..]],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        transaction.execute(
            "DELETE FROM passkeys WHERE user_id = ?1",
            params![&user_id[..]],
        )?;
        transaction.execute(
            "DELETE FROM sessions WHERE user_id = ?1",
            params![&user_id[..]],
        )?;
        transaction.commit()?;
        Ok(true)
    }

    // ---- invitations ------------------------------------------------------------------

    /// Stores a new invitation (by the hash of its token).
    pub fn create_invitation(
        &self,
        token: &str,
        name: &str,
        now_s: i64,
        expires_at_s: i64,
    ) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute(
            "INSERT INTO invitations (token_hash, name, created_at_s, expires_at_s) VALUES (?1, ?2, ?3, ?4)",
            params![secret_hash(token), name, now_s, expires_at_s],
        )?;
        Ok(())
    }

    /// The name an unused, unexpired invitation carries.
    pub fn invitation_name(&self, token: &str, now_s: i64) -> Result<Option<String>, StoreError> {
        let connection = self.lock();
        Ok(connection
            .query_row(
                "SELECT name FROM invitations WHERE token_hash = ?1 AND used_at_s IS NULL AND expires_at_s > ?2",
                params![secret_hash(token), now_s],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Redeems an invitation: creates the account with its first passkey and marks the
    /// invitation used, atomically. Returns false (writing nothing) if it is used or expired.
    pub fn redeem_invitation(
        &self,
        token: &str,
        user: &User,
        passkey: &StoredPasskey,
        now_s: i64,
    ) -> Result<bool, StoreError> {
        self.claim_then_create_account(
            "UPDATE invitations SET used_at_s = ?1 WHERE token_hash = ?2 AND used_at_s IS NULL AND expires_at_s > ?1",
            params![now_s, secret_hash(token)],
            user,
            passkey,
        )
    }

    /// Every invitation, newest first.
    pub fn invitations(&self) -> Result<Vec<Invitation>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT token_hash, name, created_at_s, expires_at_s, used_at_s IS NOT NULL FROM invitations ORDER BY created_at_s DESC",
        )?;
        let rows = statement.query_map([], |r| {
            let hash: String = r.get(0)?;
            Ok(Invitation {
                handle: hash.chars().take(8).collect(),
                name: r.get(1)?,
                created_at_s: r.get(2)?,
                expires_at_s: r.get(3)?,
                used: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Withdraws an unused invitation by its handle.
    pub fn withdraw_invitation(&self, handle: &str) -> Result<bool, StoreError> {
        if handle.len() != 8 || !handle.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let connection = self.lock();
        Ok(connection.execute(
            "DELETE FROM invitations WHERE substr(token_hash, 1, 8) = ?1 AND used_at_s IS NULL",
            params![handle],
        )? >= 1)
    }

    // ---- sessions ---------------------------------------------------------------------

    /// Opens a session for `user_id` under `token`.
    pub fn create_session(
        &self,
        token: &str,
        user_id: &[u8; 16],
        now_s: i64,
        expires_at_s: i64,
        signed_in_at_s: i64,
    ) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute(
            "INSERT INTO sessions (token_hash, user_id, created_at_s, expires_at_s, signed_in_at_s) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![secret_hash(token), &user_id[..], now_s, expires_at_s, signed_in_at_s],
        )?;
        Ok(())
    }

    /// The live session under `token`, if it exists, has not expired and its account is not
    /// revoked.
    pub fn session(&self, token: &str, now_s: i64) -> Result<Option<Session>, StoreError> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT s.user_id, s.created_at_s, s.expires_at_s, s.signed_in_at_s FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1 AND s.expires_at_s > ?2 AND u.revoked = 0",
                params![secret_hash(token), now_s],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(user_id, created_at_s, expires_at_s, signed_in_at_s)| {
            Ok(Session {
                user_id: user_id_from_blob(user_id)?,
                created_at_s,
                expires_at_s,
                signed_in_at_s,
            })
        })
        .transpose()
    }

    /// Replaces the session under `old_token` by one under `new_token`, atomically.
    pub fn rotate_session(
        &self,
        old_token: &str,
        new_token: &str,
        now_s: i64,
        expires_at_s: i64,
    ) -> Result<bool, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let changed = transaction.execute(
            "UPDATE sessions SET token_hash = ?1, created_at_s = ?2, expires_at_s = ?3 WHERE token_hash = ?4 AND expires_at_s > ?2",
            params![secret_hash(new_token), now_s, expires_at_s, secret_hash(old_token)],
        )?;
        transaction.commit()?;
        Ok(changed == 1)
    }

    /// Ends one session.
    pub fn end_session(&self, token: &str) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            params![secret_hash(token)],
        )?;
        Ok(())
    }

    /// Deletes expired sessions and invitations; returns how many rows went.
    pub fn sweep_expired(&self, now_s: i64) -> Result<usize, StoreError> {
        let connection = self.lock();
        let sessions = connection.execute(
            "DELETE FROM sessions WHERE expires_at_s <= ?1",
            params![now_s],
        )?;
        let invitations = connection.execute(
            "DELETE FROM invitations WHERE expires_at_s <= ?1 AND used_at_s IS NULL",
            params![now_s],
        )?;
        Ok(sessions + invitations)
    }

    // ---- ACME -------------------------------------------------------------------------

    /// The stored ACME account for a directory: (credentials JSON, account URL).
    pub fn acme_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let connection = self.lock();
        Ok(connection
            .query_row(
                "SELECT credentials_json, account_url FROM acme_account WHERE directory_url = ?1",
                params![directory_url],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Stores the ACME account for a directory (its key is inside the credentials).
    pub fn put_acme_account(
        &self,
        directory_url: &str,
        credentials_json: &str,
        account_url: &str,
    ) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute(
            "INSERT OR REPLACE INTO acme_account (directory_url, credentials_json, account_url) VALUES (?1, ?2, ?3)",
            params![directory_url, credentials_json, account_url],
        )?;
        Ok(())
    }

    /// The stored certificate for a domain.
    pub fn certificate(&self, domain: &str) -> Result<Option<StoredCertificate>, StoreError> {
        let connection = self.lock();
        Ok(connection
            .query_row(
                "SELECT domain, chain_pem, key_pem, not_before_s, not_after_s, issued_at_s FROM certificates WHERE domain = ?1",
                params![domain],
                |r| {
                    Ok(StoredCertificate {
                        domain: r.get(0)?,
                        chain_pem: r.get(1)?,
                        key_pem: r.get(2)?,
                        not_before_s: r.get(3)?,
                        not_after_s: r.get(4)?,
                        issued_at_s: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores (replacing) the certificate for its domain.
    pub fn put_certificate(&self, certificate: &StoredCertificate) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute(
            "INSERT OR REPLACE INTO certificates (domain, chain_pem, key_pem, not_before_s, not_after_s, issued_at_s) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                certificate.domain,
                certificate.chain_pem,
                certificate.key_pem,
                certificate.not_before_s,
                certificate.not_after_s,
                certificate.issued_at_s
            ],
        )?;
        Ok(())
    }

    // ---- crash-test support -----------------------------------------------------------

    /// Appends a note and returns its row id. Used by the crash test as a plain, countable
    /// write that goes through the same connection settings as everything else.
    pub fn append_note(&self, body: &str) -> Result<i64, StoreError> {
        let connection = self.lock();
        connection.execute("INSERT INTO notes (body) VALUES (?1)", params![body])?;
        Ok(connection.last_insert_rowid())
    }

    /// Every note's row id and body.
    pub fn notes(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT id, body FROM notes ORDER BY id")?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// SQLite's own consistency check; "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        let connection = self.lock();
        Ok(connection.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

fn insert_user(connection: &Connection, user: &User) -> Result<(), StoreError> {
    connection.execute(
        "INSERT INTO users (id, name, is_owner, created_at_s, revoked) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            &user.id[..],
            user.name,
            user.is_owner,
            user.created_at_s,
            user.revoked
        ],
    )?;
    Ok(())
}

fn insert_passkey(connection: &Connection, passkey: &StoredPasskey) -> Result<(), StoreError> {
    connection.execute(
        "INSERT INTO passkeys (credential_id, user_id, passkey_json, label, created_at_s, last_used_at_s) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            passkey.credential_id,
            &passkey.user_id[..],
            passkey.passkey_json,
            passkey.label,
            passkey.created_at_s,
            passkey.last_used_at_s
        ],
    )?;
    Ok(())
}

/// A user from `SELECT id, name, is_owner, created_at_s, revoked`.
fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<User, StoreError>> {
    let id: Vec<u8> = r.get(0)?;
    let name: String = r.get(1)?;
    let is_owner: bool = r.get(2)?;
    let created_at_s: i64 = r.get(3)?;
    let revoked: bool = r.get(4)?;
    Ok(user_id_from_blob(id).map(|id| User {
        id,
        name,
        is_owner,
        created_at_s,
        revoked,
    }))
}

type PasskeyRow = Result<StoredPasskey, StoreError>;

fn passkey_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PasskeyRow> {
    let user_id: Vec<u8> = r.get(1)?;
    let credential_id: Vec<u8> = r.get(0)?;
    let passkey_json: String = r.get(2)?;
    let label: String = r.get(3)?;
    let created_at_s: i64 = r.get(4)?;
    let last_used_at_s: i64 = r.get(5)?;
    Ok(user_id_from_blob(user_id).map(|user_id| StoredPasskey {
        credential_id,
        user_id,
        passkey_json,
        label,
        created_at_s,
        last_used_at_s,
    }))
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, is_owner: bool, byte: u8) -> User {
        User {
            id: [byte; 16],
            name: name.to_owned(),
            is_owner,
            created_at_s: 100,
            revoked: false,
        }
    }

    fn passkey(user_id: [u8; 16], credential: u8) -> StoredPasskey {
        StoredPasskey {
            credential_id: vec![credential; 32],
            user_id,
            passkey_json: "{}".to_owned(),
            label: "laptop".to_owned(),
            created_at_s: 100,
            last_used_at_s: 0,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn calls_run_off_the_runtime_and_a_panic_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let runtime_thread = std::thread::current().id();
        let (id, thread) = store
            .call(|s| Ok((s.append_note("written")?, std::thread::current().id())))
            .await
            .unwrap();
        assert_ne!(
            thread, runtime_thread,
            "the call ran on the runtime's thread"
        );
        assert_eq!(store.notes().unwrap(), vec![(id, "written".to_owned())]);
        let panicked: Result<(), StoreError> = store.call(|_| panic!("a bug")).await;
        assert!(matches!(panicked, Err(StoreError::Interrupted)));
        // The store still works afterwards.
        assert_eq!(store.call(|s| s.integrity_check()).await.unwrap(), "ok");
    }

    #[test]
    fn the_setup_code_works_once_and_only_before_an_owner_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.replace_setup_code("alpha", 1).unwrap());
        assert!(store.setup_code_is_valid("alpha").unwrap());
        assert!(!store.setup_code_is_valid("beta").unwrap());
        let owner = user("owner", true, 1);
        assert!(
            !store
                .create_owner_with_code("beta", &owner, &passkey(owner.id, 1), 2)
                .unwrap()
        );
        assert!(!store.has_owner().unwrap());
        assert!(
            store
                .create_owner_with_code("alpha", &owner, &passkey(owner.id, 1), 2)
                .unwrap()
        );
        assert!(store.has_owner().unwrap());
        assert!(!store.setup_code_is_valid("alpha").unwrap());
        // A used code cannot make a second owner, and no new code is issued once one exists.
        let other = user("mallory", true, 2);
        assert!(
            !store
                .create_owner_with_code("alpha", &other, &passkey(other.id, 2), 3)
                .unwrap()
        );
        assert!(!store.replace_setup_code("gamma", 4).unwrap());
        assert_eq!(store.users().unwrap().len(), 1);
    }

    #[test]
    fn an_invitation_is_redeemed_once_and_not_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_invitation("tok-1", "alice", 10, 20).unwrap();
        store.create_invitation("tok-2", "bob", 10, 20).unwrap();
        assert_eq!(
            store.invitation_name("tok-1", 15).unwrap().as_deref(),
            Some("alice")
        );
        let alice = user("alice", false, 3);
        assert!(
            store
                .redeem_invitation("tok-1", &alice, &passkey(alice.id, 3), 15)
                .unwrap()
        );
        let eve = user("eve", false, 4);
        assert!(
            !store
                .redeem_invitation("tok-1", &eve, &passkey(eve.id, 4), 16)
                .unwrap()
        );
        let bob = user("bob", false, 5);
        assert!(
            !store
                .redeem_invitation("tok-2", &bob, &passkey(bob.id, 5), 21)
                .unwrap()
        );
        assert_eq!(store.users().unwrap(), vec![alice]);
        let listed = store.invitations().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed.iter().filter(|i| i.used).count(), 1);
    }

    #[test]
    fn revoking_a_user_ends_sessions_and_removes_passkeys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_invitation("tok", "carol", 10, 1000).unwrap();
        let carol = user("carol", false, 6);
        store
            .redeem_invitation("tok", &carol, &passkey(carol.id, 6), 11)
            .unwrap();
        store.add_passkey(&passkey(carol.id, 7)).unwrap();
        assert_eq!(store.passkeys_of(&carol.id).unwrap().len(), 2);
        store.create_session("s1", &carol.id, 12, 500, 12).unwrap();
        assert!(store.session("s1", 13).unwrap().is_some());
        assert!(store.revoke_user(&carol.id).unwrap());
        assert!(store.session("s1", 13).unwrap().is_none());
        assert!(store.passkeys_of(&carol.id).unwrap().is_empty());
        assert!(store.user(&carol.id).unwrap().unwrap().revoked);
    }

    #[test]
    fn a_rotated_session_answers_only_to_its_new_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_invitation("tok", "dan", 10, 1000).unwrap();
        let dan = user("dan", false, 8);
        store
            .redeem_invitation("tok", &dan, &passkey(dan.id, 8), 11)
            .unwrap();
        store.create_session("old", &dan.id, 12, 100, 12).unwrap();
        assert!(store.rotate_session("old", "new", 50, 150).unwrap());
        assert!(store.session("old", 51).unwrap().is_none());
        let session = store.session("new", 120).unwrap().unwrap();
        assert_eq!(session.signed_in_at_s, 12);
        assert!(store.session("new", 150).unwrap().is_none());
    }

    #[test]
    fn the_database_file_and_folder_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        store.append_note("x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        let wal = state.join(format!("{DATABASE_FILE_NAME}-wal"));
        assert_eq!(mode(&wal), 0o600);
    }

    #[test]
    fn secrets_are_stored_only_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.replace_setup_code("SETUP-SECRET-123", 1).unwrap();
        store
            .create_invitation("INVITE-SECRET-456", "x", 1, 100)
            .unwrap();
        drop(store);
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let haystack = String::from_utf8_lossy(&bytes);
        assert!(!haystack.contains("SETUP-SECRET-123"));
        assert!(!haystack.contains("INVITE-SECRET-456"));
        assert!(haystack.contains(&secret_hash("SETUP-SECRET-123")));
    }
}
