//! TLS on the Check listener (`listen.tls`), for an Envoy that reaches m2m-authz over a network
//! no mesh encrypts: Check requests carry client secrets.
//!
//! What must hold:
//! - every file is read and the whole TLS setup built when the config is compiled, before any
//!   port opens (`check-config` too); a bad file is a config error naming its field;
//! - the key file passes the private-file rules (owner-only, no symlink), as the issuer's do;
//! - TLS 1.2 or 1.3, ALPN `h2` only (gRPC); with `client_ca_file`, a client without a
//!   certificate chaining to one of its CAs is refused in the handshake;
//! - a client that never finishes its handshake, or a flood of them, cannot stop others being
//!   served: each handshake runs in its own task with [`HANDSHAKE_TIMEOUT`], at most
//!   [`MAX_PENDING_HANDSHAKES`] at once; tonic receives only finished handshakes.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::{ConfigError, GrpcTlsConfig};
use crate::pem;
use crate::private_files;

use crate::tls_accept::Handshakes;
pub use crate::tls_accept::{HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES};
const KEY_WHAT: &str = "the Check listener's TLS private key";

/// The Check listener's TLS, built from `listen.tls`.
#[derive(Clone)]
pub struct GrpcTls {
    config: Arc<rustls::ServerConfig>,
    client_certs: bool,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTls")
            .field("client_certs", &self.client_certs)
            .finish_non_exhaustive()
    }
}

impl GrpcTls {
    /// Reads every file and builds the server's TLS; an error names the `listen.tls` field.
    pub fn load(tls: &GrpcTlsConfig) -> Result<GrpcTls, ConfigError> {
        let cert_field = "listen.tls.cert_file";
        let key_field = "listen.tls.key_file";
        let ca_field = "listen.tls.client_ca_file";
        let chain =
            pem::read_certs(&tls.cert_file).map_err(|p| ConfigError::invalid(cert_field, p))?;
        let key = read_key(&tls.key_file).map_err(|p| ConfigError::invalid(key_field, p))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid("listen.tls", e.to_string()))?;
        let builder = match &tls.client_ca_file {
            Some(path) => {
                let invalid = |p: String| ConfigError::invalid(ca_field, p);
                let mut roots = rustls::RootCertStore::empty();
                for cert in pem::read_certs(path).map_err(invalid)? {
                    roots.add(cert).map_err(|e| {
                        invalid(format!(
                            "{}: not a usable CA certificate: {e}",
                            path.display()
                        ))
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => ConfigError::invalid(
                key_field,
                format!(
                    "{}: the private key does not belong to listen.tls.cert_file's first \
                     certificate",
                    tls.key_file.display()
                ),
            ),
            rustls::Error::InvalidCertificate(e) => ConfigError::invalid(
                cert_field,
                format!("{}: not a usable certificate: {e}", tls.cert_file.display()),
            ),
            e => ConfigError::invalid(
                key_field,
                format!("{}: not a usable private key: {e}", tls.key_file.display()),
            ),
        })?;
        // gRPC is HTTP/2 only: a client that offers only other protocols is refused in the
        // handshake; one that offers none is served (Envoy sends none unless told to).
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(GrpcTls {
            config: Arc::new(config),
            client_certs: tls.client_ca_file.is_some(),
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.client_certs
    }

    /// The connections of `tcp` whose TLS handshake finished, for tonic's
    /// `serve_with_incoming_shutdown`. Dropping it stops accepting.
    pub fn incoming(&self, tcp: TcpListener) -> TlsIncoming {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config));
        TlsIncoming(Handshakes::start(tcp, acceptor, "Check"))
    }
}

/// A private key from a PEM file that passes the private-file rules; the error names the path
/// but never shows what the file holds.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    match private_files::check_file(path, KEY_WHAT) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("{shown} does not exist")),
        Err(e) => return Err(e.to_string()),
    }
    let bytes = pem::read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        format!(
            "{shown} holds no PEM private key (PKCS#8, PKCS#1 or SEC1: -----BEGIN … PRIVATE \
             KEY-----)"
        )
    })
}

/// The finished handshakes of one listener, as tonic's incoming stream.
pub struct TlsIncoming(Handshakes);

impl futures::Stream for TlsIncoming {
    type Item = std::io::Result<TlsConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|accepted| accepted.map(|(tls, _)| Ok(TlsConn(tls))))
    }
}

/// One Check connection after its TLS handshake.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    /// A scratch folder (owner-only), removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "m2m-authz-grpc-tls-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A CA, and a leaf it signed: (ca.pem, cert.pem, key.pem, another key).
    fn files(s: &Scratch) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["m2m-authz.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        (
            s.write("ca.pem", &ca_cert.pem(), 0o644),
            s.write("cert.pem", &leaf.pem(), 0o644),
            s.write("key.pem", &leaf_key.serialize_pem(), 0o600),
            s.write(
                "other-key.pem",
                &KeyPair::generate().unwrap().serialize_pem(),
                0o600,
            ),
        )
    }

    fn config(cert: &Path, key: &Path, ca: Option<&Path>) -> GrpcTlsConfig {
        GrpcTlsConfig {
            cert_file: cert.to_owned(),
            key_file: key.to_owned(),
            client_ca_file: ca.map(Path::to_owned),
        }
    }

    #[test]
    fn good_files_load_with_and_without_client_certificates() {
        let s = Scratch::new();
        let (ca, cert, key, _) = files(&s);
        let tls = GrpcTls::load(&config(&cert, &key, None)).unwrap();
        assert!(!tls.requires_client_certs());
        assert_eq!(tls.config.alpn_protocols, [b"h2".to_vec()]);
        let mtls = GrpcTls::load(&config(&cert, &key, Some(&ca))).unwrap();
        assert!(mtls.requires_client_certs());
    }

    /// Missing, empty, unreadable, wrong-kind, mismatched and too-open files: each is a config
    /// error naming its `listen.tls` field, and none quotes a key.
    #[test]
    fn each_bad_file_is_refused_naming_its_field() {
        let s = Scratch::new();
        let (_, cert, key, other_key) = files(&s);
        let missing = s.0.join("missing.pem");
        let empty = s.write("empty.pem", "", 0o644);
        let garbage = s.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nAAAA", 0o644);
        let open_key = s.write(
            "open-key.pem",
            &std::fs::read_to_string(&key).unwrap(),
            0o640,
        );
        let link = s.0.join("link-key.pem");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let unreadable = s.write("unreadable.pem", "x", 0o000);
        let mut cases = vec![
            (config(&missing, &key, None), "listen.tls.cert_file"),
            (config(&empty, &key, None), "listen.tls.cert_file"),
            (config(&garbage, &key, None), "listen.tls.cert_file"),
            (config(&key, &key, None), "listen.tls.cert_file"),
            (config(&s.0, &key, None), "listen.tls.cert_file"),
            (config(&cert, &missing, None), "listen.tls.key_file"),
            (config(&cert, &cert, None), "listen.tls.key_file"),
            (config(&cert, &empty, None), "listen.tls.key_file"),
            (config(&cert, &other_key, None), "listen.tls.key_file"),
            (config(&cert, &open_key, None), "listen.tls.key_file"),
            (config(&cert, &link, None), "listen.tls.key_file"),
            (config(&cert, &s.0, None), "listen.tls.key_file"),
            (
                config(&cert, &key, Some(&missing)),
                "listen.tls.client_ca_file",
            ),
            (
                config(&cert, &key, Some(&empty)),
                "listen.tls.client_ca_file",
            ),
            (
                config(&cert, &key, Some(&garbage)),
                "listen.tls.client_ca_file",
            ),
            (config(&cert, &key, Some(&key)), "listen.tls.client_ca_file"),
        ];
        // root reads any file: the mode cannot make it unreadable then.
        if std::fs::read(&unreadable).is_err() {
            cases.push((config(&unreadable, &key, None), "listen.tls.cert_file"));
            cases.push((
                config(&cert, &key, Some(&unreadable)),
                "listen.tls.client_ca_file",
            ));
        }
        let key_text = std::fs::read_to_string(&key).unwrap();
        let key_body = key_text.lines().nth(1).unwrap();
        for (c, field) in cases {
            match GrpcTls::load(&c) {
                Err(ConfigError::Invalid { field: f, problem }) => {
                    assert_eq!(f, field, "{c:?}: {problem}");
                    assert!(!problem.contains(key_body), "{problem}");
                }
                other => panic!("{c:?}: {other:?}"),
            }
        }
    }

    /// What the schema alone refuses: TLS on a socket, empty paths, unknown fields; a relative
    /// path is taken from the config file's folder.
    #[test]
    fn the_schema_refuses_tls_on_a_socket_and_empty_paths() {
        for (yaml, field) in [
            (
                "listen: {grpc: 'unix:/tmp/x.sock', tls: {cert_file: c, key_file: k}}",
                "listen.tls",
            ),
            (
                "listen: {tls: {cert_file: '', key_file: k}}",
                "listen.tls.cert_file",
            ),
            (
                "listen: {tls: {cert_file: c, key_file: ''}}",
                "listen.tls.key_file",
            ),
            (
                "listen: {tls: {cert_file: c, key_file: k, client_ca_file: ''}}",
                "listen.tls.client_ca_file",
            ),
            ("listen: {tls: {cert_file: c}}", "listen.tls"),
            (
                "listen: {tls: {cert_file: c, key_file: k, ca_file: x}}",
                "listen.tls.ca_file",
            ),
        ] {
            let yaml = format!(
                "{yaml}\nprovider: {{kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: 'http://a', audience: api}}\n"
            );
            match crate::config::Config::from_yaml(&yaml) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }

        let s = Scratch::new();
        files(&s);
        let path = s.write(
            "config.yaml",
            "listen: {tls: {cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem}}\nprovider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: 'http://a', audience: api}\n",
            0o600,
        );
        let (config, settings) = crate::settings::load(&path).unwrap();
        let tls = config.listen.tls.unwrap();
        assert_eq!(tls.cert_file, s.0.join("cert.pem"));
        assert_eq!(tls.client_ca_file, Some(s.0.join("ca.pem")));
        assert!(settings.grpc_tls.unwrap().requires_client_certs());
    }
}
