//! The real binary: its command line, config errors, health gating on the first JWKS load, Check
//! over gRPC, and a clean exit on SIGTERM.

mod common;

use common::check::Check;

use common::check::basic;

use std::process::Command;
use std::time::Duration;

use common::process::TempDir;
use common::provider::{AUDIENCE, FakeProvider, ISSUER, Mode};
use common::sidecar::{Sidecar, binary};
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, check_response::HttpResponse};
use tonic_health::pb::health_check_response::ServingStatus;

fn provider_yaml(p: &FakeProvider) -> String {
    format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n",
        p.token_url(),
        p.jwks_url()
    )
}

fn check_request(headers: &[(&str, String)]) -> CheckRequest {
    Check::get("/").headers(headers).build()
}

#[test]
fn version_and_config_checks() {
    let out = Command::new(binary()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    let dir = TempDir::new("check-config");
    let good = dir.join("good.yaml");
    std::fs::write(&good, "provider: {kind: stytch, project_id: project-test-1, base_url: 'https://test.stytch.com'}\n").unwrap();
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("ok:"), "{stdout}");

    // The environment variable names the file too.
    let out = Command::new(binary())
        .arg("check-config")
        .env("M2M_AUTHZ_CONFIG", &good)
        .output()
        .unwrap();
    assert!(out.status.success());

    let cases = [
        (
            // Without jwks_url, an issuer that is not a URL cannot be discovered either.
            "provider: {kind: oauth2, token_url: 'http://a/t', issuer: i, audience: api}\n",
            "provider.jwks_url",
        ),
        (
            "provider: {kind: stytch, project_id: p, base_url: 'https://x'}\nlisten: {grpc: 'nowhere'}\n",
            "listen.grpc",
        ),
        (
            "provider: {kind: stytch, project_id: p, base_url: 'https://x'}\ncache: {max_entris: 3}\n",
            "max_entris",
        ),
    ];
    for (yaml, field) in cases {
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, yaml).unwrap();
        for sub in ["check-config", "serve"] {
            let out = Command::new(binary())
                .args([sub, "--config"])
                .arg(&bad)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{sub} accepted {yaml}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{sub}: one line, got {stderr}"
            );
            assert!(
                stderr.contains(field),
                "{sub}: {stderr} should name {field}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    let out = Command::new(binary())
        .args(["serve", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

/// Issue 16: each config message says its thing once, in the config's own words.
#[test]
fn config_messages_say_each_thing_once_in_the_configs_words() {
    let dir = TempDir::new("config-words");
    let check = |yaml: Option<&str>| {
        let path = dir.join("c.yaml");
        let _ = std::fs::remove_file(&path);
        if let Some(yaml) = yaml {
            std::fs::write(&path, yaml).unwrap();
        }
        let out = Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("M2M_AUTHZ_CONFIG")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    // A missing file: the OS error once.
    let (ok, _, stderr) = check(None);
    assert!(!ok);
    assert_eq!(
        stderr,
        format!(
            "error: cannot read config file {}: No such file or directory (os error 2)\n",
            dir.join("c.yaml").display()
        )
    );
    // A bad nested duration: the field path once, then the problem.
    let oauth2 = "provider: {kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://a/j', issuer: i, audience: api}\n";
    let (ok, _, stderr) = check(Some(&format!("{oauth2}cache:\n  negative_ttl: 5x\n")));
    assert!(!ok);
    assert!(
        stderr.starts_with("error: cache.negative_ttl: expected a duration such as 30s or 5m: "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("cache").count(), 1, "{stderr}");
    // The summary names the provider kind as the config spells it.
    for (yaml, word) in [
        (oauth2.to_owned(), "oauth2"),
        (
            "provider: {kind: stytch, project_id: project-test-1, base_url: 'https://test.stytch.com'}\n".to_owned(),
            "stytch",
        ),
    ] {
        let (ok, stdout, stderr) = check(Some(&yaml));
        assert!(ok, "{stderr}");
        assert!(stdout.starts_with(&format!("ok: provider {word} (")), "{stdout}");
    }
}

#[tokio::test]
async fn health_waits_for_keys_then_checks_are_answered() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret-process", "user-1");
    p.set_mode(Mode::Failing);
    // Start without waiting for SERVING: the JWKS endpoint is failing.
    let dir = TempDir::new("health");
    let addr = common::process::free_addr();
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {{grpc: '{addr}', admin: '127.0.0.1:0', drain_timeout: 2s}}\n{}",
            provider_yaml(&p)
        ),
    )
    .unwrap();
    let child = common::process::ChildGuard::spawn(
        "m2m-authz",
        Command::new(binary())
            .args(["serve", "--config"])
            .arg(&path)
            .env("M2M_AUTHZ_LOG_FORMAT", "json")
            .stderr(common::process::log_file(&dir.join("stderr.log"))),
    );
    let mut sidecar = Sidecar { child, addr, dir };
    common::process::wait_for_tcp(addr, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        sidecar.health().await,
        Some(ServingStatus::NotServing),
        "no keys yet"
    );
    // A check before keys load cannot be decided: UNAVAILABLE, so Envoy fails closed.
    let err = sidecar
        .client()
        .await
        .check(check_request(&[(
            "authorization",
            basic("client-1", "s3cret-process"),
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    p.set_mode(Mode::Normal);
    sidecar.wait_serving(Duration::from_secs(20)).await;

    let mut client = sidecar.client().await;
    let ok = client
        .check(check_request(&[(
            "authorization",
            basic("client-1", "s3cret-process"),
        )]))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = ok.http_response else {
        panic!("not allowed")
    };
    let user = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-user-id")
        .unwrap();
    assert_eq!(user.value, "user-1");

    let denied = client.check(check_request(&[])).await.unwrap().into_inner();
    let Some(HttpResponse::DeniedResponse(d)) = denied.http_response else {
        panic!("not denied")
    };
    assert_eq!(d.status.unwrap().code, 401);

    // SIGTERM: a prompt, clean exit.
    let status = sidecar.child.stop().expect("exited");
    assert!(status.success(), "exit status {status}");
    let logs = sidecar.full_logs();
    assert!(!logs.contains("s3cret-process"), "a secret reached the log");
    assert!(logs.contains("shutting down"), "{logs}");
    // Issue 16: before any key set was loaded, a failed fetch does not claim to keep a "last
    // good" one; it says that none was loaded yet.
    let fetch_failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("JWKS fetch failed"))
        .collect();
    assert!(!fetch_failures.is_empty(), "{logs}");
    for line in fetch_failures {
        assert!(
            line.contains("\"message\":\"JWKS fetch failed and no key set was loaded yet: tokens cannot be verified until a fetch succeeds\""),
            "{line}"
        );
        assert!(!line.contains("last good"), "{line}");
    }
}

/// Every sample config shipped under deploy/ passes `check-config`, given the project secret in
/// the environment as a deployment would: a checked-out file is readable by others, and one whose
/// own `project_secret` were in effect would be refused for that.
/// Built without one of the optional parts.
const LEAN: bool = !cfg!(all(
    feature = "issuer",
    feature = "shared-cache",
    feature = "otel"
));

#[test]
fn shipped_configs_are_valid() {
    let dir = common::repo_root().join("deploy/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(binary())
                .args(["check-config", "--config"])
                .arg(&path)
                .env(
                    "M2M_ISSUER_PROJECT_SECRET",
                    "deployment-project-secret-0123456789",
                )
                // deploy/config/oauth2-opaque.yaml's introspection secret.
                .env(
                    "M2M_AUTHZ_INTROSPECTION_SECRET",
                    "deployment-introspection-secret",
                )
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // A lean build (`--no-default-features`) refuses, naming the feature, a sample
            // that needs a part it was built without; nothing else may fail.
            if !out.status.success() && LEAN && stderr.contains("needs the `") {
                eprintln!("{}: refused by this lean build: {stderr}", path.display());
                continue;
            }
            assert!(out.status.success(), "{}: {stderr}", path.display());
            n += 1;
        }
    }
    assert!(n >= 2 || (LEAN && n >= 1), "found {n} configs");
}

/// A provider URL in plain http to another host is accepted, but never silently: one warning
/// line from `check-config` (stderr, naming field and host, never path or query) and one
/// WARN record when `serve` starts. Loopback and https say nothing.
#[tokio::test]
async fn plain_http_provider_urls_are_warned_about_once() {
    use common::process::{ChildGuard, Lines, free_addr};
    use std::process::Stdio;

    let dir = TempDir::new("plain-http");
    let offhost = "provider: {kind: oauth2, token_url: 'http://m2m-authz-test.invalid/oauth/token?k=hidden-query', jwks_url: 'http://m2m-authz-test.invalid/jwks', issuer: i, audience: api}\n";
    let check = |yaml: &str| {
        let path = dir.join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{yaml}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = check(offhost);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("warning: "), "{stderr}");
    for named in [
        "provider.token_url (host m2m-authz-test.invalid)",
        "provider.jwks_url (host m2m-authz-test.invalid)",
    ] {
        assert!(stderr.contains(named), "{stderr}");
    }
    assert!(!stderr.contains("hidden-query"), "{stderr}");
    for quiet in [
        "provider: {kind: oauth2, token_url: 'http://127.0.0.1:1/t', jwks_url: 'http://localhost:1/j', issuer: i, audience: api}\n",
        "provider: {kind: oauth2, token_url: 'http://[::1]:1/t', jwks_url: 'https://auth.example.com/j', issuer: i, audience: api}\n",
        "provider: {kind: stytch, project_id: p1, base_url: 'https://test.stytch.com'}\n",
    ] {
        assert_eq!(check(quiet), "", "{quiet}");
    }

    // `serve` logs it once at start, before any provider is reachable.
    let path = dir.join("serve.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {{grpc: '{}', admin: '{}'}}\n{offhost}",
            free_addr(),
            free_addr()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--config"])
        .arg(&path)
        .env("M2M_AUTHZ_LOG", "info")
        .env("M2M_AUTHZ_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("m2m-authz", &mut cmd);
    let mut lines = Lines::spawn(child.child_mut().stderr.take().unwrap());
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Up to the "configuration loaded" record, which follows the warning.
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = lines
            .wait_for_prefix("{", left)
            .await
            .unwrap_or_else(|e| panic!("{e}; seen {seen:#?}"));
        let done = line.contains("configuration loaded");
        seen.push(line);
        if done {
            break;
        }
    }
    let warnings: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("plain http://"))
        .collect();
    assert_eq!(warnings.len(), 1, "{seen:#?}");
    assert!(warnings[0].contains("\"WARN\""), "{}", warnings[0]);
    assert!(
        warnings[0].contains("provider.jwks_url (host m2m-authz-test.invalid)"),
        "{}",
        warnings[0]
    );
    assert!(!warnings[0].contains("hidden-query"), "{}", warnings[0]);
    child.stop();
}

/// Ports held by the test for the duration of a run: a bind attempt on any of them fails.
struct HeldPorts {
    _held: Vec<std::net::TcpListener>,
    grpc: String,
    admin: String,
    #[cfg_attr(not(feature = "issuer"), allow(dead_code))]
    issuer: String,
}

impl HeldPorts {
    fn new() -> HeldPorts {
        let hold = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held = vec![hold(), hold(), hold()];
        let addr = |i: usize| held[i].local_addr().unwrap().to_string();
        HeldPorts {
            grpc: addr(0),
            admin: addr(1),
            issuer: addr(2),
            _held: held,
        }
    }
}

/// Runs the binary with `args` to its exit (within 30 s) and returns its stderr, asserting what
/// every refused start has: a non-zero exit and one line naming `field`, no panic.
fn refused(args: &[&str], config: &std::path::Path, env: &[(&str, &str)], field: &str) -> String {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("M2M_AUTHZ_REDIS_URL")
        .env_remove("M2M_AUTHZ_FLEET_KEY")
        .env_remove("M2M_ISSUER_PROJECT_SECRET")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let yaml = std::fs::read_to_string(config).unwrap_or_default();
    assert!(!out.status.success(), "{args:?} started with\n{yaml}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: one line, got {stderr}\n{yaml}"
    );
    assert!(
        stderr.starts_with(&format!("error: {field}")),
        "{args:?}: {stderr} should name {field}\n{yaml}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Every construction that can fail comes before any port is bound: with every configured port
/// held by the test, a failing construction is still what the one error line names — had `serve`
/// tried to bind first, the line would name `listen.*`. Half-written, missing and misplaced files
/// are among the failures.
#[test]
fn a_failing_construction_exits_before_any_port_is_bound() {
    let dir = TempDir::new("early-failure");
    let ports = HeldPorts::new();
    let stytch = "provider: {kind: stytch, project_id: project-test-1, base_url: 'https://test.stytch.com'}\n";
    let listen = format!(
        "listen: {{grpc: '{}', admin: '{}'}}\n",
        ports.grpc, ports.admin
    );
    let fleet_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);

    let empty_policy = dir.join("empty-policy.yaml");
    std::fs::write(&empty_policy, "").unwrap();
    let half_policy = dir.join("half-policy.yaml");
    std::fs::write(&half_policy, "rules:\n  - match: {path_prefix: \"/v1\n").unwrap();

    // A config after `listen`, its environment, and the field its one error line names.
    type Case = (String, Vec<(&'static str, String)>, &'static str);
    #[cfg_attr(
        not(any(feature = "shared-cache", feature = "issuer")),
        allow(unused_mut)
    )]
    let mut cases: Vec<Case> = vec![
        (
            format!(
                "{stytch}policy: {{file: '{}'}}\n",
                dir.join("absent.yaml").display()
            ),
            vec![],
            "policy.file",
        ),
        (
            format!("{stytch}policy: {{file: '{}'}}\n", empty_policy.display()),
            vec![],
            "policy.file",
        ),
        (
            format!("{stytch}policy: {{file: '{}'}}\n", half_policy.display()),
            vec![],
            "policy.file",
        ),
    ];
    #[cfg(feature = "shared-cache")]
    cases.extend([
        (
            format!("{stytch}cache: {{shared: {{url: 'redis://127.0.0.1:1'}}}}\n"),
            vec![],
            "cache.shared.fleet_key",
        ),
        (
            format!("{stytch}cache: {{shared: {{fleet_key: '{fleet_key}'}}}}\n"),
            vec![],
            "cache.shared.url",
        ),
        (
            format!("{stytch}cache: {{shared: {{url: 'redis://127.0.0.1:1'}}}}\n"),
            vec![("M2M_AUTHZ_FLEET_KEY", "c2hvcnQ=".to_owned())],
            "cache.shared.fleet_key",
        ),
    ]);
    #[cfg(not(feature = "shared-cache"))]
    let _ = &fleet_key;
    #[cfg(feature = "issuer")]
    {
        use std::os::unix::fs::PermissionsExt;
        // A database file that is not one (half-written, or something else at that path).
        let garbage = dir.join("garbage.db");
        std::fs::write(&garbage, "not an SQLite database").unwrap();
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = (
            "M2M_ISSUER_PROJECT_SECRET",
            "deployment-project-secret-0123456789".to_owned(),
        );
        let embedded = |database: &std::path::Path| {
            format!(
                "provider:\n  kind: embedded\n  embedded: {{listen: '{}', database: '{}', project_id: project-test-early}}\n",
                ports.issuer,
                database.display()
            )
        };
        // A directory where the database should be, and a database in a folder others may
        // write to.
        let a_dir = dir.join("a-dir.db");
        std::fs::create_dir(&a_dir).unwrap();
        std::fs::set_permissions(&a_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        cases.extend([
            (
                embedded(&garbage),
                vec![secret.clone()],
                "provider.embedded.database",
            ),
            (
                embedded(&a_dir),
                vec![secret.clone()],
                "provider.embedded.database",
            ),
            (
                embedded(&shared.join("issuer.db")),
                vec![secret],
                "provider.embedded.database",
            ),
        ]);
    }

    for (i, (body, env, field)) in cases.iter().enumerate() {
        let path = dir.join(&format!("case-{i}.yaml"));
        std::fs::write(&path, format!("{listen}{body}")).unwrap();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let stderr = refused(&["serve"], &path, &env, field);
        assert!(!stderr.contains("listen"), "{stderr}");
    }

    // The Unix socket path is checked before the admin port is bound; what is in the way of
    // the socket is left alone.
    let in_the_way = dir.join("not-a-socket");
    std::fs::write(&in_the_way, "keep me").unwrap();
    let long = format!("/tmp/{}/grpc.sock", "d".repeat(120));
    for socket in [
        dir.join("missing-dir/grpc.sock").display().to_string(),
        in_the_way.display().to_string(),
        long,
    ] {
        let path = dir.join("unix.yaml");
        std::fs::write(
            &path,
            format!(
                "listen: {{grpc: 'unix:{socket}', admin: '{}'}}\n{stytch}",
                ports.admin
            ),
        )
        .unwrap();
        let stderr = refused(&["serve"], &path, &[], "listen.grpc");
        assert!(!stderr.contains("cannot listen"), "{stderr}");
    }
    assert_eq!(std::fs::read_to_string(&in_the_way).unwrap(), "keep me");
}

/// `issuer --config` opens its database before binding its port: a bad one is the error even
/// with the port taken.
#[cfg(feature = "issuer")]
#[test]
fn the_issuer_opens_its_database_before_binding() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("issuer-early");
    let ports = HeldPorts::new();
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, "half-written").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("issuer.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: '{}'\ndatabase: '{}'\nproject_id: project-test-early\n",
            ports.issuer,
            garbage.display()
        ),
    )
    .unwrap();
    let stderr = refused(
        &["issuer"],
        &path,
        &[(
            "M2M_ISSUER_PROJECT_SECRET",
            "deployment-project-secret-0123456789",
        )],
        "database",
    );
    assert!(!stderr.contains("listen"), "{stderr}");
    // And with a good database, the taken port is what is named (quiet: creating the first
    // signing key is logged at info).
    std::fs::remove_file(&garbage).unwrap();
    refused(
        &["issuer"],
        &path,
        &[
            (
                "M2M_ISSUER_PROJECT_SECRET",
                "deployment-project-secret-0123456789",
            ),
            ("M2M_AUTHZ_LOG", "warn"),
        ],
        "listen",
    );
}

/// Once everything is built, a taken port is named by its field, and the ports bound before it
/// are released: the process exits.
#[test]
fn a_taken_port_is_named_by_its_field() {
    let dir = TempDir::new("taken-port");
    let ports = HeldPorts::new();
    let stytch = "provider: {kind: stytch, project_id: project-test-1, base_url: 'https://test.stytch.com'}\n";
    let free = common::process::free_addr();
    for (listen, field) in [
        (
            format!("listen: {{grpc: '{}', admin: '{free}'}}\n", ports.grpc),
            "listen.grpc",
        ),
        (
            format!("listen: {{grpc: '{free}', admin: '{}'}}\n", ports.admin),
            "listen.admin",
        ),
    ] {
        let path = dir.join("config.yaml");
        std::fs::write(&path, format!("{listen}{stytch}")).unwrap();
        let stderr = refused(&["serve"], &path, &[], field);
        assert!(stderr.contains("cannot listen"), "{stderr}");
        // The port bound before the taken one was released with the exit.
        std::net::TcpListener::bind(free).unwrap();
    }
}
