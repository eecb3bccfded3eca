//! A provider's endpoints from its published metadata (OpenID Connect Discovery 1.0, RFC 8414):
//! fetched in the background, checked (the exact `issuer`, https endpoints, a client
//! authentication both sides support), published as an immutable snapshot, refreshed with the
//! JWKS and kept serving when a refresh fails.
//!
//! Until the first document is loaded there is no token endpoint and no JWKS URL: an exchange
//! fails as [`ExchangeError::NotDiscovered`] (the provider's fault: UNAVAILABLE, so Envoy's
//! `failure_mode_allow` decides) and the JWKS, which `/readyz` waits for, is not fetched.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::{Mutex, watch};
use url::Url;

use crate::clock::SharedClock;
use crate::config::provider::is_local_host;
use crate::config::{ClientAuth, DiscoveryPlan, ResolvedProvider};
use crate::credentials::Secret;
use crate::defaults::{JWKS_RETRY, MAX_DISCOVERY_BODY_BYTES};
use crate::exchange::http::HttpTokenEndpoint;
use crate::exchange::{ExchangeError, Issued, TokenEndpoint};
use crate::http_body::{BodyError, Failure, read_capped};
use crate::jwks::http::HttpKeySource;
use crate::jwks::{JwksError, KeySource};
use crate::supervisor::{Stage, Supervisor};

/// Why no usable metadata document could be had. Carries no document content: only the field
/// or rule it broke, and the configured values it was checked against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the discovery document {url} timed out")]
    Timeout { url: String },
    #[error("the discovery document {url} could not be reached")]
    Connect { url: String },
    #[error(
        "the discovery document {url}'s TLS certificate is not trusted (set provider.ca_file to its CA)"
    )]
    UntrustedCertificate { url: String },
    #[error(
        "the discovery document {url}: the server refused the TLS handshake or closed the \
         connection right after it (it may require a client certificate: provider.client_cert \
         and provider.client_key, or not accept the one sent)"
    )]
    TlsRefused { url: String },
    #[error("the discovery document {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the discovery document {url} is unusable: {problem}")]
    BadDocument { url: String, problem: &'static str },
    /// RFC 8414 §3.3, OpenID Connect Discovery §4.3: a document for another issuer is refused.
    #[error(
        "the discovery document {url} names another issuer than provider.issuer ({expected}); refused (RFC 8414 §3.3)"
    )]
    IssuerMismatch { url: String, expected: String },
    /// An endpoint the sidecar needs is missing, or is not an https URL.
    #[error("the discovery document {url}'s {field} {problem}")]
    Endpoint {
        url: String,
        field: &'static str,
        problem: &'static str,
    },
    /// `provider.client_auth` names a method the metadata does not list, or the metadata lists
    /// neither method the sidecar has.
    #[error("provider.client_auth: {problem} (token_endpoint_auth_methods_supported in {url})")]
    ClientAuth { url: String, problem: String },
}

/// What the sidecar takes from a metadata document, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The document it came from.
    pub source: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Url,
    /// RFC 7662, when the provider has one.
    pub introspection_endpoint: Option<Url>,
    /// The configured method, or the one chosen from `token_endpoint_auth_methods_supported`.
    pub client_auth: ClientAuth,
}

#[derive(Deserialize)]
struct Document {
    issuer: String,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Reads and checks one metadata document fetched from `from`.
pub fn parse(body: &[u8], from: &Url, plan: &DiscoveryPlan) -> Result<Endpoints, DiscoveryError> {
    let url = from.to_string();
    let bad = |problem| DiscoveryError::BadDocument {
        url: url.clone(),
        problem,
    };
    let doc: Document =
        serde_json::from_slice(body).map_err(|_| bad("not a JSON object with a string issuer"))?;
    if !plan.issuers.contains(&doc.issuer) {
        return Err(DiscoveryError::IssuerMismatch {
            url,
            expected: plan.issuers.join(", "),
        });
    }
    let endpoint = |field: &'static str, value: Option<String>| {
        let problem = |problem| DiscoveryError::Endpoint {
            url: url.clone(),
            field,
            problem,
        };
        let value = value.ok_or_else(|| problem("is missing"))?;
        let parsed = Url::parse(&value).map_err(|_| problem("is not a URL"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(problem("carries user:password@"));
        }
        match parsed.scheme() {
            "https" => Ok(parsed),
            // Plain http only where nothing leaves this machine: a loopback issuer's own
            // loopback endpoints (a local test or a sidecar-local provider).
            "http" if from.scheme() == "http" && is_local_host(from) && is_local_host(&parsed) => {
                Ok(parsed)
            }
            _ => Err(problem(
                "is not an https URL (plain http is accepted only from a loopback issuer to loopback)",
            )),
        }
    };
    let token_endpoint = endpoint("token_endpoint", doc.token_endpoint)?;
    let jwks_uri = endpoint("jwks_uri", doc.jwks_uri)?;
    let introspection_endpoint = doc
        .introspection_endpoint
        .map(|u| endpoint("introspection_endpoint", Some(u)))
        .transpose()?;
    let client_auth = choose_client_auth(
        plan.client_auth,
        doc.token_endpoint_auth_methods_supported.as_deref(),
    )
    .map_err(|problem| DiscoveryError::ClientAuth {
        url: url.clone(),
        problem,
    })?;
    Ok(Endpoints {
        source: from.clone(),
        token_endpoint,
        jwks_uri,
        introspection_endpoint,
        client_auth,
    })
}

/// The method the sidecar authenticates with. An absent list means `client_secret_basic` (RFC
/// 8414 §2) when the config names none. A configured method the provider's list leaves out is
/// refused rather than tried: the provider has said it would answer `invalid_client` to every
/// caller, and the operator finds out at start-up, not from a stream of denials.
fn choose_client_auth(
    configured: Option<ClientAuth>,
    supported: Option<&[String]>,
) -> Result<ClientAuth, String> {
    let name = |a: ClientAuth| match a {
        ClientAuth::ClientSecretBasic => "client_secret_basic",
        ClientAuth::ClientSecretPost => "client_secret_post",
    };
    let supports = |a: ClientAuth| match supported {
        None => a == ClientAuth::ClientSecretBasic,
        Some(list) => list.iter().any(|m| m == name(a)),
    };
    match configured {
        // The provider has not said: what the config names is trusted.
        Some(a) if supported.is_none() || supports(a) => Ok(a),
        Some(a) => Err(format!("{} is not supported by the provider", name(a))),
        None => [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost]
            .into_iter()
            .find(|a| supports(*a))
            .ok_or_else(|| {
                "the provider supports neither client_secret_basic nor client_secret_post"
                    .to_owned()
            }),
    }
}

/// Where metadata documents come from: one call is one GET, at most a bounded size.
pub trait DocumentSource: Send + Sync + 'static {
    fn fetch<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<Vec<u8>, DiscoveryError>>;
}

/// Metadata documents over HTTP (reqwest): the provider's client, with its timeouts and CAs.
pub struct HttpDocumentSource {
    http: reqwest::Client,
}

impl HttpDocumentSource {
    pub fn new(http: reqwest::Client) -> Self {
        HttpDocumentSource { http }
    }

    async fn get(&self, url: &Url) -> Result<Vec<u8>, DiscoveryError> {
        let shown = url.to_string();
        let classify = |e: reqwest::Error| {
            let url = shown.clone();
            match Failure::of(&e) {
                Failure::Timeout => DiscoveryError::Timeout { url },
                Failure::UntrustedCertificate => DiscoveryError::UntrustedCertificate { url },
                Failure::TlsRefused => DiscoveryError::TlsRefused { url },
                Failure::Connect => DiscoveryError::Connect { url },
                Failure::Other => DiscoveryError::BadDocument {
                    url,
                    problem: "transport error",
                },
            }
        };
        let response = self
            .http
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(DiscoveryError::Status {
                url: shown,
                status: status.as_u16(),
            });
        }
        read_capped(response, MAX_DISCOVERY_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => DiscoveryError::BadDocument {
                    url: shown.clone(),
                    problem: "body too large",
                },
                BodyError::Transport(e) => classify(e),
            })
    }
}

impl DocumentSource for HttpDocumentSource {
    fn fetch<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<Vec<u8>, DiscoveryError>> {
        Box::pin(self.get(url))
    }
}

/// The endpoints in use, with the HTTP clients built for them.
struct Current {
    endpoints: Arc<Endpoints>,
    token: Arc<HttpTokenEndpoint>,
    keys: Arc<HttpKeySource>,
}

/// One provider's discovered metadata, shared by its token endpoint and key source.
pub struct Discovery {
    plan: DiscoveryPlan,
    source: Arc<dyn DocumentSource>,
    http: reqwest::Client,
    config: ResolvedProvider,
    clock: SharedClock,
    current: ArcSwapOption<Current>,
    /// Serializes fetches.
    gate: Mutex<()>,
    loaded: watch::Sender<bool>,
}

impl Discovery {
    pub fn new(
        plan: DiscoveryPlan,
        source: Arc<dyn DocumentSource>,
        http: reqwest::Client,
        config: &ResolvedProvider,
        clock: SharedClock,
    ) -> Self {
        Discovery {
            plan,
            source,
            http,
            config: config.clone(),
            clock,
            current: ArcSwapOption::empty(),
            gate: Mutex::new(()),
            loaded: watch::channel(false).0,
        }
    }

    /// The endpoints as last discovered; `None` until a document has been accepted.
    pub fn endpoints(&self) -> Option<Arc<Endpoints>> {
        self.current.load().as_ref().map(|c| c.endpoints.clone())
    }

    /// Becomes true once a document has been accepted, and stays true.
    pub fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// Fetches the metadata now and publishes it; on failure the last good document stays. The
    /// locations are tried in order, the next one only when a location answers with an HTTP
    /// error status (a document that is served but wrong is refused, not passed over).
    pub async fn refresh(&self) -> Result<Arc<Endpoints>, DiscoveryError> {
        let _gate = self.gate.lock().await;
        let mut last = None;
        for url in &self.plan.urls {
            match self.source.fetch(url).await {
                Ok(body) => {
                    let endpoints = Arc::new(parse(&body, url, &self.plan)?);
                    self.publish(endpoints.clone());
                    return Ok(endpoints);
                }
                Err(e @ DiscoveryError::Status { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(DiscoveryError::BadDocument {
            url: String::new(),
            problem: "no location to fetch",
        }))
    }

    fn publish(&self, endpoints: Arc<Endpoints>) {
        let unchanged = self
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.endpoints == endpoints);
        if !unchanged {
            let token = Arc::new(HttpTokenEndpoint::new(
                self.http.clone(),
                &self.config,
                endpoints.token_endpoint.clone(),
                endpoints.client_auth,
                self.clock.clone(),
            ));
            let keys = Arc::new(HttpKeySource::new(
                self.http.clone(),
                endpoints.jwks_uri.clone(),
            ));
            self.current.store(Some(Arc::new(Current {
                endpoints,
                token,
                keys,
            })));
        }
        self.loaded.send_replace(true);
    }

    /// Keeps the metadata fresh: every `plan.refresh` (the JWKS interval) after a success, every
    /// few seconds (doubling up to the interval) after a failure.
    pub fn spawn_refresher(self: Arc<Self>, supervisor: &Supervisor) {
        let interval = self.plan.refresh;
        supervisor.spawn(Stage::Background, "discovery refresh", async move {
            let mut retry = JWKS_RETRY.min(interval);
            loop {
                match self.refresh().await {
                    Ok(_) => {
                        retry = JWKS_RETRY.min(interval);
                        tokio::time::sleep(interval).await;
                    }
                    Err(error) => {
                        if self.current.load().is_some() {
                            tracing::warn!(%error, "provider discovery failed; keeping the last good metadata");
                        } else {
                            tracing::warn!(%error, retry_in = %humantime::format_duration(retry), "provider discovery failed and no metadata was loaded yet: no check can be answered until it succeeds");
                        }
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(interval);
                    }
                }
            }
        });
    }

    /// The token endpoint as discovered (used where `token_url` is not configured).
    pub fn token_endpoint(self: &Arc<Self>) -> Arc<dyn TokenEndpoint> {
        Arc::new(DiscoveredToken(self.clone()))
    }

    /// The JWKS as discovered (used where `jwks_url` is not configured).
    pub fn key_source(self: &Arc<Self>) -> Arc<dyn KeySource> {
        Arc::new(DiscoveredKeys(self.clone()))
    }
}

struct DiscoveredToken(Arc<Discovery>);

impl TokenEndpoint for DiscoveredToken {
    fn exchange<'a>(
        &'a self,
        client_id: &'a str,
        secret: &'a Secret,
    ) -> BoxFuture<'a, Result<Issued, ExchangeError>> {
        let Some(current) = self.0.current.load_full() else {
            return Box::pin(async { Err(ExchangeError::NotDiscovered) });
        };
        Box::pin(async move { current.token.exchange(client_id, secret).await })
    }
}

struct DiscoveredKeys(Arc<Discovery>);

impl KeySource for DiscoveredKeys {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<u8>, JwksError>> {
        let Some(current) = self.0.current.load_full() else {
            return Box::pin(async { Err(JwksError::NotDiscovered) });
        };
        Box::pin(async move { current.keys.fetch().await })
    }

    fn describe(&self) -> String {
        match self.0.current.load().as_ref() {
            Some(c) => c.keys.describe(),
            None => "(not discovered yet)".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn plan(issuer: &str, auth: Option<ClientAuth>) -> DiscoveryPlan {
        DiscoveryPlan {
            urls: vec![],
            issuers: vec![issuer.to_owned()],
            client_auth: auth,
            field: "provider.issuer",
            refresh: Duration::from_secs(300),
        }
    }

    fn doc(issuer: &str, extra: &str) -> String {
        format!(
            r#"{{"issuer":"{issuer}","token_endpoint":"https://idp.example/token","jwks_uri":"https://idp.example/jwks"{extra}}}"#
        )
    }

    #[test]
    fn accepts_the_exact_issuer_only() {
        let from = Url::parse("https://idp.example/.well-known/openid-configuration").unwrap();
        let p = plan("https://idp.example", None);
        let e = parse(doc("https://idp.example", "").as_bytes(), &from, &p).unwrap();
        assert_eq!(e.token_endpoint.as_str(), "https://idp.example/token");
        assert_eq!(e.jwks_uri.as_str(), "https://idp.example/jwks");
        assert_eq!(e.introspection_endpoint, None);
        for other in [
            "https://idp.example/",
            "https://IDP.example",
            "http://idp.example",
            "https://idp.example.evil",
            "",
        ] {
            let err = parse(doc(other, "").as_bytes(), &from, &p).unwrap_err();
            assert!(
                matches!(err, DiscoveryError::IssuerMismatch { .. }),
                "{other}: {err}"
            );
            assert!(err.to_string().contains("provider.issuer"), "{err}");
        }
    }

    #[test]
    fn refuses_malformed_documents_and_endpoints() {
        let from = Url::parse("https://idp.example/.well-known/openid-configuration").unwrap();
        let p = plan("https://idp.example", None);
        for body in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"issuer":1}"#,
            "{\"issuer\":\"https://idp.example\"",
        ] {
            assert!(
                matches!(
                    parse(body.as_bytes(), &from, &p),
                    Err(DiscoveryError::BadDocument { .. })
                ),
                "{body:?}"
            );
        }
        for (body, field) in [
            (
                r#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/j"}"#,
                "token_endpoint",
            ),
            (
                r#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/t"}"#,
                "jwks_uri",
            ),
            (
                r#"{"issuer":"https://idp.example","token_endpoint":"http://idp.example/t","jwks_uri":"https://idp.example/j"}"#,
                "token_endpoint",
            ),
            (
                r#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/t","jwks_uri":"http://127.0.0.1/j"}"#,
                "jwks_uri",
            ),
            (
                r#"{"issuer":"https://idp.example","token_endpoint":"https://u:p@idp.example/t","jwks_uri":"https://idp.example/j"}"#,
                "token_endpoint",
            ),
            (
                r#"{"issuer":"https://idp.example","token_endpoint":"/t","jwks_uri":"https://idp.example/j"}"#,
                "token_endpoint",
            ),
            (
                r#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/t","jwks_uri":"https://idp.example/j","introspection_endpoint":"ftp://x/i"}"#,
                "introspection_endpoint",
            ),
        ] {
            match parse(body.as_bytes(), &from, &p) {
                Err(DiscoveryError::Endpoint { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn plain_http_endpoints_only_from_a_loopback_issuer_to_loopback() {
        let local = Url::parse("http://127.0.0.1:9/.well-known/openid-configuration").unwrap();
        let p = plan("http://127.0.0.1:9", None);
        let body = r#"{"issuer":"http://127.0.0.1:9","token_endpoint":"http://127.0.0.1:9/t","jwks_uri":"http://localhost:9/j"}"#;
        assert!(parse(body.as_bytes(), &local, &p).is_ok());
        let away = r#"{"issuer":"http://127.0.0.1:9","token_endpoint":"http://10.0.0.7/t","jwks_uri":"http://127.0.0.1:9/j"}"#;
        assert!(matches!(
            parse(away.as_bytes(), &local, &p),
            Err(DiscoveryError::Endpoint {
                field: "token_endpoint",
                ..
            })
        ));
        let remote = Url::parse("http://idp.internal/.well-known/openid-configuration").unwrap();
        let p = plan("http://idp.internal", None);
        let body = r#"{"issuer":"http://idp.internal","token_endpoint":"http://127.0.0.1/t","jwks_uri":"http://127.0.0.1/j"}"#;
        assert!(parse(body.as_bytes(), &remote, &p).is_err());
    }

    #[test]
    fn client_auth_is_chosen_from_what_the_provider_supports() {
        use ClientAuth::{ClientSecretBasic as Basic, ClientSecretPost as Post};
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let both = list(&[
            "private_key_jwt",
            "client_secret_post",
            "client_secret_basic",
        ]);
        let post = list(&["client_secret_post"]);
        let neither = list(&["private_key_jwt", "tls_client_auth"]);
        assert_eq!(choose_client_auth(None, None), Ok(Basic));
        assert_eq!(choose_client_auth(None, Some(&both)), Ok(Basic));
        assert_eq!(choose_client_auth(None, Some(&post)), Ok(Post));
        assert_eq!(choose_client_auth(Some(Post), Some(&both)), Ok(Post));
        assert_eq!(choose_client_auth(Some(Basic), Some(&both)), Ok(Basic));
        assert!(choose_client_auth(Some(Basic), Some(&post)).is_err());
        // Absent list: the configured method is trusted.
        assert_eq!(choose_client_auth(Some(Post), None), Ok(Post));
        assert!(choose_client_auth(None, Some(&neither)).is_err());
        assert!(choose_client_auth(Some(Post), Some(&[])).is_err());
        let from = Url::parse("https://idp.example/.well-known/openid-configuration").unwrap();
        let err = parse(
            doc(
                "https://idp.example",
                r#","token_endpoint_auth_methods_supported":["client_secret_post"]"#,
            )
            .as_bytes(),
            &from,
            &plan("https://idp.example", Some(Basic)),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("provider.client_auth"), "{err}");
    }
}
