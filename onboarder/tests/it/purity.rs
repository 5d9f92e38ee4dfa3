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
