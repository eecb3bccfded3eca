//! Stytch's official Python SDK (PyPI `stytch`, installed by scripts/tools) against the embedded
//! issuer run as its own process: tests/interop/stytch_sdk.py drives every M2M call the SDK
//! exposes and asserts on the SDK's own return values and error fields; this test runs it and
//! requires that it exits 0 with every step passed.
//!
//! It runs twice: over plain HTTP, where the script passes the issuer's URL as `environment`
//! (the SDK refuses a `custom_base_url` that is not `https://`; 15.3 uses `environment`
//! unchecked), and over HTTPS with `custom_base_url`, the issuer's generated CA trusted through
//! `SSL_CERT_FILE` (aiohttp) and `REQUESTS_CA_BUNDLE` (requests), as the issuer prints them.
#![cfg(feature = "issuer")]

mod common;

use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use common::issuer::{IssuerProcess, PROJECT_ID, PROJECT_SECRET};
use common::process::tail;
use common::tools::{python_stytch, repo_file};

/// The secret the script imports on create (tests/interop/stytch_sdk.py `IMPORTED_SECRET`).
const IMPORTED_SECRET: &str = "imported-Xk9mQ2vR7Lp4zT8wN3bJ6";

/// The script's steps, in order; each must print `ok <step>`.
const STEPS: &[&str] = &[
    "clients.create with client_id, client_secret, trusted_metadata, name, description",
    "clients.create generates a secret when none is given",
    "clients.create refuses a weak client_secret (400 invalid_client_secret)",
    "clients.create refuses a duplicate client_id (400 duplicate_client_id)",
    "clients.get",
    "clients.get of an unknown client (404 m2m_client_not_found)",
    "clients.search by client_id",
    "clients.search with limit and cursor paging",
    "clients.search by client_name, scopes and status (AND / OR)",
    "clients.update name, description, scopes, trusted_metadata",
    "m2m.token without scopes, then authenticate_token",
    "m2m.token with scopes; authenticate_token with required_scopes",
    "authenticate_token: action:* wildcard scopes and max_token_age",
    "m2m.token with extra body parameters (ignored)",
    "async: clients.get_async, m2m.token_async, authenticate_token_async",
    "m2m.token with a scope the client lacks (400 invalid_scope)",
    "m2m.token with a wrong client secret (401 invalid_client)",
    "m2m.token with a wrong project secret (401 invalid_client)",
    "secrets.rotate_start, both secrets work, secrets.rotate completes",
    "clients.update status inactive: m2m.token refused (401 invalid_client)",
    "secrets.rotate_start then secrets.rotate_cancel keeps the old secret only",
    "clients.delete, then get (404) and m2m.token (401)",
];

/// At trace, so that every log line the SDK's requests cause is searched for secrets.
const TRACE: &[(&str, &str)] = &[("M2M_AUTHZ_LOG", "trace")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_m2m_calls_work_against_the_issuer() {
    needs!(PythonStytch);
    run_script(IssuerProcess::start_env(TRACE).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_m2m_calls_work_over_https_with_custom_base_url() {
    needs!(PythonStytch);
    let issuer = IssuerProcess::start_tls_env(TRACE).await;
    assert!(issuer.base_url().starts_with("https://"));
    run_script(issuer).await;
}

/// Runs the script against `issuer` and requires every step to pass, with no secret in the
/// issuer's log.
async fn run_script(issuer: IssuerProcess) {
    let script = repo_file("tests/interop/stytch_sdk.py");
    let python = python_stytch();
    let base_url = issuer.base_url();
    let ca = issuer.tls.then(|| issuer.ca_file());
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("timeout");
        cmd.arg("120")
            .arg(python)
            .arg(script)
            .env("STYTCH_SDK_BASE_URL", base_url)
            .env("STYTCH_SDK_PROJECT_ID", PROJECT_ID)
            .env("STYTCH_SDK_PROJECT_SECRET", PROJECT_SECRET)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("SSL_CERT_FILE")
            .env_remove("REQUESTS_CA_BUNDLE")
            .stdin(Stdio::null());
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", &ca).env("REQUESTS_CA_BUNDLE", &ca);
        }
        cmd.output()
    })
    .await
    .unwrap()
    .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = || {
        format!(
            "stdout:\n{stdout}\nstderr:\n{stderr}\nissuer log:\n{}",
            tail(&issuer.dir.join("stderr.log"), 30)
        )
    };
    let lines: Vec<&str> = stdout.lines().collect();
    let failed: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FAIL ")).collect();
    assert!(
        failed.is_empty(),
        "SDK steps failed: {failed:#?}\n{}",
        context()
    );
    for step in STEPS {
        let want = format!("ok {step}");
        assert!(
            lines.contains(&want.as_str()),
            "step {step:?} did not pass\n{}",
            context()
        );
    }
    let done = format!("done {0}/{0}", STEPS.len());
    assert_eq!(lines.last().copied(), Some(done.as_str()), "{}", context());
    assert!(
        out.status.success(),
        "script exit {:?}\n{}",
        out.status,
        context()
    );

    // Unknown members are ignored but logged at debug; nothing the SDK sent as a secret (as is
    // or in its Basic header) reached the issuer's log.
    let log = std::fs::read_to_string(issuer.dir.join("stderr.log")).unwrap_or_default()
        + &std::fs::read_to_string(issuer.dir.join("stdout.log")).unwrap_or_default();
    assert!(
        log.contains("ignored unknown token request member"),
        "no debug line for the ignored members\n{}",
        context()
    );
    let basic = STANDARD.encode(format!("{PROJECT_ID}:{PROJECT_SECRET}"));
    for secret in [PROJECT_SECRET, IMPORTED_SECRET, basic.as_str()] {
        assert!(!log.contains(secret), "a secret is in the issuer log");
    }
}
