//! Embedded, Stytch-compatible M2M token issuer.
//!
//! It lets the sidecar run end to end on one machine without a Stytch
//! account: it mints client credentials, exchanges them for RS256 JWTs at
//! Stytch's token path, and serves the JWKS at Stytch's JWKS path, with the
//! claims (`iss = stytch.com/{project_id}`, `aud = [project_id]`, custom
//! claims from a template) a Stytch project would produce. Point the
//! sidecar's `stytch` provider at [`IssuerEndpoints`].
//!
//! State lives in one SQLite file, shared by the server and the `clients` /
//! `issuer` CLI commands, which may run while the server does.

mod api;
mod cli;
mod clients;
mod config;
mod keyring;
mod keys;
mod m2m_template;
pub use crate::private_files;
mod scopes;
mod seal;
mod secrets;
pub(crate) mod store;
mod template;
mod tls;
mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

pub use cli::{
    ClientsCommand, ConfigArg, CreateArgs, CreatedClient, IssuerArgs, IssuerCommand, RotateStep,
    TemplateCommand, create_client, run_clients_command, run_issuer_command,
};
pub use config::{
    ConfigError, IssuerConfig, IssuerEndpoints, MANAGEMENT_KEY_SECRET_ENV, MIN_PROJECT_SECRET_LEN,
    ManagementConfig, PROJECT_SECRET_ENV, TlsConfig,
};
pub use keyring::{KeyringError, Rotation as KeyRotation};
pub use secrets::ProjectSecret;
pub use store::StoreError;
pub use template::{
    ClaimsTemplate, DEFAULT_CLAIMS_TEMPLATE, MAX_RENDERED_CLAIMS_BYTES, TemplateError,
};
pub use tls::{
    GENERATED_CA_FILE, GENERATED_CERT_FILE, GENERATED_KEY_FILE, HANDSHAKE_TIMEOUT, TlsError,
};

use api::{AppState, ManagementAccess};
use keyring::KeyCache;
use store::Store;
use token::TokenSettings;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyringError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("issuer cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("issuer HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("issuer startup task failed: {0}")]
    Startup(String),
}

/// An opened issuer: database migrated, a signing key present.
pub struct Issuer {
    config: IssuerConfig,
    state: Arc<AppState>,
    /// `Some` when `tls` is configured: the certificate served.
    tls: Option<tls::ServerTls>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Validates `config` (as given: it does not read
    /// [`PROJECT_SECRET_ENV`]; [`IssuerConfig::load`] does), opens the
    /// database and creates the first signing key if there is none.
    ///
    /// This blocks (SQLite, RSA key generation); from async code use
    /// [`Issuer::open_async`].
    pub fn open(config: IssuerConfig) -> Result<Self, IssuerError> {
        config.validate()?;
        let template = config.parsed_template()?;
        let project_secret = config.required_project_secret()?.clone();
        let mut store = Store::open(&config.database, &project_secret)?;
        keyring::ensure_signing_key(&mut store)?;
        m2m_template::ensure(&mut store, &template)?;
        // After the store: its folder now exists and has passed the shared-folder rules.
        let tls = match &config.tls {
            Some(t) => Some(tls::ServerTls::load(t, &state_dir(&config.database))?),
            None => None,
        };
        let management = ManagementAccess {
            key_id: config.management.key_id.clone(),
            key_secret: config.management.key_secret.clone(),
            project_slug: config
                .management
                .project_slug(&config.project_id)
                .to_owned(),
            environment_slug: config.management.environment_slug.clone(),
        };
        let state = AppState {
            store: Mutex::new(store),
            keys: KeyCache::default(),
            settings: TokenSettings {
                project_id: config.project_id.clone(),
                issuer: config.issuer(),
                lifetime: config.token_lifetime,
            },
            project_secret,
            templates: m2m_template::TemplateCache::default(),
            management,
        };
        Ok(Self {
            config,
            state: Arc::new(state),
            tls,
        })
    }

    /// [`Issuer::open`] on a blocking thread.
    pub async fn open_async(config: IssuerConfig) -> Result<Self, IssuerError> {
        tokio::task::spawn_blocking(move || Self::open(config))
            .await
            .map_err(|e| IssuerError::Startup(e.to_string()))?
    }

    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// The generated CA file that clients must trust (`tls.self_signed`); `None` otherwise.
    pub fn trust_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().and_then(|t| t.trust_file.as_deref())
    }

    /// The HTTP API, for mounting or serving elsewhere.
    pub fn router(&self) -> axum::Router {
        api::router(Arc::clone(&self.state))
    }

    /// Serves on an already-bound listener (use port 0 in tests and learn
    /// the address from the listener) until `shutdown` completes.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IssuerError> {
        let bound = listener.local_addr().map_err(IssuerError::Serve)?;
        let endpoints = self.config.endpoints(bound);
        tracing::info!(
            %bound,
            token_url = %endpoints.token_url,
            jwks_url = %endpoints.jwks_url,
            issuer = %endpoints.issuer,
            "embedded M2M issuer listening"
        );
        if let Some(ca) = self.trust_file() {
            tracing::info!(
                ca = %ca.display(),
                python = "SSL_CERT_FILE, REQUESTS_CA_BUNDLE",
                node = "NODE_EXTRA_CA_CERTS",
                "clients must trust the issuer's generated CA"
            );
        }
        let router = self.router();
        match &self.tls {
            Some(tls) => {
                let listener = tls.listener(listener).map_err(IssuerError::Serve)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(IssuerError::Serve)
            }
            None => axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(IssuerError::Serve),
        }
    }
}

/// The folder beside the database, where generated TLS files live.
fn state_dir(database: &std::path::Path) -> std::path::PathBuf {
    match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Opens the issuer and serves on `config.listen` until `shutdown`.
pub async fn serve(
    config: IssuerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), IssuerError> {
    let addr = config.listen;
    let issuer = Issuer::open_async(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| IssuerError::Bind { addr, source })?;
    issuer.serve_on(listener, shutdown).await
}

/// Makes a new key the signing key, through its own database connection
/// (as the `issuer rotate-key` command does); a running server picks it up
/// on its next request. The previous key stays in the JWKS.
pub fn rotate_signing_key(config: &IssuerConfig) -> Result<KeyRotation, IssuerError> {
    let mut store = Store::open(&config.database, config.required_project_secret()?)?;
    Ok(keyring::rotate(&mut store)?)
}

/// Removes a key that no longer signs from the JWKS (`issuer retire-key`).
pub fn retire_signing_key(config: &IssuerConfig, kid: &str) -> Result<(), IssuerError> {
    let mut store = Store::open(&config.database, config.required_project_secret()?)?;
    Ok(keyring::retire(&mut store, kid)?)
}
