//! The shared token cache tier (`cache.shared`, issue 9) with a real `redis-server` and several
//! real sidecar processes sharing one token endpoint: sharing across pods, one exchange for a
//! burst across pods, Redis outages that fail no check, values that reveal nothing without the
//! caller's secret, tampering, and a provider-load figure for N pods with and without the tier;
//! `rediss://` with a generated CA, and a three-node Redis Cluster with a node stopped mid-run.
//!
//! Needs `redis-server` (Debian package `redis-server`, installed by `scripts/tools`, which
//! brings `redis-cli` for the Cluster) on PATH or
//! at `$M2M_AUTHZ_REDIS_SERVER`: without it each test says so and is skipped, or fails under
//! `M2M_AUTHZ_REQUIRE_TOOLS=1`.
#![cfg(feature = "shared-cache")]

mod common;

use common::check::check_request;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::process::{ChildGuard, TempDir, free_addr, free_port, log_file};
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::sidecar::Sidecar;
use m2m_authz::proto::envoy::service::auth::v3::check_response::HttpResponse;
use m2m_authz::shared_cache::{CredentialRef, DEFAULT_KEY_PREFIX, FLEET_KEY_ENV, SharedKey};

const FLEET_KEY: [u8; 32] = *b"test fleet key, 32 bytes long!!!";
const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

fn fleet_key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(FLEET_KEY)
}

/// A throwaway `redis-server` on a free loopback port, without persistence; killed on drop.
struct Redis {
    addr: SocketAddr,
    dir: TempDir,
    child: Option<ChildGuard>,
    /// More `redis-server` arguments (Cluster mode).
    args: Vec<String>,
    /// With TLS only (`--tls-port`, no plain port): the CA that signed its certificate.
    tls_ca: Option<PathBuf>,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(Vec::new(), None)
    }

    fn start_with(args: Vec<String>, tls: Option<&TestCa>) -> Redis {
        let dir = TempDir::new("redis");
        let tls_ca = tls.map(|ca| {
            ca.leaf(&dir, "redis", "127.0.0.1");
            ca.ca.clone()
        });
        let mut r = Redis {
            addr: free_addr(),
            dir,
            child: None,
            args,
            tls_ca,
        };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port, empty.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(common::tools::redis_server());
        let port = self.addr.port().to_string();
        match &self.tls_ca {
            None => cmd.args(["--port", &port]),
            Some(ca) => cmd
                .args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(self.dir.join("redis.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("redis-key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(&self.args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log_file(&self.dir.join("redis.log")))
            .stderr(log_file(&self.dir.join("redis.err")));
        self.child =
            Some(ChildGuard::spawn("redis-server", &mut cmd).with_grace(Duration::from_secs(2)));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.connection().is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    fn signal(&mut self, sig: i32) {
        self.child.as_mut().expect("running").signal(sig);
    }

    fn url(&self) -> String {
        match self.tls_ca {
            None => format!("redis://{}/", self.addr),
            Some(_) => format!("rediss://{}/", self.addr),
        }
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = match &self.tls_ca {
            None => redis::Client::open(self.url()).ok()?,
            Some(ca) => {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).ok()?),
                };
                redis::Client::build_with_tls(self.url(), certs).ok()?
            }
        };
        let mut c = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// Every shared value (not the locks), by key.
    fn values(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self.connection().expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{DEFAULT_KEY_PREFIX}*"))
            .query(&mut c)
            .unwrap();
        keys.into_iter()
            .filter(|k| !k.starts_with(&format!("{DEFAULT_KEY_PREFIX}lock:")))
            .map(|k| {
                let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
                (k, v)
            })
            .collect()
    }
}

fn config(p: &FakeProvider, redis: Option<&Redis>) -> String {
    let mut yaml = format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_min_refetch_interval: 1h\n",
        p.token_url(),
        p.jwks_url()
    );
    if let Some(r) = redis {
        // The fleet key comes from the environment, as from a Kubernetes Secret. Generous
        // timeouts: the test machine is shared with compilers.
        yaml.push_str(&format!(
            "cache:\n  shared:\n    url: {}\n    timeout: 250ms\n    lock_ttl: 5s\n    lock_wait: 2s\n",
            r.url()
        ));
    }
    yaml
}

async fn pod(p: &FakeProvider, redis: Option<&Redis>) -> Sidecar {
    let key = fleet_key_b64();
    Sidecar::start_with_env(&config(p, redis), &[(FLEET_KEY_ENV, key.as_str())]).await
}

/// The provider id the sidecar puts in its keys: the provider's name and token URL.
fn provider_id(p: &FakeProvider) -> String {
    format!("default {}", p.token_url())
}

fn shared_key(p: &FakeProvider, client_id: &str, secret: &str) -> SharedKey {
    SharedKey::derive(
        &FLEET_KEY,
        DEFAULT_KEY_PREFIX,
        CredentialRef {
            provider: &provider_id(p),
            client_id,
            secret,
            scope: "",
        },
    )
}

/// The `x-user-id` an allowed check sets; `Err` for a denial or a failed call.
async fn check(s: &Sidecar, id: &str, secret: &str) -> Result<String, String> {
    let mut client = s.client().await;
    let r = client
        .check(check_request(id, secret))
        .await
        .map_err(|e| format!("gRPC error: {e}"))?
        .into_inner();
    match r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-user-id")
            .map(|h| h.value.clone())
            .ok_or_else(|| "allowed without x-user-id".into()),
        other => Err(format!("not allowed: {other:?}")),
    }
}

/// A counter's value from `/metrics` (0 when absent).
async fn metric(s: &Sidecar, name: &str) -> u64 {
    let (_, text) = s.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

fn clients(p: &FakeProvider, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let (id, secret) = (format!("client-{i}"), format!("secret-{i}-xyz"));
            p.add_client(&id, &secret, &format!("user-{i}"));
            (id, secret)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_exchanged_by_one_pod_is_served_by_the_others() {
    crate::needs!(RedisServer);
    let redis = Redis::start();
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let a = pod(&p, Some(&redis)).await;
    let b = pod(&p, Some(&redis)).await;
    let c = pod(&p, Some(&redis)).await;

    assert_eq!(check(&a, "client-1", "s3cret").await.unwrap(), "user-1");
    assert_eq!(p.token_calls(), 1);
    for s in [&b, &c] {
        assert_eq!(check(s, "client-1", "s3cret").await.unwrap(), "user-1");
        assert_eq!(metric(s, "m2m_authz_shared_cache_hits").await, 1);
    }
    assert_eq!(p.token_calls(), 1, "the other pods exchanged again");
    // A wrong secret never finds the shared entry: it is refused by the provider.
    assert!(check(&b, "client-1", "wrong").await.is_err());
    assert_eq!(p.token_calls(), 2);
    assert_eq!(redis.values().len(), 1, "refusals are never shared");

    let (status, body) = b.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["shared_cache"]["status"], "ok", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_requests_across_pods_makes_one_exchange() {
    crate::needs!(RedisServer);
    let redis = Redis::start();
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    // Slow enough that every pod's first request arrives while the exchange is running.
    p.set_latency(Duration::from_millis(300));
    let pods = [pod(&p, Some(&redis)).await, pod(&p, Some(&redis)).await];
    let mut conns = Vec::new();
    for s in &pods {
        conns.push(s.client().await);
    }
    let mut tasks = Vec::new();
    for _ in 0..50 {
        for conn in &conns {
            let mut conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                conn.check(check_request("client-1", "s3cret")).await
            }));
        }
    }
    for t in tasks {
        let r = t.await.unwrap().expect("check call").into_inner();
        assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));
    }
    assert_eq!(p.token_calls(), 1, "2 pods x 50 concurrent first requests");
    let waits = metric(&pods[0], "m2m_authz_shared_cache_lock_waits").await
        + metric(&pods[1], "m2m_authz_shared_cache_lock_waits").await;
    eprintln!("lock waits across pods: {waits}");
}

/// The bound when the lock holder dies mid-exchange: every other pod that was waiting exchanges
/// once after `lock_wait` (single flight keeps it to one per pod), so at most 1 + waiting pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lock_holder_costs_at_most_one_exchange_per_waiting_pod() {
    crate::needs!(RedisServer);
    let redis = Redis::start();
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let mut holder = pod(&p, Some(&redis)).await;
    let others = [pod(&p, Some(&redis)).await, pod(&p, Some(&redis)).await];
    p.set_latency(Duration::from_millis(1500));
    let mut conn = holder.client().await;
    let started =
        tokio::spawn(async move { conn.check(check_request("client-1", "s3cret")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.token_calls() == 0 {
        assert!(Instant::now() < deadline, "the holder never exchanged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.child.signal(SIGKILL);
    let _ = started.await;
    p.set_latency(Duration::from_millis(100));
    let (r1, r2) = tokio::join!(
        check(&others[0], "client-1", "s3cret"),
        check(&others[1], "client-1", "s3cret")
    );
    assert_eq!(
        (r1.unwrap(), r2.unwrap()),
        ("user-1".into(), "user-1".into())
    );
    let calls = p.token_calls();
    eprintln!("exchanges with a killed lock holder and 2 waiting pods: {calls}");
    assert!(
        calls <= 3,
        "{calls} exchanges: more than 1 + 2 waiting pods"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_trouble_fails_no_check_and_sharing_resumes() {
    crate::needs!(RedisServer);
    let mut redis = Redis::start();
    let p = FakeProvider::start().await;
    let cs = clients(&p, 40);
    let a = Arc::new(pod(&p, Some(&redis)).await);
    let b = Arc::new(pod(&p, Some(&redis)).await);

    // Background traffic on both pods, over new and known credentials, during all of it.
    let failures = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (w, s) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (cs, failures, checks, stop) =
            (cs.clone(), failures.clone(), checks.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                let (id, secret) = &cs[i % 30];
                if let Err(e) = check(&s, id, secret).await {
                    eprintln!("failed check: {e}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                checks.fetch_add(1, Ordering::SeqCst);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Until the load is under way (a condition, not a fixed pause).
    let deadline = Instant::now() + Duration::from_secs(10);
    while checks.load(Ordering::SeqCst) < 20 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Slow: a frozen Redis accepts connections but never answers.
    redis.signal(SIGSTOP);
    let t = Instant::now();
    assert_eq!(check(&a, &cs[30].0, &cs[30].1).await.unwrap(), "user-30");
    eprintln!("a new credential with Redis frozen took {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    redis.signal(SIGCONT);

    // Down.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check(&a, &cs[31].0, &cs[31].1).await.unwrap(), "user-31");
    assert_eq!(check(&b, &cs[31].0, &cs[31].1).await.unwrap(), "user-31");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = a.admin_get("/readyz").await;
    assert_eq!(
        status, 200,
        "Redis trouble never makes a pod not ready: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["shared_cache"]["status"], "degraded", "{body}");
    assert!(metric(&a, "m2m_authz_shared_cache_errors").await >= 1);

    // Back (empty): sharing resumes once the pods reconnect.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut next = 32;
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (id, secret) = &cs[next];
        next += 1;
        check(&a, id, secret).await.unwrap();
        let before = p.token_calls();
        check(&b, id, secret).await.unwrap();
        if p.token_calls() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sharing never resumed after Redis came back"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    eprintln!("background checks: {}", checks.load(Ordering::SeqCst));
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "checks failed during Redis trouble"
    );
    assert!(checks.load(Ordering::SeqCst) > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reveals_no_token_without_the_callers_secret_and_bad_values_are_replaced() {
    crate::needs!(RedisServer);
    let redis = Redis::start();
    let p = FakeProvider::start().await;
    let cs = clients(&p, 3);
    let a = pod(&p, Some(&redis)).await;
    for (id, secret) in &cs {
        check(&a, id, secret).await.unwrap();
    }
    let values = redis.values();
    assert_eq!(values.len(), 3);
    let tokens = p.issued_tokens();
    for (key, value) in &values {
        let text = String::from_utf8_lossy(value);
        for t in &tokens {
            if let Some(part) = common::token_part_in(value, t) {
                panic!("a token's {part} in Redis at {key}");
            }
        }
        for (id, _) in &cs {
            assert!(!key.contains(id.as_str()) && !text.contains(id.as_str()));
        }
        // The fleet key without the caller's secret: neither the key nor the value opens.
        for (id, _) in &cs {
            let guess = shared_key(&p, id, "a-wrong-secret");
            assert_ne!(&guess.entry, key);
            assert!(guess.open(value).is_none(), "opened with a wrong secret");
        }
    }
    // With the secret (as the sidecar does) the value opens: the test derives what the pod does.
    let right = shared_key(&p, &cs[0].0, &cs[0].1);
    let (_, v0) = values.iter().find(|(k, _)| *k == right.entry).expect("key");
    assert_eq!(right.open(v0).unwrap().access_token, tokens[0]);

    // Tampered: one flipped byte. A new pod rejects it, exchanges, and replaces it.
    let mut conn = redis.connection().unwrap();
    let mut tampered = v0.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let _: () = redis::cmd("SET")
        .arg(&right.entry)
        .arg(&tampered)
        .arg("KEEPTTL")
        .query(&mut conn)
        .unwrap();
    let b = pod(&p, Some(&redis)).await;
    let before = p.token_calls();
    assert_eq!(check(&b, &cs[0].0, &cs[0].1).await.unwrap(), "user-0");
    assert_eq!(
        p.token_calls(),
        before + 1,
        "the tampered value was not rejected"
    );
    assert!(metric(&b, "m2m_authz_shared_cache_errors").await >= 1);
    let replaced: Vec<u8> = redis::cmd("GET")
        .arg(&right.entry)
        .query(&mut conn)
        .unwrap();
    assert_ne!(replaced, tampered);
    assert!(
        right.open(&replaced).is_some(),
        "the tampered value was not replaced"
    );

    // Sealed correctly (by someone with the secret) but not a token the provider signed:
    // verified like a fresh exchange, so rejected and replaced too.
    let forged = m2m_authz::shared_cache::SharedEntry {
        access_token: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".into(),
        issued_at: common::provider::now(),
        expires_at: common::provider::now() + 3600,
    };
    let second = shared_key(&p, &cs[1].0, &cs[1].1);
    let _: () = redis::cmd("SET")
        .arg(&second.entry)
        .arg(second.seal(&forged))
        .query(&mut conn)
        .unwrap();
    let c = pod(&p, Some(&redis)).await;
    let before = p.token_calls();
    assert_eq!(check(&c, &cs[1].0, &cs[1].1).await.unwrap(), "user-1");
    assert_eq!(p.token_calls(), before + 1, "the forged token was used");
    let replaced: Vec<u8> = redis::cmd("GET")
        .arg(&second.entry)
        .query(&mut conn)
        .unwrap();
    assert_ne!(
        second.open(&replaced).unwrap().access_token,
        forged.access_token
    );
}

/// Provider token requests per hour for N pods, each serving every client, without the shared
/// tier, with it on one Redis and on a three-node Redis Cluster: counted exchanges over a short
/// run with short-lived tokens, scaled to an hour and to 1-hour tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmark_provider_requests_per_hour() {
    crate::needs!(RedisServer);
    const PODS: usize = 4;
    const CLIENTS: usize = 10;
    const LIFETIME_SECS: u64 = 6;
    const RUN: Duration = Duration::from_secs(13);
    let redis = Redis::start();
    let cluster = start_cluster();
    let mut rates = Vec::new();
    for tier in ["off", "one Redis", "Redis Cluster (3 nodes)"] {
        let p = FakeProvider::start().await;
        p.set_lifetime(LIFETIME_SECS);
        let cs = clients(&p, CLIENTS);
        let mut pods = Vec::new();
        for _ in 0..PODS {
            pods.push(Arc::new(match tier {
                "off" => pod(&p, None).await,
                "one Redis" => pod(&p, Some(&redis)).await,
                _ => {
                    let seeds = format!(
                        "    cluster: true\n    nodes: [{}, {}]\n",
                        cluster[1].url(),
                        cluster[2].url()
                    );
                    pod_with(&config_shared(&p, &cluster[0].url(), &seeds)).await
                }
            }));
        }
        let end = Instant::now() + RUN;
        let mut load = Vec::new();
        for s in &pods {
            let (s, cs) = (s.clone(), cs.clone());
            load.push(tokio::spawn(async move {
                let mut failed = 0;
                while Instant::now() < end {
                    for (id, secret) in &cs {
                        failed += usize::from(check(&s, id, secret).await.is_err());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                failed
            }));
        }
        for l in load {
            assert_eq!(l.await.unwrap(), 0, "failed checks");
        }
        let calls = p.token_calls() as f64;
        // Exchanges per client per token lifetime, then scaled to 1-hour tokens (one
        // lifetime per hour) for 10,000 clients.
        let per_client_lifetime =
            calls / CLIENTS as f64 / (RUN.as_secs_f64() / LIFETIME_SECS as f64);
        let per_hour_10k = per_client_lifetime * 10_000.0;
        eprintln!(
            "shared tier {tier}: {PODS} pods x {CLIENTS} clients, {LIFETIME_SECS}s tokens, {:?}: {calls} token requests = {:.0}/h measured; {:.2} per client per token lifetime => {:.0}/h for 10,000 clients with 1h tokens",
            RUN,
            calls * 3600.0 / RUN.as_secs_f64(),
            per_client_lifetime,
            per_hour_10k
        );
        rates.push(calls);
    }
    println!(
        "BENCHMARK provider token requests, {PODS} pods: without shared tier {}, with one Redis {} ({:.1}x fewer), with a Redis Cluster {} ({:.1}x fewer)",
        rates[0],
        rates[1],
        rates[0] / rates[1].max(1.0),
        rates[2],
        rates[0] / rates[2].max(1.0)
    );
    for (tier, rate) in [("one Redis", rates[1]), ("a Redis Cluster", rates[2])] {
        assert!(
            rate * 2.0 <= rates[0],
            "the shared tier on {tier} should at least halve provider requests with {PODS} pods: {rates:?}"
        );
    }
}

/// A generated CA in its own folder (`ca.pem`), signing server certificates for Redis.
struct TestCa {
    _dir: TempDir,
    ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = TempDir::new("redis-ca");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        TestCa {
            _dir: dir,
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `NAME.pem` and `NAME-key.pem` into `dir`: a server certificate for `host` (an IP
    /// address becomes an IP SAN).
    fn leaf(&self, dir: &TempDir, name: &str, host: &str) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let mut params = CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(&format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// `config` with `cache.shared` written out by the caller (`extra` goes under `shared:`). The
/// timeout leaves room for a TLS handshake, or a cluster's first slot map, on a machine busy
/// with compilers.
fn config_shared(p: &FakeProvider, url: &str, extra: &str) -> String {
    let mut yaml = config(p, None);
    yaml.push_str(&format!(
        "cache:\n  shared:\n    url: {url}\n    timeout: 1s\n    lock_ttl: 5s\n    lock_wait: 2s\n{extra}"
    ));
    yaml
}

async fn pod_with(yaml: &str) -> Sidecar {
    let key = fleet_key_b64();
    Sidecar::start_with_env(yaml, &[(FLEET_KEY_ENV, key.as_str())]).await
}

fn ca_line(ca: &Path) -> String {
    format!("    ca_file: {}\n", ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_share_tokens_over_rediss_and_a_wrong_ca_is_reported() {
    crate::needs!(RedisServer);
    let ca = TestCa::new("redis test CA");
    let redis = Redis::start_with(Vec::new(), Some(&ca));
    assert!(redis.url().starts_with("rediss://"));
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let yaml = config_shared(&p, &redis.url(), &ca_line(&ca.ca));
    let a = pod_with(&yaml).await;
    let b = pod_with(&yaml).await;

    assert_eq!(check(&a, "client-1", "s3cret").await.unwrap(), "user-1");
    assert_eq!(check(&b, "client-1", "s3cret").await.unwrap(), "user-1");
    assert_eq!(
        p.token_calls(),
        1,
        "the second pod exchanged again over TLS"
    );
    assert_eq!(metric(&b, "m2m_authz_shared_cache_hits").await, 1);
    assert_eq!(redis.values().len(), 1);
    let (status, body) = b.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["shared_cache"]["status"], "ok", "{body}");
    assert!(
        v["shared_cache"]["url"]
            .as_str()
            .unwrap()
            .starts_with("rediss://"),
        "{body}"
    );

    // A pod trusting another CA (or only the system roots) never talks to this Redis: its
    // checks go on locally, and /readyz says why.
    let other = TestCa::new("some other CA");
    for extra in [ca_line(&other.ca), String::new()] {
        let c = pod_with(&config_shared(&p, &redis.url(), &extra)).await;
        let before = p.token_calls();
        assert_eq!(check(&c, "client-1", "s3cret").await.unwrap(), "user-1");
        assert_eq!(p.token_calls(), before + 1, "exchanged locally");
        assert!(metric(&c, "m2m_authz_shared_cache_errors").await >= 1);
        let (status, body) = c.admin_get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["shared_cache"]["status"], "degraded", "{body}");
        let err = v["shared_cache"]["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase();
        assert!(err.contains("certificate"), "{body}");
        assert!(!c.full_logs().contains("s3cret"));
    }

    // A CA file that is no certificate stops the sidecar at load, naming the field.
    let dir = TempDir::new("bad-ca");
    for (name, text) in [
        ("empty.pem", ""),
        ("junk.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
        let yaml = config_shared(&p, &redis.url(), &ca_line(&dir.join(name)));
        let out = check_config(&yaml);
        assert!(!out.status.success(), "{name} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cache.shared.ca_file"), "{name}: {stderr}");
    }
    // ca_file with a plain redis:// URL is a mistake, not silently ignored.
    let plain = config_shared(&p, "redis://127.0.0.1:6379/", &ca_line(&ca.ca));
    let out = check_config(&plain);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache.shared.ca_file"));
}

/// `m2m-authz check-config` on `yaml`, with the fleet key in the environment.
fn check_config(yaml: &str) -> std::process::Output {
    let dir = TempDir::new("check-config");
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    Command::new(common::sidecar::binary())
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env(FLEET_KEY_ENV, fleet_key_b64())
        .output()
        .unwrap()
}

/// Three `redis-server --cluster-enabled yes` nodes without replicas, their slots assigned by
/// `redis-cli --cluster create`; each node's bus port is picked free too.
fn start_cluster() -> Vec<Redis> {
    let nodes: Vec<Redis> = (0..3)
        .map(|_| {
            Redis::start_with(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                    &free_port().to_string(),
                ]
                .map(String::from)
                .to_vec(),
                None,
            )
        })
        .collect();
    let out = Command::new(redis_cli())
        .args(["--cluster", "create"])
        .args(nodes.iter().map(|n| n.addr.to_string()))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        loop {
            let info: String = n
                .connection()
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok())
                .unwrap_or_default();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became ok: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    nodes
}

/// `redis-cli`, beside `redis-server` (the same Debian package).
fn redis_cli() -> PathBuf {
    let server = common::tools::redis_server();
    match server.parent() {
        Some(dir) if dir.join("redis-cli").exists() => dir.join("redis-cli"),
        _ => PathBuf::from("redis-cli"),
    }
}

/// Every shared value in the cluster, from each node.
fn cluster_values(nodes: &[Redis]) -> usize {
    nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.values().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_shares_tokens_and_a_stopped_node_only_costs_local_exchanges() {
    crate::needs!(RedisServer);
    let mut nodes = start_cluster();
    let p = FakeProvider::start().await;
    let cs = clients(&p, 12);
    let seeds = format!(
        "    cluster: true\n    nodes: [{}, {}]\n",
        nodes[1].url(),
        nodes[2].url()
    );
    let yaml = config_shared(&p, &nodes[0].url(), &seeds);
    let a = pod_with(&yaml).await;
    let b = pod_with(&yaml).await;

    for (i, (id, secret)) in cs.iter().enumerate() {
        assert_eq!(check(&a, id, secret).await.unwrap(), format!("user-{i}"));
    }
    for (i, (id, secret)) in cs.iter().enumerate() {
        assert_eq!(check(&b, id, secret).await.unwrap(), format!("user-{i}"));
    }
    assert_eq!(
        p.token_calls(),
        12,
        "one exchange per credential across two pods"
    );
    assert_eq!(metric(&b, "m2m_authz_shared_cache_hits").await, 12);
    assert_eq!(
        cluster_values(&nodes),
        12,
        "every value on the node owning its slot"
    );
    let spread = nodes.iter().filter(|n| !n.values().is_empty()).count();
    assert!(
        spread >= 2,
        "12 keys all on one node: not spread over slots"
    );
    let (_, body) = a.admin_get("/readyz").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["shared_cache"]["status"], "ok", "{body}");
    assert!(
        v["shared_cache"]["url"]
            .as_str()
            .unwrap()
            .starts_with("cluster "),
        "{body}"
    );

    // A node stops mid-run: every check is still allowed, some exchanged locally again,
    // counted as shared-tier errors; a pod starting now, the stopped node first in its list,
    // still finds the cluster from its other seeds. The node stopped is one that owns values
    // (a fixed node owns none of the 12 in about one run in 130).
    let stopped = (0..nodes.len())
        .max_by_key(|&i| nodes[i].values().len())
        .unwrap();
    let others: Vec<String> = (0..nodes.len())
        .filter(|&i| i != stopped)
        .map(|i| nodes[i].url())
        .collect();
    let yaml_c = config_shared(
        &p,
        &nodes[stopped].url(),
        &format!("    cluster: true\n    nodes: [{}]\n", others.join(", ")),
    );
    nodes[stopped].stop();
    let c = pod_with(&yaml_c).await;
    let before = p.token_calls();
    for s in [&a, &b, &c] {
        for (i, (id, secret)) in cs.iter().enumerate() {
            assert_eq!(check(s, id, secret).await.unwrap(), format!("user-{i}"));
        }
    }
    let extra = p.token_calls() - before;
    eprintln!("exchanges after a node stopped: {extra} (of 12 known credentials)");
    assert!(
        extra <= 12,
        "{extra}: more than one local exchange per credential, on pod c"
    );
    let mut errors = 0;
    for s in [&a, &b, &c] {
        errors += metric(s, "m2m_authz_shared_cache_errors").await;
    }
    assert!(errors >= 1, "the stopped node was never noticed");
    for s in [&a, &b, &c] {
        assert!(!s.full_logs().contains("secret-1-xyz"));
    }
}
