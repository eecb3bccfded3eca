//! Fairness under floods: while a flood of never-seen credentials spends the exchange budget
//! and is answered 429, a client that succeeded before keeps being refreshed through the share
//! of the budget reserved for known credentials, and every one of its checks is allowed —
//! across several token lifetimes. Against a real token endpoint on loopback, in real time
//! (bounded: a few seconds, a few thousand checks).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::provider::FakeProvider;
use m2m_authz::authorizer::Authorizer;

use common::authz::status;
use common::check::basic_request as request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_credentials_does_not_starve_a_known_clients_refresh() {
    const FLOOD: Duration = Duration::from_millis(5500);
    let p = FakeProvider::start().await;
    p.add_client("known", "s3cret", "user-known");
    // Every token lives 2 s: the known client's token comes due twice or more during the flood.
    p.set_lifetime(2);
    p.set_latency(Duration::from_millis(20));
    let yaml = format!(
        "{}  jwks_min_refetch_interval: 1h\ncache:\n  refresh_ahead: 0.5\n  max_exchanges_per_second: 20\n  max_concurrent_exchanges: 4\n  exchange_queue_timeout: 100ms\n",
        p.oauth2_provider_yaml()
    );
    let a = Authorizer::new(&common::authz::config(&yaml)).unwrap();
    a.provider().jwks().refresh().await.expect("JWKS");
    let a = Arc::new(a);
    assert_eq!(status(&a.check(&request("known", "s3cret")).await), 200);
    assert_eq!(p.issued_tokens().len(), 1);

    let started = Instant::now();
    let limited = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..16)
        .map(|task| {
            let (a, limited) = (a.clone(), limited.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while started.elapsed() < FLOOD {
                    n += 1;
                    let r = a.check(&request(&format!("new-{task}-{n}"), "guess")).await;
                    match status(&r) {
                        429 => {
                            limited.fetch_add(1, Ordering::Relaxed);
                        }
                        401 => {}
                        other => panic!("a never-seen credential got {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    let mut known_checks = 0;
    while started.elapsed() < FLOOD {
        let r = a.check(&request("known", "s3cret")).await;
        assert_eq!(
            status(&r),
            200,
            "the known client after {:?}: {r:?}",
            started.elapsed()
        );
        known_checks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in flood {
        t.await.unwrap();
    }
    let s = a.stats();
    let refreshed = p.issued_tokens().len() - 1;
    eprintln!(
        "{known_checks} known checks, {refreshed} refreshes; flood: {} answered 429, {} exchanges; {s:?}",
        limited.load(Ordering::Relaxed),
        p.token_calls()
    );
    // Only the known client gets tokens: each one issued after the first is a refresh or a
    // re-exchange that got through the flood. 5.5 s of 2 s tokens needs at least two.
    assert!(
        refreshed >= 2,
        "the known client was refreshed {refreshed} times"
    );
    assert!(
        limited.load(Ordering::Relaxed) > 500,
        "the flood was not limited: {}",
        limited.load(Ordering::Relaxed)
    );
    // The whole budget still holds: a burst of 20, then 20 per second.
    let allowed = 20 + (20.0 * started.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(
        p.token_calls() <= allowed,
        "{} > {allowed}",
        p.token_calls()
    );
    assert!(p.max_in_flight() <= 4, "{} at once", p.max_in_flight());
}
