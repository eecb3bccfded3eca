//! No secret or token ever reaches the logs, at any level: the real binary, run with the
//! user-facing `M2M_AUTHZ_LOG=trace`, takes every kind of credential (allowed, refused, malformed,
//! during a provider outage) with known, distinctive secrets, and its whole stderr is searched
//! for each of them, their Basic (base64) forms and every access token the provider issued.
//! The same log must still say what happened: one line per denial with its reason, client id and
//! route.

mod common;

use common::check::Check;

use common::check::basic;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::provider::{AUDIENCE, FakeProvider, ISSUER, Mode};
use common::sidecar::Sidecar;
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, check_response::HttpResponse};
use serde_json::{Value, json};

const ALLOWED_ID: &str = "client-logs-allowed";
const ALLOWED_SECRET: &str = "SECRETbasicQ7f3kX9zL2";
const PAIR_ID: &str = "client-logs-pair";
const PAIR_SECRET: &str = "SECRETpairW4n8vB1mR6";
const WRONG_SECRET: &str = "SECRETwrongH5c2jT8pN3";
const MALFORMED_SECRET: &str = "SECRETmalformedD9s4gY7";
const OUTAGE_ID: &str = "client-logs-outage";
const OUTAGE_SECRET: &str = "SECREToutageK3x6fV2q";
const QUERY_SECRET: &str = "SECRETqueryM8r1tZ5w";

fn provider_yaml(p: &FakeProvider) -> String {
    format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n",
        p.token_url(),
        p.jwks_url()
    )
}

fn check(path: &str, headers: &[(&str, String)]) -> CheckRequest {
    Check::new("POST", path).headers(headers).build()
}

/// What a check came to, as the caller (Envoy) sees it.
#[derive(Debug, PartialEq)]
enum Answer {
    Allowed,
    Denied(i32),
    Unavailable,
}

async fn answer(sidecar: &Sidecar, request: CheckRequest) -> Answer {
    match sidecar.client().await.check(request).await {
        Ok(r) => match r.into_inner().http_response {
            Some(HttpResponse::OkResponse(_)) => Answer::Allowed,
            Some(HttpResponse::DeniedResponse(d)) => {
                Answer::Denied(d.status.map(|s| s.code).unwrap_or_default())
            }
            None => panic!("a CheckResponse without an HTTP response"),
        },
        Err(status) if status.code() == tonic::Code::Unavailable => Answer::Unavailable,
        Err(status) => panic!("unexpected gRPC error: {status}"),
    }
}

/// Every form in which a secret or token could leak: as is, in a Basic header, and (for JWTs)
/// each signature alone.
fn forbidden(secrets: &[(&str, &str)], tokens: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (id, secret) in secrets {
        out.push(secret.to_string());
        out.push(STANDARD.encode(format!("{id}:{secret}")));
    }
    for token in tokens {
        out.push(token.clone());
        out.push(token.rsplit('.').next().unwrap_or_default().to_owned());
    }
    out
}

/// Runs every kind of credential through a sidecar with `M2M_AUTHZ_LOG=trace` in `format`,
/// returning its whole stderr after a clean stop.
async fn run_flow(p: &FakeProvider, format: &str, bearer: &str, forged_bearer: &str) -> String {
    let mut sidecar = Sidecar::start_with_env(
        &provider_yaml(p),
        &[("M2M_AUTHZ_LOG", "trace"), ("M2M_AUTHZ_LOG_FORMAT", format)],
    )
    .await;
    let orders = format!("/v1/orders?api_key={QUERY_SECRET}&page=2");
    let cases: Vec<(&str, CheckRequest, Answer)> = vec![
        (
            "allowed Basic",
            check(
                &orders,
                &[("authorization", basic(ALLOWED_ID, ALLOWED_SECRET))],
            ),
            Answer::Allowed,
        ),
        (
            "allowed Basic, cached",
            check(
                &orders,
                &[("authorization", basic(ALLOWED_ID, ALLOWED_SECRET))],
            ),
            Answer::Allowed,
        ),
        (
            "header pair",
            check(
                &orders,
                &[
                    ("x-client-id", PAIR_ID.to_owned()),
                    ("x-client-secret", PAIR_SECRET.to_owned()),
                ],
            ),
            Answer::Allowed,
        ),
        (
            "bearer token",
            check(&orders, &[("authorization", format!("Bearer {bearer}"))]),
            Answer::Allowed,
        ),
        (
            "bearer token with a forged signature",
            check(
                &orders,
                &[("authorization", format!("Bearer {forged_bearer}"))],
            ),
            Answer::Denied(401),
        ),
        (
            "wrong secret",
            check(
                &orders,
                &[("authorization", basic(ALLOWED_ID, WRONG_SECRET))],
            ),
            Answer::Denied(401),
        ),
        (
            "wrong secret, from the negative cache",
            check(
                &orders,
                &[("authorization", basic(ALLOWED_ID, WRONG_SECRET))],
            ),
            Answer::Denied(401),
        ),
        (
            "Basic without a colon",
            check(
                &orders,
                &[(
                    "authorization",
                    format!("Basic {}", STANDARD.encode(MALFORMED_SECRET)),
                )],
            ),
            Answer::Denied(400),
        ),
        (
            "Basic that is not base64",
            check(
                &orders,
                &[("authorization", format!("Basic {MALFORMED_SECRET}!!"))],
            ),
            Answer::Denied(400),
        ),
        (
            "a secret header without its id",
            check(&orders, &[("x-client-secret", MALFORMED_SECRET.to_owned())]),
            Answer::Denied(400),
        ),
    ];
    for (what, request, expected) in cases {
        assert_eq!(
            answer(&sidecar, request).await,
            expected,
            "{what}\n{}",
            sidecar.logs()
        );
    }
    p.set_mode(Mode::Failing);
    assert_eq!(
        answer(
            &sidecar,
            check(
                &orders,
                &[("authorization", basic(OUTAGE_ID, OUTAGE_SECRET))]
            )
        )
        .await,
        Answer::Unavailable,
        "provider failure\n{}",
        sidecar.logs()
    );
    p.set_mode(Mode::Normal);
    sidecar.child.stop();
    sidecar.full_logs()
}

fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn no_secret_or_token_is_logged_even_at_trace() {
    let p = FakeProvider::start().await;
    p.add_client(ALLOWED_ID, ALLOWED_SECRET, "user-logs-1");
    p.add_client(PAIR_ID, PAIR_SECRET, "user-logs-2");
    p.add_client(OUTAGE_ID, OUTAGE_SECRET, "user-logs-3");
    let bearer = p.mint(
        "rsa-a",
        "client-logs-bearer",
        json!({ "user_id": "user-logs-4" }),
    );
    let forged = {
        let (signed, signature) = bearer.rsplit_once('.').expect("a JWT");
        let mut signature = signature.to_owned();
        let last = if signature.ends_with('A') { "B" } else { "A" };
        signature.replace_range(signature.len() - 1.., last);
        format!("{signed}.{signature}")
    };

    for format in ["json", "text"] {
        let logs = run_flow(&p, format, &bearer, &forged).await;
        let issued = p.issued_tokens();
        assert!(
            issued.len() >= 2,
            "the provider issued the tokens the flow needs"
        );
        let mut tokens = issued;
        tokens.push(bearer.clone());
        tokens.push(forged.clone());
        let secrets = [
            (ALLOWED_ID, ALLOWED_SECRET),
            (PAIR_ID, PAIR_SECRET),
            (ALLOWED_ID, WRONG_SECRET),
            ("", MALFORMED_SECRET),
            (OUTAGE_ID, OUTAGE_SECRET),
            ("", QUERY_SECRET),
        ];
        for needle in forbidden(&secrets, &tokens) {
            assert!(
                !logs.contains(&needle),
                "{format} logs contain {needle:?}:\n{logs}"
            );
        }
        // Trace level was in force: the allowed checks (debug) are there too.
        assert!(
            logs.contains("check allowed"),
            "{format}: no allowed-check line at trace level:\n{logs}"
        );

        if format == "json" {
            let lines = json_lines(&logs);
            let denied: Vec<&Value> = lines
                .iter()
                .filter(|l| l["message"] == "check denied")
                .collect();
            assert_eq!(denied.len(), 6, "one line per denial:\n{logs}");
            let wrong = denied
                .iter()
                .find(|l| l["reason"] == "invalid_client")
                .unwrap_or_else(|| panic!("no invalid_client denial:\n{logs}"));
            assert_eq!(wrong["level"], "INFO");
            assert_eq!(wrong["decision"], "deny");
            assert_eq!(wrong["status"], 401);
            assert_eq!(wrong["client_id"], ALLOWED_ID);
            assert_eq!(wrong["method"], "POST");
            assert_eq!(wrong["route"], "/v1/orders", "no query string");
            assert!(wrong["latency_ms"].as_f64().is_some(), "{wrong}");
            let failed = lines
                .iter()
                .find(|l| l["message"] == "check failed")
                .unwrap_or_else(|| panic!("no line for the provider failure:\n{logs}"));
            assert_eq!(failed["level"], "WARN");
            assert_eq!(failed["reason"], "exchange_failed");
            assert_eq!(failed["client_id"], OUTAGE_ID);
        }
    }
}
