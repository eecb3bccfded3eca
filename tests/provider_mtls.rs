//! Mutual TLS to the provider (`provider.client_cert` / `provider.client_key`, RFC 8705
//! endpoints): the real sidecar against a TLS token and JWKS endpoint, behind a generated CA,
//! that demands a client certificate from that CA. With the certificate the exchange works and
//! the check is allowed; without it (or with one from another CA) the check fails UNAVAILABLE
//! and the log says the provider refused the TLS handshake — for the token endpoint, the
//! discovery document and the introspection endpoint alike. Bad files are config errors that
//! name the field.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::check::check_request;
use common::process::TempDir;
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::sidecar::Sidecar;
use m2m_authz::config::Config;
use m2m_authz::proto::envoy::service::auth::v3::check_response::HttpResponse;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn make_ca(dir: &TempDir, name: &str) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(&format!("{name}.pem")), cert.pem()).unwrap();
    Issuer::new(params, key)
}

/// Writes `NAME.pem` and `NAME-key.pem` (mode 0600) signed by `ca`.
fn leaf(dir: &TempDir, name: &str, ca: &Issuer<'static, KeyPair>, usage: ExtendedKeyUsagePurpose) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(&format!("{name}.pem")), cert.pem()).unwrap();
    write_private(&dir.join(&format!("{name}-key.pem")), &key.serialize_pem());
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The test PKI: `ca.pem` signs `server` and `client`; `other-ca.pem` signs `stranger`.
fn pki() -> TempDir {
    let dir = TempDir::new("provider-mtls");
    let ca = make_ca(&dir, "ca");
    leaf(&dir, "server", &ca, ExtendedKeyUsagePurpose::ServerAuth);
    leaf(&dir, "client", &ca, ExtendedKeyUsagePurpose::ClientAuth);
    let other = make_ca(&dir, "other-ca");
    leaf(
        &dir,
        "stranger",
        &other,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    dir
}

/// A TLS front for `backend` on a free loopback port that requires a client certificate
/// signed by `dir`'s `ca.pem`, then relays the plain bytes.
async fn mtls_front(dir: &TempDir, backend: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client without an accepted certificate ends here, with the TLS alert sent.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn config(front: SocketAddr, dir: &TempDir, client: Option<&str>) -> String {
    let mut yaml = format!(
        "provider:\n  kind: oauth2\n  token_url: https://{front}/oauth2/token\n  jwks_url: https://{front}/jwks\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  request_timeout: 3s\n  ca_file: {}\n",
        dir.join("ca.pem").display()
    );
    if let Some(name) = client {
        yaml.push_str(&format!(
            "  client_cert: {}\n  client_key: {}\n",
            dir.join(&format!("{name}.pem")).display(),
            dir.join(&format!("{name}-key.pem")).display()
        ));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_demanding_a_client_certificate_gets_ours_and_refuses_others() {
    let dir = pki();
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret-mtls", "user-1");
    let front = mtls_front(&dir, p.addr).await;

    // With the certificate: the JWKS loads (the sidecar becomes ready) and the exchange works.
    let s = Sidecar::start(&config(front, &dir, Some("client"))).await;
    let r = s
        .client()
        .await
        .check(check_request("client-1", "s3cret-mtls"))
        .await
        .expect("check")
        .into_inner();
    assert!(
        matches!(r.http_response, Some(HttpResponse::OkResponse(_))),
        "{r:?}"
    );
    assert_eq!(p.token_calls(), 1);
    assert!(p.jwks_calls() >= 1);

    // Without one, or with one from another CA: UNAVAILABLE, and the log says why.
    for client in [None, Some("stranger")] {
        let s = Sidecar::start_unready(&config(front, &dir, client)).await;
        let before = p.token_calls();
        let err = s
            .client()
            .await
            .check(check_request("client-1", "s3cret-mtls"))
            .await
            .expect_err("allowed without an accepted client certificate");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{client:?}: {err}");
        assert_eq!(p.token_calls(), before, "the provider saw the request");
        let logs = s.full_logs();
        assert!(
            logs.contains("the token endpoint refused the TLS handshake"),
            "{client:?}: {logs}"
        );
        assert!(!logs.contains("s3cret-mtls"), "a secret in the log");
        assert!(!logs.contains("PRIVATE KEY"), "a key in the log");
    }
}

/// The provider's discovery document and its introspection endpoint behind the same
/// certificate-demanding front, reached without a client certificate: the log says the TLS
/// handshake was refused, for each, as it does for the token and JWKS endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_introspection_refused_for_want_of_a_client_certificate_say_so() {
    let dir = pki();
    let p = FakeProvider::start().await;
    let front = mtls_front(&dir, p.addr).await;
    let ca = dir.join("ca.pem");

    let discovered = Sidecar::start_unready(&format!(
        "provider:\n  kind: oauth2\n  issuer: https://{front}\n  audience: {AUDIENCE}\n  \
         request_timeout: 3s\n  ca_file: {}\n",
        ca.display()
    ))
    .await;
    let want = format!(
        "the discovery document https://{front}/.well-known/openid-configuration: the server \
         refused the TLS handshake"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !discovered.full_logs().contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {want:?} in the log:\n{}",
            discovered.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let introspecting = Sidecar::start(&format!(
        "{}  ca_file: {}\n  introspection:\n    url: https://{front}/introspect\n    \
         client_id: rs\n    client_secret: 'rs-s3cret-introspection'\n",
        p.oauth2_provider_yaml(),
        ca.display()
    ))
    .await;
    let err = introspecting
        .client()
        .await
        .check(
            common::check::Check::get("/")
                .bearer("an-opaque-access-token")
                .build(),
        )
        .await
        .expect_err("an opaque token allowed without its introspection");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let logs = introspecting.full_logs();
    assert!(
        logs.contains("the introspection endpoint refused the TLS handshake"),
        "{logs}"
    );
    for secret in [
        "rs-s3cret-introspection",
        "an-opaque-access-token",
        "PRIVATE KEY",
    ] {
        assert!(!logs.contains(secret), "{secret:?} in the log");
    }
}

#[test]
fn client_cert_and_key_are_checked_whole_at_load() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = pki();
    let front: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let base = config(front, &dir, None);
    let cert = dir.join("client.pem");
    let key = dir.join("client-key.pem");
    let open_key = dir.join("open-key.pem");
    std::fs::copy(&key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.join("link-key.pem");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let empty = dir.join("empty.pem");
    write_private(&empty, "");
    let stranger_key = dir.join("stranger-key.pem");
    let c = |cert: &Path, key: &Path| {
        format!(
            "{base}  client_cert: {}\n  client_key: {}\n",
            cert.display(),
            key.display()
        )
    };
    Config::from_yaml(&c(&cert, &key)).unwrap_or_else(|e| panic!("{e}"));
    for (yaml, field) in [
        (
            format!("{base}  client_cert: {}\n", cert.display()),
            "provider.client_key",
        ),
        (
            format!("{base}  client_key: {}\n", key.display()),
            "provider.client_cert",
        ),
        (c(&dir.join("missing.pem"), &key), "provider.client_cert"),
        (c(&empty, &key), "provider.client_cert"),
        (
            c(&cert, &dir.join("missing-key.pem")),
            "provider.client_key",
        ),
        (c(&cert, &open_key), "provider.client_key"),
        (c(&cert, &link), "provider.client_key"),
        (c(&cert, &empty), "provider.client_key"),
        (c(&cert, &cert), "provider.client_key"),
        (c(&cert, &stranger_key), "provider.client_key"),
    ] {
        let e = Config::from_yaml(&yaml).expect_err(&yaml).to_string();
        assert!(e.starts_with(field), "{yaml}\n=> {e}");
        assert!(!e.contains("PRIVATE KEY-----\n"), "key material in {e}");
    }
}
