//! Serving Check and gRPC health on one port and the admin HTTP endpoints on another, and
//! stopping gracefully: on shutdown new connections are refused while in-flight checks get up to
//! the drain timeout to finish; the admin port answers (`/readyz` 503) until they have.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic_health::ServingStatus;

use crate::admin::AdminState;
use crate::authorizer::{Authorizer, BuildError};
#[cfg(feature = "issuer")]
use crate::config::ProviderKind;
use crate::config::{Config, ListenAddr, parse_admin_listen, parse_listen};
use crate::ext_authz::ExtAuthz;
#[cfg(feature = "issuer")]
use crate::issuer::{Issuer, IssuerConfig};
use crate::metrics::Metrics;
use crate::proto::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// The gRPC service name health checks ask about, besides the empty (whole server) name.
pub const CHECK_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// How long the admin port may take to close once checks have drained.
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("listen.grpc: {0}")]
    Listen(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("listen.admin: {0}")]
    AdminListen(String),
    #[error("listen.admin: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: String,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[cfg(feature = "issuer")]
    #[error("embedded issuer: {0}")]
    Issuer(#[from] crate::issuer::IssuerError),
}

/// A bound gRPC listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

/// Both bound ports: Check (and gRPC health), and the admin HTTP endpoints.
pub struct Listeners {
    pub grpc: Listener,
    pub admin: TcpListener,
}

/// Binds `listen.grpc` and `listen.admin`. Separate from serving so callers can learn the bound
/// addresses (port 0 in tests) and report a taken port before anything else starts.
pub async fn bind(config: &Config) -> Result<Listeners, ServeError> {
    let grpc = bind_grpc(config).await?;
    let addr = parse_admin_listen(&config.listen.admin).map_err(ServeError::AdminListen)?;
    let admin = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::AdminBind {
            addr: addr.to_string(),
            source,
        })?;
    Ok(Listeners { grpc, admin })
}

/// Binds `listen.grpc`. A stale socket file left by an earlier run is replaced; any other file
/// at that path is an error.
async fn bind_grpc(config: &Config) -> Result<Listener, ServeError> {
    match parse_listen(&config.listen.grpc).map_err(ServeError::Listen)? {
        ListenAddr::Tcp(addr) => {
            TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|source| ServeError::Bind {
                    addr: addr.to_string(),
                    source,
                })
        }
        ListenAddr::Unix(path) => {
            use std::os::unix::fs::FileTypeExt;
            let bind_error = |source| ServeError::Bind {
                addr: format!("unix:{}", path.display()),
                source,
            };
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if !meta.file_type().is_socket() {
                    return Err(bind_error(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is in the way",
                    )));
                }
                std::fs::remove_file(&path).map_err(bind_error)?;
            }
            let listener = UnixListener::bind(&path).map_err(bind_error)?;
            // Owner and group may connect (the process umask usually leaves the group without
            // write permission, which connecting needs): Envoy may run as another user of the
            // same group. Others may not. The socket's directory must be writable only by
            // trusted users (whoever can write there can replace the socket anyway); the check
            // below still refuses to change the mode through anything but our socket.
            use std::os::unix::fs::PermissionsExt;
            let ours = std::fs::symlink_metadata(&path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !ours {
                return Err(bind_error(std::io::Error::other(
                    "the socket was replaced right after it was bound",
                )));
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
                .map_err(bind_error)?;
            Ok(Listener::Unix(listener))
        }
    }
}

/// Serves until `shutdown` completes, then drains for at most `config.listen.drain_timeout`.
/// With `provider.kind: embedded`, the embedded issuer is opened and served first, and stopped
/// after the last check has drained.
pub async fn serve(
    config: &Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    #[cfg(feature = "issuer")]
    let issuer = match &config.provider.embedded {
        Some(embedded) if config.provider.kind == ProviderKind::Embedded => {
            Some(start_embedded_issuer(embedded.clone()).await?)
        }
        _ => None,
    };
    let authorizer = Arc::new(Authorizer::new(config)?);
    let result = serve_with(authorizer, listeners, config.listen.drain_timeout, shutdown).await;
    #[cfg(feature = "issuer")]
    if let Some((stop, task)) = issuer {
        let _ = stop.send(());
        let _ = task.await;
    }
    result
}

#[cfg(feature = "issuer")]
type IssuerHandle = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), crate::issuer::IssuerError>>,
);

#[cfg(feature = "issuer")]
async fn start_embedded_issuer(config: IssuerConfig) -> Result<IssuerHandle, ServeError> {
    let addr = config.listen;
    let issuer = Issuer::open_async(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(issuer.serve_on(listener, async move {
        let _ = stopped.await;
    }));
    Ok((stop, task))
}

pub async fn serve_with(
    authorizer: Arc<Authorizer>,
    listeners: Listeners,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        admin,
    } = listeners;
    let local = match &listener {
        Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        Listener::Unix(l) => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .unwrap_or_default(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(CHECK_SERVICE, ServingStatus::NotServing)
        .await;

    let maintenance = authorizer.spawn_maintenance();
    let policy_watcher = authorizer.policy().clone().spawn_watcher();
    let (refreshers, keys_loaded) = authorizer.start_key_refresh();
    // Health reports SERVING only once every provider's keys are loaded: before that checks
    // would fail.
    let mut loaded = keys_loaded.clone();
    let health_task = tokio::spawn(async move {
        if loaded.wait_for(|l| *l).await.is_ok() {
            health.set_service_status("", ServingStatus::Serving).await;
            health
                .set_service_status(CHECK_SERVICE, ServingStatus::Serving)
                .await;
            tracing::info!("signing keys loaded; serving");
        }
    });

    let metrics = Arc::new(Metrics::new(authorizer.clone()));
    let draining = Arc::new(AtomicBool::new(false));
    let admin_addr = admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut admin_task = tokio::spawn(crate::admin::serve(
        admin,
        Arc::new(AdminState {
            metrics: metrics.clone(),
            keys_loaded,
            draining: draining.clone(),
            #[cfg(feature = "shared-cache")]
            shared_cache: authorizer.shared_cache().cloned(),
        }),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    tracing::info!(addr = %admin_addr, "admin HTTP listening (/metrics, /healthz, /readyz, /version)");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = async move {
        let mut stop_rx = stop_rx;
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(
            ExtAuthz::new(authorizer).with_metrics(metrics),
        ));
    let mut server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match listener {
        Listener::Tcp(l) => {
            Box::pin(router.serve_with_incoming_shutdown(
                // Checks are small request/response pairs: without TCP_NODELAY, Nagle's algorithm
                // and delayed ACKs add tens of milliseconds to some of them.
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                stopped,
            ))
        }
        Listener::Unix(l) => {
            Box::pin(router.serve_with_incoming_shutdown(UnixListenerStream::new(l), stopped))
        }
    };
    tracing::info!(addr = %local, "m2m-authz listening for ext_authz checks");
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown => {
            tracing::info!(drain_secs = drain.as_secs_f32(), "shutting down: draining in-flight checks");
            draining.store(true, Ordering::Relaxed);
            stop_tx.send_replace(true);
            match tokio::time::timeout(drain, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("drain timeout reached; closing remaining connections");
                    Ok(())
                }
            }
        }
    };
    for r in refreshers {
        r.abort();
    }
    maintenance.abort();
    if let Some(w) = policy_watcher {
        w.abort();
    }
    health_task.abort();
    let _ = admin_stop.send(());
    if tokio::time::timeout(ADMIN_STOP_TIMEOUT, &mut admin_task)
        .await
        .is_err()
    {
        admin_task.abort();
    }
    result.map_err(ServeError::from)
}
