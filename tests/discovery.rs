//! Provider discovery (OpenID Connect Discovery 1.0, RFC 8414) against a metadata server on
//! loopback that the test controls: an `oauth2` provider configured without `token_url` and
//! `jwks_url` finds them, the document's `issuer` is compared exactly, the RFC 8414 location is
//! tried when the OIDC one is missing, a failed refresh keeps the last good document, and bad
//! documents are refused. The real binary shows `/readyz` waiting for discovery and
//! `check-config` naming what it would fetch.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use common::check::basic_request;
use common::provider::{AUDIENCE, ClientAuth, FakeProvider, ISSUER};
use m2m_authz::authorizer::Authorizer;
use m2m_authz::decision::Decision;
use m2m_authz::discovery::DiscoveryError;
use serde_json::json;

/// Serves whatever body and status each path is given; counts requests. Unknown paths: 404.
#[derive(Clone, Default)]
struct Meta {
    docs: Arc<Mutex<HashMap<String, (u16, String)>>>,
    hits: Arc<AtomicUsize>,
}

impl Meta {
    async fn start() -> (Meta, String) {
        let meta = Meta::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(serve).with_state(meta.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (meta, base)
    }

    fn set(&self, path: &str, status: u16, body: impl Into<String>) {
        self.docs
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body.into()));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve(State(meta): State<Meta>, uri: Uri) -> impl IntoResponse {
    meta.hits.fetch_add(1, Ordering::SeqCst);
    let found = meta.docs.lock().unwrap().get(uri.path()).cloned();
    match found {
        Some((status, body)) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        ),
        None => (
            StatusCode::NOT_FOUND,
            [("content-type", "text/plain")],
            String::new(),
        ),
    }
}

/// A metadata document for the fake provider (whose tokens carry `iss: ISSUER`).
fn document(p: &FakeProvider, issuer: &str, methods: &[&str]) -> String {
    json!({
        "issuer": issuer,
        "token_endpoint": p.token_url(),
        "jwks_uri": p.jwks_url(),
        "token_endpoint_auth_methods_supported": methods,
    })
    .to_string()
}

fn yaml(discovery: &str) -> String {
    format!("provider:\n  kind: oauth2\n  {discovery}\n  audience: {AUDIENCE}\n")
}

fn user(d: &Decision) -> Option<&str> {
    match d {
        Decision::Allow(a) => a
            .set()
            .iter()
            .find(|(h, _)| &**h == "x-user-id")
            .map(|(_, v)| &**v),
        Decision::Deny(_) => None,
    }
}

const DOC_PATH: &str = "/meta/openid-configuration";

#[tokio::test]
async fn discovered_endpoints_serve_checks_with_the_supported_client_auth() {
    // The provider accepts one method; the document lists which. The sidecar, told none, picks
    // it (client_secret_basic when both are listed), and the fake refuses the other.
    for (methods, accepts) in [
        (
            &["client_secret_post", "client_secret_basic"][..],
            ClientAuth::SecretBasic,
        ),
        (
            &["private_key_jwt", "client_secret_post"][..],
            ClientAuth::SecretPost,
        ),
    ] {
        let p = FakeProvider::start_with(accepts).await;
        p.add_client("c1", "s1", "user-1");
        let (meta, base) = Meta::start().await;
        meta.set(DOC_PATH, 200, document(&p, ISSUER, methods));
        let config = common::authz::config(&yaml(&format!(
            "discovery_url: {base}{DOC_PATH}\n  issuer: {ISSUER}"
        )));
        let a = Authorizer::new(&config).unwrap();
        // Before discovery there is no token endpoint: unavailable, never a denial.
        assert_eq!(
            common::authz::status(&a.check(&basic_request("c1", "s1")).await),
            503
        );
        assert_eq!(p.token_calls(), 0);
        let d = a.provider().discovery().expect("discovered provider");
        let e = d.refresh().await.unwrap();
        assert_eq!(e.token_endpoint.as_str(), p.token_url());
        a.provider().jwks().refresh().await.unwrap();
        let allowed = a.check(&basic_request("c1", "s1")).await.unwrap();
        assert_eq!(user(&allowed), Some("user-1"), "{methods:?}");
        assert_eq!(p.token_calls(), 1);
    }
}

#[tokio::test]
async fn explicit_endpoints_win_over_discovery() {
    let p = FakeProvider::start().await;
    p.add_client("c1", "s1", "user-1");
    let (meta, base) = Meta::start().await;
    // The document points elsewhere; the configured token_url is used.
    meta.set(
        DOC_PATH,
        200,
        json!({"issuer": ISSUER, "token_endpoint": format!("{base}/nowhere"), "jwks_uri": p.jwks_url()}).to_string(),
    );
    let config = common::authz::config(&yaml(&format!(
        "discovery_url: {base}{DOC_PATH}\n  issuer: {ISSUER}\n  token_url: {}\n  client_auth: client_secret_post",
        p.token_url()
    )));
    let a = Authorizer::new(&config).unwrap();
    a.provider().discovery().unwrap().refresh().await.unwrap();
    a.provider().jwks().refresh().await.unwrap();
    let d = a.check(&basic_request("c1", "s1")).await.unwrap();
    assert_eq!(user(&d), Some("user-1"));
}

#[tokio::test]
async fn a_document_for_another_issuer_is_refused_naming_the_field() {
    let p = FakeProvider::start().await;
    let (meta, base) = Meta::start().await;
    let config = common::authz::config(&yaml(&format!(
        "discovery_url: {base}{DOC_PATH}\n  issuer: {ISSUER}"
    )));
    let a = Authorizer::new(&config).unwrap();
    let d = a.provider().discovery().unwrap();
    for other in [
        format!("{ISSUER}/"),
        ISSUER.to_uppercase(),
        "https://attacker.test".to_owned(),
    ] {
        meta.set(DOC_PATH, 200, document(&p, &other, &[]));
        let err = d.refresh().await.unwrap_err();
        assert!(
            matches!(err, DiscoveryError::IssuerMismatch { .. }),
            "{other}: {err}"
        );
        assert!(err.to_string().contains("provider.issuer"), "{err}");
        assert!(d.endpoints().is_none());
    }
}

#[tokio::test]
async fn the_rfc8414_location_is_tried_when_the_oidc_one_is_missing() {
    let p = FakeProvider::start().await;
    p.add_client("c1", "s1", "user-1");
    let (meta, base) = Meta::start().await;
    // An issuer with a path: OIDC appends the well-known suffix, RFC 8414 inserts it before the
    // path. Only the latter is served here.
    let issuer = format!("{base}/tenant-a");
    meta.set(
        "/.well-known/oauth-authorization-server/tenant-a",
        200,
        document(&p, &issuer, &["client_secret_post"]),
    );
    let config = common::authz::config(&yaml(&format!("issuer: {issuer}")));
    let a = Authorizer::new(&config).unwrap();
    let d = a.provider().discovery().unwrap();
    let e = d.refresh().await.unwrap();
    assert_eq!(
        e.source.as_str(),
        format!("{base}/.well-known/oauth-authorization-server/tenant-a")
    );
    assert_eq!(meta.hits(), 2, "OIDC location first, then RFC 8414");
    // Served at the OIDC location as well: that one is preferred.
    meta.set(
        "/tenant-a/.well-known/openid-configuration",
        200,
        document(&p, &issuer, &["client_secret_post"]),
    );
    let e = d.refresh().await.unwrap();
    assert_eq!(
        e.source.as_str(),
        format!("{base}/tenant-a/.well-known/openid-configuration")
    );
    // The issuer names the token's `iss` too: FakeProvider signs ISSUER, so this provider's
    // tokens would be refused; the endpoints are what this test is about.
    assert_eq!(e.jwks_uri.as_str(), p.jwks_url());
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_document() {
    let p = FakeProvider::start().await;
    p.add_client("c1", "s1", "user-1");
    let (meta, base) = Meta::start().await;
    meta.set(DOC_PATH, 200, document(&p, ISSUER, &["client_secret_post"]));
    let config = common::authz::config(&yaml(&format!(
        "discovery_url: {base}{DOC_PATH}\n  issuer: {ISSUER}"
    )));
    let a = Authorizer::new(&config).unwrap();
    let d = a.provider().discovery().unwrap();
    let good = d.refresh().await.unwrap();
    a.provider().jwks().refresh().await.unwrap();
    for (status, body) in [
        (500, String::new()),
        (200, "{not json".to_owned()),
        (200, document(&p, "https://other.test", &[])),
    ] {
        meta.set(DOC_PATH, status, body);
        assert!(d.refresh().await.is_err());
        assert_eq!(d.endpoints().as_deref(), Some(&*good));
    }
    let allowed = a.check(&basic_request("c1", "s1")).await.unwrap();
    assert_eq!(user(&allowed), Some("user-1"));
}

#[tokio::test]
async fn malformed_and_huge_documents_are_refused() {
    let p = FakeProvider::start().await;
    let (meta, base) = Meta::start().await;
    let config = common::authz::config(&yaml(&format!(
        "discovery_url: {base}{DOC_PATH}\n  issuer: {ISSUER}"
    )));
    let a = Authorizer::new(&config).unwrap();
    let d = a.provider().discovery().unwrap();
    let mut huge: serde_json::Value = serde_json::from_str(&document(&p, ISSUER, &[])).unwrap();
    huge["padding"] = json!("x".repeat(100 * 1024));
    let without_jwks = json!({"issuer": ISSUER, "token_endpoint": p.token_url()});
    let remote_http = json!({"issuer": ISSUER, "token_endpoint": "http://idp.example/token", "jwks_uri": p.jwks_url()});
    for (body, kind) in [
        (String::new(), "bad"),
        ("[]".to_owned(), "bad"),
        ("<html>".to_owned(), "bad"),
        (huge.to_string(), "bad"),
        (without_jwks.to_string(), "endpoint"),
        (remote_http.to_string(), "endpoint"),
    ] {
        meta.set(DOC_PATH, 200, body);
        let err = d.refresh().await.unwrap_err();
        let ok = match kind {
            "bad" => matches!(err, DiscoveryError::BadDocument { .. }),
            _ => matches!(err, DiscoveryError::Endpoint { .. }),
        };
        assert!(ok, "{kind}: {err}");
        assert!(d.endpoints().is_none());
    }
}

#[tokio::test]
async fn the_sidecar_is_ready_only_once_discovered_and_check_config_names_the_documents() {
    let p = FakeProvider::start().await;
    p.add_client("c1", "s1", "user-1");
    let (meta, base) = Meta::start().await;
    let config = yaml(&format!(
        "discovery_url: {base}{DOC_PATH}\n  issuer: {ISSUER}\n  jwks_refresh_interval: 1s"
    ));

    let dir = common::process::TempDir::new("discovery");
    let file = dir.join("config.yaml");
    std::fs::write(&file, &config).unwrap();
    let out = std::process::Command::new(common::sidecar::binary())
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("discovered from {base}{DOC_PATH}")),
        "{stdout}"
    );
    assert_eq!(meta.hits(), 0, "check-config fetches nothing");

    meta.set(DOC_PATH, 503, "");
    let sidecar = common::sidecar::Sidecar::start_unready(&config).await;
    let client = common::http_client();
    let ready = |c: reqwest::Client, url: String| async move {
        c.get(format!("{url}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while meta.hits() < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(meta.hits() >= 1, "the sidecar fetched the metadata");
    assert_ne!(ready(client.clone(), sidecar.admin_url()).await, 200);
    assert_eq!(p.jwks_calls(), 0, "no JWKS fetch before discovery");

    meta.set(DOC_PATH, 200, document(&p, ISSUER, &["client_secret_post"]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ready(client.clone(), sidecar.admin_url()).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready after discovery:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = sidecar
        .client()
        .await
        .check(common::check::check_request("c1", "s1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status.map(|s| s.code), Some(0), "allowed");
}
