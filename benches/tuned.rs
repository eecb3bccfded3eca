//! `m2m-authz-tuned`: the bench tools that must run with the sidecar's own global allocator.
//!
//! - `floor`: the do-nothing ext_authz server with the sidecar's tuning — allocator, runtime
//!   (worker count from `--workers`, else the same CPU-quota default as `serve`) and transport
//!   settings (benches/floor.rs), plus the levers measured in BENCHMARKS.md.
//! - `memory`: resident memory per cached credential under that allocator (benches/memory.rs).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "floor.rs"]
mod floor;
#[path = "memory.rs"]
mod memory;

use clap::{Parser, Subcommand};
use m2m_authz::proto::envoy::service::auth::v3::CheckResponse;
use m2m_authz::runtime::Workers;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "m2m-authz-tuned",
    about = "Bench tools with the sidecar's allocator (issue 19)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The do-nothing ext_authz server, tuned as m2m-authz.
    Floor(FloorArgs),
    /// VmRSS before and after filling the real `TokenCache` with `--entries` identities.
    Memory {
        #[arg(long)]
        entries: usize,
        /// Keep each access token, as when a route forwards it.
        #[arg(long)]
        keep_tokens: bool,
    },
}

#[derive(clap::Args)]
struct FloorArgs {
    /// `host:port` or `unix:/path`.
    #[arg(long)]
    listen: String,
    /// Worker threads (default: as `serve` without `runtime.worker_threads`).
    #[arg(long)]
    workers: Option<usize>,
    // Levers measured in BENCHMARKS.md on top of the sidecar's settings (none of them is what
    // the sidecar runs with):
    /// HTTP/2 initial stream and connection windows, bytes.
    #[arg(long)]
    h2_window: Option<u32>,
    /// HTTP/2 adaptive window (BDP pings).
    #[arg(long)]
    adaptive_window: bool,
    /// HTTP/2 keep-alive ping interval, seconds.
    #[arg(long)]
    keepalive: Option<u64>,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE, bytes.
    #[arg(long)]
    max_frame: Option<u32>,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    #[arg(long)]
    max_streams: Option<u32>,
    /// What every Check is answered: `empty` (OK, nothing to change: the do-nothing answer);
    /// `headers` (the sidecar's default allowed answer without its dynamic metadata: set
    /// `x-user-id` and `x-client-id`, remove `authorization` and `x-client-secret`);
    /// `metadata` (only the dynamic metadata); `full` (both: what the sidecar answers). Built by
    /// the sidecar's own `to_check_response`, so Envoy's cost of applying each part shows
    /// (`scripts/profile envoy`).
    #[arg(long, value_enum, default_value_t = Answer::Empty)]
    answer: Answer,
    /// One worker on tokio's multi-thread scheduler instead of the current-thread one (its LIFO
    /// slot runs the connection task right after the check that woke it: answers leave one by
    /// one instead of in batches).
    #[arg(long)]
    multi_thread: bool,
    /// tokio's event interval: scheduler ticks between polls for I/O (61 by default). Fewer
    /// polls batch more responses into each write.
    #[arg(long)]
    event_interval: Option<u32>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Answer {
    Empty,
    Headers,
    Metadata,
    Full,
}

/// The answer the floor gives, from the sidecar's own response builder.
fn answer(kind: Answer) -> CheckResponse {
    use m2m_authz::decision::{Allow, Decision};
    use m2m_authz::identity::Identity;
    use std::sync::Arc;
    if let Answer::Empty = kind {
        return floor::empty_ok();
    }
    let allow = Allow {
        identity: Arc::new(Identity {
            headers: Box::new([
                ("x-client-id".into(), "bench-client".into()),
                ("x-user-id".into(), "user-bench".into()),
            ]),
            remove: Arc::new(["authorization".into(), "x-client-secret".into()]),
            client_id: "bench-client".into(),
            scopes: Box::new(["read:orders".into()]),
            access_token: None,
        }),
        forward: None,
        provider: Some("default".into()),
        rule: Some("default".into()),
    };
    let mut full = m2m_authz::ext_authz::to_check_response(&Decision::Allow(allow));
    match kind {
        Answer::Headers => full.dynamic_metadata = None,
        Answer::Metadata => {
            let metadata = full.dynamic_metadata.take();
            full = floor::empty_ok();
            full.dynamic_metadata = metadata;
        }
        Answer::Empty | Answer::Full => {}
    }
    full
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Floor(args) => serve_floor(args),
        Cmd::Memory {
            entries,
            keep_tokens,
        } => memory::memory(entries, keep_tokens),
    }
}

fn serve_floor(cli: FloorArgs) -> anyhow::Result<()> {
    let workers = Workers::choose(cli.workers);
    eprintln!(
        "m2m-authz-tuned floor: {} worker thread(s), {} ({})",
        workers.threads,
        workers.flavour(),
        workers.source
    );
    let runtime = match cli.event_interval {
        None if cli.multi_thread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.threads)
            .enable_all()
            .build()?,
        Some(n) if workers.threads <= 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .event_interval(n)
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.threads)
            .enable_all()
            .event_interval(n)
            .build()?,
        None => workers.build()?,
    };
    let mut builder = m2m_authz::server::check_server();
    if let Some(w) = cli.h2_window {
        builder = builder
            .initial_stream_window_size(w)
            .initial_connection_window_size(w);
    }
    if cli.adaptive_window {
        builder = builder.http2_adaptive_window(Some(true));
    }
    if let Some(s) = cli.keepalive {
        builder = builder
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(s)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
    }
    if let Some(f) = cli.max_frame {
        builder = builder.max_frame_size(f);
    }
    if let Some(n) = cli.max_streams {
        builder = builder.max_concurrent_streams(n);
    }
    runtime.block_on(floor::serve(cli.listen, builder, answer(cli.answer)))
}
