//! The JavaScript client library (`clients/js`) and the inspector page built on it, tested by
//! their own node:test suites against this build's binaries: in Node, and in headless
//! Chromium through playwright-core. `scripts/test` installs their npm dependencies and builds
//! the library first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::fixture::PATIENCE;

/// Longest the suites may take before they count as hung: each of their tests gets
/// [`PATIENCE`] (`--test-timeout`), and they run one at a time.
const LIMIT: Duration = Duration::from_secs(3 * PATIENCE.as_secs());

fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// The library's browser bundle, as `npm run build` writes it.
fn built_bundle() -> PathBuf {
    let bundle = library().join("dist/blobs-client.browser.js");
    assert!(
        bundle.exists(),
        "{} is missing: run scripts/test, which installs and builds clients/js",
        bundle.display()
    );
    bundle
}

/// The library's and the inspector's suites pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node, the npm packages of clients/js, and Chromium (run by scripts/test)"]
async fn the_library_and_the_inspector_pass_their_suites() {
    built_bundle();
    let run = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-force-exit",
            &format!("--test-timeout={}", PATIENCE.as_millis()),
            "test/",
        ])
        .current_dir(library())
        .env("BLOBS_BIN", env!("CARGO_BIN_EXE_blobs"))
        .env("BLOBS_TOKEN_BIN", env!("CARGO_BIN_EXE_token"))
        // Each wait of a test gets half its timeout, so it fails first, naming what it awaited.
        .env("BLOBS_PATIENCE_MS", (PATIENCE.as_millis() / 2).to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("the suites did not end within {LIMIT:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the library's tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}

/// The inspector's copy of the library (compiled into the server) is the bundle of this
/// library's source: `npm run build` in clients/js, then copy `dist/blobs-client.browser.js` to
/// `inspect/blobs-client.js`.
#[test]
#[ignore = "needs Node to build clients/js (run by scripts/test)"]
fn the_inspector_embeds_the_current_library() {
    let built = std::fs::read_to_string(built_bundle()).unwrap();
    let embedded = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("inspect/blobs-client.js"),
    )
    .unwrap();
    assert!(
        built == embedded,
        "inspect/blobs-client.js is not the current library: run `npm run build` in clients/js \
         and copy dist/blobs-client.browser.js over it"
    );
}
