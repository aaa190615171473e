//! No import cycles between the modules of any crate of the workspace.
//!
//! Each source file is a node; a `crate::a::b`, `super::x` or `self::x` path in a file's code (its
//! `#[cfg(test)]` part excluded) is an edge to the deepest module file the path names. The graph
//! must be acyclic: every layer imports only from layers below it (e.g. `dataplane::io`: `sys` <-
//! `batch` <- sockets <- `worker`; `control`: `config` <- `datastore`). And `control`'s product
//! modules never import `control::tooling` (the lab, demo and benchmarks).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Module path of every library source file under `src`, e.g. `io/udp.rs` -> `["io", "udp"]`.
/// Binary roots (`main.rs`, `bin/`) are separate crates and are left out.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            let rel = path.strip_prefix(src).expect("under src");
            if path.is_dir() {
                if rel != Path::new("bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || rel == Path::new("main.rs") {
                continue;
            }
            let mut segs: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
                segs.pop();
            }
            out.insert(segs, path);
        }
    }
    out
}

/// Every path starting with `crate::`, `super::` or `self::` in `code`, with `{a, b::c}` groups
/// expanded, as segment lists (the leading keyword kept).
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        let rest: String = bytes[i..bytes.len().min(i + 8)].iter().collect();
        let kw = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|k| rest.starts_with(k));
        match kw {
            Some(k) if boundary => {
                let mut j = i;
                let prefix = vec![k.trim_end_matches("::").to_string()];
                j += k.len();
                parse_tree(&bytes, &mut j, prefix, &mut out);
                i = j.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

fn ident(b: &[char], j: &mut usize) -> Option<String> {
    let start = *j;
    while *j < b.len() && (b[*j].is_alphanumeric() || b[*j] == '_') {
        *j += 1;
    }
    (*j > start).then(|| b[start..*j].iter().collect())
}

fn skip_ws(b: &[char], j: &mut usize) {
    while *j < b.len() && b[*j].is_whitespace() {
        *j += 1;
    }
}

/// Parses `seg(::seg)*` or a `{...}` group after `prefix::`, pushing every complete path.
fn parse_tree(b: &[char], j: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    skip_ws(b, j);
    if *j < b.len() && b[*j] == '{' {
        *j += 1;
        loop {
            skip_ws(b, j);
            if *j >= b.len() || b[*j] == '}' {
                *j += 1;
                return;
            }
            parse_tree(b, j, prefix.clone(), out);
            skip_ws(b, j);
            // Skip `as alias` and the comma.
            while *j < b.len() && b[*j] != ',' && b[*j] != '}' {
                *j += 1;
            }
            if *j < b.len() && b[*j] == ',' {
                *j += 1;
            }
        }
    }
    let mut path = prefix;
    while let Some(seg) = ident(b, j) {
        path.push(seg);
        if b.get(*j) == Some(&':') && b.get(*j + 1) == Some(&':') {
            *j += 2;
            if b.get(*j) == Some(&'{') {
                parse_tree(b, j, path, out);
                return;
            }
            continue;
        }
        break;
    }
    out.push(path);
}

/// The deepest module of `mods` that `path` (relative to module `at`) names.
fn resolve(
    mods: &BTreeMap<Vec<String>, PathBuf>,
    at: &[String],
    path: &[String],
) -> Option<Vec<String>> {
    // `crate` starts at the root; `self` and `super` at this module (`super` then pops).
    let mut base: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        _ => at.to_vec(),
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        base.pop();
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
    }
    let mut best = None;
    let mut cur = base.clone();
    if mods.contains_key(&cur) {
        best = Some(cur.clone());
    }
    for seg in rest {
        cur.push(seg.clone());
        if mods.contains_key(&cur) {
            best = Some(cur.clone());
        } else {
            break;
        }
    }
    best
}

fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text,
    };
    // Comments name paths in prose and doc links; they are not imports.
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// One crate's module graph: each module file and the modules its code names.
fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, file) in &mods {
        let set = edges.entry(m.clone()).or_default();
        for p in paths(&code_of(file)) {
            if let Some(to) = resolve(&mods, m, &p) {
                // A module's use of its own ancestors' items (a parent's shared types) and of
                // itself is not a layering edge to check; a parent reaching into a child is.
                if &to != m && !m.starts_with(&to) {
                    set.insert(to);
                }
            }
        }
    }
    edges
}

/// The cycles of one crate's module graph, each as the modules around it.
fn cycles_in(src: &Path) -> Vec<Vec<String>> {
    let edges = graph(src);
    // Depth-first search with colours (1: on the stack, 2: done); each back edge is a cycle.
    let mut found = Vec::new();
    let mut state: BTreeMap<Vec<String>, u8> = BTreeMap::new();
    fn dfs(
        n: &Vec<String>,
        edges: &Graph,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        found: &mut Vec<Vec<String>>,
    ) {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for to in edges.get(n).into_iter().flatten() {
            match state.get(to).copied().unwrap_or(0) {
                0 => dfs(to, edges, state, stack, found),
                1 => {
                    let from = stack.iter().position(|s| s == to).unwrap_or(0);
                    found.push(
                        stack[from..]
                            .iter()
                            .chain(std::iter::once(to))
                            .map(|s| format!("crate::{}", s.join("::")))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
    }
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            dfs(n, &edges, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
}

#[test]
fn no_crate_has_an_import_cycle() {
    let mut report = Vec::new();
    for krate in ["dataplane", "control", "cni-shim"] {
        for cycle in cycles_in(&repo().join(krate).join("src")) {
            report.push(format!("{krate}: {}", cycle.join(" -> ")));
        }
    }
    assert!(report.is_empty(), "import cycles:\n{}", report.join("\n"));
}

#[test]
fn the_agent_never_imports_the_tooling() {
    let edges = graph(&repo().join("control").join("src"));
    let tooling = vec!["tooling".to_string()];
    let mut report = Vec::new();
    for (from, tos) in &edges {
        if from.starts_with(&tooling) {
            continue;
        }
        for to in tos.iter().filter(|to| to.starts_with(&tooling)) {
            report.push(format!(
                "crate::{} -> crate::{}",
                from.join("::"),
                to.join("::")
            ));
        }
    }
    assert!(
        report.is_empty(),
        "product modules import the lab/demo/bench tooling:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_relative_paths() {
    let p = paths("use super::{a::B, c, d::{e::F, G}};\nlet x = crate::io::udp::X;");
    let got: Vec<String> = p.iter().map(|s| s.join("::")).collect();
    assert_eq!(
        got,
        [
            "super::a::B",
            "super::c",
            "super::d::e::F",
            "super::d::G",
            "crate::io::udp::X"
        ]
    );
}

#[test]
fn the_checker_reports_a_cycle_it_is_shown() {
    let dir = std::env::temp_dir().join(format!("weft-module-graph-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("io")).expect("create a scratch crate");
    let write = |p: &str, text: &str| std::fs::write(src.join(p), text).expect("write");
    write(
        "lib.rs",
        "pub mod config;\npub mod datastore;\npub mod io;\n",
    );
    write(
        "config.rs",
        "use crate::datastore::Kind; // the old mistake\n",
    );
    write(
        "datastore.rs",
        "use crate::config::Config;\npub enum Kind {}\n",
    );
    write("io/mod.rs", "pub mod sys;\npub mod udp;\n");
    write("io/sys.rs", "use super::udp::{Meta, Other};\n");
    write(
        "io/udp.rs",
        "use super::sys;\n#[cfg(test)]\nmod tests { use crate::config::X; }\n",
    );
    let found = cycles_in(&src);
    std::fs::remove_dir_all(&dir).expect("remove the scratch crate");
    let found: Vec<String> = found.iter().map(|c| c.join(" -> ")).collect();
    assert_eq!(
        found,
        [
            "crate::config -> crate::datastore -> crate::config",
            "crate::io::sys -> crate::io::udp -> crate::io::sys",
        ],
        "the scratch crate's two cycles, and no edge from comments or #[cfg(test)] code"
    );
}
