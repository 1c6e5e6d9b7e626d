//! The two binaries as a user runs them: `token <bucket>` and the server itself.

use std::process::Command;

use crate::fixture::{self, SECRET, TestServer, hex_ref};
use blobs::auth::Keys;
use blobs_testkit::{ClientError, RawClient};
use serde_json::{Value, json};

/// Runs the token binary with the test secret, in a directory without a `.env`.
fn run_token(bucket: &str) -> std::process::Output {
    run_token_with(&[bucket])
}

fn run_token_with(args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_token"))
        .args(args)
        .env("TOKEN_SECRET", SECRET)
        .current_dir(cwd.path())
        .output()
        .unwrap()
}

/// `token <bucket>` prints `Token for bucket: <bucket>` and a JWT the server accepts.
#[tokio::test]
async fn the_token_binary_mints_tokens_the_server_accepts() {
    let output = run_token("Photos");
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0], "Token for bucket: Photos");

    let server = TestServer::start().await;
    let mut client = RawClient::connect_token(server.addr, lines[1])
        .await
        .unwrap();
    client.call("ref", &[json!(hex_ref("f0"))]).await.unwrap();
    client.call1("set", json!({"data": "aGk="})).await.unwrap();
    let file = server.blob_path("Photos", &hex_ref("f0"));
    // Stopped: the checkpoint has written every file.
    let storage = server.stop().await;
    assert!(file.exists());
    drop(storage);

    assert_eq!(run_token("../etc").status.code(), Some(2));
}

/// `--expires-in` sets `exp`, `--read-only` mints a token whose writes are refused.
#[tokio::test]
async fn the_token_binary_mints_expiring_and_read_only_tokens() {
    let output = run_token_with(&["b", "--expires-in", "2h", "--read-only"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.lines().nth(1).unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims;
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        7200
    );
    assert_eq!(claims["scope"], "read");

    let server = TestServer::start().await;
    let mut client = RawClient::connect_token(server.addr, token).await.unwrap();
    client.call("ref", &[json!(hex_ref("f2"))]).await.unwrap();
    assert_eq!(
        client.call1("set", json!({"data": "aGk="})).await.unwrap(),
        json!({"error": "Read-only token"})
    );
    server.stop().await;
    assert_eq!(
        run_token_with(&["b", "--expires-in", "soon"]).status.code(),
        Some(2)
    );
}

/// Runs `blobs` from an empty directory with `env` (and no other `TOKEN_SECRET`), expecting it
/// to refuse to start: exit code 2 and one line on stderr, which is returned.
fn refused_start(env: &[(&str, &str)]) -> String {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_blobs"));
    command
        .current_dir(cwd.path())
        .env_remove("TOKEN_SECRET")
        .env_remove("PREVIOUS_TOKEN_SECRETS")
        .envs(env.iter().copied());
    let output = command.output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{env:?}: {stderr}");
    stderr
}

/// Without TOKEN_SECRET, or with a blank one, the server refuses to start with one sentence and
/// exit code 2.
#[test]
fn the_server_needs_a_secret() {
    assert!(refused_start(&[]).contains("TOKEN_SECRET"));
    for blank in ["", " ", "\t \n"] {
        let stderr = refused_start(&[("TOKEN_SECRET", blank)]);
        assert!(
            stderr.contains("TOKEN_SECRET is not set or blank"),
            "{stderr}"
        );
    }
}

/// A secret shorter than 16 bytes, current or previous, whitespace not counted, stops the
/// server at start with one sentence that names the setting and never the secret; the token
/// binary refuses it too.
#[test]
fn short_secrets_are_refused_at_start() {
    let short = "fifteen-bytes!!";
    assert_eq!(short.len(), 15);
    for secret in [short.to_owned(), format!("  {short} ")] {
        let stderr = refused_start(&[("TOKEN_SECRET", &secret)]);
        assert!(
            stderr.contains("TOKEN_SECRET is shorter than 16 bytes"),
            "{stderr}"
        );
        assert!(!stderr.contains(short), "{stderr}");
    }
    let previous = format!("{SECRET}, {short}");
    let stderr = refused_start(&[
        ("TOKEN_SECRET", SECRET),
        ("PREVIOUS_TOKEN_SECRETS", &previous),
    ]);
    assert!(
        stderr.contains("entry 2 of PREVIOUS_TOKEN_SECRETS is shorter than 16 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains(short), "{stderr}");

    let cwd = tempfile::tempdir().unwrap();
    for secret in [" ", short] {
        let output = Command::new(env!("CARGO_BIN_EXE_token"))
            .arg("b")
            .env("TOKEN_SECRET", secret)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{secret:?}");
        assert!(output.stdout.is_empty(), "{secret:?}: no token is printed");
    }
}

/// A setting under its former name is refused with its new one, never silently ignored.
#[test]
fn former_setting_names_are_refused_with_the_new_name() {
    let cwd = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_blobs"))
        .current_dir(cwd.path())
        .env("TOKEN_SECRET", SECRET)
        .env("CAS_MAX_BYTES", "1048576")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("CONTENT_MAX_BYTES"), "{stderr}");
}

/// SIGTERM: the server finishes, the client sees a clean close, the process exits 0, and
/// the acknowledged write is on disk.
#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let storage = tempfile::tempdir().unwrap();
    let server = fixture::start_process(storage.path(), &[]);
    let mut client = RawClient::connect_token(server.addr, &fixture::token("b"))
        .await
        .unwrap();
    client.call("ref", &[json!(hex_ref("f1"))]).await.unwrap();
    let ack = client.call1("set", json!({"data": "aGk="})).await.unwrap();
    assert_eq!(ack["success"], true);

    server.terminate();
    // The transport is closed cleanly (not a reset), so socket.io-client reconnects by itself
    // once the server is back; a Socket.IO DISCONNECT would stop it from reconnecting.
    let end = client.recv().await;
    assert!(matches!(end, Err(ClientError::Closed)), "{end:?}");
    assert_eq!(server.wait().await, Some(0));

    let path = storage
        .path()
        .join("b")
        .join("f1")
        .join(format!("{}.json", hex_ref("f1")));
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
}

/// `blobs --help` says where `STORE=s3` keeps content and records: in the object store, not
/// under `STORAGE`.
#[test]
fn the_store_help_says_where_everything_lives() {
    let cwd = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_blobs"))
        .arg("--help")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let store = help
        .split("--store <STORE>")
        .nth(1)
        .and_then(|rest| rest.split("\n      --").next())
        .expect("--store is documented");
    let store = store.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        store.contains("content-addressed blobs and Blob Service records all live there"),
        "{store}"
    );
    assert!(!store.contains("stay under `STORAGE`"), "{store}");
}

/// A rotated secret: the server signs nothing itself, and accepts tokens of `TOKEN_SECRET` and
/// of each entry of `PREVIOUS_TOKEN_SECRETS` (`"alpha, beta"`: trimmed, so `beta` works) over
/// Socket.IO and HTTP; a secret no longer listed is refused.
#[tokio::test]
async fn previous_secrets_are_accepted_after_a_rotation() {
    let storage = tempfile::tempdir().unwrap();
    let server = fixture::start_process(
        storage.path(),
        &[
            ("TOKEN_SECRET", " rotated-secret-0123 "),
            (
                "PREVIOUS_TOKEN_SECRETS",
                "alpha-secret-01234, beta-secret-567890",
            ),
        ],
    );
    let mint = |secret: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_token"))
            .arg("rotation")
            .env("TOKEN_SECRET", secret)
            .current_dir(storage.path())
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let http = reqwest::Client::new();
    // A blob nobody wrote: 404 to a valid token, 401 to any other.
    let url = format!("http://{}/v1/blobs/{}", server.addr, hex_ref("a0"));
    for secret in [
        "rotated-secret-0123",
        "alpha-secret-01234",
        "beta-secret-567890",
    ] {
        let token = mint(secret);
        let mut client = RawClient::connect_token(server.addr, &token).await.unwrap();
        client.call("ref", &[json!(hex_ref("a0"))]).await.unwrap();
        let status = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{secret}");
    }
    let retired = mint("retired-secret-0123");
    match RawClient::connect_token(server.addr, &retired).await {
        Err(ClientError::Refused(message)) => assert_eq!(message, "Access denied"),
        other => panic!("a retired secret's token: {:?}", other.map(|_| ())),
    }
    let status = http
        .get(&url)
        .bearer_auth(&retired)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    server.kill();
}

/// `PREVIOUS_TOKEN_SECRETS="<secret>, "` lists one secret: the blank entry is dropped, so a
/// token signed with `" "` (or with nothing) is refused over HTTP and Socket.IO, while the
/// listed secret's tokens work.
#[tokio::test]
async fn a_blank_previous_secret_is_no_key() {
    let storage = tempfile::tempdir().unwrap();
    let previous = "previous-secret-0123";
    let server = fixture::start_process(
        storage.path(),
        &[("PREVIOUS_TOKEN_SECRETS", &format!("{previous}, "))],
    );
    let bucket = blobs::names::Bucket::parse("b").unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/blobs/{}", server.addr, hex_ref("a1"));
    let status = |token: String| {
        let request = http.get(&url).bearer_auth(token).send();
        async move { request.await.unwrap().status() }
    };
    let listed = Keys::new(previous).mint(&bucket);
    assert_eq!(status(listed).await, reqwest::StatusCode::NOT_FOUND);
    for blank in [" ", "", "  "] {
        let forged = Keys::new(blank).mint(&bucket);
        assert_eq!(
            status(forged.clone()).await,
            reqwest::StatusCode::UNAUTHORIZED,
            "{blank:?}"
        );
        match RawClient::connect_token(server.addr, &forged).await {
            Err(ClientError::Refused(message)) => assert_eq!(message, "Access denied"),
            other => panic!("a token of {blank:?}: {:?}", other.map(|_| ())),
        }
    }
    server.kill();
}

/// Object-store settings no node could run with stop the server at start with one sentence
/// naming the setting, never a panic: an endpoint that is not an http(s) URL, and a prefix
/// that would be glued to bucket names or rewritten by the store.
#[test]
fn bad_object_store_settings_are_refused_at_start() {
    let secret = "0123456789abcdef0123";
    let s3 = |endpoint: &'static str, prefix: &'static str| {
        [
            ("TOKEN_SECRET", secret),
            ("STORE", "s3"),
            ("S3_ENDPOINT", endpoint),
            ("S3_BUCKET", "blobs"),
            ("S3_ACCESS_KEY_ID", "key"),
            ("S3_SECRET_ACCESS_KEY", "secret"),
            ("S3_PREFIX", prefix),
        ]
    };
    for endpoint in ["notaurl", "ftp://127.0.0.1:9"] {
        assert!(refused_start(&s3(endpoint, "")).contains("S3_ENDPOINT"));
    }
    for prefix in ["noslash", "../", "a b/"] {
        assert!(refused_start(&s3("http://127.0.0.1:9", prefix)).contains("S3_PREFIX"));
    }
}
