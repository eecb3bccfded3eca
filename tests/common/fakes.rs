//! In-memory parts for an `Authorizer` with no sockets: a token endpoint that counts its calls,
//! follows a script of answers and faults, and issues real RS256 JWTs signed with the fixture
//! keys (so verification is the real one); a key source serving the fixture JWKS; an in-memory
//! shared store; and the `FakeClock` that all of them and the authorizer read. Time moves only
//! when a test says `clock.advance(..)`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use m2m_authz::authorizer::{Authorizer, Parts};
use m2m_authz::clock::Clock;
pub use m2m_authz::clock::FakeClock;
use m2m_authz::config::Config;
use m2m_authz::credentials::Secret;
use m2m_authz::exchange::{ExchangeError, Issued, TokenEndpoint};
use m2m_authz::jwks::{JwksError, KeySource};
use serde_json::{Value, json};

use super::provider::{AUDIENCE, ISSUER};

/// Where the fake clocks start: a fixed wall-clock time (in 2033), so token claims are the same
/// each run, and a check that read the system clock instead would find the tokens not yet valid.
pub const START_UNIX: u64 = 2_000_000_000;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(super::repo_root().join("tests/fixtures").join(name)).expect("fixture")
}

/// What the fake token endpoint answers one call with, instead of its usual behaviour.
pub enum Answer {
    Fault(ExchangeError),
    Token {
        access_token: String,
        expires_in: Option<Duration>,
    },
}

struct Client {
    secret: String,
    claims: Value,
}

/// A token endpoint in memory: refuses unknown clients and wrong secrets as a provider would
/// (`invalid_client`), and issues tokens whose `iat`/`nbf`/`exp` are read from the fake clock.
pub struct FakeTokenEndpoint {
    clock: Arc<FakeClock>,
    clients: Mutex<HashMap<String, Client>>,
    calls: AtomicUsize,
    lifetime_secs: AtomicU64,
    kid: Mutex<String>,
    /// Every call fails with this until cleared.
    failing: Mutex<Option<ExchangeError>>,
    /// Answers for the next calls, in order, before anything else.
    script: Mutex<VecDeque<Answer>>,
    issued: Mutex<Vec<String>>,
}

impl FakeTokenEndpoint {
    pub fn new(clock: Arc<FakeClock>) -> Arc<Self> {
        Arc::new(FakeTokenEndpoint {
            clock,
            clients: Mutex::new(HashMap::new()),
            calls: AtomicUsize::new(0),
            lifetime_secs: AtomicU64::new(3600),
            kid: Mutex::new("rsa-a".into()),
            failing: Mutex::new(None),
            script: Mutex::new(VecDeque::new()),
            issued: Mutex::new(Vec::new()),
        })
    }

    /// Registers (or re-keys) a client whose tokens carry `user_id` and `read:orders`.
    pub fn add_client(&self, id: &str, secret: &str, user_id: &str) {
        self.add_client_with_claims(
            id,
            secret,
            json!({ "user_id": user_id, "scope": "read:orders" }),
        );
    }

    pub fn add_client_with_claims(&self, id: &str, secret: &str, claims: Value) {
        self.clients.lock().unwrap().insert(
            id.into(),
            Client {
                secret: secret.into(),
                claims,
            },
        );
    }

    /// The lifetime (`exp - iat` and `expires_in`) of tokens issued from now on.
    pub fn set_lifetime(&self, secs: u64) {
        self.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// Every call fails with `fault` until `fail_with(None)`.
    pub fn fail_with(&self, fault: Option<ExchangeError>) {
        *self.failing.lock().unwrap() = fault;
    }

    /// The next call gets `answer` (several queue up in order).
    pub fn script(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    /// Signs tokens issued from now on with the fixture key `kid`.
    pub fn sign_with(&self, kid: &str) {
        *self.kid.lock().unwrap() = kid.into();
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every access token issued so far, in order.
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    /// A token as this endpoint would issue it now for `sub`, with `extra` claims.
    pub fn mint(&self, sub: &str, extra: Value) -> String {
        let now = self.clock.unix_now();
        let mut claims = json!({
            "iss": ISSUER, "aud": [AUDIENCE], "sub": sub,
            "iat": now, "nbf": now, "exp": now + self.lifetime_secs.load(Ordering::SeqCst),
        });
        if let Value::Object(extra) = extra {
            claims.as_object_mut().unwrap().extend(extra);
        }
        let kid = self.kid.lock().unwrap().clone();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.clone());
        header.typ = Some("JWT".into());
        let key = EncodingKey::from_rsa_pem(fixture(&format!("{kid}.pem")).as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn answer(&self, client_id: &str, secret: &Secret) -> Result<Issued, ExchangeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(answer) = self.script.lock().unwrap().pop_front() {
            return match answer {
                Answer::Fault(e) => Err(e),
                Answer::Token {
                    access_token,
                    expires_in,
                } => Ok(Issued {
                    access_token,
                    expires_in,
                }),
            };
        }
        if let Some(e) = self.failing.lock().unwrap().clone() {
            return Err(e);
        }
        let claims = match self.clients.lock().unwrap().get(client_id) {
            Some(c) if c.secret == secret.expose() => c.claims.clone(),
            _ => {
                return Err(ExchangeError::Rejected {
                    code: "invalid_client".into(),
                });
            }
        };
        let token = self.mint(client_id, claims);
        self.issued.lock().unwrap().push(token.clone());
        Ok(Issued {
            access_token: token,
            expires_in: Some(Duration::from_secs(
                self.lifetime_secs.load(Ordering::SeqCst),
            )),
        })
    }
}

impl TokenEndpoint for FakeTokenEndpoint {
    fn exchange<'a>(
        &'a self,
        client_id: &'a str,
        secret: &'a Secret,
    ) -> BoxFuture<'a, Result<Issued, ExchangeError>> {
        Box::pin(async move { self.answer(client_id, secret) })
    }
}

/// A key source in memory: publishes fixture keys by `kid`, counts fetches, and can be down.
pub struct FakeKeySource {
    published: Mutex<Vec<String>>,
    calls: AtomicUsize,
    down: AtomicBool,
}

impl FakeKeySource {
    /// Publishing `rsa-a`, the key tokens are signed with by default.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeKeySource {
            published: Mutex::new(vec!["rsa-a".into()]),
            calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        })
    }

    /// Publishes exactly these fixture keys from the next fetch on.
    pub fn publish(&self, kids: &[&str]) {
        *self.published.lock().unwrap() = kids.iter().map(|k| k.to_string()).collect();
    }

    /// While down, every fetch answers as an endpoint giving HTTP 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl KeySource for FakeKeySource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<u8>, JwksError>> {
        Box::pin(async move { self.document() })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

impl FakeKeySource {
    fn document(&self) -> Result<Vec<u8>, JwksError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            Err(JwksError::Status(503))
        } else {
            let keys: Vec<Value> = self
                .published
                .lock()
                .unwrap()
                .iter()
                .map(|kid| serde_json::from_str(&fixture(&format!("{kid}.jwk.json"))).unwrap())
                .collect();
            Ok(serde_json::to_vec(&json!({ "keys": keys })).unwrap())
        }
    }
}

/// A shared store in memory, with TTLs on the fake clock; it can be made unreachable.
#[cfg(feature = "shared-cache")]
pub struct MemoryStore {
    clock: Arc<FakeClock>,
    map: Mutex<HashMap<String, (Vec<u8>, tokio::time::Instant)>>,
    down: AtomicBool,
    ops: AtomicUsize,
}

#[cfg(feature = "shared-cache")]
mod memory_store {
    use m2m_authz::shared_cache::{SharedStore, StoreError};

    use super::*;

    impl MemoryStore {
        pub fn new(clock: Arc<FakeClock>) -> Arc<Self> {
            Arc::new(MemoryStore {
                clock,
                map: Mutex::new(HashMap::new()),
                down: AtomicBool::new(false),
                ops: AtomicUsize::new(0),
            })
        }

        /// While down, every operation fails as an unreachable store's would.
        pub fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        /// Operations asked of the store so far (answered or not).
        pub fn ops(&self) -> usize {
            self.ops.load(Ordering::SeqCst)
        }

        /// The live keys (not expired on the fake clock).
        pub fn keys(&self) -> Vec<String> {
            let now = self.clock.now();
            let map = self.map.lock().unwrap();
            map.iter()
                .filter(|(_, (_, until))| *until > now)
                .map(|(k, _)| k.clone())
                .collect()
        }

        /// The live value under `key`.
        pub fn value(&self, key: &str) -> Option<Vec<u8>> {
            let now = self.clock.now();
            let map = self.map.lock().unwrap();
            map.get(key)
                .filter(|(_, until)| *until > now)
                .map(|(v, _)| v.clone())
        }

        /// Writes `value` under `key` for `ttl`, as another pod would.
        pub fn insert(&self, key: &str, value: Vec<u8>, ttl: Duration) {
            let until = self.clock.now() + ttl;
            self.map
                .lock()
                .unwrap()
                .insert(key.to_owned(), (value, until));
        }

        fn op(&self) -> Result<(), StoreError> {
            self.ops.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            Ok(())
        }
    }

    impl SharedStore for MemoryStore {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
            Box::pin(async move { self.op().map(|()| self.value(key)) })
        }

        fn put<'a>(
            &'a self,
            key: &'a str,
            value: Vec<u8>,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move { self.op().map(|()| self.insert(key, value, ttl)) })
        }

        fn try_lock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            Box::pin(async move {
                self.op().map(|()| {
                    let taken = self.value(key).is_none();
                    if taken {
                        self.insert(key, token.as_bytes().to_vec(), ttl);
                    }
                    taken
                })
            })
        }

        fn unlock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                self.op().map(|()| {
                    if self.value(key).as_deref() == Some(token.as_bytes()) {
                        self.map.lock().unwrap().remove(key);
                    }
                })
            })
        }

        fn describe(&self) -> String {
            "memory".into()
        }
    }
}

/// A fake clock with a token endpoint and a key source on it, for the `default` provider.
pub struct Fakes {
    pub clock: Arc<FakeClock>,
    pub token: Arc<FakeTokenEndpoint>,
    pub keys: Arc<FakeKeySource>,
}

impl Default for Fakes {
    fn default() -> Self {
        Fakes::new()
    }
}

impl Fakes {
    pub fn new() -> Fakes {
        let clock = FakeClock::at(START_UNIX);
        Fakes {
            token: FakeTokenEndpoint::new(clock.clone()),
            keys: FakeKeySource::new(),
            clock,
        }
    }

    /// The `provider` section for the fakes (`oauth2` profile). Its URLs are never dialled;
    /// were they, `.invalid` names fail at once rather than reach anything.
    pub fn provider_yaml(&self) -> String {
        format!(
            "provider:\n  kind: oauth2\n  token_url: http://idp.fake.invalid/oauth2/token\n  jwks_url: http://idp.fake.invalid/jwks\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n"
        )
    }

    /// The fakes as the `default` provider's parts, on the fake clock.
    pub fn parts(&self) -> Parts {
        Parts::default()
            .clock(self.clock.clone())
            .token_endpoint("default", self.token.clone())
            .key_source("default", self.keys.clone())
    }

    /// An authorizer for the fakes' provider section followed by `rest` (more YAML), with
    /// `parts` (from [`Fakes::parts`], perhaps with more added) and its keys loaded.
    pub async fn authorizer_with(&self, rest: &str, parts: Parts) -> Arc<Authorizer> {
        let yaml = format!("{}{rest}", self.provider_yaml());
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let a = Authorizer::with_parts(&config, parts).unwrap_or_else(|e| panic!("{e}"));
        a.provider().jwks().refresh().await.expect("JWKS");
        Arc::new(a)
    }

    /// [`Fakes::authorizer_with`] the fakes' own parts.
    pub async fn authorizer(&self, rest: &str) -> Arc<Authorizer> {
        self.authorizer_with(rest, self.parts()).await
    }
}

/// Waits (never sleeps) until no exchange is running or queued in `a`: background refreshes
/// started by earlier checks have filled the cache. Gives up after 10 s of real time.
pub async fn settle(a: &Authorizer) {
    let done = async {
        while a.exchanges_in_flight() > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("exchanges still in flight after 10 s");
}
