//! The repository documents itself: every file a README, `docs/` or `deploy/` page
//! names exists in the repository, every link to a section finds its heading, and
//! nothing cites a specification outside the repository (a clone has nothing beside it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Top-level directories whose paths the pages name in backticks.
const REPO_DIRS: &[&str] = &[
    "benches/",
    "deploy/",
    "docs/",
    "examples/",
    "fuzz/",
    "loom-tests/",
    "perf/",
    "proto/",
    "scripts/",
    "src/",
    "tests/",
];

/// The pages whose references are checked, relative to the root.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md"), PathBuf::from("PERF.md")];
    for dir in ["docs", "deploy", "deploy/systemd", "deploy/prometheus"] {
        let Ok(entries) = std::fs::read_dir(Path::new(ROOT).join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                pages.push(path.strip_prefix(ROOT).unwrap().to_owned());
            }
        }
    }
    pages.sort();
    pages
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|line| {
            let text = line.trim_start_matches('#');
            (line.starts_with('#') && text.starts_with(' ')).then(|| slug(text))
        })
        .collect()
}

/// `](target)` link targets that are not URLs.
fn link_targets(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            let end = rest.find(')')?;
            let target = &rest[..end];
            let external = target.contains("://") || target.starts_with("mailto:");
            (!external && !target.is_empty()).then(|| target.to_owned())
        })
        .collect()
}

/// Repository paths named in backticks or plainly, such as `deploy/metrics.txt` or
/// `see docs/operating.md`; globs and placeholders are left out.
fn named_paths(text: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_alphanumeric() || "/._-".contains(c);
    let mut found = Vec::new();
    for dir in REPO_DIRS {
        for (at, _) in text.match_indices(dir) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| is_path_char(c) || c == '$') {
                continue; // part of a longer path, e.g. target/debug/...
            }
            let path: String = text[at..]
                .chars()
                .take_while(|&c| is_path_char(c))
                .collect();
            // `transcript.{json,md}`, `tests/*.rs`, `<socket>`: patterns, not paths.
            let next = text[at + path.len()..].chars().next();
            if next.is_some_and(|c| "*<{".contains(c)) {
                continue;
            }
            let path = path.trim_end_matches(['.', ',']);
            found.push(path.to_owned());
        }
    }
    found
}

#[test]
fn every_file_and_section_the_pages_name_exists() {
    let root = Path::new(ROOT);
    let mut missing = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(root.join(&page)).unwrap_or_default();
        let dir = page.parent().unwrap_or(Path::new(""));
        for target in link_targets(&text) {
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let path = root.join(&file);
            if !path.exists() {
                missing.push(format!("{}: link to {target}", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let linked = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&linked).contains(anchor) {
                    missing.push(format!(
                        "{}: no section #{anchor} in {}",
                        page.display(),
                        file.display()
                    ));
                }
            }
        }
        for path in named_paths(&text) {
            // `examples/slow_sink` names the example built from examples/slow_sink.rs.
            let exists = root.join(&path).exists() || root.join(format!("{path}.rs")).exists();
            if !exists {
                missing.push(format!("{}: names {path}", page.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "references that do not resolve:\n{}",
        missing.join("\n")
    );
}

#[test]
fn nothing_cites_a_specification_outside_the_repository() {
    let root = Path::new(ROOT);
    let mut stack: Vec<PathBuf> = [
        "src", "tests", "docs", "deploy", "proto", "examples", "benches", "scripts",
    ]
    .iter()
    .map(|d| root.join(d))
    .collect();
    stack.push(root.join("README.md"));
    stack.push(root.join("PERF.md"));
    let mut citing = Vec::new();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if path.ends_with("tests/vectors") {
                continue; // recordings, not prose
            }
            stack.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
            continue;
        }
        if path == Path::new(file!()).canonicalize().unwrap_or_default()
            || path.ends_with("repo_docs.rs")
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            if line.contains("CONTRACT") || line.contains("../shared") {
                citing.push(format!(
                    "{}:{}: {}",
                    path.strip_prefix(root).unwrap().display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        citing.is_empty(),
        "cite docs/ instead of a file a clone does not have:\n{}",
        citing.join("\n")
    );
}
