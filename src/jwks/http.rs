//! A provider's JWKS URL over HTTP (reqwest), with a capped body.

use futures::future::BoxFuture;
use url::Url;

use super::{JwksError, KeySource};
use crate::defaults::MAX_PROVIDER_BODY_BYTES;
use crate::http_body::{BodyError, Failure, read_capped};

/// The JWKS endpoint, reached with reqwest.
pub struct HttpKeySource {
    http: reqwest::Client,
    url: Url,
}

impl HttpKeySource {
    pub fn new(http: reqwest::Client, url: Url) -> Self {
        HttpKeySource { http, url }
    }

    async fn get(&self) -> Result<Vec<u8>, JwksError> {
        let response = self
            .http
            .get(self.url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(JwksError::Status(status.as_u16()));
        }
        read_capped(response, MAX_PROVIDER_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => JwksError::BadDocument("body too large"),
                BodyError::Transport(e) => classify(e),
            })
    }
}

impl KeySource for HttpKeySource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<u8>, JwksError>> {
        Box::pin(self.get())
    }

    fn describe(&self) -> String {
        self.url.to_string()
    }
}

fn classify(e: reqwest::Error) -> JwksError {
    match Failure::of(&e) {
        Failure::Timeout => JwksError::Timeout,
        Failure::UntrustedCertificate => JwksError::UntrustedCertificate,
        Failure::TlsRefused => JwksError::TlsRefused,
        Failure::Connect => JwksError::Connect,
        Failure::Other => JwksError::BadDocument("transport error"),
    }
}
