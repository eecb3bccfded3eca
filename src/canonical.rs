//! The one canonical form of a request's path and host that every policy rule is matched
//! against, computed once per check before any rule is consulted.
//!
//! Upstream frameworks treat many spellings of a path as the same route (`/v1/orders/`,
//! `//v1/orders`, `/v1/./orders`, `/v1/%6Frders`, `/v1/orders;jsessionid=1`), and a rule that
//! compared the raw text could be dodged by any of them. So the path is brought to one form
//! (RFC 3986 §2.3, §5.2.4, §6.2.2), and a path that cannot be brought to one form safely is
//! refused instead of guessed at: the caller gets 400 `invalid_request`.
//!
//! What must hold (and is property-tested): canonicalizing is idempotent, and a canonical path
//! contains no `//`, no `.` or `..` segment, no `;`, no `?` or `#`, no `%XX` of an unreserved
//! character, no lower-case hex in a `%XX`, and no character outside RFC 3986's `pchar` and `/`.

use std::net::Ipv6Addr;

/// Why a request's target was refused before any rule was consulted. The texts are ours, never
/// quote the request, and are plain enough for an RFC 6750 `error_description` (no `"` or `\`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request path must start with /")]
    NotOriginForm,
    #[error("the request path contains a control character or a backslash")]
    ForbiddenCharacter,
    #[error("the request path contains an encoded slash, backslash or semicolon")]
    EncodedDelimiter,
    #[error("the request path contains an invalid percent-encoding")]
    BadPercentEncoding,
    #[error("the request path does not decode to UTF-8")]
    NotUtf8,
    /// `.` or `..` (raw, percent-encoded, or with `;` parameters). Resolving them is only safe
    /// when the upstream resolves them the same way, and Envoy forwards them untouched unless
    /// `normalize_path` is on (and never resolves `..;`): a rule must not see `/healthz` where
    /// the upstream sees `/admin/../healthz`. Clients and a normalizing Envoy remove them
    /// before a request gets here (RFC 3986 §5.2.4), so only a crafted request carries one.
    #[error("the request path contains a dot segment")]
    DotSegment,
    /// A segment made of `;` parameters alone (`/;x/admin`): a servlet container reads it as an
    /// empty segment, most other servers as a name, so no single form is safe.
    #[error("the request path contains a segment that is only parameters")]
    ParameterOnlySegment,
    #[error("the request has no host")]
    MissingHost,
    #[error("the request host is not a valid host name")]
    InvalidHost,
}

impl TargetError {
    /// A short, stable reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            TargetError::MissingHost | TargetError::InvalidHost => "malformed_host",
            _ => "malformed_path",
        }
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §2.2.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// RFC 3986 `pchar` without `pct-encoded`, plus `/`: what a canonical path holds unencoded.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_encoded(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// The canonical form of a request path (`:path`, query and fragment included or not):
///
/// 1. the query and fragment are dropped; an empty path is `/` (RFC 3986 §6.2.3);
/// 2. `%XX` of an unreserved character is decoded, every other `%XX` is kept with upper-case hex,
///    and a character RFC 3986 does not allow in a path (space, `"`, `{`, non-ASCII, …) is
///    percent-encoded — so every spelling of a character has one form;
/// 3. each segment loses its `;` matrix parameters and repeated slashes are merged; a trailing
///    slash is kept (rules treat it alike, see `trim_trailing_slash`).
///
/// Refused: a path not starting with `/` (absolute-form, `*`), a control character or backslash
/// (raw or encoded), an encoded `/`, `\` or `;` (a server that decodes before splitting would
/// see another route), a `%` not followed by two hex digits, bytes that do not decode to UTF-8,
/// a `.` or `..` segment, in any spelling (see [`TargetError::DotSegment`]: refused rather than
/// removed, since upstreams disagree on them), and a segment of parameters alone.
pub fn canonical_path(raw: &str) -> Result<String, TargetError> {
    let raw = raw.split(['?', '#']).next().unwrap_or_default();
    if raw.is_empty() {
        return Ok("/".to_owned());
    }
    if !raw.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let bytes = raw.as_bytes();
    let mut spelled = String::with_capacity(raw.len());
    // Every octet the path stands for, to check that it is UTF-8 once decoded.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadPercentEncoding);
            };
            let v = hi << 4 | lo;
            if is_control(v) {
                return Err(TargetError::ForbiddenCharacter);
            }
            if matches!(v, b'/' | b'\\' | b';') {
                return Err(TargetError::EncodedDelimiter);
            }
            if is_unreserved(v) {
                spelled.push(char::from(v));
            } else {
                push_encoded(&mut spelled, v);
            }
            decoded.push(v);
            i += 3;
            continue;
        }
        if is_control(b) || b == b'\\' {
            return Err(TargetError::ForbiddenCharacter);
        }
        if is_path_char(b) {
            spelled.push(char::from(b));
        } else {
            push_encoded(&mut spelled, b);
        }
        decoded.push(b);
        i += 1;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::NotUtf8);
    }

    let mut kept: Vec<&str> = Vec::new();
    for segment in spelled[1..].split('/') {
        let (name, has_params) = match segment.split_once(';') {
            Some((name, _)) => (name, true),
            None => (segment, false),
        };
        match name {
            "" if has_params => return Err(TargetError::ParameterOnlySegment),
            "" => {}
            "." | ".." => return Err(TargetError::DotSegment),
            s => kept.push(s),
        }
    }
    // Segments were not removed, only merged: the output ends in a slash exactly when the path
    // did (after its last parameters).
    let trailing_slash = spelled.ends_with('/');
    let mut out = String::with_capacity(spelled.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A canonical path without its trailing slash (`/` stays `/`): what exact and template rules
/// compare, so that `/v1/orders/` matches the same rules as `/v1/orders`.
pub fn trim_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    }
}

/// A host split into its canonical name and the port it carried, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostParts {
    /// Lower case, one trailing dot removed; IPv6 literals in brackets, in RFC 5952 form.
    pub name: String,
    pub port: Option<String>,
}

/// The canonical form of a request's `Host` (or `:authority`): lower case, without a port, one
/// trailing dot removed (`Example.COM.:443` → `example.com`); an IPv6 literal in brackets and
/// RFC 5952 form (`[0:0::1]:8080` → `[::1]`).
///
/// Refused: an empty host, and one that is not an RFC 3986 host — with these narrowings: only
/// letters, digits, `-`, `_` and `.` in a name (no sub-delimiters such as `,` or `;`, no `~`, no
/// percent-encoding), no IPvFuture literal, no IPv6 zone, no empty label (`a..b`, `.a`, `a..`),
/// and a port of at most five digits.
pub fn canonical_host(raw: &str) -> Result<String, TargetError> {
    host_parts(raw).map(|h| h.name)
}

/// What a host name may hold: letters, digits, `-`, `_` and `.` (DNS names, IPv4 literals, and the
/// underscores some internal names carry). RFC 3986 would also allow sub-delimiters and `~`, but
/// `internal.example.com,api.example.com` (two Host headers joined by Envoy), `a;b` or `a!` name
/// no host anyone routes to, and a rule must not be dodged by one (RFC 9112 §3.2: a request with
/// several Host headers is answered 400).
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

pub fn host_parts(raw: &str) -> Result<HostParts, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::MissingHost);
    }
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(TargetError::InvalidHost)?;
        let addr: Ipv6Addr = literal.parse().map_err(|_| TargetError::InvalidHost)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(TargetError::InvalidHost)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let valid = !name.is_empty()
            && name.bytes().all(is_host_char)
            && name.split('.').all(|label| !label.is_empty());
        if !valid {
            return Err(TargetError::InvalidHost);
        }
        (name.to_ascii_lowercase(), port)
    };
    if let Some(p) = port
        && (p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(TargetError::InvalidHost);
    }
    Ok(HostParts {
        name,
        port: port.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_path_has_one_form() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("/v1/orders", "/v1/orders"),
            ("/v1/orders/", "/v1/orders/"),
            ("/v1/orders?x=1", "/v1/orders"),
            ("/v1/orders#frag", "/v1/orders"),
            ("/v1/orders/?x=/..", "/v1/orders/"),
            ("//admin/users", "/admin/users"),
            ("/admin//users///", "/admin/users/"),
            ("/%61dmin", "/admin"),
            ("/%7Euser/%7e", "/~user/~"),
            ("/admin;jsessionid=1/users", "/admin/users"),
            ("/admin;", "/admin"),
            ("/admin;x/", "/admin/"),
            // Names that merely contain dots are names.
            ("/a.b/..c/.../c..", "/a.b/..c/.../c.."),
            ("/%2e%2e%2e/.x", "/.../.x"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%3Fb", "/a%3Fb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/a%20b", "/a%20b"),
            ("/a|b{c}", "/a%7Cb%7Bc%7D"),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
            ("/Admin", "/Admin"),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_path(raw).as_deref(), Ok(want), "{raw:?}");
        }
    }

    #[test]
    fn paths_that_cannot_be_made_canonical_are_refused() {
        use TargetError::*;
        let cases = [
            ("*", NotOriginForm),
            ("http://evil/admin", NotOriginForm),
            ("admin", NotOriginForm),
            ("/a%2fb", EncodedDelimiter),
            ("/a%2Fb", EncodedDelimiter),
            ("/a%5cb", EncodedDelimiter),
            ("/admin%3b/x", EncodedDelimiter),
            ("/a\\b", ForbiddenCharacter),
            ("/a\0b", ForbiddenCharacter),
            ("/a%00b", ForbiddenCharacter),
            ("/a\tb", ForbiddenCharacter),
            ("/a%0d%0ab", ForbiddenCharacter),
            ("/a%7f", ForbiddenCharacter),
            ("/a%", BadPercentEncoding),
            ("/a%4", BadPercentEncoding),
            ("/a%zz", BadPercentEncoding),
            ("/a%%41", BadPercentEncoding),
            ("/a%ff", NotUtf8),
            ("/a%c3", NotUtf8),
            ("/..", DotSegment),
            ("/../admin", DotSegment),
            ("/a/../../admin", DotSegment),
            ("/%2e%2e/admin", DotSegment),
            ("/..;/admin", DotSegment),
            ("/./admin/./users", DotSegment),
            ("/a/b/..", DotSegment),
            ("/a/.", DotSegment),
            ("/a/%2e%2e/admin", DotSegment),
            ("/a/%2E%2E/admin", DotSegment),
            ("/a/.%2e/admin", DotSegment),
            ("/admin/.%2e;/healthz", DotSegment),
            ("/admin/%2e%2e;x=1/healthz", DotSegment),
            ("/a/..;/admin", DotSegment),
            ("/.;x/admin", DotSegment),
            ("/a/.;", DotSegment),
            ("/healthz/../admin?x", DotSegment),
            ("/;x/admin", ParameterOnlySegment),
            ("/a/;/b", ParameterOnlySegment),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_path(raw), Err(want), "{raw:?}");
            assert_eq!(want.reason(), "malformed_path");
        }
    }

    #[test]
    fn trailing_slash_is_trimmed_for_comparison_only() {
        assert_eq!(trim_trailing_slash("/"), "/");
        assert_eq!(trim_trailing_slash("/a/"), "/a");
        assert_eq!(trim_trailing_slash("/a"), "/a");
    }

    #[test]
    fn hosts_have_one_form() {
        let cases = [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM", "api.example.com"),
            ("internal.example.com.", "internal.example.com"),
            ("internal.example.com.:8443", "internal.example.com"),
            ("api.example.com:443", "api.example.com"),
            ("api.example.com:", "api.example.com"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[0:0:0:0:0:0:0:1]:8080", "[::1]"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            ("localhost", "localhost"),
            ("svc_internal.ns-1.example", "svc_internal.ns-1.example"),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_host(raw).as_deref(), Ok(want), "{raw:?}");
        }
        let bad = [
            "internal.example.com..",
            ".example.com",
            "a..b",
            ".",
            "a b",
            "a%2eb",
            "a/b",
            "a\\b",
            "a@b",
            "a\0b",
            "a:b:c",
            "a:99999a",
            "a:123456",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[fe80::1%25eth0]",
            "[v1.x]",
            "[1.2.3.4]",
            "::1",
            // Two Host headers joined by Envoy, and other sub-delimiters.
            "internal.example.com,api.example.com",
            "internal.example.com;x",
            "internal.example.com!",
            "a~b",
            "a$b",
            "a'b",
            "a(b)",
            "a*b",
            "a+b",
            "a=b",
            "a&b",
        ];
        for raw in bad {
            assert_eq!(
                canonical_host(raw),
                Err(TargetError::InvalidHost),
                "{raw:?}"
            );
        }
        assert_eq!(canonical_host(""), Err(TargetError::MissingHost));
        assert_eq!(TargetError::MissingHost.reason(), "malformed_host");
        assert_eq!(
            host_parts("A.b:8080"),
            Ok(HostParts {
                name: "a.b".into(),
                port: Some("8080".into())
            })
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Paths built from the characters that matter to canonicalization.
    fn raw_path() -> impl Strategy<Value = String> {
        "/?[/.;%aAbB2eEfF5cC3~?#\\\\ é-]{0,32}"
    }

    /// `segment` with its first character percent-encoded (all test segments are unreserved).
    fn encode_first(segment: &str, upper: bool) -> String {
        let mut chars = segment.chars();
        match chars.next() {
            Some(c) if upper => format!("%{:02X}{}", c as u32, chars.as_str()),
            Some(c) => format!("%{:02x}{}", c as u32, chars.as_str()),
            None => segment.to_owned(),
        }
    }

    /// One way to spell `segment` differently without changing what it names.
    fn respell(segment: &str, how: u8) -> String {
        match how % 6 {
            0 => encode_first(segment, false),
            1 => format!("//{segment}"),
            2 => encode_first(segment, true),
            3 => format!("/{segment}"),
            4 => format!("{segment};p=1"),
            _ => segment.to_owned(),
        }
    }

    proptest! {
        #[test]
        fn canonicalizing_is_idempotent(raw in raw_path()) {
            if let Ok(once) = canonical_path(&raw) {
                prop_assert_eq!(canonical_path(&once), Ok(once.clone()));
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"), "{}", once);
                prop_assert!(!once.contains([';', '?', '#', '\\', ' ']), "{}", once);
                for seg in once.split('/') {
                    prop_assert!(seg != "." && seg != "..", "{}", once);
                }
            }
        }

        #[test]
        fn every_respelling_has_the_same_canonical_form(
            segments in proptest::collection::vec("[a-zA-Z0-9_~.-]{1,6}", 1..6),
            hows in proptest::collection::vec(any::<u8>(), 6),
            trailing in any::<bool>(),
        ) {
            // "." and ".." are dot segments, not names.
            prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
            let plain = format!("/{}{}", segments.join("/"), if trailing { "/" } else { "" });
            let spelled = format!(
                "/{}{}",
                segments
                    .iter()
                    .zip(&hows)
                    .map(|(s, h)| respell(s, *h))
                    .collect::<Vec<_>>()
                    .join("/"),
                if trailing { "/" } else { "" }
            );
            prop_assert_eq!(canonical_path(&spelled), canonical_path(&plain), "{}", spelled);
        }

        #[test]
        fn hosts_canonicalize_idempotently(raw in "[a-zA-Z0-9.:\\[\\]%_-]{0,20}") {
            if let Ok(once) = canonical_host(&raw) {
                prop_assert_eq!(canonical_host(&once), Ok(once.clone()));
                prop_assert_eq!(once.to_ascii_lowercase(), once.clone());
                prop_assert!(!once.ends_with('.'));
            }
        }
    }

    #[test]
    fn error_texts_fit_an_rfc_6750_challenge() {
        use TargetError::*;
        for e in [
            NotOriginForm,
            ForbiddenCharacter,
            EncodedDelimiter,
            BadPercentEncoding,
            NotUtf8,
            DotSegment,
            ParameterOnlySegment,
            MissingHost,
            InvalidHost,
        ] {
            let text = e.to_string();
            assert!(
                text.bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
                "{text}"
            );
        }
    }
}
