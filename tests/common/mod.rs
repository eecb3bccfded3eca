//! Test harness that drives the real third-party parts (Envoy, a real OIDC
//! provider, an echo upstream) around m2m-authz. Independent of the crate's
//! internals: integration tests use it with `mod common;`.
//!
//! Every integration test compiles its own copy of this module and uses only
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod check;
pub mod echo;
pub mod envoy;
pub mod fakes;
pub mod issuer;
pub mod oidc;
pub mod process;
pub mod provider;
pub mod sidecar;
pub mod tools;

use std::path::PathBuf;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An HTTP client for loopback test traffic: ignores any proxy settings in
/// the environment and gives each request a bounded time.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}
