//! The one test kit: a fake token endpoint + JWKS (`provider`), request builders (`check`), the
//! core built from YAML (`authz`), a temp dir and child processes (`process`), the real binary
//! (`sidecar`, `issuer`), HTTP/1.1 by hand (`raw_http`), and the real third-party parts (Envoy, a real OIDC provider, an echo
//! upstream) with the tools they need (`tools`: a missing tool skips the test, or fails it under
//! `M2M_AUTHZ_REQUIRE_TOOLS=1`). Integration tests use it with `mod common;`, the benchmarks and
//! the load tool with `#[path = "../tests/common/mod.rs"] mod common;`.
//!
//! Every test binary compiles its own copy of this module and uses only part of it, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

pub mod authz;
pub mod check;
pub mod echo;
pub mod envoy;
pub mod fakes;
pub mod issuer;
pub mod oidc;
pub mod process;
pub mod provider;
pub mod raw_http;
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

/// Which part of the JWT `token` (header, claims or signature) appears in `bytes`, if any. Each
/// part is matched whole: tens of characters, which random bytes such as a sealed value never
/// hold by chance, where a bare `eyJ` turns up in about one 1 KiB ciphertext in 16,000.
pub fn token_part_in(bytes: &[u8], token: &str) -> Option<&'static str> {
    token
        .split('.')
        .zip(["header", "claims", "signature"])
        .find(|(part, _)| {
            !part.is_empty() && bytes.windows(part.len()).any(|w| w == part.as_bytes())
        })
        .map(|(_, what)| what)
}
