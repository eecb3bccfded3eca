//! Attacks on JWT verification (RFC 8725's list and then some), table-driven: each forged or
//! broken token is presented as `Authorization: Bearer …` and must be denied, and the most
//! important ones are also *issued by* a malicious token endpoint, where they must not be allowed
//! either (UNAVAILABLE: the provider misbehaves). Headers that point at keys (`jku`, `x5u`,
//! `jwk`, `x5c`) must be ignored: a server holding the attacker's key must never be asked.

mod common;

use common::check::basic_request as basic;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use common::provider::{AUDIENCE, FakeProvider, ISSUER, now};
use jsonwebtoken::{Algorithm, EncodingKey};
use m2m_authz::authorizer::{Authorizer, Unavailable};
use m2m_authz::config::Config;
use m2m_authz::decision::{Decision, Deny};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(common::repo_root().join("tests/fixtures").join(name)).unwrap()
}

fn rsa_key(kid: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture(&format!("{kid}.pem")).as_bytes()).unwrap()
}

/// A JWS with exactly this header and these claims (no re-serialization by a library, so any
/// header member can be set), signed with `key` under `alg`.
fn signed(header: &Value, claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn rs256(header: Value, claims: &Value, kid_key: &str) -> String {
    signed(&header, claims, Algorithm::RS256, &rsa_key(kid_key))
}

/// Claims that pass every rule of the test provider.
fn good_claims() -> Value {
    json!({"iss": ISSUER, "aud": [AUDIENCE], "sub": "client-x", "user_id": "user-x",
           "iat": now(), "nbf": now(), "exp": now() + 3600})
}

fn claims_with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = good_claims();
    f(c.as_object_mut().unwrap());
    c
}

fn header(kid: &str) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": kid})
}

/// A provider publishing rsa-a and keys of other types (ec-p256, ed25519) whose algorithms are
/// not pinned; rsa-b is the attacker's key, never published.
async fn provider() -> FakeProvider {
    let p = FakeProvider::start().await;
    p.rotate("rsa-a", &["rsa-a", "ec-p256", "ed25519"]);
    p
}

async fn authorizer(p: &FakeProvider, extra: &str) -> Authorizer {
    let yaml = format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  token_type: JWT\n  algorithms: [RS256]\n  jwks_min_refetch_interval: 1h\n{extra}",
        p.token_url(),
        p.jwks_url()
    );
    common::authz::authorizer(&yaml).await
}

use common::check::bearer_request as bearer;

fn description(d: &Deny) -> String {
    let body: Value = serde_json::from_str(&d.body).unwrap();
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn expect_denied(name: &str, r: Result<Decision, Unavailable>, status: u16, why: &str) {
    match r {
        Ok(Decision::Deny(d)) => {
            assert_eq!(d.status, status, "{name}: {d:?}");
            let text = description(&d);
            assert!(
                text.contains(why),
                "{name}: description {text:?}, want {why:?}"
            );
            if status == 401 {
                let challenge = d.challenge.unwrap_or_default();
                assert!(
                    challenge.contains("error=\"invalid_token\""),
                    "{name}: {challenge}"
                );
            }
        }
        Ok(Decision::Allow(a)) => panic!("{name}: ALLOWED as {:?}", a.set()),
        Err(e) => panic!("{name}: unavailable ({e}), want a {status} denial"),
    }
}

/// A server holding the attacker's key (rsa-b) under every URL a token might point at; counts
/// every connection it gets, so a test can prove nothing was fetched.
struct AttackerKeyServer {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AttackerKeyServer {
    async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let jwks = format!(r#"{{"keys":[{}]}}"#, fixture("rsa-b.jwk.json"));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let jwks = jwks.clone();
            async move { ([("content-type", "application/json")], jwks) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AttackerKeyServer { url, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for AttackerKeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tokens pointing at the attacker's key: `jku`, `x5u`, an embedded `jwk`, `x5c`, in each case
/// signed with that key (rsa-b, never published by the provider).
fn key_pointing_tokens(attacker: &AttackerKeyServer) -> Vec<(&'static str, String)> {
    let jwk_b: Value = serde_json::from_str(&fixture("rsa-b.jwk.json")).unwrap();
    let claims = good_claims();
    let with = |extra: Value, kid: Option<&str>| {
        let mut h = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = kid {
            h["kid"] = json!(kid);
        }
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        rs256(h, &claims, "rsa-b")
    };
    let jku = format!("{}/.well-known/jwks.json", attacker.url);
    let x5u = format!("{}/cert.pem", attacker.url);
    vec![
        (
            "jku, attacker kid",
            with(json!({"jku": jku}), Some("rsa-b")),
        ),
        ("jku, no kid", with(json!({"jku": jku}), None)),
        (
            "jku, the provider's kid",
            with(json!({"jku": jku}), Some("rsa-a")),
        ),
        ("x5u", with(json!({"x5u": x5u}), Some("rsa-b"))),
        ("x5u, no kid", with(json!({"x5u": x5u}), None)),
        ("embedded jwk", with(json!({"jwk": jwk_b}), Some("rsa-b"))),
        (
            "embedded jwk, the provider's kid",
            with(json!({"jwk": jwk_b}), Some("rsa-a")),
        ),
        ("embedded jwk, no kid", with(json!({"jwk": jwk_b}), None)),
        (
            "x5c",
            with(
                json!({"x5c": [B64.encode(b"not a certificate")]}),
                Some("rsa-b"),
            ),
        ),
        (
            "jku + x5u + jwk together",
            with(json!({"jku": jku, "x5u": x5u, "jwk": jwk_b}), Some("rsa-b")),
        ),
    ]
}

/// The table: each case is a token that must be refused with this status, and a phrase of the
/// reason the deny body gives.
fn attack_table(p: &FakeProvider) -> Vec<(&'static str, String, u16, &'static str)> {
    let claims = good_claims();
    let n_bytes = {
        let jwk: Value = serde_json::from_str(&fixture("rsa-a.jwk.json")).unwrap();
        B64.decode(jwk["n"].as_str().unwrap()).unwrap()
    };
    let hs256 = |secret: &[u8], kid: Option<&str>| {
        let mut h = json!({"alg": "HS256", "typ": "JWT"});
        if let Some(kid) = kid {
            h["kid"] = json!(kid);
        }
        signed(
            &h,
            &claims,
            Algorithm::HS256,
            &EncodingKey::from_secret(secret),
        )
    };
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            B64.encode(json!({"alg": alg, "typ": "JWT", "kid": "rsa-a"}).to_string()),
            B64.encode(claims.to_string())
        )
    };
    let none_with_real_signature = {
        let real = rs256(header("rsa-a"), &claims, "rsa-a");
        let sig = real.rsplit('.').next().unwrap().to_owned();
        format!("{}{sig}", unsigned("none"))
    };
    let pub_pem = fixture("rsa-a.pub.pem");
    let ec = |kid: &str| {
        signed(
            &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
            &claims,
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(fixture("ec-p256.pem").as_bytes()).unwrap(),
        )
    };
    let ed = signed(
        &json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed25519"}),
        &claims,
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(fixture("ed25519.pem").as_bytes()).unwrap(),
    );
    let rs = |alg: Algorithm, name: &str| {
        signed(
            &json!({"alg": name, "typ": "JWT", "kid": "rsa-a"}),
            &claims,
            alg,
            &rsa_key("rsa-a"),
        )
    };
    let good = |c: Value| rs256(header("rsa-a"), &c, "rsa-a");
    let kid = |kid: &str| rs256(header(kid), &claims, "rsa-a");
    let user = |v: Value| {
        p.mint(
            "rsa-a",
            "client-x",
            json!({ "user_id": v, "scope": "read:orders" }),
        )
    };
    const BAD_TOKEN: &str = "";
    vec![
        // RFC 8725 §2.1: "none".
        ("alg none", unsigned("none"), 401, "well-formed"),
        ("alg None", unsigned("None"), 401, "well-formed"),
        ("alg NONE", unsigned("NONE"), 401, "well-formed"),
        (
            "alg none with a real signature",
            none_with_real_signature,
            401,
            "well-formed",
        ),
        // RFC 8725 §2.1: HMAC keyed with the RSA public key.
        (
            "HS256 keyed with the modulus bytes",
            hs256(&n_bytes, Some("rsa-a")),
            401,
            "algorithm",
        ),
        (
            "HS256 keyed with the public PEM",
            hs256(pub_pem.as_bytes(), Some("rsa-a")),
            401,
            "algorithm",
        ),
        (
            "HS256 keyed with the public PEM, no kid",
            hs256(pub_pem.as_bytes(), None),
            401,
            BAD_TOKEN,
        ),
        (
            "HS256 keyed with the JWK text",
            hs256(fixture("rsa-a.jwk.json").as_bytes(), Some("rsa-a")),
            401,
            "algorithm",
        ),
        // Algorithms outside the pin list [RS256], even on keys the JWKS publishes.
        (
            "RS384 on rsa-a",
            rs(Algorithm::RS384, "RS384"),
            401,
            "algorithm",
        ),
        (
            "PS256 on rsa-a",
            rs(Algorithm::PS256, "PS256"),
            401,
            "algorithm",
        ),
        (
            "RS256 header over an RS512 signature",
            rs(Algorithm::RS512, "RS256"),
            401,
            "signature",
        ),
        (
            "ES256 (published, not pinned)",
            ec("ec-p256"),
            401,
            "key is unknown",
        ),
        ("ES256 claiming rsa-a's kid", ec("rsa-a"), 401, "algorithm"),
        ("EdDSA (published, not pinned)", ed, 401, "key is unknown"),
        // Keys by kid: unknown, and near misses of the real one with path or injection text.
        ("unknown kid", kid("rsa-zzz"), 401, "key is unknown"),
        (
            "kid path traversal",
            kid("../../etc/passwd"),
            401,
            "key is unknown",
        ),
        (
            "kid path to the JWK file",
            kid("../fixtures/rsa-a.jwk.json"),
            401,
            "key is unknown",
        ),
        (
            "kid SQL injection",
            kid("' OR 1=1 --"),
            401,
            "key is unknown",
        ),
        (
            "kid rsa-a' OR '1'='1",
            kid("rsa-a' OR '1'='1"),
            401,
            "key is unknown",
        ),
        ("kid with NUL", kid("rsa-a\u{0}"), 401, "key is unknown"),
        ("kid NUL first", kid("\u{0}rsa-a"), 401, "key is unknown"),
        (
            "kid with CR LF",
            kid("rsa-a\r\nx-user-id: admin"),
            401,
            "key is unknown",
        ),
        ("kid upper case", kid("RSA-A"), 401, "key is unknown"),
        ("kid trailing space", kid("rsa-a "), 401, "key is unknown"),
        (
            "kid very long",
            kid(&"k".repeat(2000)),
            401,
            "key is unknown",
        ),
        ("kid empty", kid(""), 401, "key is unknown"),
        (
            "kid a number",
            rs256(
                json!({"alg": "RS256", "typ": "JWT", "kid": 1}),
                &claims,
                "rsa-a",
            ),
            401,
            "well-formed",
        ),
        // Signature: another key, a tampered payload, none at all.
        (
            "signed by an unpublished key under rsa-a's kid",
            rs256(header("rsa-a"), &claims, "rsa-b"),
            401,
            "signature",
        ),
        (
            "payload swapped after signing",
            {
                let t = good(good_claims());
                let forged = claims_with(|c| {
                    c.insert("user_id".into(), json!("admin"));
                });
                let parts: Vec<&str> = t.split('.').collect();
                format!(
                    "{}.{}.{}",
                    parts[0],
                    B64.encode(forged.to_string()),
                    parts[2]
                )
            },
            401,
            "signature",
        ),
        (
            "signature stripped",
            {
                let t = good(good_claims());
                format!("{}.", t.rsplit_once('.').unwrap().0)
            },
            401,
            BAD_TOKEN,
        ),
        // Time, issuer, audience, type.
        (
            "expired",
            good(claims_with(|c| {
                c.insert("exp".into(), json!(now() - 600));
            })),
            401,
            "expired",
        ),
        (
            "nbf in the future",
            good(claims_with(|c| {
                c.insert("nbf".into(), json!(now() + 600));
            })),
            401,
            "not valid yet",
        ),
        (
            "wrong iss",
            good(claims_with(|c| {
                c.insert("iss".into(), json!("https://evil.test"));
            })),
            401,
            "issuer",
        ),
        (
            "iss a prefix of the real one",
            good(claims_with(|c| {
                c.insert("iss".into(), json!("https://issuer.tes"));
            })),
            401,
            "issuer",
        ),
        (
            "wrong aud",
            good(claims_with(|c| {
                c.insert("aud".into(), json!(["api://other"]));
            })),
            401,
            "audience",
        ),
        (
            "aud missing",
            good(claims_with(|c| {
                c.remove("aud");
            })),
            401,
            "required claim",
        ),
        (
            "exp missing",
            good(claims_with(|c| {
                c.remove("exp");
            })),
            401,
            "required claim",
        ),
        (
            "exp a string",
            good(claims_with(|c| {
                c.insert("exp".into(), json!("99999999999"));
            })),
            401,
            BAD_TOKEN,
        ),
        (
            "typ at+jwt when JWT is pinned",
            rs256(
                json!({"alg": "RS256", "typ": "at+jwt", "kid": "rsa-a"}),
                &claims,
                "rsa-a",
            ),
            401,
            "type",
        ),
        (
            "typ missing when JWT is pinned",
            rs256(json!({"alg": "RS256", "kid": "rsa-a"}), &claims, "rsa-a"),
            401,
            "type",
        ),
        (
            "unknown crit extension",
            rs256(
                json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-a", "crit": ["exp"]}),
                &claims,
                "rsa-a",
            ),
            401,
            "critical",
        ),
        // Structure.
        ("empty segments", "..".into(), 401, BAD_TOKEN),
        ("two segments", "a.b".into(), 401, "well-formed"),
        (
            "four segments",
            format!("{}.x", good(good_claims())),
            401,
            BAD_TOKEN,
        ),
        // The user claim, from a validly signed token: 403, never a header smuggled upstream.
        (
            "user claim an object",
            user(json!({"id": "u"})),
            403,
            "not a string or number",
        ),
        (
            "user claim an array",
            user(json!(["u"])),
            403,
            "not a string or number",
        ),
        (
            "user claim a boolean",
            user(json!(true)),
            403,
            "not a string or number",
        ),
        (
            "user claim with CR LF",
            user(json!("user-1\r\nx-admin: true")),
            403,
            "safe header value",
        ),
        (
            "user claim with LF",
            user(json!("user-1\nx")),
            403,
            "safe header value",
        ),
        (
            "user claim with NUL",
            user(json!("user-1\u{0}")),
            403,
            "safe header value",
        ),
        (
            "user claim non-ASCII",
            user(json!("usér")),
            403,
            "safe header value",
        ),
        (
            "user claim oversized",
            user(json!("u".repeat(2000))),
            403,
            "safe header value",
        ),
        // An empty required claim is no value at all.
        ("user claim empty", user(json!("")), 403, "has no"),
        ("user claim null", user(Value::Null), 403, "has no"),
        // Numbers a double cannot hold exactly are refused, not rounded to another user's id.
        (
            "user claim 2^53 + 1",
            raw(HEADER, &with_member(r#""user_id":9007199254740993"#)),
            403,
            "too large",
        ),
        (
            "user claim -(2^53 + 1)",
            raw(HEADER, &with_member(r#""user_id":-9007199254740993"#)),
            403,
            "too large",
        ),
        (
            "user claim beyond u64",
            raw(
                HEADER,
                &with_member(r#""user_id":123456789012345678901234567890"#),
            ),
            403,
            "too large",
        ),
        (
            "user claim 1e300",
            raw(HEADER, &with_member(r#""user_id":1e300"#)),
            403,
            "too large",
        ),
        // Repeated member names: parsers disagree on which copy counts, so neither is believed.
        (
            "sub twice",
            raw(
                HEADER,
                &format!("{},\"sub\":\"admin\"}}", open_claims(&claims)),
            ),
            401,
            "repeats a member",
        ),
        (
            "user_id twice, once escaped",
            raw(
                HEADER,
                &format!("{},\"\\u0075ser_id\":\"admin\"}}", open_claims(&claims)),
            ),
            401,
            "repeats a member",
        ),
        (
            "nested member twice",
            raw(
                HEADER,
                &format!("{},\"ext\":{{\"a\":1,\"a\":2}}}}", open_claims(&claims)),
            ),
            401,
            "repeats a member",
        ),
        (
            "alg twice in the header",
            raw(
                r#"{"alg":"RS256","typ":"JWT","kid":"rsa-a","alg":"none"}"#,
                &claims.to_string(),
            ),
            401,
            "repeats a member",
        ),
        // `iss` is one string: a list holding the right issuer, or a number, is refused.
        (
            "iss a list holding the issuer",
            good(claims_with(|c| {
                c.insert("iss".into(), json!([ISSUER, "https://evil.test"]));
            })),
            401,
            "wrong type",
        ),
        (
            "iss a number",
            good(claims_with(|c| {
                c.insert("iss".into(), json!(7));
            })),
            401,
            "wrong type",
        ),
        // Time claims at the extremes: a clean refusal, never a panic or a wrapped sum.
        (
            "exp u64::MAX",
            good(claims_with(|c| {
                c.insert("exp".into(), json!(u64::MAX));
            })),
            401,
            BAD_TOKEN,
        ),
        (
            "exp negative",
            good(claims_with(|c| {
                c.insert("exp".into(), json!(-1));
            })),
            401,
            BAD_TOKEN,
        ),
        (
            "exp fractional",
            good(claims_with(|c| {
                c.insert("exp".into(), json!(now() as f64 + 3600.5));
            })),
            401,
            BAD_TOKEN,
        ),
        (
            "exp 1e300",
            raw(
                HEADER,
                &format!(
                    "{},\"exp\":1e300}}",
                    open_claims(&claims_with(|c| {
                        c.remove("exp");
                    }))
                ),
            ),
            401,
            BAD_TOKEN,
        ),
        (
            "nbf u64::MAX",
            good(claims_with(|c| {
                c.insert("nbf".into(), json!(u64::MAX));
            })),
            401,
            BAD_TOKEN,
        ),
        (
            "nbf negative",
            good(claims_with(|c| {
                c.insert("nbf".into(), json!(i64::MIN));
            })),
            401,
            BAD_TOKEN,
        ),
        (
            "iat u64::MAX",
            good(claims_with(|c| {
                c.insert("iat".into(), json!(u64::MAX));
            })),
            401,
            BAD_TOKEN,
        ),
    ]
}

const HEADER: &str = r#"{"alg":"RS256","typ":"JWT","kid":"rsa-a"}"#;

/// Signed with rsa-a over exactly this header and payload text (to write what serde never
/// would: repeated members, numbers beyond any integer type).
fn raw(header: &str, payload: &str) -> String {
    let message = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &rsa_key("rsa-a"), Algorithm::RS256)
            .unwrap();
    format!("{message}.{signature}")
}

/// The claims' JSON text without its closing brace, to append members to.
fn open_claims(claims: &Value) -> String {
    let text = claims.to_string();
    text[..text.len() - 1].to_owned()
}

/// Good claims whose `user_id` is the given member text.
fn with_member(member: &str) -> String {
    let c = claims_with(|c| {
        c.remove("user_id");
    });
    format!("{},{member}}}", open_claims(&c))
}

#[tokio::test]
async fn forged_and_broken_bearer_tokens_are_denied() {
    let p = provider().await;
    let a = authorizer(&p, "").await;
    // The baseline: a good token is allowed, so every denial below is about its one change.
    let ok = a
        .check(&bearer(&rs256(header("rsa-a"), &good_claims(), "rsa-a")))
        .await
        .unwrap();
    assert!(matches!(ok, Decision::Allow(_)), "{ok:?}");
    let table = attack_table(&p);
    assert!(table.len() >= 50);
    for (name, token, status, why) in table {
        expect_denied(name, a.check(&bearer(&token)).await, status, why);
        // Asked twice: a refusal is never turned into an allow by the cache.
        expect_denied(name, a.check(&bearer(&token)).await, status, why);
    }
    assert!(a.cache().len() <= 1, "only the baseline token was cached");
    // Made-up kids cost the provider one JWKS refetch, not one per token.
    assert_eq!(p.jwks_calls(), 2);
}

#[tokio::test]
async fn key_pointing_headers_are_never_fetched() {
    let p = provider().await;
    let attacker = AttackerKeyServer::start().await;
    let a = authorizer(&p, "").await;
    for (name, token) in key_pointing_tokens(&attacker) {
        match a.check(&bearer(&token)).await {
            Ok(Decision::Deny(d)) => assert_eq!(d.status, 401, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(
        attacker.hits(),
        0,
        "the sidecar fetched a key from a URL in a token"
    );
    // The attacker's server does answer: the zero above is not an unreachable address.
    let body = common::http_client()
        .get(format!("{}/.well-known/jwks.json", attacker.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("rsa-b"));
}

/// A token endpoint that issues forged tokens: nothing it issues that fails our rules is ever
/// allowed. Signature, key and claim failures are the provider's fault (UNAVAILABLE, so Envoy
/// fails closed); an unusable user claim is a 403.
#[tokio::test]
async fn forged_tokens_from_a_malicious_token_endpoint_are_not_allowed() {
    let p = provider().await;
    let attacker = AttackerKeyServer::start().await;
    let a = authorizer(&p, "").await;
    let important = [
        "alg none",
        "HS256 keyed with the modulus bytes",
        "HS256 keyed with the public PEM",
        "RS384 on rsa-a",
        "ES256 (published, not pinned)",
        "unknown kid",
        "kid path traversal",
        "kid with NUL",
        "signed by an unpublished key under rsa-a's kid",
        "payload swapped after signing",
        "expired",
        "nbf in the future",
        "wrong iss",
        "wrong aud",
        "exp missing",
        "typ at+jwt when JWT is pinned",
        "user claim an object",
        "user claim with CR LF",
        "user claim oversized",
    ];
    let mut cases: Vec<(String, String, u16)> = attack_table(&p)
        .into_iter()
        .filter(|(name, ..)| important.contains(name))
        .map(|(name, token, status, _)| (name.to_owned(), token, status))
        .collect();
    assert_eq!(cases.len(), important.len());
    for (name, token) in key_pointing_tokens(&attacker) {
        cases.push((name.to_owned(), token, 401));
    }
    for (i, (name, token, status)) in cases.iter().enumerate() {
        p.issue_raw(token);
        // A new credential each time: no cache entry or shared flight carries over.
        let r = a.check(&basic(&format!("client-{i}"), "s3cret")).await;
        match (r, status) {
            (Err(Unavailable::IssuedTokenInvalid(_)), 401) => {}
            (Ok(Decision::Deny(d)), 403) => assert_eq!(d.status, 403, "{name}"),
            (other, _) => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(
        attacker.hits(),
        0,
        "a key URL in an issued token was fetched"
    );
    assert_eq!(a.cache().len(), 0, "nothing forged was cached");
    // The provider behaves again: the sidecar allows at once.
    p.set_token_override(None);
    p.add_client("client-ok", "s3cret", "user-ok");
    let ok = a.check(&basic("client-ok", "s3cret")).await.unwrap();
    assert!(matches!(ok, Decision::Allow(_)), "{ok:?}");
}

/// Key retirement: rsa-a and rsa-b are published, then only rsa-b. After the JWKS refresh, a
/// bearer token signed by rsa-a — cached as verified while rsa-a was published — is refused: the
/// cache drops bearer entries whose kid left the JWKS.
#[tokio::test]
async fn a_retired_key_stops_its_cached_bearer_tokens() {
    let p = FakeProvider::start().await;
    p.rotate("rsa-a", &["rsa-a", "rsa-b"]);
    let a = authorizer(&p, "").await;
    let old = p.mint("rsa-a", "client-1", json!({"user_id": "user-1"}));
    let new = p.mint("rsa-b", "client-2", json!({"user_id": "user-2"}));
    for token in [&old, &old, &new] {
        let d = a.check(&bearer(token)).await.unwrap();
        assert!(matches!(d, Decision::Allow(_)), "{d:?}");
    }
    assert_eq!(
        a.stats().hits,
        1,
        "the second check of the old token was a cache hit"
    );
    assert_eq!(a.cache().len(), 2);

    p.rotate("rsa-b", &["rsa-b"]);
    a.provider().jwks().refresh().await.unwrap();
    expect_denied(
        "token signed by the retired key",
        a.check(&bearer(&old)).await,
        401,
        "key is unknown",
    );
    assert_eq!(a.cache().len(), 1, "the retired key's entry was dropped");
    let d = a.check(&bearer(&new)).await.unwrap();
    assert!(
        matches!(d, Decision::Allow(_)),
        "the live key still works: {d:?}"
    );
    // Freshly minted with the retired key: refused too.
    let again = p.mint("rsa-a", "client-1", json!({"user_id": "user-1"}));
    expect_denied(
        "new token, retired key",
        a.check(&bearer(&again)).await,
        401,
        "key is unknown",
    );
}

/// `provider.max_token_bytes`: a token over it is refused before it is parsed (the reason is
/// its length, even for text that is no JWT at all), however valid it otherwise is.
#[tokio::test]
async fn tokens_over_the_size_limit_are_refused_unparsed() {
    let p = provider().await;
    let strict = authorizer(&p, "  max_token_bytes: 600\n").await;
    let default = authorizer(&p, "").await;
    let padded = p.mint(
        "rsa-a",
        "client-x",
        json!({"user_id": "user-x", "pad": "p".repeat(400)}),
    );
    assert!(
        padded.len() > 600 && padded.len() < 4096,
        "{}",
        padded.len()
    );
    let d = default.check(&bearer(&padded)).await.unwrap();
    assert!(
        matches!(d, Decision::Allow(_)),
        "valid under the default limit: {d:?}"
    );
    expect_denied(
        "valid but too long",
        strict.check(&bearer(&padded)).await,
        401,
        "too long",
    );
    expect_denied(
        "garbage, too long",
        strict.check(&bearer(&"a".repeat(601))).await,
        401,
        "too long",
    );
    expect_denied(
        "garbage within the limit",
        strict.check(&bearer(&"a".repeat(599))).await,
        401,
        "well-formed",
    );
    // Issued by the provider: a token over the limit is never accepted either.
    p.issue_raw(&padded);
    let r = strict.check(&basic("client-big", "s3cret")).await;
    assert!(
        matches!(r, Err(Unavailable::IssuedTokenInvalid(_))),
        "{r:?}"
    );
    // Longer than the credential header limit (4096 by default): refused as a malformed request.
    let huge = "a".repeat(5000);
    match default.check(&bearer(&huge)).await.unwrap() {
        Decision::Deny(d) => assert_eq!(d.status, 400),
        other => panic!("{other:?}"),
    }
}

/// `provider.max_token_age`: an `iat` in the future beyond the leeway would make any token look
/// young, so it is refused; within the leeway it passes, and so does a fresh token.
#[tokio::test]
async fn a_future_issue_time_is_refused_under_max_token_age() {
    let p = provider().await;
    let a = authorizer(&p, "  max_token_age: 5m\n").await;
    let at = |iat: u64| {
        rs256(
            header("rsa-a"),
            &claims_with(|c| {
                c.insert("iat".into(), json!(iat));
                c.remove("nbf");
            }),
            "rsa-a",
        )
    };
    for (name, iat) in [
        ("an hour ahead", now() + 3600),
        ("far future", 253_402_300_799),
    ] {
        expect_denied(name, a.check(&bearer(&at(iat))).await, 401, "in the future");
    }
    expect_denied(
        "older than max_token_age",
        a.check(&bearer(&at(now() - 600))).await,
        401,
        "older",
    );
    for iat in [now(), now() + 20] {
        let d = a.check(&bearer(&at(iat))).await.unwrap();
        assert!(matches!(d, Decision::Allow(_)), "iat {iat}: {d:?}");
    }
}

/// An optional identity claim that is empty sets no header, and the header is on the remove
/// list (so whatever a caller sent under that name never passes); it does not refuse the
/// request.
#[tokio::test]
async fn an_empty_optional_claim_removes_its_header() {
    let p = provider().await;
    let a = authorizer(&p, "").await;
    let token = rs256(
        header("rsa-a"),
        &claims_with(|c| {
            c.insert("sub".into(), json!(""));
        }),
        "rsa-a",
    );
    match a.check(&bearer(&token)).await.unwrap() {
        Decision::Allow(allow) => {
            let set: Vec<&str> = allow.set().iter().map(|(h, _)| &**h).collect();
            assert_eq!(set, vec!["x-user-id"], "{:?}", allow.set());
            assert!(
                allow.remove().iter().any(|h| &**h == "x-client-id"),
                "{:?}",
                allow.remove()
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A JWKS that publishes several keys under one `kid` (a provider mid-rotation): a token signed
/// by any of them verifies; one signed by a key it does not publish is refused.
#[tokio::test]
async fn every_key_under_a_shared_kid_is_tried() {
    let p = provider().await;
    let renamed = |name: &str| {
        let mut jwk: Value = serde_json::from_str(&fixture(name)).unwrap();
        jwk["kid"] = json!("shared");
        jwk.to_string()
    };
    let jwks = format!(
        r#"{{"keys":[{},{}]}}"#,
        renamed("rsa-a.jwk.json"),
        renamed("rsa-b.jwk.json")
    );
    let app = axum::Router::new().fallback(move || {
        let jwks = jwks.clone();
        async move { ([("content-type", "application/json")], jwks) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let yaml = format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {jwks_url}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  token_type: JWT\n  jwks_min_refetch_interval: 1h\n",
        p.token_url()
    );
    let a = Authorizer::new(&Config::from_yaml(&yaml).unwrap()).unwrap();
    a.provider().jwks().refresh().await.expect("JWKS");
    for signer in ["rsa-a", "rsa-b"] {
        let token = rs256(header("shared"), &good_claims(), signer);
        let d = a.check(&bearer(&token)).await.unwrap();
        assert!(matches!(d, Decision::Allow(_)), "signed by {signer}: {d:?}");
    }
    let ec = signed(
        &json!({"alg": "ES256", "typ": "JWT", "kid": "shared"}),
        &good_claims(),
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(fixture("ec-p256.pem").as_bytes()).unwrap(),
    );
    expect_denied(
        "ES256 under the shared kid",
        a.check(&bearer(&ec)).await,
        401,
        "algorithm",
    );
    let tampered = {
        let t = rs256(header("shared"), &good_claims(), "rsa-a");
        let (head, sig) = t.rsplit_once('.').unwrap();
        let first = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}.{first}{}", &sig[1..])
    };
    expect_denied(
        "signed by neither",
        a.check(&bearer(&tampered)).await,
        401,
        "signature",
    );
    server.abort();
}
