//! Scope semantics as Stytch's SDKs define them: a scope is `action:resource` or a bare word; a
//! required `action:resource` is met by the same action on the same resource or on `*`; a bare
//! scope (including `*`) is met only by itself.

pub use crate::config::policy::ScopeClaim;

/// A well-formed scope: `action:resource` with both parts non-empty, or a bare word. No spaces,
/// no control characters, at most one `:`.
pub fn is_valid(scope: &str) -> bool {
    if scope.is_empty() || !scope.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    match scope.split_once(':') {
        None => true,
        Some((action, resource)) => {
            !action.is_empty() && !resource.is_empty() && !resource.contains(':')
        }
    }
}

/// Whether one granted scope meets one required scope. Malformed granted scopes meet nothing.
pub fn meets(granted: &str, required: &str) -> bool {
    if granted == required {
        return is_valid(granted);
    }
    if !is_valid(granted) {
        return false;
    }
    match (granted.split_once(':'), required.split_once(':')) {
        (Some((ga, gr)), Some((ra, _))) => ga == ra && gr == "*",
        _ => false,
    }
}

/// Whether any of `granted` meets `required`.
pub fn granted<S: AsRef<str>>(granted: &[S], required: &str) -> bool {
    granted.iter().any(|g| meets(g.as_ref(), required))
}

/// The scopes a token grants: the space-separated `scope` string claim (RFC 8693 / Stytch), or
/// the `scp` array claim (Okta, Azure), as configured.
pub fn from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    source: ScopeClaim,
) -> Vec<String> {
    let from_scope = || {
        claims.get("scope").and_then(|v| v.as_str()).map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    };
    let from_scp = || {
        claims.get("scp").and_then(|v| v.as_array()).map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .map(str::to_owned)
                .collect()
        })
    };
    match source {
        ScopeClaim::Scope => from_scope(),
        ScopeClaim::Scp => from_scp(),
        ScopeClaim::Auto => from_scope().or_else(from_scp),
    }
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stytch_semantics() {
        let cases = [
            ("read:orders", "read:orders", true),
            ("read:*", "read:orders", true),
            ("write:*", "read:orders", false),
            ("read:orders", "read:*", false),
            ("*:orders", "read:orders", false),
            ("*", "*", true),
            ("*", "read:orders", false),
            ("*", "admin", false),
            ("admin", "admin", true),
            ("admin", "admin:x", false),
            ("read:order", "read:orders", false),
            ("READ:orders", "read:orders", false),
            // Malformed granted scopes meet nothing, not even themselves.
            ("read:", "read:", false),
            (":orders", ":orders", false),
            ("a:b:c", "a:b:c", false),
            ("read:*:x", "read:orders", false),
            ("", "", false),
        ];
        for (g, r, want) in cases {
            assert_eq!(meets(g, r), want, "granted {g:?} required {r:?}");
        }
    }

    #[test]
    fn validity() {
        for ok in ["read:orders", "read:*", "*", "admin", "a-b_c.d:e/f"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "read:", ":x", "a:b:c", "has space", "tab\there", "é:x"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn scopes_from_either_claim() {
        let c = |v: serde_json::Value| v.as_object().unwrap().clone();
        let both = c(json!({"scope": "read:a  write:b", "scp": ["x"]}));
        assert_eq!(
            from_claims(&both, ScopeClaim::Auto),
            vec!["read:a", "write:b"]
        );
        assert_eq!(from_claims(&both, ScopeClaim::Scp), vec!["x"]);
        let scp = c(json!({"scp": ["read:a", 7, "write:b"]}));
        assert_eq!(
            from_claims(&scp, ScopeClaim::Auto),
            vec!["read:a", "write:b"]
        );
        assert!(from_claims(&scp, ScopeClaim::Scope).is_empty());
        assert!(
            from_claims(&c(json!({"scope": ["not", "a string"]})), ScopeClaim::Scope).is_empty()
        );
    }
}
