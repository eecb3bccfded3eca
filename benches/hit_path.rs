//! The hit path: a CheckRequest turned into an `AuthRequest`, `Authorizer::check` answered from a
//! warmed cache (credential parse, HMAC key, DashMap lookup, policy), and the `CheckResponse`
//! built — everything a cached check costs except gRPC and HTTP/2.

#[path = "common/check.rs"]
mod check;
#[path = "common/provider.rs"]
mod provider;

use std::hint::black_box;
use std::sync::Arc;

use check::{basic, check_request};
use criterion::{Criterion, criterion_group, criterion_main};
use m2m_authz::authorizer::Authorizer;
use m2m_authz::config::Config;
use m2m_authz::decision::Decision;
use m2m_authz::ext_authz::{to_auth_request, to_check_response};
use provider::{BenchProvider, Minter};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The supervisor keeps the JWKS refresh running for the whole benchmark.
    let (authorizer, basic, bearer, _supervisor) = rt.block_on(async {
        let p = BenchProvider::start("127.0.0.1:0".parse().expect("addr")).await;
        let minter = Minter::default();
        p.add_client(
            "bench-client",
            "bench-secret",
            minter.mint("bench-client", "user-bench"),
        );
        let config = Config::from_yaml(&p.sidecar_config("  max_entries: 1000\n")).expect("config");
        let authorizer = Arc::new(Authorizer::new(&config).expect("authorizer"));
        let supervisor = m2m_authz::supervisor::Supervisor::new(std::time::Duration::ZERO);
        let mut loaded = authorizer.start_key_refresh(&supervisor);
        loaded.wait_for(|l| *l).await.expect("keys");
        let basic = check_request(&[("authorization", &basic("bench-client", "bench-secret"))]);
        let bearer = format!("Bearer {}", minter.mint("bench-client", "user-bench"));
        let bearer = check_request(&[("authorization", &bearer)]);
        for r in [&basic, &bearer] {
            let d = authorizer
                .check(&to_auth_request(r.clone()))
                .await
                .expect("check");
            assert!(matches!(d, Decision::Allow(_)), "warm-up check allowed");
        }
        (authorizer, basic, bearer, supervisor)
    });
    let mut g = c.benchmark_group("hit_path");
    for (name, req) in [("basic", &basic), ("bearer", &bearer)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let request = to_auth_request(black_box(req).clone());
                let decision = rt.block_on(authorizer.check(&request)).expect("check");
                black_box(to_check_response(&decision))
            })
        });
    }
    // The parts: only the conversion in, and only the answer out.
    g.bench_function("to_auth_request", |b| {
        b.iter(|| black_box(to_auth_request(black_box(&basic).clone())))
    });
    let decision = rt
        .block_on(authorizer.check(&to_auth_request(basic.clone())))
        .expect("check");
    g.bench_function("to_check_response", |b| {
        b.iter(|| black_box(to_check_response(black_box(&decision))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
