-- Schema version 2: signing keys sealed at rest (src/issuer/seal.rs).
-- Applied once, inside the same transaction as the version bump. Rows that
-- still hold a plaintext key are sealed by Store::open right after, and their
-- plaintext column is overwritten; new rows never hold plaintext.

-- One row: the HKDF salt of this database and a value sealed under the
-- derived key, which tells a changed project secret from a damaged row.
CREATE TABLE key_seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    salt BLOB NOT NULL,
    check_value BLOB NOT NULL
);

-- Format byte ‖ 24-byte nonce ‖ XChaCha20-Poly1305 ciphertext of the PKCS#8
-- DER, with the kid as associated data. NULL only on rows written by schema
-- version 1, until Store::open seals them; private_key_pkcs8 is then empty.
ALTER TABLE signing_keys ADD COLUMN sealed_pkcs8 BLOB;
