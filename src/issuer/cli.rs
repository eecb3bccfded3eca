//! `m2m-authz issuer …` and `m2m-authz clients …`.
//!
//! The `clients` commands and the key commands work on the database file
//! named by the config, not through the HTTP API, so they need no running
//! server and no project secret on the command line. Running them while the
//! server is up is safe: SQLite's WAL mode plus a transaction around every
//! write keep both processes consistent, and the server reads clients and
//! keys from the file on each request, so changes apply at once.
//!
//! One file (about 500 lines of code, the rest its unit tests): one clap command tree and the
//! output of each command; each command is a short function over `store`.

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use super::clients::{self, ClientView, NewClient};
use super::config::IssuerConfig;
use super::keyring;
use super::m2m_template::{self, ActiveTemplate, TemplateCache};
use super::store::{ClientQuery, ClientRecord, ClientStatus, KeyState, Store};
use super::{Issuer, IssuerError};
use crate::shutdown::{Hangup, StopSignals};
use crate::supervisor::{Stage, Supervisor};

/// `--config FILE`: the issuer's YAML configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Issuer configuration file (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `issuer --config FILE` serves; `issuer <COMMAND> --config FILE` manages
/// signing keys.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct IssuerArgs {
    #[command(subcommand)]
    pub command: Option<IssuerCommand>,
    /// Issuer configuration file (YAML); serves the issuer.
    #[arg(long, value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum IssuerCommand {
    /// Run the issuer's HTTP server (what `issuer --config FILE` does).
    Serve(ConfigArg),
    /// Make a new key the signing key; the old one stays in the JWKS so the
    /// tokens it signed keep verifying.
    RotateKey(ConfigArg),
    /// Remove a key that no longer signs from the JWKS.
    RetireKey {
        #[command(flatten)]
        config: ConfigArg,
        /// Key id to retire (see `issuer keys`).
        #[arg(long)]
        kid: String,
    },
    /// List signing keys and their states.
    Keys(ConfigArg),
    /// Show or replace the M2M claims template in force (the one the
    /// management API's jwt_templates/M2M serves). A running server uses a
    /// new template for its next token.
    #[command(subcommand)]
    Template(TemplateCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TemplateCommand {
    /// Print the template and its custom audience.
    Get {
        #[command(flatten)]
        config: ConfigArg,
        /// Print {"template_content","custom_audience","jwt_template_type"}.
        #[arg(long)]
        json: bool,
    },
    /// Replace the template with the content of FILE (or of standard input
    /// when FILE is `-` or not given); it is checked before it is stored.
    Set {
        #[command(flatten)]
        config: ConfigArg,
        /// Template file; `-` or none reads standard input.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Added to every token's `aud` after the project id; `""` removes
        /// it. Kept as it is when not given.
        #[arg(long, value_name = "AUDIENCE")]
        custom_audience: Option<String>,
    },
}

/// Largest template file read, as the management API's body limit.
const MAX_TEMPLATE_FILE_BYTES: u64 = 64 * 1024;

/// The top-level claim the sidecar's default identity mapping reads for
/// `x-user-id`, and which `clients create --user-id` feeds.
const USER_CLAIM: &str = "user_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotateStep {
    /// Add a second secret (printed once); both work until completion.
    Start,
    /// Make the new secret the only one.
    Complete,
    /// Drop the new secret.
    Cancel,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// User the client acts for; stored under the trusted_metadata key that
    /// the M2M template's `user_id` claim reads (`user_id` by default).
    #[arg(long)]
    pub user_id: String,
    /// Space-separated scopes, e.g. "read:orders write:orders".
    #[arg(long, default_value = "")]
    pub scopes: String,
    /// Client name (unique when given).
    #[arg(long)]
    pub name: Option<String>,
    /// Free-text description.
    #[arg(long)]
    pub description: Option<String>,
    /// Further trusted metadata, as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// Client id to use instead of a generated one.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Print JSON: {"client_id","client_secret","user_id","scopes"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientsCommand {
    /// Create a client; prints its secret once.
    Create(CreateArgs),
    /// List all clients.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the clients as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one client.
    Get {
        #[command(flatten)]
        config: ConfigArg,
        /// Client id (m2m-client-test-…).
        client_id: String,
        /// Print the client as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate a client's secret: start, then complete or cancel.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(value_enum)]
        step: RotateStep,
        /// Client id (m2m-client-test-…).
        client_id: String,
        /// Print JSON; for `start`: {"client_id","next_client_secret"}.
        #[arg(long)]
        json: bool,
    },
    /// Refuse tokens to a client without deleting it.
    Deactivate {
        #[command(flatten)]
        config: ConfigArg,
        /// Client id (m2m-client-test-…).
        client_id: String,
    },
    /// Allow a deactivated client again.
    Activate {
        #[command(flatten)]
        config: ConfigArg,
        /// Client id (m2m-client-test-…).
        client_id: String,
    },
    /// Delete a client for good.
    Delete {
        #[command(flatten)]
        config: ConfigArg,
        /// Client id (m2m-client-test-…).
        client_id: String,
    },
}

/// Runs `issuer …`. Serving runs until Ctrl-C or SIGTERM.
pub async fn run_issuer_command(args: IssuerArgs) -> anyhow::Result<()> {
    let command = match (args.command, args.config) {
        (Some(command), _) => command,
        (None, Some(config)) => IssuerCommand::Serve(ConfigArg { config }),
        (None, None) => bail!("issuer needs --config FILE"),
    };
    match command {
        IssuerCommand::Serve(arg) => serve_from_file(&arg.config).await,
        other => tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            execute_key_command(other, &mut stdout.lock())
        })
        .await
        .context("key command task failed")?,
    }
}

/// `issuer --config FILE`: the config and the database are opened before the port is bound,
/// so a bad one leaves nothing listening; then serves until SIGTERM or ctrl-c.
async fn serve_from_file(path: &Path) -> anyhow::Result<()> {
    let signals = StopSignals::install(Hangup::Ignored)?;
    let config = IssuerConfig::load(path)?;
    let addr = config.listen;
    let issuer = Issuer::open_async(config).await.map_err(|e| match e {
        e @ (IssuerError::Store(_) | IssuerError::Keys(_)) => anyhow::anyhow!("database: {e}"),
        e => e.into(),
    })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| anyhow::anyhow!("listen: {}", IssuerError::Bind { addr, source }))?;
    let bound = listener.local_addr()?;
    let endpoints = issuer.config().endpoints(bound);
    println!("embedded issuer listening on {bound}");
    println!("  token URL: {}", endpoints.token_url);
    println!("  JWKS URL:  {}", endpoints.jwks_url);
    println!("  issuer:    {}", endpoints.issuer);
    println!("  audience:  {}", endpoints.audience);
    if let Some(ca) = issuer.trust_file() {
        let ca = crate::issuer::private_files::shell_quote(ca);
        println!("  TLS CA to trust: {ca}");
        println!("    Python: SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca}");
        println!("    Node:   NODE_EXTRA_CA_CERTS={ca}");
    }
    // No Check server here: nothing to drain before the issuer stops.
    let supervisor = Supervisor::new(Duration::ZERO);
    supervisor.on_stop("flush telemetry", crate::telemetry::shutdown);
    supervisor.spawn_server(Stage::Background, "issuer HTTP server", |stop| {
        issuer.serve_on(listener, stop)
    });
    supervisor
        .run_until(signals.stopped())
        .await
        .map_err(anyhow::Error::msg)
}

fn open_store(config: &IssuerConfig) -> anyhow::Result<Store> {
    Ok(Store::open(
        &config.database,
        config.required_project_secret()?,
    )?)
}

/// The template in force; on a database no server has opened yet, the
/// config's template is stored first, as the server would.
fn current_template(
    config: &IssuerConfig,
    store: &mut Store,
) -> anyhow::Result<Arc<ActiveTemplate>> {
    m2m_template::ensure(store, &config.parsed_template()?)?;
    Ok(TemplateCache::default().current(store)?)
}

fn read_template_source(file: Option<&Path>) -> anyhow::Result<String> {
    let mut text = String::new();
    match file {
        None => {
            std::io::stdin()
                .take(MAX_TEMPLATE_FILE_BYTES + 1)
                .read_to_string(&mut text)
                .context("cannot read the template from standard input")?;
        }
        Some(p) if p == Path::new("-") => {
            std::io::stdin()
                .take(MAX_TEMPLATE_FILE_BYTES + 1)
                .read_to_string(&mut text)
                .context("cannot read the template from standard input")?;
        }
        Some(p) => {
            std::fs::File::open(p)
                .and_then(|f| {
                    f.take(MAX_TEMPLATE_FILE_BYTES + 1)
                        .read_to_string(&mut text)
                })
                .with_context(|| format!("cannot read template file {}", p.display()))?;
        }
    }
    if text.len() as u64 > MAX_TEMPLATE_FILE_BYTES {
        bail!("the template is larger than {MAX_TEMPLATE_FILE_BYTES} bytes");
    }
    if text.trim().is_empty() {
        bail!("the template is empty; give a JSON object such as {{}} for no custom claims");
    }
    Ok(text)
}

fn execute_template_command(command: TemplateCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        TemplateCommand::Get { config, json } => {
            let config = IssuerConfig::load(&config.config)?;
            let mut store = open_store(&config)?;
            current_template(&config, &mut store)?;
            let stored = store
                .template()?
                .context("the issuer database holds no M2M template")?;
            if json {
                let body = json!({
                    "template_content": stored.content,
                    "custom_audience": stored.custom_audience,
                    "jwt_template_type": "M2M",
                });
                writeln!(out, "{body}")?;
            } else {
                writeln!(out, "{}", stored.content.trim_end())?;
                if !stored.custom_audience.is_empty() {
                    writeln!(out, "custom_audience: {}", stored.custom_audience)?;
                }
            }
        }
        TemplateCommand::Set {
            config,
            file,
            custom_audience,
        } => {
            let config = IssuerConfig::load(&config.config)?;
            let content = read_template_source(file.as_deref())?;
            let mut store = open_store(&config)?;
            let audience = match custom_audience {
                Some(a) => a,
                None => current_template(&config, &mut store)?
                    .custom_audience
                    .clone()
                    .unwrap_or_default(),
            };
            let stored = m2m_template::set(&mut store, &content, &audience)?;
            writeln!(out, "M2M template set; new tokens use it")?;
            if !stored.custom_audience.is_empty() {
                writeln!(
                    out,
                    "tokens' aud: [\"{}\", \"{}\"]",
                    config.project_id, stored.custom_audience
                )?;
            }
        }
    }
    Ok(())
}

fn execute_key_command(command: IssuerCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        IssuerCommand::Serve(_) => bail!("serve is not a key command"),
        IssuerCommand::Template(command) => execute_template_command(command, out)?,
        IssuerCommand::RotateKey(arg) => {
            let config = IssuerConfig::load(&arg.config)?;
            let mut store = open_store(&config)?;
            let rotation = keyring::rotate(&mut store)?;
            writeln!(out, "new signing key: {}", rotation.new_kid)?;
            if let Some(previous) = rotation.previous_kid {
                writeln!(
                    out,
                    "previous key {previous} stays in the JWKS; remove it later with \
                     `issuer retire-key --kid {previous}`"
                )?;
            }
        }
        IssuerCommand::RetireKey { config, kid } => {
            let config = IssuerConfig::load(&config.config)?;
            let mut store = open_store(&config)?;
            keyring::retire(&mut store, &kid)?;
            writeln!(out, "retired key {kid}; tokens it signed no longer verify")?;
        }
        IssuerCommand::Keys(arg) => {
            let config = IssuerConfig::load(&arg.config)?;
            let store = open_store(&config)?;
            for key in store.all_keys()? {
                let note = match key.state {
                    KeyState::Active => "signs new tokens; in JWKS",
                    KeyState::Published => "in JWKS only",
                    KeyState::Retired => "not in JWKS",
                };
                let retired = key
                    .retired_at
                    .map(|t| format!(" (retired {})", unix_time(t)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{}\t{}\tcreated {}\t{note}{retired}",
                    key.kid,
                    key.state.as_str(),
                    unix_time(key.created_at)
                )?;
            }
        }
    }
    Ok(())
}

fn unix_time(secs: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Runs `clients …`, printing to stdout.
pub fn run_clients_command(command: ClientsCommand) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    execute_clients_command(command, &mut stdout.lock())
}

/// What the template's user claim would carry for `client`.
fn user_id(client: &ClientRecord, key: Option<&[String]>) -> String {
    let Some((first, rest)) = key.and_then(<[String]>::split_first) else {
        return String::new();
    };
    let mut current = client.trusted_metadata.get(first);
    for seg in rest {
        current = current.and_then(Value::as_object).and_then(|m| m.get(seg));
    }
    match current {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Puts `value` at `path` in `metadata`, making the objects on the way.
fn insert_at(
    metadata: &mut Map<String, Value>,
    path: &[String],
    value: Value,
) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        bail!("empty trusted_metadata path");
    };
    let mut current = metadata;
    for seg in parents {
        let entry = current
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        current = match entry {
            Value::Object(map) => map,
            _ => bail!(
                "--metadata sets trusted_metadata.{seg} to a non-object, but the template reads \
                 the user id below it ({})",
                path.join(".")
            ),
        };
    }
    if current.contains_key(last) {
        bail!(
            "give the user id with --user-id, not inside --metadata (trusted_metadata.{})",
            path.join(".")
        );
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn print_client(out: &mut dyn Write, client: &ClientRecord) -> anyhow::Result<()> {
    writeln!(out, "client_id:          {}", client.client_id)?;
    writeln!(out, "client_name:        {}", client.client_name)?;
    if !client.client_description.is_empty() {
        writeln!(out, "client_description: {}", client.client_description)?;
    }
    writeln!(out, "status:             {}", client.status.as_str())?;
    writeln!(out, "scopes:             {}", client.scopes.join(" "))?;
    writeln!(
        out,
        "trusted_metadata:   {}",
        Value::Object(client.trusted_metadata.clone())
    )?;
    writeln!(out, "secret ends with:   {}", client.secret.last_four)?;
    if let Some(next) = &client.next_secret {
        writeln!(
            out,
            "next secret ends:   {} (rotation in progress)",
            next.last_four
        )?;
    }
    Ok(())
}

fn execute_clients_command(command: ClientsCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        ClientsCommand::Create(args) => create(args, out),
        ClientsCommand::List { config, json } => {
            let config = IssuerConfig::load(&config.config)?;
            let mut store = open_store(&config)?;
            let template = current_template(&config, &mut store)?;
            let user_key = template.claims.claim_metadata_path(USER_CLAIM);
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let page = store.search_clients(&ClientQuery::default(), after, 1000)?;
                all.extend(page.clients);
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if json {
                let views: Vec<ClientView> = all.iter().map(ClientView::from).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
            } else if all.is_empty() {
                writeln!(out, "no clients")?;
            } else {
                writeln!(out, "CLIENT_ID\tSTATUS\tUSER_ID\tSCOPES\tNAME")?;
                for c in &all {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}",
                        c.client_id,
                        c.status.as_str(),
                        user_id(c, user_key),
                        c.scopes.join(" "),
                        c.client_name
                    )?;
                }
            }
            Ok(())
        }
        ClientsCommand::Get {
            config,
            client_id,
            json,
        } => {
            let config = IssuerConfig::load(&config.config)?;
            let store = open_store(&config)?;
            let client = clients::get(&store, &client_id)?;
            if json {
                let view = ClientView::from(&client);
                writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
            } else {
                print_client(out, &client)?;
            }
            Ok(())
        }
        ClientsCommand::Rotate {
            config,
            step,
            client_id,
            json,
        } => {
            let config = IssuerConfig::load(&config.config)?;
            let mut store = open_store(&config)?;
            match step {
                RotateStep::Start => {
                    let (_, next) = clients::rotate_start(&mut store, &client_id)?;
                    if json {
                        let body = json!({
                            "client_id": client_id,
                            "next_client_secret": next.expose(),
                        });
                        writeln!(out, "{body}")?;
                    } else {
                        writeln!(out, "client_id:          {client_id}")?;
                        writeln!(out, "next_client_secret: {}", next.expose())?;
                        writeln!(
                            out,
                            "Both secrets work until `clients rotate complete` (or `cancel`). \
                             The new secret is shown only once."
                        )?;
                    }
                }
                RotateStep::Complete => {
                    clients::rotate_complete(&mut store, &client_id)?;
                    writeln!(out, "{client_id}: the new secret is now the only one")?;
                }
                RotateStep::Cancel => {
                    clients::rotate_cancel(&mut store, &client_id)?;
                    writeln!(
                        out,
                        "{client_id}: rotation cancelled; the new secret no longer works"
                    )?;
                }
            }
            Ok(())
        }
        ClientsCommand::Deactivate { config, client_id } => {
            set_status(&config.config, &client_id, ClientStatus::Inactive)?;
            writeln!(out, "{client_id}: deactivated (token requests are refused)")?;
            Ok(())
        }
        ClientsCommand::Activate { config, client_id } => {
            set_status(&config.config, &client_id, ClientStatus::Active)?;
            writeln!(out, "{client_id}: activated")?;
            Ok(())
        }
        ClientsCommand::Delete { config, client_id } => {
            let config = IssuerConfig::load(&config.config)?;
            let mut store = open_store(&config)?;
            clients::delete(&mut store, &client_id)?;
            writeln!(out, "{client_id}: deleted")?;
            Ok(())
        }
    }
}

fn set_status(path: &Path, client_id: &str, status: ClientStatus) -> anyhow::Result<()> {
    let config = IssuerConfig::load(path)?;
    let mut store = open_store(&config)?;
    let template = current_template(&config, &mut store)?;
    clients::set_status(&mut store, &template.claims, client_id, status)?;
    Ok(())
}

/// A client made by [`create_client`]. Its secret exists in clear only here, so there is no
/// `Debug`.
pub struct CreatedClient {
    pub client_id: String,
    pub client_secret: String,
    pub user_id: String,
    pub scopes: Vec<String>,
    /// Dotted trusted_metadata paths the template reads that the client
    /// lacks: its tokens carry no claim for them.
    pub missing_metadata: Vec<String>,
}

/// What `clients create` does, returning the new client instead of printing it (the `demo`
/// command uses it).
pub fn create_client(args: CreateArgs) -> anyhow::Result<CreatedClient> {
    let config = IssuerConfig::load(&args.config.config)?;
    let mut metadata: Map<String, Value> = match &args.metadata {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => bail!("--metadata must be a JSON object"),
            Err(e) => bail!("--metadata is not valid JSON: {e}"),
        },
    };
    if args.user_id.is_empty() {
        bail!("--user-id must not be empty");
    }
    let scopes = super::scopes::parse_space_separated(&args.scopes)?;
    let mut store = open_store(&config)?;
    let template = current_template(&config, &mut store)?;
    let Some(user_key) = template.claims.claim_metadata_path(USER_CLAIM) else {
        bail!(
            "the M2M template in force has no `{USER_CLAIM}` claim taken from \
             client.trusted_metadata, so tokens could not carry --user-id. Show it with \
             `issuer template get`; set one such as \
             {{\"{USER_CLAIM}\": {{{{ client.trusted_metadata.user_id }}}}}} with `issuer template \
             set`, or put the id in --metadata under the key your template reads"
        );
    };
    insert_at(&mut metadata, user_key, Value::String(args.user_id.clone()))?;
    let (client, secret) = clients::create(
        &mut store,
        &template.claims,
        NewClient {
            client_id: args.client_id,
            client_secret: None,
            client_name: args.name.unwrap_or_default(),
            client_description: args.description.unwrap_or_default(),
            scopes,
            trusted_metadata: metadata,
        },
    )?;
    let missing_metadata = template.claims.missing_metadata(&client.trusted_metadata);
    Ok(CreatedClient {
        client_id: client.client_id,
        client_secret: secret.expose().to_owned(),
        user_id: args.user_id,
        scopes: client.scopes,
        missing_metadata,
    })
}

fn create(args: CreateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let json = args.json;
    let client = create_client(args)?;
    if !client.missing_metadata.is_empty() {
        // Created all the same, as on Stytch; the operator hears of it.
        eprintln!(
            "warning: the M2M template reads trusted_metadata {} that client {} lacks; its \
             tokens will carry no claim for {}",
            client.missing_metadata.join(", "),
            client.client_id,
            if client.missing_metadata.len() == 1 {
                "it"
            } else {
                "them"
            }
        );
    }
    if json {
        let body = json!({
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "user_id": client.user_id,
            "scopes": client.scopes,
        });
        writeln!(out, "{body}")?;
    } else {
        writeln!(out, "client_id:     {}", client.client_id)?;
        writeln!(out, "client_secret: {}", client.client_secret)?;
        writeln!(out, "user_id:       {}", client.user_id)?;
        writeln!(out, "scopes:        {}", client.scopes.join(" "))?;
        writeln!(
            out,
            "The secret is shown only once and cannot be recovered; store it now."
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::store::tests::TempDb;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Debug, clap::Subcommand)]
    enum TestCommand {
        Issuer(IssuerArgs),
        #[command(subcommand)]
        Clients(ClientsCommand),
    }

    fn parse(args: &[&str]) -> Result<TestCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("m2m-authz").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn clap_shapes() {
        use clap::CommandFactory as _;
        TestCli::command().debug_assert();

        match parse(&["issuer", "--config", "f.yaml"]).unwrap() {
            TestCommand::Issuer(IssuerArgs {
                command: None,
                config: Some(p),
            }) => assert_eq!(p, PathBuf::from("f.yaml")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["issuer", "rotate-key", "--config", "f.yaml"]).unwrap(),
            TestCommand::Issuer(IssuerArgs {
                command: Some(IssuerCommand::RotateKey(_)),
                ..
            })
        ));
        assert!(matches!(
            parse(&["issuer", "retire-key", "--config", "f", "--kid", "k"]).unwrap(),
            TestCommand::Issuer(IssuerArgs {
                command: Some(IssuerCommand::RetireKey { .. }),
                ..
            })
        ));
        assert!(parse(&["issuer"]).is_err());
        assert!(matches!(
            parse(&[
                "clients",
                "create",
                "--config",
                "f",
                "--user-id",
                "u",
                "--scopes",
                "read:orders",
                "--json"
            ])
            .unwrap(),
            TestCommand::Clients(ClientsCommand::Create(CreateArgs { json: true, .. }))
        ));
        assert!(matches!(
            parse(&["clients", "rotate", "start", "--config", "f", "ID"]).unwrap(),
            TestCommand::Clients(ClientsCommand::Rotate {
                step: RotateStep::Start,
                ..
            })
        ));
        for args in [
            &["clients", "list", "--config", "f"][..],
            &["clients", "get", "--config", "f", "ID"],
            &["clients", "deactivate", "--config", "f", "ID"],
            &["clients", "activate", "--config", "f", "ID"],
            &["clients", "delete", "--config", "f", "ID"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
    }

    struct Env {
        db: TempDb,
        config: PathBuf,
    }

    fn env() -> Env {
        let db = TempDb::new();
        let config = db.write_private(
            "issuer.yaml",
            "project_secret: cli-test-secret-0123456789\ndatabase: cli.db\n",
        );
        Env { db, config }
    }

    fn run(command: ClientsCommand) -> anyhow::Result<String> {
        let mut out = Vec::new();
        execute_clients_command(command, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn cfg(env: &Env) -> ConfigArg {
        ConfigArg {
            config: env.config.clone(),
        }
    }

    fn create_args(env: &Env, user: &str, scopes: &str) -> CreateArgs {
        CreateArgs {
            config: cfg(env),
            user_id: user.into(),
            scopes: scopes.into(),
            name: None,
            description: None,
            metadata: None,
            client_id: None,
            json: true,
        }
    }

    #[test]
    fn clients_commands_work_on_the_database() {
        let env = env();
        let out = run(ClientsCommand::Create(create_args(
            &env,
            "u1",
            "read:orders",
        )))
        .unwrap();
        let created: Value = serde_json::from_str(&out).unwrap();
        let id = created["client_id"].as_str().unwrap().to_owned();
        assert!(
            created["client_secret"]
                .as_str()
                .unwrap()
                .starts_with("secret-test-")
        );
        assert_eq!(created["user_id"], "u1");
        assert_eq!(created["scopes"], json!(["read:orders"]));
        assert!(
            env.db.dir.join("cli.db").exists(),
            "database sits beside the config"
        );

        let listed = run(ClientsCommand::List {
            config: cfg(&env),
            json: false,
        })
        .unwrap();
        assert!(listed.contains(&id) && listed.contains("u1"), "{listed}");

        run(ClientsCommand::Deactivate {
            config: cfg(&env),
            client_id: id.clone(),
        })
        .unwrap();
        let got = run(ClientsCommand::Get {
            config: cfg(&env),
            client_id: id.clone(),
            json: true,
        })
        .unwrap();
        let got: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(got["status"], "inactive");
        assert!(got.get("client_secret").is_none());

        let rotated = run(ClientsCommand::Rotate {
            config: cfg(&env),
            step: RotateStep::Start,
            client_id: id.clone(),
            json: true,
        })
        .unwrap();
        let rotated: Value = serde_json::from_str(&rotated).unwrap();
        assert!(rotated["next_client_secret"].as_str().is_some());

        run(ClientsCommand::Delete {
            config: cfg(&env),
            client_id: id.clone(),
        })
        .unwrap();
        let err = run(ClientsCommand::Get {
            config: cfg(&env),
            client_id: id,
            json: false,
        })
        .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn bad_input_gives_one_line_errors() {
        let env = env();
        let mut named = create_args(&env, "u1", "");
        named.name = Some("bot".into());
        // Names need not be unique (only ids are, as on Stytch).
        run(ClientsCommand::Create(named.clone())).unwrap();
        run(ClientsCommand::Create(named)).unwrap();
        let err = run(ClientsCommand::Create(create_args(&env, "u", "bad\"scope")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scope"), "{err}");
        let err = run(ClientsCommand::Deactivate {
            config: cfg(&env),
            client_id: "nope".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("not found"), "{err}");
        assert!(!err.contains('\n'), "one-line error: {err:?}");
    }

    #[test]
    fn key_commands_rotate_and_retire() {
        let env = env();
        let config = IssuerConfig::load(&env.config).unwrap();
        drop(Issuer::open(config).unwrap());
        let mut out = Vec::new();
        execute_key_command(IssuerCommand::RotateKey(cfg(&env)), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let previous = text
            .split_whitespace()
            .skip_while(|w| *w != "previous")
            .nth(2)
            .unwrap()
            .to_owned();
        let mut out = Vec::new();
        execute_key_command(
            IssuerCommand::RetireKey {
                config: cfg(&env),
                kid: previous.clone(),
            },
            &mut out,
        )
        .unwrap();
        let mut out = Vec::new();
        execute_key_command(IssuerCommand::Keys(cfg(&env)), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(&format!("{previous}\tretired")), "{text}");
        assert_eq!(text.matches("\tactive\t").count(), 1, "{text}");
    }
}
