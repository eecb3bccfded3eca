//! Custom-claims templates in Stytch's style.
//!
//! A template is a JSON object in which `{{ client.… }}` variables may stand
//! only where a whole JSON value goes. Keeping variables out of strings and
//! keys means rendering can never produce broken JSON or let client metadata
//! inject extra claims: a variable is replaced by a JSON value, or, when it is
//! missing or null, its claim is left out. The template is parsed once (when
//! the configuration is loaded) so a mistake is reported at startup rather than
//! on the first token request.

use serde_json::{Map, Value};
use thiserror::Error;

/// Copies the user id kept in the client's trusted metadata into every token,
/// which is what the sidecar needs to tell users apart.
pub const DEFAULT_CLAIMS_TEMPLATE: &str = r#"{"user_id": {{ client.trusted_metadata.user_id }}}"#;

/// Stytch's limit on the serialized custom claims of one token.
pub const MAX_RENDERED_CLAIMS_BYTES: usize = 4096;

/// Claims the issuer sets itself. `scope` is not in Stytch's published list,
/// but letting a template override it would let trusted metadata widen what a
/// token grants, so it is refused too.
const RESERVED_CLAIMS: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope"];
const RESERVED_CLAIM_PREFIX: &str = "https://stytch.com/";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("claims template is not valid JSON once variables are set aside: {0}")]
    Syntax(String),
    #[error("claims template variable opened with `{{{{` at byte {0} is never closed with `}}}}`")]
    Unclosed(usize),
    #[error(
        "unknown claims template variable `{0}` (known: client.client_id, client.client_name, \
         client.scopes, client.trusted_metadata.<key>[.<key>…])"
    )]
    UnknownVariable(String),
    #[error(
        "claims template variables must be whole, unquoted JSON values; found `{{{{` inside a \
         string at byte {0}"
    )]
    VariableInString(usize),
    #[error("claims template variables may be used only as JSON values, not as object keys")]
    VariableAsKey,
    #[error("claims template must be a JSON object")]
    NotAnObject,
    #[error("claim `{0}` is reserved: the issuer sets it")]
    ReservedClaim(String),
    #[error(
        "rendered custom claims take {size} bytes, more than the {MAX_RENDERED_CLAIMS_BYTES} allowed"
    )]
    TooLarge { size: usize },
}

/// What a template may refer to: the client being issued a token.
#[derive(Debug, Clone, Copy)]
pub struct ClientContext<'a> {
    pub client_id: &'a str,
    pub client_name: &'a str,
    pub scopes: &'a [String],
    pub trusted_metadata: &'a Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Variable {
    ClientId,
    ClientName,
    Scopes,
    TrustedMetadata(Vec<String>),
}

impl Variable {
    fn parse(expr: &str) -> Result<Self, TemplateError> {
        let unknown = || TemplateError::UnknownVariable(expr.to_owned());
        let parts: Vec<&str> = expr.split('.').collect();
        match parts.as_slice() {
            ["client", "client_id"] => Ok(Self::ClientId),
            ["client", "client_name"] => Ok(Self::ClientName),
            ["client", "scopes"] => Ok(Self::Scopes),
            ["client", "trusted_metadata", path @ ..] if !path.is_empty() => {
                if path.iter().all(|seg| is_path_segment(seg)) {
                    Ok(Self::TrustedMetadata(
                        path.iter().map(|s| (*s).to_owned()).collect(),
                    ))
                } else {
                    Err(unknown())
                }
            }
            _ => Err(unknown()),
        }
    }

    /// `None` for a missing or null value: the caller drops the claim.
    fn resolve(&self, ctx: &ClientContext<'_>) -> Option<Value> {
        let value = match self {
            Self::ClientId => Value::String(ctx.client_id.to_owned()),
            Self::ClientName if ctx.client_name.is_empty() => return None,
            Self::ClientName => Value::String(ctx.client_name.to_owned()),
            Self::Scopes => Value::Array(
                ctx.scopes
                    .iter()
                    .map(|s| Value::String(s.clone()))
                    .collect(),
            ),
            Self::TrustedMetadata(path) => {
                let (first, rest) = path.split_first()?;
                let mut current = ctx.trusted_metadata.get(first)?;
                for seg in rest {
                    current = current.as_object()?.get(seg)?;
                }
                current.clone()
            }
        };
        (!value.is_null()).then_some(value)
    }
}

fn is_path_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Literal(Value),
    Var(Variable),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn render(&self, ctx: &ClientContext<'_>) -> Option<Value> {
        match self {
            Node::Literal(v) => Some(v.clone()),
            Node::Var(var) => var.resolve(ctx),
            Node::Array(items) => Some(Value::Array(
                items.iter().filter_map(|n| n.render(ctx)).collect(),
            )),
            Node::Object(entries) => Some(Value::Object(render_entries(entries, ctx))),
        }
    }
}

fn render_entries(entries: &[(String, Node)], ctx: &ClientContext<'_>) -> Map<String, Value> {
    entries
        .iter()
        .filter_map(|(k, n)| n.render(ctx).map(|v| (k.clone(), v)))
        .collect()
}

/// A parsed, validated claims template.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimsTemplate {
    source: String,
    claims: Vec<(String, Node)>,
}

impl Default for ClaimsTemplate {
    fn default() -> Self {
        // The default template is a constant that the tests parse, so this
        // cannot fail; fall back to "no custom claims" rather than panic.
        Self::parse(DEFAULT_CLAIMS_TEMPLATE).unwrap_or_else(|_| Self {
            source: "{}".into(),
            claims: Vec::new(),
        })
    }
}

impl ClaimsTemplate {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let (json, vars, marker) = replace_variables(source)?;
        let value: Value =
            serde_json::from_str(&json).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(TemplateError::NotAnObject);
        };
        let mut claims = Vec::with_capacity(map.len());
        for (key, value) in map {
            if key.contains(&marker) {
                return Err(TemplateError::VariableAsKey);
            }
            if RESERVED_CLAIMS.contains(&key.as_str()) || key.starts_with(RESERVED_CLAIM_PREFIX) {
                return Err(TemplateError::ReservedClaim(key));
            }
            claims.push((key, to_node(value, &marker, &vars)?));
        }
        Ok(Self {
            source: source.to_owned(),
            claims,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every `client.trusted_metadata.…` path the template reads, in the
    /// order they appear, without repeats.
    pub fn metadata_paths(&self) -> Vec<Vec<String>> {
        fn walk(node: &Node, out: &mut Vec<Vec<String>>) {
            match node {
                Node::Var(Variable::TrustedMetadata(path)) => {
                    if !out.contains(path) {
                        out.push(path.clone());
                    }
                }
                Node::Array(items) => items.iter().for_each(|n| walk(n, out)),
                Node::Object(entries) => entries.iter().for_each(|(_, n)| walk(n, out)),
                Node::Literal(_) | Node::Var(_) => {}
            }
        }
        let mut out = Vec::new();
        for (_, node) in &self.claims {
            walk(node, &mut out);
        }
        out
    }

    /// The trusted-metadata path whose value becomes top-level claim
    /// `claim`, when the template sets that claim straight from one.
    pub fn claim_metadata_path(&self, claim: &str) -> Option<&[String]> {
        self.claims.iter().find_map(|(name, node)| match node {
            Node::Var(Variable::TrustedMetadata(path)) if name == claim => Some(path.as_slice()),
            _ => None,
        })
    }

    /// The metadata paths the template reads that `metadata` lacks (or
    /// holds as null), dotted; their claims would be left out of tokens.
    pub fn missing_metadata(&self, metadata: &Map<String, Value>) -> Vec<String> {
        self.metadata_paths()
            .into_iter()
            .filter(|path| {
                let mut current = None::<&Value>;
                for (i, seg) in path.iter().enumerate() {
                    current = if i == 0 {
                        metadata.get(seg)
                    } else {
                        current.and_then(Value::as_object).and_then(|m| m.get(seg))
                    };
                }
                current.is_none_or(Value::is_null)
            })
            .map(|path| path.join("."))
            .collect()
    }

    /// Renders the custom claims for one client, enforcing the size limit.
    pub fn render(&self, ctx: &ClientContext<'_>) -> Result<Map<String, Value>, TemplateError> {
        let claims = render_entries(&self.claims, ctx);
        let size = serde_json::to_string(&claims).map_or(usize::MAX, |s| s.len());
        if size > MAX_RENDERED_CLAIMS_BYTES {
            return Err(TemplateError::TooLarge { size });
        }
        Ok(claims)
    }
}

/// Swaps each `{{ … }}` outside strings for a JSON string holding a marker
/// plus the variable's index, so serde_json can parse the rest. The marker is
/// random per parse, so no literal in the template can pose as a variable.
fn replace_variables(source: &str) -> Result<(String, Vec<Variable>, String), TemplateError> {
    let marker = format!("\u{1}m2m-var-{}-", crate_random_hex());
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len() + 32);
    let mut vars = Vec::new();
    let mut copied_up_to = 0;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let opens_variable = bytes[i] == b'{' && bytes.get(i + 1) == Some(&b'{');
        if in_string {
            if escaped {
                escaped = false;
            } else if bytes[i] == b'\\' {
                escaped = true;
            } else if bytes[i] == b'"' {
                in_string = false;
            } else if opens_variable {
                return Err(TemplateError::VariableInString(i));
            }
            i += 1;
        } else if bytes[i] == b'"' {
            in_string = true;
            i += 1;
        } else if opens_variable {
            let rest = &source[i + 2..];
            let len = rest.find("}}").ok_or(TemplateError::Unclosed(i))?;
            vars.push(Variable::parse(rest[..len].trim())?);
            out.push_str(&source[copied_up_to..i]);
            // The marker holds only JSON-safe characters apart from \u{1},
            // which must be escaped inside a JSON string.
            out.push('"');
            out.push_str(&marker.replace('\u{1}', "\\u0001"));
            out.push_str(&(vars.len() - 1).to_string());
            out.push('"');
            i += 2 + len + 2;
            copied_up_to = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&source[copied_up_to..]);
    Ok((out, vars, marker))
}

fn to_node(value: Value, marker: &str, vars: &[Variable]) -> Result<Node, TemplateError> {
    Ok(match value {
        Value::String(s) => match s
            .strip_prefix(marker)
            .and_then(|idx| idx.parse::<usize>().ok())
            .and_then(|idx| vars.get(idx))
        {
            Some(var) => Node::Var(var.clone()),
            None => Node::Literal(Value::String(s)),
        },
        Value::Array(items) => Node::Array(
            items
                .into_iter()
                .map(|v| to_node(v, marker, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                if k.contains(marker) {
                    return Err(TemplateError::VariableAsKey);
                }
                entries.push((k, to_node(v, marker, vars)?));
            }
            Node::Object(entries)
        }
        other => Node::Literal(other),
    })
}

fn crate_random_hex() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx<'a>(meta: &'a Map<String, Value>, scopes: &'a [String]) -> ClientContext<'a> {
        ClientContext {
            client_id: "m2m-client-test-1",
            client_name: "orders bot",
            scopes,
            trusted_metadata: meta,
        }
    }

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn default_template_copies_user_id() {
        let t = ClaimsTemplate::default();
        assert_eq!(t.source(), DEFAULT_CLAIMS_TEMPLATE);
        let m = meta(json!({"user_id": "user-42", "other": 1}));
        let out = t.render(&ctx(&m, &[])).unwrap();
        assert_eq!(Value::Object(out), json!({"user_id": "user-42"}));
    }

    #[test]
    fn variables_keep_their_json_type() {
        let t = ClaimsTemplate::parse(
            r#"{"n": {{client.trusted_metadata.n}}, "o": {{ client.trusted_metadata.o }},
                "b": {{ client.trusted_metadata.b }}, "arr": {{ client.trusted_metadata.arr }}}"#,
        )
        .unwrap();
        let m = meta(json!({"n": 7, "o": {"x": [1]}, "b": false, "arr": ["a"]}));
        let out = t.render(&ctx(&m, &[])).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"n": 7, "o": {"x": [1]}, "b": false, "arr": ["a"]})
        );
    }

    #[test]
    fn missing_or_null_variable_omits_the_claim() {
        let t = ClaimsTemplate::parse(
            r#"{"a": {{ client.trusted_metadata.a }}, "b": {{ client.trusted_metadata.b }},
                "nested": {"c": {{ client.trusted_metadata.c }}, "k": 1},
                "list": [{{ client.trusted_metadata.a }}, 2], "lit": null}"#,
        )
        .unwrap();
        let m = meta(json!({"b": null}));
        let out = t.render(&ctx(&m, &[])).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"nested": {"k": 1}, "list": [2], "lit": null})
        );
    }

    #[test]
    fn client_fields_and_nested_metadata_paths() {
        let t = ClaimsTemplate::parse(
            r#"{"id": {{ client.client_id }}, "name": {{ client.client_name }},
                "scopes": {{ client.scopes }}, "org": {{ client.trusted_metadata.org.id }},
                "deep": {{ client.trusted_metadata.org.id.nope }}}"#,
        )
        .unwrap();
        let m = meta(json!({"org": {"id": "org-1"}}));
        let scopes = vec!["read:orders".to_owned()];
        let out = t.render(&ctx(&m, &scopes)).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"id": "m2m-client-test-1", "name": "orders bot",
                   "scopes": ["read:orders"], "org": "org-1"})
        );
    }

    #[test]
    fn variable_must_not_be_quoted() {
        let err = ClaimsTemplate::parse(r#"{"user_id": "{{ client.trusted_metadata.user_id }}"}"#)
            .unwrap_err();
        assert!(matches!(err, TemplateError::VariableInString(_)), "{err:?}");
        let err =
            ClaimsTemplate::parse(r#"{"greeting": "hi {{ client.client_id }}"}"#).unwrap_err();
        assert!(matches!(err, TemplateError::VariableInString(_)), "{err:?}");
    }

    #[test]
    fn variable_must_not_be_a_key() {
        let err = ClaimsTemplate::parse(r#"{ {{ client.client_id }}: 1 }"#).unwrap_err();
        assert_eq!(err, TemplateError::VariableAsKey);
        let err = ClaimsTemplate::parse(r#"{"a": { {{ client.client_id }}: 1 }}"#).unwrap_err();
        assert_eq!(err, TemplateError::VariableAsKey);
    }

    #[test]
    fn unknown_and_malformed_variables_are_refused() {
        for bad in [
            r#"{"a": {{ user.trusted_metadata.x }}}"#,
            r#"{"a": {{ client.trusted_metadata }}}"#,
            r#"{"a": {{ client.trusted_metadata..x }}}"#,
            r#"{"a": {{ client.trusted_metadata.x y }}}"#,
            r#"{"a": {{ client.secret }}}"#,
            r#"{"a": {{ }}}"#,
        ] {
            let err = ClaimsTemplate::parse(bad).unwrap_err();
            assert!(
                matches!(err, TemplateError::UnknownVariable(_)),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(
            ClaimsTemplate::parse(r#"{"a": {{ client.client_id"#).unwrap_err(),
            TemplateError::Unclosed(6)
        );
    }

    #[test]
    fn template_must_be_a_json_object() {
        assert_eq!(
            ClaimsTemplate::parse("{{ client.client_id }}").unwrap_err(),
            TemplateError::NotAnObject
        );
        assert_eq!(
            ClaimsTemplate::parse("[1]").unwrap_err(),
            TemplateError::NotAnObject
        );
        assert!(matches!(
            ClaimsTemplate::parse(r#"{"a": }"#).unwrap_err(),
            TemplateError::Syntax(_)
        ));
        assert!(matches!(
            ClaimsTemplate::parse("").unwrap_err(),
            TemplateError::Syntax(_)
        ));
        assert!(ClaimsTemplate::parse("{}").is_ok());
    }

    #[test]
    fn reserved_claims_are_refused() {
        for claim in RESERVED_CLAIMS {
            let src = format!(r#"{{"{claim}": 1}}"#);
            assert_eq!(
                ClaimsTemplate::parse(&src).unwrap_err(),
                TemplateError::ReservedClaim((*claim).to_owned())
            );
        }
        assert_eq!(
            ClaimsTemplate::parse(r#"{"https://stytch.com/session": 1}"#).unwrap_err(),
            TemplateError::ReservedClaim("https://stytch.com/session".into())
        );
        // Reserved names are fine below the top level: they are not claims.
        assert!(ClaimsTemplate::parse(r#"{"ctx": {"sub": 1}}"#).is_ok());
    }

    #[test]
    fn literal_strings_that_look_like_markers_stay_literal() {
        let t = ClaimsTemplate::parse(r#"{"a": "\u0001m2m-var-0", "b": "}}"}"#).unwrap();
        let m = Map::new();
        let out = t.render(&ctx(&m, &[])).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"a": "\u{1}m2m-var-0", "b": "}}"})
        );
    }

    #[test]
    fn metadata_paths_user_claim_and_missing_keys() {
        let t = ClaimsTemplate::parse(
            r#"{"user_id": {{ client.trusted_metadata.stytch_user_id }},
                "org": {"id": {{ client.trusted_metadata.org.id }}},
                "again": [{{ client.trusted_metadata.stytch_user_id }}, {{ client.client_id }}]}"#,
        )
        .unwrap();
        assert_eq!(
            t.metadata_paths(),
            vec![
                vec!["stytch_user_id".to_owned()],
                vec!["org".to_owned(), "id".to_owned()]
            ]
        );
        assert_eq!(
            t.claim_metadata_path("user_id"),
            Some(&["stytch_user_id".to_owned()][..])
        );
        assert_eq!(t.claim_metadata_path("org"), None);
        assert_eq!(
            t.missing_metadata(&meta(json!({}))),
            vec!["stytch_user_id", "org.id"]
        );
        assert_eq!(
            t.missing_metadata(&meta(json!({"stytch_user_id": null, "org": {"id": 7}}))),
            vec!["stytch_user_id"]
        );
        assert_eq!(
            t.missing_metadata(&meta(json!({"stytch_user_id": "u", "org": 5}))),
            vec!["org.id"]
        );
        assert!(
            t.missing_metadata(&meta(json!({"stytch_user_id": "u", "org": {"id": 1}})))
                .is_empty()
        );
        let plain = ClaimsTemplate::parse(r#"{"tier": "gold"}"#).unwrap();
        assert_eq!(plain.claim_metadata_path("user_id"), None);
        assert!(plain.missing_metadata(&Map::new()).is_empty());
    }

    #[test]
    fn rendered_size_is_limited() {
        let t = ClaimsTemplate::default();
        let small = meta(json!({"user_id": "x".repeat(100)}));
        assert!(t.render(&ctx(&small, &[])).is_ok());
        // {"user_id":"…"} adds 14 bytes around the value.
        let exact = meta(json!({"user_id": "x".repeat(MAX_RENDERED_CLAIMS_BYTES - 14)}));
        assert!(t.render(&ctx(&exact, &[])).is_ok());
        let big = meta(json!({"user_id": "x".repeat(MAX_RENDERED_CLAIMS_BYTES - 13)}));
        assert_eq!(
            t.render(&ctx(&big, &[])).unwrap_err(),
            TemplateError::TooLarge {
                size: MAX_RENDERED_CLAIMS_BYTES + 1
            }
        );
    }
}
