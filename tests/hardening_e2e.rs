//! Issue #13 through a real Envoy (the shipped bootstrap) in front of the real binary and a real
//! token endpoint: what a caller or an operator would notice at Envoy's listener when a policy
//! file is emptied or cut short, when a provider-signed token carries claims built to confuse a
//! verifier, when a token's times sit at the integer extremes, and when identity or credential
//! headers carry what they must not. Path and host spellings are in tests/policy_spelling.rs.
//!
//! Requests are written byte for byte on a TCP socket, so that header values an HTTP client
//! library would refuse (control characters) reach Envoy as sent.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::echo::{EchoRequest, EchoUpstream};
use common::envoy::{Envoy, Front};
use common::provider::{AUDIENCE, FakeProvider, ISSUER, TokenOverride, mint, now};
use common::sidecar::Sidecar;
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `realm` the sidecars here are configured with, so challenges can be compared whole.
const REALM: &str = "hardening";

/// How long a change may take to show (polls of 200 ms plus a settle time of 100 ms, on a
/// loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(15);

/// One HTTP/1.1 answer as the caller saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Lower-case name → value, in order.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn challenge(&self) -> Option<&str> {
        self.header("www-authenticate")
    }

    /// The `error` member of the JSON body, if it is one.
    fn body_error(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body["error"].as_str().map(str::to_owned)
    }
}

/// Sends `method target` with `Host: api.example.com` and these header lines, their values as
/// raw bytes, and reads the whole answer (the connection is closed after it).
async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &[u8])]) -> Reply {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n")
            .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("Envoy answered within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn basic(id: &str, secret: &str) -> Vec<u8> {
    common::check::basic(id, secret).into_bytes()
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

/// Provider, sidecar, upstream and Envoy, wired as a user deploys them.
struct Stack {
    provider: FakeProvider,
    sidecar: Sidecar,
    upstream: EchoUpstream,
    envoy: Envoy,
}

/// What one request through the stack did.
struct Outcome {
    reply: Reply,
    /// What the upstream received, if the request reached it.
    upstream: Option<EchoRequest>,
}

impl Stack {
    /// `provider_extra` is appended inside `provider:`, `extra` at the top level.
    async fn start(provider: FakeProvider, provider_extra: &str, extra: &str) -> Stack {
        let (sidecar, Front { envoy, upstream }) = common::envoy::stack(&format!(
            "realm: {REALM}\n{}{provider_extra}{extra}",
            provider.oauth2_provider_yaml()
        ))
        .await;
        Stack {
            provider,
            sidecar,
            upstream,
            envoy,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Outcome {
        let before = self.upstream.request_count();
        let reply = send(self.envoy.listener_addr(), "GET", path, headers).await;
        let upstream = (self.upstream.request_count() > before)
            .then(|| self.upstream.last_request())
            .flatten();
        Outcome { reply, upstream }
    }

    /// The value of one series of the sidecar's admin `/metrics`, e.g.
    /// `m2m_authz_panics_total{site="check"}`.
    async fn metric(&self, series: &str) -> u64 {
        let text = self.sidecar.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }

    /// Polls until the sidecar has dealt with `n` policy versions in all (applied or refused),
    /// and returns how many it refused.
    async fn wait_reloads(&self, n: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (ok, failed) = (
                self.metric(RELOADS_OK).await,
                self.metric(RELOADS_FAILED).await,
            );
            if ok + failed >= n {
                return failed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{ok} policy versions applied and {failed} refused, not {n} in all, after {DEADLINE:?}:\n{}",
                self.sidecar.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts no panic was contained so far (each would be a bug answered as UNAVAILABLE).
    async fn assert_no_panics(&self, after: &str) {
        for site in ["check", "exchange"] {
            let series = format!("m2m_authz_panics_total{{site=\"{site}\"}}");
            assert_eq!(
                self.metric(&series).await,
                0,
                "after {after}:\n{}",
                self.sidecar.logs()
            );
        }
    }

    /// Asserts the sidecar process is still running and SERVING.
    async fn assert_serving(&mut self) {
        assert_eq!(self.sidecar.child.try_wait(), None, "the sidecar exited");
        assert_eq!(
            self.sidecar.health().await,
            Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
        );
    }
}

/// Asserts a refusal from the sidecar through Envoy: `status`, the upstream not reached, and
/// the RFC 6750 challenge `Bearer realm="hardening"` with `error` (none: no error attribute).
fn assert_refused(what: &str, o: &Outcome, status: u16, error: Option<&str>) {
    let r = &o.reply;
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert!(o.upstream.is_none(), "{what}: the upstream was reached");
    let challenge = r
        .challenge()
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate in {r:?}"));
    let realm = format!("Bearer realm=\"{REALM}\"");
    match error {
        Some(code) => assert!(
            challenge.starts_with(&format!("{realm}, error=\"{code}\", error_description=\"")),
            "{what}: {challenge}"
        ),
        None => assert_eq!(challenge, realm, "{what}"),
    }
}

fn assert_allowed<'a>(what: &str, o: &'a Outcome) -> &'a EchoRequest {
    assert_eq!(o.reply.status, 200, "{what}: {:?}", o.reply);
    o.upstream
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: 200 without reaching the upstream"))
}

// ---------------------------------------------------------------------------------------------
// 1. Policy reloads never weaken silently.

const POLICY_V1: &str = "\
rules:
  - {name: health, match: {path: /healthz}, allow_anonymous: true}
  - {name: admin, match: {path: {prefix: /admin}}, deny: true}
default: {require: {}}
";

/// A new version: one more closed prefix.
const POLICY_V2: &str = "\
rules:
  - {name: health, match: {path: /healthz}, allow_anonymous: true}
  - {name: admin, match: {path: {prefix: /admin}}, deny: true}
  - {name: reports, match: {path: {prefix: /reports}}, deny: true}
default: {require: {}}
";

/// Replaces `path` as an editor that saves safely does: a new file renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const RELOADS_FAILED: &str = "m2m_authz_policy_reloads_total{outcome=\"failed\"}";
const RELOADS_OK: &str = "m2m_authz_policy_reloads_total{outcome=\"ok\"}";

/// What every policy version here must keep: `/admin` closed (403, no challenge: a closed route
/// is not the credential's fault) to a valid credential, the default open to it.
async fn assert_admin_closed(s: &Stack, after: &str) {
    let auth = basic("client-1", "s3cret");
    let o = s.get("/admin/users", &[("authorization", &auth)]).await;
    assert_eq!(
        (o.reply.status, o.upstream.is_some()),
        (403, false),
        "after {after}: /admin is open: {:?}\n{}",
        o.reply,
        s.sidecar.logs()
    );
    assert_eq!(
        (o.reply.body_error().as_deref(), o.reply.challenge()),
        (Some("access_denied"), None),
        "{after}"
    );
    let o = s.get("/v1/data", &[("authorization", &auth)]).await;
    assert_allowed(after, &o);
    let o = s.get("/healthz", &[]).await;
    assert_allowed(after, &o);
}

/// An emptied file (`>`), a file cut short that still parses, and a broken file on SIGHUP are
/// each refused, counted and logged once, and the closed prefix stays closed through Envoy; a
/// whole new file renamed into place is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_through_envoy_never_weaken_the_policy() {
    crate::needs!(Envoy);
    let provider = FakeProvider::start().await;
    provider.add_client("client-1", "s3cret", "user-1");
    let dir = common::process::TempDir::new("hardening-policy");
    let file = dir.join("policy.yaml");
    std::fs::write(&file, POLICY_V1).unwrap();
    let mut s = Stack::start(
        provider,
        "",
        &format!(
            "policy:\n  file: {}\n  reload_interval: 200ms\n",
            file.display()
        ),
    )
    .await;
    assert_admin_closed(&s, "start").await;
    assert_eq!(s.metric(RELOADS_FAILED).await, 0);

    // `> policy.yaml`: truncated to nothing, and left so while the sidecar polls it.
    std::fs::File::create(&file).unwrap();
    let refused = s.wait_reloads(1).await;
    assert_admin_closed(&s, "an empty file").await;
    assert_eq!(refused, 1, "an empty file was applied");

    // A writer cut off after the first rule: valid YAML, no `admin` rule and no `default`.
    let cut = POLICY_V1.find("  - {name: admin").unwrap();
    std::fs::write(&file, &POLICY_V1[..cut]).unwrap();
    let refused = s.wait_reloads(2).await;
    assert_admin_closed(&s, "a file cut short").await;
    assert_eq!(refused, 2, "a file cut short was applied");

    // A whole new version, renamed into place: applied within a few polls.
    write_atomically(&file, POLICY_V2);
    let auth = basic("client-1", "s3cret");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let o = s.get("/reports/q3", &[("authorization", &auth)]).await;
        if o.reply.status == 403 {
            assert!(o.upstream.is_none());
            break;
        }
        assert_allowed("/reports before the new version", &o);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new version never applied:\n{}",
            s.sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.metric(RELOADS_OK).await, 1);
    assert_admin_closed(&s, "the new version").await;

    // SIGHUP with a broken file: refused on the same path, the process lives on (SIGHUP's
    // default action would end it), V2 stays. With a 200 ms poll the refusal may come from the
    // poll rather than the signal: what is shown is that both take the same refusing path.
    std::fs::write(&file, "rules:\n  - {name: health, match: {path: /healthz}, allow_anonymous: true}\ndefault: {require: {}\n").unwrap();
    s.sidecar.child.signal(1);
    let refused = s.wait_reloads(4).await;
    assert_eq!(refused, 3, "a broken file was applied");
    s.assert_serving().await;
    assert_admin_closed(&s, "SIGHUP with a broken file").await;
    let o = s.get("/reports/q3", &[("authorization", &auth)]).await;
    assert_eq!((o.reply.status, o.upstream.is_some()), (403, false));
    assert_eq!(s.metric(RELOADS_OK).await, 1);

    // Each refused version was logged once, not on every poll.
    let logs = s.sidecar.full_logs();
    assert_eq!(
        logs.matches("policy reload failed").count(),
        3,
        "{}",
        s.sidecar.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// 2 and 4. Claims built to confuse a verifier; identity and credential headers.

const JWS_HEADER: &str = r#"{"alg":"RS256","typ":"JWT","kid":"rsa-a"}"#;

/// A JWS signed with the provider's own key (rsa-a) over exactly this payload text, to write
/// what serde never would: repeated members, integers beyond a double.
fn signed_raw(payload: &str) -> String {
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pem = std::fs::read_to_string(common::repo_root().join("tests/fixtures/rsa-a.pem"))
        .expect("fixture rsa-a.pem");
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let message = format!("{}.{}", B64.encode(JWS_HEADER), B64.encode(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
    format!("{message}.{signature}")
}

/// Claims text the provider would sign, with `iss` and `iat` as given (JSON text) and `members`
/// (each starting with a comma) appended.
fn claims_text(iss: &str, iat: u64, members: &str) -> String {
    let now = now();
    format!(
        r#"{{"iss":{iss},"aud":["{AUDIENCE}"],"sub":"client-x","iat":{iat},"exp":{}{members}}}"#,
        now + 3600
    )
}

fn issuer() -> String {
    format!("\"{ISSUER}\"")
}

/// A provider-signed token with the usual claims plus `members`.
fn token_with(members: &str) -> String {
    signed_raw(&claims_text(&issuer(), now(), members))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusing_claims_and_headers_are_refused_through_envoy() {
    crate::needs!(Envoy);
    let provider = FakeProvider::start().await;
    provider.add_client("client-1", "s3cret", "user-1");
    provider.add_client_with_claims(
        "tenantless",
        "s3cret",
        json!({"user_id": "user-t", "tenant": ""}),
    );
    provider.add_client_with_claims(
        "acme-client",
        "s3cret",
        json!({"user_id": "user-a", "tenant": "acme"}),
    );
    let s = Stack::start(
        provider,
        "  max_token_age: 5m\n",
        "identity:\n  headers: {x-user-id: user_id, x-client-id: sub, x-tenant: tenant}\n  required: [x-user-id]\n",
    )
    .await;

    // Tokens: each attack beside a twin that differs only in the attacked part and passes, so a
    // refusal is known to be for that part (and not, say, a signature this test got wrong).
    let n = now();
    let user = r#","user_id":"user-x""#;
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("control", token_with(user), 200, None),
        (
            "user_id twice",
            token_with(r#","user_id":"user-x","user_id":"admin""#),
            401,
            Some("invalid_token"),
        ),
        (
            "sub twice",
            token_with(&format!(r#"{user},"sub":"admin""#)),
            401,
            Some("invalid_token"),
        ),
        (
            "iss a number",
            signed_raw(&claims_text("7", n, user)),
            401,
            Some("invalid_token"),
        ),
        (
            "iss a list holding the issuer",
            signed_raw(&claims_text(&format!("[{}]", issuer()), n, user)),
            401,
            Some("invalid_token"),
        ),
        (
            "user_id 2^53 - 1",
            token_with(r#","user_id":9007199254740991"#),
            200,
            None,
        ),
        (
            "user_id 2^53 + 1",
            token_with(r#","user_id":9007199254740993"#),
            403,
            None,
        ),
        (
            "user_id -(2^53 + 1)",
            token_with(r#","user_id":-9007199254740993"#),
            403,
            None,
        ),
        (
            "iat 20 s ahead (within the leeway)",
            signed_raw(&claims_text(&issuer(), n + 20, user)),
            200,
            None,
        ),
        (
            "iat an hour ahead",
            signed_raw(&claims_text(&issuer(), n + 3600, user)),
            401,
            Some("invalid_token"),
        ),
        (
            "iat older than max_token_age",
            signed_raw(&claims_text(&issuer(), n - 600, user)),
            401,
            Some("invalid_token"),
        ),
    ];
    for (what, token, status, error) in &cases {
        let o = s
            .get("/v1/orders", &[("authorization", &bearer(token))])
            .await;
        if *status == 200 {
            let seen = assert_allowed(what, &o);
            assert!(seen.header("authorization").is_none(), "{what}");
            if what.starts_with("user_id") {
                // A number within ±(2^53 - 1) passes exactly as it was signed.
                assert_eq!(seen.header("x-user-id"), Some("9007199254740991"));
            }
        } else {
            assert_refused(what, &o, *status, *error);
        }
    }

    // An optional identity header whose claim is empty is removed upstream, whatever the caller
    // sent under that name; a non-empty one replaces the forgery.
    let forged: &[u8] = b"victim-tenant";
    let bearer_no_tenant = bearer(&token_with(&format!(r#"{user},"tenant":"""#)));
    for (what, auth, want) in [
        ("Basic, empty claim", basic("tenantless", "s3cret"), None),
        ("Bearer, empty claim", bearer_no_tenant, None),
        ("Bearer, no claim", bearer(&token_with(user)), None),
        (
            "Basic, a tenant",
            basic("acme-client", "s3cret"),
            Some("acme"),
        ),
    ] {
        let o = s
            .get(
                "/v1/orders",
                &[("authorization", &auth), ("X-Tenant", forged)],
            )
            .await;
        let seen = assert_allowed(what, &o);
        let values: Vec<&str> = seen
            .header_values("x-tenant")
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(values, want.into_iter().collect::<Vec<_>>(), "{what}");
        assert!(seen.header("x-user-id").is_some(), "{what}");
    }

    // A client id with a control character is refused (400), by the header pair as by Basic.
    // Envoy 1.40 itself answers 400 (text/plain, no challenge) to a raw C0 control other than
    // a tab, or DEL, in a header value, before any check; what it lets through (a tab inside
    // the value, a UTF-8 C1 control such as NEL) reaches the sidecar, which answers an RFC 6750
    // invalid_request. In Basic every byte is base64-encoded, so the sidecar sees them all.
    let o = s
        .get(
            "/v1/orders",
            &[("x-client-id", b"client-1"), ("x-client-secret", b"s3cret")],
        )
        .await;
    assert_allowed("header pair control", &o);
    for (what, id, envoy_refuses_raw) in [
        ("tab", b"client\t1".as_slice(), false),
        ("NEL (U+0085)", "client\u{85}1".as_bytes(), false),
        ("SOH", b"client\x011".as_slice(), true),
        ("ESC", b"client\x1b1".as_slice(), true),
        ("DEL", b"client\x7f1".as_slice(), true),
    ] {
        let pair = s
            .get(
                "/v1/orders",
                &[("x-client-id", id), ("x-client-secret", b"s3cret")],
            )
            .await;
        if envoy_refuses_raw {
            let r = &pair.reply;
            assert_eq!(
                (r.status, r.challenge(), pair.upstream.is_some()),
                (400, None, false),
                "header pair, {what}: Envoy lets it through now: {r:?}"
            );
        } else {
            assert_refused(
                &format!("header pair, {what}"),
                &pair,
                400,
                Some("invalid_request"),
            );
        }
        let id = std::str::from_utf8(id).unwrap();
        let o = s
            .get("/v1/orders", &[("authorization", &basic(id, "s3cret"))])
            .await;
        assert_refused(&format!("Basic, {what}"), &o, 400, Some("invalid_request"));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. No panics: token times at the integer extremes.

/// A provider-signed token for client-1 with this `exp`.
fn token_expiring(exp: u64) -> String {
    mint(
        "rsa-a",
        "client-1",
        json!({"user_id": "user-1", "exp": exp}),
        3600,
    )
}

/// From now on the token endpoint answers every request with `access_token`, and with
/// `expires_in` when given (none: only the token's own `exp` bounds its life).
fn issue(p: &FakeProvider, access_token: String, expires_in: Option<u64>) {
    let mut body = json!({ "access_token": access_token, "token_type": "Bearer" });
    if let Some(secs) = expires_in {
        body["expires_in"] = json!(secs);
    }
    let answer: TokenOverride =
        Arc::new(move || -> BoxFuture<'static, axum::response::Response> {
            let body = body.clone();
            Box::pin(async move { axum::response::IntoResponse::into_response(axum::Json(body)) })
        });
    p.set_token_override(Some(answer));
}

/// The last date a token may carry: 9999-12-31T23:59:59Z.
const YEAR_9999: u64 = 253_402_300_799;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_token_times_through_envoy_fail_closed_without_a_panic() {
    crate::needs!(Envoy);
    let provider = FakeProvider::start().await;
    for id in ["client-1", "client-2", "client-3", "client-4"] {
        provider.add_client(id, "s3cret", "user-1");
    }
    let mut s = Stack::start(provider, "", "").await;
    let calls = s.provider.token_calls();

    // The token endpoint issues a token whose exp is past any date: a provider fault, so Envoy
    // answers with its status_on_error (503) and fails closed; the sidecar lives on.
    for (what, expires_in) in [("no expires_in", None), ("expires_in 3600", Some(3600))] {
        issue(&s.provider, token_expiring(u64::MAX), expires_in);
        let o = s
            .get(
                "/v1/orders",
                &[("authorization", &basic("client-2", "s3cret"))],
            )
            .await;
        assert_eq!(
            (o.reply.status, o.upstream.is_some()),
            (503, false),
            "{what}: {:?}\n{}",
            o.reply,
            s.sidecar.logs()
        );
        s.assert_serving().await;
    }
    assert_eq!(s.provider.token_calls(), calls + 2, "each was an exchange");
    // A contained panic would answer 503 as well: the count tells them apart.
    s.assert_no_panics("the exchange path").await;

    // The provider mends: the same credential is exchanged afresh, and another one works.
    s.provider.set_token_override(None);
    for id in ["client-2", "client-3"] {
        let o = s
            .get("/v1/orders", &[("authorization", &basic(id, "s3cret"))])
            .await;
        let seen = assert_allowed(id, &o);
        assert_eq!(seen.header("x-user-id"), Some("user-1"));
    }

    // A token living until the year 9999 is valid: allowed, and then served from the cache.
    issue(&s.provider, token_expiring(YEAR_9999), None);
    let before = s.provider.token_calls();
    for round in 0..2 {
        let o = s
            .get(
                "/v1/orders",
                &[("authorization", &basic("client-4", "s3cret"))],
            )
            .await;
        assert_allowed(&format!("year 9999, round {round}"), &o);
    }
    assert_eq!(
        s.provider.token_calls(),
        before + 1,
        "the second was cached"
    );
    s.provider.set_token_override(None);

    // The same two as Bearer tokens a caller presents: refused with 401 / allowed.
    let o = s
        .get(
            "/v1/orders",
            &[("authorization", &bearer(&token_expiring(u64::MAX)))],
        )
        .await;
    assert_refused("Bearer exp u64::MAX", &o, 401, Some("invalid_token"));
    let o = s
        .get(
            "/v1/orders",
            &[("authorization", &bearer(&token_expiring(YEAR_9999)))],
        )
        .await;
    assert_allowed("Bearer exp year 9999", &o);

    s.assert_serving().await;
    s.assert_no_panics("the Bearer path").await;
}
