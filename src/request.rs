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

    /// Room for `n` more headers without growing.
    pub fn with_capacity(n: usize) -> Self {
        Headers {
            entries: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, name: &str, value: Option<String>) {
        self.entries.push((name.to_ascii_lowercase(), value));
    }

    /// As [`Headers::push`], taking the name's own buffer: lower-cased in place, no copy (Envoy
    /// already sends lower-case names, so usually nothing changes).
    pub fn push_owned(&mut self, mut name: String, value: Option<String>) {
        name.make_ascii_lowercase();
        self.entries.push((name, value));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_and_borrowed_names_are_lower_cased_alike() {
        let mut a = Headers::new();
        let mut b = Headers::with_capacity(2);
        for (name, value) in [("X-Client-Id", Some("c")), ("authorization", None)] {
            a.push(name, value.map(str::to_owned));
            b.push_owned(name.to_owned(), value.map(str::to_owned));
        }
        for h in [&a, &b] {
            assert_eq!(h.get_all("x-client-id").collect::<Vec<_>>(), [Some("c")]);
            assert_eq!(h.get_all("authorization").collect::<Vec<_>>(), [None]);
            assert_eq!(h.get_all("X-Client-Id").count(), 0);
        }
    }
}
