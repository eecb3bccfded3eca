//! `dynamic_metadata`: which keys the gRPC Check answer's dynamic metadata carries. Envoy parses,
//! copies and stores every key of every answer: about 4,000 instructions per key per request
//! (BENCHMARKS.md, issue 19), so a key nothing reads is worth leaving out.

use serde::Deserialize;

use super::ConfigError;

/// One key of `CheckResponse.dynamic_metadata` (README, "Dynamic metadata"). Every value is a
/// string; a key with nothing to say is left out (an anonymous route has no user, client, scope
/// or provider). Never a secret or a token: only what the identity headers and the logs already
/// show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataKey {
    /// Allowed: the value of the `x-user-id` identity header, when the identity sets one.
    UserId,
    /// Allowed: the authenticated client (the token's `sub`).
    ClientId,
    /// Allowed: the granted scopes, space-separated (RFC 6749 §3.3).
    Scope,
    /// Allowed: the provider's name (`default`, or a `providers` key).
    Provider,
    /// Both: the policy rule that decided, `default` for the policy's default (and for every
    /// check when no policy is configured). Absent on a denial made before any rule was
    /// consulted (a malformed path or host).
    Rule,
    /// Denied: the denial's stable reason, as in the logs and the `reason` metric label.
    Reason,
}

impl MetadataKey {
    pub const ALL: [MetadataKey; 6] = [
        MetadataKey::UserId,
        MetadataKey::ClientId,
        MetadataKey::Scope,
        MetadataKey::Provider,
        MetadataKey::Rule,
        MetadataKey::Reason,
    ];

    /// The key's name in the metadata Struct and in the config.
    pub const fn name(self) -> &'static str {
        match self {
            MetadataKey::UserId => "user_id",
            MetadataKey::ClientId => "client_id",
            MetadataKey::Scope => "scope",
            MetadataKey::Provider => "provider",
            MetadataKey::Rule => "rule",
            MetadataKey::Reason => "reason",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of metadata keys, checked on every answer: one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataKeys(u8);

impl MetadataKeys {
    pub const ALL: MetadataKeys = MetadataKeys((1 << MetadataKey::ALL.len()) - 1);
    pub const NONE: MetadataKeys = MetadataKeys(0);

    pub const fn has(self, key: MetadataKey) -> bool {
        self.0 & key.bit() != 0
    }

    pub const fn with(self, key: MetadataKey) -> MetadataKeys {
        MetadataKeys(self.0 | key.bit())
    }
}

impl Default for MetadataKeys {
    fn default() -> Self {
        MetadataKeys::ALL
    }
}

/// `dynamic_metadata: [user_id, client_id, …]`; absent: every key; `[]` (or nothing after the
/// colon, an empty list to the YAML reader): no metadata at all. `null` is refused rather than
/// read as either.
#[derive(Debug, Clone, Default)]
pub struct DynamicMetadataConfig(Option<Vec<String>>);

impl<'de> Deserialize<'de> for DynamicMetadataConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d).map(|names| DynamicMetadataConfig(Some(names)))
    }
}

impl DynamicMetadataConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    /// The keys to send (after `validate`: an invalid list is refused before this is asked).
    pub fn keys(&self) -> MetadataKeys {
        self.compile().unwrap_or_default()
    }

    /// The keys sent, by name, comma-separated (`none` for `[]`), for `check-config`.
    pub fn describe(&self) -> String {
        let keys = self.keys();
        let names: Vec<_> = MetadataKey::ALL
            .into_iter()
            .filter(|k| keys.has(*k))
            .map(MetadataKey::name)
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(",")
        }
    }

    fn compile(&self) -> Result<MetadataKeys, ConfigError> {
        let Some(names) = &self.0 else {
            return Ok(MetadataKeys::ALL);
        };
        let mut keys = MetadataKeys::NONE;
        for (i, name) in names.iter().enumerate() {
            let field = format!("dynamic_metadata[{i}]");
            let Some(key) = MetadataKey::ALL.into_iter().find(|k| k.name() == name) else {
                let known: Vec<_> = MetadataKey::ALL.iter().map(|k| k.name()).collect();
                return Err(ConfigError::invalid(
                    &field,
                    format!("unknown key {name:?}; expected one of {}", known.join(", ")),
                ));
            };
            if keys.has(key) {
                return Err(ConfigError::invalid(
                    &field,
                    format!("{name:?} is listed twice"),
                ));
            }
            keys = keys.with(key);
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> DynamicMetadataConfig {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    #[test]
    fn absent_means_every_key_and_an_empty_list_none() {
        assert_eq!(DynamicMetadataConfig::default().keys(), MetadataKeys::ALL);
        let none = parse("[]");
        none.validate().expect("valid");
        assert_eq!(none.keys(), MetadataKeys::NONE);
        let some = parse("[user_id, rule]");
        let keys = some.keys();
        assert!(keys.has(MetadataKey::UserId) && keys.has(MetadataKey::Rule));
        for k in [
            MetadataKey::ClientId,
            MetadataKey::Scope,
            MetadataKey::Provider,
            MetadataKey::Reason,
        ] {
            assert!(!keys.has(k), "{k:?}");
        }
    }

    #[test]
    fn an_unknown_or_repeated_key_is_refused_naming_its_entry() {
        let e = parse("[user_id, user]").validate().unwrap_err().to_string();
        assert!(
            e.contains("dynamic_metadata[1]") && e.contains("\"user\""),
            "{e}"
        );
        assert!(e.contains("client_id"), "the known keys are listed: {e}");
        let e = parse("[rule, reason, rule]")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dynamic_metadata[2]") && e.contains("twice"),
            "{e}"
        );
        // Names are exact: Envoy's metadata keys are case-sensitive.
        assert!(parse("[User_Id]").validate().is_err());
        // `null` says neither "all" nor "none": refused.
        assert!(serde_yaml_ng::from_str::<DynamicMetadataConfig>("null").is_err());
        assert!(serde_yaml_ng::from_str::<DynamicMetadataConfig>("user_id").is_err());
    }

    #[test]
    fn the_summary_names_the_keys_sent() {
        assert_eq!(
            DynamicMetadataConfig::default().describe(),
            "user_id,client_id,scope,provider,rule,reason"
        );
        assert_eq!(parse("[rule, user_id]").describe(), "user_id,rule");
        assert_eq!(parse("[]").describe(), "none");
    }
}
