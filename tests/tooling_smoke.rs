//! Smoke tests of the real-parts harness (tests/common): the real Envoy with
//! deploy/envoy/envoy.yaml in front of an echo upstream, a tiny in-test gRPC
//! ext_authz server standing in for m2m-authz, and the real oidc-provider.
//!
//! They also pin down the Envoy behaviour the sidecar relies on: which request
//! headers reach the authorization server and how, and what the upstream sees
//! after an OK response that removes and overwrites `x-user-id`.
//!
//! Needs `scripts/tools` to have been run; fails (does not skip) otherwise.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::echo::EchoRequest;
use common::envoy::Front;
use common::oidc::{OidcOptions, OidcProvider};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::rpc;
use tokio_stream::wrappers::TcpListenerStream;

const GRPC_OK: i32 = 0;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// Stand-in for m2m-authz. Allows `authorization: Bearer good`, denies
/// everything else with 401 + `WWW-Authenticate`. On allow, what it does with
/// `x-user-id` depends on the request path (always sent to ext_authz):
/// by default it only sets it (OVERWRITE_IF_EXISTS_OR_ADD: the way to go),
/// `/remove...` only lists it in headers_to_remove, `/both...` does both.
#[derive(Clone, Default)]
struct TestAuthz {
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for TestAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap().push(request.clone());
        let http = request
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();

        let response =
            if http.headers.get("authorization").map(String::as_str) == Some("Bearer good") {
                let mut ok = OkHttpResponse::default();
                if !http.path.starts_with("/remove") {
                    ok.headers.push(header(
                        "x-user-id",
                        "from-authz",
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    ));
                }
                if http.path.starts_with("/remove") || http.path.starts_with("/both") {
                    ok.headers_to_remove.push("x-user-id".to_owned());
                }
                CheckResponse {
                    status: Some(rpc::Status {
                        code: GRPC_OK,
                        ..Default::default()
                    }),
                    http_response: Some(HttpResponse::OkResponse(ok)),
                    ..Default::default()
                }
            } else {
                CheckResponse {
                    status: Some(rpc::Status {
                        code: GRPC_UNAUTHENTICATED,
                        message: "bad credentials".to_owned(),
                        ..Default::default()
                    }),
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: StatusCode::Unauthorized as i32,
                        }),
                        headers: vec![header(
                            "www-authenticate",
                            "Bearer realm=\"m2m-test\"",
                            HeaderAppendAction::OverwriteIfExistsOrAdd,
                        )],
                        body: "denied by test authz\n".to_owned(),
                    })),
                    ..Default::default()
                }
            };
        Ok(tonic::Response::new(response))
    }
}

impl TestAuthz {
    /// Serves it on 127.0.0.1:<random> for the rest of the test.
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = AuthorizationServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    fn last(&self) -> CheckRequest {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("ext_authz was called")
    }
}

async fn echoed(resp: reqwest::Response) -> EchoRequest {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(
        status, 200,
        "expected the upstream's echo, got {status}: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an echo ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_allow_deny_and_identity_header() {
    crate::needs!(Envoy);
    let authz = TestAuthz::default();
    let authz_addr = authz.serve().await;
    let Front { envoy, upstream } = Front::start(authz_addr).await;
    let http = common::http_client();

    // Allowed: the forged identity is replaced by the authz server's.
    let resp = http
        .get(envoy.url("/orders/42?x=1"))
        .header("authorization", "Bearer good")
        .header("x-user-id", "admin")
        .header("x-client-id", "cid")
        .header("x-client-secret", "csecret")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-other", "not-for-authz")
        .send()
        .await
        .unwrap();
    let seen = echoed(resp).await;
    assert_eq!(seen.path, "/orders/42");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(
        seen.header_values("x-user-id"),
        ["from-authz"],
        "upstream saw {seen:?}"
    );
    assert_eq!(seen.header("authorization"), Some("Bearer good"));
    assert_eq!(seen.header("x-other"), Some("not-for-authz"));

    // What the authorization server was sent.
    let check = authz.last();
    let http_attrs = check.attributes.unwrap().request.unwrap().http.unwrap();
    let mut names: Vec<&String> = http_attrs.headers.keys().collect();
    names.sort();
    eprintln!(
        "CheckRequest: method={} path={} host={} scheme={} protocol={} headers={:?} header_map={:?}",
        http_attrs.method,
        http_attrs.path,
        http_attrs.host,
        http_attrs.scheme,
        http_attrs.protocol,
        http_attrs.headers,
        http_attrs.header_map
    );
    assert_eq!(http_attrs.method, "GET");
    assert_eq!(http_attrs.path, "/orders/42?x=1");
    assert!(
        http_attrs.header_map.is_none(),
        "header_map is only used with encode_raw_headers"
    );
    let headers: &HashMap<String, String> = &http_attrs.headers;
    assert_eq!(
        headers.get("authorization").map(String::as_str),
        Some("Bearer good")
    );
    assert_eq!(headers.get("x-client-id").map(String::as_str), Some("cid"));
    assert_eq!(
        headers.get("x-client-secret").map(String::as_str),
        Some("csecret")
    );
    assert!(headers.contains_key("traceparent"), "{names:?}");
    assert!(
        !headers.contains_key("x-other"),
        "allowed_headers must filter: {names:?}"
    );
    assert!(
        !headers.contains_key("x-user-id"),
        "allowed_headers must filter: {names:?}"
    );

    // Repeated forged headers: OVERWRITE replaces all of them.
    let resp = http
        .get(envoy.url("/twice"))
        .header("authorization", "Bearer good")
        .header("x-user-id", "admin")
        .header("x-user-id", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(
        echoed(resp).await.header_values("x-user-id"),
        ["from-authz"]
    );

    // headers_to_remove alone drops the header...
    let resp = http
        .get(envoy.url("/remove"))
        .header("authorization", "Bearer good")
        .header("x-user-id", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        echoed(resp).await.header_values("x-user-id"),
        Vec::<String>::new()
    );
    // ...and is applied AFTER `headers`: setting and removing the same header
    // in one OkHttpResponse leaves the upstream without it. The sidecar must
    // only OVERWRITE its identity headers, never also list them for removal.
    for forged in [Some("admin"), None] {
        let mut req = http
            .get(envoy.url("/both"))
            .header("authorization", "Bearer good");
        if let Some(forged) = forged {
            req = req.header("x-user-id", forged);
        }
        let seen = echoed(req.send().await.unwrap()).await;
        assert_eq!(
            seen.header_values("x-user-id"),
            Vec::<String>::new(),
            "forged {forged:?}"
        );
    }

    // Underscore variants of a header name are refused by the HCM, before
    // ext_authz (upstream frameworks may treat x_user_id as x-user-id).
    let before = upstream.request_count();
    let resp = http
        .get(envoy.url("/underscore"))
        .header("authorization", "Bearer good")
        .header("x_user_id", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(upstream.request_count(), before);

    // Denied: the authz server's status, headers and body reach the client,
    // the upstream never sees the request.
    let before = upstream.request_count();
    let resp = http
        .get(envoy.url("/orders/42"))
        .header("authorization", "Bearer bad")
        .header("x-user-id", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"m2m-test\"")
    );
    assert_eq!(resp.text().await.unwrap(), "denied by test authz\n");
    assert_eq!(upstream.request_count(), before);

    // /directory (once shadowed by a benchmark route): the application's, after ext_authz.
    let before = upstream.request_count();
    let resp = http
        .get(envoy.url("/directory"))
        .header("authorization", "Bearer good")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.request_count(), before + 1);
    let resp = http.get(envoy.url("/directory")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(upstream.request_count(), before + 1);

    // Admin stats are readable through the harness.
    assert_eq!(
        envoy.stat("http.ingress_http.ext_authz.denied").await,
        Some(2)
    );
    assert_eq!(envoy.stat("http.ingress_http.ext_authz.ok").await, Some(6));
    assert_eq!(envoy.stat("no.such.stat").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_fails_closed_with_503_when_authz_is_down() {
    crate::needs!(Envoy);
    // Nothing listens there.
    let dead = common::process::free_addr();
    let Front { envoy, upstream } = Front::start(dead).await;
    let resp = common::http_client()
        .get(envoy.url("/orders"))
        .header("authorization", "Bearer good")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(upstream.request_count(), 0);
    assert_eq!(
        envoy.stat("http.ingress_http.ext_authz.error").await,
        Some(1)
    );
}

fn decode_segment(segment: &str) -> serde_json::Value {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .expect("base64url JWT segment");
    serde_json::from_slice(&bytes).expect("JSON JWT segment")
}

/// Checks an access token from `oidc` both by hand (exact claims) and with
/// jsonwebtoken against the provider's JWKS.
async fn check_token(
    oidc: &OidcProvider,
    token: &str,
    alg: &str,
    client_id: &str,
    user_id: Option<&str>,
) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token: {token}");
    let header = decode_segment(parts[0]);
    let claims = decode_segment(parts[1]);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], alg, "{header}");
    assert!(header["kid"].is_string(), "{header}");
    assert_eq!(claims["iss"], oidc.issuer(), "{claims}");
    assert_eq!(claims["aud"], oidc.audience(), "{claims}");
    assert_eq!(claims["client_id"], client_id, "{claims}");
    assert_eq!(claims["sub"], client_id, "{claims}");
    match user_id {
        Some(user_id) => assert_eq!(claims["user_id"], user_id, "{claims}"),
        None => assert!(claims.get("user_id").is_none(), "{claims}"),
    }
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert_eq!(exp - iat, oidc.options().ttl_seconds, "{claims}");

    // The signature verifies with the key published at jwks_uri.
    let jwks: jsonwebtoken::jwk::JwkSet = common::http_client()
        .get(oidc.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = header["kid"].as_str().unwrap();
    let jwk = jwks
        .find(kid)
        .unwrap_or_else(|| panic!("kid {kid} not in JWKS"));
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let algorithm: jsonwebtoken::Algorithm = alg.parse().unwrap();
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_issuer(&[oidc.issuer()]);
    validation.set_audience(&[oidc.audience()]);
    let verified = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("token does not verify: {e}"));
    assert_eq!(verified.claims, claims);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_issues_verifiable_jwt_access_tokens() {
    crate::needs!(OidcProvider);
    let oidc = OidcProvider::start(OidcOptions::default()).await;
    assert_eq!(oidc.token_url(), format!("{}/token", oidc.issuer()));
    assert_eq!(oidc.jwks_url(), format!("{}/jwks", oidc.issuer()));

    // client_secret_post, no scope, no resource: default audience.
    let token = oidc.access_token().await;
    check_token(
        &oidc,
        &token,
        "RS256",
        oidc.client_id(),
        Some("user-interop-1"),
    )
    .await;

    // With a scope and an explicit resource.
    let resp = oidc
        .request_token(
            oidc.client_id(),
            oidc.client_secret(),
            &[("scope", "read:orders"), ("resource", oidc.audience())],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "read:orders");
    assert_eq!(body["expires_in"], 600);
    let token = body["access_token"].as_str().unwrap();
    check_token(
        &oidc,
        token,
        "RS256",
        oidc.client_id(),
        Some("user-interop-1"),
    )
    .await;
    assert_eq!(
        decode_segment(token.split('.').nth(1).unwrap())["scope"],
        "read:orders"
    );

    // client_secret_basic.
    let resp = common::http_client()
        .post(oidc.token_url())
        .basic_auth(oidc.basic_client_id(), Some(oidc.client_secret()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let basic_id = oidc.basic_client_id();
    check_token(
        &oidc,
        body["access_token"].as_str().unwrap(),
        "RS256",
        &basic_id,
        Some("user-interop-1"),
    )
    .await;

    // A client without user_id.
    let nouser = oidc.nouser_client_id();
    let resp = oidc.request_token(&nouser, oidc.client_secret(), &[]).await;
    let body: serde_json::Value = resp.json().await.unwrap();
    check_token(
        &oidc,
        body["access_token"].as_str().unwrap(),
        "RS256",
        &nouser,
        None,
    )
    .await;

    // Failures.
    let resp = oidc
        .request_token(oidc.client_id(), "wrong-secret", &[])
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let resp = oidc
        .request_token(
            oidc.client_id(),
            oidc.client_secret(),
            &[("resource", "urn:other")],
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_es256_and_custom_options() {
    crate::needs!(OidcProvider);
    let oidc = OidcProvider::start(OidcOptions {
        alg: "ES256".to_owned(),
        client_id: "svc-a".to_owned(),
        user_id: "user-42".to_owned(),
        audience: "https://api.example.test".to_owned(),
        ttl_seconds: 90,
        ..OidcOptions::default()
    })
    .await;
    let token = oidc.access_token().await;
    check_token(&oidc, &token, "ES256", "svc-a", Some("user-42")).await;
}
