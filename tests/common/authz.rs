//! The sidecar's core built in-process from YAML, as `serve` builds it: for tests that call the
//! `Authorizer` (or the `ExtAuthz` adapter) directly, without a process or sockets of its own.

use m2m_authz::authorizer::{Authorizer, Parts, Unavailable};
use m2m_authz::clock::SharedClock;
use m2m_authz::config::Config;
use m2m_authz::decision::Decision;

/// The config from `yaml`; panics with the error and the YAML.
pub fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The `Authorizer` for `config`, with its key set loaded (as `serve` waits for it before
/// answering).
pub async fn authorizer_for(config: &Config) -> Authorizer {
    let a = Authorizer::new(config).unwrap_or_else(|e| panic!("authorizer: {e}"));
    a.provider()
        .jwks()
        .refresh()
        .await
        .expect("initial JWKS load");
    a
}

/// The `Authorizer` for the config in `yaml`, with its key set loaded.
pub async fn authorizer(yaml: &str) -> Authorizer {
    authorizer_for(&config(yaml)).await
}

/// Like [`authorizer`], its providers still reached over HTTP, but reading time from `clock`:
/// a test moves time forward with `FakeClock::advance` instead of sleeping.
pub async fn authorizer_on_clock(yaml: &str, clock: SharedClock) -> Authorizer {
    let parts = Parts::default().clock(clock);
    let a =
        Authorizer::with_parts(&config(yaml), parts).unwrap_or_else(|e| panic!("authorizer: {e}"));
    a.provider()
        .jwks()
        .refresh()
        .await
        .expect("initial JWKS load");
    a
}

/// A check's outcome as the HTTP status Envoy would answer: 200 allowed, the denial's status,
/// or 503 when the sidecar is unavailable (`failure_mode_allow: false`).
pub fn status(r: &Result<Decision, Unavailable>) -> u16 {
    match r {
        Ok(Decision::Allow(_)) => 200,
        Ok(Decision::Deny(d)) => d.status,
        Err(_) => 503,
    }
}
