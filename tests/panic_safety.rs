//! No claim can crash the sidecar or pin a token in the cache: provider-signed tokens whose `exp`
//! or `iat` sit at the integer extremes, on the exchange path and the Bearer path, are answered
//! cleanly (allowed with a lifetime clamped to `provider.max_token_lifetime`, or refused), no
//! panic is counted, and the next check works. Against the real token endpoint and the real
//! binary.

mod common;

use common::check::basic_request as basic;

use std::sync::Arc;
use std::time::Duration;

use common::check::check_request;
use common::provider::{AUDIENCE, FakeProvider, ISSUER, TokenOverride, mint};
use common::sidecar::Sidecar;
use futures::future::BoxFuture;
use m2m_authz::authorizer::{Authorizer, Unavailable};
use m2m_authz::clock::FakeClock;
use m2m_authz::config::Config;
use m2m_authz::decision::Decision;
use m2m_authz::request::{AuthRequest, Headers};
use serde_json::{Value, json};

/// `exp` values a provider (or an attacker holding its key) might sign, beyond any date a token
/// may carry (after 9999-12-31): refused cleanly, never a panic.
const EXTREME_EXPS: [u64; 5] = [
    u64::MAX,
    u64::MAX - 1,
    i64::MAX as u64,
    (i64::MAX as u64) + 1,
    // Past every `SystemTime` and `Instant` in milliseconds.
    u64::MAX / 1000 + 1,
];

/// `exp` values that are far away but valid dates: accepted, and cached no longer than
/// `provider.max_token_lifetime`.
const FAR_EXPS: [u64; 2] = [
    // 9999-12-31T23:59:59Z, the last date a token may carry.
    253_402_300_799,
    // Ten years from the test's own epoch guess (any present-day clock is far below).
    4_000_000_000,
];

fn provider_yaml(p: &FakeProvider, extra: &str) -> String {
    format!(
        "{}  jwks_min_refetch_interval: 1h\n{extra}",
        p.oauth2_provider_yaml()
    )
}

async fn authorizer(p: &FakeProvider, extra: &str) -> Arc<Authorizer> {
    Arc::new(common::authz::authorizer(&provider_yaml(p, extra)).await)
}

/// An authorizer reading time from `clock`, so a test moves past `max_token_lifetime` without
/// sleeping.
async fn authorizer_on(p: &FakeProvider, extra: &str, clock: &Arc<FakeClock>) -> Arc<Authorizer> {
    let yaml = provider_yaml(p, extra);
    Arc::new(common::authz::authorizer_on_clock(&yaml, clock.clone()).await)
}

fn with_auth(value: String) -> AuthRequest {
    AuthRequest {
        headers: [("authorization", value)].into_iter().collect::<Headers>(),
        ..Default::default()
    }
}

/// A token signed with the provider's key, with `claims` over the usual ones.
fn token(claims: Value) -> String {
    let mut all = json!({ "user_id": "user-1", "scope": "read:orders" });
    all.as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    mint("rsa-a", "client-1", all, 3600)
}

/// The token endpoint answers every request with `access_token` and no `expires_in`, so only
/// the token's own `exp` bounds its life.
fn issue_without_expires_in(p: &FakeProvider, access_token: String) {
    let body = json!({ "access_token": access_token, "token_type": "Bearer" });
    let answer: TokenOverride =
        Arc::new(move || -> BoxFuture<'static, axum::response::Response> {
            let body = body.clone();
            Box::pin(async move { axum::response::IntoResponse::into_response(axum::Json(body)) })
        });
    p.set_token_override(Some(answer));
}

/// Whether the answer is an allow; anything but an allow must be a clean refusal of the token.
fn allowed(what: &str, r: &Result<Decision, Unavailable>) -> bool {
    match r {
        Ok(Decision::Allow(a)) => {
            assert!(
                a.set()
                    .iter()
                    .any(|(k, v)| &**k == "x-user-id" && &**v == "user-1"),
                "{what}"
            );
            true
        }
        Ok(Decision::Deny(d)) => {
            assert_eq!(d.status, 401, "{what}: {d:?}");
            false
        }
        Err(Unavailable::IssuedTokenInvalid(_)) => false,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

fn assert_no_panics(a: &Authorizer) {
    let s = a.stats();
    assert_eq!((s.check_panics, s.flight_panics), (0, 0), "{s:?}");
}

/// Exchange path: the token endpoint issues a token with an extreme `exp` and no `expires_in`.
/// It is cached for `max_token_lifetime` (1 s here), then exchanged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_with_an_extreme_exp_is_cached_no_longer_than_max_token_lifetime() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    for exp in EXTREME_EXPS.into_iter().chain(FAR_EXPS) {
        issue_without_expires_in(&p, token(json!({ "exp": exp })));
        // Each round starts from an empty cache.
        let clock = FakeClock::new();
        let a = authorizer_on(&p, "  max_token_lifetime: 1s\n", &clock).await;
        let calls = p.token_calls();
        let first = a.check(&basic("client-1", "s3cret")).await;
        if !allowed(&format!("exp {exp}"), &first) {
            assert!(EXTREME_EXPS.contains(&exp), "exp {exp} is a valid date");
            assert_no_panics(&a);
            continue;
        }
        let again = a.check(&basic("client-1", "s3cret")).await;
        assert!(allowed("cached", &again));
        assert_eq!(
            p.token_calls(),
            calls + 1,
            "exp {exp}: the second check hit the cache"
        );
        clock.advance(Duration::from_millis(1100));
        assert!(allowed(
            "after the clamp",
            &a.check(&basic("client-1", "s3cret")).await
        ));
        assert_eq!(
            p.token_calls(),
            calls + 2,
            "exp {exp}: exchanged again after max_token_lifetime"
        );
        assert_no_panics(&a);
    }
}

/// Bearer path: tokens with extreme `exp` and `iat` (with `max_token_age`, which adds to `iat`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_with_extreme_times_never_panic_and_are_cached_no_longer_than_the_clamp() {
    let p = FakeProvider::start().await;
    let clock = FakeClock::new();
    let a = authorizer_on(
        &p,
        "  max_token_lifetime: 1s\n  max_token_age: 1h\n",
        &clock,
    )
    .await;
    let mut cases: Vec<Value> = EXTREME_EXPS
        .iter()
        .chain(&FAR_EXPS)
        .map(|exp| json!({ "exp": exp }))
        .collect();
    for iat in [u64::MAX, u64::MAX - 3600, i64::MAX as u64] {
        cases.push(json!({ "exp": u64::MAX, "iat": iat }));
        cases.push(json!({ "exp": common::provider::now() + 3600, "iat": iat }));
    }
    let mut allowed_tokens = Vec::new();
    for claims in cases {
        let t = token(claims.clone());
        let r = a.check(&with_auth(format!("Bearer {t}"))).await;
        if allowed(&claims.to_string(), &r) {
            allowed_tokens.push(t);
        }
        assert_no_panics(&a);
    }
    assert!(
        allowed_tokens.len() == FAR_EXPS.len(),
        "a far exp with a current iat is valid: {} allowed",
        allowed_tokens.len()
    );
    // Cached now; after the clamp each is verified again (a miss), and still answered.
    let misses = a.stats().misses;
    for t in &allowed_tokens {
        assert!(allowed(
            "cached",
            &a.check(&with_auth(format!("Bearer {t}"))).await
        ));
    }
    assert_eq!(a.stats().misses, misses, "served from the cache");
    clock.advance(Duration::from_millis(1100));
    for t in &allowed_tokens {
        assert!(allowed(
            "re-verified",
            &a.check(&with_auth(format!("Bearer {t}"))).await
        ));
    }
    assert_eq!(
        a.stats().misses,
        misses + allowed_tokens.len() as u64,
        "verified again after max_token_lifetime"
    );
    assert_no_panics(&a);
}

/// A token already past its `exp` at either extreme of the clock is refused, not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_at_the_low_extreme_are_refused() {
    let p = FakeProvider::start().await;
    let a = authorizer(&p, "").await;
    for exp in [0u64, 1] {
        let r = a
            .check(&with_auth(format!(
                "Bearer {}",
                token(json!({ "exp": exp }))
            )))
            .await;
        match r {
            Ok(Decision::Deny(d)) => assert_eq!(d.status, 401),
            other => panic!("exp {exp}: {other:?}"),
        }
    }
    assert_no_panics(&a);
}

/// `provider.max_token_lifetime` must lie in 1s..=365d; the error names the field (also under
/// `providers.NAME`).
#[tokio::test]
async fn max_token_lifetime_is_bounded() {
    let p = FakeProvider::start().await;
    for bad in ["0s", "500ms", "366d", "1000y"] {
        let e = Config::from_yaml(&provider_yaml(
            &p,
            &format!("  max_token_lifetime: {bad}\n"),
        ))
        .err()
        .unwrap_or_else(|| panic!("{bad} accepted"))
        .to_string();
        assert!(e.contains("provider.max_token_lifetime"), "{bad}: {e}");
    }
    let other = format!(
        "{}providers:\n  other:\n    kind: oauth2\n    token_url: {}\n    jwks_url: {}\n    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    max_token_lifetime: 0s\n",
        provider_yaml(&p, ""),
        p.token_url(),
        p.jwks_url()
    );
    let e = Config::from_yaml(&other)
        .expect_err("0s accepted")
        .to_string();
    assert!(e.contains("providers.other.max_token_lifetime"), "{e}");
    for good in ["1s", "24h", "365d"] {
        Config::from_yaml(&provider_yaml(
            &p,
            &format!("  max_token_lifetime: {good}\n"),
        ))
        .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

/// A CheckRequest carrying `Authorization: Bearer <token>`.
fn bearer_check(token: &str) -> m2m_authz::proto::envoy::service::auth::v3::CheckRequest {
    let mut request = check_request("client-1", "s3cret");
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers
        .insert("authorization".into(), format!("Bearer {token}"));
    request
}

/// The real binary over gRPC: both paths with a token that lives until the year 9999 (allowed,
/// lifetime clamped) and one whose `exp` is past any date (refused cleanly), then an ordinary
/// check; the process keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_answers_eternal_tokens_and_keeps_serving() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.add_client("client-2", "s3cret", "user-2");
    let mut sidecar = Sidecar::start(&provider_yaml(&p, "")).await;
    sidecar.wait_serving(Duration::from_secs(20)).await;
    let mut client = sidecar.client().await;
    let eternal = token(json!({ "exp": FAR_EXPS[0] }));
    let absurd = token(json!({ "exp": u64::MAX }));

    issue_without_expires_in(&p, eternal.clone());
    let r = client.check(check_request("client-1", "s3cret")).await;
    let code = r
        .expect("an answer, not a reset stream")
        .into_inner()
        .status
        .unwrap()
        .code;
    assert_eq!(code, 0, "allowed, with a clamped lifetime");

    let r = client.check(bearer_check(&eternal)).await;
    let code = r
        .expect("an answer, not a reset stream")
        .into_inner()
        .status
        .unwrap()
        .code;
    assert_eq!(code, 0);

    // Past any date: the exchange path is a provider fault (UNAVAILABLE, so Envoy's
    // failure_mode_allow decides), the Bearer path the caller's (a denial); both are answers.
    issue_without_expires_in(&p, absurd.clone());
    let status = client
        .check(check_request("client-2", "s3cret"))
        .await
        .expect_err("an issued token past any date is a provider fault");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let denied = client
        .check(bearer_check(&absurd))
        .await
        .expect("an answer, not a reset stream")
        .into_inner();
    assert_ne!(denied.status.unwrap().code, 0, "refused");

    p.set_token_override(None);
    let r = client.check(check_request("client-2", "s3cret")).await;
    assert_eq!(r.unwrap().into_inner().status.unwrap().code, 0);
    assert!(sidecar.health().await.is_some(), "still serving");
    let metrics = sidecar.metrics_text().await;
    assert!(
        metrics.contains("m2m_authz_panics_total{site=\"check\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("m2m_authz_panics_total{site=\"exchange\"} 0"));
}
