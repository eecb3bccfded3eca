//! A small OAuth2 token endpoint + JWKS for the benchmarks (the tests' `FakeProvider` cannot be
//! used from a bench target). Tokens are minted ahead of time (RS256 signing costs about a
//! millisecond, which would otherwise be measured instead of the sidecar), so the endpoint only
//! checks the secret, waits its configured latency and answers.

// Shared by the load tool and the hit-path bench; each uses a part.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "api://test";
pub const KID: &str = "rsa-a";

pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JWKS document the endpoint serves (also what Envoy's `jwt_authn` gets inline).
pub fn jwks() -> Value {
    let key: Value = serde_json::from_str(&fixture(&format!("{KID}.jwk.json"))).expect("jwk");
    json!({ "keys": [key] })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs RS256 tokens as the provider issues them.
pub struct Minter {
    key: EncodingKey,
}

impl Default for Minter {
    fn default() -> Self {
        Minter {
            key: EncodingKey::from_rsa_pem(fixture(&format!("{KID}.pem")).as_bytes()).expect("pem"),
        }
    }
}

impl Minter {
    /// A one-hour access token for client `sub` carrying `user_id`.
    pub fn mint(&self, sub: &str, user_id: &str) -> String {
        let claims = json!({
            "iss": ISSUER, "aud": [AUDIENCE], "sub": sub,
            "iat": now(), "nbf": now(), "exp": now() + 3600,
            "user_id": user_id, "scope": "read:orders",
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
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

struct Client {
    secret: String,
    token: String,
}

#[derive(Default)]
pub struct ProviderState {
    clients: RwLock<HashMap<String, Client>>,
    pub token_calls: AtomicU64,
    latency_ms: AtomicU64,
}

#[derive(Clone)]
pub struct BenchProvider {
    pub addr: SocketAddr,
    pub state: Arc<ProviderState>,
}

impl BenchProvider {
    pub async fn start(addr: SocketAddr) -> BenchProvider {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind provider");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ProviderState::default());
        let jwks = Arc::new(jwks());
        let app = Router::new()
            .route("/oauth2/token", post(token))
            .with_state(state.clone())
            .route(
                "/jwks",
                get(move || {
                    let jwks = jwks.clone();
                    async move { axum::Json((*jwks).clone()) }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BenchProvider { addr, state }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Registers a client whose exchange answers `token`.
    pub fn add_client(&self, id: &str, secret: &str, token: String) {
        self.state.clients.write().expect("lock").insert(
            id.to_owned(),
            Client {
                secret: secret.to_owned(),
                token,
            },
        );
    }

    pub fn set_latency(&self, d: Duration) {
        self.state
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn token_calls(&self) -> u64 {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    /// The sidecar config (YAML, without `listen`) for this provider.
    pub fn sidecar_config(&self, cache: &str) -> String {
        format!(
            "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\ncache:\n{cache}",
            self.token_url(),
            self.jwks_url()
        )
    }
}

async fn token(State(s): State<Arc<ProviderState>>, body: String) -> Response {
    s.token_calls.fetch_add(1, Ordering::SeqCst);
    let latency = s.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let mut id = String::new();
    let mut secret = String::new();
    for (k, v) in form_urlencoded::parse(body.as_bytes()) {
        match &*k {
            "client_id" => id = v.into_owned(),
            "client_secret" => secret = v.into_owned(),
            _ => {}
        }
    }
    let token = {
        let clients = s.clients.read().expect("lock");
        match clients.get(&id) {
            Some(c) if c.secret == secret => c.token.clone(),
            _ => {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({ "error": "invalid_client" })),
                )
                    .into_response();
            }
        }
    };
    axum::Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 }))
        .into_response()
}
