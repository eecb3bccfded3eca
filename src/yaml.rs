//! YAML parse errors as one field path and one problem. `serde_yaml_ng` prefixes its message
//! with the path it was at (`cache: expected a duration …`) and `serde_path_to_error` knows the
//! full one (`cache.negative_ttl`); said together the path repeats itself. Used by every config
//! reader (the sidecar's, the issuer's, the policy file's).

/// Deserializes `text`; on failure, the full field path (`None` at the document's root) and the
/// problem without the YAML library's own (shorter) copy of the path.
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, (Option<String>, String)> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let problem = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            (None, problem)
        } else {
            let problem = without_path_prefix(&path, &problem).to_owned();
            (Some(path), problem)
        }
    })
}

/// `problem` less a leading `P: ` where `P` is `field` or a parent of it.
fn without_path_prefix<'a>(field: &str, problem: &'a str) -> &'a str {
    let Some((prefix, rest)) = problem.split_once(": ") else {
        return problem;
    };
    let parent = field == prefix
        || field
            .strip_prefix(prefix)
            .is_some_and(|tail| tail.starts_with('.') || tail.starts_with('['));
    if parent { rest } else { problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_libraries_short_path_is_dropped_once() {
        assert_eq!(
            without_path_prefix("cache.negative_ttl", "cache: expected a duration"),
            "expected a duration"
        );
        assert_eq!(
            without_path_prefix("listen", "listen: invalid type: map"),
            "invalid type: map"
        );
        assert_eq!(
            without_path_prefix("rules[0].match", "rules[0]: unknown field `x`"),
            "unknown field `x`"
        );
        // Not a path of this field: a message that merely has a colon is left whole.
        assert_eq!(
            without_path_prefix("cache.negative_ttl", "cachex: expected"),
            "cachex: expected"
        );
        assert_eq!(
            without_path_prefix("realm", "invalid type: map, expected a string"),
            "invalid type: map, expected a string"
        );
    }

    #[test]
    fn a_nested_custom_error_names_its_path_once() {
        fn refuse<'de, D: serde::Deserializer<'de>>(_: D) -> Result<u8, D::Error> {
            Err(serde::de::Error::custom("expected a duration"))
        }
        #[derive(Debug, serde::Deserialize)]
        struct Outer {
            #[allow(dead_code)]
            cache: Inner,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Inner {
            #[allow(dead_code)]
            #[serde(deserialize_with = "refuse")]
            negative_ttl: u8,
        }
        let (field, problem) = from_str::<Outer>("cache:\n  negative_ttl: 5x\n").unwrap_err();
        assert_eq!(field.as_deref(), Some("cache.negative_ttl"));
        assert_eq!(problem, "expected a duration at line 2 column 3");
    }
}
