//! Route policy through a real Envoy whose routes pick rules with `context_extensions`
//! (per-route `ExtAuthzPerRoute.check_settings`), and hot reload of the policy file under traffic.

mod common;

use common::check::Check;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use common::envoy::{EnvoyOptions, Front};
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::sidecar::Sidecar;
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, check_response::HttpResponse};
use serde_json::json;

const ROUTES: &str = r#"                        - match: { prefix: /v1/orders }
                          route: { cluster: upstream, timeout: 15s }
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings:
                                context_extensions: { policy: orders }
                        - match: { prefix: /public }
                          route: { cluster: upstream, timeout: 15s }
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings:
                                context_extensions: { policy: public }
                        - match: { prefix: / }
"#;

const POLICY: &str = r#"rules:
  - name: public
    match: {context: {policy: public}}
    allow_anonymous: true
  - name: orders-read
    match: {context: {policy: orders}, methods: [GET, HEAD]}
    require: {all_of: ["read:orders"]}
  - name: orders-write
    match: {context: {policy: orders}, methods: [POST]}
    require: {all_of: ["write:orders"]}
default: {require: {}}
"#;

fn provider_yaml(p: &FakeProvider) -> String {
    format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n",
        p.token_url(),
        p.jwks_url()
    )
}

#[tokio::test]
async fn envoy_routes_pick_rules_with_context_extensions() {
    crate::needs!(Envoy);
    let p = FakeProvider::start().await;
    p.add_client_with_claims(
        "reader",
        "s3cret",
        json!({"user_id": "user-r", "scope": "read:orders"}),
    );
    let policy_dir = common::process::TempDir::new("policy");
    std::fs::write(policy_dir.join("policy.yaml"), POLICY).unwrap();
    let (sidecar, Front { envoy, upstream }) = common::envoy::stack_with(
        &format!(
            "{}policy:\n  file: {}\n",
            provider_yaml(&p),
            policy_dir.join("policy.yaml").display()
        ),
        EnvoyOptions {
            replacements: vec![(
                "                        - match: { prefix: / }\n".into(),
                ROUTES.into(),
            )],
            ..Default::default()
        },
    )
    .await;
    let http = common::http_client();

    let r = http
        .get(envoy.url("/v1/orders/1"))
        .basic_auth("reader", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", sidecar.logs());
    assert_eq!(
        upstream.last_request().unwrap().header("x-user-id"),
        Some("user-r")
    );

    let before = upstream.request_count();
    let r = http
        .post(envoy.url("/v1/orders"))
        .basic_auth("reader", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let www = r
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains("scope=\"write:orders\""),
        "{www}"
    );
    assert_eq!(
        upstream.request_count(),
        before,
        "a 403 never reaches the upstream"
    );

    // An anonymous route works without credentials and still strips a forged identity.
    let r = http
        .get(envoy.url("/public/info"))
        .header("x-user-id", "admin")
        .header("X-Client-Id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.last_request().unwrap();
    assert!(seen.header_values("x-user-id").is_empty(), "{seen:?}");
    assert!(seen.header_values("x-client-id").is_empty(), "{seen:?}");

    // Routes without context extensions fall to the default rule: a credential is required.
    let r = http.get(envoy.url("/elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

fn check(path: &str, headers: &[(&str, String)]) -> CheckRequest {
    Check::get(path).host("api.test").headers(headers).build()
}

/// Version A opens /a and closes /b; version B the reverse. Any single check sees one whole
/// version: /a and /b are never both open or both closed for the same version.
const VERSION_A: &str = "rules:\n  - {name: a-open, match: {path: /a}, allow_anonymous: true}\n  - {name: b-closed, match: {path: /b}, deny: true}\ndefault: {require: {}}\n";
const VERSION_B: &str = "rules:\n  - {name: a-closed, match: {path: /a}, deny: true}\n  - {name: b-open, match: {path: /b}, allow_anonymous: true}\ndefault: {require: {}}\n";

type Client = m2m_authz::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient<
    tonic::transport::Channel,
>;

fn allowed(r: &m2m_authz::proto::envoy::service::auth::v3::CheckResponse) -> bool {
    matches!(r.http_response, Some(HttpResponse::OkResponse(_)))
}

/// Whether an anonymous check of `path` is allowed.
async fn open(c: &Client, path: &str) -> bool {
    let r = c
        .clone()
        .check(check(path, &[]))
        .await
        .expect("check answered");
    allowed(&r.into_inner())
}

async fn wait_until_a_open_is(c: &Client, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open(c, "/a").await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never switched"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn policy_reloads_under_traffic_atomically_and_survives_a_broken_file() {
    crate::needs!(Envoy);
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let dir = common::process::TempDir::new("policy-reload");
    let file = dir.join("policy.yaml");
    std::fs::write(&file, VERSION_A).unwrap();
    let mut sidecar = Sidecar::start(&format!(
        "{}policy:\n  file: {}\n  reload_interval: 100ms\n",
        provider_yaml(&p),
        file.display()
    ))
    .await;
    let client = sidecar.client().await;
    // Traffic: authenticated checks keep flowing while the policy changes.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("client-1:s3cret")
    );
    let mut traffic = Vec::new();
    for _ in 0..2 {
        let (mut c, stop, failures, basic) = (
            client.clone(),
            stop.clone(),
            failures.clone(),
            basic.clone(),
        );
        traffic.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                // Both versions fall through to the default for this path: always allowed.
                let ok = match c
                    .check(check("/v1/data", &[("authorization", basic.clone())]))
                    .await
                {
                    Ok(r) => allowed(&r.into_inner()),
                    Err(_) => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
            n
        }));
    }

    assert!(open(&client, "/a").await);
    for round in 0..3 {
        std::fs::write(&file, VERSION_B).unwrap();
        wait_until_a_open_is(&client, false).await;
        // Under version B, /b is open: both changes arrived together.
        assert!(open(&client, "/b").await, "round {round}");
        std::fs::write(&file, VERSION_A).unwrap();
        wait_until_a_open_is(&client, true).await;
        assert!(!open(&client, "/b").await, "round {round}");
    }

    // A broken file keeps the previous policy (A) in force; SIGHUP forces the attempt at once.
    std::fs::write(
        &file,
        "rules: [{name: x, match: {path: /a}}]\ndefault: {require: {}}\n",
    )
    .unwrap();
    sidecar.child.signal(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sidecar.full_logs().contains("policy reload failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload error logged:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        open(&client, "/a").await,
        "the old policy stays after a broken file"
    );
    assert!(!open(&client, "/b").await);

    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in traffic {
        total += t.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed checks during reloads (of {total})"
    );
    assert!(total > 0);
    assert_eq!(sidecar.child.try_wait(), None, "still running");
}
