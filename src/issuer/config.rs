//! Issuer configuration (YAML).
//!
//! # The project secret
//!
//! The management API (`/v1/m2m/clients…`) is guarded by HTTP Basic
//! `project_id:project_secret`, as in Stytch. The secret may be written in the
//! file as `project_secret`, or given in the environment variable
//! [`PROJECT_SECRET_ENV`]; when the variable is set and non-empty it wins, so a
//! committed example file can hold a placeholder that each deployment
//! overrides without editing. [`IssuerConfig::load`] applies the variable;
//! code that builds a config by hand calls [`IssuerConfig::apply_env`] itself
//! if it wants the same behaviour. Either way the secret must be at least
//! [`MIN_PROJECT_SECRET_LEN`] characters: it guards minting credentials.
//!
//! The secret gives full control of the management API and unseals the
//! signing keys, so a config file whose `project_secret` is the one in effect
//! (not replaced by a different value from the variable) is refused when other
//! users can read or write it; see [`private_files::check_secret_config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use super::private_files::{self, PrivateFileError};
use super::secrets::ProjectSecret;
use super::template::{ClaimsTemplate, DEFAULT_CLAIMS_TEMPLATE};

pub const PROJECT_SECRET_ENV: &str = "M2M_ISSUER_PROJECT_SECRET";
/// Overrides `management.key_secret`, as [`PROJECT_SECRET_ENV`] does the
/// project secret.
pub const MANAGEMENT_KEY_SECRET_ENV: &str = "M2M_ISSUER_MANAGEMENT_KEY_SECRET";
pub const MIN_PROJECT_SECRET_LEN: usize = 16;
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Error)]
pub enum ConfigError {
    /// The I/O error is said in the message, not chained as a source, so `{:#}` says it once.
    #[error("cannot read issuer config {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid issuer config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("issuer config field `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Exposed(#[from] PrivateFileError),
}

/// The part of a sidecar config (`m2m-authz serve --config`) that holds the embedded issuer;
/// the rest is the sidecar's and not read here (`serve` and `check-config` validate it).
#[derive(Deserialize)]
struct SidecarView {
    provider: SidecarProvider,
}

#[derive(Deserialize)]
struct SidecarProvider {
    kind: Option<String>,
    embedded: Option<IssuerConfig>,
}

/// What a config file holding the project secret holds, for the errors.
const SECRET_WHAT: &str = "the issuer's project_secret";
const MANAGEMENT_SECRET_WHAT: &str = "the issuer's management.key_secret";

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Settings of the embedded issuer; every field has a default except the
/// project secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Address the HTTP server binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// SQLite file; [`IssuerConfig::load`] resolves a relative path against
    /// the config file's directory, so the CLI finds the same database from
    /// any working directory.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// Appears in URLs, `iss` (`stytch.com/{project_id}`) and `aud`.
    #[serde(default = "default_project_id")]
    pub project_id: String,
    /// See the module docs for the environment override.
    #[serde(default)]
    pub project_secret: Option<ProjectSecret>,
    /// How long access tokens live (`expires_in`); humantime (`1h`, `15m`)
    /// or a number of seconds.
    #[serde(
        default = "default_token_lifetime",
        deserialize_with = "deserialize_lifetime"
    )]
    pub token_lifetime: Duration,
    /// The initial custom-claims template; `None` means
    /// [`DEFAULT_CLAIMS_TEMPLATE`]. Copied into the database on the first
    /// open of a database that holds no template; from then on the stored
    /// one is in force (set with the management API or `issuer template
    /// set`) and this value is ignored.
    #[serde(default)]
    pub claims_template: Option<String>,
    /// The Stytch Management API subset (the M2M JWT template).
    #[serde(default)]
    pub management: ManagementConfig,
    /// Base URL clients use to reach the issuer, when it differs from
    /// `http://{listen}` (behind a proxy, or when `listen` is a wildcard).
    #[serde(default, deserialize_with = "deserialize_url")]
    pub issuer_base_url: Option<url::Url>,
    /// HTTPS instead of plain HTTP (the default): `{cert_file, key_file}` or
    /// `{self_signed: true}`; see [`TlsConfig`].
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Set by [`IssuerConfig::apply_env`] when the variable replaced the
    /// file's `project_secret` with a different value; never read from YAML.
    #[serde(skip)]
    secret_overridden: bool,
}

impl std::fmt::Debug for IssuerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerConfig")
            .field("listen", &self.listen)
            .field("database", &self.database)
            .field("project_id", &self.project_id)
            .field("project_secret", &self.project_secret)
            .field("token_lifetime", &self.token_lifetime)
            .field("claims_template", &self.claims_template)
            .field("management", &self.management)
            .field("issuer_base_url", &self.issuer_base_url)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            database: default_database(),
            project_id: default_project_id(),
            project_secret: None,
            token_lifetime: default_token_lifetime(),
            claims_template: None,
            management: ManagementConfig::default(),
            issuer_base_url: None,
            tls: None,
            secret_overridden: false,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9400))
}

fn default_database() -> PathBuf {
    PathBuf::from("m2m-issuer.db")
}

fn default_project_id() -> String {
    "project-test-local".to_owned()
}

fn default_token_lifetime() -> Duration {
    Duration::from_secs(3600)
}

fn deserialize_lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lifetime {
        Seconds(u64),
        Text(String),
    }
    match Lifetime::deserialize(d)? {
        Lifetime::Seconds(s) => Ok(Duration::from_secs(s)),
        Lifetime::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!("{t:?} is not a duration like \"1h\": {e}"))
        }),
    }
}

// Parsed by hand so the `url` crate's optional serde feature is not needed.
fn deserialize_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| {
        url::Url::parse(&t)
            .map_err(|e| serde::de::Error::custom(format!("{t:?} is not a URL: {e}")))
    })
    .transpose()
}

/// `tls`: the issuer serves HTTPS with either a certificate it is given or one it generates.
///
/// - `cert_file` + `key_file`: PEM files; the certificate file holds the leaf first, then any
///   intermediates; the key file (PKCS#8, PKCS#1 or SEC1) must pass the private-file rules
///   (owned by this user, no group or other access, not a symbolic link).
/// - `self_signed: true`: on its first start the issuer makes a small local CA and a leaf for
///   `localhost`, `127.0.0.1` and `::1`, keeps them beside the database and reuses them on every
///   later start; the CA's own key is never written, so the CA can sign nothing else.
///
/// [`IssuerConfig::load`] resolves relative paths against the config file's folder.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub self_signed: bool,
}

impl TlsConfig {
    /// Refuses half or mixed configurations, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.cert_file, &self.key_file, self.self_signed) {
            (Some(_), Some(_), false) | (None, None, true) => {}
            (Some(_), _, true) | (_, Some(_), true) => {
                return Err(invalid(
                    "tls.self_signed",
                    "cannot be combined with tls.cert_file or tls.key_file; choose one",
                ));
            }
            (Some(_), None, false) => {
                return Err(invalid(
                    "tls.key_file",
                    "is required with tls.cert_file (the certificate's PEM private key)",
                ));
            }
            (None, Some(_), false) => {
                return Err(invalid(
                    "tls.cert_file",
                    "is required with tls.key_file (the PEM certificate chain)",
                ));
            }
            (None, None, false) => {
                return Err(invalid(
                    "tls",
                    "expected cert_file and key_file, or self_signed: true (omit tls for plain HTTP)",
                ));
            }
        }
        for (field, path) in [
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(field, "must not be empty"));
            }
        }
        Ok(())
    }

    /// Resolves relative file paths against `dir`.
    fn resolve_in(&mut self, dir: &Path) {
        for path in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }
}

/// Where the issuer's endpoints are, for a verifier configured against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerEndpoints {
    pub base_url: String,
    pub token_url: String,
    pub jwks_url: String,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` entry.
    pub audience: String,
}

impl IssuerConfig {
    /// Parses YAML without touching the environment or validating; `origin`
    /// names the source in error messages.
    ///
    /// A sidecar config (it has `provider`) is accepted when it embeds the issuer
    /// (`provider.kind: embedded`): its `provider.embedded` section is the issuer config, so
    /// `clients …` and `issuer …` work on the very database and secret `serve` uses. Any other
    /// sidecar config is refused, saying which file is needed.
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let parse_error = |(field, problem): (Option<String>, String)| ConfigError::Parse {
            path: origin.to_owned(),
            message: match field {
                Some(field) => format!("{field}: {problem}"),
                None => problem,
            },
        };
        let is_sidecar = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            .ok()
            .and_then(|doc| doc.as_mapping().map(|m| m.contains_key("provider")))
            .unwrap_or(false);
        if !is_sidecar {
            return crate::yaml::from_str(text).map_err(parse_error);
        }
        let sidecar: SidecarView = crate::yaml::from_str(text).map_err(parse_error)?;
        match (sidecar.provider.kind.as_deref(), sidecar.provider.embedded) {
            (Some("embedded"), Some(config)) => Ok(config),
            (kind, _) => Err(ConfigError::Parse {
                path: origin.to_owned(),
                message: format!(
                    "a sidecar config whose provider.kind is {}, so it holds no issuer; pass \
                     the issuer's own config (the demo's is .demo/issuer.yaml) or a sidecar \
                     config with provider.kind: embedded",
                    kind.map_or_else(|| "missing".to_owned(), |k| format!("`{k}`"))
                ),
            }),
        }
    }

    /// Reads the file, resolves a relative `database` against the file's
    /// directory, applies [`PROJECT_SECRET_ENV`], refuses a file that exposes
    /// the secret in effect ([`IssuerConfig::check_file_access`]) and
    /// validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, meta) = private_files::read_config(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config = Self::from_yaml_str(&text, path)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths_in(dir);
        }
        config.apply_env();
        config.check_file_access(path, &meta)?;
        config.validate()?;
        Ok(config)
    }

    /// Resolves a relative `database` and relative `tls` files against `dir` (the config file's
    /// folder), so the CLI finds them from any working directory.
    pub fn resolve_paths_in(&mut self, dir: &Path) {
        if self.database.is_relative() {
            self.database = dir.join(&self.database);
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.resolve_in(dir);
        }
    }

    /// Takes the project secret from [`PROJECT_SECRET_ENV`] when it is set
    /// and non-empty.
    pub fn apply_env(&mut self) {
        if let Ok(secret) = std::env::var(PROJECT_SECRET_ENV)
            && !secret.is_empty()
        {
            // A file value equal to the variable's is still the live secret.
            if self
                .project_secret
                .as_ref()
                .is_none_or(|s| s.expose() != secret)
            {
                self.secret_overridden = true;
            }
            self.project_secret = Some(ProjectSecret::new(secret));
        }
        if let Ok(secret) = std::env::var(MANAGEMENT_KEY_SECRET_ENV)
            && !secret.is_empty()
        {
            if self
                .management
                .key_secret
                .as_ref()
                .is_none_or(|s| s.expose() != secret)
            {
                self.management.secret_overridden = true;
            }
            self.management.key_secret = Some(ProjectSecret::new(secret));
        }
    }

    /// Whether the project secret in effect is the one this config was
    /// parsed with (not one [`IssuerConfig::apply_env`] put in its place).
    pub fn secret_is_from_config(&self) -> bool {
        self.project_secret.is_some() && !self.secret_overridden
    }

    /// Refuses the file this config was read from (`meta` is from
    /// [`private_files::read_config`]) when it holds the secret in effect
    /// and other users can read or write it. Call after
    /// [`IssuerConfig::apply_env`]: a placeholder the variable replaces
    /// exposes nothing.
    pub fn check_file_access(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(), PrivateFileError> {
        self.check_file_access_naming(path, meta)
            .map_err(|(_, e)| e)
    }

    /// [`IssuerConfig::check_file_access`], also naming the field whose secret the file
    /// exposes (`project_secret` or `management.key_secret`).
    pub fn check_file_access_naming(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(), (&'static str, PrivateFileError)> {
        if self.secret_is_from_config() {
            private_files::check_secret_config(path, meta, SECRET_WHAT, PROJECT_SECRET_ENV)
                .map_err(|e| ("project_secret", e))?;
        }
        if self.management.key_secret.is_some() && !self.management.secret_overridden {
            private_files::check_secret_config(
                path,
                meta,
                MANAGEMENT_SECRET_WHAT,
                MANAGEMENT_KEY_SECRET_ENV,
            )
            .map_err(|e| ("management.key_secret", e))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.project_id.is_empty()
            || !self
                .project_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "project_id",
                "must be non-empty and use only letters, digits, '-' and '_' (it appears in URLs)",
            ));
        }
        match &self.project_secret {
            None => {
                return Err(invalid(
                    "project_secret",
                    format!("is required (in the file or in {PROJECT_SECRET_ENV})"),
                ));
            }
            Some(s) if s.expose().chars().count() < MIN_PROJECT_SECRET_LEN => {
                return Err(invalid(
                    "project_secret",
                    format!("must be at least {MIN_PROJECT_SECRET_LEN} characters"),
                ));
            }
            Some(s) if s.expose().contains(':') => {
                return Err(invalid(
                    "project_secret",
                    "must not contain ':' (it is sent in HTTP Basic credentials)",
                ));
            }
            Some(_) => {}
        }
        if self.token_lifetime < Duration::from_secs(1) || self.token_lifetime > MAX_TOKEN_LIFETIME
        {
            return Err(invalid("token_lifetime", "must be between 1s and 24h"));
        }
        if self.database.as_os_str().is_empty() {
            return Err(invalid("database", "must not be empty"));
        }
        self.parsed_template()?;
        self.management.validate(&self.project_id)?;
        if let Some(url) = &self.issuer_base_url
            && (!matches!(url.scheme(), "http" | "https")
                || url.host().is_none()
                || url.query().is_some()
                || url.fragment().is_some())
        {
            return Err(invalid(
                "issuer_base_url",
                "must be an http(s) URL without query or fragment",
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// The project secret, which [`IssuerConfig::validate`] requires.
    pub fn required_project_secret(&self) -> Result<&ProjectSecret, ConfigError> {
        self.project_secret.as_ref().ok_or_else(|| {
            invalid(
                "project_secret",
                format!("is required (in the file or in {PROJECT_SECRET_ENV})"),
            )
        })
    }

    pub fn parsed_template(&self) -> Result<ClaimsTemplate, ConfigError> {
        ClaimsTemplate::parse(
            self.claims_template
                .as_deref()
                .unwrap_or(DEFAULT_CLAIMS_TEMPLATE),
        )
        .map_err(|e| invalid("claims_template", e.to_string()))
    }

    /// `iss` of every token, as Stytch sets it.
    pub fn issuer(&self) -> String {
        format!("stytch.com/{}", self.project_id)
    }

    /// `https` when `tls` is set, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Endpoint URLs under `issuer_base_url`, or under `http(s)://{bound}`
    /// where `bound` is the address actually listened on (it differs from
    /// `listen` when that asks for port 0).
    pub fn endpoints(&self, bound: SocketAddr) -> IssuerEndpoints {
        let base_url = match &self.issuer_base_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => format!("{}://{bound}", self.scheme()),
        };
        IssuerEndpoints {
            token_url: format!("{base_url}/v1/public/{}/oauth2/token", self.project_id),
            jwks_url: format!("{base_url}/v1/sessions/jwks/{}", self.project_id),
            issuer: self.issuer(),
            audience: self.project_id.clone(),
            base_url,
        }
    }
}

/// Credentials and names of the Management API subset
/// (`/pwa/v3/projects/{project_slug}/environments/{environment_slug}/jwt_templates/M2M`),
/// which Stytch's `stytch-management` SDKs call with HTTP Basic
/// `key_id:key_secret` (a workspace key). Without a `key_secret` the routes
/// refuse every request: the project secret never opens them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementConfig {
    #[serde(default = "default_management_key_id")]
    pub key_id: String,
    /// See [`MANAGEMENT_KEY_SECRET_ENV`] for the environment override.
    #[serde(default)]
    pub key_secret: Option<ProjectSecret>,
    /// `None` means the project id.
    #[serde(default)]
    pub project_slug: Option<String>,
    #[serde(default = "default_environment_slug")]
    pub environment_slug: String,
    #[serde(skip)]
    secret_overridden: bool,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            key_id: default_management_key_id(),
            key_secret: None,
            project_slug: None,
            environment_slug: default_environment_slug(),
            secret_overridden: false,
        }
    }
}

impl std::fmt::Debug for ManagementConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementConfig")
            .field("key_id", &self.key_id)
            .field("key_secret", &self.key_secret)
            .field("project_slug", &self.project_slug)
            .field("environment_slug", &self.environment_slug)
            .finish()
    }
}

fn default_management_key_id() -> String {
    "workspace-key-local".to_owned()
}

fn default_environment_slug() -> String {
    "test".to_owned()
}

/// Slugs and key ids appear in URLs and Basic credentials.
fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ManagementConfig {
    /// The project slug in the management URLs.
    pub fn project_slug<'a>(&'a self, project_id: &'a str) -> &'a str {
        self.project_slug.as_deref().unwrap_or(project_id)
    }

    fn validate(&self, project_id: &str) -> Result<(), ConfigError> {
        const SLUG: &str =
            "must be non-empty, at most 128 characters, letters, digits, '-' and '_'";
        if !is_slug(&self.key_id) {
            return Err(invalid("management.key_id", SLUG));
        }
        if !is_slug(self.project_slug(project_id)) {
            return Err(invalid("management.project_slug", SLUG));
        }
        if !is_slug(&self.environment_slug) {
            return Err(invalid("management.environment_slug", SLUG));
        }
        match &self.key_secret {
            Some(s) if s.expose().chars().count() < MIN_PROJECT_SECRET_LEN => Err(invalid(
                "management.key_secret",
                format!("must be at least {MIN_PROJECT_SECRET_LEN} characters"),
            )),
            Some(s) if s.expose().contains(':') => Err(invalid(
                "management.key_secret",
                "must not contain ':' (it is sent in HTTP Basic credentials)",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<IssuerConfig, ConfigError> {
        IssuerConfig::from_yaml_str(yaml, Path::new("test.yaml"))
    }

    const SECRET: &str = "project_secret: 0123456789abcdef\n";

    #[test]
    fn defaults_apply() {
        let c = parse(SECRET).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9400".parse().unwrap());
        assert_eq!(c.database, PathBuf::from("m2m-issuer.db"));
        assert_eq!(c.project_id, "project-test-local");
        assert_eq!(c.token_lifetime, Duration::from_secs(3600));
        assert_eq!(c.issuer(), "stytch.com/project-test-local");
        assert_eq!(
            c.parsed_template().unwrap().source(),
            DEFAULT_CLAIMS_TEMPLATE
        );
    }

    #[test]
    fn lifetimes_accept_humantime_and_seconds() {
        let c = parse(&format!("{SECRET}token_lifetime: 15m\n")).unwrap();
        assert_eq!(c.token_lifetime, Duration::from_secs(900));
        let c = parse(&format!("{SECRET}token_lifetime: 90\n")).unwrap();
        assert_eq!(c.token_lifetime, Duration::from_secs(90));
        let err = parse(&format!("{SECRET}token_lifetime: soon\n")).unwrap_err();
        assert!(err.to_string().contains("token_lifetime"), "{err}");
        let c = parse(&format!("{SECRET}token_lifetime: 2d\n")).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("token_lifetime")
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse(&format!("{SECRET}projct_id: x\n")).unwrap_err();
        assert!(err.to_string().contains("projct_id"), "{err}");
    }

    #[test]
    fn secret_is_required_and_checked() {
        let c = parse("project_id: p\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "project_secret",
                    ..
                }
            ),
            "{err}"
        );
        let c = parse("project_secret: short\n").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "project_secret",
                ..
            })
        ));
        let c = parse("project_secret: 'has:colon-0123456789'\n").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "project_secret",
                ..
            })
        ));
        assert!(!format!("{:?}", parse(SECRET).unwrap()).contains("0123456789abcdef"));
    }

    #[test]
    fn bad_values_name_their_field() {
        for (yaml, field) in [
            ("project_id: 'a b'\n", "project_id"),
            ("claims_template: '{\"sub\": 1}'\n", "claims_template"),
            ("issuer_base_url: 'ftp://x'\n", "issuer_base_url"),
            ("database: ''\n", "database"),
            ("tls: {}\n", "tls"),
            ("tls: {self_signed: false}\n", "tls"),
            ("tls: {cert_file: c.pem}\n", "tls.key_file"),
            ("tls: {key_file: k.pem}\n", "tls.cert_file"),
            ("tls: {cert_file: '', key_file: k.pem}\n", "tls.cert_file"),
            (
                "tls: {self_signed: true, cert_file: c.pem, key_file: k.pem}\n",
                "tls.self_signed",
            ),
            (
                "tls: {self_signed: true, key_file: k.pem}\n",
                "tls.self_signed",
            ),
        ] {
            let c = parse(&format!("{SECRET}{yaml}")).unwrap();
            match c.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
    }

    #[test]
    fn endpoints_follow_base_url_or_bound_address() {
        let c = parse(&format!("{SECRET}project_id: p1\n")).unwrap();
        let e = c.endpoints("127.0.0.1:5555".parse().unwrap());
        assert_eq!(
            e.token_url,
            "http://127.0.0.1:5555/v1/public/p1/oauth2/token"
        );
        assert_eq!(e.jwks_url, "http://127.0.0.1:5555/v1/sessions/jwks/p1");
        assert_eq!(e.issuer, "stytch.com/p1");
        assert_eq!(e.audience, "p1");
        let c = parse(&format!(
            "{SECRET}project_id: p1\nissuer_base_url: https://issuer.example/\n"
        ))
        .unwrap();
        let e = c.endpoints("127.0.0.1:1".parse().unwrap());
        assert_eq!(e.jwks_url, "https://issuer.example/v1/sessions/jwks/p1");
    }

    #[test]
    fn load_resolves_database_and_tls_files_next_to_the_file() {
        let db = crate::issuer::store::tests::TempDb::new();
        let file = db.write_private("issuer.yaml", SECRET);
        let c = IssuerConfig::load(&file).unwrap();
        assert_eq!(c.database, db.dir.join("m2m-issuer.db"));
        assert_eq!(c.scheme(), "http");
        let file = db.write_private(
            "issuer.yaml",
            &format!("{SECRET}tls: {{cert_file: c.pem, key_file: /abs/k.pem}}\n"),
        );
        let c = IssuerConfig::load(&file).unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(
            tls.cert_file.as_deref(),
            Some(db.dir.join("c.pem").as_path())
        );
        assert_eq!(tls.key_file.as_deref(), Some(Path::new("/abs/k.pem")));
        let e = c.endpoints("127.0.0.1:5555".parse().unwrap());
        assert_eq!(e.base_url, "https://127.0.0.1:5555");
    }

    #[test]
    fn tls_spelling_mistakes_are_named() {
        let err = parse(&format!("{SECRET}tls: {{selfsigned: true}}\n")).unwrap_err();
        assert!(err.to_string().contains("selfsigned"), "{err}");
        let err = parse(&format!("{SECRET}tls: {{self_signed: yes please}}\n")).unwrap_err();
        assert!(err.to_string().contains("tls.self_signed"), "{err}");
    }

    /// Without touching the environment: what the file says is what is in effect.
    #[cfg(unix)]
    #[test]
    fn a_file_exposing_its_secret_is_refused_one_without_a_secret_is_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let db = crate::issuer::store::tests::TempDb::new();
        for (text, holds_secret) in [(SECRET, true), ("project_id: p\n", false)] {
            let file = db.write_private("issuer.yaml", text);
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (read, meta) = private_files::read_config(&file).unwrap();
            let c = IssuerConfig::from_yaml_str(&read, &file).unwrap();
            assert_eq!(c.secret_is_from_config(), holds_secret);
            let checked = c.check_file_access(&file, &meta);
            assert_eq!(checked.is_err(), holds_secret, "{text}: {checked:?}");
        }
        // A hand-built config with the secret replaced is not judged by any file.
        let mut c = parse(SECRET).unwrap();
        c.secret_overridden = true;
        assert!(!c.secret_is_from_config());
    }

    /// The management key secret in the file exposes as much as the project secret does.
    #[cfg(unix)]
    #[test]
    fn a_file_exposing_the_management_key_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let db = crate::issuer::store::tests::TempDb::new();
        let file = db.write_private(
            "issuer.yaml",
            "management:\n  key_secret: management-secret-0123456789\n",
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (read, meta) = private_files::read_config(&file).unwrap();
        let mut c = IssuerConfig::from_yaml_str(&read, &file).unwrap();
        assert!(!c.secret_is_from_config());
        let err = c.check_file_access(&file, &meta).unwrap_err();
        assert!(err.to_string().contains("management.key_secret"), "{err}");
        c.management.secret_overridden = true;
        assert!(c.check_file_access(&file, &meta).is_ok());
    }

    #[test]
    fn management_section_defaults_and_checks() {
        let c = parse(SECRET).unwrap();
        c.validate().unwrap();
        assert_eq!(c.management.key_id, "workspace-key-local");
        assert!(c.management.key_secret.is_none());
        assert_eq!(
            c.management.project_slug(&c.project_id),
            "project-test-local"
        );
        assert_eq!(c.management.environment_slug, "test");
        let c = parse(&format!(
            "{SECRET}management:\n  key_id: k1\n  key_secret: long-enough-secret-1234\n  \
             project_slug: my-project\n  environment_slug: live\n"
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.management.project_slug(&c.project_id), "my-project");
        assert!(!format!("{c:?}").contains("long-enough-secret-1234"));
        for (yaml, field) in [
            (
                "management:\n  key_secret: short\n",
                "management.key_secret",
            ),
            (
                "management:\n  key_secret: has:colon-0123456789\n",
                "management.key_secret",
            ),
            ("management:\n  key_id: ''\n", "management.key_id"),
            ("management:\n  key_id: a b\n", "management.key_id"),
            (
                "management:\n  project_slug: a/b\n",
                "management.project_slug",
            ),
            (
                "management:\n  environment_slug: ''\n",
                "management.environment_slug",
            ),
        ] {
            let err = parse(&format!("{SECRET}{yaml}"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
        let err = parse(&format!("{SECRET}management:\n  key_secrt: x\n")).unwrap_err();
        assert!(err.to_string().contains("key_secrt"), "{err}");
    }
}
