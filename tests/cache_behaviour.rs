//! The complete token cache against a real token endpoint on loopback that counts its calls and
//! can be made slow, failing or down: single flight, negative caching, exchange limits under a
//! flood, refresh ahead, stale serving, JWKS outages and `max_credential_age`.
//!
//! The tests against the real endpoint run in real time and never wait for time to pass. The
//! time rules (refresh ahead, expiry, negative TTL, stale-if-error, `max_credential_age`) run on
//! the injected fake clock with the in-memory token endpoint and key source of
//! `tests/common/fakes.rs`: decided to the second, in milliseconds.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fakes::{Fakes, settle};
use common::provider::{AUDIENCE, FakeProvider, ISSUER, Mode};
use m2m_authz::authorizer::{Authorizer, Unavailable};
use m2m_authz::decision::Decision;
use m2m_authz::exchange::ExchangeError;
use m2m_authz::request::AuthRequest;
use serde_json::json;

async fn authorizer(p: &FakeProvider, cache: &str) -> Arc<Authorizer> {
    let yaml = format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_min_refetch_interval: 1h\ncache:\n{cache}",
        p.token_url(),
        p.jwks_url()
    );
    Arc::new(common::authz::authorizer(&yaml).await)
}

use common::authz::status;
use common::check::basic_request as request;

async fn concurrently(a: &Arc<Authorizer>, n: usize, req: AuthRequest) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (a, req) = (a.clone(), req.clone());
            tokio::spawn(async move { status(&a.check(&req).await) })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_checks_make_one_exchange() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.set_latency(Duration::from_millis(200));
    let a = authorizer(&p, "  max_entries: 1000\n").await;
    let statuses = concurrently(&a, 1000, request("client-1", "s3cret")).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(p.token_calls(), 1);
    let st = a.stats();
    assert_eq!(st.exchanges_ok, 1);
    assert!(st.coalesced >= 900, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_costs_one_exchange_per_negative_ttl() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.set_latency(Duration::from_millis(50));
    let a = authorizer(&p, "  negative_ttl: 30s\n").await;
    let mut statuses = concurrently(&a, 500, request("client-1", "wrong")).await;
    for _ in 0..500 {
        statuses.push(status(&a.check(&request("client-1", "wrong")).await));
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(p.token_calls(), 1);
    assert!(a.stats().negative_hits >= 500);
    // The right secret for the same client is not blocked by the refusal of the wrong one.
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_credentials_stays_within_every_limit() {
    let p = FakeProvider::start().await;
    p.add_client("legit", "s3cret", "user-legit");
    p.set_latency(Duration::from_millis(5));
    let a = authorizer(
        &p,
        "  max_entries: 1000\n  max_negative_entries: 500\n  max_exchanges_per_second: 100\n  max_concurrent_exchanges: 8\n  exchange_queue_timeout: 50ms\n",
    )
    .await;
    assert_eq!(status(&a.check(&request("legit", "s3cret")).await), 200);

    let started = Instant::now();
    let mut limited = 0usize;
    let mut legit_ok = 0usize;
    for batch in 0..100 {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move {
                    let r = a
                        .check(&request(&format!("rnd-{batch}-{i}"), &format!("x{i}")))
                        .await;
                    status(&r)
                })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                429 => limited += 1,
                401 => {}
                other => panic!("a random credential got {other}"),
            }
        }
        // The legitimate, cached client is allowed throughout.
        assert_eq!(status(&a.check(&request("legit", "s3cret")).await), 200);
        legit_ok += 1;
        assert!(a.cache().len() <= 1000);
        assert!(a.cache().negative_len() <= 500);
    }
    let secs = started.elapsed().as_secs_f64();
    let calls = p.token_calls();
    // One initial burst of 100, then 100 per second.
    let allowed = 1 + 100 + (100.0 * secs).ceil() as usize;
    assert!(
        calls <= allowed,
        "{calls} exchanges in {secs:.1}s exceed the limit ({allowed})"
    );
    assert!(
        p.max_in_flight() <= 8,
        "{} exchanges at once",
        p.max_in_flight()
    );
    assert!(
        limited > 90_000,
        "only {limited} of 100000 were answered 429"
    );
    assert_eq!(legit_ok, 100);
    eprintln!("flood: {calls} exchanges, {limited} answered 429, {secs:.1}s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_exchange_limit_is_429_with_retry_after() {
    let p = FakeProvider::start().await;
    for i in 0..3 {
        p.add_client(&format!("c{i}"), "s", "u");
    }
    let a = authorizer(
        &p,
        "  max_exchanges_per_second: 1\n  exchange_queue_timeout: 10ms\n",
    )
    .await;
    let mut got = Vec::new();
    for i in 0..3 {
        match a.check(&request(&format!("c{i}"), "s")).await.unwrap() {
            Decision::Allow(_) => got.push(200),
            Decision::Deny(d) => {
                assert_eq!(d.status, 429);
                assert!(d.retry_after.is_some_and(|s| s >= 1));
                got.push(429);
            }
        }
    }
    assert_eq!(got, vec![200, 429, 429]);
    assert_eq!(p.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_serves_cached_clients_and_recovers_without_restart() {
    let p = FakeProvider::start().await;
    p.add_client("cached", "s3cret", "user-1");
    p.add_client("new", "s3cret", "user-2");
    let a = authorizer(&p, "").await;
    assert_eq!(status(&a.check(&request("cached", "s3cret")).await), 200);
    p.set_mode(Mode::Failing);
    assert_eq!(status(&a.check(&request("cached", "s3cret")).await), 200);
    let err = a.check(&request("new", "s3cret")).await.unwrap_err();
    assert!(matches!(err, Unavailable::Exchange(_)), "{err:?}");
    p.set_mode(Mode::Normal);
    assert_eq!(status(&a.check(&request("new", "s3cret")).await), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_keeps_known_keys_verifying() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let a = authorizer(&p, "").await;
    p.set_mode(Mode::JwksDown);
    assert!(a.provider().jwks().refresh().await.is_err());
    assert!(
        a.provider().jwks().snapshot().is_some(),
        "the last good set stays"
    );
    // Exchanges and bearer tokens signed with known keys keep verifying.
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    let token = p.mint("rsa-a", "c", json!({"user_id": "u"}));
    let bearer = AuthRequest {
        headers: [("authorization", format!("Bearer {token}"))]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    assert_eq!(status(&a.check(&bearer).await), 200);
    // A second check of the same token is a cache hit: no signature verification again.
    let hits = a.stats().hits;
    assert_eq!(status(&a.check(&bearer).await), 200);
    assert_eq!(a.stats().hits, hits + 1);
}

// The time rules, on the fake clock with in-memory parts (tests/common/fakes.rs): decided to
// the second, no sleeping.

/// The refresh-ahead behaviour that once raced whole-second token lifetimes, decided exactly: a
/// client checked every second for three token lifetimes waits for one exchange only (the
/// first); every later token is fetched in the background ahead of its soft expiry.
#[tokio::test]
async fn a_busy_client_is_refreshed_ahead_and_never_waits_again() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    f.token.set_lifetime(60);
    let a = f.authorizer("cache:\n  refresh_ahead: 0.5\n").await;
    for _ in 0..180 {
        assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
        settle(&a).await;
        f.clock.advance(Duration::from_secs(1));
    }
    let st = a.stats();
    assert_eq!(st.misses, 1, "{st:?}");
    assert_eq!(st.stale_served, 0, "{st:?}");
    // 60 s tokens, 15 s margin, refreshed half-way through the 45 usable seconds: at 23 s
    // after each exchange, so 180 s hold the first exchange and 7 refreshes.
    assert_eq!(st.refreshes, 7, "{st:?}");
    assert_eq!(f.token.calls(), 8);
    assert_eq!(st.exchanges_ok, 8);
}

#[tokio::test]
async fn an_idle_client_is_not_refreshed() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    f.token.set_lifetime(60);
    let a = f.authorizer("cache:\n  refresh_ahead: 0.5\n").await;
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    f.clock.advance(Duration::from_secs(3600));
    settle(&a).await;
    assert_eq!(f.token.calls(), 1, "no background exchange without use");
    // Used again after expiry: one exchange, waited for.
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    assert_eq!((f.token.calls(), a.stats().misses), (2, 2));
}

/// A busy client's background refresh with a rotated-out secret ends its cached identity at
/// once: the refusal replaces it.
#[tokio::test]
async fn a_refused_background_refresh_ends_the_cached_identity() {
    let f = Fakes::new();
    f.token.add_client("client-1", "old-secret", "user-1");
    let a = f.authorizer("cache:\n  max_credential_age: 2m\n").await;
    assert_eq!(
        status(&a.check(&request("client-1", "old-secret")).await),
        200
    );
    f.token.add_client("client-1", "new-secret", "user-1");
    f.clock.advance(Duration::from_secs(96));
    assert_eq!(
        status(&a.check(&request("client-1", "old-secret")).await),
        200
    );
    settle(&a).await;
    assert_eq!((f.token.calls(), a.stats().refreshes), (2, 1));
    assert_eq!(
        status(&a.check(&request("client-1", "old-secret")).await),
        401
    );
}

#[tokio::test]
async fn a_refusal_is_remembered_for_the_negative_ttl_exactly() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    let a = f.authorizer("cache:\n  negative_ttl: 30s\n").await;
    for _ in 0..10 {
        assert_eq!(status(&a.check(&request("client-1", "wrong")).await), 401);
    }
    assert_eq!(f.token.calls(), 1);
    f.clock.advance(Duration::from_millis(29_999));
    assert_eq!(status(&a.check(&request("client-1", "wrong")).await), 401);
    assert_eq!(f.token.calls(), 1, "still remembered");
    f.clock.advance(Duration::from_millis(1));
    assert_eq!(status(&a.check(&request("client-1", "wrong")).await), 401);
    assert_eq!(f.token.calls(), 2, "asked again once the refusal expired");
    // The right secret is never blocked by the wrong one's refusal.
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
}

#[tokio::test]
async fn stale_if_error_serves_past_exp_only_while_the_provider_fails_and_only_so_long() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    f.token.set_lifetime(600);
    let a = f.authorizer("cache:\n  stale_if_error: 5m\n").await;
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    f.token.fail_with(Some(ExchangeError::Connect));
    f.clock.advance(Duration::from_secs(600 + 299));
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 503);
    // The provider recovers: the next check exchanges afresh.
    f.token.fail_with(None);
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
}

#[tokio::test]
async fn max_credential_age_bounds_a_rotated_out_secret_to_the_second() {
    let f = Fakes::new();
    f.token.add_client("client-1", "old-secret", "user-1");
    let a = f.authorizer("cache:\n  max_credential_age: 2m\n").await;
    assert_eq!(
        status(&a.check(&request("client-1", "old-secret")).await),
        200
    );
    // The provider completes a rotation: only the new secret is valid from now on.
    f.token.add_client("client-1", "new-secret", "user-1");
    // Before the refresh point (0.8 of the 2 minutes) the cached identity is served as is.
    f.clock.advance(Duration::from_secs(95));
    assert_eq!(
        status(&a.check(&request("client-1", "old-secret")).await),
        200
    );
    assert_eq!(f.token.calls(), 1);
    // At the age it is re-exchanged before answering, and the provider refuses the old secret.
    f.clock.advance(Duration::from_secs(25));
    assert_eq!(
        status(&a.check(&request("client-1", "old-secret")).await),
        401
    );
    assert_eq!(f.token.calls(), 2);
    assert_eq!(
        status(&a.check(&request("client-1", "new-secret")).await),
        200
    );
}

#[tokio::test]
async fn a_failing_refresh_keeps_serving_until_the_token_expires() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    f.token.set_lifetime(120);
    let a = f.authorizer("cache:\n  refresh_ahead: 0.99\n").await;
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    f.token
        .fail_with(Some(ExchangeError::Status { status: 503 }));
    // The margin is a quarter of a short lifetime: 30 s before exp it is stale and re-exchanged;
    // the provider fails, so it is served stale until exp…
    f.clock.advance(Duration::from_secs(119));
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    assert_eq!(a.stats().stale_served, 1);
    // …and not one second past it (stale_if_error is off by default).
    f.clock.advance(Duration::from_secs(1));
    let err = a.check(&request("client-1", "s3cret")).await.unwrap_err();
    assert!(matches!(
        err,
        Unavailable::Exchange(ExchangeError::Status { status: 503 })
    ));
}
