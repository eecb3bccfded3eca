//! The embedded issuer over HTTPS (`tls: {self_signed: true}`), run as its own process: the
//! sidecar's `stytch` profile trusts its generated CA through `provider.ca_file` and verifies its
//! tokens end to end; without `ca_file` the sidecar fails closed and says the certificate is not
//! trusted; a client that never finishes its handshake does not hold up others.
#![cfg(feature = "issuer")]

mod common;

use std::time::{Duration, Instant};

use m2m_authz::proto::envoy::service::auth::v3::check_response::HttpResponse;

use common::check::check_request;
use common::issuer::{IssuerProcess, PROJECT_ID};
use common::sidecar::Sidecar;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_with_ca_file_verifies_tokens_from_the_https_issuer() {
    let issuer = IssuerProcess::start_tls_env(&[]).await;
    assert!(issuer.base_url().starts_with("https://"));
    let stdout = std::fs::read_to_string(issuer.dir.join("stdout.log")).unwrap_or_default();
    let ca = issuer.ca_file();
    for printed in [
        issuer.token_url().as_str(),
        ca.to_str().unwrap(),
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    ] {
        assert!(stdout.contains(printed), "{printed} not printed:\n{stdout}");
    }
    let (id, secret) = issuer.create_client("user-tls-1", "read:orders");
    assert_eq!(issuer.token_status(&id, &secret).await, 200);

    let sidecar = Sidecar::start(&issuer.stytch_provider_yaml()).await;
    let answer = sidecar
        .client()
        .await
        .check(check_request(&id, &secret))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = answer.http_response else {
        panic!("not allowed: {answer:?}\n{}", sidecar.logs())
    };
    let user = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-user-id")
        .map(|h| h.value.clone());
    assert_eq!(user.as_deref(), Some("user-tls-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_without_ca_file_fails_closed_and_says_the_certificate_is_untrusted() {
    let issuer = IssuerProcess::start_tls_env(&[]).await;
    let (id, secret) = issuer.create_client("user-tls-2", "read:orders");
    let yaml = format!(
        "provider:\n  kind: stytch\n  project_id: {PROJECT_ID}\n  base_url: {}\n",
        issuer.base_url()
    );
    let sidecar = Sidecar::start_unready(&yaml).await;
    let err = sidecar
        .client()
        .await
        .check(check_request(&id, &secret))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // The background JWKS fetch logs why, without waiting on any clock of ours: poll the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs = sidecar.full_logs();
        if logs.contains("TLS certificate is not trusted") || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        logs.contains("TLS certificate is not trusted") && logs.contains("provider.ca_file"),
        "no log line says the certificate is untrusted:\n{logs}"
    );
    assert!(!logs.contains(&secret), "the client secret is in the log");
}

/// A client that opens a connection and never sends its ClientHello, and one that sends
/// plain HTTP, do not stop a real client being answered at once; the stalled one is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_or_plain_http_clients_do_not_block_the_https_issuer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let issuer = IssuerProcess::start_tls_env(&[]).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(tokio::net::TcpStream::connect(issuer.addr).await.unwrap());
    }
    let mut plain = tokio::net::TcpStream::connect(issuer.addr).await.unwrap();
    plain
        .write_all(b"GET /v1/sessions/jwks/x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let jwks = issuer.http().get(issuer.jwks_url()).send().await.unwrap();
    assert_eq!(jwks.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    // The plain-HTTP client gets no HTTP answer: its connection is closed (or sent a TLS alert).
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/"), "plain HTTP was answered");
    // A stalled connection is closed by the issuer after the handshake timeout.
    let mut one = stalled.pop().unwrap();
    let closed = tokio::time::timeout(
        m2m_authz::issuer::HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        one.read(&mut [0u8; 16]),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "stalled handshake not closed: {closed:?}"
    );
}
