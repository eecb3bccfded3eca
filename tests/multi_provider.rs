//! Several identity providers in one sidecar, chosen per policy rule or by Envoy's
//! `context_extensions`: each verifies with its own rules, and cache entries never cross them.

mod common;

use common::check::basic;

use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use m2m_authz::authorizer::Authorizer;
use m2m_authz::config::Config;
use m2m_authz::decision::Decision;
use m2m_authz::request::{AuthRequest, Headers};
use serde_json::json;

const B_ISSUER: &str = "https://issuer-b.test";
const B_AUDIENCE: &str = "api://b";

fn request(path: &str, ctx: &[(&str, &str)], authorization: &str) -> AuthRequest {
    AuthRequest {
        method: "GET".into(),
        path: path.into(),
        headers: [("authorization", authorization.to_owned())]
            .into_iter()
            .collect::<Headers>(),
        context: ctx
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn outcome(d: &Decision) -> String {
    match d {
        Decision::Allow(a) => a
            .set()
            .iter()
            .find(|(h, _)| &**h == "x-user-id")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        Decision::Deny(d) => format!("{} {}", d.status, d.reason),
    }
}

#[tokio::test]
async fn rules_and_context_extensions_pick_the_provider() {
    let a = FakeProvider::start().await;
    let b = FakeProvider::start().await;
    a.add_client("c1", "s3cret", "user-at-a");
    b.add_client_with_claims(
        "c1",
        "s3cret",
        json!({"user_id": "user-at-b", "iss": B_ISSUER, "aud": [B_AUDIENCE]}),
    );
    let yaml = format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n\
         providers:\n  internal:\n    kind: oauth2\n    token_url: {}\n    jwks_url: {}\n    issuer: {B_ISSUER}\n    audience: {B_AUDIENCE}\n\
         policy:\n  rules:\n    - {{name: internal-api, match: {{path: {{prefix: /internal/}}}}, require: {{}}, provider: internal}}\n  default: {{require: {{}}}}\n",
        a.token_url(),
        a.jwks_url(),
        b.token_url(),
        b.jwks_url()
    );
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let authz = std::sync::Arc::new(Authorizer::new(&config).unwrap());
    let names: Vec<&str> = authz.providers().map(|(n, _)| n).collect();
    assert_eq!(names, ["default", "internal"]);
    for (_, p) in authz.providers() {
        p.jwks().refresh().await.unwrap();
    }
    let cred = basic("c1", "s3cret");

    assert_eq!(
        outcome(&authz.check(&request("/v1/x", &[], &cred)).await.unwrap()),
        "user-at-a"
    );
    assert_eq!(
        outcome(
            &authz
                .check(&request("/internal/x", &[], &cred))
                .await
                .unwrap()
        ),
        "user-at-b"
    );
    // A route with `context_extensions: {provider: internal}` and no rule naming a provider.
    assert_eq!(
        outcome(
            &authz
                .check(&request("/v1/y", &[("provider", "internal")], &cred))
                .await
                .unwrap()
        ),
        "user-at-b"
    );
    // Each provider exchanged the same credential once; the cache kept them apart.
    assert_eq!((a.token_calls(), b.token_calls()), (1, 1));

    // A token from provider A is not valid where provider B verifies.
    let token_a = format!(
        "Bearer {}",
        a.mint("rsa-a", "c1", json!({"user_id": "user-at-a"}))
    );
    assert_eq!(
        outcome(&authz.check(&request("/v1/z", &[], &token_a)).await.unwrap()),
        "user-at-a"
    );
    assert_eq!(
        outcome(
            &authz
                .check(&request("/internal/z", &[], &token_a))
                .await
                .unwrap()
        ),
        "401 invalid_token"
    );
    // A route naming a provider that does not exist is refused, not sent to another one.
    assert_eq!(
        outcome(
            &authz
                .check(&request("/v1/x", &[("provider", "nope")], &cred))
                .await
                .unwrap()
        ),
        "403 unknown_provider"
    );

    // /metrics tells the providers apart: a refusal at B is B's, and each has its own latency.
    assert_eq!(
        outcome(
            &authz
                .check(&request("/internal/x", &[], &basic("c1", "wrong")))
                .await
                .unwrap()
        ),
        "401 invalid_client"
    );
    let text = m2m_authz::metrics::Metrics::new(authz.clone())
        .render()
        .unwrap();
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .trim()
            .parse::<f64>()
            .unwrap() as u64
    };
    for (series, expected) in [
        (
            r#"m2m_authz_provider_exchanges_total{provider="default",outcome="ok"}"#,
            1,
        ),
        (
            r#"m2m_authz_provider_exchanges_total{provider="default",outcome="rejected"}"#,
            0,
        ),
        (
            r#"m2m_authz_provider_exchanges_total{provider="internal",outcome="ok"}"#,
            1,
        ),
        (
            r#"m2m_authz_provider_exchanges_total{provider="internal",outcome="rejected"}"#,
            1,
        ),
        (
            r#"m2m_authz_provider_exchanges_total{provider="internal",outcome="failed"}"#,
            0,
        ),
        (
            r#"m2m_authz_provider_exchange_duration_seconds_count{provider="default"}"#,
            1,
        ),
        (
            r#"m2m_authz_provider_exchange_duration_seconds_count{provider="internal"}"#,
            2,
        ),
        // The unlabelled totals are unchanged.
        (r#"m2m_authz_exchanges_total{outcome="ok"}"#, 2),
        (r#"m2m_authz_exchanges_total{outcome="rejected"}"#, 1),
    ] {
        assert_eq!(value(series), expected, "{series}");
    }
    assert!(!text.contains("s3cret"));
}

#[test]
fn provider_names_and_references_are_checked() {
    let base = "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api}\n";
    let cases = [
        (
            format!(
                "{base}providers: {{default: {{kind: oauth2, token_url: 'http://b/t', jwks_url: 'http://b/j', issuer: j, audience: api}}}}"
            ),
            "providers.default",
        ),
        (
            format!(
                "{base}providers: {{b: {{kind: oauth2, jwks_url: 'http://b/j', issuer: j, audience: api}}}}"
            ),
            "providers.b.token_url",
        ),
        (
            format!("{base}policy: {{rules: [{{name: r, require: {{}}, provider: b}}]}}"),
            "policy.rules[0].provider",
        ),
    ];
    for (yaml, field) in cases {
        // Compiled whole, as check-config and serve do: the policy names the providers.
        match m2m_authz::settings::from_yaml(&yaml) {
            Err(m2m_authz::config::ConfigError::Invalid { field: f, .. }) => {
                assert_eq!(f, field, "{yaml}")
            }
            other => panic!("{yaml}: {:?}", other.map(|_| ())),
        }
    }
}
