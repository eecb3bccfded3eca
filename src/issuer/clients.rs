//! Client management rules shared by the HTTP API and the CLI, so both refuse
//! the same bad input with the same messages.

use serde::Serialize;
use serde_json::{Map, Value};
use subtle::Choice;
use thiserror::Error;

use super::scopes::{self, ScopeError};
use super::secrets::{self, ClientSecret, SecretHash};
use super::store::{ClientRecord, ClientStatus, Store, StoreError, StoredSecret, now_unix};
use super::template::{ClaimsTemplate, ClientContext, TemplateError};

const MAX_CLIENT_ID_LEN: usize = 128;
const MAX_NAME_LEN: usize = 256;
const MAX_DESCRIPTION_LEN: usize = 2048;
/// Trusted metadata is copied into tokens; Stytch's limits (4 KB of JSON, 20
/// top-level keys) keep rows and renders small, and a client this issuer
/// accepts is one Stytch accepts too.
pub const MAX_TRUSTED_METADATA_BYTES: usize = 4 * 1024;
pub const MAX_TRUSTED_METADATA_KEYS: usize = 20;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("m2m client {0:?} not found")]
    NotFound(String),
    /// `error_type` is the name Stytch gives this refusal.
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        error_type: &'static str,
        message: String,
    },
    #[error("client {0:?} already has a secret rotation in progress; complete or cancel it first")]
    RotationInProgress(String),
    #[error("client {0:?} has no secret rotation in progress")]
    NoRotation(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A refusal of `field`, under the `error_type` Stytch uses for it.
fn invalid(field: &'static str, message: impl Into<String>) -> ClientError {
    let error_type = match field {
        "client_id" => "m2m_client_invalid_client_id",
        "client_name" => "m2m_client_invalid_client_name",
        "client_description" => "m2m_client_invalid_client_description",
        "client_secret" => "m2m_client_invalid_client_secret",
        "scopes" => "invalid_m2m_client_scope",
        "trusted_metadata" => "metadata_too_large",
        _ => "bad_request",
    };
    invalid_as(field, error_type, message)
}

fn invalid_as(
    field: &'static str,
    error_type: &'static str,
    message: impl Into<String>,
) -> ClientError {
    ClientError::Invalid {
        field,
        error_type,
        message: message.into(),
    }
}

impl From<ScopeError> for ClientError {
    fn from(e: ScopeError) -> Self {
        match e {
            ScopeError::TooMany => {
                invalid_as("scopes", "too_many_m2m_client_scopes", e.to_string())
            }
            _ => invalid("scopes", e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NewClient {
    /// Generated (`m2m-client-test-…`) when absent.
    pub client_id: Option<String>,
    /// An existing secret to import; generated when absent. Checked by
    /// [`secrets::check_imported_secret`].
    pub client_secret: Option<ClientSecret>,
    pub client_name: String,
    pub client_description: String,
    pub scopes: Vec<String>,
    pub trusted_metadata: Map<String, Value>,
}

/// Fields left `None` keep their value.
#[derive(Debug, Clone, Default)]
pub struct ClientUpdate {
    pub client_name: Option<String>,
    pub client_description: Option<String>,
    pub status: Option<ClientStatus>,
    pub scopes: Option<Vec<String>>,
    pub trusted_metadata: Option<Map<String, Value>>,
}

/// The client as the API shows it. Secrets appear only in the one response
/// that creates them; there is no `Debug` so they cannot be logged by it.
#[derive(Serialize)]
pub struct ClientView {
    pub client_id: String,
    pub client_name: String,
    pub client_description: String,
    pub status: ClientStatus,
    pub scopes: Vec<String>,
    pub client_secret_last_four: String,
    pub next_client_secret_last_four: Option<String>,
    pub trusted_metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_client_secret: Option<String>,
}

impl From<&ClientRecord> for ClientView {
    fn from(c: &ClientRecord) -> Self {
        Self {
            client_id: c.client_id.clone(),
            client_name: c.client_name.clone(),
            client_description: c.client_description.clone(),
            status: c.status,
            scopes: c.scopes.clone(),
            client_secret_last_four: c.secret.last_four.clone(),
            next_client_secret_last_four: c.next_secret.as_ref().map(|s| s.last_four.clone()),
            trusted_metadata: c.trusted_metadata.clone(),
            client_secret: None,
            next_client_secret: None,
        }
    }
}

pub fn context(client: &ClientRecord) -> ClientContext<'_> {
    ClientContext {
        client_id: &client.client_id,
        client_name: &client.client_name,
        scopes: &client.scopes,
        trusted_metadata: &client.trusted_metadata,
    }
}

/// Client ids go into URL paths, so only unreserved URL characters; `search`
/// would collide with the search endpoint's path.
fn validate_client_id(id: &str) -> Result<(), ClientError> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN {
        return Err(invalid(
            "client_id",
            format!("must be 1 to {MAX_CLIENT_ID_LEN} characters"),
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    {
        return Err(invalid(
            "client_id",
            "may contain only letters, digits, '-', '_', '.' and '~'",
        ));
    }
    if id == "search" || id == "." || id == ".." {
        return Err(invalid("client_id", format!("{id:?} is reserved")));
    }
    Ok(())
}

fn validate_text(field: &'static str, value: &str, max: usize) -> Result<(), ClientError> {
    if value.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks that the client's metadata fits and that the configured template
/// renders within the claim limit for it, so a client that could never get a
/// token is refused when it is created or changed, not at its first request.
fn validate_claims(client: &ClientRecord, template: &ClaimsTemplate) -> Result<(), ClientError> {
    let keys = client.trusted_metadata.len();
    if keys > MAX_TRUSTED_METADATA_KEYS {
        return Err(invalid_as(
            "trusted_metadata",
            "metadata_too_many_keys",
            format!("has {keys} top-level keys, more than the {MAX_TRUSTED_METADATA_KEYS} allowed"),
        ));
    }
    let size = serde_json::to_string(&client.trusted_metadata).map_or(usize::MAX, |s| s.len());
    if size > MAX_TRUSTED_METADATA_BYTES {
        return Err(invalid(
            "trusted_metadata",
            format!("takes {size} bytes, more than the {MAX_TRUSTED_METADATA_BYTES} allowed"),
        ));
    }
    match template.render(&context(client)) {
        Ok(_) => Ok(()),
        Err(e @ TemplateError::TooLarge { .. }) => Err(invalid_as(
            "trusted_metadata",
            "custom_claims_too_large",
            e.to_string(),
        )),
        Err(e) => Err(invalid("claims_template", e.to_string())),
    }
}

pub fn create(
    store: &mut Store,
    template: &ClaimsTemplate,
    new: NewClient,
) -> Result<(ClientRecord, ClientSecret), ClientError> {
    let client_id = match new.client_id {
        Some(id) => {
            validate_client_id(&id)?;
            id
        }
        None => secrets::generate_client_id(),
    };
    validate_text("client_name", &new.client_name, MAX_NAME_LEN)?;
    validate_text(
        "client_description",
        &new.client_description,
        MAX_DESCRIPTION_LEN,
    )?;
    let secret = match new.client_secret {
        Some(given) => {
            secrets::check_imported_secret(given.expose()).map_err(|refusal| {
                let error_type = match refusal {
                    secrets::SecretRefusal::Weak { .. } => "insecure_m2m_client_secret",
                    _ => "m2m_client_invalid_client_secret",
                };
                invalid_as("client_secret", error_type, refusal.to_string())
            })?;
            given
        }
        None => ClientSecret::generate(),
    };
    let record = ClientRecord {
        client_id,
        client_name: new.client_name,
        client_description: new.client_description,
        status: ClientStatus::Active,
        scopes: scopes::normalize_client_scopes(new.scopes)?,
        trusted_metadata: new.trusted_metadata,
        secret: StoredSecret {
            hash: secret.hash(),
            last_four: secret.last_four(),
        },
        next_secret: None,
        created_at: now_unix(),
    };
    validate_claims(&record, template)?;
    store.insert_client(&record)?;
    Ok((record, secret))
}

pub fn get(store: &Store, client_id: &str) -> Result<ClientRecord, ClientError> {
    store
        .get_client(client_id)?
        .ok_or_else(|| ClientError::NotFound(client_id.to_owned()))
}

pub fn update(
    store: &mut Store,
    template: &ClaimsTemplate,
    client_id: &str,
    update: ClientUpdate,
) -> Result<ClientRecord, ClientError> {
    if let Some(name) = &update.client_name {
        validate_text("client_name", name, MAX_NAME_LEN)?;
    }
    if let Some(description) = &update.client_description {
        validate_text("client_description", description, MAX_DESCRIPTION_LEN)?;
    }
    let scopes = update
        .scopes
        .map(scopes::normalize_client_scopes)
        .transpose()?;
    store
        .update_client(client_id, |c| {
            if let Some(v) = update.client_name {
                c.client_name = v;
            }
            if let Some(v) = update.client_description {
                c.client_description = v;
            }
            if let Some(v) = update.status {
                c.status = v;
            }
            if let Some(v) = scopes {
                c.scopes = v;
            }
            if let Some(v) = update.trusted_metadata {
                c.trusted_metadata = v;
            }
            validate_claims(c, template)
        })?
        .ok_or_else(|| ClientError::NotFound(client_id.to_owned()))
}

pub fn set_status(
    store: &mut Store,
    template: &ClaimsTemplate,
    client_id: &str,
    status: ClientStatus,
) -> Result<ClientRecord, ClientError> {
    update(
        store,
        template,
        client_id,
        ClientUpdate {
            status: Some(status),
            ..ClientUpdate::default()
        },
    )
}

pub fn delete(store: &mut Store, client_id: &str) -> Result<(), ClientError> {
    if store.delete_client(client_id)? {
        Ok(())
    } else {
        Err(ClientError::NotFound(client_id.to_owned()))
    }
}

/// Adds a second valid secret, returned once; the old one keeps working
/// until the rotation is completed.
pub fn rotate_start(
    store: &mut Store,
    client_id: &str,
) -> Result<(ClientRecord, ClientSecret), ClientError> {
    let next = ClientSecret::generate();
    let record = store
        .update_client(client_id, |c| {
            if c.next_secret.is_some() {
                return Err(ClientError::RotationInProgress(client_id.to_owned()));
            }
            c.next_secret = Some(StoredSecret {
                hash: next.hash(),
                last_four: next.last_four(),
            });
            Ok(())
        })?
        .ok_or_else(|| ClientError::NotFound(client_id.to_owned()))?;
    Ok((record, next))
}

/// The next secret becomes the only one.
pub fn rotate_complete(store: &mut Store, client_id: &str) -> Result<ClientRecord, ClientError> {
    store
        .update_client(client_id, |c| match c.next_secret.take() {
            Some(next) => {
                c.secret = next;
                Ok(())
            }
            None => Err(ClientError::NoRotation(client_id.to_owned())),
        })?
        .ok_or_else(|| ClientError::NotFound(client_id.to_owned()))
}

/// Drops the next secret; the current one stays.
pub fn rotate_cancel(store: &mut Store, client_id: &str) -> Result<ClientRecord, ClientError> {
    store
        .update_client(client_id, |c| match c.next_secret.take() {
            Some(_) => Ok(()),
            None => Err(ClientError::NoRotation(client_id.to_owned())),
        })?
        .ok_or_else(|| ClientError::NotFound(client_id.to_owned()))
}

#[derive(Debug, Error)]
pub enum AuthError {
    /// Unknown client or wrong secret; deliberately indistinguishable.
    #[error("client authentication failed")]
    BadCredentials,
    #[error("client is inactive")]
    Inactive,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a client's credentials. During a rotation both secrets are
/// accepted; an unknown client still costs a hash comparison so response
/// timing does not reveal which client ids exist.
pub fn authenticate(
    store: &Store,
    client_id: &str,
    secret: &str,
) -> Result<ClientRecord, AuthError> {
    let presented = SecretHash::of(secret);
    let Some(client) = store.get_client(client_id)? else {
        let _ = presented.ct_matches(&SecretHash::of(""));
        return Err(AuthError::BadCredentials);
    };
    let mut ok: Choice = client.secret.hash.ct_matches(&presented);
    if let Some(next) = &client.next_secret {
        ok |= next.hash.ct_matches(&presented);
    }
    if !bool::from(ok) {
        return Err(AuthError::BadCredentials);
    }
    if client.status != ClientStatus::Active {
        return Err(AuthError::Inactive);
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::store::tests::TempDb;
    use serde_json::json;

    fn new_client(user: &str, scopes: &[&str]) -> NewClient {
        NewClient {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            trusted_metadata: json!({"user_id": user})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..NewClient::default()
        }
    }

    #[test]
    fn imported_secret_authenticates_and_is_stored_as_its_hash() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &crate::issuer::store::tests::test_secret()).unwrap();
        let given = "Xk9#mQ2vR7-Lp4!zT8";
        let (c, s) = create(
            &mut store,
            &ClaimsTemplate::default(),
            NewClient {
                client_secret: Some(ClientSecret::imported(given.into())),
                ..new_client("u", &[])
            },
        )
        .unwrap();
        assert_eq!(s.expose(), given);
        assert_eq!(c.secret.last_four, "!zT8");
        assert!(authenticate(&store, &c.client_id, given).is_ok());
        assert!(authenticate(&store, &c.client_id, "Xk9#mQ2vR7-Lp4!zT9").is_err());
        drop(store);
        let raw = std::fs::read(&db.path).unwrap();
        assert!(
            !raw.windows(given.len()).any(|w| w == given.as_bytes()),
            "the imported secret is in the database file"
        );
    }

    #[test]
    fn create_authenticate_and_rotate() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &crate::issuer::store::tests::test_secret()).unwrap();
        let t = ClaimsTemplate::default();
        let (c, s1) = create(&mut store, &t, new_client("u1", &["read"])).unwrap();
        assert!(c.client_id.starts_with("m2m-client-test-"));
        assert!(authenticate(&store, &c.client_id, s1.expose()).is_ok());
        assert!(matches!(
            authenticate(&store, &c.client_id, "wrong"),
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            authenticate(&store, "nobody", s1.expose()),
            Err(AuthError::BadCredentials)
        ));

        let (_, s2) = rotate_start(&mut store, &c.client_id).unwrap();
        assert!(matches!(
            rotate_start(&mut store, &c.client_id),
            Err(ClientError::RotationInProgress(_))
        ));
        assert!(authenticate(&store, &c.client_id, s1.expose()).is_ok());
        assert!(authenticate(&store, &c.client_id, s2.expose()).is_ok());
        let done = rotate_complete(&mut store, &c.client_id).unwrap();
        assert_eq!(done.secret.last_four, s2.last_four());
        assert!(done.next_secret.is_none());
        assert!(authenticate(&store, &c.client_id, s1.expose()).is_err());
        assert!(authenticate(&store, &c.client_id, s2.expose()).is_ok());

        let (_, s3) = rotate_start(&mut store, &c.client_id).unwrap();
        rotate_cancel(&mut store, &c.client_id).unwrap();
        assert!(authenticate(&store, &c.client_id, s3.expose()).is_err());
        assert!(matches!(
            rotate_cancel(&mut store, &c.client_id),
            Err(ClientError::NoRotation(_))
        ));

        set_status(&mut store, &t, &c.client_id, ClientStatus::Inactive).unwrap();
        assert!(matches!(
            authenticate(&store, &c.client_id, s2.expose()),
            Err(AuthError::Inactive)
        ));
    }

    #[test]
    fn bad_input_is_refused_with_the_field_named() {
        let db = TempDb::new();
        let mut store = Store::open(&db.path, &crate::issuer::store::tests::test_secret()).unwrap();
        let t = ClaimsTemplate::default();
        let cases: Vec<(NewClient, &str)> = vec![
            (new_client("u", &["bad scope"]), "scopes"),
            (
                NewClient {
                    client_id: Some("has/slash".into()),
                    ..NewClient::default()
                },
                "client_id",
            ),
            (
                NewClient {
                    client_id: Some("search".into()),
                    ..NewClient::default()
                },
                "client_id",
            ),
            (
                NewClient {
                    client_name: "a\nb".into(),
                    ..NewClient::default()
                },
                "client_name",
            ),
            (new_client(&"x".repeat(5000), &[]), "trusted_metadata"),
            (
                NewClient {
                    client_secret: Some(ClientSecret::imported("short".into())),
                    ..NewClient::default()
                },
                "client_secret",
            ),
        ];
        for (new, field) in cases {
            match create(&mut store, &t, new) {
                Err(ClientError::Invalid { field: f, .. }) => assert_eq!(f, field),
                Err(other) => panic!("{field}: {other}"),
                Ok(_) => panic!("{field}: accepted"),
            }
        }
        let (c, _) = create(&mut store, &t, new_client("u", &[])).unwrap();
        let err = update(
            &mut store,
            &t,
            &c.client_id,
            ClientUpdate {
                trusted_metadata: json!({"user_id": "y".repeat(5000)}).as_object().cloned(),
                ..ClientUpdate::default()
            },
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ClientError::Invalid {
                field: "trusted_metadata",
                ..
            }
        ));
        assert!(matches!(
            get(&store, "missing"),
            Err(ClientError::NotFound(_))
        ));
        assert!(matches!(
            delete(&mut store, "missing"),
            Err(ClientError::NotFound(_))
        ));
    }
}
