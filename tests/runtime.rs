//! `runtime.worker_threads` (issue 19) on the real binary: one worker serves checks on the
//! current-thread scheduler, many at once and a cold exchange among them; the default follows
//! the CPUs the process may use and is logged at start; a bad value is a config error naming the
//! field.

mod common;

use std::process::Command;

use common::check::{Check, basic};
use common::process::TempDir;
use common::provider::FakeProvider;
use common::sidecar::{Sidecar, binary};
use m2m_authz::runtime::Workers;

/// The start-up line about the runtime, as JSON.
fn runtime_line(sidecar: &Sidecar) -> serde_json::Value {
    sidecar
        .full_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "async runtime")
        .unwrap_or_else(|| panic!("no `async runtime` line:\n{}", sidecar.logs()))
}

#[tokio::test]
async fn one_worker_serves_concurrent_checks_on_the_current_thread_scheduler() {
    let p = FakeProvider::start().await;
    for i in 0..50 {
        p.add_client(&format!("c{i}"), "s", &format!("user-{i}"));
    }
    let sidecar = Sidecar::start(&format!(
        "{}runtime:\n  worker_threads: 1\n",
        p.sidecar_config("")
    ))
    .await;
    let line = runtime_line(&sidecar);
    assert_eq!(line["worker_threads"], 1, "{line}");
    assert_eq!(line["flavour"], "current_thread", "{line}");
    assert_eq!(line["source"], "runtime.worker_threads", "{line}");

    // 50 new credentials (each a token exchange and a verification) and 50 wrong secrets, all
    // in flight at once on the one thread: every one answered, each with its own identity.
    let client = sidecar.client().await;
    let mut calls = Vec::new();
    for i in 0..50 {
        for (secret, want) in [("s", 0), ("wrong", 16)] {
            let mut c = client.clone();
            let req = Check::get("/")
                .header("authorization", basic(&format!("c{i}"), secret))
                .build();
            calls.push(tokio::spawn(async move {
                let r = c.check(req).await.expect("check answered").into_inner();
                (i, want, r)
            }));
        }
    }
    for call in calls {
        let (i, want, r) = call.await.unwrap();
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(want), "client c{i}");
        if want == 0 {
            let Some(m2m_authz::proto::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(ok)) = r.http_response else {
                panic!("client c{i}: not an OK response");
            };
            let user = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-user-id");
            assert_eq!(
                user.map(|h| h.value.as_str()),
                Some(format!("user-{i}").as_str())
            );
        }
    }
}

#[tokio::test]
async fn the_default_follows_the_cpus_the_process_may_use_and_is_logged() {
    let p = FakeProvider::start().await;
    let sidecar = Sidecar::start(&p.sidecar_config("")).await;
    let line = runtime_line(&sidecar);
    // The test runs where the sidecar runs: the same cgroup and CPUs.
    let expected = Workers::choose(None);
    assert_eq!(line["worker_threads"], expected.threads, "{line}");
    assert_eq!(line["flavour"], expected.flavour(), "{line}");
    assert_eq!(line["source"], expected.source.to_string(), "{line}");
}

/// With `taskset` (util-linux), a sidecar allowed one CPU takes one worker by itself.
#[tokio::test]
async fn a_sidecar_pinned_to_one_cpu_takes_one_worker() {
    if Command::new("taskset").arg("-V").output().is_err() {
        eprintln!("skipped: no taskset");
        return;
    }
    let p = FakeProvider::start().await;
    p.add_client("pinned", "s", "user-pinned");
    let dir = TempDir::new("runtime-pinned");
    let addr = common::process::free_addr();
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen:\n  grpc: \"{addr}\"\n  admin: \"{}\"\n{}",
            common::process::free_addr(),
            p.sidecar_config("")
        ),
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let _child = common::process::ChildGuard::spawn(
        "m2m-authz (taskset)",
        Command::new("taskset")
            .args(["-c", "0", binary(), "serve", "--config"])
            .arg(&path)
            .env("M2M_AUTHZ_LOG_FORMAT", "json")
            .stderr(common::process::log_file(&log)),
    );
    common::process::wait_for_tcp(addr, common::sidecar::READY_TIMEOUT)
        .await
        .expect("listening");
    // Logged right after the ports are bound.
    let deadline = std::time::Instant::now() + common::sidecar::READY_TIMEOUT;
    let line: serde_json::Value = loop {
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        let found = logs
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .find(|v: &serde_json::Value| v["message"] == "async runtime");
        match found {
            Some(line) => break line,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            None => panic!("no runtime line:\n{logs}"),
        }
    };
    assert_eq!(line["worker_threads"], 1, "{line}");
    assert_eq!(line["flavour"], "current_thread", "{line}");
}

#[test]
fn a_bad_worker_count_is_a_config_error_naming_the_field() {
    let dir = TempDir::new("runtime-config");
    let provider = "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api}\n";
    for (runtime, field) in [
        ("runtime: {worker_threads: 0}", "runtime.worker_threads"),
        ("runtime: {worker_threads: 257}", "runtime.worker_threads"),
        ("runtime: {worker_threads: -1}", "runtime.worker_threads"),
        ("runtime: {worker_threads: two}", "runtime.worker_threads"),
        ("runtime: {worker_threads: 1.5}", "runtime.worker_threads"),
        ("runtime: {workers: 2}", "runtime"),
        ("runtime: 4", "runtime"),
    ] {
        let path = dir.join("config.yaml");
        std::fs::write(&path, format!("{provider}{runtime}\n")).unwrap();
        let out = Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{runtime}: accepted");
        assert!(
            stderr.starts_with(&format!("error: {field}")),
            "{runtime}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{runtime}: one line: {stderr}");
    }
    for ok in [
        "runtime: {worker_threads: 1}",
        "runtime: {worker_threads: 256}",
        "runtime: {}",
    ] {
        let path = dir.join("config.yaml");
        std::fs::write(&path, format!("{provider}{ok}\n")).unwrap();
        let out = Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
