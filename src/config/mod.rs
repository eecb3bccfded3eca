//! The sidecar's one typed configuration *schema*: parsed from YAML and checked whole — types,
//! defaults, bounds and required combinations — with every error naming the field path and what
//! was expected. One file per section; this layer imports no other part of the sidecar (only the
//! leaves `defaults` and `features`, and the embedded issuer's own schema).
//!
//! Each module compiles its runtime settings from its section (`cache::CacheSettings::from`,
//! `identity::IdentityMap::new`, `policy::reload::LivePolicy::from_config`, ...), and
//! `crate::settings` compiles them all, before any port opens.

pub mod cache;
pub mod credentials;
pub mod duration;
pub mod identity;
pub mod listen;
pub mod metadata;
pub mod policy;
pub mod provider;
pub mod runtime;
#[cfg(feature = "shared-cache")]
pub mod shared_cache;
mod text;
pub mod token;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

pub use cache::{CacheConfig, MAX_CREDENTIAL_AGE_RANGE, MAX_STALE_IF_ERROR, SharedCacheConfig};
pub use credentials::{CredentialsConfig, HeaderPairConfig};
pub use identity::IdentityConfig;
pub use listen::{GrpcTlsConfig, ListenAddr, ListenConfig, parse_admin_listen, parse_listen};
pub use metadata::{DynamicMetadataConfig, MetadataKey, MetadataKeys};
pub use policy::PolicyConfig;
pub use provider::{
    DiscoveryPlan, EmbeddedConfig, IntrospectionAuth, IntrospectionConfig, ProviderConfig,
    ProviderKind, ResolvedIntrospection, ResolvedProvider, TokenFormat, well_known_urls,
};
pub use runtime::RuntimeConfig;
use text::is_visible;
pub use token::{
    Algorithm, ClientAuth, JWKS_MIN_REFETCH_RANGE, MAX_LEEWAY, MAX_TOKEN_AGE_RANGE, OneOrMany,
};

use crate::defaults;

/// A configuration problem, always naming the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is said in the message, not chained as a source, so `{:#}` says it once.
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl ConfigError {
    /// An error about `field`.
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

/// `e`, about the provider section, renamed to the path of the provider called `name`.
fn named(name: &str, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid { field, problem } if name != DEFAULT_PROVIDER => {
            ConfigError::Invalid {
                field: field.replacen("provider", &format!("providers.{name}"), 1),
                problem,
            }
        }
        other => other,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    pub provider: ProviderConfig,
    /// More identity providers by name, chosen per policy rule (`provider: NAME`) or by Envoy's
    /// `context_extensions` (`provider: NAME`); `provider` above is the one named `default`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Route rules; none: every request needs a valid credential.
    pub policy: Option<PolicyConfig>,
    /// The `realm` of every `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The async runtime's worker threads (`crate::runtime`).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The keys of the gRPC Check answer's dynamic metadata; absent: all of them.
    #[serde(default)]
    pub dynamic_metadata: DynamicMetadataConfig,
    /// The folder of the config file, for relative paths in it.
    #[serde(skip)]
    pub dir: Option<std::path::PathBuf>,
}

/// The name of the provider configured under `provider`.
pub const DEFAULT_PROVIDER: &str = "default";

fn default_realm() -> String {
    defaults::REALM.to_owned()
}

impl Config {
    /// Reads, parses and validates a config file. One that holds the embedded issuer's project
    /// secret (the one in effect) is refused when other users can read or write it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let unreadable = |error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        };
        // With the issuer compiled in, the metadata of the very file read, to judge who else can
        // read the project secret it may hold.
        #[cfg(feature = "issuer")]
        let (text, meta) = crate::issuer::private_files::read_config(path).map_err(unreadable)?;
        #[cfg(not(feature = "issuer"))]
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        let config = Config::from_yaml_in(&text, path.parent())?;
        #[cfg(feature = "issuer")]
        if let Some(embedded) = &config.provider.embedded {
            embedded
                .check_file_access_naming(path, &meta)
                .map_err(|(field, e)| {
                    ConfigError::invalid(&format!("provider.embedded.{field}"), e.to_string())
                })?;
        }
        Ok(config)
    }

    /// Parses and validates YAML text; the error names the field path.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_in(text, None)
    }

    /// A relative `provider.embedded.database` is taken relative to `dir` (the config file's
    /// folder), as `m2m-authz issuer` does.
    fn from_yaml_in(text: &str, dir: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = crate::yaml::from_str(text).map_err(|(field, problem)| {
            ConfigError::invalid(field.as_deref().unwrap_or("config"), problem)
        })?;
        let mut config = config;
        config.dir = dir.map(Path::to_path_buf);
        if let Some(dir) = dir {
            config.listen.resolve_paths_in(dir);
            config.provider.resolve_paths_in(dir);
            for p in config.providers.values_mut() {
                p.resolve_paths_in(dir);
            }
            #[cfg(feature = "shared-cache")]
            if let Some(shared) = config.cache.shared.as_mut() {
                shared.resolve_paths_in(dir);
            }
        }
        #[cfg(feature = "issuer")]
        if let Some(embedded) = config.provider.embedded.as_mut() {
            if let Some(dir) = dir {
                embedded.resolve_paths_in(dir);
            }
            embedded.apply_env();
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: required combinations, header syntax, ranges. What
    /// needs a module's compiler (claim paths, the policy) is checked by
    /// `crate::settings::Settings::compile`, before any port opens all the same.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.validate()?;
        self.provider.validate()?;
        for (name, p) in &self.providers {
            let at = format!("providers.{name}");
            if name == DEFAULT_PROVIDER
                || name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::invalid(
                    &at,
                    "expected a name of letters, digits, '-' or '_', other than \"default\"",
                ));
            }
            if p.kind == ProviderKind::Embedded {
                return Err(ConfigError::invalid(
                    &format!("{at}.kind"),
                    "embedded is only for provider.kind",
                ));
            }
            p.validate().map_err(|e| named(name, e))?;
        }
        self.credentials.validate()?;
        self.identity.validate(&self.credentials)?;
        self.cache.validate()?;
        self.runtime.validate()?;
        self.dynamic_metadata.validate()?;
        if self.realm.is_empty() || self.realm.contains(['"', '\\']) || !is_visible(&self.realm) {
            return Err(ConfigError::invalid(
                "realm",
                "expected printable text without quotes or backslashes",
            ));
        }
        Ok(())
    }

    /// Every provider by name, `default` first.
    pub fn named_providers(&self) -> impl Iterator<Item = (&str, &ProviderConfig)> {
        std::iter::once((DEFAULT_PROVIDER, &self.provider))
            .chain(self.providers.iter().map(|(n, p)| (n.as_str(), p)))
    }

    /// Every provider by name, `default` first, resolved from its profile; an error names the
    /// provider's own path (`providers.NAME.…`).
    pub fn resolved_providers(&self) -> Result<Vec<(String, ResolvedProvider)>, ConfigError> {
        self.named_providers()
            .map(|(name, p)| {
                p.resolve()
                    .map(|r| (name.to_owned(), r))
                    .map_err(|e| named(name, e))
            })
            .collect()
    }

    /// Every provider's name: `default` first, then those under `providers`.
    pub fn provider_names(&self) -> Vec<String> {
        std::iter::once(DEFAULT_PROVIDER.to_owned())
            .chain(self.providers.keys().cloned())
            .collect()
    }

    /// One line warning of provider URLs that use plain `http://` to another host, naming each
    /// field and host (never a path, query or password); `None` when there are none. Shown at
    /// start-up and by `check-config`: accepted (a mesh may encrypt the hop), but never silently.
    pub fn plain_http_warning(&self) -> Option<String> {
        let mut found: Vec<String> = Vec::new();
        let named = std::iter::once((None, &self.provider))
            .chain(self.providers.iter().map(|(n, p)| (Some(n), p)));
        for (name, provider) in named {
            for (field, host) in provider.plain_http_urls() {
                let field = match name {
                    Some(n) => field.replacen("provider", &format!("providers.{n}"), 1),
                    None => field.to_owned(),
                };
                found.push(format!("{field} (host {host})"));
            }
        }
        (!found.is_empty()).then(|| {
            format!(
                "provider URLs use plain http:// to another host, so secrets and tokens cross the network unencrypted; use https: {}",
                found.join(", ")
            )
        })
    }

    /// A one-line description for `check-config` and the start-up log; never includes secrets.
    pub fn summary(&self) -> String {
        let sources: Vec<&str> = [
            (self.credentials.basic, "basic"),
            (self.credentials.bearer, "bearer"),
            (self.credentials.headers.enabled, "headers"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        format!(
            "ok: provider {} ({}), grpc on {}, admin on {}, credentials {}, identity headers {}, dynamic metadata {}",
            self.provider.kind.as_str(),
            match (
                self.provider.resolved_token_url(),
                self.provider.resolved_discovery()
            ) {
                (Some(u), None) => u.to_string(),
                (token, Some(d)) => format!(
                    "{}discovered from {}",
                    token
                        .map(|u| format!("{u}, other endpoints "))
                        .unwrap_or_default(),
                    d.urls
                        .iter()
                        .map(|u| u.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                (None, None) => String::new(),
            },
            self.listen.grpc,
            self.listen.admin,
            sources.join("+"),
            self.identity
                .headers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
            self.dynamic_metadata.describe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STYTCH: &str = "provider:\n  kind: stytch\n  project_id: project-test-1\n  base_url: https://test.stytch.com\n";

    #[test]
    fn stytch_profile_derives_endpoints_issuers_and_audience() {
        let c = Config::from_yaml(STYTCH).unwrap();
        let p = &c.provider;
        assert_eq!(
            p.resolved_token_url().unwrap().as_str(),
            "https://test.stytch.com/v1/public/project-test-1/oauth2/token"
        );
        assert_eq!(
            p.resolved_jwks_url().unwrap().as_str(),
            "https://test.stytch.com/v1/sessions/jwks/project-test-1"
        );
        assert_eq!(
            p.resolved_issuers(),
            vec!["stytch.com/project-test-1", "https://test.stytch.com"]
        );
        assert_eq!(p.resolved_audiences(), vec!["project-test-1"]);
        assert_eq!(p.resolved_token_type().as_deref(), Some("jwt"));
        assert_eq!(c.listen.grpc, "127.0.0.1:9001");
        assert_eq!(c.listen.admin, "127.0.0.1:9901");
    }

    #[test]
    fn stytch_base_url_with_path_keeps_it() {
        let c = Config::from_yaml(
            "provider: {kind: stytch, project_id: p1, base_url: 'http://127.0.0.1:9400/stytch'}",
        )
        .unwrap();
        assert_eq!(
            c.provider.resolved_token_url().unwrap().as_str(),
            "http://127.0.0.1:9400/stytch/v1/public/p1/oauth2/token"
        );
    }

    /// Each bad config is refused with an error naming the field.
    #[test]
    fn errors_name_the_field() {
        let oauth2 = "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: 'http://a', audience: api}\n";
        let cases: &[(&str, &str)] = &[
            ("provider: {kind: oauth2}", "provider.issuer"),
            (
                "provider: {kind: stytch, base_url: 'http://a'}",
                "provider.project_id",
            ),
            (
                "provider: {kind: stytch, project_id: p}",
                "provider.base_url",
            ),
            ("provider: {kind: other}", "provider.kind"),
            (&format!("{oauth2}listen: {{grpc: nope}}"), "listen.grpc"),
            (
                &format!("{oauth2}listen: {{admin: 'unix:/run/admin.sock'}}"),
                "listen.admin",
            ),
            (
                &format!("{oauth2}listen: {{grpc: '127.0.0.1:9001', admin: '127.0.0.1:9001'}}"),
                "listen.admin",
            ),
            (&format!("{oauth2}listen: {{http: nope}}"), "listen.http"),
            (
                &format!("{oauth2}listen: {{http: 'unix:/run/http.sock'}}"),
                "listen.http",
            ),
            (
                &format!("{oauth2}listen: {{grpc: '127.0.0.1:9001', http: '127.0.0.1:9001'}}"),
                "listen.http",
            ),
            (
                &format!("{oauth2}listen: {{admin: '127.0.0.1:9901', http: '127.0.0.1:9901'}}"),
                "listen.http",
            ),
            (&format!("{oauth2}bogus: 1"), "bogus"),
            (&format!("{oauth2}credentials: {{bogus: 1}}"), "credentials"),
            (
                "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api, leeway: soon}",
                "provider.leeway",
            ),
            (
                "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api, algorithms: [HS256]}",
                "provider.algorithms",
            ),
            (
                "provider: {kind: oauth2, token_url: 'ftp://a/t', jwks_url: 'http://a/j', issuer: i, audience: api}",
                "provider.token_url",
            ),
            (
                "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api, token_params: {client_secret: x}}",
                "provider.token_params.client_secret",
            ),
            (
                &format!(
                    "{oauth2}credentials: {{basic: false, bearer: false, headers: {{enabled: false}}}}"
                ),
                "credentials",
            ),
            (
                &format!("{oauth2}identity: {{headers: {{'x user': user_id}}}}"),
                "identity.headers.x user",
            ),
            // A claim path that does not parse: `settings::tests`.
            (
                &format!("{oauth2}identity: {{headers: {{authorization: sub}}, required: []}}"),
                "identity.headers.authorization",
            ),
            (
                &format!("{oauth2}identity: {{headers: {{x-sub: sub}}}}"),
                "identity.required[0]",
            ),
            (
                &format!("{oauth2}cache: {{max_entries: 0}}"),
                "cache.max_entries",
            ),
            (&format!("{oauth2}realm: 'a\"b'"), "realm"),
        ];
        for (yaml, field) in cases {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { field: f, .. }) => {
                    assert!(f.starts_with(field), "{yaml}: got field {f}, want {field}")
                }
                other => panic!("{yaml}: expected an error about {field}, got {other:?}"),
            }
        }
    }

    #[cfg(feature = "issuer")]
    #[test]
    fn embedded_kind_derives_the_stytch_profile_from_the_issuer() {
        let c = Config::from_yaml(
            "provider:\n  kind: embedded\n  embedded:\n    listen: 127.0.0.1:9400\n    project_id: project-demo\n    project_secret: demo-project-secret-0123456789\n",
        )
        .unwrap();
        let p = &c.provider;
        assert_eq!(
            p.resolved_token_url().unwrap().as_str(),
            "http://127.0.0.1:9400/v1/public/project-demo/oauth2/token"
        );
        assert_eq!(p.resolved_issuers()[0], "stytch.com/project-demo");
        assert_eq!(p.resolved_audiences(), vec!["project-demo"]);
        assert_eq!(p.resolved_token_type().as_deref(), Some("jwt"));
        for (yaml, field) in [
            ("provider: {kind: embedded}", "provider.embedded"),
            (
                "provider: {kind: embedded, embedded: {listen: '127.0.0.1:0', project_secret: demo-project-secret-0123456789}}",
                "provider.embedded.listen",
            ),
            (
                "provider: {kind: embedded, base_url: 'http://x', embedded: {listen: '127.0.0.1:9400', project_secret: demo-project-secret-0123456789}}",
                "provider.base_url",
            ),
            (
                "provider: {kind: embedded, embedded: {listen: '127.0.0.1:9400', project_secret: demo-project-secret-0123456789, tls: {self_signed: true}}}",
                "provider.embedded.tls",
            ),
            (
                "provider: {kind: embedded, embedded: {listen: '127.0.0.1:9400', project_secret: demo-project-secret-0123456789, tls: {cert_file: c.pem}}}",
                "provider.embedded",
            ),
        ] {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
    }

    /// `provider.ca_file` is read whole at load: each bad file is an error naming the field
    /// (the named provider's path for one under `providers`); a relative path is taken from the
    /// config file's folder.
    #[test]
    fn ca_file_is_checked_at_load_and_named() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let dir = std::env::temp_dir().join(format!("m2m-authz-ca-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = fixtures.join("test-ca.pem");
        let ca_text = std::fs::read_to_string(&ca).unwrap();
        let files = [
            ("empty.pem", String::new()),
            (
                "key.pem",
                std::fs::read_to_string(fixtures.join("rsa-a.pem")).unwrap(),
            ),
            ("cut.pem", ca_text[..ca_text.len() / 2].to_owned()),
            (
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            ),
            ("two.pem", format!("{ca_text}{ca_text}")),
        ];
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let yaml = |file: &str| {
            format!(
                "{STYTCH}  ca_file: {file}\nproviders:\n  other:\n    kind: stytch\n    project_id: p2\n    base_url: https://x.example\n"
            )
        };
        let named = |file: &str| {
            format!(
                "{STYTCH}providers:\n  other:\n    kind: stytch\n    project_id: p2\n    base_url: https://x.example\n    ca_file: {file}\n"
            )
        };
        let load = |text: String| Config::from_yaml_in(&text, Some(&dir));
        for good in [ca.to_str().unwrap(), "two.pem"] {
            let c = load(yaml(good)).unwrap();
            let resolved = c.resolved_providers().unwrap();
            assert!(!resolved[0].1.extra_roots.is_empty(), "{good}");
            assert!(resolved[1].1.extra_roots.is_empty());
        }
        for bad in [
            "missing.pem",
            "empty.pem",
            "key.pem",
            "cut.pem",
            "junk.pem",
            ".",
        ] {
            for (text, field) in [
                (yaml(bad), "provider.ca_file"),
                (named(bad), "providers.other.ca_file"),
            ] {
                match load(text) {
                    Err(ConfigError::Invalid { field: f, problem }) => {
                        assert_eq!(f, field, "{bad}: {problem}")
                    }
                    other => panic!("{bad}: {other:?}"),
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("unix:/run/m2m-authz.sock"),
            Ok(ListenAddr::Unix("/run/m2m-authz.sock".into()))
        );
        assert!(matches!(
            parse_listen("0.0.0.0:9001"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert!(parse_listen("unix:relative.sock").is_err());
        assert!(parse_listen("localhost").is_err());
    }

    fn field_of(yaml: &str) -> Option<String> {
        match Config::from_yaml(yaml) {
            Err(ConfigError::Invalid { field, .. }) => Some(field),
            Err(e) => panic!("{yaml}: {e}"),
            Ok(_) => None,
        }
    }

    /// No spelling switches the issuer or audience check off, or leaves it without a value.
    #[test]
    fn issuer_and_audience_cannot_be_emptied() {
        let oauth2 = "provider: {kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://a/j'";
        let cases: &[(&str, Option<&str>)] = &[
            (
                &format!("{oauth2}, issuer: [], audience: api}}"),
                Some("provider.issuer"),
            ),
            (
                &format!("{oauth2}, issuer: '', audience: api}}"),
                Some("provider.issuer[0]"),
            ),
            (
                &format!("{oauth2}, issuer: [a, ' '], audience: api}}"),
                Some("provider.issuer[1]"),
            ),
            (
                &format!("{oauth2}, issuer: i, audience: []}}"),
                Some("provider.audience"),
            ),
            (
                &format!("{oauth2}, issuer: i, audience: ''}}"),
                Some("provider.audience[0]"),
            ),
            (
                &format!("{oauth2}, issuer: i, audience: [api, '']}}"),
                Some("provider.audience[1]"),
            ),
            // oauth2 without an audience needs the explicit opt-out...
            (&format!("{oauth2}, issuer: i}}"), Some("provider.audience")),
            (
                &format!("{oauth2}, issuer: i, skip_audience_check: false}}"),
                Some("provider.audience"),
            ),
            (
                &format!("{oauth2}, issuer: i, skip_audience_check: true}}"),
                None,
            ),
            // ...which cannot be combined with an audience,
            (
                &format!("{oauth2}, issuer: i, audience: api, skip_audience_check: true}}"),
                Some("provider.skip_audience_check"),
            ),
            (
                &format!("{oauth2}, issuer: i, skip_audience_check: yes-please}}"),
                Some("provider.skip_audience_check"),
            ),
            // and the stytch profile always checks its audience.
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://x', audience: []}",
                Some("provider.audience"),
            ),
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://x', issuer: []}",
                Some("provider.issuer"),
            ),
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://x', skip_audience_check: true}",
                Some("provider.skip_audience_check"),
            ),
            (
                "provider: {kind: embedded, skip_audience_check: true, embedded: {listen: '127.0.0.1:9400', project_secret: demo-project-secret-0123456789}}",
                Some(if cfg!(feature = "issuer") {
                    "provider.skip_audience_check"
                } else {
                    "provider.kind"
                }),
            ),
            // The same rules for every named provider.
            (
                &format!(
                    "{oauth2}, issuer: i, audience: api}}\nproviders: {{b: {{kind: oauth2, token_url: 'https://b/t', jwks_url: 'https://b/j', issuer: j}}}}"
                ),
                Some("providers.b.audience"),
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(field_of(yaml).as_deref(), *want, "{yaml}");
        }
        let c = Config::from_yaml(&format!("{oauth2}, issuer: i, skip_audience_check: true}}"))
            .unwrap();
        assert!(c.provider.resolved_audiences().is_empty());
        let c = Config::from_yaml(
            "provider: {kind: stytch, project_id: p1, base_url: 'https://x', audience: [p1, other]}",
        )
        .unwrap();
        assert_eq!(c.provider.resolved_audiences(), vec!["p1", "other"]);
    }

    /// Each bound holds at its edge and refuses one step past it, naming the field.
    #[test]
    fn verification_durations_are_bounded() {
        let base = "provider: {kind: stytch, project_id: p1, base_url: 'https://x'";
        let cases: &[(&str, Option<&str>)] = &[
            ("leeway: 0s", None),
            ("leeway: 5m", None),
            ("leeway: 301s", Some("provider.leeway")),
            ("leeway: 100years", Some("provider.leeway")),
            ("max_token_age: 1s", None),
            ("max_token_age: 24h", None),
            ("max_token_age: 0s", Some("provider.max_token_age")),
            ("max_token_age: 25h", Some("provider.max_token_age")),
            (
                "max_token_age: 500000000000years",
                Some("provider.max_token_age"),
            ),
            ("jwks_min_refetch_interval: 1s", None),
            ("jwks_min_refetch_interval: 1h", None),
            (
                "jwks_min_refetch_interval: 999ms",
                Some("provider.jwks_min_refetch_interval"),
            ),
            (
                "jwks_min_refetch_interval: 0s",
                Some("provider.jwks_min_refetch_interval"),
            ),
            (
                "jwks_min_refetch_interval: 61m",
                Some("provider.jwks_min_refetch_interval"),
            ),
        ];
        for (extra, want) in cases {
            let yaml = format!("{base}, {extra}}}");
            assert_eq!(field_of(&yaml).as_deref(), *want, "{yaml}");
        }
        let base = "provider: {kind: stytch, project_id: p1, base_url: 'https://x'}\ncache: ";
        let cases: &[(&str, Option<&str>)] = &[
            ("{stale_if_error: 0s}", None),
            ("{stale_if_error: 1h}", None),
            ("{stale_if_error: 3601s}", Some("cache.stale_if_error")),
            (
                "{stale_if_error: 1000000years}",
                Some("cache.stale_if_error"),
            ),
            ("{max_credential_age: 1s}", None),
            ("{max_credential_age: 24h}", None),
            ("{max_credential_age: 0s}", Some("cache.max_credential_age")),
            (
                "{max_credential_age: 500ms}",
                Some("cache.max_credential_age"),
            ),
            (
                "{max_credential_age: 25h}",
                Some("cache.max_credential_age"),
            ),
        ];
        for (extra, want) in cases {
            let yaml = format!("{base}{extra}");
            assert_eq!(field_of(&yaml).as_deref(), *want, "{yaml}");
        }
        // Every duration has a ceiling, so no sum or product of config durations overflows.
        for (yaml, field) in [
            ("cache: {negative_ttl: 1000000years}", "cache.negative_ttl"),
            ("cache: {expiry_margin: 366days}", "cache.expiry_margin"),
            (
                "cache: {exchange_queue_timeout: 18446744073709551615s}",
                "cache.exchange_queue_timeout",
            ),
            ("listen: {drain_timeout: 1000years}", "listen.drain_timeout"),
            (
                "policy: {reload_interval: 1000years}",
                "policy.reload_interval",
            ),
        ] {
            let yaml = format!(
                "provider: {{kind: stytch, project_id: p1, base_url: 'https://x'}}\n{yaml}"
            );
            assert_eq!(field_of(&yaml).as_deref(), Some(field), "{yaml}");
        }
        for (extra, field) in [
            ("request_timeout: 500000years", "provider.request_timeout"),
            ("connect_timeout: 2000years", "provider.connect_timeout"),
            (
                "jwks_refresh_interval: 2000years",
                "provider.jwks_refresh_interval",
            ),
        ] {
            let yaml = format!(
                "provider: {{kind: stytch, project_id: p1, base_url: 'https://x', {extra}}}"
            );
            assert_eq!(field_of(&yaml).as_deref(), Some(field), "{yaml}");
        }
        // A named provider's bound names its own path.
        assert_eq!(
            field_of(&format!(
                "{base}{{}}\nproviders: {{b: {{kind: stytch, project_id: p2, base_url: 'https://y', leeway: 1h}}}}"
            ))
            .as_deref(),
            Some("providers.b.leeway")
        );
    }

    /// Provider URLs carrying a password are refused, wherever they are written.
    #[test]
    fn provider_urls_carry_no_credentials() {
        for (yaml, field) in [
            (
                "provider: {kind: oauth2, token_url: 'https://u:p@a/t', jwks_url: 'https://a/j', issuer: i, audience: api}",
                "provider.token_url",
            ),
            (
                "provider: {kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://u@a/j', issuer: i, audience: api}",
                "provider.jwks_url",
            ),
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://u:p@x'}",
                "provider.token_url",
            ),
        ] {
            assert_eq!(field_of(yaml).as_deref(), Some(field), "{yaml}");
        }
    }

    /// Plain http to another host is warned about in one line naming field and host; loopback
    /// in any spelling, and https, are not.
    #[test]
    fn plain_http_off_loopback_is_warned_about() {
        let oauth2 = |token: &str, jwks: &str| {
            Config::from_yaml(&format!(
                "provider: {{kind: oauth2, token_url: '{token}', jwks_url: '{jwks}', issuer: i, audience: api}}"
            ))
            .unwrap()
        };
        for local in [
            "http://127.0.0.1:8080/t",
            "http://127.9.9.9/t",
            "http://localhost/t",
            "http://LOCALHOST./t",
            "http://[::1]:9/t",
            "http://[::ffff:127.0.0.1]/t",
            "http://0.0.0.0:9/t",
            "https://auth.example.com/t",
        ] {
            assert_eq!(oauth2(local, local).plain_http_warning(), None, "{local}");
        }
        let w = oauth2(
            "http://auth.example.com/oauth/token?x=secret-query",
            "http://10.0.0.7:8080/jwks",
        )
        .plain_http_warning()
        .expect("a warning");
        assert!(!w.contains('\n'), "{w}");
        assert!(
            w.contains("provider.token_url (host auth.example.com)"),
            "{w}"
        );
        assert!(w.contains("provider.jwks_url (host 10.0.0.7)"), "{w}");
        assert!(!w.contains("secret-query") && !w.contains("/oauth"), "{w}");
        for (spelling, host) in [
            ("http://localhost.evil.com/t", "localhost.evil.com"),
            ("http://127.0.0.1.nip.io/t", "127.0.0.1.nip.io"),
            ("http://[::2]/t", "[::2]"),
        ] {
            let w = oauth2(spelling, "https://a/j").plain_http_warning();
            assert!(
                w.as_deref()
                    .is_some_and(|w| w.contains(&format!("(host {host})"))),
                "{spelling}: {w:?}"
            );
        }
        // Derived Stytch URLs are named by the field that was written; named providers by path.
        let c = Config::from_yaml(
            "provider: {kind: stytch, project_id: p1, base_url: 'http://stytch.internal'}\nproviders: {b: {kind: oauth2, token_url: 'https://b/t', jwks_url: 'http://b.internal/j', issuer: j, audience: api}}",
        )
        .unwrap();
        let w = c.plain_http_warning().unwrap();
        assert!(
            w.contains("provider.base_url (host stytch.internal)"),
            "{w}"
        );
        assert_eq!(w.matches("provider.base_url").count(), 1, "{w}");
        assert!(w.contains("providers.b.jwks_url (host b.internal)"), "{w}");
        // The embedded issuer: named by what set its address.
        #[cfg(feature = "issuer")]
        {
            let embedded = |extra: &str| {
                Config::from_yaml(&format!(
                "provider: {{kind: embedded, embedded: {{project_secret: demo-project-secret-0123456789{extra}}}}}"
            ))
            .unwrap()
            .plain_http_warning()
            };
            assert_eq!(embedded(", listen: '127.0.0.1:9400'"), None);
            assert_eq!(embedded(", listen: '0.0.0.0:9400'"), None);
            let w = embedded(", listen: '10.1.2.3:9400'").unwrap();
            assert!(
                w.contains("provider.embedded.listen (host 10.1.2.3)"),
                "{w}"
            );
            let w =
                embedded(", listen: '127.0.0.1:9400', issuer_base_url: 'http://issuer.internal'")
                    .unwrap();
            assert!(
                w.contains("provider.embedded.issuer_base_url (host issuer.internal)"),
                "{w}"
            );
        }
    }

    #[test]
    fn issuer_and_audience_accept_one_or_many() {
        let c = Config::from_yaml(
            "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: [a, b], audience: api}",
        )
        .unwrap();
        assert_eq!(c.provider.resolved_issuers(), vec!["a", "b"]);
        assert_eq!(c.provider.resolved_audiences(), vec!["api"]);
        assert_eq!(c.provider.resolved_token_type(), None);
    }

    /// The lean build (no `issuer`, no `shared-cache`) refuses, in one line naming the field and
    /// the feature, every setting that needs a part it was built without; it never ignores one.
    #[test]
    fn settings_of_parts_left_out_are_refused_naming_the_feature() {
        let oauth2 = "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api}\n";
        let mut cases: Vec<(String, &str, &str)> = Vec::new();
        if cfg!(not(feature = "issuer")) {
            cases.extend([
                (
                    "provider:\n  kind: embedded\n  embedded:\n    listen: 127.0.0.1:9400\n    project_secret: demo-project-secret-0123456789\n".to_owned(),
                    "provider.kind",
                    "issuer",
                ),
                ("provider: {kind: embedded}".to_owned(), "provider.kind", "issuer"),
                (
                    "provider: {kind: stytch, project_id: p1, base_url: 'https://x', embedded: {listen: '127.0.0.1:9400'}}".to_owned(),
                    "provider.embedded",
                    "issuer",
                ),
            ]);
        }
        if cfg!(not(feature = "shared-cache")) {
            cases.extend([
                (
                    format!("{oauth2}cache:\n  shared:\n    url: redis://127.0.0.1:6379\n"),
                    "cache.shared",
                    "shared-cache",
                ),
                (
                    format!("{oauth2}cache: {{shared: {{}}}}"),
                    "cache.shared",
                    "shared-cache",
                ),
            ]);
        }
        for (yaml, field, feature) in &cases {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { field: f, problem }) => {
                    assert_eq!(&f, field, "{yaml}");
                    assert!(
                        problem.contains(&format!("needs the `{feature}` feature")),
                        "{yaml}: {problem}"
                    );
                    assert!(!problem.contains('\n'), "{problem}");
                }
                other => panic!("{yaml}: {other:?}"),
            }
        }
        // A named provider may never be embedded, with or without the feature.
        let named = format!(
            "{oauth2}providers: {{b: {{kind: embedded, embedded: {{listen: '127.0.0.1:9400'}}}}}}"
        );
        assert!(matches!(
            Config::from_yaml(&named),
            Err(ConfigError::Invalid { field, .. }) if field == "providers.b.kind"
        ));
    }
}
