//! One identity provider as the request path sees it: its token endpoint, its keys and the rules
//! its tokens must meet, as its profile resolved them (`config::ResolvedProvider`).

use std::sync::Arc;

use crate::clock::unix_now;
use crate::config::ResolvedProvider;
use crate::credentials::Secret;
use crate::exchange::{ExchangeError, Issued, TokenClient};
use crate::jwks::{Jwks, JwksError};
use crate::verify::{TokenRules, Verified, VerifyError, verify};

/// Why a token could not be checked or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenCheckError {
    /// The token itself fails a rule: the caller's problem.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// No key set could be had: the provider's problem.
    #[error("no signing keys are loaded yet")]
    KeysNotLoaded,
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

pub struct Provider {
    token: TokenClient,
    jwks: Arc<Jwks>,
    rules: TokenRules,
}

impl Provider {
    pub fn new(http: reqwest::Client, config: &ResolvedProvider) -> Self {
        let pinned = config.algorithms.iter().map(|a| a.to_jwt()).collect();
        Provider {
            token: TokenClient::new(http.clone(), config),
            jwks: Arc::new(Jwks::new(
                http,
                config.jwks_url.clone(),
                pinned,
                config.jwks_min_refetch_interval,
            )),
            rules: TokenRules {
                issuers: config.issuers.clone(),
                audiences: config.audiences.clone(),
                leeway: config.leeway,
                max_age: config.max_token_age,
                token_type: config.token_type.clone(),
                max_bytes: config.max_token_bytes,
            },
        }
    }

    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    pub async fn exchange(
        &self,
        client_id: &str,
        secret: &Secret,
    ) -> Result<Issued, ExchangeError> {
        self.token.exchange(client_id, secret).await
    }

    /// Verifies against the current keys; a token naming a `kid` they lack triggers one
    /// rate-limited JWKS refetch (RFC 7517 key rotation) before it is refused.
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenCheckError> {
        let keys = self.jwks.snapshot().ok_or(TokenCheckError::KeysNotLoaded)?;
        match verify(token, &keys, &self.rules, unix_now()) {
            Err(VerifyError::UnknownKey) => {
                let Some(fresh) = self.jwks.refetch_for_unknown_kid(&keys).await? else {
                    return Err(VerifyError::UnknownKey.into());
                };
                Ok(verify(token, &fresh, &self.rules, unix_now())?)
            }
            other => Ok(other?),
        }
    }
}
