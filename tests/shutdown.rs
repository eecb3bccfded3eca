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

/// Waits for the process to exit by `deadline` and asserts that it exited 0 (with its logs if
/// not).
async fn assert_clean_exit(sidecar: &mut Sidecar, deadline: Instant) {
    let status = wait_exit(sidecar, deadline)
        .await
        .unwrap_or_else(|| panic!("still running at the deadline:\n{}", sidecar.logs()));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        sidecar.logs()
    );
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

    assert_clean_exit(&mut sidecar, signalled + DRAIN + EXIT_MARGIN).await;
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

/// A gRPC channel to the Check socket at `path`.
async fn unix_channel(path: std::path::PathBuf) -> tonic::transport::Channel {
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to the Check socket")
}

/// On a Unix socket, SIGTERM goes in order: `/readyz` says 503 at once while the check in
/// flight drains and is answered, new connections are refused, and once everything has stopped
/// the socket file is removed and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_unix_socket_drains_then_removes_the_socket() {
    use m2m_authz::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    let p = FakeProvider::start().await;
    p.add_client("client-1", "s3cret", "user-1");
    let (mut sidecar, socket) = Sidecar::start_unix(&config(&p, "5s")).await;
    let readyz = format!("{}/readyz", sidecar.admin_url());
    common::process::wait_for_http_ok(&readyz, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sidecar.logs()));

    p.set_latency(Duration::from_millis(1500));
    let mut client = AuthorizationClient::new(unix_channel(socket.clone()).await);
    let check =
        tokio::spawn(async move { client.check(check_request("client-1", "s3cret")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.token_calls() < 1 {
        assert!(Instant::now() < deadline, "the exchange never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    sidecar.child.signal(SIGTERM);
    let signalled = Instant::now();

    // Not ready any more, while the check is still in flight.
    let http = common::http_client();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = http
            .get(&readyz)
            .send()
            .await
            .expect("the admin port answers while draining");
        if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["reason"], "shutting down", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {} after SIGTERM",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !check.is_finished(),
        "the check ended before the drain was seen"
    );
    // New connections are refused; the socket file is still there while the check drains.
    let deadline = Instant::now() + Duration::from_secs(1);
    while tokio::net::UnixStream::connect(&socket).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let response = check.await.unwrap().unwrap_or_else(|e| {
        panic!(
            "the check was dropped mid-answer: {e:?}\n{}",
            sidecar.logs()
        )
    });
    let Some(HttpResponse::OkResponse(ok)) = response.into_inner().http_response else {
        panic!("not allowed")
    };
    assert!(
        ok.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .any(|h| h.key == "x-user-id" && h.value == "user-1")
    );

    assert_clean_exit(&mut sidecar, signalled + DRAIN + EXIT_MARGIN).await;
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "the socket file was left behind"
    );
}

/// SIGINT (ctrl-c) stops `serve` as SIGTERM does, also before it is SERVING (the JWKS endpoint
/// is failing here): exit 0 through the same ordered stop, the signal named in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_serve_cleanly_before_keys_load() {
    const SIGINT: i32 = 2;
    let p = FakeProvider::start().await;
    p.set_mode(common::provider::Mode::Failing);
    let dir = common::process::TempDir::new("sigint");
    let (grpc, admin) = (common::process::free_addr(), common::process::free_addr());
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {{grpc: '{grpc}', admin: '{admin}', drain_timeout: 5s}}\n{}",
            config(&p, "5s")
        ),
    )
    .unwrap();
    let child = common::process::ChildGuard::spawn(
        "m2m-authz",
        std::process::Command::new(common::sidecar::binary())
            .args(["serve", "--config"])
            .arg(&path)
            .env("M2M_AUTHZ_LOG_FORMAT", "json")
            .stderr(common::process::log_file(&dir.join("stderr.log"))),
    );
    let mut sidecar = Sidecar {
        child,
        addr: grpc,
        dir,
    };
    common::process::wait_for_tcp(admin, Duration::from_secs(10))
        .await
        .unwrap();
    sidecar.child.signal(SIGINT);
    let status = wait_exit(&mut sidecar, Instant::now() + DRAIN + EXIT_MARGIN)
        .await
        .unwrap_or_else(|| panic!("still running:\n{}", sidecar.logs()));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        sidecar.logs()
    );
    let logs = sidecar.full_logs();
    assert!(logs.contains("SIGINT"), "{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
}
