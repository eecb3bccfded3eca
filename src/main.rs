//! The `m2m-authz` command: parse arguments, load and validate config before binding any port,
//! serve, and drain on SIGTERM or ctrl-c.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use m2m_authz::config::Config;
use m2m_authz::defaults::CONFIG_ENV;
use m2m_authz::runtime::Workers;
use m2m_authz::settings::Settings;
use m2m_authz::shutdown::{Hangup, StopSignals};
use m2m_authz::supervisor::Supervisor;
use m2m_authz::{server, telemetry};

/// mimalloc: fewer instructions per allocation than glibc's malloc, and per-thread free lists
/// that suit a check's short-lived allocations (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "m2m-authz",
    version,
    about = "Envoy ext_authz sidecar for machine-to-machine credentials"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz Check (and gRPC health) until SIGTERM or ctrl-c.
    Serve {
        #[arg(long, env = CONFIG_ENV)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 with a one-line summary (and a `warning:` line on stderr
    /// for plain-http provider URLs off this host), or non-zero naming the field.
    CheckConfig {
        #[arg(long, env = CONFIG_ENV)]
        config: PathBuf,
    },
    /// Run the embedded Stytch-compatible issuer, or manage its signing keys.
    #[cfg(feature = "issuer")]
    Issuer(m2m_authz::issuer::IssuerArgs),
    /// Manage the embedded issuer's M2M clients (works on its database file).
    #[cfg(feature = "issuer")]
    #[command(subcommand)]
    Clients(m2m_authz::issuer::ClientsCommand),
    /// Run the whole flow locally: Envoy, the sidecar with the embedded issuer, an echo upstream.
    #[cfg(feature = "issuer")]
    Demo(m2m_authz::demo::DemoArgs),
    /// Left out of this build (the `issuer` feature): hidden, and refused with a line saying so.
    #[cfg(not(feature = "issuer"))]
    #[command(hide = true, disable_help_flag = true)]
    Issuer(NotBuilt),
    #[cfg(not(feature = "issuer"))]
    #[command(hide = true, disable_help_flag = true)]
    Clients(NotBuilt),
    #[cfg(not(feature = "issuer"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo(NotBuilt),
    /// Route policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Which rule a request matches and what the decision would be.
    Explain(m2m_authz::policy::explain::ExplainArgs),
}

/// Whatever follows a command this build left out; it is refused without being looked at.
#[cfg(not(feature = "issuer"))]
#[derive(clap::Args)]
struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<std::ffi::OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            let (config, _) = m2m_authz::settings::load(&config)?;
            refuse_missing_features()?;
            println!("{}", config.summary());
            if let Some(warning) = config.plain_http_warning() {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
        #[cfg(feature = "issuer")]
        Command::Issuer(args) => {
            telemetry::init();
            tokio::runtime::Runtime::new()?.block_on(m2m_authz::issuer::run_issuer_command(args))
        }
        #[cfg(feature = "issuer")]
        Command::Clients(command) => m2m_authz::issuer::run_clients_command(command),
        #[cfg(feature = "issuer")]
        Command::Demo(args) => m2m_authz::demo::run(args),
        #[cfg(not(feature = "issuer"))]
        Command::Issuer(_) => not_built("issuer"),
        #[cfg(not(feature = "issuer"))]
        Command::Clients(_) => not_built("clients"),
        #[cfg(not(feature = "issuer"))]
        Command::Demo(_) => not_built("demo"),
        Command::Policy(PolicyCommand::Explain(args)) => {
            print!("{}", m2m_authz::policy::explain::run(&args)?);
            Ok(())
        }
        Command::Serve { config } => {
            let (config, settings) = m2m_authz::settings::load(&config)?;
            refuse_missing_features()?;
            telemetry::init();
            if let Some(warning) = config.plain_http_warning() {
                tracing::warn!("{warning}");
            }
            let workers = Workers::choose(config.runtime.worker_threads);
            workers.build()?.block_on(serve(config, settings, workers))
        }
    }
}

/// `serve`: everything that can fail first, then the ports, then run until a stop signal.
async fn serve(config: Config, settings: Settings, workers: Workers) -> anyhow::Result<()> {
    let signals = StopSignals::install(Hangup::Ignored)?;
    let prepared = server::prepare(&config, settings).await?;
    let bound = prepared.bind().await?;
    tracing::info!(summary = %config.summary(), "configuration loaded");
    // Logged once started, so that a refused start stays one error line.
    tracing::info!(
        worker_threads = workers.threads,
        flavour = workers.flavour(),
        source = %workers.source,
        "async runtime"
    );
    let supervisor = Supervisor::new(config.listen.drain_timeout);
    // Export the last trace spans once everything has stopped (before the socket goes).
    supervisor.on_stop("flush telemetry", telemetry::shutdown);
    bound.start(&supervisor).await;
    supervisor
        .run_until(signals.stopped())
        .await
        .map_err(anyhow::Error::msg)
}

/// Settings outside the config file that need a part this build left out (the `OTEL_*`
/// variables); the file's own are refused by `settings::load`.
fn refuse_missing_features() -> anyhow::Result<()> {
    match m2m_authz::otel::missing_feature() {
        Some(line) => Err(anyhow::anyhow!(line)),
        None => Ok(()),
    }
}

#[cfg(not(feature = "issuer"))]
fn not_built(command: &str) -> anyhow::Result<()> {
    Err(anyhow::anyhow!(
        "`m2m-authz {command}`: {}",
        m2m_authz::features::missing("this command", m2m_authz::features::ISSUER)
    ))
}
