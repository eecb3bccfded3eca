//! Abusive and malformed credential headers, table-driven through `Authorizer::check`, and the key
//! ones end to end (raw HTTP/1.1 bytes → a real Envoy → the real sidecar → an echo upstream):
//! each gets a clear denial (never an allow, never a crash), the RFC 6749 §2.3.1 encoding is
//! decoded, and a forged identity header never reaches the upstream in any spelling.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::envoy::Front;
use common::provider::FakeProvider;
use m2m_authz::authorizer::Authorizer;
use m2m_authz::decision::Decision;
use m2m_authz::ext_authz::ExtAuthz;
use m2m_authz::proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use m2m_authz::request::{AuthRequest, Headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn basic(raw: &str) -> String {
    format!("Basic {}", b64(raw.as_bytes()))
}

/// A provider with the clients the cases use.
async fn provider() -> FakeProvider {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.add_client("client-colon", "a:b", "user-colon");
    p.add_client("client:2", "p@ss+w rd", "user-2");
    p
}

async fn authorizer(p: &FakeProvider) -> Authorizer {
    common::authz::authorizer(&p.oauth2_provider_yaml()).await
}

/// Headers as the ext_authz adapter builds them; `None` is a value that was not UTF-8.
fn request(headers: &[(&str, Option<String>)]) -> AuthRequest {
    let mut h = Headers::new();
    for (name, value) in headers {
        h.push(name, value.clone());
    }
    AuthRequest {
        headers: h,
        ..Default::default()
    }
}

fn some(name: &'static str, value: impl Into<String>) -> (&'static str, Option<String>) {
    (name, Some(value.into()))
}

/// What a check came to: the status, and for an allow the x-user-id values it sets.
fn outcome(d: &Decision) -> (u16, Vec<String>) {
    match d {
        Decision::Allow(a) => (
            200,
            a.set()
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-user-id"))
                .map(|(_, v)| v.to_string())
                .collect(),
        ),
        Decision::Deny(d) => (d.status, Vec::new()),
    }
}

#[tokio::test]
async fn abusive_credential_headers_through_the_authorizer() {
    let p = provider().await;
    let a = authorizer(&p).await;
    let good = basic("client-1:s3cret");
    let long_secret = "s".repeat(4100);
    // "Basic " + base64 filling exactly the 4096-byte limit, and one byte over it.
    let at_limit = format!("Basic {}", "A".repeat(4096 - 6));
    let over_limit = format!("Basic {}", "A".repeat(4096 - 5));
    type Case = (
        &'static str,
        Vec<(&'static str, Option<String>)>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        // Accepted spellings.
        (
            "Basic",
            vec![some("authorization", good.clone())],
            200,
            "user-1",
        ),
        (
            "scheme in lower case",
            vec![some(
                "authorization",
                format!("basic {}", b64(b"client-1:s3cret")),
            )],
            200,
            "user-1",
        ),
        (
            "URL-encoded colon in the secret (RFC 6749 §2.3.1)",
            vec![some("authorization", basic("client-colon:a%3Ab"))],
            200,
            "user-colon",
        ),
        (
            "unencoded colon in the secret",
            vec![some("authorization", basic("client-colon:a:b"))],
            200,
            "user-colon",
        ),
        (
            "URL-encoded colon in the id, '+' and '%40' in the secret",
            vec![some("authorization", basic("client%3A2:p%40ss%2Bw+rd"))],
            200,
            "user-2",
        ),
        (
            "Basic and header pair agree",
            vec![
                some("authorization", good.clone()),
                some("x-client-id", "client-1"),
                some("x-client-secret", "s3cret"),
            ],
            200,
            "user-1",
        ),
        (
            "forged x-user-id in every letter case is overwritten",
            vec![
                some("authorization", good.clone()),
                some("x-user-id", "admin"),
                some("X-User-Id", "admin"),
                some("X-USER-ID", "root"),
                some("x-UsEr-iD", "root"),
            ],
            200,
            "user-1",
        ),
        (
            "forged x_user_id (Envoy refuses it before the sidecar)",
            vec![
                some("authorization", good.clone()),
                some("x_user_id", "admin"),
            ],
            200,
            "user-1",
        ),
        // Several Authorization headers: separate entries, or joined with "," by Envoy.
        (
            "two Authorization headers",
            vec![
                some("authorization", good.clone()),
                some("authorization", basic("client-colon:a:b")),
            ],
            400,
            "more than one credential",
        ),
        (
            "the same Authorization header twice",
            vec![
                some("authorization", good.clone()),
                some("authorization", good.clone()),
            ],
            400,
            "more than one credential",
        ),
        (
            "two Basic credentials joined by Envoy",
            vec![some(
                "authorization",
                format!("{good},{}", basic("client-colon:a:b")),
            )],
            400,
            "malformed",
        ),
        (
            "the same Basic twice joined by Envoy",
            vec![some("authorization", format!("{good},{good}"))],
            400,
            "malformed",
        ),
        (
            "two Bearer tokens joined by Envoy",
            vec![some("authorization", "Bearer a.b.c,Bearer d.e.f")],
            400,
            "malformed",
        ),
        (
            "x-client-id twice",
            vec![
                some("x-client-id", "client-1"),
                some("x-client-id", "client-colon"),
                some("x-client-secret", "s3cret"),
            ],
            400,
            "more than one credential",
        ),
        // Broken Basic.
        (
            "Basic without a colon",
            vec![some("authorization", basic("client-1"))],
            400,
            "malformed",
        ),
        (
            "Basic with an empty id",
            vec![some("authorization", basic(":s3cret"))],
            400,
            "empty",
        ),
        (
            "Basic with an empty secret",
            vec![some("authorization", basic("client-1:"))],
            400,
            "empty",
        ),
        (
            "Basic with only a colon",
            vec![some("authorization", basic(":"))],
            400,
            "empty",
        ),
        (
            "Basic with an encoded empty id",
            vec![some("authorization", basic("%20:s3cret"))],
            401,
            "rejected",
        ),
        (
            "Basic, invalid base64",
            vec![some("authorization", "Basic !!!!")],
            400,
            "malformed",
        ),
        (
            "Basic, padding inside",
            vec![some("authorization", "Basic YQ==YQ==")],
            400,
            "malformed",
        ),
        (
            "Basic, no credential",
            vec![some("authorization", "Basic")],
            400,
            "malformed",
        ),
        (
            "Basic, blank credential",
            vec![some("authorization", "Basic    ")],
            400,
            "malformed",
        ),
        (
            "Basic, two credentials",
            vec![some("authorization", format!("{good} {}", b64(b"x:y")))],
            400,
            "malformed",
        ),
        (
            "Basic, decodes to non-UTF-8",
            vec![some(
                "authorization",
                format!("Basic {}", b64(b"\xff\xfe:\xc3\x28")),
            )],
            400,
            "UTF-8",
        ),
        (
            "Basic, percent-encoded non-UTF-8",
            vec![some("authorization", basic("client-1:%FF%FE"))],
            400,
            "UTF-8",
        ),
        (
            "Basic, control character in the id",
            vec![some("authorization", basic("client\u{1}-1:s3cret"))],
            400,
            "malformed",
        ),
        (
            "Basic, CR LF in the encoded id",
            vec![some(
                "authorization",
                basic("client-1%0D%0Ax-user-id: admin:s3cret"),
            )],
            400,
            "malformed",
        ),
        (
            "Authorization not UTF-8",
            vec![("authorization", None)],
            400,
            "UTF-8",
        ),
        (
            "x-client-secret not UTF-8",
            vec![some("x-client-id", "client-1"), ("x-client-secret", None)],
            400,
            "UTF-8",
        ),
        // Credentials that disagree, or come half.
        (
            "Basic and header pair disagree on the secret",
            vec![
                some("authorization", good.clone()),
                some("x-client-id", "client-1"),
                some("x-client-secret", "other"),
            ],
            400,
            "more than one credential",
        ),
        (
            "Basic and header pair name different clients",
            vec![
                some("authorization", good.clone()),
                some("x-client-id", "client-colon"),
                some("x-client-secret", "a:b"),
            ],
            400,
            "more than one credential",
        ),
        (
            "Bearer and header pair",
            vec![
                some("authorization", "Bearer a.b.c"),
                some("x-client-id", "client-1"),
                some("x-client-secret", "s3cret"),
            ],
            400,
            "more than one credential",
        ),
        (
            "id header without secret",
            vec![some("x-client-id", "client-1")],
            400,
            "without",
        ),
        (
            "secret header without id",
            vec![some("x-client-secret", "s3cret")],
            400,
            "without",
        ),
        (
            "blank header pair",
            vec![some("x-client-id", " "), some("x-client-secret", "\t")],
            400,
            "empty",
        ),
        // The header pair refuses control characters in the id, as Basic does.
        (
            "header pair, control character in the id",
            vec![
                some("x-client-id", "client\u{1}-1"),
                some("x-client-secret", "s3cret"),
            ],
            400,
            "control character",
        ),
        (
            "header pair, tab inside the id",
            vec![
                some("x-client-id", "client\t-1"),
                some("x-client-secret", "s3cret"),
            ],
            400,
            "control character",
        ),
        (
            "header pair, DEL in the id",
            vec![
                some("x-client-id", "client-1\u{7f}"),
                some("x-client-secret", "s3cret"),
            ],
            400,
            "control character",
        ),
        (
            "header pair, CR LF in the id",
            vec![
                some("x-client-id", "client-1\r\nx-user-id: admin"),
                some("x-client-secret", "s3cret"),
            ],
            400,
            "control character",
        ),
        // Oversized values: refused unread; exactly at the limit is read (and refused by the
        // provider as an unknown client).
        (
            "Authorization at the limit",
            vec![some("authorization", at_limit)],
            400,
            "malformed",
        ),
        (
            "Authorization over the limit",
            vec![some("authorization", over_limit)],
            400,
            "too long",
        ),
        (
            "Bearer over the limit",
            vec![some(
                "authorization",
                format!("Bearer {}", "a".repeat(5000)),
            )],
            400,
            "too long",
        ),
        (
            "x-client-secret over the limit",
            vec![
                some("x-client-id", "client-1"),
                some("x-client-secret", long_secret.clone()),
            ],
            400,
            "too long",
        ),
        (
            "x-client-id over the limit",
            vec![
                some("x-client-id", long_secret.clone()),
                some("x-client-secret", "s3cret"),
            ],
            400,
            "too long",
        ),
        (
            "1 MB Authorization",
            vec![some(
                "authorization",
                format!("Basic {}", "A".repeat(1 << 20)),
            )],
            400,
            "too long",
        ),
        // Wrong, missing, unsupported.
        (
            "wrong secret",
            vec![some("authorization", basic("client-1:wrong"))],
            401,
            "rejected",
        ),
        (
            "no credential, forged x-user-id",
            vec![some("x-user-id", "admin"), some("X-USER-ID", "admin")],
            401,
            "required",
        ),
        (
            "Digest scheme",
            vec![some("authorization", "Digest username=\"a\"")],
            401,
            "scheme",
        ),
        (
            "scheme only",
            vec![some("authorization", "Negotiate")],
            401,
            "scheme",
        ),
        (
            "empty Authorization",
            vec![some("authorization", "")],
            401,
            "scheme",
        ),
    ];
    for (name, headers, status, expect) in &cases {
        let d = a.check(&request(headers)).await.unwrap_or_else(|e| {
            panic!("{name}: unavailable ({e}); a malformed header is never a provider problem")
        });
        let (got, users) = outcome(&d);
        assert_eq!(got, *status, "{name}: {d:?}");
        match &d {
            Decision::Allow(_) => {
                assert_eq!(
                    users,
                    vec![expect.to_string()],
                    "{name}: exactly one x-user-id"
                )
            }
            Decision::Deny(deny) => {
                let body: serde_json::Value = serde_json::from_str(&deny.body).unwrap();
                let text = body["error_description"].as_str().unwrap();
                assert!(text.contains(expect), "{name}: {text:?} lacks {expect:?}");
                assert!(
                    !deny.body.contains("s3cret") && !deny.body.contains("admin"),
                    "{name}: the deny body echoes the request"
                );
                if *status == 400 {
                    let challenge = deny.challenge.as_deref().unwrap();
                    assert!(
                        challenge.contains("error=\"invalid_request\""),
                        "{name}: {challenge}"
                    );
                }
            }
        }
    }
    assert!(cases.len() >= 45);
}

/// Raw HTTP/1.1 to Envoy, so header names keep their letter case, repeat, carry underscores or
/// non-UTF-8 bytes exactly as written. Returns the status and body.
async fn raw_request(addr: std::net::SocketAddr, header_lines: &[&[u8]]) -> (u16, String) {
    let mut req = b"GET /v1/orders HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n".to_vec();
    for line in header_lines {
        req.extend_from_slice(line);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(&req).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("Envoy answered within 10 s");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn line(name: &str, value: &str) -> Vec<u8> {
    format!("{name}: {value}").into_bytes()
}

#[tokio::test]
async fn abusive_headers_end_to_end_through_envoy() {
    crate::needs!(Envoy);
    let p = provider().await;
    let (sidecar, Front { envoy, upstream }) =
        common::envoy::stack(&p.oauth2_provider_yaml()).await;
    let addr = envoy.listener_addr();
    let good = basic("client-1:s3cret");

    // Forged identity in every letter case, beside a good credential: the upstream sees one
    // x-user-id, the verified one.
    let (status, body) = raw_request(
        addr,
        &[
            &line("Authorization", &good),
            &line("x-user-id", "admin"),
            &line("X-User-Id", "admin"),
            &line("X-USER-ID", "root"),
            &line("x-UsEr-iD", "root"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", sidecar.logs());
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header_values("x-user-id"), ["user-1"]);
    assert!(seen.header_values("authorization").is_empty());

    // The RFC 6749 §2.3.1 encoding of a colon in the secret is decoded.
    let (status, _) = raw_request(
        addr,
        &[&line("Authorization", &basic("client-colon:a%3Ab"))],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.last_request().unwrap().header_values("x-user-id"),
        ["user-colon"]
    );

    // Everything below is refused before the upstream.
    let before = upstream.request_count();
    let non_utf8: Vec<u8> = [b"Authorization: Basic ".as_slice(), b"\xc3\x28\xff"].concat();
    let over = format!("Basic {}", b64("x".repeat(4000).as_bytes()));
    /// A named case: the header lines sent, and the statuses acceptable.
    type Case = (&'static str, Vec<Vec<u8>>, &'static [u16]);
    let cases: Vec<Case> = vec![
        (
            "x_user_id with a good credential",
            vec![line("Authorization", &good), line("x_user_id", "admin")],
            &[400],
        ),
        (
            "X_User_Id with a good credential",
            vec![line("Authorization", &good), line("X_User_Id", "admin")],
            &[400],
        ),
        (
            "two Authorization headers",
            vec![line("Authorization", &good), line("authorization", &good)],
            &[400],
        ),
        (
            "two different Authorization headers",
            vec![
                line("Authorization", &good),
                line("Authorization", &basic("client-colon:a:b")),
            ],
            &[400],
        ),
        (
            "Basic without a colon",
            vec![line("Authorization", &basic("client-1"))],
            &[400],
        ),
        (
            "Basic with an empty secret",
            vec![line("Authorization", &basic("client-1:"))],
            &[400],
        ),
        (
            "Basic, invalid base64",
            vec![line("Authorization", "Basic !!!!")],
            &[400],
        ),
        (
            "Basic and header pair disagree",
            vec![
                line("Authorization", &good),
                line("X-Client-Id", "client-1"),
                line("X-Client-Secret", "other"),
            ],
            &[400],
        ),
        (
            "oversized Authorization",
            vec![line("Authorization", &over)],
            &[400],
        ),
        // Envoy passes the line on with the bytes replaced; the sidecar refuses it.
        ("non-UTF-8 Authorization", vec![non_utf8], &[400]),
        (
            "forged x-user-id alone",
            vec![line("X-User-Id", "admin")],
            &[401],
        ),
        (
            "wrong secret",
            vec![line("Authorization", &basic("client-1:wrong"))],
            &[401],
        ),
    ];
    for (name, lines, statuses) in &cases {
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let (status, body) = raw_request(addr, &refs).await;
        assert!(
            statuses.contains(&status),
            "{name}: {status} {body}\n{}",
            sidecar.logs()
        );
        assert!(!body.contains("s3cret"), "{name}: {body}");
    }
    assert_eq!(
        upstream.request_count(),
        before,
        "a refused request reached the upstream"
    );
    // Still healthy after all of it.
    let (status, _) = raw_request(addr, &[&line("Authorization", &good)]).await;
    assert_eq!(status, 200);
    assert!(!sidecar.full_logs().contains("panicked"));
    assert!(
        !sidecar.full_logs().contains("s3cret"),
        "a secret reached the log"
    );
}

/// Records every CheckRequest Envoy sends, and answers with the real handler.
struct Recorder {
    inner: ExtAuthz,
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

#[tonic::async_trait]
impl Authorization for Recorder {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.seen.lock().unwrap().push(request.get_ref().clone());
        self.inner.check(request).await
    }
}

/// What Envoy actually sends for repeated and forged headers, pinned down: with the shipped
/// config (`encode_raw_headers` off) two `Authorization` lines arrive as one value joined with
/// ",", and only the allowed credential headers are sent at all.
#[tokio::test]
async fn what_envoy_sends_for_repeated_headers() {
    crate::needs!(Envoy);
    let p = provider().await;
    let authorizer = Arc::new(authorizer(&p).await);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        inner: ExtAuthz::new(authorizer),
        seen: seen.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(recorder))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let Front { envoy, upstream } = Front::start(grpc).await;
    let good = basic("client-1:s3cret");
    let other = basic("client-colon:a:b");
    let (status, _) = raw_request(
        envoy.listener_addr(),
        &[
            &line("Authorization", &good),
            &line("AUTHORIZATION", &other),
            &line("X-User-Id", "admin"),
            &line("x-client-id", "client-1"),
            &line("x-client-id", "client-2"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let http = requests[0]
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .unwrap();
    assert_eq!(
        http.headers.get("authorization").map(String::as_str),
        Some(format!("{good},{other}").as_str()),
        "{:?}",
        http.headers
    );
    assert_eq!(
        http.headers.get("x-client-id").map(String::as_str),
        Some("client-1,client-2")
    );
    assert!(
        !http.headers.contains_key("x-user-id"),
        "only the allowed headers are sent: {:?}",
        http.headers.keys()
    );
    assert_eq!(upstream.request_count(), 0);
    server.abort();
}
