//! The admin port (`listen.admin`) of the real binary: liveness at once, readiness only once the
//! signing keys are loaded, the version, Prometheus metrics that count what the checks did (and
//! never name a client), a taken port refused in one line, and the port closed after SIGTERM.

mod common;

use common::check::Check;

use common::check::basic;

use std::process::Command;
use std::time::Duration;

use common::process::{ChildGuard, POLL_INTERVAL, TempDir, free_addr, log_file, tail};
use common::provider::{AUDIENCE, FakeProvider, ISSUER, Mode};
use common::sidecar::binary;
use m2m_authz::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, check_response::HttpResponse};
use serde_json::Value;

const CLIENT_ID: &str = "client-admin-1";
const SECRET: &str = "s3cret-admin-port";
const TIMEOUT: Duration = Duration::from_secs(30);

fn config(p: &FakeProvider, grpc: &str, admin: &str) -> String {
    format!(
        "listen: {{grpc: '{grpc}', admin: '{admin}', drain_timeout: 2s}}\nprovider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n",
        p.token_url(),
        p.jwks_url()
    )
}

fn check(authorization: String) -> CheckRequest {
    Check::get("/v1/orders?page=1")
        .header("authorization", authorization)
        .build()
}

/// GET `url`: status, content type and body; `None` while nothing answers.
async fn get(url: &str) -> Option<(u16, String, String)> {
    let r = common::http_client()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((status, content_type, r.text().await.ok()?))
}

/// Polls `url` until it answers `status`; returns the body.
async fn wait_for_status(
    child: &mut ChildGuard,
    logs: &std::path::Path,
    url: &str,
    status: u16,
) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(exit) = child.try_wait() {
            panic!("m2m-authz exited ({exit}):\n{}", tail(logs, 40));
        }
        if let Some((s, _, body)) = get(url).await
            && s == status
        {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered {status}:\n{}",
            tail(logs, 40)
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series}:\n{metrics}"))
}

#[tokio::test]
async fn admin_port_reports_health_readiness_version_and_metrics() {
    let p = FakeProvider::start().await;
    p.add_client(CLIENT_ID, SECRET, "user-admin-1");
    // The JWKS endpoint fails at first: live, but not ready.
    p.set_mode(Mode::JwksDown);
    let dir = TempDir::new("admin");
    let (grpc, admin) = (free_addr(), free_addr());
    let path = dir.join("config.yaml");
    std::fs::write(&path, config(&p, &grpc.to_string(), &admin.to_string())).unwrap();
    let logs = dir.join("stderr.log");
    let mut child = ChildGuard::spawn(
        "m2m-authz",
        Command::new(binary())
            .args(["serve", "--config"])
            .arg(&path)
            .env("M2M_AUTHZ_LOG_FORMAT", "json")
            .stderr(log_file(&logs)),
    );
    let base = format!("http://{admin}");

    let live = wait_for_status(&mut child, &logs, &format!("{base}/healthz"), 200).await;
    assert_eq!(
        serde_json::from_str::<Value>(&live).unwrap()["status"],
        "ok"
    );
    let (status, content_type, body) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 503, "not ready without signing keys: {body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let reason: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["ready"], false);
    assert_eq!(reason["reason"], "signing keys not loaded yet");

    let (status, _, body) = get(&format!("{base}/version")).await.unwrap();
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["name"], "m2m-authz");
    assert_eq!(get(&format!("{base}/nope")).await.unwrap().0, 404);

    p.set_mode(Mode::Normal);
    let ready = wait_for_status(&mut child, &logs, &format!("{base}/readyz"), 200).await;
    assert_eq!(
        serde_json::from_str::<Value>(&ready).unwrap()["ready"],
        true
    );

    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect to Check");
    let mut answers = Vec::new();
    for secret in [SECRET, SECRET, "not-the-secret"] {
        let r = client
            .check(check(basic(CLIENT_ID, secret)))
            .await
            .expect("a Check answer")
            .into_inner();
        answers.push(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));
    }
    assert_eq!(answers, [true, true, false]);

    let (status, content_type, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    for (series, want) in [
        (
            r#"m2m_authz_checks_total{decision="allow",reason="ok"}"#,
            2.0,
        ),
        (
            r#"m2m_authz_checks_total{decision="deny",reason="invalid_client"}"#,
            1.0,
        ),
        (
            r#"m2m_authz_check_duration_seconds_count{decision="allow"}"#,
            2.0,
        ),
        (
            r#"m2m_authz_check_duration_seconds_count{decision="deny"}"#,
            1.0,
        ),
        ("m2m_authz_cache_hits_total", 1.0),
        ("m2m_authz_cache_misses_total", 2.0),
        ("m2m_authz_cache_negative_hits_total", 0.0),
        ("m2m_authz_cache_entries", 1.0),
        ("m2m_authz_cache_negative_entries", 1.0),
        (r#"m2m_authz_exchanges_total{outcome="ok"}"#, 1.0),
        (r#"m2m_authz_exchanges_total{outcome="rejected"}"#, 1.0),
        (r#"m2m_authz_exchanges_total{outcome="failed"}"#, 0.0),
        ("m2m_authz_exchange_duration_seconds_count", 2.0),
        (
            r#"m2m_authz_exchange_duration_seconds_bucket{le="+Inf"}"#,
            2.0,
        ),
        (r#"m2m_authz_jwks_keys{provider="default"}"#, 1.0),
        (r#"m2m_authz_policy_reloads_total{outcome="failed"}"#, 0.0),
        (
            &format!(
                r#"m2m_authz_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ] {
        assert_eq!(sample(&metrics, series), want, "{series}");
    }
    assert!(
        sample(
            &metrics,
            r#"m2m_authz_jwks_fetches_total{provider="default",outcome="failed"}"#
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            r#"m2m_authz_jwks_fetches_total{provider="default",outcome="ok"}"#
        ) >= 1.0
    );
    let age = sample(
        &metrics,
        r#"m2m_authz_jwks_age_seconds{provider="default"}"#,
    );
    assert!((0.0..60.0).contains(&age), "JWKS age {age}");
    for private in [CLIENT_ID, SECRET, "user-admin-1", "/v1/orders"] {
        assert!(!metrics.contains(private), "metrics name {private:?}");
    }

    // SIGTERM while a check waits on a slow token endpoint: not ready while it drains, and the
    // check is still answered.
    p.add_client("client-admin-2", SECRET, "user-admin-2");
    p.set_latency(Duration::from_millis(800));
    let calls = p.token_calls();
    let in_flight = tokio::spawn(async move {
        client
            .check(check(basic("client-admin-2", SECRET)))
            .await
            .map(|r| {
                matches!(
                    r.into_inner().http_response,
                    Some(HttpResponse::OkResponse(_))
                )
            })
    });
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while p.token_calls() == calls {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exchange never started"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    child.signal(15);
    let draining = wait_for_status(&mut child, &logs, &format!("{base}/readyz"), 503).await;
    assert_eq!(
        serde_json::from_str::<Value>(&draining).unwrap()["reason"],
        "shutting down"
    );
    assert!(
        matches!(in_flight.await, Ok(Ok(true))),
        "the in-flight check was answered"
    );
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    assert!(status.success(), "{status}:\n{}", tail(&logs, 40));
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin port is closed after exit"
    );
}

#[tokio::test]
async fn a_taken_admin_port_is_one_line_naming_the_key() {
    let p = FakeProvider::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let dir = TempDir::new("admin-taken");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        config(&p, &free_addr().to_string(), &admin.to_string()),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&path)
        .env("M2M_AUTHZ_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: listen.admin: cannot listen on {admin}: ")),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_a_unix_admin_address() {
    let dir = TempDir::new("admin-unix");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "listen: {admin: 'unix:/run/admin.sock'}\nprovider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api}\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: listen.admin: "), "{stderr}");
}
