//! The optional parts this binary may have been built without (Cargo features, all on by
//! default), and the one line a setting that needs a missing part is refused with. Settings are
//! checked by the module that owns them (`config` for `provider.kind: embedded` and
//! `cache.shared`, `otel` for the `OTEL_*` variables); this module only words the refusal, so
//! every part says it the same way.

/// The embedded issuer, `provider.kind: embedded`, and the `issuer`, `clients` and `demo`
/// commands.
pub const ISSUER: &str = "issuer";
/// The fleet-wide token cache tier on Redis, `cache.shared`.
pub const SHARED_CACHE: &str = "shared-cache";
/// Trace export over OTLP/HTTP.
pub const OTEL: &str = "otel";

/// `"{what} needs the `{feature}` feature; this binary was built without it"`: the problem
/// half of a config error whose field names the setting.
pub fn missing(what: &str, feature: &str) -> String {
    format!(
        "{what} needs the `{feature}` feature; this binary was built without it (build with `--features {feature}`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_feature() {
        let line = missing("embedded", ISSUER);
        assert!(
            line.starts_with("embedded needs the `issuer` feature;"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
