//! Chat history as the server keeps it: opaque ciphertext that the browser made, per user,
//! padded to fixed size buckets, plus one wrapped copy of the user's history key per passkey.
//!
//! The server never holds a key that opens any of it: the browser derives a key-encryption
//! key from the passkey's PRF output (which never leaves the browser), unwraps the history
//! key with it, and encrypts and decrypts conversations itself (docs/web-ui.md, "Chat
//! history"). What this module can check is shape: that every blob is exactly one of the
//! bucket sizes, so the size of a stored conversation says no more than its bucket.
//!
//! The rows live in their own SQLite file beside the accounts database, opened by the same
//! [`open_database`] (mode 0600, WAL, `synchronous=FULL`). Its methods block on `fsync`, so
//! async handlers reach them through [`History::call`], on tokio's blocking pool, as they
//! reach the accounts database through [`crate::store::Store::call`]. This module must never
//! log a blob, and never hand one user's rows to another: every query is keyed by the
//! signed-in user's id.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{OpenDatabaseError, lock_connection, on_blocking_pool, open_database};

/// The history database's file name inside the state folder.
pub const HISTORY_FILE_NAME: &str = "chat-history.sqlite3";

/// The sizes, in bytes, that every stored conversation blob must have exactly: the browser
/// pads the plaintext so that the ciphertext (1 version byte, 12 bytes of IV, the padded
/// plaintext, 16 bytes of tag) lands on one of them. Each is four times the one before.
pub const BUCKET_SIZES_BYTES: [usize; 7] = [
    256,
    1024,
    4 * 1024,
    16 * 1024,
    64 * 1024,
    256 * 1024,
    1024 * 1024,
];

/// The size of a wrapped history key: version byte, 12 bytes of IV, the 32-byte key, the
/// 16-byte tag.
pub const WRAPPED_KEY_BYTES: usize = 1 + 12 + 32 + 16;

/// Most conversations one user may keep.
pub const MAX_CONVERSATIONS_PER_USER: i64 = 2000;
/// Most bytes of history one user may keep, all conversations together.
pub const MAX_BYTES_PER_USER: i64 = 256 * 1024 * 1024;
/// Most wrapped keys per user (one per passkey; passkeys are few).
pub const MAX_WRAPPED_KEYS_PER_USER: i64 = 32;

/// What can go wrong with the history store.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database file could not be created or secured.
    #[error("cannot prepare the history database {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite reported an error.
    #[error("history database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A blob is not one of the bucket sizes (or a wrapped key has the wrong size).
    #[error("the blob is not one of the allowed sizes")]
    BadSize,
    /// The conversation id is not 32 lowercase hex characters.
    #[error("the conversation id is not valid")]
    BadId,
    /// The user is at one of the per-user limits.
    #[error("the history is full")]
    Full,
    /// The blocking task that ran the database call panicked or was cancelled.
    #[error("the history database call did not finish")]
    Interrupted,
}

impl From<OpenDatabaseError> for HistoryError {
    fn from(error: OpenDatabaseError) -> Self {
        match error {
            OpenDatabaseError::File { path, source } => HistoryError::File { path, source },
            OpenDatabaseError::Sqlite(error) => HistoryError::Sqlite(error),
        }
    }
}

/// The owner's choices for everyone's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Whether conversations may be stored at all; when false every write is refused.
    pub allowed: bool,
    /// Whether a new conversation starts ephemeral (not stored) unless the user changes it.
    pub default_ephemeral: bool,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            allowed: true,
            default_ephemeral: false,
        }
    }
}

/// One conversation as listed: its encrypted title and metadata blob, not its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationHead {
    /// 32 lowercase hex characters, chosen by the browser.
    pub id: String,
    /// Seconds since the Unix epoch of the last write.
    pub updated_at_s: i64,
    /// The encrypted title blob (a bucket size).
    pub meta: Vec<u8>,
}

/// A stored conversation: (updated_at_s, meta blob, body blob).
pub type StoredConversation = (i64, Vec<u8>, Vec<u8>);

/// One wrapped history key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The passkey's credential id, raw bytes.
    pub credential_id: Vec<u8>,
    /// The history key encrypted under that passkey's PRF-derived key.
    pub wrapped: Vec<u8>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    user_id BLOB NOT NULL,
    id TEXT NOT NULL,
    updated_at_s INTEGER NOT NULL,
    meta BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE TABLE IF NOT EXISTS history_keys (
    user_id BLOB NOT NULL,
    credential_id BLOB NOT NULL,
    wrapped BLOB NOT NULL,
    created_at_s INTEGER NOT NULL,
    PRIMARY KEY (user_id, credential_id)
);
CREATE TABLE IF NOT EXISTS history_policy (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    allowed INTEGER NOT NULL,
    default_ephemeral INTEGER NOT NULL
);
";

/// Whether `length` is one of [`BUCKET_SIZES_BYTES`].
pub fn is_bucket_size(length: usize) -> bool {
    BUCKET_SIZES_BYTES.contains(&length)
}

/// Whether `id` is a conversation id: 32 lowercase hex characters.
pub fn is_conversation_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The history database.
#[derive(Debug)]
pub struct History {
    connection: Mutex<Connection>,
    path: PathBuf,
}

impl History {
    /// Opens (creating if needed) the history database in `state_dir` (which must exist),
    /// mode 0600.
    pub fn open(state_dir: &Path) -> Result<Self, HistoryError> {
        let path = state_dir.join(HISTORY_FILE_NAME);
        // Deleted rows are overwritten, not left in free pages.
        let connection = open_database(&path, &[("secure_delete", "ON")])?;
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

    /// Runs `work` (one or more of the blocking methods) on tokio's blocking pool, so that
    /// a slow disk never holds up an async worker thread. Needs a tokio runtime.
    pub async fn call<T, F>(self: &Arc<Self>, work: F) -> Result<T, HistoryError>
    where
        T: Send + 'static,
        F: FnOnce(&History) -> Result<T, HistoryError> + Send + 'static,
    {
        on_blocking_pool(self, work, HistoryError::Interrupted).await
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        lock_connection(&self.connection)
    }

    /// The owner's policy (the default when never set).
    pub fn policy(&self) -> Result<HistoryPolicy, HistoryError> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT allowed, default_ephemeral FROM history_policy WHERE id = 1",
                [],
                |row| Ok((row.get::<_, bool>(0)?, row.get::<_, bool>(1)?)),
            )
            .optional()?;
        Ok(row
            .map(|(allowed, default_ephemeral)| HistoryPolicy {
                allowed,
                default_ephemeral,
            })
            .unwrap_or_default())
    }

    /// Replaces the owner's policy.
    pub fn set_policy(&self, policy: HistoryPolicy) -> Result<(), HistoryError> {
        self.lock().execute(
            "INSERT INTO history_policy (id, allowed, default_ephemeral) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET allowed = ?1, default_ephemeral = ?2",
            params![policy.allowed, policy.default_ephemeral],
        )?;
        Ok(())
    }

    /// The user's conversations, most recent first.
    pub fn list(&self, user_id: &[u8; 16]) -> Result<Vec<ConversationHead>, HistoryError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT id, updated_at_s, meta FROM conversations WHERE user_id = ?1
             ORDER BY updated_at_s DESC, id",
        )?;
        let rows = statement.query_map(params![user_id.as_slice()], |row| {
            Ok(ConversationHead {
                id: row.get(0)?,
                updated_at_s: row.get(1)?,
                meta: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One conversation of the user: (updated_at_s, meta, body), or `None` if the user has
    /// no conversation with this id (another user's id answers `None` too).
    pub fn get(
        &self,
        user_id: &[u8; 16],
        id: &str,
    ) -> Result<Option<StoredConversation>, HistoryError> {
        if !is_conversation_id(id) {
            return Err(HistoryError::BadId);
        }
        Ok(self
            .lock()
            .query_row(
                "SELECT updated_at_s, meta, body FROM conversations WHERE user_id = ?1 AND id = ?2",
                params![user_id.as_slice(), id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?)
    }

    /// Creates or replaces a conversation of the user. Both blobs must be bucket-sized.
    pub fn put(
        &self,
        user_id: &[u8; 16],
        id: &str,
        meta: &[u8],
        body: &[u8],
        now_s: i64,
    ) -> Result<(), HistoryError> {
        if !is_conversation_id(id) {
            return Err(HistoryError::BadId);
        }
        if !is_bucket_size(meta.len()) || !is_bucket_size(body.len()) {
            return Err(HistoryError::BadSize);
        }
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let (count, bytes): (i64, i64) = transaction.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(meta) + LENGTH(body)), 0) FROM conversations
             WHERE user_id = ?1 AND id != ?2",
            params![user_id.as_slice(), id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let adding = i64::try_from(meta.len() + body.len()).unwrap_or(i64::MAX);
        if count >= MAX_CONVERSATIONS_PER_USER || bytes.saturating_add(adding) > MAX_BYTES_PER_USER
        {
            return Err(HistoryError::Full);
        }
        transaction.execute(
            "INSERT INTO conversations (user_id, id, updated_at_s, meta, body)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(user_id, id) DO UPDATE SET updated_at_s = ?3, meta = ?4, body = ?5",
            params![user_id.as_slice(), id, now_s, meta, body],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// Deletes one conversation of the user; false if there was none.
    pub fn delete(&self, user_id: &[u8; 16], id: &str) -> Result<bool, HistoryError> {
        if !is_conversation_id(id) {
            return Err(HistoryError::BadId);
        }
        let deleted = self.lock().execute(
            "DELETE FROM conversations WHERE user_id = ?1 AND id = ?2",
            params![user_id.as_slice(), id],
        )?;
        Ok(deleted > 0)
    }

    /// Deletes all of the user's conversations and wrapped keys; returns how many
    /// conversations went.
    pub fn delete_all(&self, user_id: &[u8; 16]) -> Result<usize, HistoryError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let deleted = transaction.execute(
            "DELETE FROM conversations WHERE user_id = ?1",
            params![user_id.as_slice()],
        )?;
        transaction.execute(
            "DELETE FROM history_keys WHERE user_id = ?1",
            params![user_id.as_slice()],
        )?;
        transaction.commit()?;
        Ok(deleted)
    }

    /// The user's wrapped history keys.
    pub fn wrapped_keys(&self, user_id: &[u8; 16]) -> Result<Vec<WrappedKey>, HistoryError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT credential_id, wrapped FROM history_keys WHERE user_id = ?1
             ORDER BY created_at_s, credential_id",
        )?;
        let rows = statement.query_map(params![user_id.as_slice()], |row| {
            Ok(WrappedKey {
                credential_id: row.get(0)?,
                wrapped: row.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores the wrapped history key for one of the user's passkeys (the caller checks that
    /// the passkey is the user's), replacing an earlier one for the same passkey.
    pub fn put_wrapped_key(
        &self,
        user_id: &[u8; 16],
        key: &WrappedKey,
        now_s: i64,
    ) -> Result<(), HistoryError> {
        if key.wrapped.len() != WRAPPED_KEY_BYTES
            || key.credential_id.is_empty()
            || key.credential_id.len() > 1023
        {
            return Err(HistoryError::BadSize);
        }
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let count: i64 = transaction.query_row(
            "SELECT COUNT(*) FROM history_keys WHERE user_id = ?1 AND credential_id != ?2",
            params![user_id.as_slice(), key.credential_id],
            |row| row.get(0),
        )?;
        if count >= MAX_WRAPPED_KEYS_PER_USER {
            return Err(HistoryError::Full);
        }
        transaction.execute(
            "INSERT INTO history_keys (user_id, credential_id, wrapped, created_at_s)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(user_id, credential_id) DO UPDATE SET wrapped = ?3",
            params![user_id.as_slice(), key.credential_id, key.wrapped, now_s],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// Drops the wrapped key of a passkey (when the passkey is revoked); false if none.
    pub fn delete_wrapped_key(&self, credential_id: &[u8]) -> Result<bool, HistoryError> {
        let deleted = self.lock().execute(
            "DELETE FROM history_keys WHERE credential_id = ?1",
            params![credential_id],
        )?;
        Ok(deleted > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: [u8; 16] = [1; 16];
    const BOB: [u8; 16] = [2; 16];
    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[tokio::test(flavor = "current_thread")]
    async fn calls_run_off_the_runtime_and_a_panic_is_an_error() {
        let folder = tempfile::tempdir().unwrap();
        let history = Arc::new(History::open(folder.path()).unwrap());
        let runtime_thread = std::thread::current().id();
        let thread = history
            .call(|h| {
                h.put(&ALICE, ID, &[3; 256], &[4; 1024], 9)?;
                Ok(std::thread::current().id())
            })
            .await
            .unwrap();
        assert_ne!(
            thread, runtime_thread,
            "the call ran on the runtime's thread"
        );
        assert_eq!(
            history.get(&ALICE, ID).unwrap(),
            Some((9, vec![3; 256], vec![4; 1024]))
        );
        let panicked: Result<(), HistoryError> = history.call(|_| panic!("a bug")).await;
        assert!(matches!(panicked, Err(HistoryError::Interrupted)));
        // The history still works afterwards, and a refusal comes back as itself.
        let refused = history
            .call(|h| h.put(&ALICE, "nope", &[0; 256], &[0; 1024], 10))
            .await;
        assert!(matches!(refused, Err(HistoryError::BadId)));
        assert_eq!(history.call(|h| h.list(&ALICE)).await.unwrap().len(), 1);
    }

    #[test]
    fn the_database_file_is_private_and_durable() {
        let folder = tempfile::tempdir().unwrap();
        let history = History::open(folder.path()).unwrap();
        history.put(&ALICE, ID, &[1; 256], &[1; 1024], 1).unwrap();
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(history.path()), 0o600);
        assert_eq!(
            mode(&folder.path().join(format!("{HISTORY_FILE_NAME}-wal"))),
            0o600
        );
        let connection = history.lock();
        let pragma = |name: &str| -> String {
            connection
                .query_row(&format!("PRAGMA {name}"), [], |row| {
                    row.get::<_, rusqlite::types::Value>(0)
                })
                .map(|value| match value {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                })
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        // 2 is FULL.
        assert_eq!(pragma("synchronous"), "2");
        assert_eq!(pragma("secure_delete"), "1");
        assert_eq!(pragma("busy_timeout"), "5000");
    }

    #[test]
    fn blobs_must_be_bucket_sized_and_ids_well_formed() {
        let folder = tempfile::tempdir().unwrap();
        let history = History::open(folder.path()).unwrap();
        assert!(matches!(
            history.put(&ALICE, ID, &[0; 256], &[0; 1000], 1),
            Err(HistoryError::BadSize)
        ));
        assert!(matches!(
            history.put(&ALICE, ID, &[0; 255], &[0; 1024], 1),
            Err(HistoryError::BadSize)
        ));
        assert!(matches!(
            history.put(&ALICE, "../etc", &[0; 256], &[0; 1024], 1),
            Err(HistoryError::BadId)
        ));
        assert!(matches!(
            history.put(&ALICE, &ID.to_uppercase(), &[0; 256], &[0; 1024], 1),
            Err(HistoryError::BadId)
        ));
        history.put(&ALICE, ID, &[7; 256], &[8; 1024], 1).unwrap();
        assert_eq!(
            history.get(&ALICE, ID).unwrap(),
            Some((1, vec![7; 256], vec![8; 1024]))
        );
    }

    #[test]
    fn each_user_sees_only_their_own_rows() {
        let folder = tempfile::tempdir().unwrap();
        let history = History::open(folder.path()).unwrap();
        history.put(&ALICE, ID, &[1; 256], &[1; 1024], 5).unwrap();
        assert_eq!(history.get(&BOB, ID).unwrap(), None);
        assert!(history.list(&BOB).unwrap().is_empty());
        assert!(!history.delete(&BOB, ID).unwrap());
        // Bob writing the same id makes his own row; Alice's stays.
        history.put(&BOB, ID, &[2; 256], &[2; 4096], 6).unwrap();
        assert_eq!(history.get(&ALICE, ID).unwrap().unwrap().2, vec![1; 1024]);
        assert_eq!(history.list(&ALICE).unwrap().len(), 1);
        assert_eq!(history.delete_all(&BOB).unwrap(), 1);
        assert_eq!(history.list(&ALICE).unwrap().len(), 1);
    }

    #[test]
    fn wrapped_keys_are_per_passkey_and_sized() {
        let folder = tempfile::tempdir().unwrap();
        let history = History::open(folder.path()).unwrap();
        let key = |id: u8, fill: u8| WrappedKey {
            credential_id: vec![id; 16],
            wrapped: vec![fill; WRAPPED_KEY_BYTES],
        };
        history.put_wrapped_key(&ALICE, &key(1, 1), 1).unwrap();
        history.put_wrapped_key(&ALICE, &key(2, 2), 2).unwrap();
        history.put_wrapped_key(&ALICE, &key(1, 3), 3).unwrap();
        assert_eq!(
            history.wrapped_keys(&ALICE).unwrap(),
            vec![key(1, 3), key(2, 2)]
        );
        assert!(history.wrapped_keys(&BOB).unwrap().is_empty());
        let short = WrappedKey {
            credential_id: vec![1],
            wrapped: vec![0; WRAPPED_KEY_BYTES - 1],
        };
        assert!(matches!(
            history.put_wrapped_key(&ALICE, &short, 4),
            Err(HistoryError::BadSize)
        ));
        assert!(history.delete_wrapped_key(&[2; 16]).unwrap());
        assert_eq!(history.wrapped_keys(&ALICE).unwrap(), vec![key(1, 3)]);
    }

    #[test]
    fn the_policy_defaults_to_allowed_and_persists() {
        let folder = tempfile::tempdir().unwrap();
        {
            let history = History::open(folder.path()).unwrap();
            assert_eq!(history.policy().unwrap(), HistoryPolicy::default());
            history
                .set_policy(HistoryPolicy {
                    allowed: false,
                    default_ephemeral: true,
                })
                .unwrap();
        }
        let history = History::open(folder.path()).unwrap();
        assert!(!history.policy().unwrap().allowed);
        assert!(history.policy().unwrap().default_ephemeral);
    }
}
