//! Route policy: an ordered list of rules, first match wins, each matching on host, path,
//! methods and Envoy's per-route `context_extensions`, and saying `deny`, `allow_anonymous`, or
//! `require` a credential (with scopes). A default rule applies when none matches.
//!
//! Written as YAML (inline under `policy:` or in `policy.file`), compiled once into matchers;
//! the request path only reads a compiled snapshot (see `reload`).
//!
//! Rules match the request's canonical path and host (`crate::canonical`), never its raw text:
//! rule paths and hosts are brought to the same form when the policy is compiled, and a request
//! whose path or host has no canonical form is refused before any rule is consulted.
//!
//! One file (about 520 lines of code, the rest its unit tests): compiling rules and matching
//! them must agree on the canonical form, so both sit here; `explain`, `reload`, `scopes` and
//! `template` are their own files.

pub mod explain;
pub mod reload;
pub mod scopes;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::canonical::{self, TargetError};
use crate::request::AuthRequest;

pub use crate::config::policy::{
    ActionConfig, MatchConfig, PathConfig, PolicyConfig, PolicyDocument, RequireConfig, RuleConfig,
    ScopeClaim, UpstreamCredential,
};

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
    /// Whether any rule matches on host: then a request without one is refused, since it could
    /// not be told apart from a host the rules close.
    needs_host: bool,
    /// Whether any rule compares paths without regard to case.
    any_case_insensitive: bool,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Shared, so a decision can name its rule (Envoy dynamic metadata) without a copy.
    pub name: Arc<str>,
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    /// `path` holds lower-case text and is compared with the lower-cased path.
    path_case_insensitive: bool,
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

/// Compiled from canonical rule paths: `Exact` and `Template` without a trailing slash.
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

/// What rules are matched against: the request's canonical host and path, computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical host; empty when the request had none.
    pub host: String,
    /// Canonical path (`crate::canonical::canonical_path`).
    pub path: String,
}

impl Target {
    /// The canonical target of `request`, or why it has none. An empty host is kept empty
    /// here; `Policy::select_target` refuses it where host rules exist.
    pub fn of(request: &AuthRequest) -> Result<Target, TargetError> {
        let path = canonical::canonical_path(&request.path)?;
        let host = if request.host.is_empty() {
            String::new()
        } else {
            canonical::canonical_host(&request.host)?
        };
        Ok(Target { host, path })
    }
}

impl Policy {
    /// The policy when none is configured: every request needs a valid credential.
    pub fn require_all() -> Policy {
        Policy {
            rules: Vec::new(),
            default: Action::Require(Requirement::default()),
            scope_claim: ScopeClaim::Auto,
            needs_host: false,
            any_case_insensitive: false,
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
            if m.path_case_insensitive && m.path.is_none() {
                return Err(err(
                    format!("{at}.match.path_case_insensitive"),
                    "only with match.path",
                ));
            }
            compiled.push(Rule {
                name: r.name.as_str().into(),
                host: m
                    .host
                    .as_deref()
                    .map(|h| host(h, &format!("{at}.match.host")))
                    .transpose()?,
                path: m
                    .path
                    .as_ref()
                    .map(|p| path(p, m.path_case_insensitive, &format!("{at}.match.path")))
                    .transpose()?,
                path_case_insensitive: m.path_case_insensitive,
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
                    .collect::<Result<Vec<_>, _>>()
                    .map(with_head_for_get)?,
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
            needs_host: compiled.iter().any(|r| r.host.is_some()),
            any_case_insensitive: compiled.iter().any(|r| r.path_case_insensitive),
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

    /// The first rule matching `request`, or the default; an error when the request's path or
    /// host has no canonical form (refused before any rule is consulted, whatever they say).
    pub fn select(&self, request: &AuthRequest) -> Result<(Matched<'_>, &Action), TargetError> {
        let target = Target::of(request)?;
        self.select_target(&request.method, &target, &request.context)
    }

    /// `select` for a target already made canonical.
    pub fn select_target(
        &self,
        method: &str,
        target: &Target,
        context: &BTreeMap<String, String>,
    ) -> Result<(Matched<'_>, &Action), TargetError> {
        if self.needs_host && target.host.is_empty() {
            return Err(TargetError::MissingHost);
        }
        let lower = self
            .any_case_insensitive
            .then(|| target.path.to_ascii_lowercase());
        for (index, rule) in self.rules.iter().enumerate() {
            let path = match (&lower, rule.path_case_insensitive) {
                (Some(lower), true) => lower.as_str(),
                _ => target.path.as_str(),
            };
            if rule.matches(method, &target.host, path, context) {
                return Ok((
                    Matched::Rule {
                        index,
                        name: &rule.name,
                    },
                    &rule.action,
                ));
            }
        }
        Ok((Matched::Default, &self.default))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Rule {
    /// `path` is canonical (and lower-cased for a case-insensitive rule), `host` canonical.
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
        let trimmed = canonical::trim_trailing_slash(path);
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => p == trimmed,
            // `/admin/` also covers `/admin`, as a trailing slash matches alike.
            Some(PathMatch::Prefix(p)) => {
                path.starts_with(p.as_str()) || canonical::trim_trailing_slash(p) == trimmed
            }
            Some(PathMatch::Template(segments)) => {
                let mut parts = trimmed.strip_prefix('/').unwrap_or(trimmed).split('/');
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

/// A rule for GET also meets HEAD (RFC 9110 §9.3.2: HEAD is GET without the body, and servers
/// route it to the GET handler).
fn with_head_for_get(mut methods: Vec<String>) -> Vec<String> {
    if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
        methods.push("HEAD".to_owned());
    }
    methods
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
    let (wildcard, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let expected = "expected a host name or *.suffix (a leading *. only)";
    if name.contains('*') {
        return Err(err(field, expected));
    }
    let parts = canonical::host_parts(name).map_err(|_| err(field, expected))?;
    if parts.port.is_some() {
        return Err(err(
            field,
            "a host rule matches every port of the host; remove the port",
        ));
    }
    if wildcard && parts.name.starts_with('[') {
        return Err(err(field, "*. cannot precede an IP address"));
    }
    Ok(if wildcard {
        HostMatch::Suffix(format!(".{}", parts.name))
    } else {
        HostMatch::Exact(parts.name)
    })
}

/// Compiles a rule path into the form requests are compared in: canonical, and lower case for
/// a case-insensitive rule. A rule path with a query, a fragment or `;` parameters is refused
/// rather than silently cut (requests lose them before matching, so the rule would not mean
/// what it says), and so is one with no canonical form.
fn path(p: &PathConfig, case_insensitive: bool, field: &str) -> Result<PathMatch, PolicyError> {
    let (text, field) = match p {
        PathConfig::Prefix { prefix } => (prefix.as_str(), format!("{field}.prefix")),
        PathConfig::Plain(p) => (p.as_str(), field.to_owned()),
    };
    if !text.starts_with('/') {
        return Err(err(field, "expected a path starting with /"));
    }
    if text.contains(['?', '#', ';']) {
        return Err(err(
            field,
            "a rule path matches the path alone: no ?query, #fragment or ;parameters",
        ));
    }
    let fold = |s: String| {
        if case_insensitive {
            s.to_ascii_lowercase()
        } else {
            s
        }
    };
    let canon = |s: &str| {
        canonical::canonical_path(s)
            .map(fold)
            .map_err(|e| err(&field, format!("has no canonical form: {e}")))
    };
    match p {
        PathConfig::Prefix { .. } => Ok(PathMatch::Prefix(canon(text)?)),
        PathConfig::Plain(_) if !text.contains(['{', '}']) => Ok(PathMatch::Exact(
            canonical::trim_trailing_slash(&canon(text)?).to_owned(),
        )),
        PathConfig::Plain(_) => {
            let mut segments = Vec::new();
            // Empty segments (`//`, a trailing `/`) vanish, as they do from request paths.
            for seg in text[1..].split('/').filter(|s| !s.is_empty()) {
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
                } else if seg == "." || seg == ".." {
                    return Err(err(field, "a template cannot hold . or .. segments"));
                } else {
                    let one = canon(&format!("/{seg}"))?;
                    match one.strip_prefix('/') {
                        Some(s) if !s.is_empty() && !s.contains('/') => {
                            segments.push(Segment::Literal(s.to_owned()))
                        }
                        _ => {
                            return Err(err(field, format!("{seg:?} is not one path segment")));
                        }
                    }
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
            let got = match p.select(r).unwrap().0 {
                Matched::Rule { name, .. } => name,
                Matched::Default => "default",
            };
            assert_eq!(
                got, *want,
                "{} {} {} {:?}",
                r.method, r.host, r.path, r.context
            );
        }
        assert_eq!(
            p.select(&req("GET", "x", "/nowhere", &[])).unwrap().1,
            &Action::Deny
        );
    }

    const SPELLING: &str = r#"
rules:
  - name: admin
    match: {path: {prefix: /admin}}
    deny: true
  - name: docs
    match: {path: {prefix: /docs/}}
    allow_anonymous: true
  - name: order-read
    match: {methods: [GET], path: "/v1/orders/{id}"}
    require: {all_of: ["read:orders"]}
  - name: orders-create
    match: {methods: [POST], path: /v1/orders}
    require: {all_of: ["write:orders"]}
  - name: reports
    match: {path: /v1/Reports, path_case_insensitive: true}
    require: {all_of: ["read:reports"]}
  - name: internal
    match: {host: internal.example.com}
    deny: true
  - name: anything
    match: {methods: [GET, POST]}
    require: {}
default: {deny: true}
"#;

    fn rule_of(p: &Policy, method: &str, host: &str, path: &str) -> Result<String, TargetError> {
        p.select(&req(method, host, path, &[]))
            .map(|(m, _)| match m {
                Matched::Rule { name, .. } => name.to_owned(),
                Matched::Default => "default".to_owned(),
            })
    }

    /// Issue #13: every spelling of a closed or scoped route meets the same rule.
    #[test]
    fn no_spelling_dodges_a_rule() {
        let p = policy(SPELLING).unwrap();
        let cases: &[(&str, &str, &str)] = &[
            ("POST", "/v1/orders", "orders-create"),
            ("POST", "/v1/orders/", "orders-create"),
            ("POST", "//v1/orders", "orders-create"),
            ("POST", "/v1//orders//", "orders-create"),
            ("POST", "/v1/%6Frders", "orders-create"),
            ("POST", "/v1/orders;x=1", "orders-create"),
            ("POST", "/v1/orders?x=1", "orders-create"),
            ("POST", "/v1/Orders", "anything"),
            ("GET", "/v1/orders/7/", "order-read"),
            // A GET rule meets HEAD, which servers answer with the GET handler.
            ("HEAD", "/v1/orders/7", "order-read"),
            ("head", "/v1/orders/7", "order-read"),
            ("OPTIONS", "/v1/orders/7", "default"),
            ("GET", "/v1/orders/%37", "order-read"),
            ("GET", "/v1/orders//7", "order-read"),
            ("GET", "//admin/users", "admin"),
            ("GET", "/%61dmin", "admin"),
            ("GET", "/admin;jsessionid=1", "admin"),
            ("GET", "/administrator", "admin"),
            ("GET", "/docs", "docs"),
            ("GET", "/docs/", "docs"),
            ("GET", "/docs/a/b", "docs"),
            ("GET", "/docsx", "anything"),
            ("GET", "/v1/reports", "reports"),
            ("GET", "/V1/REPORTS/", "reports"),
            ("GET", "/v1/%52eports", "reports"),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                rule_of(&p, method, "api.example.com", path).as_deref(),
                Ok(*want),
                "{method} {path}"
            );
        }
        // Dot segments in any spelling are refused before any rule: upstreams disagree on them.
        for path in [
            "/v1/./orders",
            "/v1/x/../orders",
            "/v1/orders/.",
            "/./admin",
            "/x/%2e%2e/admin",
            "/x/..;/admin",
            "/admin/.%2e;/healthz",
        ] {
            assert_eq!(
                rule_of(&p, "POST", "api.example.com", path),
                Err(TargetError::DotSegment),
                "{path}"
            );
        }
        for host in [
            "internal.example.com",
            "INTERNAL.example.com",
            "internal.example.com.",
            "internal.example.com.:443",
            "internal.example.com:8080",
        ] {
            assert_eq!(
                rule_of(&p, "GET", host, "/").as_deref(),
                Ok("internal"),
                "{host}"
            );
        }
        for (host, err) in [
            ("", TargetError::MissingHost),
            ("internal.example.com..", TargetError::InvalidHost),
            ("internal.example.com%2e", TargetError::InvalidHost),
            ("internal.example.com/x", TargetError::InvalidHost),
        ] {
            assert_eq!(rule_of(&p, "GET", host, "/"), Err(err), "{host:?}");
        }
        // Refused before any rule, even on a route every rule would open.
        for path in [
            "/docs/%2e%2e/%2e%2e/admin",
            "/docs/..%2fadmin",
            "/docs\\..\\admin",
        ] {
            assert!(rule_of(&p, "GET", "h", path).is_err(), "{path}");
        }
    }

    #[test]
    fn an_empty_host_is_refused_only_where_host_rules_exist() {
        let p = policy(RULES).unwrap();
        assert!(rule_of(&p, "GET", "", "/healthz").is_err());
        let no_hosts = policy(
            "rules: [{name: h, match: {path: /h}, allow_anonymous: true}]\ndefault: {deny: true}",
        )
        .unwrap();
        assert_eq!(rule_of(&no_hosts, "GET", "", "/h").as_deref(), Ok("h"));
        assert_eq!(
            rule_of(&no_hosts, "GET", "", "/h/../../x"),
            Err(TargetError::DotSegment)
        );
    }

    #[test]
    fn rule_paths_and_hosts_are_canonicalized_at_compile_time() {
        let p = policy(
            r#"
rules:
  - {name: a, match: {path: "//v1/%61//"}, deny: true}
  - {name: b, match: {path: {prefix: "//b/"}}, deny: true}
  - {name: c, match: {path: "/c/%7bid%7D/{id}/"}, deny: true}
  - {name: d, match: {host: "API.Example.COM."}, deny: true}
  - {name: e, match: {host: "*.Example.ORG."}, deny: true}
  - {name: f, match: {host: "[0::1]"}, deny: true}
default: {require: {}}
"#,
        )
        .unwrap();
        let cases = [
            ("h", "/v1/a", "a"),
            ("h", "/b", "b"),
            ("h", "/b/x", "b"),
            ("h", "/c/%7Bid%7D/9", "c"),
            ("api.example.com", "/", "d"),
            ("x.example.org:1", "/", "e"),
            ("example.org", "/", "default"),
            ("[::1]:80", "/", "f"),
        ];
        for (host, path, want) in cases {
            assert_eq!(
                rule_of(&p, "GET", host, path).as_deref(),
                Ok(want),
                "{host} {path}"
            );
        }
        let bad = [
            ("{path: '/a/../../b'}", "policy.rules[0].match.path"),
            ("{path: '/a/./b'}", "policy.rules[0].match.path"),
            (
                "{path: {prefix: '/x/../b/'}}",
                "policy.rules[0].match.path.prefix",
            ),
            ("{path: '/a%2Fb'}", "policy.rules[0].match.path"),
            ("{path: '/a?x=1'}", "policy.rules[0].match.path"),
            ("{path: '/a;v=1'}", "policy.rules[0].match.path"),
            (
                "{path: {prefix: '/a#x'}}",
                "policy.rules[0].match.path.prefix",
            ),
            (
                "{path: {prefix: '/%zz'}}",
                "policy.rules[0].match.path.prefix",
            ),
            ("{path: '/a/../{id}'}", "policy.rules[0].match.path"),
            ("{path: '/a/%2e/{id}'}", "policy.rules[0].match.path"),
            ("{host: 'a.example.com:443'}", "policy.rules[0].match.host"),
            ("{host: 'a.*.com'}", "policy.rules[0].match.host"),
            ("{host: '*.[::1]'}", "policy.rules[0].match.host"),
            ("{host: 'a..com'}", "policy.rules[0].match.host"),
            ("{host: ''}", "policy.rules[0].match.host"),
            (
                "{path_case_insensitive: true}",
                "policy.rules[0].match.path_case_insensitive",
            ),
        ];
        for (m, field) in bad {
            let yaml = format!("rules: [{{name: a, deny: true, match: {m}}}]");
            match policy(&yaml) {
                Err(e) => assert_eq!(e.field, field, "{yaml}: {e}"),
                Ok(_) => panic!("{yaml} accepted"),
            }
        }
    }

    #[test]
    fn requirements_use_scope_semantics() {
        let p = policy(RULES).unwrap();
        let Action::Require(create) = p.select(&req("POST", "x", "/v1/orders", &[])).unwrap().1
        else {
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
            p.select(&req("GET", "x", "/", &[])).unwrap().1,
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

#[cfg(test)]
mod properties {
    use super::tests_support::*;
    use proptest::prelude::*;

    proptest! {
        /// A rule matches a path exactly when it matches the path's canonical form, and a path
        /// without one is refused whatever the rules say.
        #[test]
        fn a_rule_matches_a_path_as_it_matches_its_canonical_form(
            raw in "/?[/.;%aAdDmMiInN2eEfF5cC3~?]{0,24}",
            method in prop_oneof![Just("GET"), Just("POST")],
        ) {
            let p = spelling_policy();
            let selected = |path: &str| {
                p.select(&request(method, path)).map(|(m, _)| m)
            };
            match crate::canonical::canonical_path(&raw) {
                Ok(canonical) => prop_assert_eq!(selected(&raw), selected(&canonical)),
                Err(e) => prop_assert_eq!(selected(&raw), Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub fn spelling_policy() -> Policy {
        let yaml = "rules:
  - {name: admin, match: {path: {prefix: /admin}}, deny: true}
  - {name: docs, match: {path: {prefix: /aa/}}, allow_anonymous: true}
  - {name: tpl, match: {path: '/a/{x}/d'}, require: {}}
  - {name: exact, match: {methods: [POST], path: /e/ddd}, require: {}}
  - {name: ci, match: {path: /Mi/n, path_case_insensitive: true}, require: {}}
default: {deny: true}
";
        let doc: PolicyDocument = serde_yaml_ng::from_str(yaml).unwrap();
        Policy::compile(
            &doc.rules,
            doc.default.as_ref(),
            ScopeClaim::Auto,
            "",
            &["default".to_owned()],
        )
        .unwrap()
    }

    pub fn request(method: &str, path: &str) -> AuthRequest {
        AuthRequest {
            method: method.into(),
            host: "api.example.com".into(),
            path: path.into(),
            ..Default::default()
        }
    }
}
