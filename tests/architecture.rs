//! The module graph has no circles (issue 14): dependencies point one way, config schema →
//! compiled settings → core → edges. Read from `src/` itself: each file is mapped to its module
//! (`src/x.rs`, `src/x/mod.rs` → `x`; `src/x/y.rs` → `x::y`), and every `crate::…` and `super::…`
//! path in its code (in `use` lines and in expressions alike, and a string that is wholly such a
//! path, as serde's `with = "crate::config::duration"`; not in comments, doc comments, other
//! string literals or `#[cfg(test)]` modules) is an edge. Two graphs must be acyclic: the one
//! between top-level modules, and within each folder the one between its child modules (a child
//! naming its parent's own items, as Rust modules do, is not an edge between siblings).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `src/`'s files as (module path, text); `lib.rs` and `main.rs` are crate roots, not modules.
fn sources(root: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("read src/").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under src/")
                .with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                continue;
            }
            out.push((
                module,
                std::fs::read_to_string(&path).expect("read a source"),
            ));
        }
    }
    out
}

/// The code alone: comments and string/char literals become spaces, so a `crate::` in prose or
/// in a message is never taken for a path.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        let skip = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |e| e + 2)
        } else if let Some(hashes) = raw_string_start(rest) {
            let close = format!("\"{}", "#".repeat(hashes));
            let open = hashes + 2;
            rest[open..]
                .find(&close)
                .map_or(rest.len(), |e| open + e + close.len())
        } else if b[i] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            // A string that is a path, such as serde's `with = "crate::config::duration"`,
            // names a module as surely as code does.
            let inner = &rest[1..j.min(rest.len())];
            if (inner.starts_with("crate::") || inner.starts_with("super::"))
                && inner
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                out.push(' ');
                out.push_str(inner);
                out.push(' ');
                i += j + 1;
                continue;
            }
            j + 1
        } else if b[i] == b'\'' && rest.as_bytes().get(1) == Some(&b'\\') {
            rest[2..].find('\'').map_or(1, |e| e + 3)
        } else if b[i] == b'\'' && rest.chars().nth(2) == Some('\'') {
            2 + rest.chars().nth(1).map_or(0, char::len_utf8)
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        let skip = skip.min(rest.len());
        out.extend(
            rest[..skip]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        i += skip;
    }
    out
}

/// `r"` or `r#…#"` at the start of `s` (not the tail of an identifier such as `for"`): the
/// number of `#`s.
fn raw_string_start(s: &str) -> Option<usize> {
    let after = s.strip_prefix('r')?;
    let hashes = after.len() - after.trim_start_matches('#').len();
    after[hashes..].starts_with('"').then_some(hashes)
}

/// Removes every `#[cfg(…test…)] mod name { … }` block.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_owned();
    let mut from = 0;
    while let Some(at) = out[from..].find("#[cfg(").map(|p| p + from) {
        let attr_end = out[at..].find(")]").map_or(out.len(), |e| at + e + 2);
        let attr = &out[at..attr_end];
        let is_test = attr
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .any(|w| w == "test");
        let item = out[attr_end..].trim_start();
        let item = item.strip_prefix("pub(crate)").unwrap_or(item).trim_start();
        let item = item.strip_prefix("pub").unwrap_or(item).trim_start();
        let block = out[attr_end..].find(['{', ';']).map(|k| attr_end + k);
        if let Some(open) =
            block.filter(|&k| is_test && item.starts_with("mod ") && out[k..].starts_with('{'))
        {
            let mut depth = 0;
            let mut end = out.len();
            for (k, c) in out[open..].char_indices() {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                if depth == 0 {
                    end = open + k + 1;
                    break;
                }
            }
            out.replace_range(at..end, "");
        } else {
            from = attr_end;
        }
    }
    out
}

/// Every module path `code` (in module `module`) names through `crate::` or `super::`, grouped
/// imports (`crate::{a, b::c}`) included; the paths may run on into item names.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> usize {
        s.len()
            - s.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_')
                .len()
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (at, _) in code.match_indices("::") {
        // The first segment of a path: `crate` or a run of `super`s, not preceded by `::`.
        let start = code[..at]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |p| p + 1);
        if at != start + code[start..].find("::").unwrap_or(usize::MAX) {
            continue;
        }
        let head = &code[start..at];
        if (start > 0 && bytes[start - 1] == b'$') || (head != "crate" && head != "super") {
            continue;
        }
        let mut base: Vec<String> = if head == "crate" {
            Vec::new()
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        let mut rest = &code[at + 2..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        let mut path = base.clone();
        loop {
            let n = ident(rest);
            if n == 0 {
                break;
            }
            path.push(rest[..n].to_owned());
            match rest[n..].strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The group's first level: `crate::{a, b::{c}, d as e}` names `a`, `b` and `d`.
            let mut depth = 0;
            let close = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth < 0
                })
                .map_or(group.len(), |(k, _)| k);
            let mut depth = 0;
            for item in group[..close].split(|c: char| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                c == ',' && depth == 0
            }) {
                let item = item.trim_start();
                let n = ident(item);
                let mut p = path.clone();
                match &item[..n] {
                    "" => continue,
                    "self" => {}
                    name => p.push(name.to_owned()),
                }
                out.push(p);
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// The graph between top-level modules, and the graph between the children of each folder.
fn graphs(files: &[(Vec<String>, String)]) -> BTreeMap<String, Graph> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut out: BTreeMap<String, Graph> = BTreeMap::new();
    for (module, text) in files {
        let code = without_test_modules(&code_only(text));
        for target in references(module, &code) {
            // The longest prefix of the path that is a module of ours.
            let Some(target) = (1..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|p| modules.contains(p))
            else {
                continue;
            };
            // The deepest folder both lie in, and the child of it each lies in.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let (Some(from), Some(to)) = (module.get(common), target.get(common)) else {
                continue; // one contains the other: a module and its own parent or child
            };
            let folder = if common == 0 {
                "crate".to_owned()
            } else {
                module[..common].join("::")
            };
            out.entry(folder)
                .or_default()
                .entry(from.clone())
                .or_default()
                .insert(to.clone());
        }
    }
    out
}

/// A circle in `graph`, as the nodes along it with the first repeated at the end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        done: &mut BTreeSet<&'a str>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

fn cycles(files: &[(Vec<String>, String)]) -> Vec<String> {
    graphs(files)
        .iter()
        .filter_map(|(folder, g)| find_cycle(g).map(|c| format!("{folder}: {}", c.join(" -> "))))
        .collect()
}

#[test]
fn modules_import_each_other_in_no_circle() {
    let files = sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(files.len() > 20, "src/ was not read");
    let graphs = graphs(&files);
    assert!(
        graphs.get("crate").is_some_and(|g| g.len() > 10),
        "no edges were found: {graphs:?}"
    );
    let found = cycles(&files);
    assert!(
        found.is_empty(),
        "module circles (issue 14):\n{}",
        found.join("\n")
    );
}

/// The check can fail: circles planted through `use`, a path in code, a grouped import and
/// `super::` are each found, and comments, strings and test modules are not read as edges.
#[test]
fn a_planted_circle_is_found() {
    let file = |m: &str, text: &str| {
        (
            m.split("::").map(str::to_owned).collect::<Vec<_>>(),
            text.to_owned(),
        )
    };
    let planted = [
        ("use crate::b::Thing;", "fn f() { crate::a::g() }"),
        (
            "use crate::{x, b::Thing};",
            "pub fn f() -> u8 { let _ = crate::a::g; 1 }",
        ),
        ("use crate::b;", "use crate::c::{self, D};"),
        (
            "use crate::b::T;",
            "#[serde(with = \"crate::a::duration\")]\nstruct S;",
        ),
    ];
    for (a, b) in planted {
        let files = [
            file("a", a),
            file("b", b),
            file("c", "use super::a::X;"),
            file("x", ""),
        ];
        let found = cycles(&files);
        assert!(
            found.iter().any(|c| c.starts_with("crate: ")),
            "{a} / {b}: {found:?}"
        );
    }
    // Inside a folder, through `super::` (also `super::super::`).
    let files = [
        file("p::q", "use super::r::X;"),
        file("p::r", "fn f() { super::super::p::q::g() }"),
        file("p", ""),
    ];
    assert_eq!(cycles(&files), vec!["p: q -> r -> q".to_owned()]);
    // Not edges: prose, messages, test modules, a parent's own items.
    let files = [
        file("a", "use crate::b::X;"),
        file(
            "b",
            "/// see crate::a\n// crate::a::f\nconst S: &str = \"see crate::a::f\";\nconst R: &str = r#\"crate::a\"#;\nconst C: char = '\"';\nfn f<'x>(s: &'x str) {}\n#[cfg(all(test, unix))]\nmod tests { use crate::a::X; fn g() { {} } }\nuse crate::b2::Y;",
        ),
        file("p::q", "use super::Parent;"),
        file("p", "use self::q::Z; fn f() { q::g() }"),
    ];
    assert_eq!(cycles(&files), Vec::<String>::new());
}

/// `unsafe` stays where it was measured to be needed (issue 16): `lib.rs` denies `unsafe_code`,
/// and the one opt-out is the demo's parent-death signal for Envoy, which runs between fork and
/// exec. A second `allow(unsafe_code)` or an `unsafe` block elsewhere fails here.
#[test]
fn unsafe_code_is_only_the_demos_parent_death_signal() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("read lib.rs");
    assert!(code_only(&lib).contains("#![deny(unsafe_code)]"), "lib.rs");
    let mut found = Vec::new();
    for (module, text) in sources(&root) {
        let code = code_only(&text);
        for needle in ["allow(unsafe_code)", "unsafe {", "unsafe fn", "unsafe impl"] {
            for _ in code.matches(needle) {
                found.push(format!("{}: {needle}", module.join("::")));
            }
        }
    }
    found.sort();
    assert_eq!(
        found,
        ["demo: allow(unsafe_code)", "demo: unsafe {"],
        "unsafe code outside the demo's parent-death signal"
    );
}
