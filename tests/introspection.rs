//! RFC 7662 introspection of opaque access tokens, against a loopback introspection endpoint
//! that checks the sidecar's resource-server credentials (HTTP Basic) and the form it posts,
//! counts its calls, and can answer inactive, without `exp`, with a 5xx, too slowly or with
//! something that is not JSON. The token endpoint is the shared fake provider issuing an opaque
//! token.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use common::authz::{authorizer, status};
use common::check::{basic_request, bearer_request};
use common::provider::{AUDIENCE, FakeProvider, ISSUER, now};
use m2m_authz::authorizer::Unavailable;
use m2m_authz::decision::Decision;
use serde_json::{Value, json};

const RS_ID: &str = "sidecar-rs";
const RS_SECRET: &str = "rs-s3cret:/&";

/// What the fake introspection endpoint answers.
#[derive(Clone)]
enum Answer {
    /// 200 with this JSON for the token `opaque-good`, `{"active":false}` for any other.
    Json(Value),
    Status(u16),
    Slow,
    Garbage,
}

struct Introspection {
    calls: AtomicUsize,
    answer: Mutex<Answer>,
}

async fn introspect(
    State(s): State<Arc<Introspection>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    // Like a real server: only our resource-server client, by Basic, may introspect.
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("sidecar-rs:rs-s3cret%3A%2F%26")
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
        return (StatusCode::UNAUTHORIZED, "{\"error\":\"invalid_client\"}").into_response();
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let token = form
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.clone());
    assert!(form.contains(&("token_type_hint".into(), "access_token".into())));
    assert!(!form.iter().any(|(k, _)| k == "client_secret"));
    let answer = s.answer.lock().unwrap().clone();
    match answer {
        Answer::Json(v) if token.as_deref() == Some("opaque-good") => axum::Json(v).into_response(),
        Answer::Json(_) => axum::Json(json!({"active": false})).into_response(),
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::Slow => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"active": false})).into_response()
        }
        Answer::Garbage => "<html>oops</html>".into_response(),
    }
}

struct Setup {
    provider: FakeProvider,
    state: Arc<Introspection>,
    url: String,
}

async fn setup() -> Setup {
    let state = Arc::new(Introspection {
        calls: AtomicUsize::new(0),
        answer: Mutex::new(Answer::Json(active())),
    });
    let app = Router::new()
        .route("/introspect", post(introspect))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let provider = FakeProvider::start().await;
    provider.issue_raw("opaque-good");
    Setup {
        provider,
        state,
        url,
    }
}

fn active() -> Value {
    json!({
        "active": true, "sub": "client-1", "user_id": "user-7", "client_id": "client-1", "scope": "read",
        "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "token_type": "Bearer"
    })
}

impl Setup {
    fn yaml(&self, extra: &str) -> String {
        format!(
            "{}  request_timeout: 1s\n  introspection:\n    url: {}\n    client_id: {RS_ID}\n    client_secret: '{RS_SECRET}'\n{extra}",
            self.provider.oauth2_provider_yaml(),
            self.url
        )
    }

    fn answer(&self, a: Answer) {
        *self.state.answer.lock().unwrap() = a;
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

fn user(d: &Result<Decision, Unavailable>) -> Option<String> {
    match d {
        Ok(Decision::Allow(a)) => a
            .identity
            .headers
            .iter()
            .find(|(n, _)| &**n == "x-user-id")
            .map(|(_, v)| v.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn an_exchanged_opaque_token_is_introspected_once_then_served_from_cache() {
    let s = setup().await;
    let a = authorizer(&s.yaml("")).await;
    let first = a.check(&basic_request("client-1", "s3cret")).await;
    assert_eq!(user(&first).as_deref(), Some("user-7"), "{first:?}");
    let second = a.check(&basic_request("client-1", "s3cret")).await;
    assert_eq!(user(&second).as_deref(), Some("user-7"));
    assert_eq!(s.calls(), 1);
    assert_eq!(s.provider.token_calls(), 1);
}

#[tokio::test]
async fn a_callers_opaque_bearer_token_is_introspected_and_cached_either_way() {
    let s = setup().await;
    let a = authorizer(&s.yaml("")).await;
    for _ in 0..2 {
        let d = a.check(&bearer_request("opaque-good")).await;
        assert_eq!(user(&d).as_deref(), Some("user-7"), "{d:?}");
    }
    assert_eq!(s.calls(), 1);
    // Unknown or revoked: 401, and the refusal is remembered (negative cache).
    for _ in 0..2 {
        let d = a.check(&bearer_request("opaque-revoked")).await;
        assert_eq!(status(&d), 401, "{d:?}");
        match d {
            Ok(Decision::Deny(d)) => assert!(
                d.challenge
                    .as_deref()
                    .is_some_and(|c| c.contains("invalid_token")),
                "{d:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.calls(), 2);
    // A JWT is still verified locally under `auto`, never sent to introspection.
    let jwt = s
        .provider
        .mint("rsa-a", "client-9", json!({"user_id": "user-9"}));
    let d = a.check(&bearer_request(&jwt)).await;
    assert_eq!(user(&d).as_deref(), Some("user-9"), "{d:?}");
    assert_eq!(s.calls(), 2);
}

#[tokio::test]
async fn answers_that_fail_a_rule_are_refused() {
    for (name, answer) in [
        ("inactive", json!({"active": false, "exp": now() + 600})),
        ("active as a string", {
            let mut v = active();
            v["active"] = json!("true");
            v
        }),
        ("no exp", {
            let mut v = active();
            v.as_object_mut().unwrap().remove("exp");
            v
        }),
        ("expired", {
            let mut v = active();
            v["exp"] = json!(now() - 600);
            v
        }),
        ("other issuer", {
            let mut v = active();
            v["iss"] = json!("https://evil.example");
            v
        }),
        ("other audience", {
            let mut v = active();
            v["aud"] = json!(["other"]);
            v
        }),
    ] {
        let s = setup().await;
        s.answer(Answer::Json(answer));
        let a = authorizer(&s.yaml("")).await;
        let d = a.check(&bearer_request("opaque-good")).await;
        assert_eq!(status(&d), 401, "{name}: {d:?}");
        // The exchanged token fails the same rule: the provider's fault, not the caller's.
        let d = a.check(&basic_request("client-1", "s3cret")).await;
        assert!(
            matches!(d, Err(Unavailable::IssuedTokenInvalid(_))),
            "{name}: {d:?}"
        );
    }
}

#[tokio::test]
async fn an_endpoint_that_cannot_answer_makes_the_check_unavailable_never_allowed() {
    for (name, answer) in [
        ("500", Answer::Status(500)),
        ("503", Answer::Status(503)),
        ("our credentials refused", Answer::Status(401)),
        ("timeout", Answer::Slow),
        ("not JSON", Answer::Garbage),
    ] {
        let s = setup().await;
        s.answer(answer);
        let a = authorizer(&s.yaml("")).await;
        for d in [
            a.check(&bearer_request("opaque-good")).await,
            a.check(&basic_request("client-1", "s3cret")).await,
        ] {
            match &d {
                Err(u) => assert_eq!(u.reason(), "introspection_failed", "{name}: {d:?}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Not cached as a refusal: once the endpoint answers, the token is allowed.
        s.answer(Answer::Json(active()));
        let d = a.check(&bearer_request("opaque-good")).await;
        assert_eq!(user(&d).as_deref(), Some("user-7"), "{name}: {d:?}");
    }
}

#[tokio::test]
async fn token_format_jwt_never_introspects_and_opaque_always_does() {
    let s = setup().await;
    let jwt = s
        .provider
        .mint("rsa-a", "client-9", json!({"user_id": "user-9"}));
    // `opaque`: even a JWT-shaped token goes to introspection (answered inactive here).
    let a = authorizer(&s.yaml("  token_format: opaque\n")).await;
    let d = a.check(&bearer_request(&jwt)).await;
    assert_eq!(status(&d), 401, "{d:?}");
    assert_eq!(s.calls(), 1);
    // Without introspection the provider is JWT-only: an opaque token is malformed, 401.
    let jwt_only = authorizer(&s.provider.oauth2_provider_yaml()).await;
    let d = jwt_only.check(&bearer_request("opaque-good")).await;
    assert_eq!(status(&d), 401, "{d:?}");
    assert_eq!(s.calls(), 1);
}
