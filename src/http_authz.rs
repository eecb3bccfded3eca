//! The HTTP authorization edge (`listen.http`): the same decision as gRPC Check, asked over plain
//! HTTP by proxies that cannot speak Envoy's gRPC API. Two modes, chosen by the request path and
//! never by a header a caller could send:
//!
//! - **Envoy HTTP ext_authz** under [`EXT_AUTHZ_PREFIX`] (Envoy's `http_service.path_prefix`):
//!   Envoy sends the original method, the prefix followed by the original path (with its query),
//!   and the original Host. Allow is 200 with the identity headers (for
//!   `allowed_upstream_headers`) and `x-envoy-auth-headers-to-remove` naming the credential and
//!   forged identity headers; a denial carries the status, `WWW-Authenticate`, `Retry-After` and
//!   JSON body it would carry over gRPC.
//! - **Forward auth** at [`FORWARD_AUTH_PATH`] (nginx `auth_request`, Caddy `forward_auth`,
//!   Traefik `ForwardAuth`): the original request is described by headers the proxy sets —
//!   `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik, Caddy) or `X-Original-Method`/
//!   `X-Original-URI` (nginx), the host by `X-Forwarded-Host`, else `Host`. The proxy must
//!   overwrite them: a caller's own copy would otherwise choose the rule. Both spellings of one
//!   field, or two values of one header, are refused as ambiguous; no original URI is refused,
//!   never answered for the subrequest's own path. Allow is 200 with the identity headers in the
//!   response; a denial has its true status (nginx turns what `auth_request` cannot pass — 400,
//!   429, 503 — into the caller's status with `error_page`, see deploy/nginx/).
//!
//! Any other path is 404. The request body is never read. An infrastructure failure (or a
//! contained panic) is 503 with `Retry-After`, which the proxy answers as an error: it fails
//! closed unless its operator chose otherwise.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::answer::{self, Edge};
use crate::authorizer::Authorizer;
use crate::decision::{Allow, Decision, Deny};
use crate::defaults::AUTHORIZATION;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::request::{AuthRequest, Headers};

/// Envoy HTTP ext_authz's `path_prefix`: the original path follows it.
pub const EXT_AUTHZ_PREFIX: &str = "/ext_authz";
/// The forward-auth endpoint.
pub const FORWARD_AUTH_PATH: &str = "/forward_auth";
/// Envoy's response header naming request headers to strip before the upstream.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

const X_FORWARDED_METHOD: &str = "x-forwarded-method";
const X_FORWARDED_URI: &str = "x-forwarded-uri";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_ORIGINAL_METHOD: &str = "x-original-method";
const X_ORIGINAL_URI: &str = "x-original-uri";

/// How long a client may take to send a request's headers (HTTP/1.1): a slow sender is cut.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most header bytes one request may carry (both HTTP/1.1's read buffer and h2's list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header lines one HTTP/1.1 request may carry.
pub const MAX_HEADERS: usize = 100;
/// The most body bytes read (and discarded) to keep a connection reusable.
pub const MAX_DRAINED_BODY: usize = 64 * 1024;
/// The longest a body is read for before the answer is sent anyway.
const BODY_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// An idle h2 connection is pinged this often, and closed when a ping goes unanswered as long.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// What the handlers share.
pub struct HttpAuthz {
    authorizer: Arc<Authorizer>,
    metrics: Option<Arc<Metrics>>,
}

impl HttpAuthz {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        HttpAuthz {
            authorizer,
            metrics: None,
        }
    }

    /// Counts every answered check (and its latency) in `metrics`, as gRPC Check does.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Answers one request; every path, mode and failure ends in a response.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let Some(mode) = Mode::of(request.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        let answered = answer::contained(&self.authorizer, self.answer(mode, request, started));
        match answered.await {
            Some(response) => response,
            None => unavailable(),
        }
    }

    async fn answer(&self, mode: Mode, request: Request<Body>, started: Instant) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let response = self.decide(mode, &parts, started).await;
        drain(body).await;
        response
    }

    async fn decide(
        &self,
        mode: Mode,
        parts: &axum::http::request::Parts,
        started: Instant,
    ) -> Response<Body> {
        let built = match mode {
            Mode::Envoy => Ok(envoy_request(parts)),
            Mode::ForwardAuth => forward_auth_request(parts.uri.authority(), &parts.headers),
        };
        let auth = match built {
            Ok(auth) => auth,
            Err(deny) => {
                // Refused at the edge (a proxy that does not describe the original request):
                // counted like any other denial.
                if let Some(metrics) = &self.metrics {
                    let decision = Ok(Decision::Deny(deny.clone()));
                    metrics.record_check(&Outcome::of(&decision), started.elapsed());
                }
                return denied(&deny);
            }
        };
        let metrics = self.metrics.as_deref();
        match answer::decide(&self.authorizer, metrics, Edge::Http, &auth, started).await {
            Ok(Decision::Allow(allow)) => allowed(&allow, mode),
            Ok(Decision::Deny(deny)) => denied(&deny),
            Err(_) => unavailable(),
        }
    }
}

/// Reads and discards a body the proxy sent (it is never looked at), up to
/// [`MAX_DRAINED_BODY`] and [`BODY_DRAIN_TIMEOUT`]: the connection stays reusable for a small
/// body, and a larger or slower one only costs its own connection (closed after the answer).
async fn drain(body: Body) {
    let _ = tokio::time::timeout(
        BODY_DRAIN_TIMEOUT,
        axum::body::to_bytes(body, MAX_DRAINED_BODY),
    )
    .await;
}

/// Which protocol a request speaks, by its path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Envoy,
    ForwardAuth,
}

impl Mode {
    fn of(path: &str) -> Option<Mode> {
        if path == FORWARD_AUTH_PATH {
            Some(Mode::ForwardAuth)
        } else if path
            .strip_prefix(EXT_AUTHZ_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            Some(Mode::Envoy)
        } else {
            None
        }
    }
}

/// Every header of the request, as the core sees headers (a non-UTF-8 value kept as `None`).
fn headers_of(map: &HeaderMap) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in map {
        headers.push(name.as_str(), value.to_str().ok().map(str::to_owned));
    }
    headers
}

/// Envoy's HTTP authorization request: the original method and Host are the request's own, the
/// original path (and query) follows the prefix.
fn envoy_request(parts: &axum::http::request::Parts) -> AuthRequest {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_default();
    let path = path_and_query
        .strip_prefix(EXT_AUTHZ_PREFIX)
        .unwrap_or(path_and_query);
    // h2 carries the host as `:authority` (in the URI); HTTP/1.1 as Host.
    let host = match parts.uri.authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    };
    AuthRequest {
        method: parts.method.as_str().to_owned(),
        host,
        path: path.to_owned(),
        headers: headers_of(&parts.headers),
        context: Default::default(),
    }
}

/// The forward-auth request: the original request as the proxy's headers describe it.
/// `authority` is the h2 `:authority` of the authorization request itself: with `Host`, the
/// fallback when the proxy sends no `X-Forwarded-Host`.
fn forward_auth_request(
    authority: Option<&axum::http::uri::Authority>,
    headers: &HeaderMap,
) -> Result<AuthRequest, Deny> {
    let uri = one_of(headers, X_FORWARDED_URI, X_ORIGINAL_URI)?.ok_or_else(|| {
        edge_deny(
            "no_original_uri",
            "the proxy did not send the original request's URI (X-Forwarded-Uri or X-Original-URI)",
        )
    })?;
    let method = one_of(headers, X_FORWARDED_METHOD, X_ORIGINAL_METHOD)?.ok_or_else(|| {
        edge_deny(
            "no_original_method",
            "the proxy did not send the original request's method (X-Forwarded-Method or X-Original-Method)",
        )
    })?;
    let host = match single(headers, X_FORWARDED_HOST)? {
        Some(host) => host,
        None => match authority {
            Some(authority) => authority.as_str().to_owned(),
            None => single(headers, header::HOST.as_str())?.unwrap_or_default(),
        },
    };
    Ok(AuthRequest {
        method,
        host,
        path: uri,
        headers: headers_of(headers),
        context: Default::default(),
    })
}

/// The value of `a` or of `b`; both present is ambiguous (one was not overwritten by the proxy).
fn one_of(headers: &HeaderMap, a: &str, b: &str) -> Result<Option<String>, Deny> {
    match (single(headers, a)?, single(headers, b)?) {
        (Some(_), Some(_)) => Err(edge_deny(
            "ambiguous_original_request",
            "the original request is described twice (X-Forwarded-* and X-Original-*)",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// The one value of `name`: repeated or not text is refused.
fn single(headers: &HeaderMap, name: &str) -> Result<Option<String>, Deny> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(edge_deny(
            "ambiguous_original_request",
            "a header describing the original request was sent more than once",
        ));
    }
    match value.to_str() {
        Ok(v) if !v.is_empty() => Ok(Some(v.to_owned())),
        Ok(_) => Ok(None),
        Err(_) => Err(edge_deny(
            "malformed_original_request",
            "a header describing the original request is not text",
        )),
    }
}

/// A refusal of a request the proxy did not describe usably: the caller's proxy is misconfigured
/// or the caller tampered with it. 400, never the subrequest's own path checked instead.
fn edge_deny(reason: &'static str, description: &str) -> Deny {
    Deny {
        status: 400,
        challenge: None,
        retry_after: None,
        body: serde_json::json!({ "error": "invalid_request", "error_description": description })
            .to_string(),
        reason,
        rule: None,
    }
}

fn response(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = response(status, Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    // Identity header names and values were validated when the identity was built; one that
    // still cannot be sent is left out rather than failing the answer.
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}

fn allowed(allow: &Allow, mode: Mode) -> Response<Body> {
    let mut r = response(StatusCode::OK, Body::empty());
    let headers = r.headers_mut();
    for (name, value) in allow.set() {
        insert(headers, name, value);
    }
    if let Some(token) = &allow.forward {
        insert(
            headers,
            AUTHORIZATION,
            &format!("Bearer {}", token.expose()),
        );
    }
    if mode == Mode::Envoy {
        let remove: Vec<&str> = allow
            .remove()
            .iter()
            .map(|h| &**h)
            .filter(|h| !(allow.forward.is_some() && *h == AUTHORIZATION))
            .collect();
        if !remove.is_empty() {
            insert(headers, HEADERS_TO_REMOVE, &remove.join(","));
        }
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn denied(deny: &Deny) -> Response<Body> {
    let status = StatusCode::from_u16(deny.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut r = response(status, Body::from(deny.body.clone()));
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(challenge) = &deny.challenge {
        insert(headers, header::WWW_AUTHENTICATE.as_str(), challenge);
    }
    if let Some(seconds) = deny.retry_after {
        insert(headers, header::RETRY_AFTER.as_str(), &seconds.to_string());
    }
    r
}

/// The check could not be decided (provider or keys unavailable, or a contained panic).
fn unavailable() -> Response<Body> {
    let body = serde_json::json!({
        "error": "temporarily_unavailable",
        "error_description": "the check could not be decided; retry",
    });
    let mut r = response(
        StatusCode::SERVICE_UNAVAILABLE,
        Body::from(body.to_string()),
    );
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Serves HTTP/1.1 and h2c (prior knowledge) on `listener` until `stop` completes; then stops
/// accepting and lets in-flight answers finish (the supervisor bounds the wait with the drain
/// timeout).
pub async fn serve(
    listener: TcpListener,
    service: Arc<HttpAuthz>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the connections we
                    // have, and try again shortly.
                    tracing::warn!(%error, "HTTP authorization port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small request/response pairs: Nagle's algorithm would delay some of them.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let hyper_service = TowerToHyperService::new(tower::service_fn(
            move |request: Request<hyper::body::Incoming>| {
                let service = service.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(service.handle(request.map(Body::new)).await)
                }
            },
        ));
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or breaks the protocol ends only its own connection.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_mode_is_chosen_by_the_path_alone() {
        assert_eq!(Mode::of("/forward_auth"), Some(Mode::ForwardAuth));
        assert_eq!(Mode::of("/ext_authz/"), Some(Mode::Envoy));
        assert_eq!(Mode::of("/ext_authz/admin/x"), Some(Mode::Envoy));
        for other in [
            "/",
            "/ext_authz",
            "/ext_authzadmin",
            "/forward_auth/",
            "/forward_auth/x",
            "/FORWARD_AUTH",
            "//forward_auth",
            "/metrics",
        ] {
            assert_eq!(Mode::of(other), None, "{other}");
        }
    }

    #[test]
    fn forward_auth_reads_the_traefik_and_the_nginx_spellings() {
        let traefik = forward_auth_request(
            None,
            &map(&[
                ("x-forwarded-method", "DELETE"),
                ("x-forwarded-uri", "/admin/x?q=1"),
                ("x-forwarded-host", "api.example"),
                ("host", "authz:9002"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (
                traefik.method.as_str(),
                traefik.host.as_str(),
                traefik.path.as_str()
            ),
            ("DELETE", "api.example", "/admin/x?q=1")
        );
        let nginx = forward_auth_request(
            None,
            &map(&[
                ("x-original-method", "POST"),
                ("x-original-uri", "/a"),
                ("host", "api.example"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (
                nginx.method.as_str(),
                nginx.host.as_str(),
                nginx.path.as_str()
            ),
            ("POST", "api.example", "/a")
        );
    }

    #[test]
    fn forward_auth_refuses_what_does_not_describe_one_original_request() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("x-forwarded-method", "GET")], "no_original_uri"),
            (
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "")],
                "no_original_uri",
            ),
            (&[("x-forwarded-uri", "/a")], "no_original_method"),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/a"),
                    ("x-original-uri", "/b"),
                ],
                "ambiguous_original_request",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-uri", "/b"),
                ],
                "ambiguous_original_request",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-host", "a"),
                    ("x-forwarded-host", "b"),
                ],
                "ambiguous_original_request",
            ),
        ];
        for (headers, reason) in cases {
            let deny = forward_auth_request(None, &map(headers)).unwrap_err();
            assert_eq!((deny.status, deny.reason), (400, *reason), "{headers:?}");
        }
        let mut h = map(&[("x-forwarded-method", "GET")]);
        h.insert(
            "x-forwarded-uri",
            HeaderValue::from_bytes(b"/\xff").unwrap(),
        );
        assert_eq!(
            forward_auth_request(None, &h).unwrap_err().reason,
            "malformed_original_request"
        );
    }

    #[test]
    fn envoy_mode_takes_the_path_after_the_prefix_with_its_query() {
        let request = Request::builder()
            .method("PATCH")
            .uri("/ext_authz/admin/%61?x=1")
            .header("host", "api.example")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let auth = envoy_request(&parts);
        assert_eq!(
            (auth.method.as_str(), auth.host.as_str(), auth.path.as_str()),
            ("PATCH", "api.example", "/admin/%61?x=1")
        );
    }

    #[test]
    fn a_denial_carries_status_challenge_retry_after_and_body() {
        let deny = Deny {
            status: 429,
            challenge: Some("Bearer realm=\"x\"".into()),
            retry_after: Some(3),
            body: "{\"error\":\"too_many_requests\"}".into(),
            reason: "exchange_limited",
            rule: None,
        };
        let r = denied(&deny);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"x\"");
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
