//! Envoy dynamic metadata end to end: a real Envoy 1.40 with deploy/envoy/envoy.yaml asks the
//! real `m2m-authz` process; its access log names who was let in (and why others were not)
//! from the metadata, and the shipped filter snippets act on it: an RBAC user deny-list
//! (deploy/envoy/rbac-user-deny-list.yaml) and a per-user local rate limit
//! (deploy/envoy/local-ratelimit-per-user.yaml).

mod common;

use std::time::{Duration, Instant};

use common::check::basic;
use common::envoy::{EnvoyOptions, Front};
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use serde_json::json;

const POLICY: &str = r#"rules:
  - name: admin-block
    match: {path: {prefix: /admin}}
    deny: true
  - name: orders-read
    match: {path: {prefix: /v1/orders}, methods: [GET]}
    require: {all_of: ["read:orders"]}
default: {require: {}}
"#;

/// The http_filters entry the RBAC snippet goes before (once in deploy/envoy/envoy.yaml).
const ROUTER_FILTER: &str = "                  - name: envoy.filters.http.router\n";

fn sidecar_config(p: &FakeProvider, policy: Option<&std::path::Path>) -> String {
    let mut config = format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  request_timeout: 2s\n",
        p.token_url(),
        p.jwks_url()
    );
    if let Some(policy) = policy {
        config.push_str(&format!("policy:\n  file: {}\n", policy.display()));
    }
    config
}

/// The access log line of the request for `path` (each request here has its own), waiting for
/// Envoy to flush it. (Envoy at the edge replaces a client's `x-request-id`, so the path is the
/// marker.)
async fn log_line(envoy: &common::envoy::Envoy, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let marker = format!(" {path} HTTP/1.1\" ");
    loop {
        let log = envoy.access_log();
        if let Some(line) = log.lines().find(|l| l.contains(&marker)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {path}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_access_log_names_the_user_and_client_and_the_reason_for_a_denial() {
    crate::needs!(Envoy);
    let p = FakeProvider::start().await;
    p.add_client_with_claims(
        "client-meta",
        "s3cret-meta-log",
        json!({"user_id": "user-meta", "scope": "read:orders"}),
    );
    let dir = common::process::TempDir::new("policy");
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    let (sidecar, Front { envoy, upstream }) =
        common::envoy::stack(&sidecar_config(&p, Some(&dir.join("policy.yaml")))).await;
    let http = common::http_client();
    let send = |path: &str, auth: Option<String>| {
        let mut r = http.get(envoy.url(path));
        if let Some(auth) = auth {
            r = r.header("authorization", auth);
        }
        r.send()
    };
    let good = || Some(basic("client-meta", "s3cret-meta-log"));

    let r = send("/v1/orders/1", good()).await.unwrap();
    assert_eq!(r.status(), 200, "{}", sidecar.logs());
    assert_eq!(
        upstream.last_request().unwrap().header("x-user-id"),
        Some("user-meta")
    );
    let line = log_line(&envoy, "/v1/orders/1").await;
    assert!(
        line.contains("\" 200 ")
            && line.contains("user=user-meta client=client-meta rule=orders-read authz_reason=-"),
        "{line}"
    );

    // A wrong secret: refused by the exchange under the rule that matched.
    let wrong = Some(basic("client-meta", "wrong-meta-secret"));
    let r = send("/v1/orders/2", wrong).await.unwrap();
    assert_eq!(r.status(), 401);
    let line = log_line(&envoy, "/v1/orders/2").await;
    assert!(
        line.contains("\" 401 UAEX ")
            && line.contains("user=- client=- rule=orders-read authz_reason=invalid_client"),
        "{line}"
    );

    // A route closed by policy, and no credential at all (under the policy's default).
    let r = send("/admin/users", good()).await.unwrap();
    assert_eq!(r.status(), 403);
    let line = log_line(&envoy, "/admin/users").await;
    assert!(
        line.contains("user=- client=- rule=admin-block authz_reason=route_denied"),
        "{line}"
    );
    let r = send("/v2/things", None).await.unwrap();
    assert_eq!(r.status(), 401);
    let line = log_line(&envoy, "/v2/things").await;
    assert!(
        line.contains("rule=default authz_reason=no_credentials"),
        "{line}"
    );

    let log = envoy.access_log();
    for secret in ["s3cret-meta-log", "wrong-meta-secret"] {
        assert!(
            !log.contains(secret),
            "a secret in Envoy's access log:\n{log}"
        );
    }
    let token_parts = "eyJ";
    assert!(
        !log.contains(token_parts),
        "a token in Envoy's access log:\n{log}"
    );
}

/// `dynamic_metadata` trims the keys Envoy receives (each costs Envoy work on every request):
/// what is left out is absent from the access log, what is kept still arrives, on allowed and
/// denied answers alike, and the identity headers upstream do not change.
#[tokio::test]
async fn only_the_configured_metadata_keys_reach_envoy() {
    crate::needs!(Envoy);
    let p = FakeProvider::start().await;
    p.add_client_with_claims(
        "client-trim",
        "s3cret-trim-log",
        json!({"user_id": "user-trim", "scope": "read:orders"}),
    );
    let config = format!(
        "{}dynamic_metadata: [user_id, reason]\n",
        sidecar_config(&p, None)
    );
    let (sidecar, Front { envoy, upstream }) = common::envoy::stack(&config).await;
    let http = common::http_client();
    let r = http
        .get(envoy.url("/v1/trim/1"))
        .header("authorization", basic("client-trim", "s3cret-trim-log"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", sidecar.logs());
    let upstream_request = upstream.last_request().unwrap();
    assert_eq!(upstream_request.header("x-user-id"), Some("user-trim"));
    assert_eq!(upstream_request.header("x-client-id"), Some("client-trim"));
    let line = log_line(&envoy, "/v1/trim/1").await;
    assert!(
        line.contains("user=user-trim client=- rule=- authz_reason=-"),
        "{line}"
    );
    let r = http
        .get(envoy.url("/v1/trim/2"))
        .header("authorization", basic("client-trim", "wrong-trim-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let line = log_line(&envoy, "/v1/trim/2").await;
    assert!(
        line.contains("user=- client=- rule=- authz_reason=invalid_client"),
        "{line}"
    );
}

/// An http_filters snippet from deploy/envoy/, with `edits` (each must apply once), as Envoy
/// options that splice it in before envoy.yaml's router filter.
fn with_snippet(file: &str, edits: &[(&str, &str)]) -> EnvoyOptions {
    let mut snippet =
        std::fs::read_to_string(common::tools::repo_file(format!("deploy/envoy/{file}"))).unwrap();
    for (from, to) in edits {
        assert_eq!(snippet.matches(from).count(), 1, "{from:?} in {file}");
        snippet = snippet.replace(from, to);
    }
    let indent = &ROUTER_FILTER[..ROUTER_FILTER.find('-').unwrap()];
    let snippet: String = snippet
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{indent}{l}\n"))
        .collect();
    EnvoyOptions {
        replacements: vec![(
            ROUTER_FILTER.to_owned(),
            format!("{snippet}{ROUTER_FILTER}"),
        )],
        ..Default::default()
    }
}

#[tokio::test]
async fn an_rbac_filter_refuses_a_deny_listed_user_and_lets_others_through() {
    crate::needs!(Envoy);
    let p = FakeProvider::start().await;
    p.add_client("client-ok", "s3cret-rbac-ok", "user-ok");
    p.add_client("client-suspended", "s3cret-rbac-sus", "user-suspended");
    let (sidecar, Front { envoy, upstream }) = common::envoy::stack_with(
        &sidecar_config(&p, None),
        with_snippet("rbac-user-deny-list.yaml", &[]),
    )
    .await;
    let http = common::http_client();
    let get = |client: &str, secret: &str, forged_user: &str| {
        http.get(envoy.url("/v1/orders"))
            .header("authorization", basic(client, secret))
            // A forged identity header changes nothing: RBAC reads the metadata.
            .header("x-user-id", forged_user)
            .send()
    };

    let r = get("client-ok", "s3cret-rbac-ok", "user-suspended")
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", sidecar.logs());
    assert_eq!(
        upstream.last_request().unwrap().header("x-user-id"),
        Some("user-ok")
    );

    let before = upstream.request_count();
    let r = get("client-suspended", "s3cret-rbac-sus", "user-ok")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "refused by RBAC, not by m2m-authz"
    );
    assert_eq!(r.text().await.unwrap(), "RBAC: access denied");
    assert_eq!(
        upstream.request_count(),
        before,
        "the upstream is not reached"
    );
    assert_eq!(envoy.stat("http.ingress_http.rbac.denied").await, Some(1));
    assert_eq!(envoy.stat("http.ingress_http.rbac.allowed").await, Some(1));
    // m2m-authz allowed both: the refusal was Envoy's, on the metadata.
    assert_eq!(envoy.stat("http.ingress_http.ext_authz.ok").await, Some(2));
}

#[tokio::test]
async fn a_local_rate_limit_counts_each_user_on_its_own() {
    crate::needs!(Envoy);
    let p = FakeProvider::start().await;
    p.add_client("client-busy", "s3cret-rl-busy", "user-busy");
    p.add_client("client-calm", "s3cret-rl-calm", "user-calm");
    // The shipped per-user budget (100 a minute), cut to 2 so that the test reaches it.
    let options = with_snippet(
        "local-ratelimit-per-user.yaml",
        &[
            ("max_tokens: 100\n", "max_tokens: 2\n"),
            ("tokens_per_fill: 100\n", "tokens_per_fill: 2\n"),
        ],
    );
    let (sidecar, Front { envoy, upstream }) =
        common::envoy::stack_with(&sidecar_config(&p, None), options).await;
    let http = common::http_client();
    let get = |client: &str, secret: &str, forged_user: &str| {
        http.get(envoy.url("/v1/orders"))
            .header("authorization", basic(client, secret))
            .header("x-user-id", forged_user)
            .send()
    };

    for _ in 0..2 {
        let r = get("client-busy", "s3cret-rl-busy", "user-busy")
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", sidecar.logs());
    }
    let before = upstream.request_count();
    let r = get("client-busy", "s3cret-rl-busy", "user-busy")
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the third request within the minute");
    assert_eq!(
        upstream.request_count(),
        before,
        "the upstream is not reached"
    );

    // Another user has its own bucket, even claiming the busy user's id in a header.
    for _ in 0..2 {
        let r = get("client-calm", "s3cret-rl-calm", "user-busy")
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            upstream.last_request().unwrap().header("x-user-id"),
            Some("user-calm")
        );
    }
    assert_eq!(
        envoy
            .stat("per_user.http_local_rate_limit.rate_limited")
            .await,
        Some(1)
    );
}
