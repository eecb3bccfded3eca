//! The hit path: a CheckRequest turned into an `AuthRequest`, `Authorizer::check` answered from a
//! warmed cache (credential parse, HMAC key, DashMap lookup, policy), and the `CheckResponse`
//! built — everything a cached check costs except gRPC and HTTP/2.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;

use common::check::Check;
use common::provider::{FakeProvider, Minter};
use criterion::{Criterion, criterion_group, criterion_main};
use m2m_authz::decision::Decision;
use m2m_authz::ext_authz::{to_auth_request, to_check_response};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (authorizer, basic, bearer) = rt.block_on(async {
        let p = FakeProvider::start().await;
        let minter = Minter;
        p.add_client_with_token(
            "bench-client",
            "bench-secret",
            minter.mint("bench-client", "user-bench"),
        );
        let config = common::authz::config(&p.sidecar_config("  max_entries: 1000\n"));
        let authorizer = Arc::new(common::authz::authorizer_for(&config).await);
        let request = |c: Check| c.host("127.0.0.1:10000").scheme("http").build();
        let basic = request(Check::get("/direct").basic("bench-client", "bench-secret"));
        let bearer =
            request(Check::get("/direct").bearer(&minter.mint("bench-client", "user-bench")));
        for r in [&basic, &bearer] {
            let d = authorizer
                .check(&to_auth_request(r.clone()))
                .await
                .expect("check");
            assert!(matches!(d, Decision::Allow(_)), "warm-up check allowed");
        }
        (authorizer, basic, bearer)
    });
    // Every move of a future copies its whole size, whatever state it is in (issue 19).
    let probe = to_auth_request(basic.clone());
    eprintln!(
        "# Authorizer::check future: {} bytes",
        std::mem::size_of_val(&authorizer.check(&probe))
    );
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
    // The cache key alone (issue 19): a Basic credential's parts, and a whole real-length
    // bearer token, as `Authorizer` derives them (HMAC-SHA-256; SHA extensions where the CPU has
    // them).
    let keys = m2m_authz::cache::KeyDeriver::default();
    let slot = b"default http://127.0.0.1:1/oauth2/token";
    let token = Minter.mint("bench-client", "user-bench");
    g.bench_function("cache_key_basic", |b| {
        b.iter(|| {
            black_box(keys.derive(black_box(&[
                b"client",
                slot,
                b"bench-client",
                b"bench-secret",
                b"",
            ])))
        })
    });
    g.bench_function("cache_key_bearer", |b| {
        b.iter(|| black_box(keys.derive(black_box(&[b"bearer", slot, token.as_bytes()]))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
