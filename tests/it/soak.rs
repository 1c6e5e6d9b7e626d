//! Soak: thousands of connections and steady writes for a bounded time; throughput, p99,
//! resident memory and open file descriptors at start and end (which must stay flat).
//!
//! CI runs it for 60 s. Longer:
//! `BLOBS_SOAK_SECS=1800 cargo test --release --test it soak:: -- --nocapture`.

use std::time::{Duration, Instant};

use crate::fixture::{self, env_or, token};
use blobs_testkit::RawClient;
use serde_json::json;

const WRITERS: usize = 16;

fn ref_name(i: usize) -> String {
    format!("{:02x}{:062x}", (i * 89) % 256, i)
}

/// Writers run compare-and-swap loops for `duration` and return their set latencies.
async fn write_for(addr: std::net::SocketAddr, duration: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = RawClient::connect_token(addr, &token("soak"))
                    .await
                    .unwrap();
                client.call("ref", &[json!(ref_name(i))]).await.unwrap();
                let mut version = None;
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let ack = client
                        .call1("set", json!({"data": "QUJDRA==", "version": version}))
                        .await
                        .unwrap();
                    latencies.push(sent.elapsed());
                    version = ack["version"].as_u64();
                    assert!(version.is_some(), "set failed: {ack}");
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Thousands of connections with steady writes: memory and descriptors stay flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_keeps_memory_and_descriptors_flat() {
    let seconds = env_or("BLOBS_SOAK_SECS", 60);
    let connections = env_or("BLOBS_SOAK_CONNECTIONS", 2000) as usize;
    rlimit::increase_nofile_limit(4 * connections as u64 + 1024).unwrap();
    let storage = tempfile::tempdir().unwrap();
    let limit = (2 * connections).to_string();
    let server = fixture::start_process(
        storage.path(),
        &[
            ("MAX_CONNECTIONS", &limit),
            ("MAX_CONNECTIONS_PER_IP", &limit),
            // Each writer runs a tight compare-and-swap loop, far above an interactive client's rate.
            ("EVENTS_PER_SECOND", "100000"),
            ("EVENT_BURST", "100000"),
        ],
    );

    // Idle connections, a tenth of them subscribed to the written refs (they hear `changed`).
    // Every one reads, so it answers the server's pings as a live client does.
    let mut idle = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut client = RawClient::connect_token(server.addr, &token("soak"))
            .await
            .unwrap();
        if i % 10 == 0 {
            client
                .call("ref", &[json!(ref_name(i % WRITERS))])
                .await
                .unwrap();
        }
        idle.push(tokio::spawn(
            async move { while client.recv().await.is_ok() {} },
        ));
    }

    // Warm-up: caches, pools and buffers reach their working size.
    write_for(server.addr, Duration::from_secs(5)).await;
    let (rss_start, fds_start) = (server.rss_bytes(), server.open_fds());
    let started = Instant::now();
    let mut latencies = write_for(server.addr, Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (rss_end, fds_end) = (server.rss_bytes(), server.open_fds());

    latencies.sort_unstable();
    let p99 = latencies[(latencies.len() - 1) * 99 / 100];
    println!(
        "soak: seconds={seconds} connections={connections} writes={} writes_per_sec={:.0} p99_ms={:.2} rss_start_mib={:.1} rss_end_mib={:.1} fds_start={fds_start} fds_end={fds_end}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        p99.as_secs_f64() * 1000.0,
        rss_start as f64 / 1048576.0,
        rss_end as f64 / 1048576.0,
    );
    assert!(
        fds_start > connections,
        "the idle connections are open at the start"
    );
    assert!(
        fds_end.abs_diff(fds_start) <= 32,
        "descriptors must stay flat: {fds_start} -> {fds_end}"
    );
    assert!(
        rss_end <= rss_start + rss_start / 4 + 8 * 1024 * 1024,
        "memory grows: {rss_start} -> {rss_end}"
    );
    for task in idle {
        task.abort();
    }
    server.kill();
}
