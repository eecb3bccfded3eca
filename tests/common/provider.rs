//! A real OAuth2 token endpoint and JWKS endpoint on loopback, for tests and benchmarks: it counts
//! every call, signs RS256 tokens with the fixture keys, and can be made slow, failing or
//! unreachable.
//!
//! Like a real authorization server it accepts client credentials only the way it was configured
//! to ([`ClientAuth`], `client_secret_post` by default as the sidecar's default): a token request
//! authenticated any other way — Basic to a `post` endpoint, a form body to a `basic` one, both at
//! once (RFC 6749 §2.3) — is answered 401 `invalid_client`, so a test named for one method fails
//! when the sidecar sends the other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
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

/// How the token endpoint wants clients to authenticate (RFC 6749 §2.3.1; Stytch's JSON body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body, no `Authorization` header.
    #[default]
    SecretPost,
    /// `Authorization: Basic` with form-urlencoded id and secret, no secret in the body.
    SecretBasic,
    /// A JSON body `{"client_id", "client_secret", "grant_type"}` (`Content-Type:
    /// application/json`), as Stytch's token endpoint takes it; no `Authorization` header.
    StytchJson,
}

impl ClientAuth {
    /// The sidecar's `provider.client_auth` value for this method (`None`: the sidecar has none).
    pub fn sidecar_setting(self) -> Option<&'static str> {
        match self {
            ClientAuth::SecretPost => Some("client_secret_post"),
            ClientAuth::SecretBasic => Some("client_secret_basic"),
            ClientAuth::StytchJson => None,
        }
    }
}

/// What the token endpoint does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Token and JWKS endpoints answer 503.
    Failing,
    /// Only the JWKS endpoint answers 503.
    JwksDown,
}

/// What a client's exchange answers.
enum Issue {
    /// A token minted at exchange time with these extra claims.
    Claims(Value),
    /// This token, minted ahead (benchmarks: RS256 signing costs about a millisecond, which would
    /// otherwise be measured instead of the sidecar).
    Token(String),
}

struct Client {
    secret: String,
    issue: Issue,
}

pub struct ProviderState {
    client_auth: Mutex<ClientAuth>,
    clients: RwLock<HashMap<String, Client>>,
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
    /// Serves on a free loopback port; clients authenticate with `client_secret_post`.
    pub async fn start() -> FakeProvider {
        Self::start_at("127.0.0.1:0".parse().expect("loopback")).await
    }

    /// Serves on a free loopback port and takes client credentials only as `auth`.
    pub async fn start_with(auth: ClientAuth) -> FakeProvider {
        let p = Self::start().await;
        p.set_client_auth(auth);
        p
    }

    /// Serves on `addr` (the load tool's `provider --listen`).
    pub async fn start_at(addr: SocketAddr) -> FakeProvider {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Self::start_on(listener)
    }

    /// Serves on a listener the test prepared (e.g. one whose backlog it filled first).
    pub fn start_on(listener: tokio::net::TcpListener) -> FakeProvider {
        let state = Arc::new(ProviderState {
            client_auth: Mutex::new(ClientAuth::default()),
            clients: RwLock::new(HashMap::new()),
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
        let addr = listener.local_addr().expect("local addr");
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

    /// The `oauth2` provider section plus a `cache:` section with `cache` (indented lines),
    /// without `listen`: the load tool's sidecar config.
    pub fn sidecar_config(&self, cache: &str) -> String {
        format!("{}cache:\n{cache}", self.oauth2_provider_yaml())
    }

    /// From now on client credentials are accepted only as `auth`.
    pub fn set_client_auth(&self, auth: ClientAuth) {
        *self.state.client_auth.lock().unwrap() = auth;
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
        self.insert_client(id, secret, Issue::Claims(claims));
    }

    /// Registers a client whose every exchange answers `token` (minted ahead, e.g. by
    /// [`Minter::mint_all`]).
    pub fn add_client_with_token(&self, id: &str, secret: &str, token: String) {
        self.insert_client(id, secret, Issue::Token(token));
    }

    fn insert_client(&self, id: &str, secret: &str, issue: Issue) {
        self.state.clients.write().unwrap().insert(
            id.into(),
            Client {
                secret: secret.into(),
                issue,
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

/// The RSA fixture key `kid`, parsed once per process.
fn rsa_key(kid: &str) -> EncodingKey {
    static KEYS: LazyLock<Mutex<HashMap<String, EncodingKey>>> = LazyLock::new(Default::default);
    KEYS.lock()
        .unwrap()
        .entry(kid.to_owned())
        .or_insert_with(|| {
            EncodingKey::from_rsa_pem(fixture(&format!("{kid}.pem")).as_bytes())
                .unwrap_or_else(|e| panic!("fixture {kid}.pem: {e}"))
        })
        .clone()
}

/// The JWKS document the provider serves by default (also what Envoy's `jwt_authn` gets inline
/// in scripts/bench).
pub fn jwks_document() -> Value {
    let key: Value = serde_json::from_str(&fixture("rsa-a.jwk.json")).expect("rsa-a.jwk.json");
    json!({ "keys": [key] })
}

/// Mints one-hour `rsa-a` tokens ahead of time, as the provider would issue them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Minter;

impl Minter {
    /// A one-hour access token for client `sub` carrying `user_id` and scope `read:orders`.
    pub fn mint(&self, sub: &str, user_id: &str) -> String {
        mint(
            "rsa-a",
            sub,
            json!({ "user_id": user_id, "scope": "read:orders" }),
            3600,
        )
    }

    /// Mints tokens for `ids` on every core (client id = sub, user id = `user-<id>`).
    pub fn mint_all(&self, ids: &[String]) -> Vec<String> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = ids.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|id| self.mint(id, &format!("user-{id}")))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("minting thread"))
                .collect()
        })
    }
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
    jsonwebtoken::encode(&header, &claims, &rsa_key(kid)).unwrap()
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
    let (id, secret) = match authenticate(*s.client_auth.lock().unwrap(), &headers, &body) {
        Ok(credentials) => credentials,
        Err((status, code)) => return oauth_error(status, code),
    };
    let lifetime = s.lifetime_secs.load(Ordering::SeqCst);
    let claims = {
        let clients = s.clients.read().unwrap();
        match clients.get(&id) {
            Some(c) if c.secret == secret => match &c.issue {
                Issue::Claims(claims) => claims.clone(),
                Issue::Token(token) => {
                    return axum::Json(json!({
                        "access_token": token, "token_type": "Bearer", "expires_in": lifetime
                    }))
                    .into_response();
                }
            },
            _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
        }
    };
    let kid = s.signing_kid.lock().unwrap().clone();
    let token = mint(&kid, &id, claims, lifetime);
    s.issued.lock().unwrap().push(token.clone());
    axum::Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": lifetime }))
        .into_response()
}

/// The client id and secret of a `client_credentials` request authenticated exactly as `auth`
/// says. Another grant: 400 `unsupported_grant_type`; any other way of authenticating (both Basic
/// and a body secret included: RFC 6749 §2.3 allows one method per request): 401 `invalid_client`.
fn authenticate(
    auth: ClientAuth,
    headers: &HeaderMap,
    body: &str,
) -> Result<(String, String), (StatusCode, &'static str)> {
    let fields =
        request_fields(headers, body).ok_or((StatusCode::BAD_REQUEST, "invalid_request"))?;
    if fields.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return Err((StatusCode::BAD_REQUEST, "unsupported_grant_type"));
    }
    client_credentials(auth, headers, &fields).ok_or((StatusCode::UNAUTHORIZED, "invalid_client"))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == "application/json")
}

/// The request's parameters: a JSON object's string members, or the form body.
fn request_fields(headers: &HeaderMap, body: &str) -> Option<HashMap<String, String>> {
    if is_json(headers) {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) else {
            return None;
        };
        Some(
            map.into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
                .collect(),
        )
    } else {
        Some(
            form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect(),
        )
    }
}

fn client_credentials(
    auth: ClientAuth,
    headers: &HeaderMap,
    fields: &HashMap<String, String>,
) -> Option<(String, String)> {
    let basic = headers.get("authorization").map(|v| v.to_str().ok());
    let json = is_json(headers);
    let in_body = || {
        Some((
            fields.get("client_id")?.clone(),
            fields.get("client_secret")?.clone(),
        ))
    };
    match auth {
        ClientAuth::SecretPost if basic.is_none() && !json => in_body(),
        ClientAuth::StytchJson if basic.is_none() && json => in_body(),
        ClientAuth::SecretBasic if !json && !fields.contains_key("client_secret") => {
            let raw = basic??.strip_prefix("Basic ")?;
            let raw = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
            let (id, secret) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
            let decode = |x: &str| {
                form_urlencoded::parse(format!("v={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        }
        _ => None,
    }
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
