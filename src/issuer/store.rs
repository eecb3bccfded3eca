//! SQLite persistence for clients and signing keys.
//!
//! The server and the `clients`/`issuer` CLI commands may open the same file at
//! the same time (they are usually different processes). WAL mode lets readers
//! proceed while one writer commits, every multi-statement write runs in an
//! IMMEDIATE transaction (it takes the write lock up front, so two writers never
//! deadlock upgrading read locks), and a busy timeout makes a writer wait for
//! the other instead of failing. Nothing is cached across calls here, so each
//! request sees what the CLI committed a moment ago.
//!
//! The file holds signing keys, so it is kept owner-only (see
//! [`super::private_files`]): it is created 0600 before SQLite sees it (SQLite
//! gives its `-wal`/`-shm` files the main file's mode), and an existing
//! database or companion file that group or others could read is refused.
//! Private keys are stored sealed under the project secret ([`super::seal`]),
//! and `secure_delete` is on so a replaced plaintext key does not linger in
//! free space.
//!
//! One file (about 1,300 lines): every SQL statement on the issuer's database, so the schema,
//! its migrations and the transactions that must not interleave are read in one place; no
//! other file of the issuer speaks SQL.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use super::keys::{GeneratedKey, Pkcs8Der};
use super::private_files::{self, PrivateFileError};
use super::seal::{self, SealingKey};
use super::secrets::{ProjectSecret, SecretHash};

/// Schema migrations, applied in order; the database's `PRAGMA user_version`
/// records how many have run. Append new files, never edit old ones.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_sealed_keys.sql"),
    include_str!("migrations/0003_client_names_not_unique.sql"),
    include_str!("migrations/0004_jwt_templates.sql"),
];

/// What the database holds, for the permission errors.
const DATABASE_WHAT: &str = "the issuer's signing keys";
/// Files SQLite keeps beside the database; they hold the same data.
const COMPANION_SUFFIXES: &[&str] = &["-wal", "-shm", "-journal"];

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open issuer database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "issuer database schema version {found} is newer than this binary supports ({supported}); \
         use a newer m2m-authz"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("issuer database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("issuer database holds a corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("a client with client_id {0:?} already exists")]
    DuplicateClientId(String),
    #[error(transparent)]
    Files(#[from] PrivateFileError),
    #[error(
        "the signing keys in issuer database {} were sealed with a different project secret, so \
         they cannot be opened. Set project_secret (or M2M_ISSUER_PROJECT_SECRET) back to the \
         secret the database was created with; to start over with new keys instead, move the \
         database aside (tokens signed by the old keys stop verifying)",
        path.display()
    )]
    WrongProjectSecret { path: PathBuf },
    #[error(
        "signing key {kid} in the issuer database does not open with this database's project \
         secret: the row was altered or copied from another database. Retire it, or restore the \
         database from a backup"
    )]
    KeyDoesNotOpen { kid: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientStatus {
    Active,
    Inactive,
}

impl ClientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// The M2M claims template as stored (source text, not parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTemplate {
    pub content: String,
    /// Empty for none.
    pub custom_audience: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub hash: SecretHash,
    pub last_four: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientRecord {
    pub client_id: String,
    /// Empty when the client has no name.
    pub client_name: String,
    pub client_description: String,
    pub status: ClientStatus,
    pub scopes: Vec<String>,
    pub trusted_metadata: Map<String, Value>,
    pub secret: StoredSecret,
    /// Set while a secret rotation is in progress; both secrets are valid.
    pub next_secret: Option<StoredSecret>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterField {
    ClientId,
    ClientName,
    Status,
    /// Matches clients holding any of the listed scopes.
    Scopes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub field: FilterField,
    /// Matches when the field equals any of these; must not be empty.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientQuery {
    /// `true` joins filters with OR, otherwise AND.
    pub any: bool,
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone)]
pub struct ClientPage {
    pub clients: Vec<ClientRecord>,
    /// Number of clients matching the query, over all pages.
    pub total: u64,
    /// Row id to continue after, when more results remain.
    pub next_after: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Published,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Published => "published",
            Self::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "published" => Some(Self::Published),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub kid: String,
    pub pkcs8: Pkcs8Der,
    pub state: KeyState,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetireOutcome {
    Retired,
    NotFound,
    AlreadyRetired,
    /// The signing key cannot be retired; rotate first.
    IsActive,
}

pub struct Store {
    conn: Connection,
    seal: SealingKey,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.conn.path())
            .finish()
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

const CLIENT_COLUMNS: &str = "id, client_id, client_name, client_description, status, scopes, \
     trusted_metadata, secret_hash, secret_last_four, next_secret_hash, next_secret_last_four, \
     created_at";

/// Columns exactly as stored; converted outside rusqlite's row closure so
/// JSON and enum errors can be reported as corruption.
struct RawClient {
    id: i64,
    client_id: String,
    client_name: String,
    client_description: String,
    status: String,
    scopes: String,
    trusted_metadata: String,
    secret_hash: Vec<u8>,
    secret_last_four: String,
    next_secret_hash: Option<Vec<u8>>,
    next_secret_last_four: Option<String>,
    created_at: i64,
}

impl RawClient {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            client_id: row.get(1)?,
            client_name: row.get(2)?,
            client_description: row.get(3)?,
            status: row.get(4)?,
            scopes: row.get(5)?,
            trusted_metadata: row.get(6)?,
            secret_hash: row.get(7)?,
            secret_last_four: row.get(8)?,
            next_secret_hash: row.get(9)?,
            next_secret_last_four: row.get(10)?,
            created_at: row.get(11)?,
        })
    }

    fn into_record(self) -> Result<(i64, ClientRecord), StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "client",
            detail: format!("{}: {detail}", self.client_id),
        };
        let status = ClientStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("status {:?}", self.status)))?;
        let scopes: Vec<String> =
            serde_json::from_str(&self.scopes).map_err(|e| corrupt(format!("scopes: {e}")))?;
        let trusted_metadata: Map<String, Value> = serde_json::from_str(&self.trusted_metadata)
            .map_err(|e| corrupt(format!("trusted_metadata: {e}")))?;
        let hash = SecretHash::from_slice(&self.secret_hash)
            .ok_or_else(|| corrupt("secret hash length".into()))?;
        let next_secret = match (self.next_secret_hash, self.next_secret_last_four) {
            (Some(h), Some(last_four)) => Some(StoredSecret {
                hash: SecretHash::from_slice(&h)
                    .ok_or_else(|| corrupt("next secret hash length".into()))?,
                last_four,
            }),
            _ => None,
        };
        Ok((
            self.id,
            ClientRecord {
                client_id: self.client_id,
                client_name: self.client_name,
                client_description: self.client_description,
                status,
                scopes,
                trusted_metadata,
                secret: StoredSecret {
                    hash,
                    last_four: self.secret_last_four,
                },
                next_secret,
                created_at: self.created_at,
            },
        ))
    }
}

fn to_json_text<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: "value to store",
        detail: e.to_string(),
    })
}

impl Store {
    /// Opens (creating if needed) the database, brings its schema up to date
    /// and checks that `secret` opens its signing keys; keys left in clear by
    /// schema version 1 are sealed on the way.
    pub fn open(path: &Path, secret: &ProjectSecret) -> Result<Self, StoreError> {
        prepare_files(path)?;
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        // No CREATE: prepare_files made the file (0600). NOFOLLOW: a symlink
        // swapped in since then is refused rather than followed.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // journal_mode answers with the mode in force ("memory" for in-memory
        // databases, which cannot use WAL); either way is fine.
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // Deleted or overwritten content (a key row's old plaintext) is zeroed,
        // not left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(open_err)?;
        // WAL mode made the -wal/-shm files now, with the database's mode;
        // check them again in case someone planted them in the meantime.
        check_companions(path)?;
        migrate(&conn)?;
        let seal = unseal_key(&conn, path, secret)?;
        let store = Self { conn, seal };
        store.seal_plaintext_keys()?;
        Ok(store)
    }

    /// Seals the keys that schema version 1 stored in clear, overwriting the
    /// plaintext, then checkpoints so no copy of it stays in the WAL.
    fn seal_plaintext_keys(&self) -> Result<(), StoreError> {
        let pending: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM signing_keys WHERE sealed_pkcs8 IS NULL",
            [],
            |r| r.get(0),
        )?;
        if pending == 0 {
            return Ok(());
        }
        // IMMEDIATE, then re-read under the write lock: another process may
        // have sealed them meanwhile.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let rows: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx.prepare(
                "SELECT kid, private_key_pkcs8 FROM signing_keys WHERE sealed_pkcs8 IS NULL",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (kid, plain) in rows {
            let plain = Pkcs8Der::new(plain);
            tx.execute(
                "UPDATE signing_keys SET sealed_pkcs8 = ?2, private_key_pkcs8 = X'' WHERE kid = ?1",
                params![kid, self.seal.seal_key(&kid, &plain)],
            )?;
        }
        tx.commit()?;
        // Best effort: a reader in another process may hold the WAL; SQLite
        // checkpoints again when the last connection closes.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        tracing::info!(
            keys = pending,
            "sealed the issuer's plaintext signing keys under the project secret"
        );
        Ok(())
    }

    fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
        Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

/// The database's folder (created 0700 when missing; writable by no one but
/// its owner, who is us or root), the database file itself (created 0600, or
/// an existing one that is owner-only) and any companion file SQLite left
/// beside it.
fn prepare_files(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.exists() {
        private_files::create_dir_all(dir)?;
    }
    private_files::check_folder_not_shared(dir, "the issuer database")?;
    if private_files::check_file(path, DATABASE_WHAT)?.is_none() {
        private_files::create_new(path, DATABASE_WHAT)?;
    }
    check_companions(path)
}

fn check_companions(path: &Path) -> Result<(), StoreError> {
    for suffix in COMPANION_SUFFIXES {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        private_files::check_file(Path::new(&companion), DATABASE_WHAT)?;
    }
    Ok(())
}

/// Reads this database's salt (making one on first use), derives the
/// sealing key from `secret` and checks that it is the key the database was
/// sealed with.
fn unseal_key(
    conn: &Connection,
    path: &Path,
    secret: &ProjectSecret,
) -> Result<SealingKey, StoreError> {
    let read = |conn: &Connection| {
        conn.query_row(
            "SELECT salt, check_value FROM key_seal WHERE id = 1",
            [],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()
    };
    let (salt, check) = match read(conn)? {
        Some(found) => found,
        None => {
            let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            // Another process may have made it while we waited for the lock.
            let found = match read(&tx)? {
                Some(found) => found,
                None => {
                    let salt = seal::random_salt().to_vec();
                    let check = SealingKey::derive(secret, &salt).check_value();
                    tx.execute(
                        "INSERT INTO key_seal (id, salt, check_value) VALUES (1, ?1, ?2)",
                        params![salt, check],
                    )?;
                    (salt, check)
                }
            };
            tx.commit()?;
            found
        }
    };
    if salt.len() != seal::SALT_LEN {
        return Err(StoreError::Corrupt {
            what: "key seal",
            detail: format!("salt of {} bytes", salt.len()),
        });
    }
    let key = SealingKey::derive(secret, &salt);
    if !key.opens_check(&check) {
        return Err(StoreError::WrongProjectSecret {
            path: path.to_owned(),
        });
    }
    Ok(key)
}

/// Applies the pending SQL migrations in one IMMEDIATE transaction.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let found = Store::schema_version(conn)?;
    if found == supported {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    // Re-read under the write lock: another process may have migrated.
    let found = Store::schema_version(&tx)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (done, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i64::try_from(done + 1).unwrap_or(0))?;
    }
    tx.commit()?;
    Ok(())
}

impl Store {
    pub fn insert_client(&mut self, client: &ClientRecord) -> Result<(), StoreError> {
        let scopes = to_json_text(&client.scopes)?;
        let metadata = to_json_text(&client.trusted_metadata)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id_taken = tx
            .query_row(
                "SELECT 1 FROM m2m_clients WHERE client_id = ?1",
                [&client.client_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if id_taken {
            return Err(StoreError::DuplicateClientId(client.client_id.clone()));
        }
        tx.execute(
            "INSERT INTO m2m_clients (client_id, client_name, client_description, status, scopes, \
             trusted_metadata, secret_hash, secret_last_four, next_secret_hash, \
             next_secret_last_four, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                client.client_id,
                client.client_name,
                client.client_description,
                client.status.as_str(),
                scopes,
                metadata,
                client.secret.hash.as_bytes().as_slice(),
                client.secret.last_four,
                client
                    .next_secret
                    .as_ref()
                    .map(|s| s.hash.as_bytes().to_vec()),
                client.next_secret.as_ref().map(|s| s.last_four.clone()),
                client.created_at,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn get_client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {CLIENT_COLUMNS} FROM m2m_clients WHERE client_id = ?1"),
                [client_id],
                RawClient::from_row,
            )
            .optional()?;
        raw.map(|r| r.into_record().map(|(_, c)| c)).transpose()
    }

    /// Read-modify-write of one client in a single transaction, so concurrent
    /// edits (server and CLI) cannot overwrite each other's changes. Returns
    /// `Ok(None)` when the client does not exist; `change` may refuse the edit.
    pub fn update_client<E, F>(
        &mut self,
        client_id: &str,
        change: F,
    ) -> Result<Option<ClientRecord>, E>
    where
        E: From<StoreError>,
        F: FnOnce(&mut ClientRecord) -> Result<(), E>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let raw = tx
            .query_row(
                &format!("SELECT {CLIENT_COLUMNS} FROM m2m_clients WHERE client_id = ?1"),
                [client_id],
                RawClient::from_row,
            )
            .optional()
            .map_err(StoreError::from)?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let (_, mut client) = raw.into_record()?;
        change(&mut client)?;
        // The client id is the key; a change closure must not move it.
        client.client_id = client_id.to_owned();
        tx.execute(
            "UPDATE m2m_clients SET client_name = ?2, client_description = ?3, status = ?4, \
             scopes = ?5, trusted_metadata = ?6, secret_hash = ?7, secret_last_four = ?8, \
             next_secret_hash = ?9, next_secret_last_four = ?10 WHERE client_id = ?1",
            params![
                client_id,
                client.client_name,
                client.client_description,
                client.status.as_str(),
                to_json_text(&client.scopes)?,
                to_json_text(&client.trusted_metadata)?,
                client.secret.hash.as_bytes().as_slice(),
                client.secret.last_four,
                client
                    .next_secret
                    .as_ref()
                    .map(|s| s.hash.as_bytes().to_vec()),
                client.next_secret.as_ref().map(|s| s.last_four.clone()),
            ],
        )
        .map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(Some(client))
    }

    pub fn delete_client(&mut self, client_id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM m2m_clients WHERE client_id = ?1", [client_id])?;
        Ok(n > 0)
    }

    /// One page of clients matching `query`, in creation order, after row id
    /// `after` (from a previous page's `next_after`).
    pub fn search_clients(
        &mut self,
        query: &ClientQuery,
        after: Option<i64>,
        limit: usize,
    ) -> Result<ClientPage, StoreError> {
        let mut conditions = Vec::with_capacity(query.filters.len());
        let mut args: Vec<SqlValue> = Vec::new();
        for filter in &query.filters {
            let marks = vec!["?"; filter.values.len()].join(", ");
            conditions.push(match filter.field {
                FilterField::ClientId => format!("client_id IN ({marks})"),
                FilterField::ClientName => format!("client_name IN ({marks})"),
                FilterField::Status => format!("status IN ({marks})"),
                FilterField::Scopes => format!(
                    "EXISTS (SELECT 1 FROM json_each(m2m_clients.scopes) AS s \
                     WHERE s.value IN ({marks}))"
                ),
            });
            args.extend(filter.values.iter().cloned().map(SqlValue::Text));
        }
        let filter_sql = if conditions.is_empty() {
            "1".to_owned()
        } else {
            format!(
                "({})",
                conditions.join(if query.any { " OR " } else { " AND " })
            )
        };
        let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);

        // One read transaction so the count and the page agree.
        let tx = self.conn.transaction()?;
        let total: i64 = tx.query_row(
            &format!("SELECT COUNT(*) FROM m2m_clients WHERE {filter_sql}"),
            rusqlite::params_from_iter(args.iter()),
            |r| r.get(0),
        )?;
        let mut page_args = args;
        page_args.push(SqlValue::Integer(after.unwrap_or(0)));
        page_args.push(SqlValue::Integer(limit_i64.saturating_add(1)));
        let raws = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {CLIENT_COLUMNS} FROM m2m_clients WHERE {filter_sql} AND id > ? \
                 ORDER BY id LIMIT ?"
            ))?;
            let rows = stmt.query_map(
                rusqlite::params_from_iter(page_args.iter()),
                RawClient::from_row,
            )?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;

        let mut clients = Vec::with_capacity(raws.len().min(limit));
        let mut last_id = None;
        let more = raws.len() > limit;
        for raw in raws.into_iter().take(limit) {
            let (id, client) = raw.into_record()?;
            last_id = Some(id);
            clients.push(client);
        }
        Ok(ClientPage {
            clients,
            total: u64::try_from(total).unwrap_or(0),
            next_after: if more { last_id } else { None },
        })
    }

    pub fn active_key(&self) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.keys_where("state = 'active'")?;
        Ok(keys.pop())
    }

    /// Keys served in the JWKS: the signing key and those still published.
    pub fn published_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys_where("state IN ('active', 'published')")
    }

    pub fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys_where("1")
    }

    fn keys_where(&self, condition: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT kid, sealed_pkcs8, state, created_at, retired_at FROM signing_keys \
             WHERE {condition} ORDER BY created_at, rowid"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kid, sealed, state, created_at, retired_at) = row?;
            let state = KeyState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                what: "signing key",
                detail: format!("{kid}: state {state:?}"),
            })?;
            // Store::open sealed every plaintext row; a NULL here was written
            // by something else.
            let pkcs8 = sealed
                .and_then(|sealed| self.seal.open_key(&kid, &sealed))
                .ok_or_else(|| StoreError::KeyDoesNotOpen { kid: kid.clone() })?;
            out.push(KeyRecord {
                kid,
                pkcs8,
                state,
                created_at,
                retired_at,
            });
        }
        Ok(out)
    }

    /// Stores `key` as the signing key unless one already exists (another
    /// process may have won the race at first start). Returns whether it was
    /// stored.
    pub fn insert_initial_key(&mut self, key: &GeneratedKey) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM signing_keys WHERE state = 'active'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if exists {
            return Ok(false);
        }
        insert_active_key(&tx, &self.seal, key)?;
        tx.commit()?;
        Ok(true)
    }

    /// Makes `key` the signing key; the previous one stays published so the
    /// tokens it signed keep verifying. Returns the previous kid, if any.
    pub fn rotate_key(&mut self, key: &GeneratedKey) -> Result<Option<String>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let previous: Option<String> = tx
            .query_row(
                "SELECT kid FROM signing_keys WHERE state = 'active'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "UPDATE signing_keys SET state = 'published' WHERE state = 'active'",
            [],
        )?;
        insert_active_key(&tx, &self.seal, key)?;
        tx.commit()?;
        Ok(previous)
    }

    /// The stored M2M template, if one was ever stored.
    pub fn template(&self) -> Result<Option<StoredTemplate>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT template_content, custom_audience, updated_at FROM jwt_templates \
                 WHERE template_type = 'M2M'",
                [],
                |r| {
                    Ok(StoredTemplate {
                        content: r.get(0)?,
                        custom_audience: r.get(1)?,
                        updated_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores `initial` unless a template is stored already (another process
    /// may have stored one first); returns the template in force.
    pub fn ensure_template(
        &mut self,
        initial: &StoredTemplate,
    ) -> Result<StoredTemplate, StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO jwt_templates \
             (template_type, template_content, custom_audience, updated_at) \
             VALUES ('M2M', ?1, ?2, ?3)",
            params![initial.content, initial.custom_audience, initial.updated_at],
        )?;
        self.template()?.ok_or(StoreError::Corrupt {
            what: "M2M template",
            detail: "the row just stored is missing".into(),
        })
    }

    /// Replaces the M2M template; the caller has validated it.
    pub fn set_template(&mut self, template: &StoredTemplate) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO jwt_templates \
             (template_type, template_content, custom_audience, updated_at) \
             VALUES ('M2M', ?1, ?2, ?3) \
             ON CONFLICT (template_type) DO UPDATE SET template_content = excluded.template_content, \
             custom_audience = excluded.custom_audience, updated_at = excluded.updated_at",
            params![template.content, template.custom_audience, template.updated_at],
        )?;
        Ok(())
    }

    /// Removes a published key from the JWKS; tokens it signed stop verifying.
    pub fn retire_key(&mut self, kid: &str) -> Result<RetireOutcome, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM signing_keys WHERE kid = ?1",
                [kid],
                |r| r.get(0),
            )
            .optional()?;
        let outcome = match state.as_deref().map(KeyState::parse) {
            None => RetireOutcome::NotFound,
            Some(Some(KeyState::Active)) => RetireOutcome::IsActive,
            Some(Some(KeyState::Retired)) => RetireOutcome::AlreadyRetired,
            Some(Some(KeyState::Published)) => {
                tx.execute(
                    "UPDATE signing_keys SET state = 'retired', retired_at = ?2 WHERE kid = ?1",
                    params![kid, now_unix()],
                )?;
                RetireOutcome::Retired
            }
            Some(None) => {
                return Err(StoreError::Corrupt {
                    what: "signing key",
                    detail: format!("{kid}: unknown state"),
                });
            }
        };
        tx.commit()?;
        Ok(outcome)
    }
}

/// The plaintext column stays empty; only the sealed form is stored.
fn insert_active_key(
    conn: &Connection,
    seal: &SealingKey,
    key: &GeneratedKey,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO signing_keys (kid, private_key_pkcs8, sealed_pkcs8, state, created_at) \
         VALUES (?1, X'', ?2, 'active', ?3)",
        params![key.kid, seal.seal_key(&key.kid, &key.pkcs8), now_unix()],
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::issuer::secrets::ClientSecret;

    /// The schema version a migrated database ends at.
    const LATEST: i64 = MIGRATIONS.len() as i64;

    /// A database file in a fresh directory, removed on drop.
    pub(crate) struct TempDb {
        pub dir: PathBuf,
        pub path: PathBuf,
    }

    impl TempDb {
        pub(crate) fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "m2m-issuer-unit-{}",
                crate::issuer::secrets::generate_request_id()
            ));
            crate::issuer::private_files::create_dir_all(&dir).unwrap();
            let path = dir.join("issuer.db");
            Self { dir, path }
        }

        /// Writes `name` in the folder, owner-only, as a config holding a secret must be.
        pub(crate) fn write_private(&self, name: &str, text: &str) -> PathBuf {
            use std::io::Write as _;
            let path = self.dir.join(name);
            crate::issuer::private_files::create_truncate(&path, "a test file")
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            path
        }
    }

    pub(crate) fn test_secret() -> ProjectSecret {
        ProjectSecret::new("unit-test-project-secret-0123456789")
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn client(id: &str, name: &str, scopes: &[&str], status: ClientStatus) -> ClientRecord {
        let secret = ClientSecret::generate();
        ClientRecord {
            client_id: id.into(),
            client_name: name.into(),
            client_description: String::new(),
            status,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            trusted_metadata: Map::new(),
            secret: StoredSecret {
                hash: secret.hash(),
                last_four: secret.last_four(),
            },
            next_secret: None,
            created_at: now_unix(),
        }
    }

    #[test]
    fn migrations_run_once_and_survive_reopen() {
        let db = TempDb::new();
        {
            let store = Store::open(&db.path, &test_secret()).unwrap();
            assert_eq!(Store::schema_version(&store.conn).unwrap(), LATEST);
            let mode: String = store
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
        let store = Store::open(&db.path, &test_secret()).unwrap();
        assert_eq!(Store::schema_version(&store.conn).unwrap(), LATEST);
    }

    #[test]
    fn newer_schema_is_refused() {
        let db = TempDb::new();
        drop(Store::open(&db.path, &test_secret()).unwrap());
        let conn = Connection::open(&db.path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(&db.path, &test_secret()),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn client_round_trip_and_duplicates() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        let mut c = client("c1", "bot", &["a", "b"], ClientStatus::Active);
        c.trusted_metadata
            .insert("user_id".into(), Value::String("u1".into()));
        store.insert_client(&c).unwrap();
        assert_eq!(store.get_client("c1").unwrap(), Some(c.clone()));
        assert!(matches!(
            store.insert_client(&c),
            Err(StoreError::DuplicateClientId(_))
        ));
        // Names need not be unique (only client_id is, as on Stytch).
        store
            .insert_client(&client("c2", "bot", &[], ClientStatus::Active))
            .unwrap();
        assert!(store.delete_client("c1").unwrap());
        assert!(!store.delete_client("c1").unwrap());
        assert_eq!(store.get_client("c1").unwrap(), None);
    }

    #[test]
    fn update_is_atomic() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        store
            .insert_client(&client("c1", "one", &[], ClientStatus::Active))
            .unwrap();
        store
            .insert_client(&client("c2", "two", &[], ClientStatus::Active))
            .unwrap();
        let updated = store
            .update_client::<StoreError, _>("c1", |c| {
                c.status = ClientStatus::Inactive;
                Ok(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(updated.status, ClientStatus::Inactive);
        let err = store
            .update_client::<StoreError, _>("c1", |c| {
                c.client_name = "changed".into();
                Err(StoreError::Corrupt {
                    what: "test",
                    detail: "refused inside the change".into(),
                })
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert_eq!(store.get_client("c1").unwrap().unwrap().client_name, "one");
        assert!(
            store
                .update_client::<StoreError, _>("nope", |_| Ok(()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn search_filters_and_pages() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        for i in 0..5 {
            let status = if i % 2 == 0 {
                ClientStatus::Active
            } else {
                ClientStatus::Inactive
            };
            let scopes: &[&str] = if i < 2 { &["read"] } else { &["write"] };
            store
                .insert_client(&client(&format!("c{i}"), &format!("n{i}"), scopes, status))
                .unwrap();
        }
        let all = ClientQuery::default();
        let p1 = store.search_clients(&all, None, 2).unwrap();
        assert_eq!(p1.total, 5);
        assert_eq!(
            p1.clients
                .iter()
                .map(|c| c.client_id.as_str())
                .collect::<Vec<_>>(),
            ["c0", "c1"]
        );
        let p2 = store.search_clients(&all, p1.next_after, 2).unwrap();
        let p3 = store.search_clients(&all, p2.next_after, 2).unwrap();
        assert_eq!(p3.clients.len(), 1);
        assert_eq!(p3.next_after, None);

        let q = ClientQuery {
            any: false,
            filters: vec![
                Filter {
                    field: FilterField::Status,
                    values: vec!["active".into()],
                },
                Filter {
                    field: FilterField::Scopes,
                    values: vec!["write".into(), "other".into()],
                },
            ],
        };
        let ids: Vec<String> = store
            .search_clients(&q, None, 100)
            .unwrap()
            .clients
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(ids, ["c2", "c4"]);

        let q = ClientQuery {
            any: true,
            filters: vec![
                Filter {
                    field: FilterField::ClientId,
                    values: vec!["c0".into()],
                },
                Filter {
                    field: FilterField::ClientName,
                    values: vec!["n3".into()],
                },
            ],
        };
        let page = store.search_clients(&q, None, 100).unwrap();
        assert_eq!(page.total, 2);
    }

    #[test]
    fn key_lifecycle() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        assert!(store.active_key().unwrap().is_none());
        let k1 = crate::issuer::keys::generate().unwrap();
        assert!(store.insert_initial_key(&k1).unwrap());
        let k_lost = crate::issuer::keys::generate().unwrap();
        assert!(!store.insert_initial_key(&k_lost).unwrap());
        let k2 = crate::issuer::keys::generate().unwrap();
        assert_eq!(store.rotate_key(&k2).unwrap(), Some(k1.kid.clone()));
        assert_eq!(store.active_key().unwrap().unwrap().kid, k2.kid);
        let published: Vec<String> = store
            .published_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(published, [k1.kid.clone(), k2.kid.clone()]);
        assert_eq!(store.retire_key(&k2.kid).unwrap(), RetireOutcome::IsActive);
        assert_eq!(store.retire_key("nope").unwrap(), RetireOutcome::NotFound);
        assert_eq!(store.retire_key(&k1.kid).unwrap(), RetireOutcome::Retired);
        assert_eq!(
            store.retire_key(&k1.kid).unwrap(),
            RetireOutcome::AlreadyRetired
        );
        assert_eq!(store.published_keys().unwrap().len(), 1);
        assert_eq!(store.all_keys().unwrap().len(), 2);
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn companion(path: &Path, suffix: &str) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// The database file and its WAL, as a thief copying them would get them.
    fn raw_bytes(path: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        if let Ok(wal) = std::fs::read(companion(path, "-wal")) {
            bytes.extend(wal);
        }
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// What must not be found in the file: the whole DER, its private part,
    /// and the public modulus (nothing in the database stores it in clear).
    fn key_fingerprints(key: &GeneratedKey) -> Vec<Vec<u8>> {
        use base64::Engine as _;
        let der = key.pkcs8.as_bytes();
        let signing = crate::issuer::keys::SigningKey::from_pkcs8(&key.kid, &key.pkcs8).unwrap();
        let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&signing.jwk().n)
            .unwrap();
        vec![
            der.to_vec(),
            der[der.len() - 64..].to_vec(),
            modulus[..32].to_vec(),
        ]
    }

    #[test]
    fn database_and_companions_are_created_owner_only() {
        let db = TempDb::new();
        let path = db.dir.join("new/sub/issuer.db");
        let mut store = Store::open(&path, &test_secret()).unwrap();
        store
            .insert_initial_key(&crate::issuer::keys::generate().unwrap())
            .unwrap();
        assert_eq!(mode(&db.dir.join("new")), 0o700);
        assert_eq!(mode(&db.dir.join("new/sub")), 0o700);
        for file in [
            path.clone(),
            companion(&path, "-wal"),
            companion(&path, "-shm"),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn readable_database_or_companion_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let db = TempDb::new();
        drop(Store::open(&db.path, &test_secret()).unwrap());
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        for bad in [0o644, 0o640, 0o604, 0o660] {
            set(&db.path, bad);
            let err = Store::open(&db.path, &test_secret()).unwrap_err();
            assert!(
                matches!(err, StoreError::Files(PrivateFileError::TooOpen { .. })),
                "{bad:o}: {err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("chmod 600 {}", db.path.display())),
                "{err}"
            );
        }
        set(&db.path, 0o600);
        // A -wal someone planted (or an old run left) readable.
        let wal = companion(&db.path, "-wal");
        std::fs::write(&wal, b"").unwrap();
        set(&wal, 0o644);
        let err = Store::open(&db.path, &test_secret()).unwrap_err();
        assert!(err.to_string().contains("-wal"), "{err}");
        std::fs::remove_file(&wal).unwrap();
        // A symlink in place of the database.
        let link = db.dir.join("link.db");
        std::os::unix::fs::symlink(&db.path, &link).unwrap();
        assert!(matches!(
            Store::open(&link, &test_secret()),
            Err(StoreError::Files(PrivateFileError::Symlink { .. }))
        ));
        // A folder every user can write.
        set(&db.dir, 0o1777);
        let err = Store::open(&db.path, &test_secret()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Files(PrivateFileError::SharedFolder { .. })
            ),
            "{err}"
        );
        set(&db.dir, 0o700);
        Store::open(&db.path, &test_secret()).unwrap();
    }

    #[test]
    fn keys_are_sealed_and_open_only_with_the_project_secret() {
        let db = TempDb::new();
        let k1 = crate::issuer::keys::generate().unwrap();
        let k2 = crate::issuer::keys::generate().unwrap();
        {
            let mut store = Store::open(&db.path, &test_secret()).unwrap();
            store.insert_initial_key(&k1).unwrap();
            store.rotate_key(&k2).unwrap();
            let bytes = raw_bytes(&db.path);
            for key in [&k1, &k2] {
                for print in key_fingerprints(key) {
                    assert!(!contains(&bytes, &print), "key material in the file");
                }
            }
            assert_eq!(store.active_key().unwrap().unwrap().pkcs8, k2.pkcs8);
        }
        let err =
            Store::open(&db.path, &ProjectSecret::new("another-secret-0123456789")).unwrap_err();
        assert!(
            matches!(err, StoreError::WrongProjectSecret { .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("another-secret"), "{err}");
        assert!(!err.to_string().contains(test_secret().expose()), "{err}");

        // Swapping sealed rows between kids does not yield a usable key.
        let conn = Connection::open(&db.path).unwrap();
        conn.execute_batch(&format!(
            "UPDATE signing_keys SET sealed_pkcs8 = \
             (SELECT sealed_pkcs8 FROM signing_keys WHERE kid = '{}') WHERE kid = '{}'",
            k1.kid, k2.kid
        ))
        .unwrap();
        drop(conn);
        let store = Store::open(&db.path, &test_secret()).unwrap();
        assert!(matches!(
            store.active_key(),
            Err(StoreError::KeyDoesNotOpen { kid }) if kid == k2.kid
        ));
    }

    #[test]
    fn plaintext_keys_of_schema_1_are_sealed_on_open() {
        let db = TempDb::new();
        assert!(crate::issuer::private_files::create_new(&db.path, "test").unwrap());
        let k1 = crate::issuer::keys::generate().unwrap();
        let k2 = crate::issuer::keys::generate().unwrap();
        {
            let conn = Connection::open(&db.path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (key, state) in [(&k1, "published"), (&k2, "active")] {
                conn.execute(
                    "INSERT INTO signing_keys (kid, private_key_pkcs8, state, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![key.kid, key.pkcs8.as_bytes(), state, now_unix()],
                )
                .unwrap();
            }
        }
        assert!(contains(&raw_bytes(&db.path), k1.pkcs8.as_bytes()));

        let store = Store::open(&db.path, &test_secret()).unwrap();
        assert_eq!(Store::schema_version(&store.conn).unwrap(), LATEST);
        // Same keys, same kids, same states: nothing an operator loses.
        assert_eq!(store.active_key().unwrap().unwrap().pkcs8, k2.pkcs8);
        let published = store.published_keys().unwrap();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].kid, k1.kid);
        assert_eq!(published[0].pkcs8, k1.pkcs8);
        let bytes = raw_bytes(&db.path);
        for key in [&k1, &k2] {
            for print in key_fingerprints(key) {
                assert!(!contains(&bytes, &print), "plaintext left after migration");
            }
        }
        drop(store);
        // Sealed under the secret it was migrated with.
        assert!(matches!(
            Store::open(&db.path, &ProjectSecret::new("another-secret-0123456789")),
            Err(StoreError::WrongProjectSecret { .. })
        ));
    }
}
