//! Scope strings as RFC 6749 §3.3 defines them.
//!
//! Scopes end up space-joined in the token's `scope` claim, so a scope holding
//! a space, quote or control character would silently turn into several scopes
//! (or an unparsable claim) on the verifying side. Rejecting those up front is
//! the only safe choice.

use thiserror::Error;

/// Longest scope accepted; generous, but keeps tokens bounded.
const MAX_SCOPE_LEN: usize = 256;
const MAX_SCOPES: usize = 100;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error(
        "scope {0:?} is not a valid scope (use printable ASCII without spaces, quotes or backslashes)"
    )]
    Malformed(String),
    #[error("scope {0:?} is longer than {MAX_SCOPE_LEN} characters")]
    TooLong(String),
    #[error("at most {MAX_SCOPES} scopes are allowed")]
    TooMany,
    #[error(
        "scope {0:?} has more than one ':'; Stytch's SDKs read a scope as action:resource and \
         cannot check it"
    )]
    SdkUnparsable(String),
}

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`
pub fn is_valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// Validates a list of scopes and drops duplicates, keeping first-seen order
/// so listings look the way the scopes were entered.
pub fn normalize<I, S>(scopes: I) -> Result<Vec<String>, ScopeError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut out: Vec<String> = Vec::new();
    for scope in scopes {
        let scope = scope.into();
        if !is_valid_scope(&scope) {
            return Err(ScopeError::Malformed(scope));
        }
        if scope.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong(scope));
        }
        if !out.contains(&scope) {
            out.push(scope);
        }
        if out.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
    }
    Ok(out)
}

/// [`normalize`] for the scopes a client is granted, which Stytch's SDKs must
/// also be able to read: their `authenticate_token` splits each scope at `:`
/// into action and resource (for the `action:*` wildcard), so a scope with two
/// colons would never match. Whitespace and empty scopes are already refused by
/// [`is_valid_scope`].
pub fn normalize_client_scopes<I, S>(scopes: I) -> Result<Vec<String>, ScopeError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let scopes = normalize(scopes)?;
    if let Some(bad) = scopes.iter().find(|s| s.matches(':').count() > 1) {
        return Err(ScopeError::SdkUnparsable(bad.clone()));
    }
    Ok(scopes)
}

/// Parses a space-separated scope parameter. Runs of spaces are tolerated
/// (clients often build the string by joining with trailing spaces); any other
/// whitespace is malformed.
pub fn parse_space_separated(value: &str) -> Result<Vec<String>, ScopeError> {
    normalize(value.split(' ').filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_scopes_must_be_readable_by_the_sdks() {
        let fine: [&[&str]; 3] = [&["read:users", "write", "action:*"], &[":x"], &["x:"]];
        for ok in fine {
            assert!(
                normalize_client_scopes(ok.iter().copied()).is_ok(),
                "{ok:?}"
            );
        }
        for bad in ["a:b:c", "::", "urn:example:read"] {
            assert_eq!(
                normalize_client_scopes([bad]),
                Err(ScopeError::SdkUnparsable(bad.into()))
            );
        }
        for bad in ["", "a b", "tab\tx", "nl\n", "\u{a0}x"] {
            assert!(
                matches!(
                    normalize_client_scopes([bad]),
                    Err(ScopeError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn accepts_typical_scopes() {
        for s in ["read:orders", "write", "a/b.c-d_e~f", "!#[]", "https://x/y"] {
            assert!(is_valid_scope(s), "{s}");
        }
    }

    #[test]
    fn rejects_forbidden_characters() {
        for s in [
            "",
            "a b",
            "a\"b",
            "a\\b",
            "tab\there",
            "é",
            "nl\n",
            "\u{7f}",
        ] {
            assert!(!is_valid_scope(s), "{s:?}");
        }
    }

    #[test]
    fn parses_space_separated_and_dedupes() {
        assert_eq!(
            parse_space_separated(" read:orders  write read:orders ").unwrap(),
            vec!["read:orders", "write"]
        );
        assert_eq!(parse_space_separated("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn reports_the_bad_scope() {
        assert_eq!(
            parse_space_separated("ok bad\"one"),
            Err(ScopeError::Malformed("bad\"one".into()))
        );
        assert_eq!(
            parse_space_separated("a\tb"),
            Err(ScopeError::Malformed("a\tb".into()))
        );
    }

    #[test]
    fn enforces_limits() {
        let long = "x".repeat(MAX_SCOPE_LEN + 1);
        assert_eq!(normalize([long.clone()]), Err(ScopeError::TooLong(long)));
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert_eq!(normalize(many), Err(ScopeError::TooMany));
    }
}
