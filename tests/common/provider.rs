//! A real OAuth2 token endpoint and JWKS endpoint on loopback, for tests: it counts every call,
//! signs RS256 tokens with the fixture keys, and can be made slow, failing or unreachable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "api://test";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(super::repo_root().join("tests/fixtures").join(name)).expect("fixture")
}

/// Replaces the token endpoint's whole answer (for fault injection): called once per token
/// request, after it is counted.
pub type TokenOverride = Arc<dyn Fn() -> BoxFuture<'static, Response> + Send + Sync>;

/// What the token endpoint does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Token and JWKS endpoints answer 503.
    Failing,
    /// Only the JWKS endpoint answers 503.
    JwksDown,
}

struct Client {
    secret: String,
    claims: Value,
}

pub struct ProviderState {
    clients: Mutex<HashMap<String, Client>>,
    /// kid of the key tokens are signed with.
    signing_kid: Mutex<String>,
    /// kids published in the JWKS.
    published: Mutex<Vec<String>>,
    pub token_calls: AtomicUsize,
    pub jwks_calls: AtomicUsize,
    failing: AtomicBool,
    jwks_down: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    latency_ms: AtomicU64,
    lifetime_secs: AtomicU64,
    token_override: Mutex<Option<TokenOverride>>,
    /// Every access token the token endpoint issued, in order.
    issued: Mutex<Vec<String>>,
}

pub struct FakeProvider {
    pub addr: SocketAddr,
    pub state: Arc<ProviderState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener)
    }

    /// Serves on a listener the test prepared (e.g. one whose backlog it filled first).
    pub fn start_on(listener: tokio::net::TcpListener) -> FakeProvider {
        let state = Arc::new(ProviderState {
            clients: Mutex::new(HashMap::new()),
            signing_kid: Mutex::new("rsa-a".into()),
            published: Mutex::new(vec!["rsa-a".into()]),
            token_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            jwks_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            latency_ms: AtomicU64::new(0),
            lifetime_secs: AtomicU64::new(3600),
            token_override: Mutex::new(None),
            issued: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/oauth2/token", post(token))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider { addr, state, task }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// The sidecar's provider section for this provider, with the `oauth2` profile, ending in a
    /// newline: more `provider` fields (indented two spaces) or other sections may follow.
    pub fn oauth2_provider_yaml(&self) -> String {
        format!(
            "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n",
            self.token_url(),
            self.jwks_url()
        )
    }

    /// Registers a client whose tokens carry `user_id`.
    pub fn add_client(&self, id: &str, secret: &str, user_id: &str) {
        self.add_client_with_claims(
            id,
            secret,
            json!({ "user_id": user_id, "scope": "read:orders" }),
        );
    }

    pub fn add_client_with_claims(&self, id: &str, secret: &str, claims: Value) {
        self.state.clients.lock().unwrap().insert(
            id.into(),
            Client {
                secret: secret.into(),
                claims,
            },
        );
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state
            .failing
            .store(mode == Mode::Failing, Ordering::SeqCst);
        self.state
            .jwks_down
            .store(mode == Mode::JwksDown, Ordering::SeqCst);
    }

    pub fn set_latency(&self, d: Duration) {
        self.state
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// From now on every token request gets what `f` answers (`None`: back to normal).
    pub fn set_token_override(&self, f: Option<TokenOverride>) {
        *self.state.token_override.lock().unwrap() = f;
    }

    /// Every token request is answered with this JSON (status 200): a provider that issues
    /// whatever access token it likes.
    pub fn issue_raw(&self, access_token: &str) {
        let body =
            json!({ "access_token": access_token, "token_type": "Bearer", "expires_in": 3600 });
        self.set_token_override(Some(Arc::new(move || -> BoxFuture<'static, Response> {
            let body = body.clone();
            Box::pin(async move { axum::Json(body).into_response() })
        })));
    }

    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// Signs new tokens with `kid` and publishes exactly `published`.
    pub fn rotate(&self, kid: &str, published: &[&str]) {
        *self.state.signing_kid.lock().unwrap() = kid.into();
        *self.state.published.lock().unwrap() = published.iter().map(|s| s.to_string()).collect();
    }

    /// Every access token the token endpoint has issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    /// The most token requests the endpoint was serving at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn jwks_calls(&self) -> usize {
        self.state.jwks_calls.load(Ordering::SeqCst)
    }

    /// Stops serving: later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// A token for `user_id` as this provider would issue it, signed with `kid`.
    pub fn mint(&self, kid: &str, sub: &str, extra: Value) -> String {
        mint(
            kid,
            sub,
            extra,
            self.state.lifetime_secs.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn mint(kid: &str, sub: &str, extra: Value, lifetime: u64) -> String {
    let mut claims = json!({
        "iss": ISSUER, "aud": [AUDIENCE], "sub": sub,
        "iat": now(), "nbf": now(), "exp": now() + lifetime,
    });
    if let Value::Object(extra) = extra {
        claims.as_object_mut().unwrap().extend(extra);
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    header.typ = Some("JWT".into());
    let key = EncodingKey::from_rsa_pem(fixture(&format!("{kid}.pem")).as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "error_description": "test provider" })),
    )
        .into_response()
}

async fn token(State(s): State<Arc<ProviderState>>, headers: HeaderMap, body: String) -> Response {
    s.token_calls.fetch_add(1, Ordering::SeqCst);
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let forced = s.token_override.lock().unwrap().clone();
    let response = match forced {
        Some(f) => f().await,
        None => token_inner(&s, headers, body).await,
    };
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn token_inner(s: &ProviderState, headers: HeaderMap, body: String) -> Response {
    let latency = s.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if s.failing.load(Ordering::SeqCst) {
        return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let (id, secret) = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v.starts_with("Basic ") => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&v[6..])
                .unwrap_or_default();
            let raw = String::from_utf8(raw).unwrap_or_default();
            let (i, s) = raw.split_once(':').unwrap_or(("", ""));
            let dec = |x: &str| {
                form_urlencoded::parse(format!("v={x}").as_bytes())
                    .next()
                    .unwrap()
                    .1
                    .into_owned()
            };
            (dec(i), dec(s))
        }
        _ => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    let claims = {
        let clients = s.clients.lock().unwrap();
        match clients.get(&id) {
            Some(c) if c.secret == secret => c.claims.clone(),
            _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
        }
    };
    let lifetime = s.lifetime_secs.load(Ordering::SeqCst);
    let kid = s.signing_kid.lock().unwrap().clone();
    let token = mint(&kid, &id, claims, lifetime);
    s.issued.lock().unwrap().push(token.clone());
    axum::Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": lifetime }))
        .into_response()
}

async fn jwks(State(s): State<Arc<ProviderState>>) -> Response {
    s.jwks_calls.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) || s.jwks_down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys: Vec<Value> = s
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|kid| serde_json::from_str(&fixture(&format!("{kid}.jwk.json"))).unwrap())
        .collect();
    axum::Json(json!({ "keys": keys, "request_id": "req-test" })).into_response()
}
