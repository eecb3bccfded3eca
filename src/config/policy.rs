//! `policy`: route rules, inline or in `policy.file` (whose content is a `PolicyDocument`).
//! Compiled into matchers, and checked rule by rule naming the field, by `crate::policy`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `policy:` in the main config.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A separate policy file (`rules` and `default`), reloaded when it changes and on SIGHUP.
    pub file: Option<PathBuf>,
    /// Inline rules (only when no `file` is given).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What applies when no rule matches (inline only). Required with inline `rules`; without
    /// rules, unset means: require a valid credential.
    pub default: Option<ActionConfig>,
    /// Which claim carries the token's scopes: `auto` (`scope`, else `scp`), `scope` or `scp`.
    #[serde(default)]
    pub scope_claim: ScopeClaim,
    /// How often `file` is checked for changes.
    #[serde(default = "default_reload_interval", with = "super::duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(2)
}

/// The content of `policy.file`. `default` must be stated: a file cut short, or emptied, must
/// never read as a valid policy (see `reload`).
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
    /// Exact host, or `*.suffix`; compared with the request's canonical host (lower case, no
    /// port, no trailing dot).
    pub host: Option<String>,
    /// Exact path, or a template such as `/v1/orders/{id}`; or `{prefix: /v1/}`. Compared with
    /// the request's canonical path; a trailing slash matches alike.
    pub path: Option<PathConfig>,
    /// Compare `path` without regard to letter case (ASCII). Off by default: `/Admin` and
    /// `/admin` are different paths unless the rule says otherwise.
    #[serde(default)]
    pub path_case_insensitive: bool,
    /// Methods, any of (letter case ignored); empty: any. `GET` covers `HEAD` too: servers and
    /// frameworks answer HEAD with their GET handler, so a GET rule must meet it.
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

/// Which claim carries the token's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeClaim {
    /// `scope` if present, else `scp`.
    #[default]
    Auto,
    Scope,
    Scp,
}
