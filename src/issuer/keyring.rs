//! Which keys sign and which are published, as recorded in the database.
//!
//! The CLI may rotate or retire keys while a server process runs, so the
//! server never keeps its own idea of the current key: every token and JWKS
//! request reads the key rows (a cheap indexed read). Only the parsed key
//! material is cached, by kid, because a kid's key never changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::keys::{self, KeyError, SigningKey};
use super::store::{KeyRecord, RetireOutcome, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the issuer database has no active signing key")]
    NoActiveKey,
    #[error("no signing key with kid {0:?}")]
    UnknownKid(String),
    #[error("key {0:?} signs new tokens; rotate first, then retire it")]
    RetireActive(String),
    #[error("key {0:?} is already retired")]
    AlreadyRetired(String),
}

/// Creates the first signing key unless one exists. Key generation happens
/// outside the write transaction, so a concurrent first start merely wastes
/// one generated key.
pub fn ensure_signing_key(store: &mut Store) -> Result<(), KeyringError> {
    if store.active_key()?.is_some() {
        return Ok(());
    }
    let key = keys::generate()?;
    if store.insert_initial_key(&key)? {
        tracing::info!(kid = %key.kid, "generated the issuer's first signing key");
    }
    Ok(())
}

/// Outcome of a rotation: the new signing kid and the one it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub new_kid: String,
    pub previous_kid: Option<String>,
}

pub fn rotate(store: &mut Store) -> Result<Rotation, KeyringError> {
    let key = keys::generate()?;
    let previous_kid = store.rotate_key(&key)?;
    Ok(Rotation {
        new_kid: key.kid,
        previous_kid,
    })
}

pub fn retire(store: &mut Store, kid: &str) -> Result<(), KeyringError> {
    match store.retire_key(kid)? {
        RetireOutcome::Retired => Ok(()),
        RetireOutcome::NotFound => Err(KeyringError::UnknownKid(kid.to_owned())),
        RetireOutcome::IsActive => Err(KeyringError::RetireActive(kid.to_owned())),
        RetireOutcome::AlreadyRetired => Err(KeyringError::AlreadyRetired(kid.to_owned())),
    }
}

/// Parsed keys by kid.
#[derive(Debug, Default)]
pub struct KeyCache {
    parsed: Mutex<HashMap<String, Arc<SigningKey>>>,
}

impl KeyCache {
    pub fn get(&self, record: &KeyRecord) -> Result<Arc<SigningKey>, KeyError> {
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = parsed.get(&record.kid) {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(SigningKey::from_pkcs8(&record.kid, &record.pkcs8)?);
        parsed.insert(record.kid.clone(), Arc::clone(&key));
        Ok(key)
    }

    /// Forgets keys no longer published, so retired key material does not
    /// linger in memory.
    pub fn retain(&self, published: &[KeyRecord]) {
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        parsed.retain(|kid, _| published.iter().any(|r| &r.kid == kid));
    }

    pub fn signing_key(&self, store: &Store) -> Result<Arc<SigningKey>, KeyringError> {
        let record = store.active_key()?.ok_or(KeyringError::NoActiveKey)?;
        Ok(self.get(&record)?)
    }

    pub fn published(&self, store: &Store) -> Result<Vec<Arc<SigningKey>>, KeyringError> {
        let records = store.published_keys()?;
        self.retain(&records);
        records
            .iter()
            .map(|r| self.get(r).map_err(KeyringError::from))
            .collect()
    }
}
