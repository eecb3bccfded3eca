//! `credentials`: which request headers carry client credentials, and how long they may be.

use serde::Deserialize;

use super::ConfigError;
use super::text::check_header_name;
use crate::defaults;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// Accept `Authorization: Basic` client credentials.
    #[serde(default = "yes")]
    pub basic: bool,
    /// Accept `Authorization: Bearer` access tokens, verified without an exchange.
    #[serde(default = "yes")]
    pub bearer: bool,
    #[serde(default)]
    pub headers: HeaderPairConfig,
    /// Longest credential header value accepted; longer ones are refused unread.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

fn yes() -> bool {
    true
}
fn default_max_header_bytes() -> usize {
    defaults::MAX_CREDENTIAL_HEADER_BYTES
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            basic: true,
            bearer: true,
            headers: HeaderPairConfig::default(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderPairConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_client_id_header")]
    pub client_id: String,
    #[serde(default = "default_client_secret_header")]
    pub client_secret: String,
}

fn default_client_id_header() -> String {
    defaults::CLIENT_ID_HEADER.to_owned()
}
fn default_client_secret_header() -> String {
    defaults::CLIENT_SECRET_HEADER.to_owned()
}

impl Default for HeaderPairConfig {
    fn default() -> Self {
        HeaderPairConfig {
            enabled: true,
            client_id: default_client_id_header(),
            client_secret: default_client_secret_header(),
        }
    }
}

impl CredentialsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let c = self;
        if !c.basic && !c.bearer && !c.headers.enabled {
            return Err(ConfigError::invalid(
                "credentials",
                "every credential source is switched off; enable basic, bearer or headers",
            ));
        }
        if c.headers.enabled {
            check_header_name("credentials.headers.client_id", &c.headers.client_id)?;
            check_header_name(
                "credentials.headers.client_secret",
                &c.headers.client_secret,
            )?;
            if c.headers
                .client_id
                .eq_ignore_ascii_case(&c.headers.client_secret)
            {
                return Err(ConfigError::invalid(
                    "credentials.headers",
                    "client_id and client_secret must be different headers",
                ));
            }
        }
        if !(64..=65_536).contains(&c.max_header_bytes) {
            return Err(ConfigError::invalid(
                "credentials.max_header_bytes",
                "expected a number from 64 to 65536",
            ));
        }
        Ok(())
    }
}
