//! Stytch's official SDKs against the embedded issuer run as its own process: the Python SDK
//! (PyPI `stytch`) through tests/interop/stytch_sdk.py and the Node SDK (npm `stytch`) through
//! tests/interop/stytch_sdk.mjs, both installed by scripts/tools. Each script drives every M2M
//! call its SDK exposes and asserts on the SDK's own return values and error fields; these tests
//! run them and require that they exit 0 with every step passed, in order.
//!
//! Each runs twice. Over plain HTTP the scripts pass the issuer's URL as the environment (Python
//! `environment`, Node `env`), which both SDKs use unchecked, as they refuse a `custom_base_url`
//! that is not `https://`. Over HTTPS they use `custom_base_url`, with the issuer's generated CA
//! trusted the way the issuer prints it: `SSL_CERT_FILE` (aiohttp) and `REQUESTS_CA_BUNDLE`
//! (requests) for Python, `NODE_EXTRA_CA_CERTS` for Node.
#![cfg(feature = "issuer")]

mod common;

use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use common::issuer::{IssuerProcess, PROJECT_ID, PROJECT_SECRET};
use common::process::tail;
use common::tools::{node_stytch, python_stytch, repo_file};

/// The secrets the scripts import on create and try as wrong ones (`IMPORTED_SECRET`,
/// `IMPORTED_SECRET_2` in both).
const IMPORTED_SECRETS: [&str; 2] = [
    "imported-Xk9mQ2vR7Lp4zT8wN3bJ6",
    "imported-Hq5cV1nF8sD2gK7yP4aW9",
];

/// The prefix of every client secret the issuer generates (test projects).
const GENERATED_SECRET_PREFIX: &str = "secret-test-";

/// The Python script's steps, in order; each must print `ok <step>`.
const PYTHON_STEPS: &[&str] = &[
    "clients.create with client_id, client_secret, trusted_metadata, name, description",
    "clients.create generates a secret when none is given",
    "clients.create refuses a weak client_secret (400 insecure_m2m_client_secret)",
    "clients.create refuses a duplicate client_id (400 duplicate_m2m_client_id)",
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
    "m2m.token with a wrong client secret (400 invalid_client)",
    "m2m.token with a wrong project secret (401 invalid_client)",
    "secrets.rotate_start, both secrets work, secrets.rotate completes",
    "clients.update status inactive: m2m.token refused (400 invalid_client)",
    "secrets.rotate_start then secrets.rotate_cancel keeps the old secret only",
    "clients.delete, then get (404) and m2m.token (400)",
];

/// The Node script's steps, in order; each must print `ok <step>`.
const NODE_STEPS: &[&str] = &[
    "clients.create with client_id, client_secret, trusted_metadata, name, description",
    "clients.create generates a secret when none is given",
    "clients.create refuses a weak client_secret (400 insecure_m2m_client_secret)",
    "clients.create refuses a duplicate client_id (400 duplicate_m2m_client_id)",
    "clients.get",
    "clients.get of an unknown client (404 m2m_client_not_found)",
    "client_id spelling: path-encoded ids round-trip, bad ones are 400 m2m_client_invalid_client_id",
    "clients.search by client_id",
    "clients.search with limit and cursor paging",
    "clients.search by client_name, scopes and status (AND / OR)",
    "clients.update name, description, scopes, trusted_metadata",
    "m2m.token without scopes, then authenticateToken",
    "m2m.token with scopes; authenticateToken with required_scopes",
    "authenticateToken: action:* wildcard scopes and max_token_age_seconds",
    "local verification: the token header, iss, aud and kid match the JWKS",
    "local verification refuses a tampered token and one for another project (jwt_invalid)",
    "concurrent calls: clients.get, m2m.token and authenticateToken in parallel",
    "m2m.token with a scope the client lacks (400 invalid_scope)",
    "m2m.token with a wrong client secret (400 invalid_client)",
    "m2m.token of an unknown client (400 invalid_client)",
    "wrong project secret: management calls refused (401 unauthorized_credentials)",
    "secrets.rotateStart, both secrets work, secrets.rotate completes",
    "clients.update status inactive: m2m.token refused (400 invalid_client)",
    "secrets.rotateStart then secrets.rotateCancel keeps the old secret only",
    "clients.delete, then get (404) and m2m.token (400)",
];

/// What a script run left: the failure context to print and the issuer's whole log.
struct ScriptRun {
    context: String,
    log: String,
}

/// Runs `program script` against `issuer` (started at trace, so that every log line the SDK's
/// requests cause is searched for secrets), with the issuer's URL and project credentials in the
/// environment, and its CA in each SDK's variable when it serves HTTPS; requires that it printed exactly `ok <step>` for each of `steps`, in order, then
/// `done N/N`, and exited 0; and that nothing the SDK sent as a secret — the project secret as
/// is or in its Basic header, an imported or a generated client secret — reached the log.
async fn run_script(
    issuer: IssuerProcess,
    program: std::path::PathBuf,
    script: &str,
    env: &[(&str, &str)],
    steps: &[&str],
) -> ScriptRun {
    let script = repo_file(script);
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(program)
        .arg(script)
        .env("STYTCH_SDK_BASE_URL", issuer.base_url())
        .env("STYTCH_SDK_PROJECT_ID", PROJECT_ID)
        .env("STYTCH_SDK_PROJECT_SECRET", PROJECT_SECRET)
        .envs(env.iter().copied())
        .env_remove("SSL_CERT_FILE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("NODE_EXTRA_CA_CERTS")
        .stdin(Stdio::null());
    if issuer.tls {
        let ca = issuer.ca_file();
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
            cmd.env(var, &ca);
        }
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!(
        "stdout:\n{stdout}\nstderr:\n{}\nissuer log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&issuer.dir.join("stderr.log"), 30)
    );
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert!(
        failed.is_empty(),
        "SDK steps failed: {failed:#?}\n{context}"
    );
    let mut want: Vec<String> = steps.iter().map(|step| format!("ok {step}")).collect();
    want.push(format!("done {0}/{0}", steps.len()));
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got, want, "the steps did not all pass, in order\n{context}");
    assert!(
        out.status.success(),
        "script exit {:?}\n{context}",
        out.status
    );

    let log = std::fs::read_to_string(issuer.dir.join("stderr.log")).unwrap_or_default()
        + &std::fs::read_to_string(issuer.dir.join("stdout.log")).unwrap_or_default();
    let basic = STANDARD.encode(format!("{PROJECT_ID}:{PROJECT_SECRET}"));
    for secret in [PROJECT_SECRET, basic.as_str(), GENERATED_SECRET_PREFIX]
        .into_iter()
        .chain(IMPORTED_SECRETS)
    {
        assert!(
            !log.contains(secret),
            "a secret ({} chars) is in the issuer log",
            secret.len()
        );
    }
    ScriptRun { context, log }
}

/// At trace, so that every log line the SDK's requests cause is searched for secrets.
const TRACE: &[(&str, &str)] = &[("M2M_AUTHZ_LOG", "trace")];

async fn http_issuer() -> IssuerProcess {
    IssuerProcess::start_env(TRACE).await
}

async fn https_issuer() -> IssuerProcess {
    let issuer = IssuerProcess::start_tls_env(TRACE).await;
    assert!(issuer.base_url().starts_with("https://"));
    issuer
}

async fn python_suite(issuer: IssuerProcess) {
    let run = run_script(
        issuer,
        python_stytch(),
        "tests/interop/stytch_sdk.py",
        &[("PYTHONDONTWRITEBYTECODE", "1")],
        PYTHON_STEPS,
    )
    .await;
    // m2m.token's `extra` members are ignored, with a debug line naming them.
    assert!(
        run.log.contains("ignored unknown token request member"),
        "no debug line for the ignored members\n{}",
        run.context
    );
}

async fn node_suite(issuer: IssuerProcess) {
    let tools = common::tools::tools_dir();
    let tools = tools.to_string_lossy().into_owned();
    run_script(
        issuer,
        node_stytch(),
        "tests/interop/stytch_sdk.mjs",
        &[(common::tools::TOOLS_ENV, tools.as_str())],
        NODE_STEPS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_m2m_calls_work_against_the_issuer() {
    needs!(PythonStytch);
    python_suite(http_issuer().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_m2m_calls_work_over_https_with_custom_base_url() {
    needs!(PythonStytch);
    python_suite(https_issuer().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_m2m_calls_work_against_the_issuer() {
    needs!(NodeStytch);
    node_suite(http_issuer().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_m2m_calls_work_over_https_with_custom_base_url() {
    needs!(NodeStytch);
    node_suite(https_issuer().await).await;
}
