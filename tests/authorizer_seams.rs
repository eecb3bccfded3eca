//! The Authorizer with in-memory parts (`tests/common/fakes.rs`) and a fake clock: no sockets,
//! no sleeping. Time moves only when a test advances the clock, so expiry, refresh-ahead,
//! negative caching, stale-if-error, `max_credential_age`, rate limits and key refetches are
//! decided exactly, and each test finishes in milliseconds. The cache's own time rules on the
//! fake clock are in `cache_behaviour.rs`; the same paths over real HTTP in `cache_behaviour.rs`,
//! `provider_faults.rs` and `check_flow.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::check::{basic_request as client, bearer_request as bearer};
use common::fakes::{Answer, Fakes, START_UNIX, settle};
use m2m_authz::authorizer::{Authorizer, BuildError, Parts, Unavailable};
use m2m_authz::clock::Clock;
use m2m_authz::config::Config;
use m2m_authz::decision::Decision;
use m2m_authz::exchange::ExchangeError;
use m2m_authz::request::AuthRequest;
use serde_json::json;

/// The HTTP status a caller would see for `r` (503 for an infrastructure failure).
async fn status(a: &Authorizer, r: &AuthRequest) -> u16 {
    common::authz::status(&a.check(r).await)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test]
async fn allows_a_known_client_and_denies_a_wrong_secret_without_a_socket() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    let a = f.authorizer("").await;
    match a.check(&client("client-1", "s3cret")).await {
        Ok(Decision::Allow(allow)) => {
            let user = allow
                .identity
                .headers
                .iter()
                .find(|(name, _)| &**name == "x-user-id")
                .map(|(_, v)| v.to_string());
            assert_eq!(user.as_deref(), Some("user-1"));
        }
        other => panic!("{other:?}"),
    }
    match a.check(&client("client-1", "wrong")).await {
        Ok(Decision::Deny(d)) => {
            assert_eq!(d.status, 401);
            assert!(d.challenge.is_some(), "{d:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&a, &client("nobody", "x")).await, 401);
    assert_eq!(f.token.calls(), 3);
    // A second check of the allowed client is a cache hit.
    assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
    assert_eq!(f.token.calls(), 3);
    assert_eq!(f.keys.calls(), 1);
}

/// The token's time rules are checked against the injected clock, not the system's: the fake
/// clock stands in 2033, so tokens it dates would be "not yet valid" to a library reading the
/// system clock, and become expired here while the system clock has barely moved.
#[tokio::test]
async fn bearer_tokens_expire_on_the_injected_clock() {
    let f = Fakes::new();
    f.token.set_lifetime(600);
    let a = f.authorizer("").await;
    let token = f.token.mint("client-1", json!({"user_id": "u"}));
    assert_eq!(status(&a, &bearer(&token)).await, 200);
    // Within exp + leeway (30 s) a fresh authorizer still accepts it…
    f.clock.advance(secs(600 + 30));
    let b = f.authorizer("").await;
    assert_eq!(status(&b, &bearer(&token)).await, 200);
    // …and one second later nobody does: the cached entry ended at exp, the check refuses.
    f.clock.advance(secs(1));
    for a in [&a, &b] {
        match a.check(&bearer(&token)).await {
            Ok(Decision::Deny(d)) => {
                assert_eq!((d.status, d.reason), (401, "token_expired"), "{d:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    // `nbf` in the future (beyond the leeway) is refused the same way.
    let early = f.token.mint(
        "client-1",
        json!({"user_id": "u", "nbf": f.clock.unix_now() + 31}),
    );
    assert_eq!(status(&a, &bearer(&early)).await, 401);
}

/// One client's life on the fake clock: exchanged once, refreshed ahead in the background while
/// in use, served stale (never past `exp`) when the provider then fails.
#[tokio::test]
async fn an_identity_is_refreshed_ahead_then_expires_with_its_token() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    f.token.set_lifetime(120);
    let a = f.authorizer("cache:\n  refresh_ahead: 0.5\n").await;
    assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
    // 30 s margin (a quarter of a short lifetime): refreshed at 45 s of the usable 90.
    f.clock.advance(secs(44));
    assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
    settle(&a).await;
    assert_eq!(f.token.calls(), 1);
    f.clock.advance(secs(1));
    assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
    settle(&a).await;
    assert_eq!((f.token.calls(), a.stats().refreshes), (2, 1));
    // The refreshed token (exchanged at 45 s) is the one served; the provider now fails.
    f.token
        .fail_with(Some(ExchangeError::Status { status: 503 }));
    f.clock.advance(secs(119));
    assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
    assert_eq!(a.stats().stale_served, 1);
    f.clock.advance(secs(1));
    let err = a.check(&client("client-1", "s3cret")).await.unwrap_err();
    assert!(matches!(
        err,
        Unavailable::Exchange(ExchangeError::Status { status: 503 })
    ));
}

#[tokio::test]
async fn the_exchange_rate_limit_refills_on_the_injected_clock() {
    let f = Fakes::new();
    for i in 0..3 {
        f.token.add_client(&format!("c{i}"), "s", "u");
    }
    let a = f
        .authorizer("cache:\n  max_exchanges_per_second: 1\n  exchange_queue_timeout: 10ms\n")
        .await;
    assert_eq!(status(&a, &client("c0", "s")).await, 200);
    match a.check(&client("c1", "s")).await {
        Ok(Decision::Deny(d)) => {
            assert_eq!((d.status, d.retry_after), (429, Some(1)), "{d:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.token.calls(), 1);
    // Half a token back in the bucket: still further off than the 10 ms queue allows.
    f.clock.advance(Duration::from_millis(500));
    assert_eq!(status(&a, &client("c1", "s")).await, 429);
    f.clock.advance(Duration::from_millis(500));
    assert_eq!(status(&a, &client("c1", "s")).await, 200);
    assert_eq!(status(&a, &client("c2", "s")).await, 429);
    assert_eq!(f.token.calls(), 2);
}

/// A token naming a key the set lacks costs one refetch per `jwks_min_refetch_interval`, timed
/// by the injected clock.
#[tokio::test]
async fn unknown_key_refetches_are_gated_on_the_injected_clock() {
    let f = Fakes::new();
    let a = f.authorizer("").await;
    assert_eq!(f.keys.calls(), 1);
    f.token.sign_with("rsa-b");
    let rotated = f.token.mint("client-1", json!({"user_id": "u"}));
    assert_eq!(status(&a, &bearer(&rotated)).await, 401);
    assert_eq!(f.keys.calls(), 2, "one refetch for the unknown kid");
    f.keys.publish(&["rsa-a", "rsa-b"]);
    f.clock.advance(secs(29));
    assert_eq!(status(&a, &bearer(&rotated)).await, 401);
    assert_eq!(f.keys.calls(), 2, "within the interval: no refetch");
    f.clock.advance(secs(1));
    assert_eq!(status(&a, &bearer(&rotated)).await, 200);
    assert_eq!(f.keys.calls(), 3);
}

/// Scripted answers: the provider's own 429 is passed on with its delay, a fault that is the
/// provider's fails the check (UNAVAILABLE), and a token that fails our rules is the provider's
/// fault too, never an allow.
#[tokio::test]
async fn scripted_provider_faults_map_to_what_the_caller_sees() {
    let f = Fakes::new();
    f.token.add_client("client-1", "s3cret", "user-1");
    let a = f.authorizer("").await;
    f.token.script(Answer::Fault(ExchangeError::RateLimited {
        retry_after: secs(7),
    }));
    f.token.script(Answer::Fault(ExchangeError::Timeout));
    f.token.script(Answer::Token {
        access_token: "not-a-jwt".into(),
        expires_in: None,
    });
    match a.check(&client("client-1", "s3cret")).await {
        Ok(Decision::Deny(d)) => assert_eq!((d.status, d.retry_after), (429, Some(7))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.check(&client("client-1", "s3cret")).await.unwrap_err(),
        Unavailable::Exchange(ExchangeError::Timeout)
    );
    assert!(matches!(
        a.check(&client("client-1", "s3cret")).await.unwrap_err(),
        Unavailable::IssuedTokenInvalid(_)
    ));
    assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
    assert_eq!(f.token.calls(), 4);
}

/// A part named for a provider the config lacks is an error, not silently the real one.
#[tokio::test]
async fn a_part_for_an_unknown_provider_is_refused() {
    let f = Fakes::new();
    let config = Config::from_yaml(&f.provider_yaml()).unwrap();
    let parts = f.parts().token_endpoint("defualt", f.token.clone());
    match Authorizer::with_parts(&config, parts) {
        Err(BuildError::UnknownPart(_, name)) => assert_eq!(name, "defualt"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("built with a part for a provider that does not exist"),
    }
    let parts = Parts::default()
        .clock(f.clock.clone())
        .key_source("other", f.keys.clone());
    assert!(Authorizer::with_parts(&config, parts).is_err());
}

#[cfg(feature = "shared-cache")]
mod shared {
    use super::*;
    use common::fakes::MemoryStore;

    const FLEET: &str =
        "cache:\n  shared:\n    fleet_key: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n";

    /// Two pods on one in-memory store and one provider: the second adopts what the first
    /// exchanged; once the shared value is past the refresh point (fake clock), it exchanges.
    #[tokio::test]
    async fn a_second_pod_adopts_the_first_pods_token_until_it_ages() {
        let f = Fakes::new();
        f.token.add_client("client-1", "s3cret", "user-1");
        f.token.set_lifetime(600);
        let store = MemoryStore::new(f.clock.clone());
        let pod = || f.authorizer_with(FLEET, f.parts().shared_store(store.clone()));
        let (a, b) = (pod().await, pod().await);
        assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
        assert_eq!(f.token.calls(), 1);
        let stored = store.keys();
        assert_eq!(
            stored.len(),
            1,
            "one sealed value, the lock released: {stored:?}"
        );
        let value = store.value(&stored[0]).unwrap();
        let token = f.token.issued().pop().unwrap();
        assert_eq!(common::token_part_in(&value, &token), None, "not sealed");
        assert_eq!(status(&b, &client("client-1", "s3cret")).await, 200);
        assert_eq!(f.token.calls(), 1, "adopted, not exchanged");
        assert_eq!(b.stats().shared_hits, 1);
        // A wrong secret never opens the shared value and is refused by the provider.
        assert_eq!(status(&b, &client("client-1", "guess")).await, 401);
        // Past 0.8 of its lifetime the shared value is not adopted by a third pod.
        f.clock.advance(secs(481));
        let c = pod().await;
        assert_eq!(status(&c, &client("client-1", "s3cret")).await, 200);
        assert_eq!(f.token.calls(), 3);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_skipped_for_a_moment_and_never_fails_a_check() {
        let f = Fakes::new();
        f.token.add_client("client-1", "s3cret", "user-1");
        let store = MemoryStore::new(f.clock.clone());
        let a = f
            .authorizer_with(FLEET, f.parts().shared_store(store.clone()))
            .await;
        store.set_down(true);
        assert_eq!(status(&a, &client("client-1", "s3cret")).await, 200);
        assert_eq!(store.ops(), 1, "one failed read, then skipped");
        assert!(a.stats().shared_errors >= 1);
        store.set_down(false);
        // Within the backoff second the store is not asked; after it, it is again.
        f.clock.advance(Duration::from_millis(999));
        assert_eq!(status(&a, &client("other", "x")).await, 401);
        assert_eq!(store.ops(), 1);
        f.clock.advance(Duration::from_millis(1));
        assert_eq!(status(&a, &client("other2", "x")).await, 401);
        assert!(store.ops() > 1);
    }

    #[tokio::test]
    async fn a_shared_store_without_cache_shared_is_refused() {
        let f = Fakes::new();
        let config = Config::from_yaml(&f.provider_yaml()).unwrap();
        let store = MemoryStore::new(f.clock.clone());
        let parts = f.parts().shared_store(store);
        assert!(matches!(
            Authorizer::with_parts(&config, parts),
            Err(BuildError::UnknownPart(..))
        ));
    }
}

#[test]
fn the_fake_clock_starts_where_the_kit_says() {
    let f = Fakes::new();
    assert_eq!(f.clock.unix_now(), START_UNIX);
    let _: Arc<dyn Clock> = f.clock.clone();
}
