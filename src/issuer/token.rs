//! What goes into an access token: granted scopes and claims.

use std::time::Duration;

use serde_json::{Map, Value, json};
use thiserror::Error;

use super::clients::context;
use super::keys::{KeyError, SigningKey};
use super::store::ClientRecord;
use super::template::{ClaimsTemplate, TemplateError};

#[derive(Debug, Error)]
pub enum MintError {
    #[error("custom claims for client {client_id}: {source}")]
    Claims {
        client_id: String,
        source: TemplateError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Scopes a token gets: all of the client's when none are requested,
/// otherwise exactly the requested ones, each of which the client must hold.
/// Returns the first requested scope the client lacks.
pub fn grant_scopes(
    client: &ClientRecord,
    requested: Option<Vec<String>>,
) -> Result<Vec<String>, String> {
    match requested {
        None => Ok(client.scopes.clone()),
        Some(requested) => {
            if let Some(missing) = requested.iter().find(|s| !client.scopes.contains(s)) {
                return Err(missing.clone());
            }
            Ok(requested)
        }
    }
}

/// The fixed parts of every token, from the issuer configuration.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub project_id: String,
    pub issuer: String,
    pub lifetime: Duration,
}

pub fn mint(
    settings: &TokenSettings,
    template: &ClaimsTemplate,
    custom_audience: Option<&str>,
    key: &SigningKey,
    client: &ClientRecord,
    scopes: &[String],
    now: i64,
) -> Result<String, MintError> {
    let mut claims: Map<String, Value> =
        template
            .render(&context(client))
            .map_err(|source| MintError::Claims {
                client_id: client.client_id.clone(),
                source,
            })?;
    let lifetime = i64::try_from(settings.lifetime.as_secs()).unwrap_or(i64::MAX);
    // Reserved names cannot come from the template, so these never clash
    // with custom claims.
    claims.insert("sub".into(), json!(client.client_id));
    claims.insert("iss".into(), json!(settings.issuer));
    // A custom audience is added, never put in the project id's place: see
    // `super::m2m_template`.
    let aud = match custom_audience {
        Some(extra) if extra != settings.project_id => json!([settings.project_id, extra]),
        _ => json!([settings.project_id]),
    };
    claims.insert("aud".into(), aud);
    claims.insert("scope".into(), json!(scopes.join(" ")));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now.saturating_add(lifetime)));
    Ok(key.sign(&claims)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::secrets::ClientSecret;
    use crate::issuer::store::{ClientStatus, StoredSecret};

    fn client(scopes: &[&str]) -> ClientRecord {
        let s = ClientSecret::generate();
        ClientRecord {
            client_id: "c1".into(),
            client_name: String::new(),
            client_description: String::new(),
            status: ClientStatus::Active,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            trusted_metadata: json!({"user_id": "u1"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            secret: StoredSecret {
                hash: s.hash(),
                last_four: s.last_four(),
            },
            next_secret: None,
            created_at: 0,
        }
    }

    #[test]
    fn scope_narrowing() {
        let c = client(&["a", "b"]);
        assert_eq!(grant_scopes(&c, None).unwrap(), ["a", "b"]);
        assert_eq!(grant_scopes(&c, Some(vec!["b".into()])).unwrap(), ["b"]);
        assert_eq!(
            grant_scopes(&c, Some(vec![])).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            grant_scopes(&c, Some(vec!["a".into(), "z".into()])).unwrap_err(),
            "z"
        );
    }

    /// A minted token's claims (its signature is checked elsewhere).
    fn payload(token: &str) -> Value {
        use base64::Engine as _;
        let part = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn minted_claims() {
        let generated = crate::issuer::keys::generate().unwrap();
        let key = SigningKey::from_pkcs8(&generated.kid, &generated.pkcs8).unwrap();
        let settings = TokenSettings {
            project_id: "p1".into(),
            issuer: "stytch.com/p1".into(),
            lifetime: Duration::from_secs(60),
        };
        let c = client(&["a", "b"]);
        let token = mint(
            &settings,
            &ClaimsTemplate::default(),
            None,
            &key,
            &c,
            &["a".into(), "b".into()],
            1000,
        )
        .unwrap();
        assert_eq!(
            payload(&token),
            json!({"sub": "c1", "iss": "stytch.com/p1", "aud": ["p1"], "scope": "a b",
                   "iat": 1000, "nbf": 1000, "exp": 1060, "user_id": "u1"})
        );
        for (custom, expected) in [
            (Some("my-api"), json!(["p1", "my-api"])),
            (Some("p1"), json!(["p1"])),
        ] {
            let token = mint(
                &settings,
                &ClaimsTemplate::default(),
                custom,
                &key,
                &c,
                &[],
                1000,
            )
            .unwrap();
            assert_eq!(payload(&token)["aud"], expected);
        }
    }
}
