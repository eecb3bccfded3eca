//! The HTTP authorization port (`listen.http`) behind real proxies: nginx `auth_request`
//! (deploy/nginx/nginx.conf), Caddy `forward_auth` (deploy/caddy/Caddyfile) and Envoy's HTTP
//! ext_authz (deploy/envoy/envoy-http.yaml), each the shipped config with only its addresses
//! rewritten, in front of an echo upstream; and the port itself spoken to directly.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::check::basic;
use common::echo::EchoUpstream;
use common::envoy::{Envoy, EnvoyOptions, EnvoyPorts};
use common::process::{ChildGuard, TempDir, free_addr, log_file, wait_for_tcp};
use common::provider::FakeProvider;
use common::sidecar::Sidecar;
use common::tools::{self, Tool};

const POLICY: &str = "\
rules:
  - name: admin
    match: {path: {prefix: /admin/}}
    deny: true
  - name: delete
    match: {methods: [DELETE]}
    require: {all_of: [\"write:orders\"]}
default:
  require: {}
";

/// The addresses the shipped proxy configs use, rewritten by the tests.
const SHIPPED_PROXY: &str = "127.0.0.1:8000";
const SHIPPED_AUTHZ: &str = "127.0.0.1:9002";
const SHIPPED_UPSTREAM: &str = "127.0.0.1:8080";

struct Authz {
    provider: FakeProvider,
    sidecar: Sidecar,
    http: SocketAddr,
    _policy: TempDir,
}

/// The real binary with `listen.http`, the test policy, and `cache` (indented lines) if any.
async fn authz(cache: &str) -> Authz {
    let provider = FakeProvider::start().await;
    provider.add_client("svc", "right-secret", "user-1");
    let policy = TempDir::new("http-policy");
    std::fs::write(policy.join("policy.yaml"), POLICY).unwrap();
    let http = free_addr();
    let config = format!(
        "{}  request_timeout: 2s\npolicy:\n  file: {}\ncache:\n  max_entries: 1000\n{cache}",
        provider.oauth2_provider_yaml(),
        policy.join("policy.yaml").display()
    );
    let sidecar = Sidecar::start_with_listen(&format!("  http: \"{http}\"\n"), &config).await;
    Authz {
        provider,
        sidecar,
        http,
        _policy: policy,
    }
}

fn rewrite(template: &str, proxy: SocketAddr, authz: SocketAddr, upstream: SocketAddr) -> String {
    for text in [SHIPPED_PROXY, SHIPPED_AUTHZ, SHIPPED_UPSTREAM] {
        assert!(template.contains(text), "the shipped config lost {text}");
    }
    template
        .replace(SHIPPED_PROXY, &proxy.to_string())
        .replace(SHIPPED_AUTHZ, &authz.to_string())
        .replace(SHIPPED_UPSTREAM, &upstream.to_string())
}

/// A proxy process on loopback, stopped on drop.
struct Proxy {
    _child: ChildGuard,
    addr: SocketAddr,
    dir: TempDir,
}

impl Proxy {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

async fn nginx(authz: SocketAddr, upstream: SocketAddr) -> Proxy {
    let dir = TempDir::new("nginx");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let addr = free_addr();
    let template = std::fs::read_to_string(tools::repo_file("deploy/nginx/nginx.conf")).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, rewrite(&template, addr, authz, upstream)).unwrap();
    let mut cmd = Command::new(Tool::Nginx.path());
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off; master_process off;"])
        .stdout(log_file(&dir.join("stdout.log")))
        .stderr(log_file(&dir.join("stderr.log")));
    let child = ChildGuard::spawn("nginx", &mut cmd);
    let proxy = Proxy {
        _child: child,
        addr,
        dir,
    };
    if let Err(e) = wait_for_tcp(addr, Duration::from_secs(10)).await {
        panic!("nginx did not listen: {e}\n{}", proxy.logs());
    }
    proxy
}

async fn caddy(authz: SocketAddr, upstream: SocketAddr) -> Proxy {
    let dir = TempDir::new("caddy");
    let addr = free_addr();
    let template = std::fs::read_to_string(tools::repo_file("deploy/caddy/Caddyfile")).unwrap();
    let conf = dir.join("Caddyfile");
    std::fs::write(&conf, rewrite(&template, addr, authz, upstream)).unwrap();
    let mut cmd = Command::new(Tool::Caddy.path());
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&conf)
        // Caddy keeps its data and config state under $HOME / XDG dirs: the test's own.
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(log_file(&dir.join("stdout.log")))
        .stderr(log_file(&dir.join("stderr.log")));
    let child = ChildGuard::spawn("caddy", &mut cmd);
    let proxy = Proxy {
        _child: child,
        addr,
        dir,
    };
    if let Err(e) = wait_for_tcp(addr, Duration::from_secs(10)).await {
        panic!("caddy did not listen: {e}\n{}", proxy.logs());
    }
    proxy
}

/// What every proxy must prove, through `url(path)`.
async fn proves_the_common_rules(url: impl Fn(&str) -> String, upstream: &EchoUpstream) {
    let http = common::http_client();
    let good = basic("svc", "right-secret");

    // Allowed: the identity reaches the upstream, a forged one is replaced, no credential does.
    let r = http
        .get(url("/orders/1?x=1"))
        .header("authorization", &good)
        .header("x-user-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let seen = upstream.last_request().expect("the upstream was reached");
    assert_eq!(seen.path, "/orders/1");
    assert_eq!(seen.header_values("x-user-id"), ["user-1"]);
    assert!(seen.header_values("authorization").is_empty(), "{seen:?}");
    assert!(seen.header_values("x-client-secret").is_empty(), "{seen:?}");

    // The credential in X-Client-Id/X-Client-Secret headers works and does not travel on.
    let r = http
        .post(url("/orders"))
        .header("x-client-id", "svc")
        .header("x-client-secret", "right-secret")
        .body("a body the sidecar never reads")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header_values("x-user-id"), ["user-1"]);
    assert!(seen.header_values("x-client-secret").is_empty(), "{seen:?}");

    // A wrong secret: 401 with an RFC 6750 challenge, and the upstream never sees it.
    let before = upstream.request_count();
    let r = http
        .get(url("/orders/1"))
        .header("authorization", basic("svc", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers().get_all("www-authenticate").iter().count(), 1);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert_eq!(upstream.request_count(), before);

    // The policy applies to the original method and canonical path, whatever the caller adds.
    for (method, path, forged, status) in [
        ("GET", "/admin/x", None, 403),
        ("GET", "/%61dmin/x", None, 403),
        (
            "GET",
            "/admin/x",
            Some(("x-forwarded-uri", "/orders/1")),
            403,
        ),
        (
            "GET",
            "/admin/x",
            Some(("x-original-uri", "/orders/1")),
            403,
        ),
        ("GET", "/admin/x", Some(("x-forwarded-method", "GET")), 403),
        ("DELETE", "/orders/1", None, 403),
        (
            "DELETE",
            "/orders/1",
            Some(("x-forwarded-method", "GET")),
            403,
        ),
        (
            "DELETE",
            "/orders/1",
            Some(("x-original-method", "GET")),
            403,
        ),
    ] {
        let mut request = http
            .request(method.parse().unwrap(), url(path))
            .header("authorization", &good);
        if let Some((name, value)) = forged {
            request = request.header(name, value);
        }
        let r = request.send().await.unwrap();
        // A forged description is either overwritten (the rule applies: 403) or refused as a
        // request described twice (400): never the other rule's allow.
        let got = r.status().as_u16();
        assert!(
            got == status || (forged.is_some() && got == 400),
            "{method} {path} {forged:?}: {got}"
        );
        assert_eq!(
            upstream.request_count(),
            before,
            "{method} {path} reached the upstream"
        );
    }
    assert_eq!(
        http.get(url("/orders/2"))
            .header("authorization", &good)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_with_the_shipped_config() {
    needs!(Nginx);
    let authz = authz("").await;
    let upstream = EchoUpstream::start().await;
    let proxy = nginx(authz.http, upstream.addr()).await;
    proves_the_common_rules(|p| proxy.url(p), &upstream).await;
    drop(authz);
}

/// `auth_request` passes only 2xx/401/403: the shipped config turns m2m-authz's 400, 429 and 503
/// (and an unreachable m2m-authz) into the caller's status with `error_page`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_400_429_and_503_to_the_caller() {
    needs!(Nginx);
    let authz = authz("  max_exchanges_per_second: 1\n  exchange_queue_timeout: 10ms\n").await;
    let upstream = EchoUpstream::start().await;
    let proxy = nginx(authz.http, upstream.addr()).await;
    let http = common::http_client();
    let get = |path: &str, id: &str| {
        http.get(proxy.url(path))
            .header("authorization", basic(id, "right-secret"))
            .send()
    };
    // 400: a path with no canonical form (an encoded slash), decided before any exchange.
    let r = get("/a%2Fb", "svc").await.unwrap();
    assert_eq!(r.status(), 400, "{}", proxy.logs());
    assert_eq!(r.headers().get_all("www-authenticate").iter().count(), 1);
    // 503: the provider is down, the exchange fails (uses the one exchange this second allows).
    authz.provider.stop();
    let r = get("/orders/1", "svc").await.unwrap();
    assert_eq!(r.status(), 503, "{}", authz.sidecar.logs());
    assert!(r.headers().contains_key("retry-after"));
    // 429: another new credential in the same second is over the exchange limit.
    authz.provider.add_client("svc-2", "right-secret", "user-2");
    let r = get("/orders/1", "svc-2").await.unwrap();
    assert_eq!(r.status(), 429, "{}", authz.sidecar.logs());
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(upstream.request_count(), 0);
    // m2m-authz unreachable: 503, fail closed.
    drop(authz);
    let r = http
        .get(proxy.url("/orders/1"))
        .header("authorization", basic("svc", "right-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_with_the_shipped_config() {
    needs!(Caddy);
    let authz = authz("").await;
    let upstream = EchoUpstream::start().await;
    let proxy = caddy(authz.http, upstream.addr()).await;
    proves_the_common_rules(|p| proxy.url(p), &upstream).await;
    // Caddy passes any denial through as m2m-authz answered it.
    let r = common::http_client()
        .get(proxy.url("/a%2Fb"))
        .header("authorization", basic("svc", "right-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "{}", proxy.logs());
    assert_eq!(r.headers()["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_ext_authz_with_the_shipped_config() {
    needs!(Envoy);
    let authz = authz("").await;
    let upstream = EchoUpstream::start().await;
    // The shipped file names the HTTP port 9002; the harness rewrites its 9001.
    let template = std::fs::read_to_string(tools::repo_file("deploy/envoy/envoy-http.yaml"))
        .unwrap()
        .replace("port_value: 9002", "port_value: 9001");
    let dir = TempDir::new("envoy-http");
    std::fs::write(dir.join("envoy-http.yaml"), template).unwrap();
    let envoy = Envoy::start_with(
        EnvoyPorts {
            ext_authz: authz.http,
            upstream: upstream.addr(),
        },
        EnvoyOptions {
            config_template: Some(dir.join("envoy-http.yaml")),
            ..EnvoyOptions::default()
        },
    )
    .await;
    proves_the_common_rules(|p| envoy.url(p), &upstream).await;
}

/// The port itself: modes by path, 404 elsewhere, HTTP/1.1 and h2c, bodies ignored, limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_answers_by_path_and_protocol() {
    let authz = authz("").await;
    let base = format!("http://{}", authz.http);
    let http = common::http_client();
    let good = basic("svc", "right-secret");

    for path in [
        "/",
        "/ext_authz",
        "/forward_auth/x",
        "/metrics",
        "/FORWARD_AUTH",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }

    // Envoy mode: allow carries the identity and the headers to strip.
    let r = http
        .get(format!("{base}/ext_authz/orders/1"))
        .header("host", "api.example")
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user-id"], "user-1");
    let remove = r.headers()["x-envoy-auth-headers-to-remove"]
        .to_str()
        .unwrap()
        .to_owned();
    for credential in ["authorization", "x-client-secret"] {
        assert!(remove.split(',').any(|h| h == credential), "{remove}");
    }
    // Envoy mode: the original method and path come from the request.
    let r = http
        .delete(format!("{base}/ext_authz/orders/1"))
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );

    // Forward auth: any method is fine (the original is in headers); a body is never looked at
    // (drained up to 64 KiB, so the connection stays reusable: the next request reuses it).
    let r = http
        .put(format!("{base}/forward_auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/orders/1")
        .header("x-forwarded-host", "api.example")
        .header("authorization", &good)
        .body(vec![b'x'; 64 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user-id"], "user-1");
    // No original URI: refused, never a check of "/forward_auth" itself.
    let r = http
        .get(format!("{base}/forward_auth"))
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");

    // h2c (prior knowledge), as Envoy's HTTP/2 clusters speak it.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(format!("{base}/forward_auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/admin/x")
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 403);

    // Oversized headers are refused by the server, not buffered.
    let r = http
        .get(format!("{base}/forward_auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/orders/1")
        .header("authorization", &good)
        .header("x-big", "a".repeat(256 * 1024))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("{e:?}"),
    }

    // The checks are counted with gRPC's.
    let metrics = authz.sidecar.metrics_text().await;
    assert!(metrics.contains("decision=\"allow\""), "{metrics}");
}

/// A client that never finishes its headers is cut off (HTTP/1.1 header read timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_sender_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authz = authz("").await;
    let mut stream = tokio::net::TcpStream::connect(authz.http).await.unwrap();
    stream
        .write_all(b"GET /forward_auth HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        m2m_authz::http_authz::HEADER_READ_TIMEOUT + Duration::from_secs(5),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "the connection was kept open past the header timeout"
    );
}

/// SIGTERM: the HTTP port is drained like the Check port — a check in flight gets its answer,
/// the process exits cleanly, and the port accepts nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_flight_on_the_http_port_finishes_during_the_drain() {
    const SIGTERM: i32 = 15;
    let mut authz = authz("").await;
    authz.provider.set_latency(Duration::from_millis(1500));
    let url = format!("http://{}/forward_auth", authz.http);
    let in_flight = tokio::spawn(async move {
        common::http_client()
            .get(url)
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/orders/1")
            .header("authorization", basic("svc", "right-secret"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while authz.provider.token_calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the exchange never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    authz.sidecar.child.signal(SIGTERM);
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = authz.sidecar.child.try_wait() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecar did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}\n{}", authz.sidecar.logs());
    assert!(tokio::net::TcpStream::connect(authz.http).await.is_err());
}
