//! The lifecycle core (`onboarder/src/core`) and the agent's machine (`device-agent/src/machine`)
//! decide, and do nothing else: no runtime, no network, no storage engine, no file system, no
//! clock. Time comes in as an argument. This test fails the build of the suite when code there
//! names what would break that (comments may talk about them).

use std::path::{Path, PathBuf};

/// What pure code must not name.
const FORBIDDEN: [&str; 9] = [
    "tokio",
    "quinn",
    "sled",
    "axum",
    "coap_lite",
    "std::fs",
    "std::net",
    "SystemTime",
    "Instant",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` names `word` as a whole identifier (or path) outside a comment.
fn names(line: &str, word: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

/// Every line of the pure directories that names a forbidden crate or API.
fn violations() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/core"), &mut files);
    rust_files(&root.join("../device-agent/src/machine"), &mut files);
    assert!(files.len() > 20, "the pure directories were not found");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for word in FORBIDDEN {
                if names(line, word) {
                    found.push(format!("{}:{}: {word}", file.display(), n + 1));
                }
            }
        }
    }
    found
}

#[test]
fn the_core_and_the_machine_name_no_io() {
    let found = violations();
    assert!(found.is_empty(), "I/O in pure code:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_what_it_looks_for() {
    assert!(names("use tokio::sync::Mutex;", "tokio"));
    assert!(names("    let t = std::time::Instant::now();", "Instant"));
    assert!(names("let f = std::fs::read(p);", "std::fs"));
    assert!(!names("// knows nothing of sled", "sled"));
    assert!(!names("let tokio_like = 1;", "tokio"));
    assert!(!names("let asled = 1;", "sled"));
}

/// The sibling modules of `dir` (files and folders) and the files of each.
fn modules(dir: &Path) -> Vec<(String, Vec<PathBuf>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            rust_files(&path, &mut files);
            found.push((stem, files));
        } else if path.extension().is_some_and(|e| e == "rs") && stem != "mod" {
            found.push((stem, vec![path]));
        }
    }
    // A folder next to a file of the same name holds that module's children.
    found.sort();
    found.dedup_by(|b, a| {
        a.0 == b.0 && {
            a.1.append(&mut b.1);
            true
        }
    });
    found
}

/// Whether `code` refers to the sibling module `name` through `prefix` (`super` or
/// `crate::core`), directly or in a `{...}` group.
fn refers_to(code: &str, prefix: &str, name: &str) -> bool {
    let direct = format!("{prefix}::{name}");
    if names(code, &direct) {
        return true;
    }
    let group = format!("{prefix}::{{");
    code.match_indices(&group).any(|(at, _)| {
        let rest = &code[at + group.len()..];
        let inside = &rest[..rest.find('}').unwrap_or(rest.len())];
        inside
            .split(',')
            .any(|item| item.trim().split("::").next() == Some(name))
    })
}

/// The import edges between the sibling modules of `dir` (test code left out).
fn imports(dir: &Path, prefix: &str) -> Vec<(String, String)> {
    let modules = modules(dir);
    let mut edges = Vec::new();
    for (from, files) in &modules {
        let code: String = files
            .iter()
            .filter(|f| !f.ends_with("tests.rs"))
            .map(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                text.lines()
                    .map(|l| l.split("//").next().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        for (to, _) in &modules {
            if to != from && (refers_to(&code, "super", to) || refers_to(&code, prefix, to)) {
                edges.push((from.clone(), to.clone()));
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one.
fn cycle(edges: &[(String, String)]) -> Option<Vec<String>> {
    fn walk(
        at: &str,
        edges: &[(String, String)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == at) {
            let mut found = path[start..].to_vec();
            found.push(at.to_string());
            return Some(found);
        }
        if done.iter().any(|d| d == at) {
            return None;
        }
        path.push(at.to_string());
        for (_, to) in edges.iter().filter(|(from, _)| from == at) {
            if let Some(found) = walk(to, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.push(at.to_string());
        None
    }
    let mut done = Vec::new();
    edges
        .iter()
        .find_map(|(from, _)| walk(from, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circles_in_the_layered_folders() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, prefix) in [
        ("src/core", "crate::core"),
        ("src/service", "crate::service"),
        ("src/transport", "crate::transport"),
        ("../device-agent/src/machine", "crate::machine"),
        ("../device-agent/src/platform", "crate::platform"),
        ("../device-agent/src/transport", "crate::transport"),
        ("../device-agent/src/driver", "crate::driver"),
    ] {
        let edges = imports(&root.join(dir), prefix);
        if dir == "src/core" {
            assert!(
                edges.len() > 20,
                "the core's imports were not seen: {edges:?}"
            );
        }
        assert_eq!(cycle(&edges), None, "{dir}: an import circle");
    }
    // The check finds a circle where there is one.
    let circle = [("a", "b"), ("b", "c"), ("c", "a")].map(|(x, y)| (x.into(), y.into()));
    assert_eq!(cycle(&circle).map(|c| c.len()), Some(4));
    assert!(refers_to(
        "use super::{decision, record::X};",
        "super",
        "record"
    ));
    assert!(!refers_to(
        "use super::{decision, records::X};",
        "super",
        "record"
    ));
}
