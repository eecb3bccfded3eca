//! The value types of a provider's token rules: accepted algorithms, how the client
//! authenticates at the token endpoint, one-or-many lists, and the bounds of the verification
//! durations.

use std::time::Duration;

use serde::Deserialize;

/// The most clock skew `provider.leeway` may forgive. RFC 7519 §4.1.4 speaks of "a small leeway,
/// usually no more than a few minutes"; NTP-synchronised hosts differ by well under a second, so
/// 5 minutes covers a badly drifting clock while keeping an expired token from living on.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Bounds of `provider.jwks_min_refetch_interval`. Under 1 s a stream of tokens with made-up
/// `kid`s turns into a stream of JWKS fetches at the provider; over 1 h the first token signed
/// with a freshly rotated key may be refused for an hour.
pub const JWKS_MIN_REFETCH_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// Bounds of `provider.max_token_age`. Under a second every token is too old by the time it
/// arrives; past a day the age bound is looser than any access token's own lifetime, and a
/// bounded age keeps `iat + max_token_age` far from overflow.
pub const MAX_TOKEN_AGE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (RFC 6749 §2.3.1).
    #[default]
    ClientSecretPost,
    /// HTTP Basic with form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
}

/// A JWS algorithm the sidecar may accept. Only asymmetric ones: a shared-secret (HMAC) token
/// could be minted by anyone holding the JWKS's public material (RFC 8725 §3.1).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Algorithm::RS256 => A::RS256,
            Algorithm::RS384 => A::RS384,
            Algorithm::RS512 => A::RS512,
            Algorithm::PS256 => A::PS256,
            Algorithm::PS384 => A::PS384,
            Algorithm::PS512 => A::PS512,
            Algorithm::ES256 => A::ES256,
            Algorithm::ES384 => A::ES384,
            Algorithm::EdDSA => A::EdDSA,
        }
    }
}

/// One value or a list, as YAML users write either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}
