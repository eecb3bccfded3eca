//! Turning verified claims into the identity headers the upstream trusts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::config::{ConfigError, IdentityConfig};
use crate::credentials::BearerToken;
use crate::defaults::MAX_IDENTITY_VALUE_BYTES;

/// An identity header to set upstream: its name (shared by every identity) and its value.
pub type IdentityHeader = (Arc<str>, Box<str>);

/// What an allowed check sends upstream for a verified credential, computed once per token and
/// cached. Kept small (one per cached credential): header names and remove lists are shared by
/// every identity, only the values are its own.
#[derive(Debug)]
pub struct Identity {
    /// Identity headers to set upstream, already sanitized.
    pub headers: Box<[IdentityHeader]>,
    /// Headers to remove upstream: credential headers, and identity headers not set here.
    pub remove: Arc<[Arc<str>]>,
    /// The client the token was issued to (`sub`), for logs.
    pub client_id: Box<str>,
    /// The scopes the token grants, for route policy.
    pub scopes: Box<[Box<str>]>,
    /// The access token, kept only while some route forwards it upstream
    /// (`upstream_credential: bearer`).
    pub access_token: Option<BearerToken>,
}

/// Where a header's value comes from: a top-level claim, or an RFC 6901 JSON Pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPath {
    Name(String),
    Pointer(String),
}

impl ClaimPath {
    pub fn parse(s: &str) -> Result<ClaimPath, String> {
        if s.is_empty() {
            return Err("expected a claim name or a JSON Pointer such as /ext/user_id".into());
        }
        if !s.starts_with('/') {
            return Ok(ClaimPath::Name(s.to_owned()));
        }
        // RFC 6901 §3: `~` must be followed by 0 or 1.
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.peek(), Some('0' | '1')) {
                return Err(format!(
                    "{s:?} is not a valid JSON Pointer (`~` must be `~0` or `~1`)"
                ));
            }
        }
        Ok(ClaimPath::Pointer(s.to_owned()))
    }

    fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        match self {
            ClaimPath::Name(n) => claims.get(n),
            ClaimPath::Pointer(p) => {
                let mut segments = p.split('/').skip(1);
                let first = unescape(segments.next()?);
                let mut v = claims.get(&first)?;
                for seg in segments {
                    v = v.pointer(&format!("/{seg}"))?;
                }
                Some(v)
            }
        }
    }
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

/// Why verified claims could not become identity headers. Never carries claim values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the access token has no {header} claim")]
    MissingClaim { header: String },
    #[error("the access token's claim for {header} is not a string or number")]
    NotScalar { header: String },
    #[error("the access token's claim for {header} is not a safe header value")]
    Unsafe { header: String },
    #[error("the access token's claim for {header} is a number too large to be exact")]
    InexactNumber { header: String },
}

/// The largest integer every JSON reader holds exactly (2^53 - 1, an IEEE 754 double's
/// mantissa): a larger user id would reach a JavaScript or Python-float upstream as some other
/// user's id.
const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// A JSON number as header text, or `None` when it is beyond ±(2^53 - 1): refused, never
/// rounded.
fn exact_number(n: &serde_json::Number) -> Option<String> {
    let exact = if let Some(u) = n.as_u64() {
        u <= MAX_EXACT_INTEGER
    } else if let Some(i) = n.as_i64() {
        i.unsigned_abs() <= MAX_EXACT_INTEGER
    } else {
        n.as_f64()
            .is_some_and(|f| f.is_finite() && f.abs() <= MAX_EXACT_INTEGER as f64)
    };
    exact.then(|| n.to_string())
}

/// The configured claim → header mappings.
#[derive(Debug, Clone)]
pub struct IdentityMap {
    mappings: Vec<(Arc<str>, ClaimPath, bool)>,
}

impl IdentityMap {
    /// Compiled from `identity`; a claim path that does not parse is refused, naming its header
    /// (`identity.headers.NAME`).
    pub fn new(config: &IdentityConfig) -> Result<Self, ConfigError> {
        let mut mappings = Vec::with_capacity(config.headers.len());
        for (name, claim) in &config.headers {
            let path = ClaimPath::parse(claim)
                .map_err(|p| ConfigError::invalid(&format!("identity.headers.{name}"), p))?;
            let header = name.to_ascii_lowercase();
            let required = config
                .required
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&header));
            mappings.push((header.into(), path, required));
        }
        Ok(IdentityMap { mappings })
    }

    /// The headers to set upstream. A missing, null or empty optional claim sets nothing (its
    /// header is still stripped); a missing required one, or any value that is not a plain
    /// string or exact number, or that could smuggle a header line, refuses the request.
    pub fn headers(
        &self,
        claims: &Map<String, Value>,
    ) -> Result<Vec<IdentityHeader>, IdentityError> {
        let mut out = Vec::with_capacity(self.mappings.len());
        for (header, path, required) in &self.mappings {
            let value = match path.lookup(claims) {
                None | Some(Value::Null) => {
                    if *required {
                        return Err(IdentityError::MissingClaim {
                            header: header.to_string(),
                        });
                    }
                    continue;
                }
                // An empty claim is no value: an optional header is left unset (and so
                // removed upstream), a required one refuses the request.
                Some(Value::String(s)) if s.is_empty() => {
                    if *required {
                        return Err(IdentityError::MissingClaim {
                            header: header.to_string(),
                        });
                    }
                    continue;
                }
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => {
                    exact_number(n).ok_or_else(|| IdentityError::InexactNumber {
                        header: header.to_string(),
                    })?
                }
                Some(_) => {
                    return Err(IdentityError::NotScalar {
                        header: header.to_string(),
                    });
                }
            };
            if value.len() > MAX_IDENTITY_VALUE_BYTES
                || !value.bytes().all(|b| (0x20..0x7f).contains(&b))
                || value.starts_with(' ')
                || value.ends_with(' ')
            {
                return Err(IdentityError::Unsafe {
                    header: header.to_string(),
                });
            }
            out.push((header.clone(), value.into_boxed_str()));
        }
        Ok(out)
    }
}

/// Builds the cached `Identity` of verified claims: the header values from the `IdentityMap`,
/// the remove list (every identity and credential header not set) shared among identities that
/// set the same headers, and the access token only when asked to keep it.
#[derive(Debug)]
pub struct IdentityBuilder {
    map: IdentityMap,
    /// Every header name that must not reach the upstream as the caller sent it.
    strip: Vec<Arc<str>>,
    /// The distinct remove lists handed out so far (a handful: one per set of unset optional
    /// headers).
    removes: Mutex<HashSet<Arc<[Arc<str>]>>>,
}

impl IdentityBuilder {
    /// `credential_headers`: the headers credentials are read from, stripped as well.
    pub fn new(map: IdentityMap, credential_headers: impl IntoIterator<Item = String>) -> Self {
        let mut strip: Vec<Arc<str>> = map.mappings.iter().map(|(h, _, _)| h.clone()).collect();
        for h in credential_headers {
            if !strip.iter().any(|s| **s == *h) {
                strip.push(h.into());
            }
        }
        IdentityBuilder {
            map,
            strip,
            removes: Mutex::default(),
        }
    }

    /// Every header stripped from a request with no identity (anonymous routes).
    pub fn strip(&self) -> &[Arc<str>] {
        &self.strip
    }

    /// What anonymous routes send upstream: no identity, every identity and credential header
    /// stripped.
    pub fn anonymous(&self) -> Identity {
        Identity {
            headers: Box::new([]),
            remove: self.shared_remove(self.strip.clone()),
            client_id: Box::default(),
            scopes: Box::new([]),
            access_token: None,
        }
    }

    pub fn build(
        &self,
        claims: &Map<String, Value>,
        scopes: Vec<String>,
        keep_token: Option<&str>,
    ) -> Result<Identity, IdentityError> {
        let headers = self.map.headers(claims)?;
        let remove = self
            .strip
            .iter()
            .filter(|h| !headers.iter().any(|(set, _)| set == *h))
            .cloned()
            .collect();
        let client_id = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("");
        Ok(Identity {
            headers: headers.into_boxed_slice(),
            remove: self.shared_remove(remove),
            client_id: client_id.into(),
            scopes: scopes.into_iter().map(String::into_boxed_str).collect(),
            access_token: keep_token.map(BearerToken::new),
        })
    }

    fn shared_remove(&self, remove: Vec<Arc<str>>) -> Arc<[Arc<str>]> {
        let mut known = self.removes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = known.get(remove.as_slice()) {
            return shared.clone();
        }
        let shared: Arc<[Arc<str>]> = remove.into();
        known.insert(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn map(headers: &[(&str, &str)], required: &[&str]) -> IdentityMap {
        IdentityMap::new(&IdentityConfig {
            headers: headers
                .iter()
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect::<BTreeMap<_, _>>(),
            required: required.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn maps_names_and_pointers() {
        let m = map(
            &[
                ("x-user-id", "user_id"),
                ("x-client-id", "sub"),
                ("x-org", "/ext/org~1id"),
            ],
            &["x-user-id"],
        );
        let got = m
            .headers(&claims(
                json!({"user_id": "user-1", "sub": "c-1", "ext": {"org/id": 42}}),
            ))
            .unwrap();
        assert_eq!(
            got,
            vec![
                ("x-client-id".into(), "c-1".into()),
                ("x-org".into(), "42".into()),
                ("x-user-id".into(), "user-1".into()),
            ]
        );
    }

    #[test]
    fn refuses_bad_claims() {
        let m = map(
            &[("x-user-id", "user_id"), ("x-client-id", "sub")],
            &["x-user-id"],
        );
        let long = "u".repeat(MAX_IDENTITY_VALUE_BYTES + 1);
        let cases = [
            (
                json!({"sub": "c"}),
                IdentityError::MissingClaim {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": null}),
                IdentityError::MissingClaim {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": {"id": 1}}),
                IdentityError::NotScalar {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": ["a"]}),
                IdentityError::NotScalar {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": true}),
                IdentityError::NotScalar {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": "a\r\nx-admin: 1"}),
                IdentityError::Unsafe {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": ""}),
                IdentityError::MissingClaim {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": 9_007_199_254_740_992u64}),
                IdentityError::InexactNumber {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": -9_007_199_254_740_992i64}),
                IdentityError::InexactNumber {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": u64::MAX}),
                IdentityError::InexactNumber {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": 1e300}),
                IdentityError::InexactNumber {
                    header: "x-user-id".into(),
                },
            ),
            (
                json!({"user_id": long}),
                IdentityError::Unsafe {
                    header: "x-user-id".into(),
                },
            ),
        ];
        for (c, want) in cases {
            assert_eq!(m.headers(&claims(c.clone())), Err(want), "{c}");
        }
        // An optional claim that is absent, null or empty sets nothing.
        for sub in [json!(null), json!("")] {
            let mut c = claims(json!({"user_id": "u"}));
            c.insert("sub".into(), sub.clone());
            assert_eq!(
                m.headers(&c).unwrap(),
                vec![("x-user-id".into(), "u".into())],
                "{sub}"
            );
        }
        assert_eq!(
            m.headers(&claims(json!({"user_id": "u"}))).unwrap(),
            vec![("x-user-id".into(), "u".into())]
        );
    }

    /// Numbers up to ±(2^53 - 1) pass exactly as written; one past is refused, not rounded.
    #[test]
    fn exact_numbers_only() {
        let m = map(&[("x-user-id", "user_id")], &["x-user-id"]);
        for (n, want) in [
            (json!(9_007_199_254_740_991u64), "9007199254740991"),
            (json!(-9_007_199_254_740_991i64), "-9007199254740991"),
            (json!(0), "0"),
            (json!(42), "42"),
            (json!(1.5), "1.5"),
        ] {
            let got = m.headers(&claims(json!({ "user_id": n }))).unwrap();
            assert_eq!(&*got[0].1, want, "{n}");
        }
        // Parsed from text, as a token's claims are: 2^53 + 1 would round to 2^53 in a double.
        let big: Map<String, Value> =
            serde_json::from_str(r#"{"user_id": 9007199254740993}"#).unwrap();
        assert!(matches!(
            m.headers(&big),
            Err(IdentityError::InexactNumber { .. })
        ));
        let huge: Map<String, Value> =
            serde_json::from_str(r#"{"user_id": 123456789012345678901234567890}"#).unwrap();
        assert!(matches!(
            m.headers(&huge),
            Err(IdentityError::InexactNumber { .. })
        ));
    }

    #[test]
    fn claim_paths_parse() {
        assert_eq!(
            ClaimPath::parse("user_id"),
            Ok(ClaimPath::Name("user_id".into()))
        );
        assert!(ClaimPath::parse("/a/~2").is_err());
        assert!(ClaimPath::parse("").is_err());
    }
}
