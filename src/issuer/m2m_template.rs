//! The M2M claims template in force, as Stytch manages it.
//!
//! The template lives in the database (`jwt_templates`), not in the
//! configuration: the configuration's `claims_template` is only copied in on
//! the first open of a database that has none. The management API
//! (`PUT …/jwt_templates/M2M`) and `m2m-authz issuer template set` replace
//! it, possibly from another process while a server runs, so the server
//! reads the row on every token request (one indexed read, like the signing
//! key) and keeps only the parsed form, reparsed when the row changes.
//!
//! `custom_audience` is added to the tokens' `aud` next to the project id
//! (`aud = [project_id, custom_audience]`). Stytch documents the same
//! "additional custom audience" rule for its Connected Apps access tokens
//! (`access_token_custom_audience`); for M2M templates it documents none. Adding
//! rather than replacing keeps every verifier that checks the project id
//! (Stytch's own SDKs' `authenticate_token`, the sidecar's stytch profile by
//! default) working, while a verifier that wants the custom value can
//! require it.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Map;
use thiserror::Error;

use super::store::{Store, StoreError, StoredTemplate, now_unix};
use super::template::{ClaimsTemplate, ClientContext, TemplateError};

/// Longest `custom_audience` accepted; it lands in every token.
pub const MAX_CUSTOM_AUDIENCE_LEN: usize = 256;

#[derive(Debug, Error)]
pub enum SetTemplateError {
    #[error("template_content: {0}")]
    Template(#[from] TemplateError),
    #[error(
        "custom_audience must be at most {MAX_CUSTOM_AUDIENCE_LEN} characters of printable \
         ASCII without spaces"
    )]
    Audience,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A template ready to mint with.
#[derive(Debug)]
pub struct ActiveTemplate {
    pub claims: ClaimsTemplate,
    /// Added to `aud` after the project id; `None` for none.
    pub custom_audience: Option<String>,
}

impl ActiveTemplate {
    /// Checks what `PUT` and `template set` accept: the content parses, a
    /// client with no metadata renders within the size limit, and the
    /// audience is a plain string.
    pub fn check(content: &str, custom_audience: &str) -> Result<Self, SetTemplateError> {
        let claims = ClaimsTemplate::parse(content)?;
        let empty = Map::new();
        claims.render(&ClientContext {
            client_id: "m2m-client-template-check",
            client_name: "",
            scopes: &[],
            trusted_metadata: &empty,
        })?;
        let audience_ok = custom_audience.len() <= MAX_CUSTOM_AUDIENCE_LEN
            && custom_audience.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !audience_ok {
            return Err(SetTemplateError::Audience);
        }
        Ok(Self {
            claims,
            custom_audience: (!custom_audience.is_empty()).then(|| custom_audience.to_owned()),
        })
    }

    fn from_stored(stored: &StoredTemplate) -> Result<Self, StoreError> {
        Self::check(&stored.content, &stored.custom_audience).map_err(|e| StoreError::Corrupt {
            what: "M2M template",
            detail: e.to_string(),
        })
    }
}

/// Stores `initial` (the configuration's template) unless the database
/// already holds one; returns the one in force.
pub fn ensure(store: &mut Store, initial: &ClaimsTemplate) -> Result<StoredTemplate, StoreError> {
    store.ensure_template(&StoredTemplate {
        content: initial.source().to_owned(),
        custom_audience: String::new(),
        updated_at: now_unix(),
    })
}

/// Validates and stores a new template; a running server uses it for its
/// next token.
pub fn set(
    store: &mut Store,
    content: &str,
    custom_audience: &str,
) -> Result<StoredTemplate, SetTemplateError> {
    ActiveTemplate::check(content, custom_audience)?;
    let stored = StoredTemplate {
        content: content.to_owned(),
        custom_audience: custom_audience.to_owned(),
        updated_at: now_unix(),
    };
    store.set_template(&stored)?;
    Ok(stored)
}

/// The template in force, read from the database on each call and parsed
/// only when it changed. Holds one parsed template.
#[derive(Debug, Default)]
pub struct TemplateCache {
    last: Mutex<Option<(StoredTemplate, Arc<ActiveTemplate>)>>,
}

impl TemplateCache {
    pub fn current(&self, store: &Store) -> Result<Arc<ActiveTemplate>, StoreError> {
        let stored = store.template()?.ok_or(StoreError::Corrupt {
            what: "M2M template",
            detail: "no template row (the database was changed by hand?)".into(),
        })?;
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, active)) = last.as_ref()
            && *seen == stored
        {
            return Ok(Arc::clone(active));
        }
        let active = Arc::new(ActiveTemplate::from_stored(&stored)?);
        *last = Some((stored, Arc::clone(&active)));
        Ok(active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::store::tests::{TempDb, test_secret};
    use crate::issuer::template::DEFAULT_CLAIMS_TEMPLATE;

    #[test]
    fn config_template_is_only_the_initial_one() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        let first = ClaimsTemplate::parse(r#"{"a": {{ client.trusted_metadata.a }}}"#).unwrap();
        assert_eq!(ensure(&mut store, &first).unwrap().content, first.source());
        set(&mut store, r#"{"b": 1}"#, "my-api").unwrap();
        // A later open with another config template keeps the stored one.
        let other = ClaimsTemplate::parse(DEFAULT_CLAIMS_TEMPLATE).unwrap();
        let kept = ensure(&mut store, &other).unwrap();
        assert_eq!(kept.content, r#"{"b": 1}"#);
        assert_eq!(kept.custom_audience, "my-api");
    }

    #[test]
    fn a_database_of_schema_3_gets_the_config_template_and_keeps_its_keys() {
        let db = TempDb::new();
        let kid = {
            let mut store = Store::open(&db.path, &test_secret()).unwrap();
            crate::issuer::keyring::ensure_signing_key(&mut store).unwrap();
            store.active_key().unwrap().unwrap().kid
        };
        // Back to what a binary before schema 4 left behind.
        {
            let conn = rusqlite::Connection::open(&db.path).unwrap();
            conn.execute_batch("DROP TABLE jwt_templates; PRAGMA user_version = 3;")
                .unwrap();
        }
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        assert_eq!(store.template().unwrap(), None);
        let config_template =
            ClaimsTemplate::parse(r#"{"user_id": {{ client.trusted_metadata.stytch_user_id }}}"#)
                .unwrap();
        let stored = ensure(&mut store, &config_template).unwrap();
        assert_eq!(stored.content, config_template.source());
        assert_eq!(stored.custom_audience, "");
        let active = TemplateCache::default().current(&store).unwrap();
        assert_eq!(active.claims, config_template);
        assert_eq!(active.custom_audience, None);
        assert_eq!(store.active_key().unwrap().unwrap().kid, kid);
    }

    #[test]
    fn cache_follows_writes_from_another_connection() {
        let db = TempDb::new();
        let mut server = Store::open(&db.path, &test_secret()).unwrap();
        ensure(&mut server, &ClaimsTemplate::default()).unwrap();
        let cache = TemplateCache::default();
        let before = cache.current(&server).unwrap();
        assert_eq!(before.claims.source(), DEFAULT_CLAIMS_TEMPLATE);
        assert_eq!(before.custom_audience, None);
        assert!(Arc::ptr_eq(&before, &cache.current(&server).unwrap()));

        let mut cli = Store::open(&db.path, &test_secret()).unwrap();
        set(&mut cli, r#"{"tier": "gold"}"#, "aud-2").unwrap();
        let after = cache.current(&server).unwrap();
        assert_eq!(after.claims.source(), r#"{"tier": "gold"}"#);
        assert_eq!(after.custom_audience.as_deref(), Some("aud-2"));
    }

    #[test]
    fn bad_templates_and_audiences_are_refused_and_nothing_is_stored() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        ensure(&mut store, &ClaimsTemplate::default()).unwrap();
        let big = format!(r#"{{"x": "{}"}}"#, "a".repeat(5000));
        for (content, audience) in [
            ("not json", ""),
            ("", ""),
            ("[]", ""),
            (r#"{"aud": "x"}"#, ""),
            (r#"{"u": "{{ client.trusted_metadata.u }}"}"#, ""),
            (r#"{"u": {{ client.secret }}}"#, ""),
            (big.as_str(), ""),
            ("{}", "has space"),
            ("{}", "tab\there"),
            ("{}", "é"),
        ] {
            let err = set(&mut store, content, audience).unwrap_err();
            assert!(
                matches!(
                    err,
                    SetTemplateError::Template(_) | SetTemplateError::Audience
                ),
                "{content:?} {audience:?}: {err}"
            );
        }
        let long = "a".repeat(MAX_CUSTOM_AUDIENCE_LEN + 1);
        assert!(matches!(
            set(&mut store, "{}", &long),
            Err(SetTemplateError::Audience)
        ));
        assert_eq!(
            store.template().unwrap().unwrap().content,
            DEFAULT_CLAIMS_TEMPLATE
        );
    }

    #[test]
    fn a_row_damaged_by_hand_is_reported_not_used() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &test_secret()).unwrap();
        store
            .set_template(&StoredTemplate {
                content: "{broken".into(),
                custom_audience: String::new(),
                updated_at: 0,
            })
            .unwrap();
        let err = TemplateCache::default().current(&store).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
