//! The layering `docs/ARCHITECTURE.md` promises, checked on the source: each folder imports
//! only the layers below it, and nothing but the crate's root imports the server's assembly.

use std::path::Path;

use crate::fixture::rust_sources;

/// Every folder of `src/`: what the root files beneath them all must never name.
const EVERY_FOLDER: &[&str] = &[
    "storage",
    "auth",
    "blob_service",
    "serve",
    "edge",
    "http",
    "protocol",
    "cluster",
    "admin",
];

/// What each part of `src/` must never name (`crate::<module>`), as the architecture says.
const RULES: &[(&str, &[&str])] = &[
    (
        "storage",
        &[
            "auth",
            "blob_service",
            "serve",
            "edge",
            "http",
            "protocol",
            "cluster",
            "admin",
        ],
    ),
    (
        "edge",
        &[
            "http",
            "protocol",
            "serve",
            "storage",
            "blob_service",
            "auth",
            "admin",
            "cluster",
        ],
    ),
    (
        "auth",
        &[
            "http",
            "protocol",
            "serve",
            "edge",
            "blob_service",
            "admin",
            "cluster",
        ],
    ),
    (
        "blob_service",
        &["http", "protocol", "serve", "edge", "admin", "auth"],
    ),
    (
        "cluster",
        &[
            "storage",
            "serve",
            "http",
            "protocol",
            "edge",
            "blob_service",
            "admin",
            "auth",
        ],
    ),
    ("admin", &["serve", "http", "protocol", "edge", "cluster"]),
    ("http", &["protocol", "serve::server"]),
    ("protocol", &["http", "serve::server"]),
    ("config.rs", EVERY_FOLDER),
    ("names.rs", EVERY_FOLDER),
];

/// The `crate::` paths `code` names, its unit tests left out, grouped imports
/// (`use crate::{a, b::c}`) spelled out as `crate::a`, `crate::b::c`.
fn crate_paths(code: &str) -> Vec<String> {
    let code = code.split("#[cfg(test)]\nmod tests").next().unwrap();
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            paths.extend(group.split(',').map(|p| format!("crate::{}", p.trim())));
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            paths.push(format!("crate::{}", &rest[..end]));
        }
    }
    paths
}

/// Whether `path` names `module` or something inside it.
fn names(path: &str, module: &str) -> bool {
    let module = format!("crate::{module}");
    path == module || path.starts_with(&format!("{module}::"))
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    let mut checked = 0;
    for (part, forbidden) in RULES {
        let sources = rust_sources(&src.join(part));
        assert!(!sources.is_empty(), "src/{part} has no Rust file");
        for (file, code) in sources {
            for path in crate_paths(&code) {
                checked += 1;
                if forbidden.iter().any(|module| names(&path, module)) {
                    broken.push(format!("{} names {path}", file.display()));
                }
            }
        }
    }
    // Nothing imports the server's assembly but the crate's root and the `serve` folder's own
    // module list.
    for (file, code) in rust_sources(&src) {
        let own = file.ends_with("lib.rs") || file.ends_with("serve/mod.rs");
        for path in crate_paths(&code) {
            if !own && names(&path, "serve::server") {
                broken.push(format!("{} names {path}", file.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layering:\n{}",
        broken.join("\n")
    );
    assert!(checked > 150, "only {checked} imports checked");
}
