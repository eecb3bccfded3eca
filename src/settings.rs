//! The whole configuration compiled into what the modules run on: each provider resolved from
//! its profile, the identity map, the route policy and the cache settings. Each module compiles
//! its own part from its config section; this is the one place that calls them all, so a config
//! that any of them refuses is refused whole — naming the field — before any port opens.
//! (`Config::validate` checks the schema alone and imports none of these modules.)

use std::path::Path;

use crate::cache::CacheSettings;
use crate::config::{Config, ConfigError, ProviderConfig, ResolvedProvider};
use crate::grpc_tls::GrpcTls;
use crate::identity::IdentityMap;
use crate::policy::reload::LivePolicy;

/// One provider: its section as written and as its profile resolved it.
pub struct ProviderSettings {
    pub name: String,
    pub config: ProviderConfig,
    pub resolved: ResolvedProvider,
}

/// A config, compiled.
pub struct Settings {
    /// `default` first, then `providers` by name.
    pub providers: Vec<ProviderSettings>,
    pub identity: IdentityMap,
    /// Read from `policy.file` when there is one; the watcher reloads it from there.
    pub policy: LivePolicy,
    pub cache: CacheSettings,
    /// `listen.tls`, its files read and checked; `None` serves Check in plain text.
    pub grpc_tls: Option<GrpcTls>,
}

impl Settings {
    /// Compiles every part of a schema-checked `config`; the error names the field path, as
    /// `Config::validate`'s do.
    pub fn compile(config: &Config) -> Result<Settings, ConfigError> {
        let providers = config
            .named_providers()
            .zip(config.resolved_providers()?)
            .map(|((_, p), (name, resolved))| ProviderSettings {
                name,
                config: p.clone(),
                resolved,
            })
            .collect();
        let identity = IdentityMap::new(&config.identity)?;
        let policy = LivePolicy::from_config(
            config.policy.as_ref(),
            config.dir.as_deref(),
            &config.provider_names(),
        )
        .map_err(|e| ConfigError::invalid(&e.field, e.problem))?;
        let grpc_tls = config.listen.tls.as_ref().map(GrpcTls::load).transpose()?;
        Ok(Settings {
            providers,
            identity,
            policy,
            cache: CacheSettings::from(&config.cache),
            grpc_tls,
        })
    }
}

/// Reads a config file and compiles it whole (`Config::load`, then `Settings::compile`): what
/// `check-config` and `serve` accept. The compiled settings are what `serve` then runs on, so
/// the files a config names (`policy.file`) are read once.
pub fn load(path: &Path) -> Result<(Config, Settings), ConfigError> {
    let config = Config::load(path)?;
    let settings = Settings::compile(&config)?;
    Ok((config, settings))
}

/// Parses YAML text and compiles it whole, like `load`.
pub fn from_yaml(text: &str) -> Result<(Config, Settings), ConfigError> {
    let config = Config::from_yaml(text)?;
    let settings = Settings::compile(&config)?;
    Ok((config, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OAUTH2: &str = "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: 'http://a', audience: api}\n";

    fn field_of(yaml: &str) -> Option<String> {
        match from_yaml(yaml) {
            Err(ConfigError::Invalid { field, .. }) => Some(field),
            Err(e) => panic!("{yaml}: {e}"),
            Ok(_) => None,
        }
    }

    /// What only a module's compiler can judge is refused here, naming the field, even though
    /// the schema alone accepts it.
    #[test]
    fn compiled_parts_are_refused_naming_the_field() {
        for (extra, field, problem) in [
            (
                "identity: {headers: {x-user-id: '/a/~2'}}",
                "identity.headers.x-user-id",
                "",
            ),
            (
                "identity: {headers: {x-user-id: user_id, x-org: '/org/~3'}, required: []}",
                "identity.headers.x-org",
                "",
            ),
            (
                "policy: {rules: [{name: r, require: {}, provider: nobody}]}",
                "policy.rules[0].provider",
                "",
            ),
            (
                "policy: {file: /nonexistent/m2m-authz-policy.yaml}",
                "policy.file",
                "",
            ),
        ] {
            let yaml = format!("{OAUTH2}{extra}");
            assert!(
                Config::from_yaml(&yaml).is_ok(),
                "the schema accepts {yaml}"
            );
            let Err(e) = from_yaml(&yaml) else {
                panic!("accepted: {yaml}")
            };
            assert_eq!(field_of(&yaml).as_deref(), Some(field), "{yaml}");
            assert!(e.to_string().contains(problem), "{e}");
        }
    }

    /// Every provider resolves in `default`-first order, each from its profile.
    #[test]
    fn providers_resolve_by_name_default_first() {
        let Ok((_, s)) = from_yaml(&format!(
            "{OAUTH2}providers: {{b: {{kind: stytch, project_id: p2, base_url: 'https://y'}}}}"
        )) else {
            panic!("refused")
        };
        let names: Vec<_> = s.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "b"]);
        assert_eq!(
            s.providers[0]
                .resolved
                .token_url
                .as_ref()
                .map(|u| u.as_str()),
            Some("http://a/t")
        );
        assert_eq!(
            s.providers[1]
                .resolved
                .token_url
                .as_ref()
                .map(|u| u.as_str()),
            Some("https://y/v1/public/p2/oauth2/token")
        );
        assert_eq!(s.providers[1].resolved.audiences, ["p2"]);
        assert_eq!(s.providers[1].resolved.token_type.as_deref(), Some("jwt"));
    }
}
