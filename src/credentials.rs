//! Finding the caller's credential in the request headers: Basic client credentials
//! (RFC 6749 §2.3.1), a configured header pair, or a Bearer access token (RFC 6750 §2.1).
//! Anything ambiguous or malformed is refused here, before any network I/O.

use std::fmt;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::config::CredentialsConfig;
use crate::defaults::AUTHORIZATION;
use crate::request::Headers;
pub use crate::secret::Secret;

/// An access token presented by the caller. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(std::sync::Arc<str>);

impl BearerToken {
    /// Cloning shares the text: a cached token forwarded upstream is never copied per check.
    pub fn new(s: impl Into<std::sync::Arc<str>>) -> Self {
        BearerToken(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Where a client credential was found; it decides which headers are stripped upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Basic,
    HeaderPair,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Client {
        client_id: String,
        secret: Secret,
        source: Source,
    },
    Bearer(BearerToken),
}

/// Why no usable credential could be taken from a request. The messages are safe to send back:
/// they never contain what the caller sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("credentials are required")]
    Missing,
    #[error("the authorization scheme is not accepted here")]
    UnsupportedScheme,
    #[error("more than one credential was sent")]
    Ambiguous,
    #[error("the Authorization header is malformed")]
    MalformedAuthorization,
    #[error("the client id or secret is empty")]
    Empty,
    #[error("a client id header was sent without its secret header, or the reverse")]
    IncompletePair,
    #[error("a credential header is not valid UTF-8 text")]
    NotUtf8,
    #[error("a credential header is too long")]
    TooLong,
    #[error("the client id is malformed: it contains a control character")]
    ControlCharacter,
}

/// Base64 as RFC 7617 writes it, tolerating clients that drop the padding.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Takes credentials out of requests according to the configured sources.
#[derive(Debug, Clone)]
pub struct Extractor {
    basic: bool,
    bearer: bool,
    pair: Option<(String, String)>,
    max_bytes: usize,
}

impl Extractor {
    pub fn new(config: &CredentialsConfig) -> Self {
        Extractor {
            basic: config.basic,
            bearer: config.bearer,
            pair: config.headers.enabled.then(|| {
                (
                    config.headers.client_id.to_ascii_lowercase(),
                    config.headers.client_secret.to_ascii_lowercase(),
                )
            }),
            max_bytes: config.max_header_bytes,
        }
    }

    /// Header names (lower-case) that carry credentials and must never reach the upstream.
    pub fn credential_headers(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.basic || self.bearer {
            names.push(AUTHORIZATION.to_owned());
        }
        if let Some((id, secret)) = &self.pair {
            names.push(id.clone());
            names.push(secret.clone());
        }
        names
    }

    pub fn extract(&self, headers: &Headers) -> Result<Credential, CredentialError> {
        let from_authorization = if self.basic || self.bearer {
            self.read_authorization(headers)?
        } else {
            None
        };
        let from_pair = match &self.pair {
            Some((id, secret)) => self.read_pair(headers, id, secret)?,
            None => None,
        };
        match (from_authorization, from_pair) {
            (Some(a), Some(p)) if same_client(&a, &p) => Ok(a),
            (Some(_), Some(_)) => Err(CredentialError::Ambiguous),
            (Some(c), None) | (None, Some(c)) => Ok(c),
            (None, None) => Err(CredentialError::Missing),
        }
    }

    fn single<'a>(
        &self,
        headers: &'a Headers,
        name: &'a str,
    ) -> Result<Option<&'a str>, CredentialError> {
        let mut values = headers.get_all(name);
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(CredentialError::Ambiguous);
        }
        let value = first.ok_or(CredentialError::NotUtf8)?;
        if value.len() > self.max_bytes {
            return Err(CredentialError::TooLong);
        }
        Ok(Some(value))
    }

    fn read_authorization(&self, headers: &Headers) -> Result<Option<Credential>, CredentialError> {
        let Some(value) = self.single(headers, AUTHORIZATION)? else {
            return Ok(None);
        };
        let value = value.trim_matches([' ', '\t']);
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim_start_matches(' ');
        if scheme.eq_ignore_ascii_case("basic") && self.basic {
            decode_basic(rest).map(Some)
        } else if scheme.eq_ignore_ascii_case("bearer") && self.bearer {
            if rest.is_empty() || !is_token68(rest) {
                return Err(CredentialError::MalformedAuthorization);
            }
            Ok(Some(Credential::Bearer(BearerToken::new(rest))))
        } else {
            Err(CredentialError::UnsupportedScheme)
        }
    }

    fn read_pair(
        &self,
        headers: &Headers,
        id_name: &str,
        secret_name: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        let id = self.single(headers, id_name)?;
        let secret = self.single(headers, secret_name)?;
        match (id, secret) {
            (None, None) => Ok(None),
            (Some(id), Some(secret)) => {
                let (id, secret) = (
                    id.trim_matches([' ', '\t']),
                    secret.trim_matches([' ', '\t']),
                );
                if id.is_empty() || secret.is_empty() {
                    return Err(CredentialError::Empty);
                }
                // As for Basic: a client id ends up in logs and cache keys, and a tab, NUL or
                // line break in it is never a real one.
                if id.chars().any(char::is_control) {
                    return Err(CredentialError::ControlCharacter);
                }
                Ok(Some(Credential::Client {
                    client_id: id.to_owned(),
                    secret: Secret::new(secret),
                    source: Source::HeaderPair,
                }))
            }
            _ => Err(CredentialError::IncompletePair),
        }
    }
}

fn same_client(a: &Credential, b: &Credential) -> bool {
    match (a, b) {
        (
            Credential::Client {
                client_id: ia,
                secret: sa,
                ..
            },
            Credential::Client {
                client_id: ib,
                secret: sb,
                ..
            },
        ) => ia == ib && sa == sb,
        _ => false,
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, RFC 6749 §2.3.1. An unencoded value is
/// accepted as well, as long as it has no `%XX` escape or `+` that decoding would change.
fn decode_basic(encoded: &str) -> Result<Credential, CredentialError> {
    if encoded.is_empty() || !is_token68(encoded) {
        return Err(CredentialError::MalformedAuthorization);
    }
    let raw = BASIC_B64
        .decode(encoded)
        .map_err(|_| CredentialError::MalformedAuthorization)?;
    let text = String::from_utf8(raw).map_err(|_| CredentialError::NotUtf8)?;
    let (id, secret) = text
        .split_once(':')
        .ok_or(CredentialError::MalformedAuthorization)?;
    let id = form_decode(id)?;
    let secret = form_decode(secret)?;
    if id.is_empty() || secret.is_empty() {
        return Err(CredentialError::Empty);
    }
    if id.chars().any(char::is_control) {
        return Err(CredentialError::ControlCharacter);
    }
    Ok(Credential::Client {
        client_id: id,
        secret: Secret::new(secret),
        source: Source::Basic,
    })
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> Result<String, CredentialError> {
    let plus_decoded = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_decoded)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| CredentialError::NotUtf8)
}

/// RFC 7235 token68: what a Basic or Bearer credential may consist of.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extractor() -> Extractor {
        Extractor::new(&CredentialsConfig::default())
    }

    fn basic(raw: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn client(id: &str, secret: &str, source: Source) -> Credential {
        Credential::Client {
            client_id: id.into(),
            secret: Secret::new(secret),
            source,
        }
    }

    #[test]
    fn accepted_credentials() {
        use Source::*;
        let cases: Vec<(Vec<(&str, String)>, Credential)> = vec![
            (
                vec![("authorization", basic("id-1:s3cret"))],
                client("id-1", "s3cret", Basic),
            ),
            // RFC 6749 §2.3.1: each part form-urlencoded before joining.
            (
                vec![("authorization", basic("id%3A1:a%3Ab%2Bc+d"))],
                client("id:1", "a:b+c d", Basic),
            ),
            // Plain form, with a colon inside the secret.
            (
                vec![("authorization", basic("id-1:a:b"))],
                client("id-1", "a:b", Basic),
            ),
            (
                vec![("authorization", "bAsIc aWQtMTpzM2NyZXQ".to_owned())],
                client("id-1", "s3cret", Basic),
            ),
            (
                vec![
                    ("x-client-id", "id-2".into()),
                    ("x-client-secret", "sec".into()),
                ],
                client("id-2", "sec", HeaderPair),
            ),
            (
                vec![("authorization", "Bearer abc.def.ghi".into())],
                Credential::Bearer(BearerToken::new("abc.def.ghi")),
            ),
            // The same credential twice is not ambiguous.
            (
                vec![
                    ("authorization", basic("id-1:s3cret")),
                    ("x-client-id", "id-1".into()),
                    ("x-client-secret", "s3cret".into()),
                ],
                client("id-1", "s3cret", Basic),
            ),
        ];
        for (headers, want) in cases {
            let h: Headers = headers.iter().map(|(n, v)| (*n, v.clone())).collect();
            assert_eq!(extractor().extract(&h), Ok(want), "{headers:?}");
        }
    }

    #[test]
    fn refused_credentials() {
        use CredentialError::*;
        let long = format!("Bearer {}", "a".repeat(5000));
        let cases: Vec<(Vec<(&str, String)>, CredentialError)> = vec![
            (vec![], Missing),
            (vec![("x-other", "1".into())], Missing),
            (
                vec![("authorization", "Digest abc".into())],
                UnsupportedScheme,
            ),
            (
                vec![("authorization", basic("no-colon"))],
                MalformedAuthorization,
            ),
            (
                vec![("authorization", "Basic !!!".into())],
                MalformedAuthorization,
            ),
            (
                vec![("authorization", "Basic".into())],
                MalformedAuthorization,
            ),
            (vec![("authorization", basic(":secret"))], Empty),
            (vec![("authorization", basic("id:"))], Empty),
            (vec![("authorization", basic("id:%FF"))], NotUtf8),
            (
                vec![("authorization", "Bearer".into())],
                MalformedAuthorization,
            ),
            (
                vec![("authorization", "Bearer a b".into())],
                MalformedAuthorization,
            ),
            // Envoy joins repeated headers with ",".
            (
                vec![("authorization", "Bearer a, Bearer b".into())],
                MalformedAuthorization,
            ),
            (
                vec![
                    ("authorization", "Bearer a".into()),
                    ("authorization", "Bearer b".into()),
                ],
                Ambiguous,
            ),
            (
                vec![
                    ("authorization", basic("id-1:s3cret")),
                    ("x-client-id", "id-2".into()),
                    ("x-client-secret", "other".into()),
                ],
                Ambiguous,
            ),
            (vec![("x-client-id", "id-2".into())], IncompletePair),
            (vec![("x-client-secret", "s".into())], IncompletePair),
            (
                vec![("x-client-id", " ".into()), ("x-client-secret", "s".into())],
                Empty,
            ),
            (vec![("authorization", long)], TooLong),
            // Control characters in the client id, whichever way it comes.
            (vec![("authorization", basic("id\x01:s"))], ControlCharacter),
            (vec![("authorization", basic("id%0A1:s"))], ControlCharacter),
            (
                vec![
                    ("x-client-id", "id\t1".into()),
                    ("x-client-secret", "s".into()),
                ],
                ControlCharacter,
            ),
            (
                vec![
                    ("x-client-id", "id\u{0}".into()),
                    ("x-client-secret", "s".into()),
                ],
                ControlCharacter,
            ),
            (
                vec![
                    ("x-client-id", "a\u{7f}b".into()),
                    ("x-client-secret", "s".into()),
                ],
                ControlCharacter,
            ),
            (
                vec![
                    ("x-client-id", "a\u{85}b".into()),
                    ("x-client-secret", "s".into()),
                ],
                ControlCharacter,
            ),
        ];
        for (headers, want) in cases {
            let h: Headers = headers.iter().map(|(n, v)| (*n, v.clone())).collect();
            assert_eq!(extractor().extract(&h), Err(want), "{headers:?}");
        }
        let mut h = Headers::new();
        h.push("authorization", None);
        assert_eq!(extractor().extract(&h), Err(NotUtf8));
    }

    #[test]
    fn switched_off_sources_are_not_read() {
        let config = CredentialsConfig {
            basic: false,
            headers: crate::config::HeaderPairConfig {
                enabled: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Extractor::new(&config);
        let h: Headers = [("authorization", basic("id:s"))].into_iter().collect();
        assert_eq!(e.extract(&h), Err(CredentialError::UnsupportedScheme));
        let h: Headers = [("x-client-id", "id"), ("x-client-secret", "s")]
            .into_iter()
            .collect();
        assert_eq!(e.extract(&h), Err(CredentialError::Missing));
        assert_eq!(e.credential_headers(), vec!["authorization"]);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = client("id", "hunter2-secret", Source::Basic);
        let t = Credential::Bearer(BearerToken::new("eyJ.token.sig"));
        let shown = format!("{c:?} {t:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("eyJ"),
            "{shown}"
        );
    }
}
