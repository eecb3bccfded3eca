//! Serving Check and gRPC health on one port and the admin HTTP endpoints on another, in three
//! steps that `serve` and `demo` share:
//!
//! 1. [`prepare`]: everything that can fail, before any port is bound — the listen addresses
//!    and the Unix socket path, the authorizer (providers, identity headers, the policy file,
//!    the shared tier's URL and fleet key), the embedded issuer's database. A failure names the
//!    field and nothing was ever listening.
//! 2. [`Prepared::bind`]: the Check port, the admin port, the embedded issuer's port.
//! 3. [`Bound::start`]: every server and loop, handed to the [`Supervisor`], which stops them in
//!    order: new connections are refused while in-flight checks get up to the drain timeout to
//!    finish; the admin port answers (`/readyz` 503) and the embedded issuer keeps issuing until
//!    they have; then the loops stop, and the Unix socket is removed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic_health::ServingStatus;

use crate::admin::AdminState;
use crate::authorizer::{Authorizer, BuildError, Parts};
#[cfg(feature = "issuer")]
use crate::config::ProviderKind;
use crate::config::{Config, ListenAddr, MetadataKeys, parse_admin_listen, parse_listen};
use crate::ext_authz::ExtAuthz;
use crate::grpc_tls::GrpcTls;
#[cfg(feature = "issuer")]
use crate::issuer::{Issuer, IssuerError};
use crate::metrics::Metrics;
use crate::proto::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::settings::Settings;
use crate::supervisor::{Stage, Supervisor};

/// The gRPC service name health checks ask about, besides the empty (whole server) name.
pub const CHECK_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Build(#[from] BuildError),
    /// An address that cannot be listened on as written.
    #[error("{field}: {problem}")]
    Listen {
        field: &'static str,
        problem: String,
    },
    /// (`error` is shown in the line, so it is not also a `source`: `main` prints the chain.)
    #[error("{field}: cannot listen on {addr}: {error}")]
    Bind {
        field: &'static str,
        addr: String,
        error: std::io::Error,
    },
    #[cfg(feature = "issuer")]
    #[error("{field}: {error}")]
    Issuer {
        field: &'static str,
        error: IssuerError,
    },
}

/// `listen.grpc`, the Check port.
pub const GRPC_FIELD: &str = "listen.grpc";
/// `listen.admin`, the admin port.
pub const ADMIN_FIELD: &str = "listen.admin";
/// `listen.http`, the HTTP authorization port (off unless set).
pub const HTTP_FIELD: &str = "listen.http";
/// `provider.embedded.listen`, the embedded issuer's port.
pub const ISSUER_LISTEN_FIELD: &str = "provider.embedded.listen";

/// The Check port's gRPC server with the transport settings measured for a sidecar (issue 19,
/// BENCHMARKS.md "Transport"). Envoy keeps one HTTP/2 connection per worker open and sends small
/// unary requests on it, so what matters is the cost per request, not throughput per stream:
///
/// - HTTP/1 is refused (tonic's default): only the HTTP/2 preface is accepted.
/// - No adaptive window (BDP pings) and no keep-alive pings: each would add timers and frames
///   on a connection that only ever carries kilobyte-sized messages from a local Envoy, which
///   notices a dead connection itself. hyper's 1 MiB windows mean one WINDOW_UPDATE every few
///   hundred checks.
/// - TCP_NODELAY is set on each accepted connection (`Bound::start`).
///
/// The tuned do-nothing server (`m2m-authz-tuned floor`, benches/floor.rs) serves with this same
/// function, so the distance between m2m-authz and a do-nothing server under the same tuning
/// stays visible.
pub fn check_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_adaptive_window(Some(false))
        .http2_keepalive_interval(None)
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

/// Everything `serve` needs that can fail, built and checked; no port is bound yet.
pub struct Prepared {
    authorizer: Arc<Authorizer>,
    grpc: ListenAddr,
    grpc_tls: Option<GrpcTls>,
    metadata: MetadataKeys,
    admin: SocketAddr,
    http: Option<SocketAddr>,
    #[cfg(feature = "issuer")]
    issuer: Option<Issuer>,
}

/// Builds and checks everything `serve` needs (see the module docs), binding nothing.
pub async fn prepare(config: &Config, mut settings: Settings) -> Result<Prepared, ServeError> {
    let listen = |field, problem| ServeError::Listen { field, problem };
    let grpc = parse_listen(&config.listen.grpc).map_err(|p| listen(GRPC_FIELD, p))?;
    let grpc_tls = settings.grpc_tls.take();
    if let ListenAddr::Unix(path) = &grpc {
        check_socket_path(path).map_err(|p| listen(GRPC_FIELD, p))?;
        if grpc_tls.is_some() {
            // `ListenConfig::validate` says so first; settings built by hand meet this.
            return Err(listen("listen.tls", "TLS is for a TCP listen.grpc".into()));
        }
    }
    let admin = parse_admin_listen(&config.listen.admin).map_err(|p| listen(ADMIN_FIELD, p))?;
    let http = match &config.listen.http {
        Some(http) => Some(parse_admin_listen(http).map_err(|p| listen(HTTP_FIELD, p))?),
        None => None,
    };
    let authorizer = Arc::new(Authorizer::from_settings(
        config,
        settings,
        Parts::default(),
    )?);
    #[cfg(feature = "issuer")]
    let issuer = match &config.provider.embedded {
        Some(embedded) if config.provider.kind == ProviderKind::Embedded => Some(
            Issuer::open_async(embedded.clone())
                .await
                .map_err(|error| ServeError::Issuer {
                    field: embedded_field(&error),
                    error,
                })?,
        ),
        _ => None,
    };
    Ok(Prepared {
        authorizer,
        grpc,
        grpc_tls,
        metadata: config.dynamic_metadata.keys(),
        admin,
        http,
        #[cfg(feature = "issuer")]
        issuer,
    })
}

/// The `provider.embedded` field an error opening the embedded issuer is about.
#[cfg(feature = "issuer")]
fn embedded_field(e: &IssuerError) -> &'static str {
    match e {
        IssuerError::Store(_) | IssuerError::Keys(_) => "provider.embedded.database",
        _ => "provider.embedded",
    }
}

/// What can be known about a socket path before binding it: the kernel's length limit, a
/// directory to put it in, and nothing but a socket (a stale one, replaced) in the way.
fn check_socket_path(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the socket path is {} bytes long; at most {MAX_SOCKET_PATH} fit",
            path.as_os_str().len()
        ));
    }
    match path.parent().map(std::fs::metadata) {
        Some(Ok(m)) if m.is_dir() => {}
        Some(Ok(_)) => return Err(format!("{} is not a directory", shown_parent(path))),
        Some(Err(e)) => return Err(format!("cannot use directory {}: {e}", shown_parent(path))),
        None => return Err("expected a socket path inside a directory".into()),
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            Err("a file that is not a socket is in the way".into())
        }
        _ => Ok(()),
    }
}

fn shown_parent(path: &Path) -> String {
    path.parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

impl Prepared {
    /// Binds the Check port, then the admin port, the HTTP authorization port, the embedded
    /// issuer's.
    pub async fn bind(self) -> Result<Bound, ServeError> {
        let (grpc, socket) = bind_grpc(&self.grpc).await?;
        let admin = bind_tcp(ADMIN_FIELD, self.admin).await?;
        let http = match self.http {
            Some(addr) => Some(bind_tcp(HTTP_FIELD, addr).await?),
            None => None,
        };
        #[cfg(feature = "issuer")]
        let issuer = match self.issuer {
            Some(issuer) => {
                let listener = bind_tcp(ISSUER_LISTEN_FIELD, issuer.config().listen).await?;
                Some((issuer, listener))
            }
            None => None,
        };
        Ok(Bound {
            authorizer: self.authorizer,
            grpc,
            grpc_tls: self.grpc_tls,
            metadata: self.metadata,
            admin,
            http,
            socket,
            #[cfg(feature = "issuer")]
            issuer,
        })
    }
}

async fn bind_tcp(field: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Bind {
            field,
            addr: addr.to_string(),
            error,
        })
}

/// Binds `listen.grpc`. A stale socket file left by an earlier run is replaced; any other file
/// at that path is an error. For a socket, also what identifies it, to remove it when stopping.
async fn bind_grpc(addr: &ListenAddr) -> Result<(Listener, Option<OurSocket>), ServeError> {
    match addr {
        ListenAddr::Tcp(addr) => Ok((Listener::Tcp(bind_tcp(GRPC_FIELD, *addr).await?), None)),
        ListenAddr::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
            let bind_error = |error| ServeError::Bind {
                field: GRPC_FIELD,
                addr: format!("unix:{}", path.display()),
                error,
            };
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(bind_error(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is in the way",
                    )));
                }
                std::fs::remove_file(path).map_err(bind_error)?;
            }
            let listener = UnixListener::bind(path).map_err(bind_error)?;
            // Owner and group may connect (the process umask usually leaves the group without
            // write permission, which connecting needs): Envoy may run as another user of the
            // same group. Others may not. The socket's directory must be writable only by
            // trusted users (whoever can write there can replace the socket anyway); the check
            // below still refuses to change the mode through anything but our socket.
            let ours = match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => OurSocket {
                    path: path.clone(),
                    dev: m.dev(),
                    ino: m.ino(),
                },
                _ => {
                    return Err(bind_error(std::io::Error::other(
                        "the socket was replaced right after it was bound",
                    )));
                }
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .map_err(bind_error)?;
            Ok((Listener::Unix(listener), Some(ours)))
        }
    }
}

/// The socket file we bound: removed when we stop, unless it is no longer ours.
struct OurSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OurSocket {
    fn remove(&self) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(%error, path = %self.path.display(), "cannot remove the Check socket");
                }
            }
            _ => {}
        }
    }
}

/// Every port bound; nothing served yet.
pub struct Bound {
    authorizer: Arc<Authorizer>,
    grpc: Listener,
    grpc_tls: Option<GrpcTls>,
    metadata: MetadataKeys,
    admin: TcpListener,
    http: Option<TcpListener>,
    socket: Option<OurSocket>,
    #[cfg(feature = "issuer")]
    issuer: Option<(Issuer, TcpListener)>,
}

impl Bound {
    /// The Check port as `host:port` or `unix:/path`.
    pub fn grpc_addr(&self) -> String {
        Bound::addr_of(&self.grpc)
    }

    /// The admin port.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The HTTP authorization port, when `listen.http` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts every server and loop under `supervisor`; they run until it stops them.
    pub async fn start(self, supervisor: &Supervisor) {
        let Bound {
            authorizer,
            grpc,
            grpc_tls,
            metadata,
            admin,
            http,
            socket,
            #[cfg(feature = "issuer")]
            issuer,
        } = self;
        let grpc_addr = Bound::addr_of(&grpc);
        #[cfg(feature = "issuer")]
        if let Some((issuer, listener)) = issuer {
            supervisor.spawn_server(Stage::Background, "embedded issuer", |stop| {
                issuer.serve_on(listener, stop)
            });
        }

        // Health reports SERVING only once every provider's keys are loaded: before that checks
        // would fail. (The reporter starts with the whole server SERVING: say otherwise first.)
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(CHECK_SERVICE, ServingStatus::NotServing)
            .await;
        authorizer.spawn_maintenance(supervisor);
        authorizer.policy().clone().spawn_watcher(supervisor);
        let keys_loaded = authorizer.start_key_refresh(supervisor);
        let mut loaded = keys_loaded.clone();
        supervisor.spawn(Stage::Background, "health", async move {
            if loaded.wait_for(|l| *l).await.is_ok() {
                health.set_service_status("", ServingStatus::Serving).await;
                health
                    .set_service_status(CHECK_SERVICE, ServingStatus::Serving)
                    .await;
                tracing::info!("signing keys loaded; serving");
            }
            // Keep the reporter: the statuses it set stay until the supervisor stops.
            std::future::pending::<()>().await;
        });

        let metrics = Arc::new(Metrics::new(authorizer.clone()));
        let admin_addr = admin
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let state = Arc::new(AdminState {
            metrics: metrics.clone(),
            keys_loaded,
            draining: supervisor.token(Stage::Checks),
            #[cfg(feature = "shared-cache")]
            shared_cache: authorizer.shared_cache().cloned(),
        });
        supervisor.spawn_server(Stage::Background, "admin HTTP server", |stop| {
            crate::admin::serve(admin, state, stop)
        });
        tracing::info!(addr = %admin_addr, "admin HTTP listening (/metrics, /healthz, /readyz, /version)");

        if let Some(http) = http {
            let addr = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let service = Arc::new(
                crate::http_authz::HttpAuthz::new(authorizer.clone()).with_metrics(metrics.clone()),
            );
            // The Check stage: drained with the gRPC port on shutdown.
            supervisor.spawn_server(Stage::Checks, "HTTP authorization server", |stop| {
                crate::http_authz::serve(http, service, stop)
            });
            tracing::info!(%addr, "HTTP authorization listening (/ext_authz/, /forward_auth)");
        }

        let router =
            check_server()
                .add_service(health_service)
                .add_service(AuthorizationServer::new(
                    ExtAuthz::new(authorizer)
                        .with_metrics(metrics)
                        .with_metadata(metadata),
                ));
        let tls = match &grpc_tls {
            None => "off",
            Some(t) if t.requires_client_certs() => "mtls",
            Some(_) => "on",
        };
        match (grpc, grpc_tls) {
            (Listener::Tcp(l), Some(grpc_tls)) => {
                supervisor.spawn_server(Stage::Checks, "gRPC server", |stop| {
                    router.serve_with_incoming_shutdown(grpc_tls.incoming(l), stop)
                })
            }
            (Listener::Tcp(l), None) => {
                supervisor.spawn_server(Stage::Checks, "gRPC server", |stop| {
                    router.serve_with_incoming_shutdown(
                        // Checks are small request/response pairs: without TCP_NODELAY, Nagle's
                        // algorithm and delayed ACKs add tens of milliseconds to some of them.
                        tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                        stop,
                    )
                })
            }
            // `prepare` refuses TLS with a socket.
            (Listener::Unix(l), _) => {
                supervisor.spawn_server(Stage::Checks, "gRPC server", |stop| {
                    router.serve_with_incoming_shutdown(UnixListenerStream::new(l), stop)
                })
            }
        }
        if let Some(socket) = socket {
            supervisor.on_stop("remove the Check socket", move || socket.remove());
        }
        tracing::info!(addr = %grpc_addr, tls, "m2m-authz listening for ext_authz checks");
    }

    fn addr_of(l: &Listener) -> String {
        match l {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_default(),
        }
    }
}
