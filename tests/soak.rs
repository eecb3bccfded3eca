//! A bounded soak (about a minute, loopback only): mixed allowed, denied and new-credential
//! traffic over gRPC through the real binary while the provider has hiccups (failing spells,
//! latency). Asserts what an operator would notice: the process never exits or panics, every
//! allowed answer carries the right identity for its credential and nothing that must be
//! refused is allowed, open file descriptors and RSS stay bounded (no leaked connections or
//! tasks), and the cache evicts within `cache.max_entries`.

mod common;

use common::check::Check;

use common::check::basic;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use common::provider::{AUDIENCE, FakeProvider, ISSUER, Mode};
use common::sidecar::Sidecar;
use m2m_authz::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, check_response::HttpResponse};
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long traffic runs, and the most checks one worker sends (whichever comes first).
const TRAFFIC: Duration = Duration::from_secs(40);
const MAX_CHECKS_PER_WORKER: usize = 100_000;
const WORKERS: usize = 8;
const HOT: usize = 20;
const COLD: usize = 300;
const BEARERS: usize = 30;
const MAX_ENTRIES: usize = 100;
/// File descriptors the sidecar may hold beyond its warmed-up count: pooled provider
/// connections (at most `max_concurrent_exchanges`) and some slack.
const FD_SLACK: usize = 48;
/// How far the cache may pass `max_entries` for a moment: inserts racing on different shards
/// (at most one per exchange slot, `max_concurrent_exchanges`, or per in-flight Bearer check).
const CACHE_RACE_SLACK: u64 = 16 + WORKERS as u64;
/// Resident memory the sidecar may use at any point, and may grow by after warm-up.
const RSS_LIMIT_KIB: u64 = 128 * 1024;
const RSS_GROWTH_KIB: u64 = 64 * 1024;

fn check(authorization: Option<String>) -> CheckRequest {
    let check = Check::get("/v1/orders").header("x-user-id", "forged");
    match authorization {
        Some(value) => check.header("authorization", value),
        None => check,
    }
    .build()
}

/// What a check came to, as Envoy would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Allowed, with the x-user-id and x-client-id it sets.
    Allowed(String, String),
    Denied(u16),
    Unavailable,
}

async fn ask(client: &mut AuthorizationClient<Channel>, authorization: Option<String>) -> Answer {
    let call = client.check(check(authorization));
    let r = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("a check took over 10 s");
    match r {
        Ok(r) => match r.into_inner().http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                let get = |name: &str| {
                    let values: Vec<String> = ok
                        .headers
                        .iter()
                        .filter_map(|h| h.header.as_ref())
                        .filter(|h| h.key == name)
                        .map(|h| h.value.clone())
                        .collect();
                    assert!(values.len() <= 1, "{name} set twice: {values:?}");
                    values.into_iter().next().unwrap_or_default()
                };
                Answer::Allowed(get("x-user-id"), get("x-client-id"))
            }
            Some(HttpResponse::DeniedResponse(d)) => {
                Answer::Denied(d.status.map(|s| s.code as u16).unwrap_or(0))
            }
            None => panic!("a CheckResponse with no http_response"),
        },
        Err(status) if status.code() == tonic::Code::Unavailable => Answer::Unavailable,
        Err(status) => panic!("a check failed with {status:?}"),
    }
}

/// What a request must come to.
enum Expect {
    /// Allowed as this user and client, or (when the credential is not cached and the provider
    /// is failing or we are at the exchange limit) UNAVAILABLE or 429. Never denied otherwise.
    User(String, String),
    /// Never allowed: one of these statuses, or UNAVAILABLE if `unavailable_ok`.
    Refused(&'static [u16], bool),
}

fn judge(what: &str, expect: &Expect, got: &Answer) {
    match (expect, got) {
        (Expect::User(user, client), Answer::Allowed(u, c)) => {
            assert_eq!(
                (u, c),
                (user, client),
                "{what}: allowed as the wrong identity"
            )
        }
        (Expect::User(..), Answer::Denied(429) | Answer::Unavailable) => {}
        (Expect::Refused(statuses, _), Answer::Denied(s)) if statuses.contains(s) => {}
        (Expect::Refused(_, true), Answer::Unavailable) => {}
        _ => panic!("{what}: got {got:?}"),
    }
}

/// A small deterministic generator (xorshift), so no two workers send the same sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A gauge from the admin port's Prometheus text.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

async fn cache_gauges(admin: &str) -> (u64, u64) {
    let text = match common::http_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    (
        gauge(&text, "m2m_authz_cache_entries").expect("m2m_authz_cache_entries in /metrics"),
        gauge(&text, "m2m_authz_cache_negative_entries").unwrap_or(0),
    )
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    allowed: AtomicUsize,
    denied: AtomicUsize,
    limited: AtomicUsize,
    unavailable: AtomicUsize,
}

impl Tally {
    fn add(&self, a: &Answer) {
        let counter = match a {
            Answer::Allowed(..) => &self.allowed,
            Answer::Denied(429) => &self.limited,
            Answer::Denied(_) => &self.denied,
            Answer::Unavailable => &self.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_traffic_in_a_minute() {
    let p = Arc::new(FakeProvider::start().await);
    for i in 0..HOT {
        p.add_client(
            &format!("hot-{i}"),
            &format!("hot-secret-{i}"),
            &format!("u-hot-{i}"),
        );
    }
    for i in 0..COLD {
        p.add_client(
            &format!("cold-{i}"),
            &format!("cold-secret-{i}"),
            &format!("u-cold-{i}"),
        );
    }
    let bearers: Vec<String> = (0..BEARERS)
        .map(|i| {
            p.mint(
                "rsa-a",
                &format!("bearer-{i}"),
                json!({"user_id": format!("u-bearer-{i}")}),
            )
        })
        .collect();
    let sidecar = Sidecar::start(&format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  connect_timeout: 300ms\n  request_timeout: 1s\ncache:\n  max_entries: {MAX_ENTRIES}\n  max_negative_entries: 100\n  negative_ttl: 2s\n  max_exchanges_per_second: 400\n  max_concurrent_exchanges: 16\n  exchange_queue_timeout: 200ms\n",
        p.token_url(),
        p.jwks_url()
    ))
    .await;
    let pid = sidecar.child.id();

    // Warm up: every hot client cached, the gRPC connections open.
    let mut clients = Vec::new();
    for _ in 0..WORKERS {
        clients.push(sidecar.client().await);
    }
    for i in 0..HOT {
        let got = ask(
            &mut clients[0],
            Some(basic(&format!("hot-{i}"), &format!("hot-secret-{i}"))),
        )
        .await;
        assert_eq!(
            got,
            Answer::Allowed(format!("u-hot-{i}"), format!("hot-{i}"))
        );
    }
    let fd_start = fd_count(pid);
    let rss_start = status_field(pid, "VmRSS:");
    assert!(fd_start > 0 && rss_start > 0, "cannot read /proc/{pid}");

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + TRAFFIC;

    // Provider hiccups: normal, failing, slow, in a loop until the traffic ends.
    let hiccups = {
        let (p, stop) = (p.clone(), stop.clone());
        tokio::spawn(async move {
            let phases = [
                (Mode::Normal, 0, 1500),
                (Mode::Failing, 0, 700),
                (Mode::Normal, 100, 1500),
                (Mode::Normal, 0, 1000),
                (Mode::Failing, 300, 500),
            ];
            let mut cycles = 0;
            while !stop.load(Ordering::SeqCst) && cycles < 1000 {
                for (mode, latency, millis) in phases {
                    p.set_mode(mode);
                    p.set_latency(Duration::from_millis(latency));
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                }
                cycles += 1;
            }
            p.set_mode(Mode::Normal);
            p.set_latency(Duration::ZERO);
        })
    };

    // Watch the process while the traffic runs: descriptors, memory, and the cache's size as
    // its own metrics report it.
    let watcher = {
        let stop = stop.clone();
        let admin = sidecar.admin_url();
        tokio::spawn(async move {
            let (mut max_fd, mut max_rss, mut max_cache, mut max_negative) = (0, 0, 0, 0);
            while !stop.load(Ordering::SeqCst) {
                max_fd = max_fd.max(fd_count(pid));
                max_rss = max_rss.max(status_field(pid, "VmRSS:"));
                let (entries, negative) = cache_gauges(&admin).await;
                max_cache = max_cache.max(entries);
                max_negative = max_negative.max(negative);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (max_fd, max_rss, max_cache, max_negative)
        })
    };

    let mut workers = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let (tally, bearers) = (tally.clone(), bearers.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0001));
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0;
            while Instant::now() < deadline && n < MAX_CHECKS_PER_WORKER {
                pace.tick().await;
                n += 1;
                let roll = rng.below(100);
                let (what, auth, expect) = if roll < 35 {
                    let i = rng.below(HOT);
                    let id = format!("hot-{i}");
                    (
                        "hot credential",
                        Some(basic(&id, &format!("hot-secret-{i}"))),
                        Expect::User(format!("u-hot-{i}"), id),
                    )
                } else if roll < 55 {
                    let i = rng.below(COLD);
                    let id = format!("cold-{i}");
                    (
                        "cold credential",
                        Some(basic(&id, &format!("cold-secret-{i}"))),
                        Expect::User(format!("u-cold-{i}"), id),
                    )
                } else if roll < 65 {
                    let i = rng.below(BEARERS);
                    (
                        "bearer token",
                        Some(format!("Bearer {}", bearers[i])),
                        Expect::User(format!("u-bearer-{i}"), format!("bearer-{i}")),
                    )
                } else if roll < 72 {
                    let i = rng.below(HOT);
                    (
                        "wrong secret",
                        Some(basic(&format!("hot-{i}"), &format!("wrong-{}", rng.below(3)))),
                        Expect::Refused(&[401, 429], true),
                    )
                } else if roll < 80 {
                    (
                        "never-seen credential",
                        Some(basic(&format!("new-{w}-{n}"), "whatever")),
                        Expect::Refused(&[401, 429], true),
                    )
                } else if roll < 86 {
                    // Another client's token with its payload swapped for a hot user's.
                    let i = rng.below(BEARERS);
                    let parts: Vec<&str> = bearers[i].split('.').collect();
                    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                        json!({"iss": ISSUER, "aud": [AUDIENCE], "sub": "hot-0", "user_id": "u-hot-0",
                               "exp": common::provider::now() + 600}).to_string(),
                    );
                    (
                        "forged bearer",
                        Some(format!("Bearer {}.{forged}.{}", parts[0], parts[2])),
                        Expect::Refused(&[401], false),
                    )
                } else if roll < 94 {
                    let garbage = match rng.below(3) {
                        0 => format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode("no-colon")
                        ),
                        1 => "Basic !!!".to_owned(),
                        _ => format!("Basic {}", "A".repeat(5000)),
                    };
                    ("malformed", Some(garbage), Expect::Refused(&[400], false))
                } else {
                    ("no credential", None, Expect::Refused(&[401], false))
                };
                let got = ask(&mut client, auth).await;
                judge(what, &expect, &got);
                tally.add(&got);
            }
            n
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.expect("a worker panicked");
    }
    stop.store(true, Ordering::SeqCst);
    hiccups.await.unwrap();
    let (max_fd, max_rss, max_cache, max_negative) = watcher.await.unwrap();

    let mut sidecar = sidecar;
    assert!(
        sidecar.child.try_wait().is_none(),
        "the sidecar exited:\n{}",
        sidecar.logs()
    );
    let logs = sidecar.full_logs();
    assert!(
        !logs.contains("panicked"),
        "the sidecar panicked:\n{}",
        sidecar.logs()
    );
    assert!(
        !logs.contains("hot-secret-") && !logs.contains("cold-secret-"),
        "a secret reached the log"
    );
    eprintln!(
        "soak: {total} checks; allowed {}, denied {}, 429 {}, unavailable {}; {} token exchanges; fds {fd_start}→max {max_fd}; RSS {rss_start}→max {max_rss} KiB; cache max {max_cache}, refusals max {max_negative}",
        tally.allowed.load(Ordering::Relaxed),
        tally.denied.load(Ordering::Relaxed),
        tally.limited.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        p.token_calls(),
    );
    assert!(total > 1000, "only {total} checks were sent");
    assert!(tally.allowed.load(Ordering::Relaxed) > total / 4);
    assert!(
        tally.unavailable.load(Ordering::Relaxed) > 0,
        "the hiccups never showed"
    );

    // Bounded: memory, and file descriptors (connections) during and after the traffic.
    assert!(max_rss <= RSS_LIMIT_KIB, "RSS reached {max_rss} KiB");
    assert!(
        max_rss <= rss_start + RSS_GROWTH_KIB,
        "RSS grew from {rss_start} to {max_rss} KiB"
    );
    assert!(
        max_fd <= fd_start + 2 * FD_SLACK,
        "fds reached {max_fd} (from {fd_start})"
    );
    let settle = Instant::now() + Duration::from_secs(10);
    let fd_end = loop {
        let n = fd_count(pid);
        if n <= fd_start + FD_SLACK || Instant::now() > settle {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        fd_end <= fd_start + FD_SLACK,
        "fds {fd_start} → {fd_end}: leaked connections"
    );

    // The cache stays within its bounds, as its metrics said throughout…
    assert!(max_cache > 0, "the cache gauge never moved");
    assert!(
        max_cache <= MAX_ENTRIES as u64 + CACHE_RACE_SLACK,
        "the cache held {max_cache} entries (max_entries {MAX_ENTRIES})"
    );
    assert!(
        max_negative <= 100 + CACHE_RACE_SLACK,
        "{max_negative} refusals remembered"
    );
    // …and as a caller sees it: touch more cold credentials than it holds, then the first of
    // them again — it was evicted, so it costs a new exchange.
    let mut client = sidecar.client().await;
    let first = basic("cold-0", "cold-secret-0");
    let want = Answer::Allowed("u-cold-0".into(), "cold-0".into());
    assert_eq!(ask(&mut client, Some(first.clone())).await, want);
    // Least recently used is tracked in milliseconds: make cold-0 strictly the oldest.
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 1..=MAX_ENTRIES + 20 {
        let got = ask(
            &mut client,
            Some(basic(&format!("cold-{i}"), &format!("cold-secret-{i}"))),
        )
        .await;
        assert_eq!(
            got,
            Answer::Allowed(format!("u-cold-{i}"), format!("cold-{i}"))
        );
    }
    let before = p.token_calls();
    assert_eq!(ask(&mut client, Some(first)).await, want);
    assert_eq!(
        p.token_calls(),
        before + 1,
        "cold-0 was still cached: the cache outgrew max_entries"
    );

    // And it still shuts down cleanly.
    let status = sidecar.child.stop().expect("exit status");
    assert!(status.success(), "exit status {status}");
}
