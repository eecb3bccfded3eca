//! The README's demo command, run the way a user runs it: `scripts/demo` from a scratch
//! directory (ports passed as flags, since the defaults may be taken), until `ready`; then one
//! allowed and one refused request through Envoy, and SIGTERM stops everything it started.
//! However the demo ends (SIGTERM, SIGINT, SIGHUP, SIGKILL), no Envoy survives it and the next
//! demo starts on the same ports.
#![cfg(feature = "issuer")]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::process::{ChildGuard, Lines, TempDir, free_port, log_file, tail};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_m2m-authz");
/// Generous: on a busy 2-core machine `scripts/tools` and the start-up take a while.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

#[derive(Clone, Copy, Debug)]
struct Ports {
    listener: u16,
    admin: u16,
    grpc: u16,
    metrics: u16,
    issuer: u16,
    upstream: u16,
}

impl Ports {
    /// Six distinct ports that were free a moment ago.
    fn free() -> Self {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        Ports {
            listener: ports[0],
            admin: ports[1],
            grpc: ports[2],
            issuer: ports[3],
            upstream: ports[4],
            metrics: ports[5],
        }
    }

    fn args(&self) -> Vec<String> {
        [
            ("--listen-port", self.listener),
            ("--admin-port", self.admin),
            ("--grpc-port", self.grpc),
            ("--metrics-port", self.metrics),
            ("--issuer-port", self.issuer),
            ("--upstream-port", self.upstream),
        ]
        .iter()
        .flat_map(|(flag, port)| [flag.to_string(), port.to_string()])
        .collect()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// `scripts/demo` running, up to its `ready` line.
struct RunningDemo {
    child: ChildGuard,
    lines: Lines,
    ports: Ports,
}

/// Starts `scripts/demo` in `cwd`, waits for `ready`. `Err((report, retry))`: `retry` when a
/// port chosen as free was taken by someone else in the meantime.
async fn start_demo(cwd: &Path, state: &Path) -> Result<RunningDemo, (String, bool)> {
    start_demo_on(cwd, state, Ports::free()).await
}

/// [`start_demo`] on the given ports.
async fn start_demo_on(
    cwd: &Path,
    state: &Path,
    ports: Ports,
) -> Result<RunningDemo, (String, bool)> {
    let stderr = cwd.join("demo.stderr.log");
    let mut cmd = Command::new(common::repo_root().join("scripts/demo"));
    cmd.current_dir(cwd)
        .arg("--dir")
        .arg(state)
        .args(ports.args())
        // `cargo test` already built the binary under test; the script would otherwise run
        // `cargo build`, whose features differ from the test build's.
        .env("M2M_AUTHZ_DEMO_BIN", BIN)
        .env_remove("M2M_AUTHZ_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&stderr));
    let mut child = ChildGuard::spawn("scripts/demo", &mut cmd).with_grace(EXIT_TIMEOUT);
    let mut lines = Lines::spawn(child.child_mut().stdout.take().expect("demo stdout"));
    match lines.wait_for_prefix("ready", READY_TIMEOUT).await {
        Ok(line) => {
            assert_eq!(line, "ready", "the ready line is exactly `ready`");
            Ok(RunningDemo {
                child,
                lines,
                ports,
            })
        }
        Err(err) => {
            let status = child.stop();
            let stderr = tail(&stderr, 40);
            let retry = stderr.contains("is in use") || stderr.contains("Address already in use");
            Err((
                format!(
                    "{err}; demo exit status {status:?}\nstderr:\n{stderr}\nsidecar log:\n{}\nenvoy log:\n{}",
                    tail(&state.join("m2m-authz.log"), 30),
                    tail(&state.join("envoy.log"), 30),
                ),
                retry,
            ))
        }
    }
}

/// [`start_demo`], again on new ports (up to three times) when one chosen as free was taken in
/// the meantime; panics with every attempt's report otherwise.
async fn start_demo_retrying(cwd: &Path, state: &Path) -> RunningDemo {
    let mut failures = Vec::new();
    for _attempt in 0..3 {
        match start_demo(cwd, state).await {
            Ok(running) => return running,
            Err((report, retry)) => {
                failures.push(report);
                if !retry {
                    break;
                }
            }
        }
    }
    panic!(
        "scripts/demo did not reach ready:\n{}",
        failures.join("\n-----\n")
    );
}

async fn value_after(lines: &mut Lines, prefix: &str) -> String {
    let line = lines
        .wait_for_prefix(prefix, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("banner: {e}"));
    line[prefix.len()..].trim().to_owned()
}

async fn wait_exit(child: &mut ChildGuard, timeout: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait() {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(common::process::POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_demo_command_reaches_ready_and_allows_a_request() {
    crate::needs!(Envoy);
    let tmp = TempDir::new("demo");
    let state = tmp.join(".demo");
    let mut demo = start_demo_retrying(tmp.path(), &state).await;

    let id = value_after(&mut demo.lines, "client_id: ").await;
    let secret = value_after(&mut demo.lines, "client_secret: ").await;
    let envoy_pid: u32 = value_after(&mut demo.lines, "envoy: pid ")
        .await
        .split(',')
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .expect("envoy pid in the banner");
    assert!(id.starts_with("m2m-client-test-"), "{id}");
    assert!(secret.starts_with("secret-test-"), "client_secret line");
    for file in ["m2m-authz.yaml", "issuer.yaml", "envoy.yaml", "issuer.db"] {
        assert!(state.join(file).exists(), "{file} in the state dir");
    }

    let url = format!("http://127.0.0.1:{}/v1/orders", demo.ports.listener);
    let http = common::http_client();

    let allowed = http
        .get(&url)
        .basic_auth(&id, Some(&secret))
        .send()
        .await
        .expect("allowed request");
    assert_eq!(allowed.status(), 200);
    let echo: Value = allowed.json().await.expect("echo JSON");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/v1/orders");
    let headers = &echo["headers"];
    assert_eq!(headers["x-user-id"], "user-demo-1", "{echo}");
    assert!(headers.get("authorization").is_none(), "{echo}");
    assert!(headers.get("x-client-secret").is_none(), "{echo}");
    assert!(
        !echo.to_string().contains(&secret),
        "the secret reached the upstream"
    );

    // Key material at rest (issue 13): the state dir is owner-only, and so is every file in it
    // (configs with the project secret, the issuer database and the WAL files SQLite made).
    assert_eq!(mode(&state), 0o700, "state dir");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&state).expect("read state dir") {
        let path = entry.expect("dir entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for file in [
        "project-secret",
        "issuer.db",
        "issuer.db-wal",
        "issuer.db-shm",
    ] {
        assert!(seen.iter().any(|f| f == file), "{file} in {seen:?}");
    }

    let wrong = http
        .get(&url)
        .basic_auth(&id, Some("secret-test-wrong"))
        .send()
        .await
        .expect("wrong-secret request");
    assert_eq!(wrong.status(), 401);
    let challenge = wrong
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );

    // SIGTERM stops Envoy, drains the sidecar and exits 0.
    demo.child.signal(SIGTERM);
    let status = wait_exit(&mut demo.child, EXIT_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("the demo did not exit within {EXIT_TIMEOUT:?} of SIGTERM"));
    assert!(status.success(), "demo exit status {status}");
    assert!(
        demo.lines
            .wait_for_prefix("stopped", Duration::from_secs(5))
            .await
            .is_ok(),
        "`stopped` after a clean shutdown"
    );
    for (what, port) in [
        ("Envoy admin", demo.ports.admin),
        ("Envoy listener", demo.ports.listener),
        ("sidecar", demo.ports.grpc),
        ("sidecar admin", demo.ports.metrics),
        ("issuer", demo.ports.issuer),
        ("upstream", demo.ports.upstream),
    ] {
        assert!(
            tokio::net::TcpStream::connect(Ports::addr(port))
                .await
                .is_err(),
            "{what} port {port} still accepts connections after the demo exited"
        );
    }
    assert!(
        !Path::new(&format!("/proc/{envoy_pid}")).exists(),
        "Envoy (pid {envoy_pid}) outlived the demo"
    );
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `m2m-authz demo` with `ports` and an Envoy path; returns (status, stdout, stderr).
fn run_demo_binary(dir: &Path, envoy: &Path, ports: &Ports) -> (ExitStatus, String, String) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .arg("demo")
        .arg("--envoy")
        .arg(envoy)
        .arg("--dir")
        .arg(dir.join(".demo"))
        .args(ports.args())
        .stdin(Stdio::null())
        .output()
        .expect("run m2m-authz demo");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_taken_port_gives_one_line_naming_its_flag() {
    crate::needs!(Envoy);
    let tmp = TempDir::new("demo-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut ports = Ports::free();
    ports.grpc = taken.local_addr().expect("addr").port();
    let (status, stdout, stderr) = run_demo_binary(tmp.path(), &common::tools::envoy_bin(), &ports);
    assert!(!status.success(), "exit status {status}");
    assert_eq!(
        stderr,
        format!(
            "error: port {} (sidecar gRPC) is in use; pass --grpc-port to choose another\n",
            ports.grpc
        )
    );
    assert_eq!(stdout, "");
    assert!(
        !tmp.join(".demo").exists(),
        "nothing is written before the ports are checked"
    );
}

#[test]
fn a_missing_envoy_says_to_run_scripts_tools() {
    let tmp = TempDir::new("demo-envoy");
    let envoy = tmp.join("no-such-envoy");
    let (status, stdout, stderr) = run_demo_binary(tmp.path(), &envoy, &Ports::free());
    assert!(!status.success(), "exit status {status}");
    assert_eq!(
        stderr,
        format!(
            "error: envoy not found at {}; run scripts/tools\n",
            envoy.display()
        )
    );
    assert_eq!(stdout, "");
}

#[test]
fn a_state_dir_others_can_read_is_refused_with_the_fix() {
    crate::needs!(Envoy);
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = TempDir::new("demo-state");
    let state = tmp.join(".demo");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (status, stdout, stderr) =
        run_demo_binary(tmp.path(), &common::tools::envoy_bin(), &Ports::free());
    assert!(!status.success(), "exit status {status}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("chmod -R go= {}", state.display())),
        "{stderr}"
    );
    assert_eq!(stdout, "");
    assert_eq!(
        std::fs::read_dir(&state).expect("read").count(),
        0,
        "nothing is written into a refused state dir"
    );
}

/// Whether `pid` is a live process (a zombie nobody reaped yet counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name: `pid (comm) S ...`.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Issue 16: the demo leaves nothing behind however it ends. Each signal goes to the demo
/// process (`scripts/demo` execs the binary, so it is the same pid); after it, Envoy's pid is
/// gone and no demo port accepts, and the next run starts on the very same ports — after SIGKILL
/// too, where no handler of the demo runs and only the kernel's parent-death signal stops Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_child_survives_any_way_the_demo_ends() {
    crate::needs!(Envoy);
    let tmp = TempDir::new("demo-signals");
    let state = tmp.join(".demo");
    let mut ports = Ports::free();
    let mut client_id = None;
    for (name, signal) in [
        ("SIGTERM", SIGTERM),
        ("SIGINT", SIGINT),
        ("SIGHUP", SIGHUP),
        ("SIGKILL", SIGKILL),
        ("SIGTERM after SIGKILL", SIGTERM),
    ] {
        // Only the first run may move to other ports (someone took one before it bound);
        // later runs must get the same ones back.
        let mut demo = loop {
            match start_demo_on(tmp.path(), &state, ports).await {
                Ok(running) => break running,
                Err((report, true)) if client_id.is_none() => {
                    eprintln!("retrying on other ports: {report}");
                    ports = Ports::free();
                }
                Err((report, _)) => panic!("before {name}: the demo did not start: {report}"),
            }
        };
        let id = value_after(&mut demo.lines, "client_id: ").await;
        let envoy_pid: u32 = value_after(&mut demo.lines, "envoy: pid ")
            .await
            .split(',')
            .next()
            .and_then(|pid| pid.trim().parse().ok())
            .expect("envoy pid in the banner");
        assert!(alive(envoy_pid), "Envoy runs while the demo does");
        // The demo client is kept across runs, not a new one each time.
        assert_eq!(client_id.get_or_insert_with(|| id.clone()), &id, "{name}");

        demo.child.signal(signal);
        let status = wait_exit(&mut demo.child, EXIT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("the demo did not exit within {EXIT_TIMEOUT:?} of {name}"));
        if signal == SIGKILL {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(status.signal(), Some(SIGKILL), "{name}: {status}");
        } else {
            assert!(status.success(), "{name}: demo exit status {status}");
            assert!(
                demo.lines
                    .wait_for_prefix("stopped", Duration::from_secs(5))
                    .await
                    .is_ok(),
                "{name}: `stopped` after a clean shutdown"
            );
        }
        // SIGKILL: the kernel signals Envoy as the demo dies; give it a bounded moment to go.
        let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
        while alive(envoy_pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(common::process::POLL_INTERVAL).await;
        }
        assert!(
            !alive(envoy_pid),
            "{name}: Envoy (pid {envoy_pid}) outlived the demo"
        );
        for (what, port) in [
            ("Envoy admin", ports.admin),
            ("Envoy listener", ports.listener),
            ("sidecar", ports.grpc),
            ("sidecar admin", ports.metrics),
            ("issuer", ports.issuer),
            ("upstream", ports.upstream),
        ] {
            assert!(
                tokio::net::TcpStream::connect(Ports::addr(port))
                    .await
                    .is_err(),
                "{name}: {what} port {port} still accepts connections after the demo exited"
            );
        }
    }
}

/// The README's walkthrough, as written: every `sh` block between its `<!-- walkthrough: begin
/// -->` and `<!-- walkthrough: end -->` markers.
fn walkthrough_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let section = readme
        .split_once("<!-- walkthrough: begin -->")
        .and_then(|(_, rest)| rest.split_once("<!-- walkthrough: end -->"))
        .map(|(section, _)| section)
        .expect("the README's walkthrough markers");
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some((_, after)) = rest.split_once("```sh\n") {
        let (block, after) = after.split_once("```").expect("a closed sh block");
        blocks.push(block.to_owned());
        rest = after;
    }
    blocks
}

/// What a block says it prints: its `# ⇒ TEXT` lines.
fn expectations(block: &str) -> Vec<&str> {
    block
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("# ⇒ "))
        .collect()
}

/// The README's walkthrough — a backend creating one M2M client per user with Stytch's Python
/// SDK, the seed's M2M template, the user's calls through Envoy, rotation without downtime, and
/// the refusal of a client that tries to manage clients — run block by block in one shell
/// against a real demo (issuer, sidecar, Envoy) in a scratch directory laid out like the
/// repository (`target/debug/m2m-authz`, `.demo/`). Each block must print what its `# ⇒` lines
/// say, and the shell must end without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_runs_as_written() {
    crate::needs!(Envoy);
    crate::needs!(PythonStytch);
    let blocks = walkthrough_blocks();
    assert!(blocks.len() >= 5, "walkthrough blocks: {}", blocks.len());
    let tmp = TempDir::new("walkthrough");
    let state = tmp.join(".demo");
    std::fs::create_dir_all(tmp.join("target/debug")).unwrap();
    std::os::unix::fs::symlink(BIN, tmp.join("target/debug/m2m-authz")).unwrap();
    let mut demo = start_demo_retrying(tmp.path(), &state).await;

    let mut script = String::from("set -euo pipefail\nexec 2>&1\n");
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '@@block {i}'\n{block}\n"));
    }
    script.push_str("echo '@@end'\n");
    let python = common::tools::python_stytch();
    let path = format!(
        "{}:{}",
        python.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cwd = tmp.path().to_owned();
    let (api, issuer) = (
        format!("http://127.0.0.1:{}", demo.ports.listener),
        format!("http://127.0.0.1:{}", demo.ports.issuer),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["120", "bash", "-c", &script])
            .current_dir(cwd)
            .env("PATH", path)
            .env("API", api)
            .env("ISSUER", issuer)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("run the walkthrough");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!(
        "walkthrough output:\n{stdout}\nsidecar log:\n{}",
        tail(&state.join("m2m-authz.log"), 20)
    );
    assert!(
        out.status.success() && stdout.trim_end().ends_with("@@end"),
        "the walkthrough failed ({:?})\n{context}",
        out.status
    );
    for (i, block) in blocks.iter().enumerate() {
        let printed = stdout
            .split(&format!("@@block {i}\n"))
            .nth(1)
            .and_then(|rest| rest.split("@@").next())
            .unwrap_or_default();
        for want in expectations(block) {
            assert!(
                printed.contains(want),
                "block {i} did not print {want:?}\n{context}"
            );
        }
    }
    // The secrets the walkthrough handled are not in the sidecar's log.
    let log = std::fs::read_to_string(state.join("m2m-authz.log")).unwrap_or_default();
    assert!(!log.contains("secret-test-"), "a client secret in the log");
    demo.child.stop();
}
