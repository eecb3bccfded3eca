//! `identity`: which claims of a verified token go upstream in which headers. The claim paths
//! themselves are compiled (and refused, naming the header) by `crate::identity::IdentityMap`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;
use super::credentials::CredentialsConfig;
use super::text::check_header_name;
use crate::defaults;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Upstream header name → claim (a top-level claim name, or an RFC 6901 JSON Pointer such as
    /// `/ext/user_id` for nested claims).
    #[serde(default = "default_identity_headers")]
    pub headers: BTreeMap<String, String>,
    /// Header names that must get a value for a request to be allowed.
    #[serde(default = "default_required")]
    pub required: Vec<String>,
}

fn default_identity_headers() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            defaults::USER_ID_HEADER.to_owned(),
            defaults::USER_ID_CLAIM.to_owned(),
        ),
        (defaults::CLIENT_ID_OUT_HEADER.to_owned(), "sub".to_owned()),
    ])
}
fn default_required() -> Vec<String> {
    vec![defaults::USER_ID_HEADER.to_owned()]
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            headers: default_identity_headers(),
            required: default_required(),
        }
    }
}

impl IdentityConfig {
    /// Header names, and no header that carries a credential; `credentials` says which do.
    pub(super) fn validate(&self, c: &CredentialsConfig) -> Result<(), ConfigError> {
        if self.headers.is_empty() {
            return Err(ConfigError::invalid(
                "identity.headers",
                "at least one header must carry the caller's identity",
            ));
        }
        for header in self.headers.keys() {
            let field = format!("identity.headers.{header}");
            check_header_name(&field, header)?;
            // The client-id header may double as an identity header (the default `x-client-id`
            // comes in as the caller's claim and goes out overwritten with the verified `sub`);
            // a header that carries a secret may not.
            if header.eq_ignore_ascii_case("authorization")
                || (c.headers.enabled && header.eq_ignore_ascii_case(&c.headers.client_secret))
            {
                return Err(ConfigError::invalid(&field, "is a credential header"));
            }
        }
        for (i, name) in self.required.iter().enumerate() {
            if !self.headers.keys().any(|h| h.eq_ignore_ascii_case(name)) {
                return Err(ConfigError::invalid(
                    &format!("identity.required[{i}]"),
                    format!("{name:?} is not one of identity.headers"),
                ));
            }
        }
        Ok(())
    }
}
