//! The complete token cache against a real token endpoint on loopback that counts its calls and
//! can be made slow, failing or down: single flight, negative caching, exchange limits under a
//! flood, refresh ahead, stale serving, JWKS outages and `max_credential_age`.
//!
//! These run in real time (the provider is a real HTTP server; tokio's paused clock would fire
//! HTTP timeouts while sockets wait). The time rules themselves are unit-tested with a paused
//! clock in `src/cache.rs`, `src/limits.rs` and `src/flight.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::provider::{AUDIENCE, FakeProvider, ISSUER, Mode};
use m2m_authz::authorizer::{Authorizer, Unavailable};
use m2m_authz::decision::Decision;
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
async fn a_busy_client_never_waits_across_two_token_lifetimes() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.set_lifetime(4);
    let a = authorizer(&p, "  refresh_ahead: 0.5\n").await;
    let deadline = Instant::now() + Duration::from_secs(9);
    while Instant::now() < deadline {
        assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = a.stats();
    // Only the very first check waited for an exchange; the rest were refreshed ahead.
    assert_eq!(st.misses, 1, "{st:?}");
    assert!(
        st.refreshes >= 2 && p.token_calls() >= 3,
        "{st:?}, {} exchanges",
        p.token_calls()
    );
    assert_eq!(st.stale_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_not_refreshed() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.set_lifetime(4);
    let a = authorizer(&p, "  refresh_ahead: 0.5\n").await;
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(p.token_calls(), 1, "no background exchange without use");
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
async fn a_failing_refresh_keeps_serving_until_the_token_expires() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.set_lifetime(3);
    let a = authorizer(&p, "  refresh_ahead: 0.2\n").await;
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
    p.set_mode(Mode::Failing);
    // Past the refresh point and into the margin: served stale while the token is valid…
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and never after it expired (stale_if_error is off by default).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&a.check(&request("client-1", "s3cret")).await), 503);
    assert!(a.stats().exchanges_failed >= 1);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_credential_age_bounds_a_rotated_out_secret() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "old-secret", "user-1");
    let a = authorizer(&p, "  max_credential_age: 2s\n").await;
    assert_eq!(
        status(&a.check(&request("client-1", "old-secret")).await),
        200
    );
    let rotated = Instant::now();
    // The provider completes a rotation: only the new secret is valid from now on.
    p.add_client("client-1", "new-secret", "user-1");
    let mut denied_after = None;
    while rotated.elapsed() < Duration::from_secs(6) {
        if status(&a.check(&request("client-1", "old-secret")).await) == 401 {
            denied_after = Some(rotated.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = denied_after.expect("the old secret kept working");
    assert!(
        after <= Duration::from_millis(3500),
        "old secret worked for {after:?}"
    );
    assert_eq!(
        status(&a.check(&request("client-1", "new-secret")).await),
        200
    );
}
