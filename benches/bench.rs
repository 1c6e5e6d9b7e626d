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
    /// The Python that runs the S3-compatible server of the cluster scenario (moto).
    #[arg(
        long,
        env = "BENCH_S3_PYTHON",
        default_value = "tests/interop/.venv/bin/python"
    )]
    s3_python: PathBuf,
    /// The script that serves S3 with it (takes a host and a port).
    #[arg(
        long,
        env = "BENCH_S3_SCRIPT",
        default_value = "tests/interop/s3_server.py"
    )]
    s3_script: PathBuf,
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
    /// Run only these scenarios (idle, set, get, http_get, http_put, contend, fanout,
    /// content_put, content_get, metrics, cluster); all when absent.
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
    if args.runs("http_get") {
        report["http_get"] = http_throughput(addr, &token, 32, duration, false).await?;
    }
    if args.runs("http_put") {
        report["http_put"] = http_throughput(addr, &token, 32, duration, true).await?;
    }
    // PUT first: it leaves the blobs GET reads.
    let mut stored = Vec::new();
    if args.runs("content_put") || args.runs("content_get") {
        let (put, hashes) = content_throughput(addr, &token, duration, None).await?;
        let put_mb = put["mb_per_sec"].as_f64().unwrap_or(0.0);
        report["content_put_vs_sequential_write"] = json!(round(put_mb / sequential_mb));
        report["content_put_vs_durable_1mib_writes"] = json!(round(put_mb / durable_content_mb));
        if args.runs("content_put") {
            report["content_put"] = put;
        }
        stored = hashes;
    }
    if args.runs("content_get") {
        let (get, _) = content_throughput(addr, &token, duration, Some(&stored)).await?;
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
    if args.runs("metrics") {
        eprintln!("metrics on and off…");
        report["metrics"] = metrics_overhead(&args, &token, duration).await?;
    }
    if args.runs("cluster") {
        report["cluster"] = match cluster(&args, &token, duration).await {
            Ok(figures) => figures,
            Err(e) => json!({ "skipped": e.to_string() }),
        };
        let ratios = [
            ("s3_set_vs_fs_set", "set", "ops_per_sec", "1_node", "set"),
            (
                "s3_content_put_vs_fs",
                "content_put",
                "mb_per_sec",
                "s3_content_put",
                "",
            ),
            (
                "s3_content_get_vs_fs",
                "content_get",
                "mb_per_sec",
                "s3_content_get",
                "",
            ),
        ];
        for (name, fs, figure, s3, inner) in ratios {
            let fs = report[fs][figure].as_f64();
            let mut s3 = &report["cluster"][s3];
            if !inner.is_empty() {
                s3 = &s3[inner];
            }
            if let (Some(fs), Some(s3)) = (fs, s3[figure].as_f64()) {
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
/// `contend` and `fanout`; `set` also as a multiple of the disk's limits.
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
    if args.runs("set") {
        eprintln!("set…");
        let set = throughput(&[addr], token, 32, duration, Workload::Set).await?;
        let set_ops = set["ops_per_sec"].as_f64().unwrap_or(0.0);
        report["set_vs_serial_fsync"] = json!(round(set_ops / disk.serial_fsync));
        report["set_vs_grouped_fdatasync"] = json!(round(set_ops / disk.grouped_fdatasync));
        report["set"] = set;
    }
    if args.runs("get") {
        eprintln!("get…");
        report["get"] = throughput(&[addr], token, 32, duration, Workload::Get).await?;
    }
    if args.runs("contend") {
        eprintln!("contend…");
        report["contend"] = throughput(&[addr], token, 16, duration, Workload::Contend).await?;
    }
    if args.runs("fanout") {
        for &subscribers in &args.fanout_subscribers {
            eprintln!("fanout to {subscribers}…");
            report[format!("fanout_{subscribers}")] =
                fanout(&[addr], token, subscribers, args.fanout_writes).await?;
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
        for figure in ["ops_per_sec", "p50_ms", "p99_ms"] {
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
        for figure in ["p50_ms", "p99_ms"] {
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

/// Subscribers of the several-node fanout, spread over the nodes.
const CLUSTER_SUBSCRIBERS: usize = 300;

/// 1 node and then 3 nodes on one Redis and one S3-compatible store (moto, started here like
/// Redis, both on loopback): `set` and `get` with 32 clients spread over the nodes, and the
/// fanout of a write on one node to subscribers spread over all of them; then 1 MiB content
/// `PUT`s and `GET`s through one node on the object store.
async fn cluster(args: &Args, token: &str, duration: Duration) -> Result<Value> {
    let redis = RedisServer::start(&args.redis_server);
    let s3 = S3Server::start(&args.s3_python, &args.s3_script, "blobs-bench").await;
    let env = [
        ("STORE", "s3"),
        ("S3_ENDPOINT", s3.endpoint.as_str()),
        ("S3_BUCKET", s3.bucket.as_str()),
        ("S3_REGION", s3.region.as_str()),
        ("S3_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("S3_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
        ("REDIS_URL", redis.url.as_str()),
    ];
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir_in(&args.dir))
        .collect::<std::io::Result<_>>()?;
    let mut nodes = vec![start_server(dirs[0].path(), &env)];
    let mut report = json!({});
    for count in [1, 3] {
        while nodes.len() < count {
            nodes.push(start_server(dirs[nodes.len()].path(), &env));
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        report[format!("{count}_node")] = json!({
            "set": throughput(&addrs, token, 32, duration, Workload::Set).await?,
            "get": throughput(&addrs, token, 32, duration, Workload::Get).await?,
            "fanout": fanout(&addrs, token, CLUSTER_SUBSCRIBERS, args.fanout_writes).await?,
        });
    }
    // Content through one node on the object store: the file store's `content_*` figures of the
    // same run are the comparison.
    let (put, stored) = content_throughput(nodes[0].addr, token, duration, None).await?;
    let (get, _) = content_throughput(nodes[0].addr, token, duration, Some(&stored)).await?;
    report["s3_content_put"] = put;
    report["s3_content_get"] = get;
    for node in nodes {
        stop(node).await;
    }
    Ok(report)
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
                    (0..writes).try_for_each(|_| blobs::durable::replace(&path, body))
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
    let data = kib_data();
    let mut sockets = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut socket = RawClient::connect_token(addrs[i % addrs.len()], token).await?;
        let r = if workload == Workload::Contend {
            bench_ref(1_000_000)
        } else {
            bench_ref(i)
        };
        socket.call("ref", &[json!(r)]).await?;
        if workload == Workload::Get {
            socket.call1("set", json!({ "data": data })).await?;
        }
        sockets.push(socket);
    }
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut socket in sockets {
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut committed = 0u64;
            let mut version: Option<u64> = None;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let ack = match workload {
                    Workload::Get => socket.call1("get", json!({})).await?,
                    _ => socket.call1("set", set_args(&data, version)).await?,
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
    if workload == Workload::Contend {
        report["committed_per_sec"] = json!(round(committed as f64 / elapsed));
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
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
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
) -> Result<Value> {
    let r = bench_ref(2_000_000 + subscribers + addrs.len());
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
    Ok(json!({
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
    }))
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
