//! TLS on the Check listener (`listen.tls`), outside a mesh: the real sidecar serves TLS with
//! generated certificates, and a real Envoy is its TLS client (an `UpstreamTlsContext` on the
//! ext_authz cluster, with or without a client certificate).

mod common;

use std::path::{Path, PathBuf};

use common::check::basic;
use common::envoy::{EnvoyOptions, Front};
use common::process::TempDir;
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::sidecar::Sidecar;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The name the server certificate is for, and what Envoy checks it against.
const SERVER_NAME: &str = "m2m-authz.test";

/// A CA with a server and a client certificate, and a client certificate from another CA.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("grpc-tls");
        let ca = make_ca("m2m-authz test CA");
        std::fs::write(dir.join("ca.pem"), ca.0.pem()).unwrap();
        leaf(
            &dir,
            "server",
            &ca.1,
            SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf(
            &dir,
            "client",
            &ca.1,
            "envoy",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let other = make_ca("another CA");
        leaf(
            &dir,
            "stranger",
            &other.1,
            "envoy",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `listen.tls` for the sidecar; with `mtls`, client certificates from our CA are required.
    fn listen_tls(&self, mtls: bool) -> String {
        let mut yaml = format!(
            "  tls:\n    cert_file: {}\n    key_file: {}\n",
            self.path("server.pem").display(),
            self.path("server-key.pem").display()
        );
        if mtls {
            yaml.push_str(&format!(
                "    client_ca_file: {}\n",
                self.path("ca.pem").display()
            ));
        }
        yaml
    }

    /// Envoy's m2m_authz cluster over TLS, verifying the server against our CA and name, with
    /// the client certificate `client` ("client", "stranger") or none.
    fn envoy_tls(&self, client: Option<&str>) -> EnvoyOptions {
        let certificates = match client {
            Some(name) => format!(
                "            tls_certificates:\n              - certificate_chain: {{ filename: {} }}\n                private_key: {{ filename: {} }}\n",
                self.path(&format!("{name}.pem")).display(),
                self.path(&format!("{name}-key.pem")).display()
            ),
            None => String::new(),
        };
        let socket = format!(
            "      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: {SERVER_NAME}
          common_tls_context:
            alpn_protocols: [h2]
{certificates}            validation_context:
              trusted_ca: {{ filename: {ca} }}
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher: {{ exact: {SERVER_NAME} }}
",
            ca = self.path("ca.pem").display()
        );
        EnvoyOptions {
            replacements: vec![(CLUSTER_TEXT.to_owned(), format!("{CLUSTER_TEXT}{socket}"))],
            ..EnvoyOptions::default()
        }
    }
}

/// Where the ext_authz cluster starts in deploy/envoy/envoy.yaml.
const CLUSTER_TEXT: &str = "    - name: m2m_authz\n";

fn make_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

/// Writes `NAME.pem` and `NAME-key.pem` (mode 0600) signed by `ca`.
fn leaf(
    dir: &TempDir,
    name: &str,
    ca: &Issuer<'static, KeyPair>,
    dns: &str,
    usage: ExtendedKeyUsagePurpose,
) {
    let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, dns);
    params.distinguished_name = dn;
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

fn provider_config(provider: &FakeProvider) -> String {
    format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  request_timeout: 2s\n",
        provider.token_url(),
        provider.jwks_url()
    )
}

/// Sends one request with a good credential through `front`: its status, and the `x-user-id`
/// the upstream saw (if the request reached it).
async fn call(front: &Front) -> (u16, Option<String>) {
    let before = front.upstream.request_count();
    let r = common::http_client()
        .get(front.envoy.url("/v1/orders"))
        .header("authorization", basic("client-1", "s3cret-tls"))
        .send()
        .await
        .expect("request through Envoy");
    let seen = (front.upstream.request_count() > before)
        .then(|| front.upstream.last_request())
        .flatten()
        .and_then(|r| r.header("x-user-id").map(str::to_owned));
    (r.status().as_u16(), seen)
}

/// With `client_ca_file`: Envoy with a client certificate from that CA is served; without a
/// certificate, with one from another CA, or in plain text, it is refused in the handshake and
/// Envoy answers its `status_on_error` (503), never letting the request through.
#[tokio::test]
async fn mtls_serves_only_envoy_with_a_client_certificate_from_the_ca() {
    crate::needs!(Envoy);
    let pki = Pki::new();
    let provider = FakeProvider::start().await;
    provider.add_client("client-1", "s3cret-tls", "user-1");
    let sidecar =
        Sidecar::start_with_listen(&pki.listen_tls(true), &provider_config(&provider)).await;

    for (client, tls, expected) in [
        (Some("client"), true, (200, Some("user-1".to_owned()))),
        (None, true, (503, None)),
        (Some("stranger"), true, (503, None)),
        (None, false, (503, None)),
    ] {
        let options = if tls {
            pki.envoy_tls(client)
        } else {
            EnvoyOptions::default()
        };
        let front = Front::start_with(sidecar.addr, options).await;
        let got = call(&front).await;
        assert_eq!(
            got,
            expected,
            "client certificate {client:?}, TLS {tls}\n{}\nEnvoy:\n{}",
            sidecar.logs(),
            front.envoy.stderr_log()
        );
    }

    // A plain-text gRPC client (the kit's health check) gets no answer either.
    assert_eq!(sidecar.health().await, None);
}

/// Without `client_ca_file`: TLS only; Envoy needs no client certificate, plain text is refused.
#[tokio::test]
async fn tls_without_client_ca_serves_envoy_without_a_certificate() {
    crate::needs!(Envoy);
    let pki = Pki::new();
    let provider = FakeProvider::start().await;
    provider.add_client("client-1", "s3cret-tls", "user-1");
    let sidecar =
        Sidecar::start_with_listen(&pki.listen_tls(false), &provider_config(&provider)).await;

    for (options, expected) in [
        (pki.envoy_tls(None), (200, Some("user-1".to_owned()))),
        (EnvoyOptions::default(), (503, None)),
    ] {
        let front = Front::start_with(sidecar.addr, options).await;
        assert_eq!(call(&front).await, expected, "{}", sidecar.logs());
    }
    assert_eq!(sidecar.health().await, None);
}
