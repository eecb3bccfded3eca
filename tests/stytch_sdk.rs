//! Stytch's official Python SDK (PyPI `stytch`, installed by scripts/tools) against the embedded
//! issuer run as its own process: tests/interop/stytch_sdk.py drives every M2M call the SDK
//! exposes and asserts on the SDK's own return values and error fields; this test runs it and
//! requires that it exits 0 with every step passed.
//!
//! Over plain HTTP for now: the SDK refuses a `custom_base_url` that is not `https://`, so the
//! script passes the issuer's URL as `environment`, which the SDK (15.3) uses unchecked.
#![cfg(feature = "issuer")]

mod common;

use std::process::{Command, Stdio};

use common::issuer::{IssuerProcess, PROJECT_ID, PROJECT_SECRET};
use common::process::tail;
use common::tools::{python_stytch, repo_file};

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
    "clients.update name, description, scopes, trusted_metadata",
    "m2m.token without scopes, then authenticate_token",
    "m2m.token with scopes; authenticate_token with required_scopes",
    "m2m.token with a scope the client lacks (400 invalid_scope)",
    "m2m.token with a wrong client secret (401 invalid_client)",
    "m2m.token with a wrong project secret (401 invalid_client)",
    "secrets.rotate_start, both secrets work, secrets.rotate completes",
    "clients.update status inactive: m2m.token refused (401 invalid_client)",
    "secrets.rotate_start then secrets.rotate_cancel keeps the old secret only",
    "clients.delete, then get (404) and m2m.token (401)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_m2m_calls_work_against_the_issuer() {
    needs!(PythonStytch);
    let issuer = IssuerProcess::start().await;
    let script = repo_file("tests/interop/stytch_sdk.py");
    let python = python_stytch();
    let base_url = issuer.base_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("120")
            .arg(python)
            .arg(script)
            .env("STYTCH_SDK_BASE_URL", base_url)
            .env("STYTCH_SDK_PROJECT_ID", PROJECT_ID)
            .env("STYTCH_SDK_PROJECT_SECRET", PROJECT_SECRET)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
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

    // Nothing the SDK sent as a secret reached the issuer's log.
    let log = std::fs::read_to_string(issuer.dir.join("stderr.log")).unwrap_or_default()
        + &std::fs::read_to_string(issuer.dir.join("stdout.log")).unwrap_or_default();
    for secret in [PROJECT_SECRET, "imported-Xk9mQ2vR7Lp4zT8wN3bJ6"] {
        assert!(!log.contains(secret), "a secret is in the issuer log");
    }
}
