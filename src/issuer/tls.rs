//! HTTPS for the embedded issuer: the certificate it serves (given files, or a local CA and leaf
//! it generates once and keeps beside its database) and a listener that does TLS handshakes off
//! the accept loop.
//!
//! What must hold:
//! - a generated set is made once and reused on every later start; a set that is incomplete,
//!   unreadable or does not parse is an error naming the file, never silently replaced (clients
//!   trust that CA: a new one would break them, and a swapped one must not be accepted);
//! - every file is written to a temporary name and renamed into place, the key with mode 0600
//!   from its `open`; the CA's private key is never written, so the CA signs nothing else;
//! - a key file, given or generated, passes the private-file rules (owner, mode, no symlink);
//! - a client that never finishes its handshake, or a flood of them, cannot stop others being
//!   served: each handshake runs in its own task with [`HANDSHAKE_TIMEOUT`], at most
//!   [`crate::tls_accept::MAX_PENDING_HANDSHAKES`] at once ([`crate::tls_accept`]).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls_accept::Handshakes;

use super::config::TlsConfig;
use super::private_files::{self, PrivateFileError};

/// The generated CA certificate: what clients trust.
pub const GENERATED_CA_FILE: &str = "issuer-tls-ca.pem";
/// The generated leaf certificate, then the CA certificate (the chain served).
pub const GENERATED_CERT_FILE: &str = "issuer-tls-cert.pem";
/// The generated leaf's private key (mode 0600).
pub const GENERATED_KEY_FILE: &str = "issuer-tls-key.pem";
/// The names the generated leaf is valid for.
pub const GENERATED_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
pub use crate::tls_accept::HANDSHAKE_TIMEOUT;
/// How many years a generated certificate is valid for.
const GENERATED_VALID_YEARS: i32 = 10;

const KEY_WHAT: &str = "the issuer's TLS private key";
const CERT_WHAT: &str = "the issuer's TLS certificate";

#[derive(Debug, Error)]
pub enum TlsError {
    /// A configured file (`tls.cert_file`, `tls.key_file`) is missing, unreadable or wrong.
    #[error("issuer config field `{field}` ({}): {message}", path.display())]
    File {
        field: &'static str,
        path: PathBuf,
        message: String,
    },
    /// A generated file is damaged or the set incomplete.
    #[error(
        "the issuer's generated TLS file {} {message}; it is not replaced automatically, since \
         clients trust its CA. To make a new CA (clients must then trust the new one), delete \
         {GENERATED_CA_FILE}, {GENERATED_CERT_FILE} and {GENERATED_KEY_FILE} in {}",
        path.display(),
        dir.display()
    )]
    Generated {
        path: PathBuf,
        dir: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Private(#[from] PrivateFileError),
    #[error("cannot generate the issuer's TLS certificate: {0}")]
    Generate(String),
}

/// The certificate the issuer serves, ready for a listener.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    /// The generated CA file, which clients must trust; `None` for given files.
    pub trust_file: Option<PathBuf>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("trust_file", &self.trust_file)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the configured files, or the generated set in `state_dir` (making it on the first
    /// start). Blocks on file I/O and, the first time, key generation.
    pub fn load(config: &TlsConfig, state_dir: &Path) -> Result<ServerTls, TlsError> {
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_chain(cert).map_err(|message| TlsError::File {
                    field: "tls.cert_file",
                    path: cert.clone(),
                    message,
                })?;
                let key_der = read_key(key).map_err(|e| match e {
                    KeyError::Private(e) => TlsError::File {
                        field: "tls.key_file",
                        path: key.clone(),
                        message: e.to_string(),
                    },
                    KeyError::Bad(message) => TlsError::File {
                        field: "tls.key_file",
                        path: key.clone(),
                        message,
                    },
                })?;
                let config = server_config(chain, key_der).map_err(|message| TlsError::File {
                    field: "tls.key_file",
                    path: key.clone(),
                    message,
                })?;
                Ok(ServerTls {
                    config,
                    trust_file: None,
                })
            }
            _ => load_or_generate(state_dir),
        }
    }

    /// A listener that hands axum only connections whose handshake finished.
    pub fn listener(&self, tcp: TcpListener) -> std::io::Result<TlsListener> {
        TlsListener::new(tcp, TlsAcceptor::from(Arc::clone(&self.config)))
    }
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not belong to the certificate (tls.cert_file's first \
                 certificate)"
                    .to_owned()
            }
            e => format!("not a usable private key: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates in a PEM file, leaf first; an error says what is wrong, without the path.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not a valid PEM certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(chain)
}

enum KeyError {
    Private(PrivateFileError),
    Bad(String),
}

/// A private key from a PEM file that passes the private-file rules.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
    match private_files::check_file(path, KEY_WHAT) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(KeyError::Bad("does not exist".to_owned())),
        Err(e) => return Err(KeyError::Private(e)),
    }
    let bytes = std::fs::read(path).map_err(|e| KeyError::Bad(format!("cannot read it: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        KeyError::Bad(
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1: -----BEGIN … PRIVATE KEY-----)"
                .to_owned(),
        )
    })
}

/// The generated set in `dir`: loaded when all three files are there, made when none is.
fn load_or_generate(dir: &Path) -> Result<ServerTls, TlsError> {
    let ca = dir.join(GENERATED_CA_FILE);
    let cert = dir.join(GENERATED_CERT_FILE);
    let key = dir.join(GENERATED_KEY_FILE);
    let damaged = |path: &Path, message: String| TlsError::Generated {
        path: path.to_owned(),
        dir: dir.to_owned(),
        message,
    };
    let present: Vec<&PathBuf> = [&ca, &cert, &key]
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    if present.is_empty() {
        generate(dir, &ca, &cert, &key)?;
    } else if present.len() < 3 {
        let missing = [&ca, &cert, &key]
            .into_iter()
            .find(|p| !present.contains(p))
            .unwrap_or(&ca);
        return Err(damaged(
            missing,
            "is missing while others of its set are there (an interrupted first start, or a \
             file removed)"
                .to_owned(),
        ));
    }
    read_chain(&ca).map_err(|m| damaged(&ca, m))?;
    let chain = read_chain(&cert).map_err(|m| damaged(&cert, m))?;
    let key_der = read_key(&key).map_err(|e| match e {
        KeyError::Private(e) => TlsError::Private(e),
        KeyError::Bad(m) => damaged(&key, m),
    })?;
    let config = server_config(chain, key_der).map_err(|m| damaged(&key, m))?;
    Ok(ServerTls {
        config,
        trust_file: Some(ca),
    })
}

/// Makes the CA and the leaf and writes them, the CA last: a start interrupted before it finds
/// an incomplete set and says so.
fn generate(dir: &Path, ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let year = current_year();
    let not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    let not_after = rcgen::date_time_ymd(year + GENERATED_VALID_YEARS, 1, 1);

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "m2m-authz embedded issuer local CA");
    ca_params.distinguished_name = name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(failed)?;
    let ca = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = GENERATED_NAMES.iter().map(|n| (*n).to_owned()).collect();
    let mut leaf_params = CertificateParams::new(names).map_err(failed)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "localhost");
    leaf_params.distinguished_name = name;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = not_before;
    leaf_params.not_after = not_after;
    let leaf_key = KeyPair::generate().map_err(failed)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(failed)?;

    let key_pem = leaf_key.serialize_pem();
    write_atomically(dir, key_path, key_pem.as_bytes(), false, KEY_WHAT)?;
    let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
    write_atomically(dir, cert_path, chain.as_bytes(), true, CERT_WHAT)?;
    write_atomically(dir, ca_path, ca_cert.pem().as_bytes(), true, CERT_WHAT)?;
    tracing::info!(ca = %ca_path.display(), "generated the issuer's local TLS CA and certificate");
    Ok(())
}

fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Average Gregorian year; a day off around New Year only moves a bound already a year wide.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Writes `bytes` to a temporary file in `dir` (created 0600), syncs it, makes it world
/// readable when `public`, and renames it to `path`.
fn write_atomically(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    public: bool,
    what: &'static str,
) -> Result<(), TlsError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| PrivateFileError::Io {
            action,
            path,
            source,
        }
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = private_files::create_truncate(&tmp, what)?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    #[cfg(unix)]
    if public {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io("set the mode of", &tmp))?;
    }
    #[cfg(not(unix))]
    let _ = public;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    // The rename itself is durable once the folder is synced; where that is refused (some
    // filesystems), the file is still whole, only perhaps not yet there after a power loss.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// Accepts TCP connections and runs each TLS handshake in its own task, bounded in time and in
/// number ([`crate::tls_accept`]); axum's `serve` receives only finished handshakes. Dropping it
/// stops accepting.
pub struct TlsListener {
    handshakes: Handshakes,
    local: SocketAddr,
}

impl TlsListener {
    fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        Ok(TlsListener {
            handshakes: Handshakes::start(tcp, acceptor, "issuer"),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshakes.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (only if aborted): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::issuer::store::tests::TempDb;

    fn self_signed() -> TlsConfig {
        TlsConfig {
            self_signed: true,
            ..TlsConfig::default()
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generated_once_then_reused() {
        let tmp = TempDb::new();
        let first = ServerTls::load(&self_signed(), &tmp.dir).unwrap();
        let ca = tmp.dir.join(GENERATED_CA_FILE);
        assert_eq!(first.trust_file.as_deref(), Some(ca.as_path()));
        assert_eq!(mode(&tmp.dir.join(GENERATED_KEY_FILE)), 0o600);
        let ca_pem = std::fs::read(&ca).unwrap();
        let cert_pem = std::fs::read(tmp.dir.join(GENERATED_CERT_FILE)).unwrap();
        ServerTls::load(&self_signed(), &tmp.dir).unwrap();
        assert_eq!(std::fs::read(&ca).unwrap(), ca_pem, "the CA was replaced");
        assert_eq!(
            std::fs::read(tmp.dir.join(GENERATED_CERT_FILE)).unwrap(),
            cert_pem
        );
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&tmp.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tls"))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_damaged_or_incomplete_set_is_an_error_naming_the_file_and_is_kept() {
        for (file, damage) in [
            (GENERATED_CA_FILE, Some("")),
            (
                GENERATED_CERT_FILE,
                Some("-----BEGIN CERTIFICATE-----\nAAAA"),
            ),
            (GENERATED_KEY_FILE, Some("not a key\n")),
            (GENERATED_CA_FILE, None),
            (GENERATED_KEY_FILE, None),
        ] {
            let tmp = TempDb::new();
            ServerTls::load(&self_signed(), &tmp.dir).unwrap();
            let path = tmp.dir.join(file);
            match damage {
                Some(text) => std::fs::write(&path, text).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            let err = ServerTls::load(&self_signed(), &tmp.dir).unwrap_err();
            let TlsError::Generated { path: named, .. } = &err else {
                panic!("{file}: {err}");
            };
            assert_eq!(named, &path, "{err}");
            // Nothing was generated over what is there.
            assert_eq!(path.exists(), damage.is_some(), "{file}");
            if let Some(text) = damage {
                assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
            }
        }
    }

    #[test]
    fn a_generated_key_readable_by_others_is_refused() {
        let tmp = TempDb::new();
        ServerTls::load(&self_signed(), &tmp.dir).unwrap();
        let key = tmp.dir.join(GENERATED_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ServerTls::load(&self_signed(), &tmp.dir).unwrap_err();
        assert!(
            matches!(err, TlsError::Private(PrivateFileError::TooOpen { .. })),
            "{err}"
        );
    }

    /// Given files: each problem is an error naming its field.
    #[test]
    fn given_files_are_checked_naming_the_field() {
        let tmp = TempDb::new();
        let made = tmp.dir.join("made");
        private_files::create_dir_all(&made).unwrap();
        ServerTls::load(&self_signed(), &made).unwrap();
        let cert = made.join(GENERATED_CERT_FILE);
        let key = made.join(GENERATED_KEY_FILE);
        let ca = made.join(GENERATED_CA_FILE);
        let given = |c: &Path, k: &Path| TlsConfig {
            cert_file: Some(c.to_owned()),
            key_file: Some(k.to_owned()),
            self_signed: false,
        };
        let loaded = ServerTls::load(&given(&cert, &key), &tmp.dir).unwrap();
        assert!(loaded.trust_file.is_none());

        let other = tmp.dir.join("other");
        private_files::create_dir_all(&other).unwrap();
        ServerTls::load(&self_signed(), &other).unwrap();
        let other_key = other.join(GENERATED_KEY_FILE);
        let open_key = tmp.dir.join("open-key.pem");
        std::fs::copy(&key, &open_key).unwrap();
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let empty = tmp.dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = tmp.dir.join("missing.pem");
        for (config, field) in [
            (given(&missing, &key), "tls.cert_file"),
            (given(&empty, &key), "tls.cert_file"),
            (given(&key, &key), "tls.cert_file"),
            (given(&cert, &missing), "tls.key_file"),
            (given(&cert, &ca), "tls.key_file"),
            (given(&cert, &open_key), "tls.key_file"),
            // A key that is not the certificate's.
            (given(&cert, &other_key), "tls.key_file"),
        ] {
            match ServerTls::load(&config, &tmp.dir) {
                Err(TlsError::File { field: f, .. }) => assert_eq!(f, field, "{config:?}"),
                other => panic!("{config:?}: {other:?}"),
            }
        }
    }
}
