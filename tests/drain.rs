//! The example Pod's shutdown (deploy/kubernetes), run as the kubelet would run it, against the
//! real Envoy with the Pod's own bootstrap and arguments and the real m2m-authz on a Unix
//! socket: Envoy's preStop hook (the rendered command), then SIGTERM to Envoy, then — Envoy
//! having exited — SIGTERM to the native sidecar. With slow requests in flight and a kept-alive
//! connection, none is cut: every in-flight request gets its whole response, the kept-alive
//! client is told `Connection: close` and then sees a clean end of stream, a new connection
//! during the drain is told to close and one after it is refused, and m2m-authz answers checks
//! until Envoy has exited. Everything fits the Pod's `terminationGracePeriodSeconds`.
//!
//! On the manifests before the drain hook (a 5 s preStop `sleep`) the 7 s and 8 s requests were
//! cut: Envoy exits on SIGTERM at once.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::check::basic;
use common::process::{ChildGuard, TempDir, free_port, log_file, tail};
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::raw_http::{read_head, read_response};
use common::sidecar::Sidecar;
use serde::Deserialize as _;
use serde_yaml_ng::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const SIGTERM: i32 = 15;
const BASE: &str = "deploy/kubernetes";
/// How long the in-flight requests take at the upstream (seconds).
const SLOW: [u64; 4] = [3, 5, 7, 8];
/// The Pod's socket path, rewritten to the test sidecar's.
const POD_SOCKET: &str = "/var/run/m2m-authz/check.sock";

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(*key)
            .unwrap_or_else(|| panic!("no {key:?} on the path {path:?}"));
    }
    cur
}

fn string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn named<'a>(items: &'a Value, name: &str) -> &'a Value {
    items
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("nothing named {name}"))
}

/// A kubelet lifecycle handler of the kinds the manifests may use.
#[derive(Debug)]
enum Hook {
    None,
    Sleep(u64),
    Exec(Vec<String>),
}

fn pre_stop(container: &Value) -> Hook {
    let Some(hook) = container.get("lifecycle").and_then(|l| l.get("preStop")) else {
        return Hook::None;
    };
    if let Some(sleep) = hook.get("sleep") {
        return Hook::Sleep(at(sleep, &["seconds"]).as_u64().unwrap());
    }
    if let Some(exec) = hook.get("exec") {
        return Hook::Exec(
            at(exec, &["command"])
                .as_sequence()
                .unwrap()
                .iter()
                .map(string)
                .collect(),
        );
    }
    panic!("unsupported preStop handler: {hook:?}");
}

/// The upstream application: `/slow/N` answers after N seconds, anything else at once;
/// HTTP/1.1 with keep-alive, the body `done N`.
async fn slow_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                loop {
                    let Some(head) = read_head(&mut conn).await else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let secs = path
                        .strip_prefix("/slow/")
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    let body = format!("done {secs}");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One HTTP/1.1 response on a kept-alive connection: (status, lower-cased head, body).
async fn exchange(conn: &mut TcpStream, path: &str, auth: &str) -> (u16, String, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: orders.example\r\nauthorization: {auth}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    read_response(conn)
        .await
        .expect("a whole response, not the end of the stream")
}

fn says_close(head: &str) -> bool {
    head.lines().any(|l| l.trim() == "connection: close")
}

async fn wait_exit(child: &mut ChildGuard, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_shutdown_drains_envoy_without_cutting_a_request() {
    crate::needs!(Envoy, Kubectl);

    // --- The Pod, as rendered --------------------------------------------------------------
    let out = Command::new(common::tools::kubectl())
        .arg("kustomize")
        .arg(common::repo_root().join(BASE))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = docs(&String::from_utf8(out.stdout).unwrap());
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = at(deployment, &["spec", "template", "spec"]);
    let grace = at(pod, &["terminationGracePeriodSeconds"])
        .as_u64()
        .unwrap();
    let envoy_c = named(at(pod, &["containers"]), "envoy");
    let app_c = named(at(pod, &["containers"]), "app");
    let sidecar_c = named(at(pod, &["initContainers"]), "m2m-authz");
    // The kubelet stops a native sidecar only after every regular container has exited.
    assert_eq!(
        sidecar_c.get("restartPolicy").and_then(Value::as_str),
        Some("Always"),
        "m2m-authz must be a native sidecar to outlive Envoy"
    );
    assert!(
        matches!(pre_stop(sidecar_c), Hook::None),
        "m2m-authz: no preStop expected"
    );

    // Envoy's config volume, written out where the hook and Envoy find it.
    let mount = named(at(envoy_c, &["volumeMounts"]), "envoy-config");
    let mount_path = string(at(mount, &["mountPath"]));
    let cm_name = string(at(
        named(at(pod, &["volumes"]), "envoy-config"),
        &["configMap", "name"],
    ));
    let cm = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm_name.as_str())
        .expect("Envoy's ConfigMap");
    let dir = TempDir::new("drain");
    let etc = dir.join("etc-envoy");
    std::fs::create_dir_all(&etc).unwrap();

    // --- m2m-authz, the app, Envoy -------------------------------------------------------
    let provider = FakeProvider::start().await;
    provider.add_client("drain-client", "drain-s3cret", "user-d");
    let auth = basic("drain-client", "drain-s3cret");
    let m2m_config = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .find_map(|o| o["data"]["config.yaml"].as_str())
        .expect("m2m-authz's config");
    let drain_timeout = string(at(&docs(m2m_config)[0], &["listen", "drain_timeout"]));
    let drain_secs: u64 = drain_timeout.trim_end_matches('s').parse().unwrap();
    let (mut sidecar, socket) = Sidecar::start_unix(&format!(
        "  drain_timeout: {drain_timeout}\nprovider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  request_timeout: 2s\n",
        provider.token_url(),
        provider.jwks_url()
    ))
    .await;
    let upstream = slow_upstream().await;

    let (admin, listener, probes, stats) = (free_port(), free_port(), free_port(), free_port());
    let mut files = Vec::new();
    for (key, text) in at(cm, &["data"]).as_mapping().unwrap() {
        let (key, mut text) = (string(key), string(text));
        if key == "envoy.yaml" {
            for (from, to) in [
                (
                    "port_value: 9902".to_owned(),
                    format!("port_value: {admin}"),
                ),
                (
                    "port_value: 10000".to_owned(),
                    format!("port_value: {listener}"),
                ),
                (
                    "port_value: 9903".to_owned(),
                    format!("port_value: {probes}"),
                ),
                (
                    "port_value: 9904".to_owned(),
                    format!("port_value: {stats}"),
                ),
                (
                    "port_value: 8080".to_owned(),
                    format!("port_value: {}", upstream.port()),
                ),
                (
                    format!("pipe: {{ path: {POD_SOCKET} }}"),
                    format!("pipe: {{ path: {} }}", socket.display()),
                ),
            ] {
                // The admin port also appears as the stats listener's upstream.
                assert!(text.contains(&from), "{from} in envoy.yaml");
                text = text.replace(&from, &to);
            }
            text = text.replace("address: 0.0.0.0", "address: 127.0.0.1");
        }
        std::fs::write(etc.join(&key), text).unwrap();
        files.push(key);
    }
    let localize = |arg: &str| arg.replace(&mount_path, &etc.display().to_string());

    let mut args: Vec<String> = at(envoy_c, &["args"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| localize(&string(a)))
        .collect();
    args.extend([
        "--log-path".to_owned(),
        dir.join("envoy.log").display().to_string(),
    ]);
    let mut envoy = ChildGuard::spawn(
        "envoy",
        Command::new(common::tools::envoy_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("envoy.out")))
            .stderr(log_file(&dir.join("envoy.err"))),
    );
    let envoy_logs = |dir: &Path| {
        format!(
            "{}\n{}",
            tail(&dir.join("envoy.log"), 40),
            tail(&dir.join("envoy.err"), 20)
        )
    };
    common::process::wait_for_http_ok(
        &format!("http://127.0.0.1:{probes}/ready"),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("Envoy never ready: {e}\n{}", envoy_logs(dir.path())));
    let url = |path: &str| format!("http://127.0.0.1:{listener}{path}");
    let http = common::http_client();

    // The kept-alive client: one request before the drain, not told to close.
    let mut kept = TcpStream::connect(("127.0.0.1", listener)).await.unwrap();
    let (status, head, _) = exchange(&mut kept, "/fast", &auth).await;
    assert_eq!(status, 200, "{head}");
    assert!(!says_close(&head), "closed before any drain: {head}");

    // Slow requests in flight, each on its own connection.
    let in_flight: Vec<_> = SLOW
        .iter()
        .map(|secs| {
            let request = common::http_client()
                .get(url(&format!("/slow/{secs}")))
                .header("authorization", &auth);
            tokio::spawn(async move {
                let r = request.send().await.map_err(|e| format!("{e:?}"))?;
                let status = r.status().as_u16();
                let body = r.text().await.map_err(|e| format!("{e:?}"))?;
                Ok::<_, String>((status, body))
            })
        })
        .collect();
    // Wait until Envoy has them all (no sleep: its own gauge).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = http
            .get(format!(
                "http://127.0.0.1:{admin}/stats?filter=ingress_http.downstream_rq_active"
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if stats.contains(&format!("downstream_rq_active: {}", SLOW.len())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests never in flight: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // --- The kubelet's sequence ----------------------------------------------------------
    let started = Instant::now();
    let (envoy_hook, app_hook) = (pre_stop(envoy_c), pre_stop(app_c));
    let hook = match &envoy_hook {
        Hook::Exec(command) => {
            let admin_s = admin.to_string();
            let command: Vec<String> = command
                .iter()
                .map(|a| localize(a).replace("9902", &admin_s))
                .collect();
            let mut cmd = tokio::process::Command::new(&command[0]);
            cmd.args(&command[1..]).stdin(Stdio::null());
            let mut child = cmd.spawn().expect("run Envoy's preStop");
            tokio::spawn(async move { child.wait().await.map(|s| s.success()) })
        }
        Hook::Sleep(secs) => {
            let secs = *secs;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok(true)
            })
        }
        Hook::None => tokio::spawn(async { Ok(true) }),
    };
    // The app's own preStop must cover Envoy's drain budget (it is not killed here).
    if let (Hook::Exec(command), Hook::Sleep(app_secs)) = (&envoy_hook, &app_hook) {
        let budget: u64 = command.last().unwrap().parse().unwrap();
        assert!(
            *app_secs >= budget,
            "app preStop {app_secs}s < Envoy's drain budget {budget}s"
        );
        assert!(
            grace >= budget + drain_secs + 2,
            "terminationGracePeriodSeconds {grace} < {budget} + {drain_secs} + 2"
        );
    }

    // During the drain: the kept-alive client is answered (so m2m-authz still checks) and told
    // to close, then sees a clean end of stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, head, _) = exchange(&mut kept, "/fast", &auth).await;
    assert_eq!(status, 200, "kept-alive request during the drain: {head}");
    assert!(
        says_close(&head),
        "not told to close during the drain: {head}"
    );
    // A new connection during the drain is answered and told to close.
    let mut fresh = TcpStream::connect(("127.0.0.1", listener))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "new connection {:?} after the drain started: {e}",
                started.elapsed()
            )
        });
    let (status, head, _) = exchange(&mut fresh, "/fast", &auth).await;
    assert_eq!(status, 200, "new connection during the drain: {head}");
    assert!(
        says_close(&head),
        "new connection not told to close: {head}"
    );

    let mut rest = [0u8; 16];
    match kept.read(&mut rest).await {
        Ok(0) => {}
        other => panic!("kept-alive connection: expected a clean close, got {other:?}"),
    }
    let hook_ok = hook.await.unwrap().expect("preStop ran");
    let hook_took = started.elapsed();
    assert!(hook_ok, "Envoy's preStop failed");
    // After the drain's listen window the listener is closed: refused.
    let late = TcpStream::connect(("127.0.0.1", listener)).await;
    if let Ok(mut late) = late {
        // Accepted by a listener still closing: it must not be served as usual.
        let mut buf = [0u8; 1];
        let _ = late
            .write_all(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let n = tokio::time::timeout(Duration::from_secs(2), late.read(&mut buf)).await;
        assert!(
            !matches!(n, Ok(Ok(1))),
            "a connection after the drain window was served"
        );
    }

    // SIGTERM to Envoy; m2m-authz must still be serving until Envoy has exited.
    assert!(
        sidecar.child.try_wait().is_none(),
        "m2m-authz exited before Envoy"
    );
    envoy.signal(SIGTERM);
    let status = wait_exit(&mut envoy, Instant::now() + Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("Envoy did not exit on SIGTERM\n{}", envoy_logs(dir.path())));
    assert!(
        sidecar.child.try_wait().is_none(),
        "m2m-authz exited before Envoy"
    );
    let envoy_took = started.elapsed();

    for (secs, task) in SLOW.iter().zip(in_flight) {
        let result = task.await.unwrap();
        assert_eq!(
            result,
            Ok((200, format!("done {secs}"))),
            "the {secs}s request in flight at the drain (Envoy: {status})"
        );
    }

    // Then the sidecar, within its drain timeout.
    sidecar.child.signal(SIGTERM);
    let exited = wait_exit(
        &mut sidecar.child,
        Instant::now() + Duration::from_secs(drain_secs + 3),
    )
    .await
    .unwrap_or_else(|| panic!("m2m-authz did not exit:\n{}", sidecar.logs()));
    assert!(exited.success(), "m2m-authz: {exited}\n{}", sidecar.logs());
    let total = started.elapsed();
    assert!(
        total < Duration::from_secs(grace),
        "shutdown took {total:?}, over terminationGracePeriodSeconds {grace}"
    );
    eprintln!(
        "preStop {hook_took:?}, Envoy exited at {envoy_took:?}, m2m-authz at {total:?} (grace {grace}s); files {files:?}"
    );
}
