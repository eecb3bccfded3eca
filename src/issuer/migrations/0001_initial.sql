-- Schema version 1 of the embedded issuer database.
-- Applied once, inside a transaction, by src/issuer/store.rs; the version is
-- tracked with PRAGMA user_version so the file itself never changes.

CREATE TABLE m2m_clients (
    -- Monotonic row id: gives search results a stable order and pagination
    -- cursors that survive deletions (AUTOINCREMENT never reuses ids).
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL UNIQUE,
    -- '' means "no name"; only non-empty names must be unique.
    client_name TEXT NOT NULL DEFAULT '',
    client_description TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    -- JSON array of scope strings.
    scopes TEXT NOT NULL,
    -- JSON object.
    trusted_metadata TEXT NOT NULL,
    -- SHA-256 of the secret; the secret itself is never stored.
    secret_hash BLOB NOT NULL,
    secret_last_four TEXT NOT NULL,
    -- Present only while a secret rotation is in progress.
    next_secret_hash BLOB,
    next_secret_last_four TEXT,
    created_at INTEGER NOT NULL,
    CHECK ((next_secret_hash IS NULL) = (next_secret_last_four IS NULL))
);

CREATE UNIQUE INDEX m2m_clients_name_unique
    ON m2m_clients (client_name) WHERE client_name <> '';

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    -- Unencrypted PKCS#8 DER of an RSA-2048 private key.
    private_key_pkcs8 BLOB NOT NULL,
    -- active: signs new tokens and is published; published: only in JWKS so
    -- tokens it signed keep verifying; retired: gone from JWKS.
    state TEXT NOT NULL CHECK (state IN ('active', 'published', 'retired')),
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);

-- At most one key signs at any time, even with several writers.
CREATE UNIQUE INDEX signing_keys_one_active
    ON signing_keys (state) WHERE state = 'active';
