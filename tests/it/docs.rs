//! The documentation a clone carries: every relative link in the README and under `docs/`
//! names a file of this repository, so a reader never meets a document kept elsewhere.

use std::path::Path;

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
