//! Route policy: an ordered list of rules, first match wins, each matching on host, path,
//! methods and Envoy's per-route `context_extensions`, and saying `deny`, `allow_anonymous`, or
//! `require` a credential (with scopes). A default rule applies when none matches.
//!
//! Written as YAML (inline under `policy:` or in `policy.file`), compiled once into matchers;
//! the request path only reads a compiled snapshot (see `reload`).

pub mod explain;
pub mod reload;
pub mod scopes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::request::AuthRequest;
pub use scopes::ScopeClaim;

/// `policy:` in the main config.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A separate policy file (`rules` and `default`), reloaded when it changes and on SIGHUP.
    pub file: Option<PathBuf>,
    /// Inline rules (only when no `file` is given).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What applies when no rule matches (inline only); default: require a valid credential.
    pub default: Option<ActionConfig>,
    /// Which claim carries the token's scopes: `auto` (`scope`, else `scp`), `scope` or `scp`.
    #[serde(default)]
    pub scope_claim: ScopeClaim,
    /// How often `file` is checked for changes.
    #[serde(default = "default_reload_interval", with = "crate::config::duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(2)
}

/// The content of `policy.file`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    pub default: Option<ActionConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown by `policy explain` and in logs.
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub deny: bool,
    #[serde(default)]
    pub allow_anonymous: bool,
    pub require: Option<RequireConfig>,
    /// What the upstream gets in place of the caller's credential: `strip` (nothing, the default)
    /// or `bearer` (`Authorization: Bearer <access token>`, for upstreams that verify it too).
    #[serde(default)]
    pub upstream_credential: UpstreamCredential,
    /// Which identity provider verifies credentials on this route (a name from `providers`, or
    /// `default`); unset: Envoy's `context_extensions` `provider`, else `default`.
    pub provider: Option<String>,
}

/// The action of the default rule.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    #[serde(default)]
    pub deny: bool,
    #[serde(default)]
    pub allow_anonymous: bool,
    pub require: Option<RequireConfig>,
    #[serde(default)]
    pub upstream_credential: UpstreamCredential,
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host (port and letter case ignored), or `*.suffix`.
    pub host: Option<String>,
    /// Exact path, or a template such as `/v1/orders/{id}`; or `{prefix: /v1/}`.
    pub path: Option<PathConfig>,
    /// Methods, any of (letter case ignored); empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Envoy `context_extensions` that must all be present with these values.
    #[serde(default)]
    pub context: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PathConfig {
    /// `/exact` or `/template/{param}/…`.
    Plain(String),
    Prefix {
        prefix: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequireConfig {
    /// Every one of these scopes.
    #[serde(default)]
    pub all_of: Vec<String>,
    /// At least one of these scopes.
    #[serde(default)]
    pub any_of: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamCredential {
    #[default]
    Strip,
    Bearer,
}

/// A policy error, naming the rule field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    pub field: String,
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A compiled policy: what the request path consults.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Action,
    pub scope_claim: ScopeClaim,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Vec<String>,
    context: Vec<(String, String)>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Deny,
    AllowAnonymous,
    Require(Requirement),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirement {
    pub all_of: Vec<String>,
    pub any_of: Vec<String>,
    pub upstream: UpstreamCredential,
    /// The provider the rule names, if any.
    pub provider: Option<String>,
}

impl Requirement {
    /// Whether `granted` meets the requirement.
    pub fn met_by<S: AsRef<str>>(&self, granted: &[S]) -> bool {
        self.all_of.iter().all(|r| scopes::granted(granted, r))
            && (self.any_of.is_empty() || self.any_of.iter().any(|r| scopes::granted(granted, r)))
    }

    /// The `scope` attribute of an `insufficient_scope` challenge (RFC 6750 §3).
    pub fn describe(&self) -> String {
        let mut parts = self.all_of.clone();
        parts.extend(self.any_of.iter().cloned());
        parts.join(" ")
    }
}

#[derive(Debug, Clone)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` → `.example.com`
    Suffix(String),
}

#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param,
}

/// Which rule decided: its position and name, or the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched<'a> {
    Rule { index: usize, name: &'a str },
    Default,
}

impl Policy {
    /// The policy when none is configured: every request needs a valid credential.
    pub fn require_all() -> Policy {
        Policy {
            rules: Vec::new(),
            default: Action::Require(Requirement::default()),
            scope_claim: ScopeClaim::Auto,
        }
    }

    pub fn compile(
        rules: &[RuleConfig],
        default: Option<&ActionConfig>,
        scope_claim: ScopeClaim,
        field_prefix: &str,
        providers: &[String],
    ) -> Result<Policy, PolicyError> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut names = std::collections::HashSet::new();
        for (i, r) in rules.iter().enumerate() {
            let at = format!("{field_prefix}rules[{i}]");
            if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    format!("{at}.name"),
                    "expected a non-empty name without spaces",
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(err(
                    format!("{at}.name"),
                    format!("{:?} is used twice", r.name),
                ));
            }
            let action = action(
                r.deny,
                r.allow_anonymous,
                r.require.as_ref(),
                r.upstream_credential,
                r.provider.as_deref(),
                providers,
                &at,
            )?;
            let m = &r.matcher;
            compiled.push(Rule {
                name: r.name.clone(),
                host: m
                    .host
                    .as_deref()
                    .map(|h| host(h, &format!("{at}.match.host")))
                    .transpose()?,
                path: m
                    .path
                    .as_ref()
                    .map(|p| path(p, &format!("{at}.match.path")))
                    .transpose()?,
                methods: m
                    .methods
                    .iter()
                    .enumerate()
                    .map(|(j, meth)| {
                        if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_alphabetic()) {
                            Err(err(
                                format!("{at}.match.methods[{j}]"),
                                "expected an HTTP method",
                            ))
                        } else {
                            Ok(meth.to_ascii_uppercase())
                        }
                    })
                    .collect::<Result<_, _>>()?,
                context: m
                    .context
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                action,
            });
        }
        let default = match default {
            Some(d) => action(
                d.deny,
                d.allow_anonymous,
                d.require.as_ref(),
                d.upstream_credential,
                d.provider.as_deref(),
                providers,
                &format!("{field_prefix}default"),
            )?,
            None => Action::Require(Requirement::default()),
        };
        Ok(Policy {
            rules: compiled,
            default,
            scope_claim,
        })
    }

    /// Whether any rule (or the default) sends the access token upstream: only then do cached
    /// identities keep it.
    pub fn forwards_tokens(&self) -> bool {
        self.rules
            .iter()
            .map(|r| &r.action)
            .chain([&self.default])
            .any(|a| matches!(a, Action::Require(r) if r.upstream == UpstreamCredential::Bearer))
    }

    /// The first rule matching `request`, or the default.
    pub fn select(&self, request: &AuthRequest) -> (Matched<'_>, &Action) {
        let path = request.path.split(['?', '#']).next().unwrap_or("");
        let host = normalize_host(&request.host);
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.matches(&request.method, &host, path, &request.context) {
                return (
                    Matched::Rule {
                        index,
                        name: &rule.name,
                    },
                    &rule.action,
                );
            }
        }
        (Matched::Default, &self.default)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Rule {
    fn matches(
        &self,
        method: &str,
        host: &str,
        path: &str,
        context: &BTreeMap<String, String>,
    ) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        match &self.host {
            Some(HostMatch::Exact(h)) if h != host => return false,
            Some(HostMatch::Suffix(s)) if !(host.ends_with(s.as_str()) && host.len() > s.len()) => {
                return false;
            }
            _ => {}
        }
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => p == path,
            Some(PathMatch::Prefix(p)) => path.starts_with(p.as_str()),
            Some(PathMatch::Template(segments)) => {
                let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
                let all = segments.iter().all(|s| match (s, parts.next()) {
                    (Segment::Literal(l), Some(p)) => l == p,
                    (Segment::Param, Some(p)) => !p.is_empty(),
                    (_, None) => false,
                });
                all && parts.next().is_none()
            }
        };
        path_ok
            && self
                .context
                .iter()
                .all(|(k, v)| context.get(k).is_some_and(|got| got == v))
    }
}

/// Lower-case, without a port; IPv6 literals keep their brackets.
fn normalize_host(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    without_port.to_ascii_lowercase()
}

fn action(
    deny: bool,
    anonymous: bool,
    require: Option<&RequireConfig>,
    upstream: UpstreamCredential,
    provider: Option<&str>,
    providers: &[String],
    at: &str,
) -> Result<Action, PolicyError> {
    if let Some(name) = provider {
        if require.is_none() {
            return Err(err(
                format!("{at}.provider"),
                "only for rules that require a credential",
            ));
        }
        if !providers.iter().any(|p| p == name) {
            return Err(err(
                format!("{at}.provider"),
                format!(
                    "{name:?} is not a configured provider ({})",
                    providers.join(", ")
                ),
            ));
        }
    }
    match (deny, anonymous, require) {
        (true, false, None) => Ok(Action::Deny),
        (false, true, None) => Ok(Action::AllowAnonymous),
        (false, false, Some(r)) => {
            for (list, name) in [(&r.all_of, "all_of"), (&r.any_of, "any_of")] {
                for (j, s) in list.iter().enumerate() {
                    if !scopes::is_valid(s) {
                        return Err(err(
                            format!("{at}.require.{name}[{j}]"),
                            format!("{s:?} is not a scope (action:resource, or a bare word)"),
                        ));
                    }
                }
            }
            Ok(Action::Require(Requirement {
                all_of: r.all_of.clone(),
                any_of: r.any_of.clone(),
                upstream,
                provider: provider.map(str::to_owned),
            }))
        }
        (false, false, None) => Err(err(
            at,
            "expected one action: require: {…}, allow_anonymous: true, or deny: true",
        )),
        _ => Err(err(
            at,
            "expected exactly one action of require, allow_anonymous and deny",
        )),
    }
}

fn host(h: &str, field: &str) -> Result<HostMatch, PolicyError> {
    let h = h.to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    };
    if let Some(suffix) = h.strip_prefix("*.") {
        if valid(suffix) {
            return Ok(HostMatch::Suffix(format!(".{suffix}")));
        }
    } else if valid(&h) {
        return Ok(HostMatch::Exact(h));
    }
    Err(err(field, "expected a host name or *.suffix"))
}

fn path(p: &PathConfig, field: &str) -> Result<PathMatch, PolicyError> {
    match p {
        PathConfig::Prefix { prefix } => {
            if !prefix.starts_with('/') {
                return Err(err(
                    format!("{field}.prefix"),
                    "expected a path starting with /",
                ));
            }
            Ok(PathMatch::Prefix(prefix.clone()))
        }
        PathConfig::Plain(p) => {
            if !p.starts_with('/') {
                return Err(err(field, "expected a path starting with /"));
            }
            if !p.contains(['{', '}']) {
                return Ok(PathMatch::Exact(p.clone()));
            }
            let mut segments = Vec::new();
            for seg in p[1..].split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if name.is_empty() || name.contains(['{', '}']) {
                        return Err(err(field, format!("bad template segment {seg:?}")));
                    }
                    segments.push(Segment::Param);
                } else if seg.contains(['{', '}']) {
                    return Err(err(
                        field,
                        format!("a parameter must be a whole segment: {seg:?}"),
                    ));
                } else {
                    segments.push(Segment::Literal(seg.to_owned()));
                }
            }
            Ok(PathMatch::Template(segments))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<Policy, PolicyError> {
        let doc: PolicyDocument = serde_yaml_ng::from_str(yaml).unwrap();
        Policy::compile(
            &doc.rules,
            doc.default.as_ref(),
            ScopeClaim::Auto,
            "policy.",
            &["default".to_owned(), "internal".to_owned()],
        )
    }

    fn req(method: &str, host: &str, path: &str, ctx: &[(&str, &str)]) -> AuthRequest {
        AuthRequest {
            method: method.into(),
            host: host.into(),
            path: path.into(),
            context: ctx
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    const RULES: &str = r#"
rules:
  - name: health
    match: {path: /healthz}
    allow_anonymous: true
  - name: public
    match: {path: {prefix: /public/}}
    allow_anonymous: true
  - name: admin-block
    match: {path: {prefix: /admin}}
    deny: true
  - name: orders-write-ctx
    match: {context: {policy: orders-write}}
    require: {all_of: ["write:orders"]}
  - name: order-read
    match: {methods: [get, HEAD], path: "/v1/orders/{id}"}
    require: {all_of: ["read:orders"]}
  - name: orders-create
    match: {methods: [POST], path: /v1/orders}
    require: {all_of: ["write:orders"], any_of: ["tier:gold", "tier:silver"]}
  - name: internal-host
    match: {host: "*.internal.example.com"}
    require: {}
    upstream_credential: bearer
  - name: exact-host
    match: {host: api.example.com, path: /v2/ping}
    require: {}
default: {deny: true}
"#;

    #[test]
    fn first_match_wins_and_each_matcher_works() {
        let p = policy(RULES).unwrap();
        let cases: &[(AuthRequest, &str)] = &[
            (req("GET", "x", "/healthz", &[]), "health"),
            (req("GET", "x", "/healthz?probe=1", &[]), "health"),
            (req("GET", "x", "/healthz/extra", &[]), "default"),
            (req("GET", "x", "/public/a/b", &[]), "public"),
            (req("GET", "x", "/admin", &[]), "admin-block"),
            (req("GET", "x", "/administrator", &[]), "admin-block"),
            // context_extensions pick a rule without repeating paths; earlier rules still win.
            (
                req("DELETE", "x", "/v9/anything", &[("policy", "orders-write")]),
                "orders-write-ctx",
            ),
            (
                req("GET", "x", "/public/x", &[("policy", "orders-write")]),
                "public",
            ),
            (
                req("GET", "x", "/v1/orders/7", &[("policy", "other")]),
                "order-read",
            ),
            (req("head", "x", "/v1/orders/7", &[]), "order-read"),
            (req("GET", "x", "/v1/orders/7/items", &[]), "default"),
            (req("GET", "x", "/v1/orders/", &[]), "default"),
            (req("POST", "x", "/v1/orders", &[]), "orders-create"),
            (req("PUT", "x", "/v1/orders", &[]), "default"),
            (
                req("GET", "svc.internal.example.com", "/", &[]),
                "internal-host",
            ),
            (
                req("GET", "SVC.Internal.Example.com:8443", "/", &[]),
                "internal-host",
            ),
            (req("GET", "internal.example.com", "/", &[]), "default"),
            (
                req("GET", "api.example.com:443", "/v2/ping", &[]),
                "exact-host",
            ),
            (
                req("GET", "evil-api.example.com", "/v2/ping", &[]),
                "default",
            ),
        ];
        for (r, want) in cases {
            let got = match p.select(r).0 {
                Matched::Rule { name, .. } => name,
                Matched::Default => "default",
            };
            assert_eq!(
                got, *want,
                "{} {} {} {:?}",
                r.method, r.host, r.path, r.context
            );
        }
        assert_eq!(p.select(&req("GET", "x", "/nowhere", &[])).1, &Action::Deny);
    }

    #[test]
    fn requirements_use_scope_semantics() {
        let p = policy(RULES).unwrap();
        let Action::Require(create) = p.select(&req("POST", "x", "/v1/orders", &[])).1 else {
            panic!()
        };
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(create.met_by(&s(&["write:orders", "tier:gold"])));
        assert!(create.met_by(&s(&["write:*", "tier:silver"])));
        assert!(!create.met_by(&s(&["write:orders"])), "any_of unmet");
        assert!(
            !create.met_by(&s(&["read:orders", "tier:gold"])),
            "all_of unmet"
        );
        assert!(
            !create.met_by(&s(&["*", "tier:gold"])),
            "bare * is not a wildcard"
        );
        assert_eq!(create.describe(), "write:orders tier:gold tier:silver");
        assert!(Requirement::default().met_by::<&str>(&[]));
    }

    #[test]
    fn no_policy_requires_a_credential_everywhere() {
        let p = Policy::require_all();
        assert_eq!(
            p.select(&req("GET", "x", "/", &[])).1,
            &Action::Require(Requirement::default())
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases = [
            ("rules: [{name: a, match: {path: /x}}]", "policy.rules[0]"),
            (
                "rules: [{name: a, deny: true, allow_anonymous: true}]",
                "policy.rules[0]",
            ),
            (
                "rules: [{name: a, require: {all_of: ['read:']}}]",
                "policy.rules[0].require.all_of[0]",
            ),
            (
                "rules: [{name: a, require: {any_of: ['a b']}}]",
                "policy.rules[0].require.any_of[0]",
            ),
            (
                "rules: [{name: a, deny: true, match: {path: x}}]",
                "policy.rules[0].match.path",
            ),
            (
                "rules: [{name: a, deny: true, match: {path: '/a/{x'}}]",
                "policy.rules[0].match.path",
            ),
            (
                "rules: [{name: a, deny: true, match: {path: '/a/x{y}'}}]",
                "policy.rules[0].match.path",
            ),
            (
                "rules: [{name: a, deny: true, match: {path: {prefix: x}}}]",
                "policy.rules[0].match.path.prefix",
            ),
            (
                "rules: [{name: a, deny: true, match: {host: 'a b'}}]",
                "policy.rules[0].match.host",
            ),
            (
                "rules: [{name: a, deny: true, match: {methods: ['G T']}}]",
                "policy.rules[0].match.methods[0]",
            ),
            (
                "rules: [{name: a, deny: true}, {name: a, deny: true}]",
                "policy.rules[1].name",
            ),
            ("rules: [{name: '', deny: true}]", "policy.rules[0].name"),
            ("default: {}", "policy.default"),
            (
                "rules: [{name: a, require: {}, provider: nope}]",
                "policy.rules[0].provider",
            ),
            (
                "rules: [{name: a, deny: true, provider: internal}]",
                "policy.rules[0].provider",
            ),
        ];
        for (yaml, field) in cases {
            match policy(yaml) {
                Err(e) => assert_eq!(e.field, field, "{yaml}: {e}"),
                Ok(_) => panic!("{yaml} accepted"),
            }
        }
    }
}
