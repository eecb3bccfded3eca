//! A token endpoint that misbehaves in every way we could think of: slow to connect, silent,
//! trickling, failing, rate limiting, answering garbage, too much, the wrong type, no token, a
//! token signed by a key it does not publish, a redirect. Each fault maps to its documented
//! outcome (SECURITY.md): a 401 when the provider refuses the credential, our own 429 with a
//! capped `Retry-After` when it rate limits us, and gRPC UNAVAILABLE (Envoy fails closed) for
//! everything else. None is cached as a refusal, and the next normal check is allowed.

mod common;

use common::check::basic_request as basic;

use common::check::check_request;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use common::provider::{AUDIENCE, FakeProvider, ISSUER, TokenOverride};
use common::sidecar::Sidecar;
use futures::Stream;
use futures::future::BoxFuture;
use m2m_authz::authorizer::{Authorizer, Unavailable};
use m2m_authz::decision::Decision;
use m2m_authz::exchange::ExchangeError;
use m2m_authz::proto::envoy::service::auth::v3::check_response::HttpResponse;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;

const TIMEOUTS: &str = "  connect_timeout: 300ms\n  request_timeout: 1s\n";

fn yaml(token_url: &str, jwks_url: &str) -> String {
    format!(
        "provider:\n  kind: oauth2\n  token_url: {token_url}\n  jwks_url: {jwks_url}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_min_refetch_interval: 1h\n{TIMEOUTS}"
    )
}

async fn authorizer_for(token_url: &str, jwks_url: &str) -> Authorizer {
    common::authz::authorizer(&yaml(token_url, jwks_url)).await
}

/// What the caller (through Envoy) would notice.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Allowed(String),
    Denied(u16),
    /// 429 with this `Retry-After`.
    Limited(u64),
    Unavailable,
}

fn outcome(r: Result<Decision, Unavailable>) -> Outcome {
    match r {
        Ok(Decision::Allow(a)) => Outcome::Allowed(
            a.set()
                .iter()
                .find(|(n, _)| &**n == "x-user-id")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
        ),
        Ok(Decision::Deny(d)) if d.status == 429 => Outcome::Limited(d.retry_after.unwrap()),
        Ok(Decision::Deny(d)) => Outcome::Denied(d.status),
        Err(_) => Outcome::Unavailable,
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> TokenOverride {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body: Vec<u8> = body.into();
    Arc::new(move || -> BoxFuture<'static, Response> {
        let mut r = Response::builder().status(status);
        for (k, v) in &headers {
            r = r.header(k, v);
        }
        let response = r.body(Body::from(body.clone())).unwrap();
        Box::pin(async move { response })
    })
}

fn json_response(status: u16, body: serde_json::Value) -> TokenOverride {
    respond(
        status,
        &[("content-type", "application/json")],
        body.to_string(),
    )
}

/// Accepts the request and never answers.
fn silent() -> TokenOverride {
    Arc::new(|| -> BoxFuture<'static, Response> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(Body::empty())
        })
    })
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, std::io::Error>> + Send>>;

/// Sends the status and headers at once, then the body one byte every 100 ms.
fn trickle(body: String) -> TokenOverride {
    Arc::new(move || -> BoxFuture<'static, Response> {
        let bytes: Vec<u8> = body.clone().into_bytes();
        let stream: ByteStream = Box::pin(futures::stream::unfold(0usize, move |i| {
            let bytes = bytes.clone();
            async move {
                if i >= bytes.len() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok(vec![bytes[i]]), i + 1))
            }
        }));
        Box::pin(async move {
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        })
    })
}

/// A chunked body of `total` bytes made on demand; `produced` counts what was generated.
fn endless(total: usize, produced: Arc<AtomicUsize>) -> TokenOverride {
    Arc::new(move || -> BoxFuture<'static, Response> {
        let produced = produced.clone();
        const CHUNK: usize = 64 * 1024;
        let stream: ByteStream = Box::pin(futures::stream::unfold(0usize, move |sent| {
            let produced = produced.clone();
            async move {
                if sent >= total {
                    return None;
                }
                produced.fetch_add(CHUNK, Ordering::SeqCst);
                Some((Ok(vec![b' '; CHUNK]), sent + CHUNK))
            }
        }));
        Box::pin(async move {
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        })
    })
}

/// A body that breaks off half way (the connection is cut).
fn cut_off() -> TokenOverride {
    Arc::new(|| -> BoxFuture<'static, Response> {
        let stream: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(b"{\"access_token\": \"ey".to_vec()),
            Err(std::io::Error::other("connection cut")),
        ]));
        Box::pin(async move {
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_endpoint_fault_has_its_documented_outcome() {
    let p = FakeProvider::start().await;
    let a = authorizer_for(&p.token_url(), &p.jwks_url()).await;
    let produced = Arc::new(AtomicUsize::new(0));
    let redirect_hits = Arc::new(AtomicUsize::new(0));
    let redirect_target = {
        let hits = redirect_hits.clone();
        let app = axum::Router::new().fallback(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { "{}" }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/steal", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    };
    let valid_token_for = |id: &str| p.mint("rsa-a", id, json!({"user_id": format!("user-{id}")}));
    use Outcome::*;
    type Case<'a> = (
        &'static str,
        Box<dyn Fn(&str) -> TokenOverride + 'a>,
        Outcome,
    );
    let cases: Vec<Case> = vec![
        (
            "silent endpoint (request timeout)",
            Box::new(|_| silent()),
            Unavailable,
        ),
        (
            "trickled answer",
            Box::new(|_| trickle(format!("{{\"access_token\":\"{}\"}}", "t".repeat(50)))),
            Unavailable,
        ),
        ("500", Box::new(|_| respond(500, &[], "oops")), Unavailable),
        (
            "502 with an HTML page",
            Box::new(|_| {
                respond(
                    502,
                    &[("content-type", "text/html")],
                    "<html>bad gateway</html>",
                )
            }),
            Unavailable,
        ),
        (
            "503 temporarily_unavailable",
            Box::new(|_| json_response(503, json!({"error": "temporarily_unavailable"}))),
            Unavailable,
        ),
        (
            "503 server_error",
            Box::new(|_| json_response(503, json!({"error": "server_error"}))),
            Unavailable,
        ),
        (
            "429 Retry-After: 7",
            Box::new(|_| respond(429, &[("retry-after", "7")], "")),
            Limited(7),
        ),
        (
            "429 Retry-After: one day (capped)",
            Box::new(|_| respond(429, &[("retry-after", "86400")], "")),
            Limited(60),
        ),
        (
            "429 Retry-After as an HTTP-date in the past",
            Box::new(|_| respond(429, &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], "")),
            Limited(1),
        ),
        (
            "429 without Retry-After",
            Box::new(|_| respond(429, &[], "")),
            Limited(1),
        ),
        (
            "429 whose body says invalid_client",
            Box::new(|_| {
                respond(
                    429,
                    &[("retry-after", "2"), ("content-type", "application/json")],
                    r#"{"error":"invalid_client"}"#,
                )
            }),
            Limited(2),
        ),
        (
            "malformed JSON",
            Box::new(|_| {
                respond(
                    200,
                    &[("content-type", "application/json")],
                    r#"{"access_token": "ey"#,
                )
            }),
            Unavailable,
        ),
        (
            "a JSON array",
            Box::new(|_| json_response(200, json!(["access_token"]))),
            Unavailable,
        ),
        (
            "huge body with Content-Length",
            Box::new(|_| {
                respond(
                    200,
                    &[("content-type", "application/json")],
                    vec![b' '; 300 * 1024],
                )
            }),
            Unavailable,
        ),
        (
            "huge chunked body",
            Box::new({
                let produced = produced.clone();
                move |_| endless(256 << 20, produced.clone())
            }),
            Unavailable,
        ),
        ("body cut off", Box::new(|_| cut_off()), Unavailable),
        (
            "HTML with status 200",
            Box::new(|_| respond(200, &[("content-type", "text/html")], "<html>login</html>")),
            Unavailable,
        ),
        (
            "form-encoded token response",
            Box::new(|_| {
                respond(
                    200,
                    &[("content-type", "application/x-www-form-urlencoded")],
                    "access_token=abc&token_type=bearer",
                )
            }),
            Unavailable,
        ),
        (
            "200 with no access_token",
            Box::new(|_| json_response(200, json!({"token_type": "Bearer"}))),
            Unavailable,
        ),
        (
            "200 with an empty access_token",
            Box::new(|_| json_response(200, json!({"access_token": ""}))),
            Unavailable,
        ),
        (
            "200 with a numeric access_token",
            Box::new(|_| json_response(200, json!({"access_token": 42}))),
            Unavailable,
        ),
        (
            "200 with token_type mac",
            Box::new(move |id| {
                json_response(
                    200,
                    json!({"access_token": valid_token_for(id), "token_type": "mac"}),
                )
            }),
            Unavailable,
        ),
        (
            "200 with a token that is no JWT",
            Box::new(|_| json_response(200, json!({"access_token": "opaque-token"}))),
            Unavailable,
        ),
        (
            "302 to another host (not followed)",
            Box::new({
                let target = redirect_target.clone();
                move |_| respond(302, &[("location", target.as_str())], "")
            }),
            Unavailable,
        ),
        (
            "400 unsupported_grant_type (our configuration)",
            Box::new(|_| json_response(400, json!({"error": "unsupported_grant_type"}))),
            Unavailable,
        ),
        // The caller's fault: denials, for reference.
        (
            "400 invalid_client",
            Box::new(|_| json_response(400, json!({"error": "invalid_client"}))),
            Denied(401),
        ),
        (
            "401 with an HTML page",
            Box::new(|_| respond(401, &[("content-type", "text/html")], "<html>no</html>")),
            Denied(401),
        ),
        (
            "400 invalid_scope",
            Box::new(|_| json_response(400, json!({"error": "invalid_scope"}))),
            Denied(403),
        ),
        // The content type is not what decides: a JSON token response under text/plain is
        // used, as its token is verified like any other.
        (
            "valid token under text/plain",
            Box::new(move |id| {
                respond(
                    200,
                    &[("content-type", "text/plain")],
                    json!({"access_token": valid_token_for(id), "token_type": "Bearer"})
                        .to_string(),
                )
            }),
            Allowed(String::new()),
        ),
    ];
    for (i, (name, fault, want)) in cases.iter().enumerate() {
        let id = format!("client-{i}");
        p.add_client(&id, "s3cret", &format!("user-{id}"));
        p.set_token_override(Some(fault(&id)));
        let started = std::time::Instant::now();
        let got = outcome(a.check(&basic(&id, "s3cret")).await);
        let want = match want {
            Allowed(_) => Allowed(format!("user-{id}")),
            other => other.clone(),
        };
        assert_eq!(got, want, "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: took {:?}, past every configured timeout",
            started.elapsed()
        );
        // The provider recovers: the same credential is exchanged again (a provider fault is
        // never remembered as a refusal) and allowed.
        p.set_token_override(None);
        let again = outcome(a.check(&basic(&id, "s3cret")).await);
        if want == Denied(401) {
            // A refused credential is remembered for negative_ttl (a scope refusal is not).
            assert_eq!(
                again, want,
                "{name}: a refusal is remembered for negative_ttl"
            );
        } else {
            assert_eq!(
                again,
                Allowed(format!("user-{id}")),
                "{name}: after recovery"
            );
        }
    }
    let produced = produced.load(Ordering::SeqCst);
    assert!(
        produced < 32 << 20,
        "the sidecar kept reading a huge body: {produced} bytes generated"
    );
    assert_eq!(
        redirect_hits.load(Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
}

/// The provider issues a token signed by a key its JWKS does not publish: one JWKS refetch, then
/// UNAVAILABLE (a provider fault, not the caller's); fine again once the key is published.
#[tokio::test]
async fn a_token_signed_by_an_unpublished_key_is_unavailable() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let a = authorizer_for(&p.token_url(), &p.jwks_url()).await;
    p.rotate("rsa-b", &["rsa-a"]);
    let r = a.check(&basic("client-1", "s3cret")).await;
    assert!(
        matches!(r, Err(Unavailable::IssuedTokenInvalid(_))),
        "{r:?}"
    );
    assert_eq!(p.jwks_calls(), 2, "one refetch for the unknown kid");
    assert_eq!(a.cache().len(), 0);
    p.rotate("rsa-b", &["rsa-a", "rsa-b"]);
    // The refetch limit (1h here) holds the next refetch back, until the background refresh.
    a.provider().jwks().refresh().await.unwrap();
    assert_eq!(
        outcome(a.check(&basic("client-1", "s3cret")).await),
        Outcome::Allowed("user-1".into())
    );
}

/// A token endpoint whose listen queue is full: connecting times out (`connect_timeout`), and
/// once it accepts again the same sidecar exchanges without a restart. Loopback only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_and_connection_refused() {
    let keys = FakeProvider::start().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue: connections nobody accepts, until one cannot even connect.
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect to a full queue failed at once: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the listen queue never filled");
    let token_url = format!("http://{addr}/oauth2/token");
    let a = authorizer_for(&token_url, &keys.jwks_url()).await;
    let started = std::time::Instant::now();
    let r = a.check(&basic("client-1", "s3cret")).await;
    assert!(
        matches!(
            r,
            Err(Unavailable::Exchange(
                ExchangeError::Timeout | ExchangeError::Connect
            ))
        ),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The endpoint starts accepting (the same listener): no restart needed.
    drop(fillers);
    let p = FakeProvider::start_on(listener);
    p.add_client("client-1", "s3cret", "user-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(probe, Ok(Ok(_))) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never accepted");
    }
    assert_eq!(
        outcome(a.check(&basic("client-1", "s3cret")).await),
        Outcome::Allowed("user-1".into())
    );

    // Nothing listening at all: refused at once, UNAVAILABLE.
    let closed = common::process::free_addr();
    let b = authorizer_for(&format!("http://{closed}/token"), &keys.jwks_url()).await;
    let r = b.check(&basic("client-1", "s3cret")).await;
    assert!(
        matches!(r, Err(Unavailable::Exchange(ExchangeError::Connect))),
        "{r:?}"
    );
}

/// The real binary under the same faults, over gRPC: UNAVAILABLE or 429 (with `Retry-After`) as
/// documented, health stays SERVING, nothing panics, and a normal check is allowed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_process_stays_healthy_through_provider_faults() {
    let p = FakeProvider::start().await;
    let sidecar = Sidecar::start(&yaml(&p.token_url(), &p.jwks_url())).await;
    let mut client = sidecar.client().await;
    let faults: Vec<(&str, TokenOverride, Option<u64>)> = vec![
        ("silent", silent(), None),
        ("500", respond(500, &[], ""), None),
        ("malformed", respond(200, &[], "{"), None),
        ("huge", respond(200, &[], vec![b' '; 300 * 1024]), None),
        ("429", respond(429, &[("retry-after", "9")], ""), Some(9)),
    ];
    for (i, (name, fault, retry_after)) in faults.into_iter().enumerate() {
        let id = format!("client-{i}");
        p.add_client(&id, "s3cret", &format!("user-{i}"));
        p.set_token_override(Some(fault));
        let r = client.check(check_request(&id, "s3cret")).await;
        match retry_after {
            None => {
                let status = r.expect_err(name);
                assert_eq!(
                    status.code(),
                    tonic::Code::Unavailable,
                    "{name}: {status:?}"
                );
                assert!(!status.message().contains("s3cret"));
            }
            Some(secs) => {
                let r = r.unwrap().into_inner();
                let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
                    panic!("{name}: not denied")
                };
                assert_eq!(d.status.unwrap().code, 429);
                let retry = d
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == "retry-after")
                    .map(|h| h.value.clone());
                assert_eq!(retry, Some(secs.to_string()), "{name}");
            }
        }
        p.set_token_override(None);
        let ok = client
            .check(check_request(&id, "s3cret"))
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(ok.http_response, Some(HttpResponse::OkResponse(_))),
            "{name}: not allowed after recovery"
        );
        assert_eq!(
            sidecar.health().await,
            Some(ServingStatus::Serving),
            "{name}"
        );
    }
    let logs = sidecar.full_logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(!logs.contains("s3cret"), "a secret reached the log");
}
