//! SIGTERM under load: the checks already in flight (waiting on a slow token endpoint) all get
//! their answer, new connections are refused at once, and the process exits 0 within
//! `listen.drain_timeout` (5 s in the harness) — also when a check would outlast it.

mod common;

use common::check::check_request;

use std::time::Duration;

use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::sidecar::Sidecar;
use m2m_authz::proto::envoy::service::auth::v3::check_response::HttpResponse;
use tokio::time::Instant;

const SIGTERM: i32 = 15;
/// The harness's `listen.drain_timeout`.
const DRAIN: Duration = Duration::from_secs(5);
/// Time to exit beyond the drain timeout (process teardown on a loaded machine).
const EXIT_MARGIN: Duration = Duration::from_secs(3);

fn config(p: &FakeProvider, request_timeout: &str) -> String {
    format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  request_timeout: {request_timeout}\n",
        p.token_url(),
        p.jwks_url()
    )
}

/// Polls until the process exits; its status, or `None` at the deadline.
async fn wait_exit(sidecar: &mut Sidecar, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = sidecar.child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_checks_and_refuses_new_connections() {
    const IN_FLIGHT: usize = 16;
    let p = FakeProvider::start().await;
    for i in 0..IN_FLIGHT {
        p.add_client(&format!("client-{i}"), "s3cret", &format!("user-{i}"));
    }
    let mut sidecar = Sidecar::start(&config(&p, "5s")).await;
    // Each check needs an exchange that takes 1.5 s: all are in flight when SIGTERM comes.
    p.set_latency(Duration::from_millis(1500));
    let channels = [sidecar.client().await, sidecar.client().await];
    let mut checks = Vec::new();
    for i in 0..IN_FLIGHT {
        let mut client = channels[i % 2].clone();
        checks.push(tokio::spawn(async move {
            client
                .check(check_request(&format!("client-{i}"), "s3cret"))
                .await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.token_calls() < IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "only {} exchanges started",
            p.token_calls()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    sidecar.child.signal(SIGTERM);
    let signalled = Instant::now();

    // New connections are refused at once (the listener closes), while the checks drain.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::net::TcpStream::connect(sidecar.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting after SIGTERM: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let late = m2m_authz::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        sidecar.url(),
    )
    .await;
    assert!(
        late.is_err(),
        "a new gRPC connection was accepted after SIGTERM"
    );

    // Every check that had started gets its answer: allowed, as the right user.
    for (i, check) in checks.into_iter().enumerate() {
        let response = check.await.unwrap().unwrap_or_else(|e| {
            panic!(
                "check {i} was dropped mid-answer: {e:?}\n{}",
                sidecar.logs()
            )
        });
        let Some(HttpResponse::OkResponse(ok)) = response.into_inner().http_response else {
            panic!("check {i} not allowed")
        };
        let user = ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-user-id")
            .map(|h| h.value.clone());
        assert_eq!(user, Some(format!("user-{i}")));
    }

    let status = wait_exit(&mut sidecar, signalled + DRAIN + EXIT_MARGIN)
        .await
        .unwrap_or_else(|| panic!("still running after the drain timeout:\n{}", sidecar.logs()));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        sidecar.logs()
    );
    let logs = sidecar.full_logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(
        !logs.contains("drain timeout reached"),
        "the drain did not finish: {logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

/// A check that would outlast the drain timeout does not hold the process: it exits 0 once the
/// timeout is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_bounds_the_exit() {
    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let mut sidecar = Sidecar::start(&config(&p, "60s")).await;
    p.set_latency(Duration::from_secs(30));
    let mut client = sidecar.client().await;
    let stuck =
        tokio::spawn(async move { client.check(check_request("client-1", "s3cret")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.token_calls() < 1 {
        assert!(Instant::now() < deadline, "the exchange never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sidecar.child.signal(SIGTERM);
    let signalled = Instant::now();
    let status = wait_exit(&mut sidecar, signalled + DRAIN + EXIT_MARGIN)
        .await
        .unwrap_or_else(|| panic!("still running after the drain timeout:\n{}", sidecar.logs()));
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() >= DRAIN - Duration::from_millis(500),
        "exited before the drain timeout with a check in flight"
    );
    assert!(sidecar.full_logs().contains("drain timeout reached"));
    // The cut-off check is an error for Envoy (which fails closed), never an allow.
    let r = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the stuck check ended with the process")
        .unwrap();
    assert!(r.is_err(), "{r:?}");
}
