//! A request's host and path as anyone reaching the gRPC port can send them (first line: the
//! host, the rest: the path): canonicalizing never panics and is idempotent, and a policy picks
//! the same rule — or refuses alike — for the raw path and for its canonical form. Also feeds the
//! whole input to the policy-file parser, which must refuse or compile, never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use m2m_authz::canonical::{canonical_host, canonical_path};
use m2m_authz::policy::reload::parse;
use m2m_authz::policy::{Policy, ScopeClaim};
use m2m_authz::request::AuthRequest;

const POLICY: &str = r#"
rules:
  - {name: admin, match: {path: {prefix: /admin}}, deny: true}
  - {name: docs, match: {path: {prefix: /docs/}}, allow_anonymous: true}
  - {name: read, match: {methods: [GET], path: "/v1/orders/{id}"}, require: {all_of: ["read:orders"]}}
  - {name: create, match: {path: /v1/orders}, require: {all_of: ["write:orders"]}}
  - {name: reports, match: {path: /v1/Reports, path_case_insensitive: true}, require: {}}
  - {name: internal, match: {host: "*.internal.example.com"}, deny: true}
default: {require: {}}
"#;

static COMPILED: LazyLock<Policy> = LazyLock::new(|| {
    parse(POLICY, ScopeClaim::Auto, &["default".to_owned()]).expect("the fuzz policy compiles")
});

fn request(host: &str, path: &str) -> AuthRequest {
    AuthRequest {
        method: "GET".into(),
        host: host.into(),
        path: path.into(),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = text.split_once('\n').unwrap_or(("api.example.com", text));
    if let Ok(canonical) = canonical_path(path) {
        assert_eq!(canonical_path(&canonical).as_deref(), Ok(canonical.as_str()));
        let raw = COMPILED.select(&request(host, path)).map(|(m, _)| m);
        let same = COMPILED.select(&request(host, &canonical)).map(|(m, _)| m);
        assert_eq!(raw, same, "{path:?} vs {canonical:?}");
    } else {
        assert!(COMPILED.select(&request(host, path)).is_err());
    }
    if let Ok(canonical) = canonical_host(host) {
        assert_eq!(canonical_host(&canonical).as_deref(), Ok(canonical.as_str()));
    }
    let _ = parse(text, ScopeClaim::Auto, &["default".to_owned()]);
});
