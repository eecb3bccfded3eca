//! The request path against a real token endpoint and JWKS on loopback, through the Authorizer
//! and the ext_authz handler (no process, no Envoy): every allow and deny branch, the cache, and
//! the unknown-kid refetch.

mod common;

use std::sync::Arc;

use base64::Engine;
use common::check::basic;
use common::provider::{ClientAuth, FakeProvider, Mode};
use m2m_authz::authorizer::{Authorizer, Unavailable};
use m2m_authz::config::Config;
use m2m_authz::decision::Decision;
use m2m_authz::ext_authz::ExtAuthz;
use m2m_authz::proto::envoy::service::auth::v3::authorization_server::Authorization;
use m2m_authz::proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, check_response::HttpResponse,
};
use m2m_authz::request::{AuthRequest, Headers};
use serde_json::json;

/// A named case: request headers, and the user id they should map to.
type AllowCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
/// A named case: request headers, the status and the RFC 6750 error code expected.
type DenyCase<'a> = (&'a str, Vec<(&'a str, String)>, u16, Option<&'a str>);

fn config(p: &FakeProvider, extra: &str) -> Config {
    common::authz::config(&format!(
        "{}  jwks_min_refetch_interval: 1h\n{extra}",
        p.oauth2_provider_yaml()
    ))
}

async fn authorizer(p: &FakeProvider, extra: &str) -> Authorizer {
    common::authz::authorizer_for(&config(p, extra)).await
}

fn request(headers: &[(&str, &str)]) -> AuthRequest {
    AuthRequest {
        method: "GET".into(),
        host: "api.test".into(),
        path: "/v1/orders".into(),
        headers: headers.iter().map(|(n, v)| (*n, *v)).collect::<Headers>(),
        ..Default::default()
    }
}

fn allowed(d: &Decision) -> &m2m_authz::decision::Allow {
    match d {
        Decision::Allow(a) => a,
        Decision::Deny(d) => panic!("expected allow, got {d:?}"),
    }
}

fn denied(d: &Decision) -> &m2m_authz::decision::Deny {
    match d {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("expected deny, got {a:?}"),
    }
}

fn header<'a>(set: &'a [(Arc<str>, Box<str>)], name: &str) -> Option<&'a str> {
    set.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
}

#[tokio::test]
async fn basic_credential_is_exchanged_once_then_served_from_cache() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let a = authorizer(&p, "").await;
    for _ in 0..3 {
        let d = a
            .check(&request(&[
                ("authorization", &basic("client-1", "s3cret")),
                ("x-user-id", "admin"),
            ]))
            .await
            .unwrap();
        let allow = allowed(&d);
        assert_eq!(header(allow.set(), "x-user-id"), Some("user-1"));
        assert_eq!(header(allow.set(), "x-client-id"), Some("client-1"));
        assert!(allow.remove().iter().any(|h| &**h == "authorization"));
        assert!(allow.remove().iter().any(|h| &**h == "x-client-secret"));
        // What the dynamic metadata names: no policy, so the default rule, and the provider.
        assert_eq!(
            (allow.provider.as_deref(), allow.rule.as_deref()),
            (Some("default"), Some("default"))
        );
    }
    assert_eq!(p.token_calls(), 1, "one exchange for three checks");
    assert_eq!(a.cache().len(), 1);
}

#[tokio::test]
async fn each_credential_source_is_accepted() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "a:b+c%d", "user-1");
    let a = authorizer(&p, "").await;
    let token = p.mint("rsa-a", "client-9", json!({"user_id": "user-9"}));
    let encoded_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("client-1:a%3Ab%2Bc%25d")
    );
    let cases: Vec<AllowCase> = vec![
        (
            "basic, RFC 6749 encoded",
            vec![("authorization", encoded_basic)],
            "user-1",
        ),
        (
            "header pair",
            vec![
                ("x-client-id", "client-1".into()),
                ("x-client-secret", "a:b+c%d".into()),
            ],
            "user-1",
        ),
        (
            "bearer",
            vec![("authorization", format!("Bearer {token}"))],
            "user-9",
        ),
    ];
    for (name, headers, user) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let d = a.check(&request(&h)).await.unwrap();
        assert_eq!(header(allowed(&d).set(), "x-user-id"), Some(user), "{name}");
    }
    assert_eq!(
        p.token_calls(),
        1,
        "the encoded Basic and the header pair are one credential"
    );
}

/// The sidecar authenticates at the token endpoint exactly as `client_auth` says, with RFC 6749
/// §2.3.1 encoding of an id and secret full of reserved characters; a provider that takes only
/// another method refuses it (401 `invalid_client`, a denial), as a real one would.
#[tokio::test]
async fn client_auth_is_the_configured_method_and_nothing_else() {
    let checked = request(&[
        ("x-client-id", "client:1"),
        ("x-client-secret", "p@ss w+rd"),
    ]);
    for sidecar in [ClientAuth::SecretPost, ClientAuth::SecretBasic] {
        let setting = sidecar.sidecar_setting().expect("a sidecar setting");
        for provider in [
            ClientAuth::SecretPost,
            ClientAuth::SecretBasic,
            ClientAuth::StytchJson,
        ] {
            let p = FakeProvider::start_with(provider).await;
            p.add_client("client:1", "p@ss w+rd", "user-1");
            let a = authorizer(&p, &format!("  client_auth: {setting}\n")).await;
            let d = a.check(&checked).await.unwrap();
            let case = format!("sidecar {setting}, provider takes {provider:?}");
            if sidecar == provider {
                assert_eq!(
                    header(allowed(&d).set(), "x-user-id"),
                    Some("user-1"),
                    "{case}"
                );
            } else {
                assert_eq!(denied(&d).status, 401, "{case}");
            }
            assert_eq!(p.token_calls(), 1, "{case}");
        }
    }
}

/// The fake token endpoint itself: each way of sending client credentials is taken only by the
/// endpoint configured for it, and sending two at once by none.
#[tokio::test]
async fn fake_token_endpoint_enforces_its_client_authentication() {
    let http = common::http_client();
    let form = "grant_type=client_credentials";
    let in_form = "grant_type=client_credentials&client_id=c%3A1&client_secret=s%2B1";
    let json = r#"{"grant_type":"client_credentials","client_id":"c:1","client_secret":"s+1"}"#;
    // (name, Authorization, content type, body, the method that takes it)
    let sent = [
        (
            "basic",
            true,
            "application/x-www-form-urlencoded",
            form,
            Some(ClientAuth::SecretBasic),
        ),
        (
            "post",
            false,
            "application/x-www-form-urlencoded",
            in_form,
            Some(ClientAuth::SecretPost),
        ),
        (
            "json",
            false,
            "application/json",
            json,
            Some(ClientAuth::StytchJson),
        ),
        (
            "basic and post",
            true,
            "application/x-www-form-urlencoded",
            in_form,
            None,
        ),
        ("basic and json", true, "application/json", json, None),
    ];
    for endpoint in [
        ClientAuth::SecretPost,
        ClientAuth::SecretBasic,
        ClientAuth::StytchJson,
    ] {
        let p = FakeProvider::start_with(endpoint).await;
        p.add_client("c:1", "s+1", "user-1");
        for (name, with_basic, content_type, body, takes) in sent {
            let mut r = http
                .post(p.token_url())
                .header("content-type", content_type)
                .body(body);
            if with_basic {
                r = r.header("authorization", common::check::basic("c%3A1", "s%2B1"));
            }
            let response = r.send().await.unwrap();
            let status = response.status().as_u16();
            let answer: serde_json::Value = response.json().await.unwrap();
            if takes == Some(endpoint) {
                assert_eq!(status, 200, "{name} to {endpoint:?}: {answer}");
            } else {
                assert_eq!(status, 401, "{name} to {endpoint:?}");
                assert_eq!(answer["error"], "invalid_client", "{name} to {endpoint:?}");
            }
        }
    }
}

#[tokio::test]
async fn denials_carry_status_and_challenge() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.add_client_with_claims("client-nouser", "s3cret", json!({"scope": "x"}));
    let a = authorizer(&p, "").await;
    let expired = common::provider::mint(
        "rsa-a",
        "c",
        json!({"user_id": "u", "exp": common::provider::now() - 600}),
        3600,
    );
    let wrong_issuer = {
        // A token whose claims do not match the configured issuer.
        let t = p.mint(
            "rsa-a",
            "c",
            json!({"user_id": "u", "iss": "https://evil.test"}),
        );
        format!("Bearer {t}")
    };
    let cases: Vec<DenyCase> = vec![
        ("no credential", vec![], 401, None),
        (
            "wrong secret",
            vec![("authorization", basic("client-1", "wrong"))],
            401,
            Some("invalid_token"),
        ),
        (
            "unknown client",
            vec![("authorization", basic("nobody", "x"))],
            401,
            Some("invalid_token"),
        ),
        (
            "malformed basic",
            vec![("authorization", "Basic %%%".into())],
            400,
            Some("invalid_request"),
        ),
        (
            "expired bearer",
            vec![("authorization", format!("Bearer {expired}"))],
            401,
            Some("invalid_token"),
        ),
        (
            "wrong issuer",
            vec![("authorization", wrong_issuer)],
            401,
            Some("invalid_token"),
        ),
        (
            "no user claim",
            vec![("authorization", basic("client-nouser", "s3cret"))],
            403,
            None,
        ),
    ];
    for (name, headers, status, code) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let d = a.check(&request(&h)).await.unwrap();
        let deny = denied(&d);
        assert_eq!(deny.status, status, "{name}");
        assert!(
            deny.challenge
                .as_deref()
                .unwrap()
                .starts_with("Bearer realm=\"m2m-authz\""),
            "{name}: {}",
            deny.challenge.as_deref().unwrap_or_default()
        );
        match code {
            Some(c) => assert!(
                deny.challenge
                    .as_deref()
                    .unwrap()
                    .contains(&format!("error=\"{c}\"")),
                "{name}: {}",
                deny.challenge.as_deref().unwrap_or_default()
            ),
            None => assert!(
                !deny.challenge.as_deref().unwrap().contains("error="),
                "{name}: {}",
                deny.challenge.as_deref().unwrap_or_default()
            ),
        }
        assert!(
            !deny.body.contains("s3cret") && !deny.body.contains("wrong"),
            "{name}: body echoes input"
        );
    }
}

#[tokio::test]
async fn provider_failure_is_unavailable_and_cached_clients_keep_working() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    p.add_client("client-2", "s3cret", "user-2");
    let a = authorizer(&p, "").await;
    allowed(
        &a.check(&request(&[("authorization", &basic("client-1", "s3cret"))]))
            .await
            .unwrap(),
    );

    p.set_mode(Mode::Failing);
    let err = a
        .check(&request(&[("authorization", &basic("client-2", "s3cret"))]))
        .await
        .unwrap_err();
    assert!(matches!(err, Unavailable::Exchange(_)), "{err:?}");

    p.stop();
    let err = a
        .check(&request(&[("authorization", &basic("client-2", "s3cret"))]))
        .await
        .unwrap_err();
    assert!(matches!(err, Unavailable::Exchange(_)), "{err:?}");
    // A credential verified before the outage is still served from the cache.
    allowed(
        &a.check(&request(&[("authorization", &basic("client-1", "s3cret"))]))
            .await
            .unwrap(),
    );
    // The error never names the secret.
    assert!(!format!("{err} {err:?}").contains("s3cret"));
}

#[tokio::test]
async fn unknown_kid_triggers_one_rate_limited_refetch() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let a = authorizer(&p, "").await;
    assert_eq!(p.jwks_calls(), 1);

    // The provider rotates: new tokens are signed with rsa-b, published beside rsa-a.
    p.rotate("rsa-b", &["rsa-a", "rsa-b"]);
    allowed(
        &a.check(&request(&[("authorization", &basic("client-1", "s3cret"))]))
            .await
            .unwrap(),
    );
    assert_eq!(
        p.jwks_calls(),
        2,
        "the unknown kid caused exactly one refetch"
    );

    // A token with a kid that is still unknown after the refetch does not cause another one
    // within the minimum interval (1h here).
    p.rotate("rsa-b", &["rsa-a"]);
    let t = p.mint("rsa-b", "c", json!({"user_id": "u"}));
    for _ in 0..5 {
        let d = a
            .check(&request(&[("authorization", &format!("Bearer {t}"))]))
            .await
            .unwrap();
        allowed(&d); // rsa-b is still in the loaded set: the set only changes on a fetch.
    }
    let unknown = {
        let mut t = p.mint("rsa-a", "c", json!({"user_id": "u"}));
        // Same signature, header re-encoded with an unknown kid: fails before any signature check.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"alg":"RS256","typ":"JWT","kid":"rsa-zzz"}"#);
        let rest = t.split_once('.').unwrap().1.to_owned();
        t = format!("{header}.{rest}");
        t
    };
    for _ in 0..5 {
        let d = a
            .check(&request(&[("authorization", &format!("Bearer {unknown}"))]))
            .await
            .unwrap();
        assert_eq!(denied(&d).status, 401);
    }
    assert_eq!(
        p.jwks_calls(),
        2,
        "made-up kids cause no refetch within the interval"
    );
}

#[tokio::test]
async fn keys_not_loaded_is_unavailable() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let a = Authorizer::new(&config(&p, "")).unwrap();
    let t = p.mint("rsa-a", "c", json!({"user_id": "u"}));
    let err = a
        .check(&request(&[("authorization", &format!("Bearer {t}"))]))
        .await
        .unwrap_err();
    assert_eq!(err, Unavailable::KeysNotLoaded);
}

/// The gRPC handler: an Envoy-shaped CheckRequest in, a CheckResponse out.
#[tokio::test]
async fn handler_answers_envoy() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let service = ExtAuthz::new(Arc::new(authorizer(&p, "").await));
    let check = |headers: Vec<(&str, String)>| CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/v1/orders".into(),
                    host: "api.test".into(),
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    let ok = service
        .check(tonic::Request::new(check(vec![
            ("authorization", basic("client-1", "s3cret")),
            ("x-user-id", "admin".into()),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.unwrap().code, 0);
    let Some(HttpResponse::OkResponse(okr)) = ok.http_response else {
        panic!("not ok")
    };
    let set: Vec<(String, String, i32)> = okr
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.clone().unwrap();
            (hv.key, hv.value, h.append_action)
        })
        .collect();
    assert!(
        set.contains(&("x-user-id".into(), "user-1".into(), 2)),
        "{set:?}"
    );
    assert!(okr.headers_to_remove.contains(&"authorization".into()));

    let denied = service
        .check(tonic::Request::new(check(vec![])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status.unwrap().code, 16);
    let Some(HttpResponse::DeniedResponse(d)) = denied.http_response else {
        panic!("not denied")
    };
    assert_eq!(d.status.unwrap().code, 401);
    let names: Vec<&str> = d
        .headers
        .iter()
        .map(|h| h.header.as_ref().unwrap().key.as_str())
        .collect();
    assert!(names.contains(&"www-authenticate"), "{names:?}");

    p.set_mode(Mode::Failing);
    let err = service
        .check(tonic::Request::new(check(vec![(
            "authorization",
            basic("client-1", "other"),
        )])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

/// `upstream_credential: bearer`: the route's upstream gets the access token (the exchanged one
/// for Basic, the caller's own for Bearer) and `authorization` is not removed. Cached identities
/// keep the exchanged token only while some rule forwards it; a reload that adds such a rule
/// costs each credential one more exchange on its first forwarding request.
#[tokio::test]
async fn bearer_forwarding_routes_get_the_token_and_only_they_keep_it() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let dir = common::process::TempDir::new("forward-policy");
    let file = dir.join("policy.yaml");
    std::fs::write(&file, "rules: []\ndefault: {require: {}}\n").unwrap();
    let a = authorizer(
        &p,
        &format!(
            "policy:\n  file: {}\n  reload_interval: 1h\n",
            file.display()
        ),
    )
    .await;
    let on = |path: &str, authorization: &str| AuthRequest {
        path: path.into(),
        ..request(&[("authorization", authorization)])
    };
    let creds = basic("client-1", "s3cret");

    let d = a.check(&on("/v1/orders", &creds)).await.unwrap();
    assert_eq!(allowed(&d).forward, None);
    assert!(
        allowed(&d).identity.access_token.is_none(),
        "no rule forwards tokens: the cached identity holds none"
    );
    assert_eq!(p.token_calls(), 1);

    std::fs::write(
        &file,
        "rules:\n  - name: forward\n    match: {path: {prefix: /forward/}}\n    require: {}\n    upstream_credential: bearer\ndefault: {require: {}}\n",
    )
    .unwrap();
    assert!(a.policy().reload().unwrap(), "the new policy is live");

    let d = a.check(&on("/forward/x", &creds)).await.unwrap();
    let issued = p.issued_tokens();
    let token = issued.last().unwrap();
    assert_eq!(
        allowed(&d).forward.as_ref().map(|t| t.expose()),
        Some(token.as_str()),
        "the exchanged token is forwarded"
    );
    assert_eq!(
        p.token_calls(),
        2,
        "exactly one more exchange to get a token to keep"
    );
    let response = m2m_authz::ext_authz::to_check_response(&d);
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("not ok")
    };
    let set: Vec<(String, String)> = ok
        .headers
        .iter()
        .map(|h| h.header.clone().unwrap())
        .map(|h| (h.key, h.value))
        .collect();
    assert!(set.contains(&("authorization".into(), format!("Bearer {token}"))));
    assert!(set.contains(&("x-user-id".into(), "user-1".into())));
    assert!(!ok.headers_to_remove.contains(&"authorization".into()));

    // Other routes: served from the cache, nothing forwarded.
    let d = a.check(&on("/v1/orders", &creds)).await.unwrap();
    assert_eq!(allowed(&d).forward, None);
    let d = a.check(&on("/forward/y", &creds)).await.unwrap();
    assert!(allowed(&d).forward.is_some());
    assert_eq!(p.token_calls(), 2, "both answered from the cache");

    // A presented Bearer token is forwarded as presented.
    let own = p.mint("rsa-a", "client-1", json!({"user_id": "user-1"}));
    let d = a
        .check(&on("/forward/z", &format!("Bearer {own}")))
        .await
        .unwrap();
    assert_eq!(
        allowed(&d).forward.as_ref().map(|t| t.expose()),
        Some(own.as_str())
    );
    let d = a
        .check(&on("/v1/orders", &format!("Bearer {own}")))
        .await
        .unwrap();
    assert_eq!(allowed(&d).forward, None);
}
