//! The `issuer` and `clients` commands of the real binary, against a real
//! database file, with the issuer server running as a separate process, as a
//! person would use them.
#![cfg(feature = "issuer")]

mod common;

use common::issuer::token_response_at;

use common::process::TempDir;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_m2m-authz");
const PROJECT_ID: &str = "project-test-cli";
const PROJECT_SECRET: &str = "cli-test-project-secret-0123456789";

/// Stops the server process we started, even when an assertion fails.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("issuer.yaml");
    write_private(
        &path,
        &format!(
            "listen: 127.0.0.1:{port}\n\
             database: issuer.db\n\
             project_id: {PROJECT_ID}\n\
             project_secret: {PROJECT_SECRET}\n\
             token_lifetime: 10m\n"
        ),
    );
    path
}

/// Writes a config holding the project secret, as its owner must: mode 0600.
fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write config");
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("M2M_ISSUER_PROJECT_SECRET")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    command(args).output().expect("run m2m-authz")
}

fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 stdout")
}

fn run_err(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} unexpectedly succeeded");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: expected a one-line error, got {stderr:?}"
    );
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    stderr
}

async fn wait_until_up(http: &reqwest::Client, jwks_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = http.get(jwks_url).send().await
            && resp.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "issuer did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn verify(http: &reqwest::Client, jwks_url: &str, token: &str) -> Value {
    let jwks: JwkSet = http
        .get(jwks_url)
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks body");
    let kid = jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid");
    let key = DecodingKey::from_jwk(jwks.find(&kid).expect("kid in JWKS")).expect("key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[format!("stytch.com/{PROJECT_ID}")]);
    validation.set_audience(&[PROJECT_ID]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

fn next_secret(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("next_client_secret:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no next_client_secret in {output:?}"))
}

#[tokio::test]
async fn clients_and_issuer_commands_with_a_running_server() {
    let dir = TempDir::new("issuer-cli");
    let port = free_port();
    let config_path = write_config(dir.path(), port);
    let config = config_path.to_str().expect("UTF-8 path");
    let base = format!("http://127.0.0.1:{port}");
    let token_url = format!("{base}/v1/public/{PROJECT_ID}/oauth2/token");
    let jwks_url = format!("{base}/v1/sessions/jwks/{PROJECT_ID}");
    let http = reqwest::Client::new();

    // Clients can be created before the server ever ran.
    let created = run_ok(&[
        "clients",
        "create",
        "--config",
        config,
        "--user-id",
        "user-cli",
        "--scopes",
        "read:orders",
        "--json",
    ]);
    let created: Value = serde_json::from_str(&created).expect("create --json output");
    let id = created["client_id"].as_str().expect("client_id").to_owned();
    let secret = created["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned();
    assert_eq!(created["user_id"], "user-cli");
    assert_eq!(created["scopes"], serde_json::json!(["read:orders"]));
    assert!(dir.join("issuer.db").exists(), "database beside the config");

    let listed = run_ok(&["clients", "list", "--config", config]);
    assert!(
        listed.contains(&id) && listed.contains("user-cli"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "list must not show secrets");
    let shown = run_ok(&["clients", "get", "--config", config, &id]);
    assert!(shown.contains(&id) && shown.contains("active"), "{shown}");
    assert!(!shown.contains(&secret), "get must not show secrets");

    let server = ServerProcess(
        command(&["issuer", "--config", config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start issuer"),
    );
    wait_until_up(&http, &jwks_url).await;

    let (status, body) = token_response_at(&token_url, &id, &secret).await;
    assert_eq!(status, 200, "{body}");
    let first = body["access_token"].as_str().expect("token").to_owned();
    let claims = verify(&http, &jwks_url, &first).await;
    assert_eq!(claims["user_id"], "user-cli");
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["scope"], "read:orders");

    // Key rotation from the CLI reaches the running server.
    run_ok(&["issuer", "rotate-key", "--config", config]);
    let (status, body) = token_response_at(&token_url, &id, &secret).await;
    assert_eq!(status, 200, "{body}");
    let second = body["access_token"].as_str().expect("token").to_owned();
    assert_ne!(
        jsonwebtoken::decode_header(&first).unwrap().kid,
        jsonwebtoken::decode_header(&second).unwrap().kid
    );
    verify(&http, &jwks_url, &first).await;
    verify(&http, &jwks_url, &second).await;

    // Secret rotation from the CLI: both secrets work meanwhile.
    let started = run_ok(&["clients", "rotate", "start", "--config", config, &id]);
    let new_secret = next_secret(&started);
    assert_eq!(token_response_at(&token_url, &id, &secret).await.0, 200);
    assert_eq!(token_response_at(&token_url, &id, &new_secret).await.0, 200);
    run_ok(&["clients", "rotate", "complete", "--config", config, &id]);
    assert_eq!(token_response_at(&token_url, &id, &secret).await.0, 400);
    assert_eq!(token_response_at(&token_url, &id, &new_secret).await.0, 200);

    // Deactivation from the CLI takes effect at once.
    run_ok(&["clients", "deactivate", "--config", config, &id]);
    let (status, body) = token_response_at(&token_url, &id, &new_secret).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client");
    run_ok(&["clients", "activate", "--config", config, &id]);
    assert_eq!(token_response_at(&token_url, &id, &new_secret).await.0, 200);

    // Bad input: one line on stderr, non-zero exit.
    let err = run_err(&[
        "clients",
        "get",
        "--config",
        config,
        "m2m-client-test-nobody",
    ]);
    assert!(err.contains("not found"), "{err}");
    let err = run_err(&[
        "clients",
        "create",
        "--config",
        config,
        "--user-id",
        "u2",
        "--scopes",
        "bad\"scope",
    ]);
    assert!(err.contains("scope"), "{err}");
    run_ok(&[
        "clients",
        "create",
        "--config",
        config,
        "--user-id",
        "u3",
        "--name",
        "dup",
    ]);
    // Names need not be unique, as on Stytch.
    run_ok(&[
        "clients",
        "create",
        "--config",
        config,
        "--user-id",
        "u4",
        "--name",
        "dup",
    ]);
    let err = run_err(&["clients", "deactivate", "--config", config, "nope"]);
    assert!(err.contains("not found"), "{err}");

    run_ok(&["clients", "delete", "--config", config, &id]);
    assert_eq!(token_response_at(&token_url, &id, &new_secret).await.0, 400);
    drop(server);
}

#[test]
fn bad_config_is_reported_naming_the_field() {
    let dir = TempDir::new("issuer-cli");
    let path = dir.join("issuer.yaml");
    write_private(&path, "project_secret: short\n");
    let err = run_err(&["clients", "list", "--config", path.to_str().expect("path")]);
    assert!(err.contains("project_secret"), "{err}");
    write_private(
        &path,
        &format!("project_secret: {PROJECT_SECRET}\nlisten: nowhere\n"),
    );
    let err = run_err(&["issuer", "--config", path.to_str().expect("path")]);
    assert!(err.contains("listen"), "{err}");
}

/// The payload of a JWT, unverified (the signature is checked elsewhere; here only what the
/// template put in it matters).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// `m2m-authz <args…> --config <issuer.yaml>` with `stdin` fed in; returns (ok, stdout, stderr).
fn cli_with_stdin(
    issuer: &common::issuer::IssuerProcess,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(issuer.config_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn m2m-authz");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates a client with `--user-id`; returns (client_id, secret, stderr).
fn create_with_user(
    issuer: &common::issuer::IssuerProcess,
    user: &str,
) -> (String, String, String) {
    let (ok, stdout, stderr) = cli_with_stdin(
        issuer,
        &["clients", "create", "--user-id", user, "--json"],
        "",
    );
    assert!(ok, "clients create failed: {stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    (
        v["client_id"].as_str().unwrap().to_owned(),
        v["client_secret"].as_str().unwrap().to_owned(),
        stderr,
    )
}

async fn token_claims(issuer: &common::issuer::IssuerProcess, id: &str, secret: &str) -> Value {
    let (status, body) = token_response_at(&issuer.token_url(), id, secret).await;
    assert_eq!(status, 200, "{body}");
    jwt_claims(body["access_token"].as_str().unwrap())
}

/// The M2M template is the database's, set with `issuer template set` while the server runs and
/// used for its next token; `clients create --user-id` stores the id where the template reads it,
/// warns about keys the client lacks, and says so when the template has no user claim.
#[tokio::test]
async fn template_get_set_and_user_id_key_with_a_running_server() {
    use common::issuer::{IssuerProcess, PROJECT_ID};
    let seed = r#"{"user_id": {{ client.trusted_metadata.stytch_user_id }}}"#;
    let issuer = IssuerProcess::start_managed(&format!("claims_template: '{seed}'\n"), &[]).await;

    // The config's template is the initial one.
    let got: Value =
        serde_json::from_str(issuer.cli(&["issuer", "template", "get", "--json"]).trim()).unwrap();
    assert_eq!(got["template_content"], seed);
    assert_eq!(got["custom_audience"], "");
    assert_eq!(got["jwt_template_type"], "M2M");

    // --user-id lands under the key the template reads (the seed's stytch_user_id).
    let (id1, secret1, stderr) = create_with_user(&issuer, "user-1");
    assert!(!stderr.contains("warning"), "{stderr}");
    let client: Value =
        serde_json::from_str(&issuer.cli(&["clients", "get", &id1, "--json"])).unwrap();
    assert_eq!(client["trusted_metadata"]["stytch_user_id"], "user-1");
    assert!(
        client["trusted_metadata"].get("user_id").is_none(),
        "{client}"
    );
    let claims = token_claims(&issuer, &id1, &secret1).await;
    assert_eq!(claims["user_id"], "user-1");
    assert_eq!(claims["aud"], serde_json::json!([PROJECT_ID]));

    // Set from a file, with a custom audience, while the server runs: the next token has both.
    let file = issuer.dir.join("template.json");
    std::fs::write(
        &file,
        r#"{"user_id": {{ client.trusted_metadata.stytch_user_id }}, "team": {{ client.trusted_metadata.team }}}"#,
    )
    .unwrap();
    let out = issuer.cli(&[
        "issuer",
        "template",
        "set",
        "--file",
        file.to_str().unwrap(),
        "--custom-audience",
        "orders-api",
    ]);
    assert!(out.contains("set"), "{out}");
    let claims = token_claims(&issuer, &id1, &secret1).await;
    assert_eq!(claims["aud"], serde_json::json!([PROJECT_ID, "orders-api"]));
    assert_eq!(claims["user_id"], "user-1");
    assert!(claims.get("team").is_none(), "{claims}");

    // A client lacking a key the template reads is created, with a warning naming the key.
    let (id2, _, stderr) = create_with_user(&issuer, "user-2");
    assert!(
        stderr.contains("warning") && stderr.contains("team") && stderr.contains(&id2),
        "{stderr}"
    );
    assert!(
        !stderr.contains("user-2"),
        "a metadata value in the warning: {stderr}"
    );

    // From stdin; without --custom-audience the audience is kept.
    let (ok, _, stderr) = cli_with_stdin(
        &issuer,
        &["issuer", "template", "set"],
        r#"{"user_id": {{ client.trusted_metadata.uid }}}"#,
    );
    assert!(ok, "{stderr}");
    let got: Value =
        serde_json::from_str(issuer.cli(&["issuer", "template", "get", "--json"]).trim()).unwrap();
    assert_eq!(got["custom_audience"], "orders-api");
    let (id3, secret3, _) = create_with_user(&issuer, "user-3");
    let client: Value =
        serde_json::from_str(&issuer.cli(&["clients", "get", &id3, "--json"])).unwrap();
    assert_eq!(client["trusted_metadata"]["uid"], "user-3");
    assert_eq!(
        token_claims(&issuer, &id3, &secret3).await["user_id"],
        "user-3"
    );

    // Bad templates are refused naming the problem, and change nothing.
    for (bad, why) in [
        ("", "empty"),
        ("   \n", "empty"),
        (
            "{\"user_id\": {{ client.trusted_metadata.uid }",
            "never closed",
        ),
        (r#"{"sub": "me"}"#, "reserved"),
        (r#"{"x": "{{ client.client_id }}"}"#, "inside a string"),
    ] {
        let (ok, _, stderr) =
            cli_with_stdin(&issuer, &["issuer", "template", "set", "--file", "-"], bad);
        assert!(!ok, "{bad:?} was accepted");
        assert!(stderr.contains(why), "{bad:?}: {stderr}");
    }
    let (ok, _, stderr) = cli_with_stdin(
        &issuer,
        &["issuer", "template", "set", "--custom-audience", "a b"],
        "{}",
    );
    assert!(!ok && stderr.contains("custom_audience"), "{stderr}");
    let (ok, _, stderr) = cli_with_stdin(
        &issuer,
        &["issuer", "template", "set", "--file", "/nonexistent/t.json"],
        "",
    );
    assert!(!ok && stderr.contains("/nonexistent/t.json"), "{stderr}");
    let got: Value =
        serde_json::from_str(issuer.cli(&["issuer", "template", "get", "--json"]).trim()).unwrap();
    assert_eq!(
        got["template_content"],
        r#"{"user_id": {{ client.trusted_metadata.uid }}}"#
    );

    // Scopes the SDKs cannot parse are refused by the CLI too.
    let (ok, _, stderr) = cli_with_stdin(
        &issuer,
        &["clients", "create", "--user-id", "u", "--scopes", "a:b:c"],
        "",
    );
    assert!(!ok && stderr.contains("a:b:c"), "{stderr}");

    // A template with no user claim: --user-id cannot be honoured, and says why.
    let (ok, _, stderr) = cli_with_stdin(
        &issuer,
        &["issuer", "template", "set", "--custom-audience", ""],
        r#"{"tier": "gold"}"#,
    );
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli_with_stdin(&issuer, &["clients", "create", "--user-id", "u-9"], "");
    assert!(!ok, "created without a user claim");
    assert!(stderr.contains("no `user_id` claim"), "{stderr}");
    let claims = token_claims(&issuer, &id1, &secret1).await;
    assert_eq!(claims["aud"], serde_json::json!([PROJECT_ID]));
    assert_eq!(claims["tier"], "gold");
    assert!(claims.get("user_id").is_none(), "{claims}");
}

/// Issue 16: `clients` and `issuer` given the sidecar's config. One that embeds the issuer
/// (`provider.kind: embedded`) is used through its `provider.embedded` section, the same database
/// `serve` opens; any other says which file is needed, in one line.
#[test]
fn a_sidecar_config_is_used_for_its_embedded_issuer_or_refused_saying_which_file() {
    let dir = TempDir::new("issuer-cli-sidecar");
    let sidecar = dir.join("m2m-authz.yaml");
    write_private(
        &sidecar,
        &format!(
            "listen:\n  grpc: 127.0.0.1:9001\n\
             provider:\n  kind: embedded\n  embedded:\n    listen: 127.0.0.1:9400\n\
             \x20   database: sidecar-issuer.db\n    project_id: {PROJECT_ID}\n\
             \x20   project_secret: {PROJECT_SECRET}\n"
        ),
    );
    let path = sidecar.to_str().expect("path");
    let created = run_ok(&[
        "clients",
        "create",
        "--config",
        path,
        "--user-id",
        "user-1",
        "--json",
    ]);
    let created: Value = serde_json::from_str(&created).expect("JSON");
    let listed = run_ok(&["clients", "list", "--config", path]);
    assert!(
        listed.contains(created["client_id"].as_str().expect("client_id")),
        "{listed}"
    );
    assert!(
        dir.join("sidecar-issuer.db").exists(),
        "the database is the sidecar's, relative to its config's folder"
    );

    write_private(
        &sidecar,
        "provider: {kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://a/j', issuer: i, audience: api}\n",
    );
    let err = run_err(&["clients", "list", "--config", path]);
    assert_eq!(
        err,
        format!(
            "error: invalid issuer config {path}: a sidecar config whose provider.kind is `oauth2`, so it holds no issuer; pass the issuer's own config (the demo's is .demo/issuer.yaml) or a sidecar config with provider.kind: embedded\n"
        )
    );

    // A mistake inside the embedded section is named by its full path, once.
    write_private(
        &sidecar,
        "provider:\n  kind: embedded\n  embedded:\n    listen: {a: b}\n",
    );
    let err = run_err(&["clients", "list", "--config", path]);
    assert!(
        err.starts_with(&format!(
            "error: invalid issuer config {path}: provider.embedded.listen: invalid type: map"
        )),
        "{err}"
    );
    assert_eq!(err.matches("listen").count(), 1, "{err}");

    // A missing file: the OS error once.
    let missing = dir.join("none.yaml");
    let err = run_err(&[
        "clients",
        "list",
        "--config",
        missing.to_str().expect("path"),
    ]);
    assert_eq!(
        err,
        format!(
            "error: cannot read issuer config {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}
