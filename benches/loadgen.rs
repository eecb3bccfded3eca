//! The Check load tool (issue 7). See BENCHMARKS.md.
//!
//! `run` measures, in one run and in rotating order per round: the floor (a do-nothing ext_authz
//! server, this tool's own `floor` subcommand as a separate process) and the real `m2m-authz`
//! binary as a separate process (what users run) — cache hits over 10,000 Basic credentials,
//! cached bearer tokens, wrong secrets (negative cache) — over TCP and a Unix socket, plus a cold
//! start of 1,000 new credentials against a token endpoint with 20 ms latency. Each number is
//! printed with its ratio to the floor measured in the same round; the table shows medians.
//!
//! Other subcommands: `floor` (the do-nothing server), `provider` (token endpoint + JWKS for
//! scripts/bench's Envoy runs), `memory` (resident memory of the real `TokenCache`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use common::check::{Check, basic};
use common::provider::{FakeProvider, Minter, jwks_document};
use hdrhistogram::Histogram;
use m2m_authz::proto::envoy::service::auth::v3::CheckRequest;
use m2m_authz::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(
    name = "m2m-authz-loadgen",
    about = "Check load tool for m2m-authz (issue 7)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure everything in one run and print the table.
    Run(RunArgs),
    /// The stock do-nothing ext_authz server that answers OK: `host:port` or `unix:/path`
    /// (benches/floor.rs).
    Floor {
        #[arg(long)]
        listen: String,
        /// The sidecar's runtime with this many workers and its transport settings, but the
        /// system allocator (to tell the allocator's part from the rest; `m2m-authz-floor` has
        /// all of the tuning).
        #[arg(long, value_name = "WORKERS")]
        tuned: Option<usize>,
    },
    /// Token endpoint + JWKS for scripts/bench: registers one client, writes `basic`, `bearer`
    /// and `jwks.json` into `--out`, prints `ready`, serves until killed.
    Provider {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// VmRSS before and after filling the real `TokenCache` with `--entries` identities.
    Memory {
        #[arg(long)]
        entries: usize,
        /// Keep each access token, as when a route forwards it (`upstream_credential: bearer`).
        #[arg(long)]
        keep_tokens: bool,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Seconds each measurement runs (after a 1 s unrecorded warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Repetitions of the whole set; the table shows medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Checks in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the checks are spread over (Envoy opens one per worker).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Distinct cached Basic credentials (and as many bearer tokens and wrong secrets).
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// New credentials sent at once in the cold-start measurement.
    #[arg(long, default_value_t = 1_000)]
    cold: usize,
    /// Token endpoint latency during the cold start, in milliseconds.
    #[arg(long, default_value_t = 20)]
    cold_latency_ms: u64,
    /// The m2m-authz binary (default: target/release/m2m-authz next to this tool).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// Skip the Unix-socket measurements.
    #[arg(long)]
    no_uds: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Floor { listen, tuned } => {
            let runtime = match tuned {
                Some(workers) => m2m_authz::runtime::Workers::choose(Some(workers)).build()?,
                None => tokio::runtime::Runtime::new()?,
            };
            let builder = match tuned {
                Some(_) => m2m_authz::server::check_server(),
                None => tonic::transport::Server::builder(),
            };
            runtime.block_on(floor::serve(listen, builder, floor::empty_ok()))
        }
        Cmd::Provider { listen, out } => {
            tokio::runtime::Runtime::new()?.block_on(serve_provider(listen, out))
        }
        Cmd::Memory {
            entries,
            keep_tokens,
        } => memory::memory(entries, keep_tokens),
        Cmd::Run(args) => tokio::runtime::Runtime::new()?.block_on(run(args)),
    }
}

// ---------------------------------------------------------------- the floor

#[path = "floor.rs"]
mod floor;

/// The CheckRequest the load tool sends: GET /direct (the `direct_response` route of
/// scripts/bench) with this `Authorization`, as Envoy would ask for it.
fn direct(authorization: Option<String>) -> CheckRequest {
    let check = Check::get("/direct").host("127.0.0.1:10000").scheme("http");
    match authorization {
        Some(value) => check.header("authorization", value),
        None => check,
    }
    .build()
}

// ---------------------------------------------------------------- provider for scripts/bench

async fn serve_provider(listen: String, out: PathBuf) -> anyhow::Result<()> {
    let p = FakeProvider::start_at(listen.parse()?).await;
    let minter = Minter;
    let token = minter.mint("bench-client", "user-bench");
    p.add_client_with_token("bench-client", "bench-secret", token.clone());
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("basic"), basic("bench-client", "bench-secret"))?;
    // A separately minted token for the Bearer runs (same claims, not the exchanged one).
    std::fs::write(
        out.join("bearer"),
        format!("Bearer {}", minter.mint("bench-client", "user-bench")),
    )?;
    std::fs::write(
        out.join("jwks.json"),
        serde_json::to_string(&jwks_document())?,
    )?;
    std::fs::write(
        out.join("sidecar.yaml"),
        p.sidecar_config("  negative_ttl: 1h\n"),
    )?;
    println!("ready {}", p.addr);
    std::future::pending::<()>().await;
    Ok(())
}

// ---------------------------------------------------------------- memory

#[path = "memory.rs"]
mod memory;

// ---------------------------------------------------------------- load

#[derive(Clone, Debug)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

async fn connect(target: &Target) -> anyhow::Result<Channel> {
    Ok(match target {
        Target::Tcp(addr) => {
            Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?
        }
        Target::Unix(path) => {
            let path = path.clone();
            Endpoint::try_from("http://localhost")?
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await?
        }
    })
}

/// gRPC status code in the CheckResponse (0 allowed, 16 unauthenticated, ...), or -1 for a
/// failed RPC.
async fn one(client: &mut AuthorizationClient<Channel>, req: CheckRequest) -> i32 {
    match client.check(req).await {
        Ok(r) => r.into_inner().status.map_or(-2, |s| s.code),
        Err(_) => -1,
    }
}

#[derive(Clone, Debug, Default)]
struct Measured {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Server CPU (user + system) per check, microseconds.
    cpu_us: f64,
    /// The system (kernel) part of `cpu_us`: socket reads, writes and wake-ups.
    sys_us: f64,
    unexpected: u64,
}

/// One cold start: what it cost, and how much of its time the machine's CPU alone explains.
struct ColdStart {
    exchanges: u64,
    allowed: usize,
    took_ms: f64,
    sidecar_cpu_ms: f64,
    tool_cpu_ms: f64,
}

impl ColdStart {
    /// The shortest the cold start could take on this machine: all the CPU time spent meanwhile
    /// (sidecar, client and token endpoint) spread perfectly over every core.
    fn cpu_bound_ms(&self) -> f64 {
        (self.sidecar_cpu_ms + self.tool_cpu_ms) / cores() as f64
    }

    /// What is left for waiting on the provider (and on each other).
    fn beyond_cpu_ms(&self) -> f64 {
        (self.took_ms - self.cpu_bound_ms()).max(0.0)
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `/proc/PID/stat` counts CPU time in clock ticks of `USER_HZ`, 100 per second on Linux.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// User and system CPU time of `pid` so far, in clock ticks.
fn cpu_split(pid: u32) -> (u64, u64) {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
        })
        .unwrap_or((0, 0))
}

fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// Drives `requests` round-robin at `concurrency` for `duration` and records latency.
async fn drive(
    channels: &[Channel],
    requests: Arc<Vec<CheckRequest>>,
    expect: i32,
    concurrency: usize,
    duration: Duration,
    server_pid: u32,
) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut client = AuthorizationClient::new(channels[t % channels.len()].clone());
        let requests = requests.clone();
        let stop = stop.clone();
        let recording = recording.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut unexpected = 0u64;
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let req = requests[i % requests.len()].clone();
                i += concurrency;
                let started = Instant::now();
                let code = one(&mut client, req).await;
                if recording.load(Ordering::Relaxed) {
                    let _ = h.record(started.elapsed().as_micros().max(1) as u64);
                    if code != expect {
                        unexpected += 1;
                    }
                }
            }
            (h, unexpected)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = cpu_split(server_pid);
    let started = Instant::now();
    recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu1 = cpu_split(server_pid);
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut unexpected = 0;
    for t in tasks {
        let (h, u) = t.await.expect("task");
        all.add(h).expect("merge");
        unexpected += u;
    }
    let n = all.len().max(1) as f64;
    Measured {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all.value_at_quantile(0.50) as f64,
        p99: all.value_at_quantile(0.99) as f64,
        p999: all.value_at_quantile(0.999) as f64,
        cpu_us: ((cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1)) as f64 / CLOCK_TICKS_PER_SECOND
            * 1e6
            / n,
        sys_us: cpu1.1.saturating_sub(cpu0.1) as f64 / CLOCK_TICKS_PER_SECOND * 1e6 / n,
        unexpected,
    }
}

/// Sends every request once, `parallel` at a time; returns how many got `expect`.
async fn sweep(
    channel: &Channel,
    requests: &[CheckRequest],
    expect: i32,
    parallel: usize,
) -> usize {
    use futures::StreamExt;
    futures::stream::iter(requests.iter().cloned())
        .map(|req| {
            let mut client = AuthorizationClient::new(channel.clone());
            async move { one(&mut client, req).await == expect }
        })
        .buffer_unordered(parallel)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

struct Proc {
    child: Child,
    _name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn wait_ready(target: &Target, child: &mut Child, what: &str) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{what} exited early: {status}");
        }
        if let Ok(ch) = connect(target).await {
            let mut c = AuthorizationClient::new(ch.clone());
            // Any answer that is not UNAVAILABLE (keys not loaded yet) means ready.
            if c.check(direct(None)).await.is_ok() {
                return Ok(ch);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stock floor (this tool's `floor`), or with `tuned` the sidecar-tuned one
/// (`m2m-authz-tuned floor`, built next to this tool).
fn spawn_floor(dir: &Path, target: &Target, tuned: bool) -> anyhow::Result<Proc> {
    let listen = match target {
        Target::Tcp(a) => a.clone(),
        Target::Unix(p) => format!("unix:{}", p.display()),
    };
    let exe = std::env::current_exe()?;
    let exe = if tuned {
        exe.with_file_name("m2m-authz-tuned")
    } else {
        exe
    };
    let child = Command::new(exe)
        .args(["floor", "--listen", &listen])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("floor.log"))?)
        .spawn()?;
    Ok(Proc {
        child,
        _name: "floor".into(),
    })
}

fn spawn_sidecar(
    bin: &Path,
    dir: &Path,
    name: &str,
    target: &Target,
    config: &str,
) -> anyhow::Result<Proc> {
    let listen = match target {
        Target::Tcp(a) => a.clone(),
        Target::Unix(p) => format!("unix:{}", p.display()),
    };
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "listen:\n  grpc: \"{listen}\"\n  admin: \"127.0.0.1:{}\"\n{config}",
            free_port()
        ),
    )?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("M2M_AUTHZ_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .spawn()?;
    Ok(Proc {
        child,
        _name: name.into(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Scenario {
    name: &'static str,
    /// Index into the servers.
    server: usize,
    requests: Arc<Vec<CheckRequest>>,
    expect: i32,
    /// Name of the floor scenario this one is compared with.
    floor: &'static str,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("m2m-authz-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bin = match &args.sidecar {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("m2m-authz"))
            .ok_or_else(|| anyhow::anyhow!("cannot find m2m-authz; pass --sidecar"))?,
    };
    println!(
        "# m2m-authz-loadgen run: {} s x {} rounds, concurrency {}, {} connection(s), {} clients; load average {}",
        args.duration,
        args.rounds,
        args.concurrency,
        args.connections,
        args.clients,
        loadavg()
    );

    // The token endpoint, and every token minted up front.
    let provider = FakeProvider::start().await;
    let minter = Minter;
    let hit_ids: Vec<String> = (0..args.clients)
        .map(|i| format!("client-{i:06}"))
        .collect();
    let cold_ids: Vec<String> = (0..args.cold * args.rounds)
        .map(|i| format!("cold-{i:06}"))
        .collect();
    let t = Instant::now();
    let (hit_tokens, cold_tokens) = {
        let (h, c) = (hit_ids.clone(), cold_ids.clone());
        tokio::task::spawn_blocking(move || (minter.mint_all(&h), minter.mint_all(&c))).await?
    };
    println!(
        "# minted {} tokens in {:.1} s",
        hit_tokens.len() + cold_tokens.len(),
        t.elapsed().as_secs_f64()
    );
    for (id, token) in hit_ids.iter().zip(&hit_tokens) {
        provider.add_client_with_token(id, &format!("secret-{id}"), token.clone());
    }
    for (id, token) in cold_ids.iter().zip(&cold_tokens) {
        provider.add_client_with_token(id, &format!("secret-{id}"), token.clone());
    }

    let cache = format!(
        "  max_entries: 250000\n  negative_ttl: 1h\n  max_exchanges_per_second: 100000\n  max_concurrent_exchanges: {}\n  exchange_queue_timeout: 30s\n",
        args.cold.max(64)
    );
    let config = provider.sidecar_config(&cache);
    println!(
        "# sidecar cache config: max_exchanges_per_second 100000, max_concurrent_exchanges {}, exchange_queue_timeout 30s, negative_ttl 1h",
        args.cold.max(64)
    );

    // Servers: floor and sidecar over TCP, and over a Unix socket.
    let mut targets = vec![
        (
            "floor-tcp",
            Target::Tcp(format!("127.0.0.1:{}", free_port())),
        ),
        (
            "sidecar-tcp",
            Target::Tcp(format!("127.0.0.1:{}", free_port())),
        ),
        (
            "tuned-floor-tcp",
            Target::Tcp(format!("127.0.0.1:{}", free_port())),
        ),
    ];
    if !args.no_uds {
        targets.push(("floor-uds", Target::Unix(dir.join("floor.sock"))));
        targets.push(("sidecar-uds", Target::Unix(dir.join("sidecar.sock"))));
    }
    let mut procs = Vec::new();
    let mut channels: Vec<Vec<Channel>> = Vec::new();
    for (name, target) in &targets {
        let mut p = if name.starts_with("floor") || name.starts_with("tuned-floor") {
            spawn_floor(&dir, target, name.starts_with("tuned"))?
        } else {
            spawn_sidecar(&bin, &dir, name, target, &config)?
        };
        wait_ready(target, &mut p.child, name).await?;
        let mut chans = Vec::new();
        for _ in 0..args.connections {
            chans.push(connect(target).await?);
        }
        channels.push(chans);
        procs.push(p);
    }

    // Requests.
    let hits: Arc<Vec<CheckRequest>> = Arc::new(
        hit_ids
            .iter()
            .map(|id| direct(Some(basic(id, &format!("secret-{id}")))))
            .collect(),
    );
    let bearers: Arc<Vec<CheckRequest>> = Arc::new(
        hit_tokens
            .iter()
            .map(|t| direct(Some(format!("Bearer {t}"))))
            .collect(),
    );
    let wrong: Arc<Vec<CheckRequest>> = Arc::new(
        hit_ids
            .iter()
            .map(|id| direct(Some(basic(id, "not-the-secret"))))
            .collect(),
    );

    // Pre-warm every sidecar: each credential exchanged (or refused) once, each token verified.
    for (i, (name, _)) in targets.iter().enumerate() {
        if !name.starts_with("sidecar") {
            continue;
        }
        let t = Instant::now();
        let ch = &channels[i][0];
        let ok = sweep(ch, &hits, 0, 256).await;
        let okb = sweep(ch, &bearers, 0, 256).await;
        let denied = sweep(ch, &wrong, 16, 256).await;
        println!(
            "# warmed {name}: {ok}/{} basic allowed, {okb}/{} bearer allowed, {denied}/{} wrong secrets denied, {:.1} s",
            hits.len(),
            bearers.len(),
            wrong.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let pid = |i: usize| procs[i].child.id();

    let mut scenarios = vec![
        Scenario {
            name: "floor (TCP)",
            server: 0,
            requests: hits.clone(),
            expect: 0,
            floor: "floor (TCP)",
        },
        Scenario {
            name: "cache hits, Basic, 10k clients (TCP)",
            server: 1,
            requests: hits.clone(),
            expect: 0,
            floor: "floor (TCP)",
        },
        Scenario {
            name: "Bearer, cached verification (TCP)",
            server: 1,
            requests: bearers.clone(),
            expect: 0,
            floor: "floor (TCP)",
        },
        Scenario {
            name: "wrong secrets, negative cache (TCP)",
            server: 1,
            requests: wrong.clone(),
            expect: 16,
            floor: "floor (TCP)",
        },
    ];
    scenarios.push(Scenario {
        name: "floor with the sidecar's tuning (TCP)",
        server: 2,
        requests: hits.clone(),
        expect: 0,
        floor: "floor (TCP)",
    });
    if !args.no_uds {
        scenarios.push(Scenario {
            name: "floor (UDS)",
            server: 3,
            requests: hits.clone(),
            expect: 0,
            floor: "floor (TCP)",
        });
        scenarios.push(Scenario {
            name: "cache hits, Basic, 10k clients (UDS)",
            server: 4,
            requests: hits.clone(),
            expect: 0,
            floor: "floor (TCP)",
        });
    }

    let duration = Duration::from_secs_f64(args.duration);
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); scenarios.len()];
    let mut cold_results: Vec<ColdStart> = Vec::new();
    for round in 0..args.rounds {
        println!("# round {} (load average {})", round + 1, loadavg());
        // Rotate the order each round so drift touches every scenario alike.
        for k in 0..scenarios.len() {
            let idx = (k + round) % scenarios.len();
            let s = &scenarios[idx];
            let m = drive(
                &channels[s.server],
                s.requests.clone(),
                s.expect,
                args.concurrency,
                duration,
                pid(s.server),
            )
            .await;
            println!(
                "  {:<40} {:>9.0} rps  p50 {:>6.0} us  p99 {:>6.0} us  p99.9 {:>6.0} us  server cpu {:>5.1} us/check (kernel {:>4.1}){}",
                s.name,
                m.rps,
                m.p50,
                m.p99,
                m.p999,
                m.cpu_us,
                m.sys_us,
                if m.unexpected > 0 {
                    format!("  UNEXPECTED ANSWERS: {}", m.unexpected)
                } else {
                    String::new()
                }
            );
            results[idx].push(m);
        }
        // Cold start: new credentials, all at once, slow token endpoint.
        let ids = &cold_ids[round * args.cold..(round + 1) * args.cold];
        let reqs: Vec<CheckRequest> = ids
            .iter()
            .map(|id| direct(Some(basic(id, &format!("secret-{id}")))))
            .collect();
        provider.set_latency(Duration::from_millis(args.cold_latency_ms));
        let calls0 = provider.token_calls();
        let (sidecar0, tool0) = (cpu_ticks(pid(1)), cpu_ticks(std::process::id()));
        let t = Instant::now();
        let allowed = sweep(&channels[1][0], &reqs, 0, reqs.len()).await;
        let took = t.elapsed().as_secs_f64() * 1e3;
        let tick_ms = 1e3 / CLOCK_TICKS_PER_SECOND;
        let cold = ColdStart {
            exchanges: (provider.token_calls() - calls0) as u64,
            allowed,
            took_ms: took,
            sidecar_cpu_ms: (cpu_ticks(pid(1)) - sidecar0) as f64 * tick_ms,
            tool_cpu_ms: (cpu_ticks(std::process::id()) - tool0) as f64 * tick_ms,
        };
        provider.set_latency(Duration::ZERO);
        println!(
            "  {:<40} {} exchanges, {allowed}/{} allowed, all answered in {took:.0} ms ({:.1}x provider latency); \
             CPU: sidecar {:.0} ms, this tool (client + token endpoint) {:.0} ms, / {} cores = {:.0} ms; \
             answered {:.0} ms after that CPU time ({:.1}x provider latency)",
            format!("cold start, {} new credentials (TCP)", args.cold),
            cold.exchanges,
            args.cold,
            took / args.cold_latency_ms as f64,
            cold.sidecar_cpu_ms,
            cold.tool_cpu_ms,
            cores(),
            cold.cpu_bound_ms(),
            cold.beyond_cpu_ms(),
            cold.beyond_cpu_ms() / args.cold_latency_ms as f64,
        );
        cold_results.push(cold);
    }

    // The table: medians, and the median of per-round ratios to the floor of the same round.
    let find = |name: &str| scenarios.iter().position(|s| s.name == name).unwrap_or(0);
    println!(
        "\n## Results (medians of {} rounds; ratio = median of per-round ratios to the floor; load average now {})\n",
        args.rounds,
        loadavg()
    );
    println!(
        "| scenario | checks/s | × floor | p50 µs | p99 µs | × floor p99 | p99.9 µs | server CPU µs/check | of which kernel | × floor CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, s) in scenarios.iter().enumerate() {
        let f = &results[find(s.floor)];
        let r = &results[i];
        let ratio = |g: fn(&Measured) -> f64| {
            median(r.iter().zip(f.iter()).map(|(a, b)| g(a) / g(b)).collect())
        };
        let med = |g: fn(&Measured) -> f64| median(r.iter().map(g).collect());
        println!(
            "| {}{} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {:.2} |",
            s.name,
            if s.floor != s.name && s.name.contains("UDS") {
                " (vs TCP floor)"
            } else {
                ""
            },
            med(|m| m.rps),
            ratio(|m| m.rps),
            med(|m| m.p50),
            med(|m| m.p99),
            ratio(|m| m.p99),
            med(|m| m.p999),
            med(|m| m.cpu_us),
            med(|m| m.sys_us),
            ratio(|m| m.cpu_us),
        );
    }
    let ex: Vec<u64> = cold_results.iter().map(|c| c.exchanges).collect();
    let al: Vec<usize> = cold_results.iter().map(|c| c.allowed).collect();
    let ms: Vec<f64> = cold_results.iter().map(|c| c.took_ms).collect();
    let cpu: Vec<f64> = cold_results.iter().map(|c| c.cpu_bound_ms()).collect();
    let beyond: Vec<f64> = cold_results.iter().map(|c| c.beyond_cpu_ms()).collect();
    println!(
        "\nCold start, {} new credentials at once, token endpoint latency {} ms, per round: exchanges {ex:?}, \
         allowed {al:?}, all answered in {:?} ms (median {:.0} ms = {:.1}× provider latency). \
         All CPU used meanwhile (sidecar + client + token endpoint) / {} cores: {:?} ms; time beyond it: \
         median {:.0} ms = {:.1}× provider latency.",
        args.cold,
        args.cold_latency_ms,
        ms.iter().map(|m| m.round() as u64).collect::<Vec<_>>(),
        median(ms.clone()),
        median(ms.clone()) / args.cold_latency_ms as f64,
        cores(),
        cpu.iter().map(|m| m.round() as u64).collect::<Vec<_>>(),
        median(beyond.clone()),
        median(beyond) / args.cold_latency_ms as f64,
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
