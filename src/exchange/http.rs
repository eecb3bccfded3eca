//! The provider's token endpoint over HTTP (reqwest): the client-credentials form, the client
//! authentication method the profile asks for, a capped body, and the answer read by
//! [`super::parse_token_response`].

use base64::Engine;
use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use super::{ExchangeError, Issued, TokenEndpoint, parse_token_response};
use crate::clock::SharedClock;
use crate::config::{ClientAuth, ResolvedProvider};
use crate::credentials::Secret;
use crate::defaults::MAX_PROVIDER_BODY_BYTES;
use crate::http_body::{BodyError, Failure, read_capped};

/// RFC 6749 Appendix B: everything but unreserved characters is percent-encoded in Basic parts.
pub(crate) const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'*');

/// A provider's token endpoint, reached with reqwest.
pub struct HttpTokenEndpoint {
    http: reqwest::Client,
    url: Url,
    auth: ClientAuth,
    scope: Option<String>,
    params: Vec<(String, String)>,
    /// Dates a `Retry-After` given as an HTTP-date.
    clock: SharedClock,
}

impl HttpTokenEndpoint {
    /// The endpoint at `url` (configured or discovered), authenticated with `auth`, with the
    /// rest of the request as `config` says.
    pub fn new(
        http: reqwest::Client,
        config: &ResolvedProvider,
        url: Url,
        auth: ClientAuth,
        clock: SharedClock,
    ) -> Self {
        HttpTokenEndpoint {
            http,
            url,
            auth,
            scope: config.scope.clone(),
            params: config.token_params.clone(),
            clock,
        }
    }

    /// One token request, as a trace span (never with the credential: `skip_all`).
    #[tracing::instrument(name = "token.exchange", skip_all, fields(otel.kind = "client"))]
    async fn request(&self, client_id: &str, secret: &Secret) -> Result<Issued, ExchangeError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        for (k, v) in &self.params {
            form.push((k, v));
        }
        let mut request = self
            .http
            .post(self.url.clone())
            .header("accept", "application/json");
        match self.auth {
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret.expose()));
            }
            ClientAuth::ClientSecretBasic => {
                let joined = format!(
                    "{}:{}",
                    utf8_percent_encode(client_id, FORM),
                    utf8_percent_encode(secret.expose(), FORM)
                );
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(joined)
                );
                request = request.header("authorization", value);
            }
        }
        let response = request.form(&form).send().await.map_err(classify_send)?;
        let status = response.status();
        let retry_after = response_retry_after(response.headers());
        let body = read_capped(response, MAX_PROVIDER_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => ExchangeError::BadResponse("body too large"),
                BodyError::Transport(e) => classify_send(e),
            })?;
        parse_token_response(
            status.as_u16(),
            retry_after.as_deref(),
            &body,
            self.clock.unix_now(),
        )
    }
}

impl TokenEndpoint for HttpTokenEndpoint {
    fn exchange<'a>(
        &'a self,
        client_id: &'a str,
        secret: &'a Secret,
    ) -> BoxFuture<'a, Result<Issued, ExchangeError>> {
        Box::pin(self.request(client_id, secret))
    }
}

fn response_retry_after(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn classify_send(e: reqwest::Error) -> ExchangeError {
    match Failure::of(&e) {
        Failure::Timeout => ExchangeError::Timeout,
        Failure::UntrustedCertificate => ExchangeError::UntrustedCertificate,
        Failure::TlsRefused => ExchangeError::TlsRefused,
        Failure::Connect => ExchangeError::Connect,
        Failure::Other => ExchangeError::BadResponse("transport error"),
    }
}
