//! The deployment files in `deploy/`: the systemd units pass `systemd-analyze verify` with the
//! binary of this build, and the service keeps its hardening.

use std::path::Path;
use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name),
    )
    .unwrap()
}

/// The value of `key` in a unit file (its last assignment).
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// `systemd-analyze verify` accepts both units, without a warning, when the service runs this
/// build's binary (it checks that `ExecStart` is executable).
#[test]
#[ignore = "needs systemd-analyze (run by scripts/test)"]
fn the_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let service = unit("blobs.service").replace(
        "ExecStart=/usr/local/bin/blobs",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_blobs")),
    );
    assert_ne!(service, unit("blobs.service"), "ExecStart was replaced");
    std::fs::write(dir.path().join("blobs.service"), service).unwrap();
    std::fs::write(dir.path().join("blobs.socket"), unit("blobs.socket")).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "./blobs.socket", "./blobs.service"])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze runs (the test command installs systemd when missing)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}

/// What the service promises: its own user and state directory, a read-only system, no new
/// privileges, room for connections, restarts on failure, and a stop timeout longer than the
/// graceful shutdown.
#[test]
fn the_service_is_hardened() {
    let service = unit("blobs.service");
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "blobs"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("Environment", "HOST=127.0.0.1"),
        ("EnvironmentFile", "-/etc/blobs/blobs.env"),
    ] {
        assert_eq!(setting(&service, key), Some(value), "{key}");
    }
    let files: u64 = setting(&service, "LimitNOFILE").unwrap().parse().unwrap();
    assert!(files >= 65536);
    // The drain, then 5 s for transports and 5 s for lingering connections (SHUTDOWN_GRACE).
    let stop: u64 = setting(&service, "TimeoutStopSec")
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop >= 30, "TimeoutStopSec={stop}");
    // The data lives in the state directory, which is all the service may write.
    assert!(
        service.contains("Environment=STORAGE=/var/lib/blobs/"),
        "STORAGE in the state directory"
    );
    assert_eq!(
        setting(&unit("blobs.socket"), "ListenStream"),
        Some("127.0.0.1:3000")
    );
}
