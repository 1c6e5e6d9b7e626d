//! Benchmark: starts the release server on a temp directory and drives it over real WebSocket
//! connections, then prints the figures as JSON.
//!
//! `cargo bench --bench bench -- [--seconds N] [--dir DIR] [--only set,get]`
//!
//! Scenarios: `set` (32 clients, each its own ref, 1 KiB data, compare-and-swap loop), `get` (32 clients),
//! `http_get` and `http_put` (the same over the HTTP API, `PUT` with `If-Match`),
//! `contend` (16 clients compare-and-swap looping on one ref), `fanout` (1 writer, 200 and
//! 1,000 subscribers: time from write to `changed`), `idle` (server memory per idle
//! connection, 2,000 sockets), and `content_put` / `content_get` (content-addressed
//! `/blobs/{hash}` with 1 MiB blobs, in MB/s). `cluster` runs the same on several nodes, with
//! the Redis and S3-compatible servers the options name. `--other-server` runs the Socket.IO
//! scenarios against another server of the protocol in the same run, for ratios.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only says how to run it.
//! The same run measures this disk's limits: its serial write+fsync+rename+fsync-dir rate
//! (through the server's own durable replace), the records/s of a log that syncs 32 records
//! at a time, and its sequential write rate; it reports `set` throughput as a multiple of the
//! first two and content throughput as a multiple of the last.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::Notify;

use blobs::auth::Keys;
use blobs::names::Bucket;
use blobs_testkit::{RawClient, RedisServer, S3Server, ServerProcess};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Throughput, latency and memory figures of a Blobs server"
)]
struct Args {
    /// Seconds each throughput scenario runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Directory on the disk to measure; the server's storage is a temp dir inside it.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// The Redis server program of the cluster scenario.
    #[arg(long, env = "BENCH_REDIS_SERVER", default_value = "redis-server")]
    redis_server: PathBuf,
    /// The script that brings up the Ceph RADOS Gateway of the cluster scenario (`start DIR`,
    /// `stop DIR`).
    #[arg(long, env = "BENCH_RGW_SCRIPT", default_value = "scripts/rgw")]
    rgw_script: PathBuf,
    /// The nginx program put in front of the cluster scenario's nodes.
    #[arg(long, env = "BENCH_NGINX", default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Writes measured in the fanout scenario (its p99 is over every subscriber of every
    /// write: with few writes, one slow write is the p99).
    #[arg(long, default_value_t = 200)]
    fanout_writes: usize,
    /// Subscriber counts of the fanout scenario.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    fanout_subscribers: Vec<usize>,
    /// Another server of the same Socket.IO protocol to run the Socket.IO scenarios against
    /// in the same run, for ratios (for example the Node.js original: `node server.js`). It
    /// is started with `sh -c "exec <command>"` in a temp directory, with `PORT`, `STORAGE`
    /// and `TOKEN_SECRET` set.
    #[arg(long, env = "BENCH_OTHER_SERVER")]
    other_server: Option<String>,
    /// Seconds the `checkpoint` scenario writes 10,000 refs round-robin.
    #[arg(long, default_value_t = 60)]
    round_robin_seconds: u64,
    /// Run only these scenarios (idle, set, get, http_get, http_put, contend, write_ids,
    /// fanout, content_put, content_get, metrics, checkpoint, cluster); all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Passed by `cargo bench`; without it the binary only says how to run it.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

const SECRET: &str = "bench-secret-0123456789";

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.bench {
        println!("run the benchmark with `cargo bench --bench bench`");
        return Ok(());
    }
    let storage = tempfile::tempdir_in(&args.dir).context("temp storage dir")?;
    let disk = Disk {
        serial_fsync: durable_write_rate(storage.path(), 1, 200, 1400)?,
        grouped_fdatasync: grouped_fdatasync_rate(storage.path(), 32, 200, 1400)?,
    };
    let parallel_rate = durable_write_rate(storage.path(), 32, 200, 1400)?;
    let sequential_mb = sequential_write_mb_per_sec(storage.path())?;
    // What content PUTs cost the disk alone: 1 MiB durable writes from as many threads.
    let durable_content_mb = durable_write_rate(storage.path(), CONTENT_CLIENTS, 25, CONTENT_SIZE)?
        * CONTENT_SIZE as f64
        / 1e6;

    let server = start_server(storage.path(), &[]);
    let token = Keys::new(SECRET).mint(&Bucket::parse("bench").expect("valid bucket"));
    let duration = Duration::from_secs(args.seconds);
    let addr = server.addr;

    let mut report = json!({
        "disk_serial_durable_writes_per_sec": round(disk.serial_fsync),
        "disk_32_threads_durable_writes_per_sec": round(parallel_rate),
        "disk_grouped_fdatasync_records_per_sec": round(disk.grouped_fdatasync),
        "disk_sequential_write_mb_per_sec": round(sequential_mb),
        "disk_durable_1mib_writes_mb_per_sec": round(durable_content_mb),
    });
    socket_scenarios(&args, &server, &token, &disk, &mut report).await?;
    let probe = Probe::cpu_of(&server);
    if args.runs("http_get") {
        let get = http_throughput(addr, &token, 32, duration, false);
        report["http_get"] = costed(&probe, get).await?;
    }
    if args.runs("http_put") {
        let put = http_throughput(addr, &token, 32, duration, true);
        report["http_put"] = costed(&probe, put).await?;
    }
    // PUT first: it leaves the blobs GET reads.
    let mut stored = Vec::new();
    if args.runs("content_put") || args.runs("content_get") {
        let mut hashes = Vec::new();
        let put = costed(&probe, async {
            let (put, stored) = content_throughput(addr, &token, duration, None).await?;
            hashes = stored;
            Ok(put)
        })
        .await?;
        let put_mb = put["mb_per_sec"].as_f64().unwrap_or(0.0);
        report["content_put_vs_sequential_write"] = json!(round(put_mb / sequential_mb));
        report["content_put_vs_durable_1mib_writes"] = json!(round(put_mb / durable_content_mb));
        if args.runs("content_put") {
            report["content_put"] = put;
        }
        stored = hashes;
    }
    if args.runs("content_get") {
        let get = content_throughput(addr, &token, duration, Some(&stored));
        let get = costed(&probe, async { Ok(get.await?.0) }).await?;
        let get_mb = get["mb_per_sec"].as_f64().unwrap_or(0.0);
        report["content_get_vs_sequential_write"] = json!(round(get_mb / sequential_mb));
        report["content_get"] = get;
    }
    stop(server).await;
    if let Some(command) = &args.other_server {
        let storage = tempfile::tempdir_in(&args.dir).context("temp storage dir")?;
        let other =
            ServerProcess::start_other(command, storage.path(), &[("TOKEN_SECRET", SECRET)]);
        let mut figures = json!({ "command": command });
        socket_scenarios(&args, &other, &token, &disk, &mut figures).await?;
        stop(other).await;
        compare_with_other(&mut report, &figures);
        report["other"] = figures;
    }
    if args.runs("checkpoint") {
        report["checkpoint"] = checkpoint_load(&args, &token).await?;
    }
    if args.runs("metrics") {
        eprintln!("metrics on and off…");
        report["metrics"] = metrics_overhead(&args, &token, duration).await?;
    }
    if args.runs("cluster") {
        eprintln!("cluster…");
        // Bounded, and stopped on Ctrl-C: either way the scenario's future is dropped, which
        // stops its nodes, nginx, Redis and the gateway.
        let bound = Duration::from_secs(300 + 40 * args.seconds);
        let figures = tokio::select! {
            figures = tokio::time::timeout(bound, cluster(&args, &token, duration)) => {
                figures.unwrap_or_else(|_| Err(anyhow::anyhow!("did not end within {bound:?}")))
            }
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        report["cluster"] = figures.unwrap_or_else(|e| json!({ "skipped": format!("{e:#}") }));
        for (name, workload) in [
            ("s3_content_put_vs_fs", "content_put"),
            ("s3_content_get_vs_fs", "content_get"),
        ] {
            let fs = report[workload]["mb_per_sec"].as_f64();
            let s3 = report["cluster"][format!("s3_{workload}")]["mb_per_sec"].as_f64();
            if let (Some(fs), Some(s3)) = (fs, s3)
                && fs > 0.0
            {
                report[name] = json!(round(s3 / fs));
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// This disk's own limits, measured in the same run.
struct Disk {
    /// Write, fsync, rename and fsync the directory, one file after the other: writes/s.
    serial_fsync: f64,
    /// Appends of 32 records to one log with one `fdatasync` each: records/s.
    grouped_fdatasync: f64,
}

/// The Socket.IO scenarios, into `report`: memory per idle connection, `set`, `get`,
/// `contend`, both writes with write ids, and `fanout`; `set` also as a multiple of the
/// disk's limits.
async fn socket_scenarios(
    args: &Args,
    server: &ServerProcess,
    token: &str,
    disk: &Disk,
    report: &mut Value,
) -> Result<()> {
    let duration = Duration::from_secs(args.seconds);
    let addr = server.addr;
    // Memory first, on the fresh server: after the other scenarios, freed memory would be
    // reused by the new connections and hide their cost.
    if args.runs("idle") {
        eprintln!("idle…");
        report["idle"] = idle_memory(server, token, 2000).await?;
    }
    // The server's CPU per operation beside each figure.
    let probe = Probe::cpu_of(server);
    let probe = Some(&probe);
    let addrs = [addr];
    let measured = |clients, workload| {
        measured_throughput(&addrs, token, clients, duration, workload, 0, probe)
    };
    if args.runs("set") {
        eprintln!("set…");
        let set = measured(32, Workload::Set).await?;
        let set_ops = set["ops_per_sec"].as_f64().unwrap_or(0.0);
        report["set_vs_serial_fsync"] = json!(round(set_ops / disk.serial_fsync));
        report["set_vs_grouped_fdatasync"] = json!(round(set_ops / disk.grouped_fdatasync));
        report["set"] = set;
    }
    if args.runs("get") {
        eprintln!("get…");
        report["get"] = measured(32, Workload::Get).await?;
    }
    if args.runs("contend") {
        eprintln!("contend…");
        report["contend"] = measured(16, Workload::Contend).await?;
    }
    if args.runs("write_ids") {
        eprintln!("set and contend with write ids…");
        report["set_write_ids"] = measured(32, Workload::SetIds).await?;
        report["contend_write_ids"] = measured(16, Workload::ContendIds).await?;
    }
    if args.runs("fanout") {
        for &subscribers in &args.fanout_subscribers {
            eprintln!("fanout to {subscribers}…");
            report[format!("fanout_{subscribers}")] = fanout(
                &[addr],
                token,
                subscribers,
                args.fanout_writes,
                2_000_001 + subscribers,
                probe,
            )
            .await?;
        }
    }
    Ok(())
}

/// Ratios of this server's figures to the other server's, into `report`: throughput as
/// ours / theirs, latency and memory as ours / theirs (below 1 is better).
fn compare_with_other(report: &mut Value, other: &Value) {
    let mut ratios = json!({});
    let mut ratio = |name: String, ours: Option<f64>, theirs: Option<f64>| {
        if let (Some(ours), Some(theirs)) = (ours, theirs)
            && theirs > 0.0
        {
            ratios[name] = json!(round(ours / theirs));
        }
    };
    for scenario in ["set", "get", "contend"] {
        for figure in ["ops_per_sec", "p50_ms", "p99_ms", "server_cpu_us_per_op"] {
            ratio(
                format!("{scenario}_{figure}"),
                report[scenario][figure].as_f64(),
                other[scenario][figure].as_f64(),
            );
        }
    }
    let fanouts: Vec<String> = report
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| k.starts_with("fanout_"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for fanout in fanouts {
        for figure in ["p50_ms", "p99_ms", "server_cpu_us_per_op"] {
            ratio(
                format!("{fanout}_{figure}"),
                report[&fanout][figure].as_f64(),
                other[&fanout][figure].as_f64(),
            );
        }
    }
    ratio(
        "idle_bytes_per_connection".into(),
        report["idle"]["bytes_per_connection"].as_f64(),
        other["idle"]["bytes_per_connection"].as_f64(),
    );
    report["vs_other"] = ratios;
}

/// Refs of the `checkpoint` scenario: written once each, and written round-robin.
const DISTINCT_REFS: usize = 100_000;
const ROUND_ROBIN_REFS: usize = 10_000;

/// Checkpoints under load, on a server of its own with the default settings: 100,000 distinct
/// refs written once each, then 10,000 refs written round-robin (each client its own share,
/// compare-and-swap on the version it last wrote). For each: writes/s and the server's CPU per
/// write, the checkpoints it ran (their count, mean, and the histogram bucket of the longest),
/// the largest unwritten bytes and journal on disk (sampled every 20 ms), and both at the end.
async fn checkpoint_load(args: &Args, token: &str) -> Result<Value> {
    let dir = tempfile::tempdir_in(&args.dir).context("temp storage dir")?;
    let server = start_server(dir.path(), &[("METRICS_TOKEN", METRICS_TOKEN)]);
    let probe = Probe::cpu_of(&server);
    let journal = dir.path().join(blobs::storage::store::JOURNAL_DIR);
    let mut report = json!({});
    let phases = [
        ("distinct_100k_once", 4_000_000, DISTINCT_REFS, None),
        (
            "round_robin_10k",
            5_000_000,
            ROUND_ROBIN_REFS,
            Some(Duration::from_secs(args.round_robin_seconds)),
        ),
    ];
    for (name, base, refs, lasting) in phases {
        eprintln!("checkpoint: {name}…");
        let (sampling, peaks) = tokio::sync::watch::channel((0u64, 0u64));
        let sampler = tokio::spawn(sample_peaks(server.addr, journal.clone(), sampling));
        let before = (probe.sample().await?, checkpoint_stats(server.addr).await?);
        let start = Instant::now();
        let writes = write_refs(server.addr, token, base, refs, lasting).await?;
        let elapsed = start.elapsed().as_secs_f64();
        let after = (probe.sample().await?, checkpoint_stats(server.addr).await?);
        sampler.abort();
        let (unwritten_peak, journal_peak) = *peaks.borrow();
        let (count, seconds) = (after.1.0 - before.1.0, after.1.1 - before.1.1);
        let mut figures = json!({
            "refs": refs,
            "writes": writes,
            "writes_per_sec": round(writes as f64 / elapsed),
            "checkpoints": count,
            "checkpoint_mean_s": round(seconds / count.max(1.0)),
            "checkpoint_longest_at_most_s": longest_bucket(&before.1.2, &after.1.2, count),
            "unwritten_peak_bytes": unwritten_peak,
            "journal_peak_bytes": journal_peak,
            "unwritten_end_bytes": metric(server.addr, "blobs_unwritten_bytes").await?,
            "journal_end_bytes": dir_bytes(&journal),
        });
        let ops = writes.max(1) as f64;
        merge(&mut figures, probe.costs(&before.0, &after.0, ops, ops));
        report[name] = figures;
    }
    stop(server).await;
    Ok(report)
}

/// Writes `refs` refs numbered from `base` from 32 clients, each its own share: once each, or
/// round-robin for `lasting`. The writes made.
async fn write_refs(
    addr: SocketAddr,
    token: &str,
    base: usize,
    refs: usize,
    lasting: Option<Duration>,
) -> Result<usize> {
    const CLIENTS: usize = 32;
    let deadline = lasting.map(|d| Instant::now() + d);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let mut socket = RawClient::connect_token(addr, token).await?;
        let data = kib_data();
        tasks.push(tokio::spawn(async move {
            let mine: Vec<usize> = (client..refs).step_by(CLIENTS).collect();
            let mut versions: Vec<Option<u64>> = vec![None; mine.len()];
            let mut writes = 0;
            for turn in 0.. {
                let at = turn % mine.len().max(1);
                match deadline {
                    None if turn == mine.len() => break,
                    Some(deadline) if Instant::now() >= deadline => break,
                    _ => {}
                }
                socket
                    .call("ref", &[json!(bench_ref(base + mine[at]))])
                    .await?;
                let ack = socket.call1("set", set_args(&data, versions[at])).await?;
                if ack["success"] != true {
                    bail!("write refused: {ack}");
                }
                versions[at] = ack["version"].as_u64();
                writes += 1;
            }
            socket.close().await.ok();
            Ok::<_, anyhow::Error>(writes)
        }));
    }
    let mut writes = 0;
    for task in tasks {
        writes += task.await??;
    }
    Ok(writes)
}

/// Every 20 ms, the largest unwritten bytes (from the metrics) and journal on disk so far,
/// into `peaks`, until aborted.
async fn sample_peaks(
    addr: SocketAddr,
    journal: PathBuf,
    peaks: tokio::sync::watch::Sender<(u64, u64)>,
) -> Result<()> {
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    loop {
        ticks.tick().await;
        let unwritten = metric(addr, "blobs_unwritten_bytes").await? as u64;
        let journal = dir_bytes(&journal);
        peaks.send_modify(|(u, j)| (*u, *j) = ((*u).max(unwritten), (*j).max(journal)));
    }
}

/// The checkpoints so far: count, total seconds, and the histogram's cumulative buckets.
async fn checkpoint_stats(addr: SocketAddr) -> Result<(f64, f64, Vec<(String, f64)>)> {
    let text = metrics_text(addr).await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let buckets = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("blobs_checkpoint_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.parse().ok()?))
        })
        .collect();
    Ok((
        value("blobs_checkpoint_seconds_count"),
        value("blobs_checkpoint_seconds_sum"),
        buckets,
    ))
}

/// The smallest bucket bound that holds every checkpoint between two readings: the longest
/// took at most this many seconds.
fn longest_bucket(before: &[(String, f64)], after: &[(String, f64)], count: f64) -> Value {
    after
        .iter()
        .zip(before)
        .find(|((_, a), (_, b))| a - b >= count)
        .map_or(Value::Null, |((le, _), _)| json!(le))
}

/// One unlabelled metric of this build's server.
async fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let text = metrics_text(addr).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in the metrics"))
}

async fn metrics_text(addr: SocketAddr) -> Result<String> {
    Ok(reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Bytes of the files in `dir` (0 when it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Subscribers of the several-node fanout, spread over the nodes.
const CLUSTER_SUBSCRIBERS: usize = 300;

/// Concurrent requests of the raw gateway load, and the size of its objects.
const RAW_TASKS: usize = 16;
const RAW_OBJECT_SIZE: usize = 1024;

/// The `METRICS_TOKEN` of the cluster scenario's nodes: their object-store request counters
/// are read through it.
const METRICS_TOKEN: &str = "bench-metrics";

/// The same workloads (`set`, `get`, `contend`, `fanout`) on the file store (one node), then on
/// a Ceph RADOS Gateway with Redis (both started here, on loopback): one node with the clients
/// straight on it, the same node behind nginx, and three nodes behind nginx. Each with the
/// CPU the nodes, nginx and the gateway spent per operation and the object-store requests per
/// operation by kind. Beside them the gateway alone under object_store's client (1 KiB `PUT`,
/// `GET` and conditional `GET`, 16 at a time), and 1 MiB content through one node.
async fn cluster(args: &Args, token: &str, duration: Duration) -> Result<Value> {
    let mut report = json!({ "clock_ticks_per_sec": clock_ticks_per_sec() });
    let metrics = [("METRICS_TOKEN", METRICS_TOKEN)];

    eprintln!("cluster: file store, 1 node…");
    let dir = tempfile::tempdir_in(&args.dir).context("temp storage dir")?;
    let node = start_server(dir.path(), &metrics);
    let probe = Probe::new(&[&node], None, Vec::new());
    report["file_store_1_node"] = workloads(args, token, &[node.addr], &probe, 0).await?;
    stop(node).await;

    let redis = RedisServer::start(&args.redis_server);
    eprintln!("cluster: starting the gateway…");
    let rgw = S3Server::rgw(&args.rgw_script, "blobs-bench").await;
    let gateway = gateway_pids(&rgw.endpoint);
    anyhow::ensure!(
        !gateway.is_empty(),
        "no gateway process found for {}",
        rgw.endpoint
    );
    eprintln!("cluster: the gateway alone…");
    report["raw_gateway"] = raw_gateway(&rgw, duration, &gateway).await?;

    let env = [
        ("STORE", "s3"),
        ("S3_ENDPOINT", rgw.endpoint.as_str()),
        ("S3_BUCKET", rgw.bucket.as_str()),
        ("S3_REGION", rgw.region.as_str()),
        ("S3_ACCESS_KEY_ID", rgw.access_key.as_str()),
        ("S3_SECRET_ACCESS_KEY", rgw.secret_key.as_str()),
        ("REDIS_URL", redis.url.as_str()),
        metrics[0],
    ];
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir_in(&args.dir))
        .collect::<std::io::Result<_>>()?;
    let mut nodes = vec![start_server(dirs[0].path(), &env)];

    eprintln!("cluster: gateway, 1 node…");
    let probe = Probe::new(&[&nodes[0]], None, gateway.clone());
    report["rgw_1_node"] = workloads(args, token, &[nodes[0].addr], &probe, 1).await?;

    eprintln!("cluster: gateway, 1 node behind nginx…");
    let nginx = Nginx::start(&args.nginx, &[nodes[0].addr])?;
    let probe = Probe::new(&[&nodes[0]], Some(&nginx), gateway.clone());
    report["rgw_1_node_nginx"] = workloads(args, token, &[nginx.addr], &probe, 2).await?;
    drop(nginx);

    eprintln!("cluster: gateway, 3 nodes behind nginx…");
    while nodes.len() < 3 {
        nodes.push(start_server(dirs[nodes.len()].path(), &env));
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let nginx = Nginx::start(&args.nginx, &addrs)?;
    let probe = Probe::new(
        &nodes.iter().collect::<Vec<_>>(),
        Some(&nginx),
        gateway.clone(),
    );
    report["rgw_3_nodes_nginx"] = workloads(args, token, &[nginx.addr], &probe, 3).await?;
    drop(nginx);

    // Content through one node on the object store: the file store's `content_*` figures of the
    // same run are the comparison.
    eprintln!("cluster: content…");
    let (put, stored) = content_throughput(nodes[0].addr, token, duration, None).await?;
    let (get, _) = content_throughput(nodes[0].addr, token, duration, Some(&stored)).await?;
    report["s3_content_put"] = put;
    report["s3_content_get"] = get;
    for node in nodes {
        stop(node).await;
    }
    report["ratios"] = cluster_ratios(&report);
    Ok(report)
}

/// Throughput of each configuration of the gateway over the file store's and over the raw
/// gateway's (`set` against `PUT`, `get` against the conditional `GET` it sends), and fanout
/// p50 against the file store's.
fn cluster_ratios(report: &Value) -> Value {
    let mut ratios = json!({});
    let fs = &report["file_store_1_node"];
    let raw = &report["raw_gateway"];
    for config in ["rgw_1_node", "rgw_1_node_nginx", "rgw_3_nodes_nginx"] {
        let figures = &report[config];
        let mut these = json!({});
        let mut ratio = |name: &str, ours: Option<f64>, theirs: Option<f64>| {
            if let (Some(ours), Some(theirs)) = (ours, theirs)
                && theirs > 0.0
            {
                these[name] = json!(round(ours / theirs));
            }
        };
        for workload in ["set", "get", "contend"] {
            ratio(
                &format!("{workload}_vs_file_store"),
                figures[workload]["ops_per_sec"].as_f64(),
                fs[workload]["ops_per_sec"].as_f64(),
            );
        }
        ratio(
            "contend_committed_vs_file_store",
            figures["contend"]["committed_per_sec"].as_f64(),
            fs["contend"]["committed_per_sec"].as_f64(),
        );
        ratio(
            "fanout_p50_vs_file_store",
            figures["fanout"]["p50_ms"].as_f64(),
            fs["fanout"]["p50_ms"].as_f64(),
        );
        ratio(
            "set_vs_raw_put",
            figures["set"]["ops_per_sec"].as_f64(),
            raw["put"]["ops_per_sec"].as_f64(),
        );
        ratio(
            "get_vs_raw_get_not_modified",
            figures["get"]["ops_per_sec"].as_f64(),
            raw["get_not_modified"]["ops_per_sec"].as_f64(),
        );
        ratios[config] = these;
    }
    ratios
}

/// `set` and `get` (32 clients), `contend` (16 clients) and `fanout` (a writer and
/// [`CLUSTER_SUBSCRIBERS`], spread over `addrs` in turn), each with its costs as `probe`
/// measures them. `config` keeps each configuration on refs of its own.
async fn workloads(
    args: &Args,
    token: &str,
    addrs: &[SocketAddr],
    probe: &Probe,
    config: usize,
) -> Result<Value> {
    let duration = Duration::from_secs(args.seconds);
    let base = config * 10_000;
    let mut report = json!({});
    for (name, clients, workload) in [
        ("set", 32, Workload::Set),
        ("get", 32, Workload::Get),
        ("contend", 16, Workload::Contend),
    ] {
        report[name] =
            measured_throughput(addrs, token, clients, duration, workload, base, Some(probe))
                .await?;
    }
    report["fanout"] = fanout(
        addrs,
        token,
        CLUSTER_SUBSCRIBERS,
        args.fanout_writes,
        2_000_000 + base,
        Some(probe),
    )
    .await?;
    Ok(report)
}

/// The processes a run is measured on: the nodes (CPU, and object-store requests from their
/// metrics), nginx's master and workers, and the gateway's daemons.
struct Probe {
    nodes: Vec<(u32, SocketAddr)>,
    nginx: Option<u32>,
    gateway: Vec<u32>,
    /// Whether the nodes are this build's, whose metrics count object-store requests.
    metrics: bool,
}

/// What [`Probe::sample`] read at one moment.
struct Sample {
    at: Instant,
    node_ticks: u64,
    nginx_ticks: u64,
    gateway_ticks: u64,
    /// `blobs_object_store_requests_total` by kind, summed over the nodes.
    store: BTreeMap<String, f64>,
    /// `blobs_backend_errors_total{backend="object_store"}`, summed over the nodes.
    store_errors: f64,
}

impl Probe {
    fn new(nodes: &[&ServerProcess], nginx: Option<&Nginx>, gateway: Vec<u32>) -> Self {
        Self {
            nodes: nodes.iter().map(|n| (n.pid(), n.addr)).collect(),
            nginx: nginx.map(Nginx::pid),
            gateway,
            metrics: true,
        }
    }

    /// One server, of this build or another: its CPU only.
    fn cpu_of(server: &ServerProcess) -> Self {
        Self {
            nodes: vec![(server.pid(), server.addr)],
            nginx: None,
            gateway: Vec::new(),
            metrics: false,
        }
    }

    async fn sample(&self) -> Result<Sample> {
        let mut sample = Sample {
            at: Instant::now(),
            node_ticks: 0,
            nginx_ticks: self.nginx.map_or(0, process_tree_ticks),
            gateway_ticks: self.gateway.iter().map(|&p| cpu_ticks(p)).sum(),
            store: BTreeMap::new(),
            store_errors: 0.0,
        };
        for &(pid, addr) in &self.nodes {
            sample.node_ticks += cpu_ticks(pid);
            if !self.metrics {
                continue;
            }
            let text = metrics_text(addr).await?;
            for line in text.lines() {
                if let Some(rest) =
                    line.strip_prefix("blobs_object_store_requests_total{request=\"")
                    && let Some((kind, value)) = rest.split_once("\"} ")
                {
                    *sample.store.entry(kind.to_owned()).or_default() += value.parse::<f64>()?;
                } else if let Some(value) =
                    line.strip_prefix("blobs_backend_errors_total{backend=\"object_store\"} ")
                {
                    sample.store_errors += value.parse::<f64>()?;
                }
            }
        }
        Ok(sample)
    }

    /// The costs between two samples: CPU microseconds per `cpu_ops` of the nodes, nginx and
    /// the gateway (and the cores each kept busy on average), and object-store requests per
    /// `store_ops` by kind.
    fn costs(&self, before: &Sample, after: &Sample, cpu_ops: f64, store_ops: f64) -> Value {
        let elapsed = after.at.duration_since(before.at).as_secs_f64();
        let tick = 1.0 / clock_ticks_per_sec();
        let mut costs = json!({});
        let mut cpu = |name: &str, ticks: u64| {
            let seconds = ticks as f64 * tick;
            costs[format!("{name}_cpu_us_per_op")] = json!(round(seconds * 1e6 / cpu_ops));
            costs[format!("{name}_cores")] = json!(round(seconds / elapsed));
        };
        cpu("server", after.node_ticks - before.node_ticks);
        if self.nginx.is_some() {
            cpu("nginx", after.nginx_ticks - before.nginx_ticks);
        }
        if !self.gateway.is_empty() {
            cpu("gateway", after.gateway_ticks - before.gateway_ticks);
        }
        if !self.metrics {
            return costs;
        }
        let mut store = json!({});
        for (kind, count) in &after.store {
            let delta = count - before.store.get(kind).copied().unwrap_or(0.0);
            if delta > 0.0 {
                store[kind] = json!(round(delta / store_ops));
            }
        }
        costs["store_requests_per_op"] = store;
        costs["store_errors"] = json!(after.store_errors - before.store_errors);
        costs
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (`getconf CLK_TCK`; 100 when it
/// cannot say, the value on Linux).
fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of `/proc/<pid>/stat` after the command name (from the state on), if it runs.
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system) of a process, in clock ticks; 0 once it is gone.
fn cpu_ticks(pid: u32) -> u64 {
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the state (field 3).
    proc_stat(pid).map_or(0, |f| {
        f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
    })
}

/// CPU ticks of `pid` and its children (nginx's master and workers).
fn process_tree_ticks(pid: u32) -> u64 {
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| proc_stat(child).is_some_and(|f| f[1] == pid.to_string()))
        .map(cpu_ticks)
        .sum();
    cpu_ticks(pid) + children
}

/// The gateway's daemons (radosgw, ceph-osd, ceph-mon) of `endpoint`: those whose `-c` file
/// names its port as the gateway's endpoint (every instance has a configuration of its own).
fn gateway_pids(endpoint: &str) -> Vec<u32> {
    let Some(port) = endpoint.rsplit(':').next() else {
        return Vec::new();
    };
    let needle = format!("endpoint=127.0.0.1:{port} ");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let daemon = args.first().is_some_and(|a| {
                [&b"radosgw"[..], b"ceph-osd", b"ceph-mon"]
                    .iter()
                    .any(|d| a.ends_with(d))
            });
            let conf = args
                .windows(2)
                .find(|w| w[0] == b"-c")
                .and_then(|w| std::str::from_utf8(w[1]).ok())
                .and_then(|path| std::fs::read_to_string(path).ok());
            daemon && conf.is_some_and(|c| c.contains(&needle))
        })
        .collect()
}

/// The gateway alone, under the object store client the server uses: [`RAW_TASKS`] tasks, each
/// on an object of its own of [`RAW_OBJECT_SIZE`] bytes, `PUT`ting it, then `GET`ting it, then
/// `GET`ting it with `If-None-Match` (answered 304, what a node sends for a `get` of an unchanged
/// blob), each for `duration`; with the gateway's CPU per request.
async fn raw_gateway(s3: &S3Server, duration: Duration, gateway: &[u32]) -> Result<Value> {
    use object_store::{GetOptions, ObjectStore as _, ObjectStoreExt as _};
    let store = Arc::new(blobs::storage::s3::client(
        &s3.endpoint,
        &s3.bucket,
        &s3.region,
        &s3.access_key,
        &s3.secret_key,
    )?);
    let mut etags = Vec::new();
    for task in 0..RAW_TASKS {
        let path = object_store::path::Path::from(format!("bench-raw/{task}"));
        let put = store.put(&path, vec![b'x'; RAW_OBJECT_SIZE].into()).await?;
        etags.push(put.e_tag.context("the gateway answers an ETag")?);
    }
    let mut report = json!({ "tasks": RAW_TASKS, "object_bytes": RAW_OBJECT_SIZE });
    for request in ["put", "get", "get_not_modified"] {
        let ticks = || gateway.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
        let ticks_before = ticks();
        let deadline = Instant::now() + duration;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (task, etag) in etags.iter().enumerate() {
            let (store, etag) = (store.clone(), etag.clone());
            tasks.push(tokio::spawn(async move {
                let path = object_store::path::Path::from(format!("bench-raw/{task}"));
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match request {
                        "put" => {
                            store.put(&path, vec![b'y'; RAW_OBJECT_SIZE].into()).await?;
                        }
                        "get" => {
                            let body = store.get(&path).await?.bytes().await?;
                            anyhow::ensure!(body.len() == RAW_OBJECT_SIZE, "short read");
                        }
                        _ => {
                            let options = GetOptions {
                                if_none_match: Some(etag.clone()),
                                ..GetOptions::default()
                            };
                            match store.get_opts(&path, options).await {
                                Err(object_store::Error::NotModified { .. }) => {}
                                other => bail!("expected 304, got {:?}", other.map(|_| ())),
                            }
                        }
                    }
                    latencies.push(sent.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        let mut latencies = joined(tasks).await?;
        let elapsed = start.elapsed().as_secs_f64();
        let seconds = (ticks() - ticks_before) as f64 / clock_ticks_per_sec();
        report[request] = json!({
            "ops": latencies.len(),
            "ops_per_sec": round(latencies.len() as f64 / elapsed),
            "p50_ms": percentile_ms(&mut latencies, 0.50),
            "p99_ms": percentile_ms(&mut latencies, 0.99),
            "gateway_cpu_us_per_op": round(seconds * 1e6 / latencies.len().max(1) as f64),
            "gateway_cores": round(seconds / elapsed),
        });
        if request == "put" {
            // The objects changed: the conditional GETs need their new ETags.
            for (task, etag) in etags.iter_mut().enumerate() {
                let path = object_store::path::Path::from(format!("bench-raw/{task}"));
                *etag = store.head(&path).await?.e_tag.context("an ETag")?;
            }
        }
    }
    Ok(report)
}

/// nginx in front of `upstreams` (round robin: every benchmark client comes from 127.0.0.1, so
/// `ip_hash` would send them all to one node; WebSocket clients need no stickiness), on a free
/// loopback port, with its configuration, pid file and logs in a temp dir. Killed on drop.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(program: &Path, upstreams: &[SocketAddr]) -> Result<Self> {
        let dir = tempfile::tempdir().context("nginx's temp dir")?;
        // nginx cannot be handed a socket: take a free port and release it for nginx.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("        server {u};\n"))
            .collect();
        let conf = format!(
            "daemon off;
worker_processes auto;
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream blobs_nodes {{
{servers}    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://blobs_nodes;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_read_timeout 120s;
            proxy_buffering off;
        }}
    }}
}}
"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = std::process::Command::new(program)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("{} runs", program.display()))?;
        let mut nginx = Self {
            addr,
            child,
            _dir: dir,
        };
        // Bounded wait for nginx to listen (it reads its configuration first).
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(nginx._dir.path().join("error.log"));
                bail!("nginx exited ({status}): {}", log.unwrap_or_default());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "nginx did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (a SIGKILLed master would leave them
    /// running); SIGKILL if it has not exited within 5 s.
    fn drop(&mut self) {
        let pid = self.pid().to_string();
        let asked = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        if asked.is_ok_and(|s| s.success()) {
            let asked_at = Instant::now();
            while asked_at.elapsed() < Duration::from_secs(5) {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// This build's server as a child process (so its memory can be read), with limits that let
/// every benchmark connection come from 127.0.0.1.
fn start_server(storage: &Path, env: &[(&str, &str)]) -> ServerProcess {
    let mut all = vec![
        ("TOKEN_SECRET", SECRET),
        ("MAX_CONNECTIONS_PER_IP", "100000"),
        ("MAX_CONNECTIONS", "100000"),
        ("EVENTS_PER_SECOND", "1000000"),
        ("EVENT_BURST", "1000000"),
    ];
    all.extend_from_slice(env);
    ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_blobs")), storage, &all)
}

/// SIGTERM, and the graceful shutdown awaited.
async fn stop(server: ServerProcess) {
    server.terminate();
    server.wait().await;
}

/// Rounds of the metrics scenario: each runs `set` and `get` on a fresh server without metrics
/// and on one with them, so both see the same machine in turn.
const METRICS_ROUNDS: usize = 3;

/// `set` and `get` throughput with metrics off (no `METRICS_TOKEN`) and on, interleaved over
/// [`METRICS_ROUNDS`] rounds: the median of each, and on/off ratios.
async fn metrics_overhead(args: &Args, token: &str, duration: Duration) -> Result<Value> {
    let mut samples: [[Vec<f64>; 2]; 2] = Default::default();
    for _ in 0..METRICS_ROUNDS {
        for (on, env) in [(0, &[][..]), (1, &[("METRICS_TOKEN", "bench")][..])] {
            let storage = tempfile::tempdir_in(&args.dir).context("temp storage dir")?;
            let server = start_server(storage.path(), env);
            for (w, workload) in [Workload::Set, Workload::Get].into_iter().enumerate() {
                let figures = throughput(&[server.addr], token, 32, duration, workload).await?;
                samples[w][on].push(figures["ops_per_sec"].as_f64().unwrap_or(0.0));
            }
            if on == 1 {
                // The figures of a server that really recorded: its scrape counts the sets.
                let text = reqwest::Client::new()
                    .get(format!("http://{}/metrics", server.addr))
                    .bearer_auth("bench")
                    .send()
                    .await?
                    .text()
                    .await?;
                anyhow::ensure!(
                    text.contains(
                        "blobs_socketio_events_total{event=\"set\",outcome=\"committed\"}"
                    ),
                    "the server with metrics recorded no set"
                );
            }
            stop(server).await;
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut report = json!({ "rounds": METRICS_ROUNDS });
    for (w, name) in ["set", "get"].into_iter().enumerate() {
        let off = median(&mut samples[w][0]);
        let on = median(&mut samples[w][1]);
        report[name] = json!({
            "off_ops_per_sec": round(off),
            "on_ops_per_sec": round(on),
            "on_vs_off": round(on / off),
        });
    }
    Ok(report)
}

/// Write + fsync + rename + fsync-dir through the server's own durable replace, from
/// `threads` threads at once (each its own file, `writes` times `body_len` bytes), in writes
/// per second.
fn durable_write_rate(dir: &Path, threads: usize, writes: usize, body_len: usize) -> Result<f64> {
    let body = vec![b'x'; body_len];
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let path = dir
                    .join(format!("probe-{}", t % 256))
                    .join(format!("{t}.json"));
                let body = &body;
                scope.spawn(move || {
                    (0..writes).try_for_each(|_| blobs::storage::durable::replace(&path, body))
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("probe thread"))
    })?;
    Ok((writes * threads) as f64 / start.elapsed().as_secs_f64())
}

/// Records per second appended to one log from one thread, `batch` records of `record_len`
/// bytes per append and one `fdatasync` per append, `appends` times: what one sync can cover
/// when writes are grouped.
fn grouped_fdatasync_rate(
    dir: &Path,
    batch: usize,
    appends: usize,
    record_len: usize,
) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("grouped-probe");
    let mut log = std::fs::File::create(&path)?;
    let chunk = vec![b'x'; batch * record_len];
    let start = Instant::now();
    for _ in 0..appends {
        log.write_all(&chunk)?;
        log.sync_data()?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok((appends * batch) as f64 / elapsed)
}

/// Sequential write rate of this disk in MB/s (10^6 bytes): 128 MiB in 1 MiB writes, then one
/// fsync, the way a large content upload reaches the disk.
fn sequential_write_mb_per_sec(dir: &Path) -> Result<f64> {
    use std::io::Write;
    const CHUNKS: usize = 128;
    let chunk = vec![0x5au8; CONTENT_SIZE];
    let path = dir.join("sequential-probe");
    let start = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    for _ in 0..CHUNKS {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    let elapsed = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok((CHUNKS * CONTENT_SIZE) as f64 / 1e6 / elapsed)
}

/// Size of the content in the `content_*` scenarios.
const CONTENT_SIZE: usize = 1024 * 1024;

/// Clients of the `content_*` scenarios: few, as large transfers saturate the disk and the two
/// cores long before they saturate connections.
const CONTENT_CLIENTS: usize = 4;

/// Content throughput over `/blobs/{hash}` with 1 MiB blobs: `PUT`s of new content (each
/// client hashes its bytes first, off the clock), or, given `stored`, `GET`s of those. The
/// figures, and the hashes stored.
async fn content_throughput(
    addr: SocketAddr,
    token: &str,
    duration: Duration,
    stored: Option<&[String]>,
) -> Result<(Value, Vec<String>)> {
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CONTENT_CLIENTS {
        let token = token.to_owned();
        let reads: Option<Vec<String>> = stored.map(<[String]>::to_vec);
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            // Distinct per client; the first 8 bytes then make each PUT's content new.
            let mut content: Vec<u8> = (0..CONTENT_SIZE)
                .map(|i| (i.wrapping_mul(131) ^ client) as u8)
                .collect();
            let (mut latencies, mut hashes) = (Vec::new(), Vec::new());
            for n in 0.. {
                if Instant::now() >= deadline {
                    break;
                }
                let (request, hash) = match &reads {
                    Some(hashes) if hashes.is_empty() => bail!("nothing stored to read"),
                    Some(hashes) => {
                        let hash = hashes[(n * CONTENT_CLIENTS + client) % hashes.len()].clone();
                        (http.get(format!("http://{addr}/blobs/{hash}")), hash)
                    }
                    None => {
                        content[..8].copy_from_slice(&(n as u64).to_le_bytes());
                        let hash = blake3::hash(&content).to_hex().to_string();
                        let url = format!("http://{addr}/blobs/{hash}");
                        (http.put(url).body(content.clone()), hash)
                    }
                };
                let sent = Instant::now();
                let response = request.bearer_auth(&token).send().await?;
                if !response.status().is_success() {
                    bail!("{} for {hash}", response.status());
                }
                let body = response.bytes().await?;
                if reads.is_some() && body.len() != CONTENT_SIZE {
                    bail!("short read of {hash}: {} bytes", body.len());
                }
                latencies.push(sent.elapsed());
                hashes.push(hash);
            }
            Ok::<_, anyhow::Error>((latencies, hashes))
        }));
    }
    let (mut latencies, mut hashes) = (Vec::new(), Vec::new());
    for task in tasks {
        let (l, h) = task.await??;
        latencies.extend(l);
        hashes.extend(h);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let figures = json!({
        "clients": CONTENT_CLIENTS,
        "blob_bytes": CONTENT_SIZE,
        "ops": latencies.len(),
        "ops_per_sec": round(latencies.len() as f64 / elapsed),
        "mb_per_sec": round((latencies.len() * CONTENT_SIZE) as f64 / 1e6 / elapsed),
        "p50_ms": percentile_ms(&mut latencies, 0.50),
        "p99_ms": percentile_ms(&mut latencies, 0.99),
    });
    Ok((figures, hashes))
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// Each client its own ref, compare-and-swap loop.
    Set,
    /// Each client reads its own 1 KiB blob.
    Get,
    /// All clients compare-and-swap loop on one ref.
    Contend,
    /// [`Workload::Set`] with write ids (each client a writer).
    SetIds,
    /// [`Workload::Contend`] with write ids: the blob remembers every client as a writer.
    ContendIds,
}

impl Workload {
    fn contended(self) -> bool {
        matches!(self, Workload::Contend | Workload::ContendIds)
    }
}

/// 1 KiB of data as base64.
/// The argument of a `set`: `version` only when there is one (the original refuses `null`).
fn set_args(data: &str, version: Option<u64>) -> Value {
    match version {
        Some(version) => json!({ "data": data, "version": version }),
        None => json!({ "data": data }),
    }
}

fn kib_data() -> String {
    "QUJD".repeat(1024 / 3 + 1)
}

/// A distinct ref per index, spread over the shard directories as real (hash-like) refs are.
fn bench_ref(i: usize) -> String {
    format!("{:02x}{i:062x}", (i * 97) % 256)
}

async fn throughput(
    addrs: &[SocketAddr],
    token: &str,
    clients: usize,
    duration: Duration,
    workload: Workload,
) -> Result<Value> {
    measured_throughput(addrs, token, clients, duration, workload, 0, None).await
}

/// [`throughput`] on refs numbered from `base`, with the costs `probe` measures over the timed
/// part (not the connections and first writes before it).
async fn measured_throughput(
    addrs: &[SocketAddr],
    token: &str,
    clients: usize,
    duration: Duration,
    workload: Workload,
    base: usize,
    probe: Option<&Probe>,
) -> Result<Value> {
    let data = kib_data();
    let mut sockets = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut socket = RawClient::connect_token(addrs[i % addrs.len()], token).await?;
        let r = if workload.contended() {
            bench_ref(1_000_000 + base)
        } else {
            bench_ref(base + i)
        };
        socket.call("ref", &[json!(r)]).await?;
        if workload == Workload::Get {
            socket.call1("set", json!({ "data": data })).await?;
        }
        sockets.push(socket);
    }
    let before = match probe {
        Some(probe) => Some(probe.sample().await?),
        None => None,
    };
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (writer, mut socket) in sockets.into_iter().enumerate() {
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut committed = 0u64;
            let mut version: Option<u64> = None;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let ack = match workload {
                    Workload::Get => socket.call1("get", json!({})).await?,
                    Workload::SetIds | Workload::ContendIds => {
                        seq += 1;
                        let mut args = set_args(&data, version);
                        args["writer"] = json!(format!("bench-writer-{writer}"));
                        args["seq"] = json!(seq);
                        socket.call1("set", args).await?
                    }
                    Workload::Set | Workload::Contend => {
                        socket.call1("set", set_args(&data, version)).await?
                    }
                };
                latencies.push(sent.elapsed());
                if workload != Workload::Get {
                    if ack["success"] == true {
                        committed += 1;
                    }
                    version = ack["version"].as_u64();
                } else if ack["version"].as_u64().is_none() {
                    bail!("get failed: {ack}");
                }
            }
            socket.close().await.ok();
            Ok::<_, anyhow::Error>((latencies, committed))
        }));
    }
    let mut latencies = Vec::new();
    let mut committed = 0;
    for task in tasks {
        let (l, c) = task.await??;
        latencies.extend(l);
        committed += c;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut report = json!({
        "clients": clients,
        "ops": latencies.len(),
        "ops_per_sec": round(latencies.len() as f64 / elapsed),
        "p50_ms": percentile_ms(&mut latencies, 0.50),
        "p99_ms": percentile_ms(&mut latencies, 0.99),
    });
    if workload.contended() {
        report["committed_per_sec"] = json!(round(committed as f64 / elapsed));
    }
    if let (Some(probe), Some(before)) = (probe, before) {
        let ops = latencies.len().max(1) as f64;
        merge(
            &mut report,
            probe.costs(&before, &probe.sample().await?, ops, ops),
        );
    }
    Ok(report)
}

/// HTTP: each client reads its own 1 KiB blob (`GET`), or replaces it with `If-Match`
/// (`PUT`, a durable compare-and-swap), over keep-alive connections.
async fn http_throughput(
    addr: SocketAddr,
    token: &str,
    clients: usize,
    duration: Duration,
    put: bool,
) -> Result<Value> {
    let body = vec![b'x'; 1024];
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let url = format!("http://{addr}/v1/blobs/{}", bench_ref(3_000_000 + i));
        let (token, body) = (token.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let created = http
                .put(&url)
                .bearer_auth(&token)
                .body(body.clone())
                .send()
                .await?;
            let mut etag = created.headers()["etag"].to_str()?.to_owned();
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = if put {
                    http.put(&url)
                        .bearer_auth(&token)
                        .header("if-match", &etag)
                        .body(body.clone())
                        .send()
                        .await?
                } else {
                    http.get(&url).bearer_auth(&token).send().await?
                };
                if !response.status().is_success() {
                    bail!("{} from {url}", response.status());
                }
                etag = response.headers()["etag"].to_str()?.to_owned();
                response.bytes().await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = joined(tasks).await?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(json!({
        "clients": clients,
        "ops": latencies.len(),
        "ops_per_sec": round(latencies.len() as f64 / elapsed),
        "p50_ms": percentile_ms(&mut latencies, 0.50),
        "p99_ms": percentile_ms(&mut latencies, 0.99),
    }))
}

/// One writer, `subscribers` watchers of the same ref: time from sending `set` to each
/// watcher's `changed`. Watchers keep their receive times to themselves (no shared lock on the
/// measured path); an atomic count tells the writer when a round is complete.
async fn fanout(
    addrs: &[SocketAddr],
    token: &str,
    subscribers: usize,
    writes: usize,
    ref_index: usize,
    probe: Option<&Probe>,
) -> Result<Value> {
    let r = bench_ref(ref_index);
    let mut writer = RawClient::connect_token(addrs[0], token).await?;
    writer.call("ref", &[json!(r)]).await?;
    let received = Arc::new(AtomicUsize::new(0));
    let round_done = Arc::new(Notify::new());
    let mut watchers = Vec::new();
    for i in 0..subscribers {
        let mut socket = RawClient::connect_token(addrs[i % addrs.len()], token).await?;
        socket.call("ref", &[json!(r)]).await?;
        let (received, round_done) = (received.clone(), round_done.clone());
        watchers.push(tokio::spawn(async move {
            let mut arrivals = Vec::with_capacity(writes);
            for round in 1..=writes {
                let packet = socket.recv().await?;
                arrivals.push(Instant::now());
                if packet != r#"2["changed"]"# {
                    bail!("unexpected packet {packet}");
                }
                if received.fetch_add(1, Ordering::AcqRel) + 1 == subscribers * round {
                    round_done.notify_one();
                }
            }
            Ok::<_, anyhow::Error>(arrivals)
        }));
    }
    let data = kib_data();
    let before = match probe {
        Some(probe) => Some(probe.sample().await?),
        None => None,
    };
    let mut sent = Vec::with_capacity(writes);
    let mut acks = Vec::with_capacity(writes);
    let mut version = None;
    for _ in 0..writes {
        let done = round_done.notified();
        let start = Instant::now();
        sent.push(start);
        let ack = writer.call1("set", set_args(&data, version)).await?;
        acks.push(start.elapsed());
        version = ack["version"].as_u64();
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .context("every subscriber hears changed")?;
    }
    let mut latencies = Vec::with_capacity(subscribers * writes);
    // Per write: the first and the last arrival.
    let mut first = vec![Duration::MAX; writes];
    let mut last = vec![Duration::ZERO; writes];
    for watcher in watchers {
        let arrivals = watcher.await??;
        for (i, (at, sent)) in arrivals.iter().zip(&sent).enumerate() {
            let latency = *at - *sent;
            first[i] = first[i].min(latency);
            last[i] = last[i].max(latency);
            latencies.push(latency);
        }
    }
    // Where the time goes: the writer's ack (the commit, then `changed` handed to every
    // socket, then the ack), the first subscriber's arrival, and the spread from the first
    // arrival to the last (the delivery to every socket).
    let mut spread: Vec<Duration> = first.iter().zip(&last).map(|(f, l)| *l - *f).collect();
    let mut report = json!({
        "subscribers": subscribers,
        "writes": writes,
        "p50_ms": percentile_ms(&mut latencies, 0.50),
        "p99_ms": percentile_ms(&mut latencies, 0.99),
        "ack_p50_ms": percentile_ms(&mut acks, 0.50),
        "ack_p99_ms": percentile_ms(&mut acks, 0.99),
        "first_arrival_p50_ms": percentile_ms(&mut first, 0.50),
        "first_arrival_p99_ms": percentile_ms(&mut first, 0.99),
        "spread_p50_ms": percentile_ms(&mut spread, 0.50),
        "spread_p99_ms": percentile_ms(&mut spread, 0.99),
    });
    // CPU per `changed` delivered, object-store requests per write.
    if let (Some(probe), Some(before)) = (probe, before) {
        let after = probe.sample().await?;
        let delivered = (subscribers * writes).max(1) as f64;
        merge(
            &mut report,
            probe.costs(&before, &after, delivered, writes.max(1) as f64),
        );
    }
    Ok(report)
}

/// The figures of `scenario`, with `probe`'s costs per operation (its `ops`) over the whole of
/// it.
async fn costed(probe: &Probe, scenario: impl Future<Output = Result<Value>>) -> Result<Value> {
    let before = probe.sample().await?;
    let mut figures = scenario.await?;
    let ops = figures["ops"].as_f64().unwrap_or(0.0).max(1.0);
    merge(
        &mut figures,
        probe.costs(&before, &probe.sample().await?, ops, ops),
    );
    Ok(figures)
}

/// `extra`'s fields added to the object `report`.
fn merge(report: &mut Value, extra: Value) {
    if let (Some(report), Value::Object(extra)) = (report.as_object_mut(), extra) {
        report.extend(extra);
    }
}

/// Server memory per idle connection: RSS growth over `count` connected sockets.
async fn idle_memory(server: &ServerProcess, token: &str, count: usize) -> Result<Value> {
    // Warm up allocator pools with one connection so the baseline is not the empty process.
    let warm = RawClient::connect_token(server.addr, token).await?;
    let before = server.rss_bytes();
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(RawClient::connect_token(server.addr, token).await?);
    }
    // A round trip on the last socket: every earlier handshake has completed by then. (`ref`
    // to none: every server of the protocol answers it.)
    if let Some(last) = sockets.last_mut() {
        last.call("ref", &[Value::Null]).await?;
    }
    let after = server.rss_bytes();
    for socket in sockets {
        socket.close().await.ok();
    }
    warm.close().await.ok();
    let per_connection = after.saturating_sub(before) as f64 / count as f64;
    Ok(json!({
        "connections": count,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_connection": round(per_connection),
    }))
}

fn percentile_ms(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    round(samples[index].as_secs_f64() * 1000.0)
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Every latency the load tasks measured, or the first task's error.
async fn joined(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}
