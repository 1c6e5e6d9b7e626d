//! Interop with clients nobody here wrote: the official JavaScript `socket.io-client`
//! (WebSocket and long-polling), python-socketio, and the ActyxOS Blob Service documentation's
//! example (a Node.js `form-data` upload and a page in headless Chromium). The scenarios live
//! in `tests/interop/`; `scripts/test` installs their dependencies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fixture::{PATIENCE, TestServer, token};
use tokio::process::Command;

/// Longest a scenario may take before it is killed as hung: the scripts get [`PATIENCE`]
/// (`BLOBS_PATIENCE_MS`) and fail on their own past it, naming the wait they were at, so this
/// side waits a minute longer.
const SCENARIO_LIMIT: Duration = Duration::from_secs(PATIENCE.as_secs() + 60);

/// [`PATIENCE`] for the scripts, in milliseconds.
fn patience_ms() -> String {
    PATIENCE.as_millis().to_string()
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

async fn run_scenario(program: PathBuf, script: &str, transport: &str) {
    let dir = interop_dir();
    assert!(
        program.exists() || program.components().count() == 1,
        "{} is missing: run scripts/test, which installs the interop clients",
        program.display()
    );
    let server = TestServer::start().await;
    let content = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(content.path(), sample_content().to_string()).expect("content file");
    let run = Command::new(&program)
        .arg(dir.join(script))
        .arg(transport)
        .current_dir(&dir)
        .env("BLOBS_URL", format!("http://{}", server.addr))
        .env("BLOBS_TOKEN", token("interop"))
        .env("BLOBS_TOKEN_OTHER", token("interop-other"))
        .env("BLOBS_CONTENT", content.path())
        .env("BLOBS_PATIENCE_MS", patience_ms())
        .kill_on_drop(true)
        .output();
    let output = within_limit(run).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} {transport} failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.trim(), format!("ok {transport}"));
    server.stop().await;
}

/// The output of a scenario, which must finish within [`SCENARIO_LIMIT`].
async fn within_limit(
    run: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
) -> std::process::Output {
    tokio::time::timeout(SCENARIO_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("the scenario did not end within {SCENARIO_LIMIT:?}"))
        .expect("scenario started")
}

/// Two contents with their hashes: one small (inline), one over the redirect threshold.
fn sample_content() -> serde_json::Value {
    use base64::Engine as _;
    let contents = [b"interop inline content".to_vec(), vec![42u8; 300 * 1024]];
    serde_json::Value::Array(
        contents
            .iter()
            .map(|bytes| {
                serde_json::json!({
                    "hash": blobs::names::ContentHash::of(bytes).as_str(),
                    "data_b64": base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            })
            .collect(),
    )
}

fn node_client_installed() {
    assert!(
        interop_dir().join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run scripts/test, which installs the interop clients"
    );
}

/// The official socket.io-client over WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node and socket.io-client from tests/interop (run by scripts/test)"]
async fn official_js_client_over_websocket() {
    node_client_installed();
    run_scenario("node".into(), "client.mjs", "websocket").await;
}

/// The official socket.io-client over HTTP long-polling, maximum payload included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node and socket.io-client from tests/interop (run by scripts/test)"]
async fn official_js_client_over_polling() {
    node_client_installed();
    run_scenario("node".into(), "client.mjs", "polling").await;
}

/// The official socket.io-client as apps use it by default: long-polling first, upgraded to a
/// WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node and socket.io-client from tests/interop (run by scripts/test)"]
async fn official_js_client_upgrading_from_polling() {
    node_client_installed();
    run_scenario("node".into(), "client.mjs", "upgrade").await;
}

/// Many blobs on one connection (`watch`, `get`/`set` naming a `ref`) with the official
/// client, over each transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node and socket.io-client from tests/interop (run by scripts/test)"]
async fn many_blobs_on_one_connection_with_the_official_client() {
    node_client_installed();
    for transport in ["websocket", "polling"] {
        run_scenario("node".into(), "many.mjs", transport).await;
    }
}

/// Honest bursts within `EVENT_BURST` (a reconnect re-reading 100 to 200 refs at once, a page
/// opening 150 watches at once) are answered in full without a disconnect, with the official
/// client over each transport; past the burst the excess gets `{ error }` on a usable socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node and socket.io-client from tests/interop (run by scripts/test)"]
async fn honest_bursts_are_answered_with_the_official_client() {
    node_client_installed();
    for transport in ["websocket", "polling"] {
        run_scenario("node".into(), "bursts.mjs", transport).await;
    }
}

/// python-socketio over WebSocket and over long-polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python's python-socketio in tests/interop/.venv (run by scripts/test)"]
async fn python_socketio_client() {
    let python = interop_dir().join(".venv/bin/python");
    for transport in ["websocket", "polling"] {
        run_scenario(python.clone(), "client.py", transport).await;
    }
}

/// The ActyxOS documentation's example: a Node.js app uploads a photo with `form-data`, and a
/// page in headless Chromium (driven by playwright-core) receives its metadata from the event
/// stream and shows the image; the page's screenshot is a real PNG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node, form-data and playwright-core from tests/interop, and Chromium (run by scripts/test)"]
async fn actyx_documentation_example_in_chromium() {
    node_client_installed();
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: run scripts/test, which installs Debian's chromium"
    );
    let server = TestServer::start().await;
    let shots = tempfile::tempdir().expect("temp dir");
    let screenshot = shots.path().join("inspection.png");
    let run = Command::new("node")
        .arg(interop_dir().join("actyx-docs.mjs"))
        .current_dir(interop_dir())
        .env("BLOBS_URL", format!("http://{}", server.addr))
        .env("BLOBS_TOKEN", token("factory"))
        .env("SCREENSHOT", &screenshot)
        .env("BLOBS_PATIENCE_MS", patience_ms())
        .kill_on_drop(true)
        .output();
    let output = within_limit(run).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "documentation example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let handle = stdout
        .trim()
        .strip_prefix("ok ")
        .expect("the page showed the photo");
    let metadata: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/blobs/{handle}/metadata",
            server.addr
        ))
        .bearer_auth(token("factory"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["semantics"], "com.example.inspection-photo");
    assert_eq!(metadata["fileName"], "inspection-42.png");
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "a PNG screenshot"
    );
    if let Ok(dir) = std::env::var("BLOBS_SCREENSHOT_DIR") {
        std::fs::copy(&screenshot, Path::new(&dir).join("inspection.png")).ok();
    }
    server.stop().await;
}
