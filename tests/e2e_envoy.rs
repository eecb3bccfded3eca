//! End to end through a real Envoy 1.40: a client → Envoy's ext_authz filter → the real
//! `m2m-authz` process → an echo upstream that reports the headers it received.

mod common;

use common::check::basic;

use std::time::Duration;

use common::echo::EchoUpstream;
use common::envoy::{Envoy, EnvoyPorts, Front};
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::sidecar::Sidecar;
use serde_json::json;

struct Stack {
    provider: FakeProvider,
    sidecar: Sidecar,
    upstream: EchoUpstream,
    envoy: Envoy,
    http: reqwest::Client,
}

async fn stack() -> Stack {
    let provider = FakeProvider::start().await;
    provider.add_client("client-1", "s3cret-e2e", "user-1");
    let (sidecar, Front { envoy, upstream }) = common::envoy::stack(&format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  request_timeout: 2s\n",
        provider.token_url(),
        provider.jwks_url()
    ))
    .await;
    Stack {
        provider,
        sidecar,
        upstream,
        envoy,
        http: common::http_client(),
    }
}

impl Stack {
    async fn get(&self, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self.http.get(self.envoy.url("/v1/orders"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.expect("request through Envoy")
    }
}

#[tokio::test]
async fn the_whole_flow_through_envoy() {
    crate::needs!(Envoy);
    let s = stack().await;

    // A valid Basic credential: the upstream sees the user's id and no credential.
    let r = s
        .get(&[
            ("authorization", &basic("client-1", "s3cret-e2e")),
            ("x-user-id", "admin"),
            ("X-User-ID", "root"),
        ])
        .await;
    assert_eq!(r.status(), 200, "{}", s.sidecar.logs());
    let seen = s.upstream.last_request().expect("upstream reached");
    assert_eq!(
        seen.header_values("x-user-id"),
        ["user-1"],
        "forged ids never reach the upstream"
    );
    assert_eq!(seen.header("x-client-id"), Some("client-1"));
    assert!(
        seen.header_values("authorization").is_empty(),
        "credential stripped"
    );

    // The header pair: both headers are stripped, the secret never reaches the upstream.
    let r = s
        .get(&[
            ("x-client-id", "client-1"),
            ("x-client-secret", "s3cret-e2e"),
        ])
        .await;
    assert_eq!(r.status(), 200);
    let seen = s.upstream.last_request().unwrap();
    assert!(seen.header_values("x-client-secret").is_empty());
    assert_eq!(seen.header("x-user-id"), Some("user-1"));
    assert_eq!(
        s.provider.token_calls(),
        1,
        "the second request was a cache hit"
    );

    // A Bearer token the caller already holds: verified, no exchange.
    let token = s
        .provider
        .mint("rsa-a", "client-7", json!({"user_id": "user-7"}));
    let r = s
        .get(&[("authorization", &format!("Bearer {token}"))])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.upstream.last_request().unwrap().header("x-user-id"),
        Some("user-7")
    );
    assert_eq!(s.provider.token_calls(), 1);

    let before = s.upstream.request_count();
    // Wrong secret: 401 with a challenge; the upstream is not reached.
    let r = s
        .get(&[("authorization", &basic("client-1", "wrong"))])
        .await;
    assert_eq!(r.status(), 401);
    let www = r
        .headers()
        .get("www-authenticate")
        .expect("challenge")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        www.starts_with("Bearer realm=") && www.contains("invalid_token"),
        "{www}"
    );
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("wrong"),
        "deny body echoes the secret: {body}"
    );

    // No credential: 401 with a bare challenge.
    let r = s.get(&[("x-user-id", "admin")]).await;
    assert_eq!(r.status(), 401);
    let www = r
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(!www.contains("error="), "{www}");
    assert_eq!(
        s.upstream.request_count(),
        before,
        "denied requests never reach the upstream"
    );
}

#[tokio::test]
async fn token_endpoint_down_fails_closed_and_the_sidecar_keeps_serving() {
    crate::needs!(Envoy);
    let s = stack().await;
    s.provider.add_client("client-2", "s3cret-2", "user-2");
    assert_eq!(
        s.get(&[("authorization", &basic("client-1", "s3cret-e2e"))])
            .await
            .status(),
        200
    );

    s.provider.stop();
    let before = s.upstream.request_count();
    let r = s
        .get(&[("authorization", &basic("client-2", "s3cret-2"))])
        .await;
    assert!(
        !r.status().is_success(),
        "failed closed: got {}",
        r.status()
    );
    assert_eq!(s.upstream.request_count(), before);

    // The sidecar is still up and serving what it can: the cached credential still works.
    let r = s
        .get(&[("authorization", &basic("client-1", "s3cret-e2e"))])
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), async {
        assert_eq!(
            s.sidecar.health().await,
            Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
        );
    })
    .await
    .unwrap();
}

/// Envoy reaches the sidecar over a Unix domain socket (`listen.grpc: unix:/path`, an Envoy
/// `pipe` address): the same answers as over TCP.
#[tokio::test]
async fn checks_over_a_unix_domain_socket() {
    crate::needs!(Envoy);
    let provider = FakeProvider::start().await;
    provider.add_client("client-1", "s3cret-uds", "user-1");
    let (sidecar, socket) = Sidecar::start_unix(&format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n",
        provider.token_url(),
        provider.jwks_url()
    ))
    .await;
    let upstream = EchoUpstream::start().await;
    let placeholder = common::process::free_addr();
    let envoy = Envoy::start_with(
        EnvoyPorts {
            ext_authz: placeholder,
            upstream: upstream.addr(),
        },
        common::envoy::EnvoyOptions {
            replacements: vec![(
                format!(
                    "socket_address: {{ address: 127.0.0.1, port_value: {} }}",
                    placeholder.port()
                ),
                format!("pipe: {{ path: \"{}\" }}", socket.display()),
            )],
            ..Default::default()
        },
    )
    .await;
    let http = common::http_client();
    // Ready when keys are loaded: poll through Envoy with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = http
            .get(envoy.url("/v1/orders"))
            .basic_auth("client-1", Some("s3cret-uds"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never allowed: {}\n{}",
            r.status(),
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        upstream.last_request().unwrap().header("x-user-id"),
        Some("user-1")
    );
    let r = http
        .get(envoy.url("/v1/orders"))
        .basic_auth("client-1", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Owner and group may connect (an Envoy of the same group), nobody else.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
}
