//! The transport-free view of one request to authorize, built once at the edge.

use std::collections::BTreeMap;

/// Request headers as Envoy forwarded them: names lower-cased, one entry per value. A value that
/// was not valid UTF-8 is kept as `None`, so a credential header carrying one can be refused
/// rather than silently skipped.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    entries: Vec<(String, Option<String>)>,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    pub fn push(&mut self, name: &str, value: Option<String>) {
        self.entries.push((name.to_ascii_lowercase(), value));
    }

    /// Every value of `name` (already lower-case), in arrival order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.push(n.as_ref(), Some(v.into()));
        }
        h
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuthRequest {
    pub method: String,
    pub host: String,
    pub path: String,
    pub headers: Headers,
    /// Envoy's per-route `context_extensions`.
    pub context: BTreeMap<String, String>,
}
