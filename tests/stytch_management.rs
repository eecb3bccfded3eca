//! Stytch's Management SDK (PyPI `stytch-management`, installed by scripts/tools) against the
//! embedded issuer run as its own process: tests/interop/stytch_mgmt_sdk.py gets and sets the
//! M2M JWT template through the SDK (wrong key, wrong slugs, a bad template and audience), then
//! mints a token through the `stytch` SDK that carries the new claims and `aud`. This test runs
//! it, requires every step to pass, and checks that no secret reached the issuer's log.
#![cfg(feature = "issuer")]

mod common;

use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use common::issuer::{
    IssuerProcess, MANAGEMENT_ENVIRONMENT_SLUG, MANAGEMENT_KEY_ID, MANAGEMENT_KEY_SECRET,
    MANAGEMENT_PROJECT_SLUG, PROJECT_ID, PROJECT_SECRET, SELF_SIGNED_TLS,
};
use common::process::tail;
use common::tools::{Tool, repo_file};

/// The issuer's initial template (its config's `claims_template`), which the script reads back.
const INITIAL_TEMPLATE: &str = r#"{"user_id": {{ client.trusted_metadata.user_id }}}"#;

/// The script's steps, in order; each must print `ok <step>`.
const STEPS: &[&str] = &[
    "jwt_templates.get returns the initial template",
    "a wrong workspace key secret or key id is refused (401 unauthorized_credentials)",
    "the project secret does not open the management API (401)",
    "a wrong project or environment slug is not found (404)",
    "set refuses a bad template (400 invalid_template_content) and keeps the old one",
    "set refuses a bad custom_audience (400 invalid_custom_audience)",
    "set the seed's template with a custom_audience; get returns it",
    "m2m.token carries the new claims and aud; authenticate_token accepts it",
    "clients.create refuses scopes the SDKs cannot parse (400 invalid_m2m_client_scope)",
    "removing the custom_audience: aud is the project id again",
    "clients.create without the template's key still succeeds; its token lacks the claim",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_sdk_sets_the_m2m_template_the_next_token_uses() {
    needs!(PythonStytchManagement);
    run_script(IssuerProcess::start_managed("", &[("M2M_AUTHZ_LOG", "trace")]).await).await;
}

/// Over HTTPS the script uses the SDK's own `stytch_management.Client` (which takes only an
/// https:// base URL), trusting the issuer's generated CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_sdk_client_over_https() {
    needs!(PythonStytchManagement);
    let issuer = IssuerProcess::start_managed(SELF_SIGNED_TLS, &[("M2M_AUTHZ_LOG", "trace")]).await;
    assert!(issuer.base_url().starts_with("https://"));
    run_script(issuer).await;
}

async fn run_script(issuer: IssuerProcess) {
    let ca = issuer.tls.then(|| issuer.ca_file());
    let script = repo_file("tests/interop/stytch_mgmt_sdk.py");
    let python = Tool::PythonStytchManagement.path();
    let base_url = issuer.base_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("120")
            .arg(python)
            .arg(script)
            .env("STYTCH_MGMT_BASE_URL", base_url)
            .env("STYTCH_MGMT_PROJECT_ID", PROJECT_ID)
            .env("STYTCH_MGMT_PROJECT_SECRET", PROJECT_SECRET)
            .env("STYTCH_MGMT_KEY_ID", MANAGEMENT_KEY_ID)
            .env("STYTCH_MGMT_KEY_SECRET", MANAGEMENT_KEY_SECRET)
            .env("STYTCH_MGMT_PROJECT_SLUG", MANAGEMENT_PROJECT_SLUG)
            .env("STYTCH_MGMT_ENVIRONMENT_SLUG", MANAGEMENT_ENVIRONMENT_SLUG)
            .env("STYTCH_MGMT_INITIAL_TEMPLATE", INITIAL_TEMPLATE)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("SSL_CERT_FILE")
            .env_remove("REQUESTS_CA_BUNDLE")
            .envs(
                ca.iter()
                    .flat_map(|ca| [("SSL_CERT_FILE", ca), ("REQUESTS_CA_BUNDLE", ca)]),
            )
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("run the management SDK script");
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

    // The client created without the template's key was logged by id and key name; no secret
    // or Basic value reached the log.
    let log = std::fs::read_to_string(issuer.dir.join("stderr.log")).unwrap_or_default()
        + &std::fs::read_to_string(issuer.dir.join("stdout.log")).unwrap_or_default();
    let client_id = lines
        .iter()
        .find_map(|l| l.strip_prefix("info missing-key-client "))
        .unwrap_or_else(|| panic!("no client id line\n{}", context()));
    let warned = log.lines().any(|line| {
        line.contains("\"level\":\"WARN\"")
            && line.contains(client_id)
            && line.contains("stytch_user_id")
    });
    assert!(
        warned,
        "no warning naming the client and the missing key\n{}",
        context()
    );
    assert!(
        !log.contains("value-not-for-logs"),
        "a metadata value is in the issuer log"
    );
    let management_basic = STANDARD.encode(format!("{MANAGEMENT_KEY_ID}:{MANAGEMENT_KEY_SECRET}"));
    let project_basic = STANDARD.encode(format!("{PROJECT_ID}:{PROJECT_SECRET}"));
    for secret in [
        MANAGEMENT_KEY_SECRET,
        PROJECT_SECRET,
        management_basic.as_str(),
        project_basic.as_str(),
    ] {
        assert!(!log.contains(secret), "a secret is in the issuer log");
    }
}
