//! The documentation a clone carries: every relative link in the README and under `docs/`
//! names a file of this repository, so a reader never meets a document kept elsewhere; and
//! every identifier the architecture names exists in the code.

use std::path::Path;

use crate::fixture::rust_sources;

/// The targets of the Markdown links `[text](target)` in `text`.
fn link_targets(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect()
}

#[test]
fn relative_links_stay_inside_the_repository_and_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut checked = 0;
    for document in &documents {
        let text = std::fs::read_to_string(document).unwrap();
        let dir = document.parent().unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let inside = dir
                .join(file)
                .canonicalize()
                .is_ok_and(|path| path.starts_with(&root));
            assert!(
                inside,
                "{} links {target}, which is not a file of this repository",
                document.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} relative links found");
}

/// The spans between backticks in `text` that read as Rust identifiers or paths
/// (`AppState`, `state.commit` excluded, `accept::serve`, `Session::enqueue`, `run(..)`).
fn code_identifiers(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|span| span.strip_suffix("(..)").unwrap_or(span))
        .filter(|span| {
            !span.is_empty()
                && span.split("::").all(|segment| {
                    segment.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && segment
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        })
        .collect()
}

/// The crate's source files by module name (`accept` for `src/edge/accept.rs`, `admission`
/// for `src/edge/admission/mod.rs`), their comments left out.
fn modules_of(dir: &Path) -> Vec<(String, String)> {
    rust_sources(dir)
        .into_iter()
        .map(|(path, code)| {
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let name = if stem == "mod" {
                path.parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
            } else {
                stem
            };
            (name.to_owned(), code)
        })
        .collect()
}

/// Whether `word` occurs in `code` with no identifier character on either side.
fn has_word(code: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(word).any(|(at, _)| {
        !code[..at].ends_with(is_ident) && !code[at + word.len()..].starts_with(is_ident)
    })
}

/// System calls and kernel flags the architecture names; they are not the crate's identifiers.
const SYSTEM_NAMES: [&str; 3] = ["RENAME_NOREPLACE", "flock", "fdatasync"];

/// Whether `identifier` exists in `modules`: a plain name anywhere in the code; a path
/// `module::name` in a module of that name (`accept::serve` in `accept.rs`), a path
/// `Type::name` beside the type's name anywhere.
fn exists(modules: &[(String, String)], identifier: &str) -> bool {
    let mut segments: Vec<&str> = identifier.split("::").collect();
    let name = segments.pop().unwrap();
    match segments.last() {
        None => modules.iter().any(|(_, code)| has_word(code, name)),
        Some(owner) if owner.starts_with(|c: char| c.is_ascii_lowercase()) => {
            // `blobs` is the crate (its root, `lib.rs`) as well as `http::blobs`.
            let crate_root = *owner == "blobs";
            modules.iter().any(|(module, code)| {
                (module == owner || crate_root && module == "lib") && has_word(code, name)
            })
        }
        Some(owner) => modules
            .iter()
            .any(|(_, code)| has_word(code, owner) && has_word(code, name)),
    }
}

/// Every identifier `docs/ARCHITECTURE.md` names in code spans (types, functions, modules,
/// constants, paths such as `accept::serve`) exists in the crate's code, each segment of a
/// path included: the map of the code cannot drift from the code unnoticed.
#[test]
fn the_architecture_names_only_identifiers_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let modules = modules_of(&root.join("src"));
    let identifiers = code_identifiers(&text);
    let missing: Vec<&str> = identifiers
        .iter()
        .copied()
        .filter(|identifier| !SYSTEM_NAMES.contains(identifier) && !exists(&modules, identifier))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md names what the code does not have: {missing:?}"
    );
    assert!(
        identifiers.len() >= 100,
        "only {} identifiers found",
        identifiers.len()
    );
    // The check itself tells a stale name from a current one.
    assert!(exists(&modules, "accept::serve"));
    assert!(!exists(&modules, "edge::serve"));
    assert!(!exists(&modules, "limits::socket_io"));
}
