//! Server configuration: flags, environment variables and a `.env` file.
//!
//! The binary reads `.env` with dotenvy first, so a variable set in the real environment wins
//! over the file and a flag wins over both (clap's `env` fallback).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::names::Bucket;

/// Everything the server needs to start. Tests build it with [`Config::parse_from`].
#[derive(Clone, Debug, Parser)]
#[command(
    name = "blobs",
    version,
    about = "Blob server with optimistic concurrency over Socket.IO"
)]
pub struct Config {
    /// Secret that signs and verifies the bucket tokens (HS256). Required: at least
    /// [`MIN_SECRET_BYTES`] bytes once the whitespace around it is trimmed.
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Secrets tokens were signed with before `TOKEN_SECRET`, comma-separated: still accepted,
    /// never used to sign. For rotating the secret without logging every client out at once.
    /// Each entry is trimmed; empty entries are dropped, shorter ones than [`MIN_SECRET_BYTES`]
    /// refused.
    #[arg(
        long,
        env = "PREVIOUS_TOKEN_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub previous_token_secrets: Vec<String>,

    /// Bearer token that `GET /metrics` requires (Prometheus' `authorization` setting).
    /// Unset: no metrics are recorded and `/metrics` answers 404.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Directory that holds the buckets (one JSON file per blob).
    #[arg(long, env = "STORAGE", default_value = "./data")]
    pub storage: PathBuf,

    /// Largest blob, in bytes, on both protocols (Socket.IO `data` is its base64: 786,432 bytes
    /// are 1,048,576 characters).
    #[arg(long, env = "MAX_DATA_BYTES", default_value_t = 786_432)]
    pub max_data_bytes: usize,

    /// Proxies whose `X-Real-IP` header is believed: comma-separated addresses or CIDR blocks.
    /// A connection from any other address is recorded with its own address.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_network,
        default_value = "127.0.0.0/8,::1"
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Whether token holders see the uploader's address (`uploader`) in the Blob Service's
    /// records (`GET /api/v1/blobs`, `/metadata`). It is recorded either way, for the operator.
    #[arg(long, env = "EXPOSE_UPLOADER_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub expose_uploader_ip: bool,

    /// Most TCP connections (HTTP, long-polling and WebSocket alike) open at once, lowered at
    /// start to fit the descriptor limit. Past it, new connections get 503 (`/healthz` still
    /// answers).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most Socket.IO sessions (either transport) and HTTP event streams at once; past it a
    /// handshake gets `connect_error` and a stream 503. Unset: the connection cap as lowered
    /// at start (a long-polling session holds no connection between its requests).
    #[arg(long, env = "MAX_SESSIONS")]
    pub max_sessions: Option<usize>,

    /// Most Socket.IO sessions and HTTP event streams from one client address (after `TRUSTED_PROXIES`); 0: no
    /// per-address limit, as in the original (NAT puts whole offices and mobile networks on
    /// one address).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Most refs one Socket.IO connection may `watch` at once; a `watch` past it is refused.
    #[arg(long, env = "MAX_WATCHED_REFS", default_value_t = 1000)]
    pub max_watched_refs: usize,

    /// Most refs watched at once on this server, by all connections together (a watch costs
    /// about 300 bytes); a `watch` past it is refused.
    #[arg(long, env = "MAX_WATCHES", default_value_t = 1_000_000)]
    pub max_watches: usize,

    /// Most Engine.IO sessions that have not yet sent the Socket.IO CONNECT packet; past it a
    /// new handshake gets 503.
    #[arg(long, env = "MAX_PENDING_HANDSHAKES", default_value_t = 1024)]
    pub max_pending_handshakes: usize,

    /// Most bytes an Engine.IO session may send before its CONNECT is accepted (its CONNECT
    /// packet included); past it the connection is closed, or a long-polling `POST` refused.
    #[arg(long, env = "MAX_CONNECT_BYTES", value_parser = clap::value_parser!(u64).range(1024..), default_value_t = 64 * 1024)]
    pub max_connect_bytes: u64,

    /// How long a new Engine.IO session has to send CONNECT (with its token) before it is
    /// closed, e.g. `5s`.
    #[arg(long, env = "CONNECT_TIMEOUT", value_parser = positive_duration, default_value = "5s")]
    pub connect_timeout: Duration,

    /// Largest request head (request line and headers) in bytes; a larger one gets 431.
    #[arg(long, env = "MAX_HEAD_BYTES", value_parser = clap::value_parser!(u32).range(1024..), default_value_t = 16 * 1024)]
    pub max_head_bytes: u32,

    /// How long a client has to send a request head, and how long a keep-alive connection
    /// may wait idle for its next request, e.g. `20s`.
    #[arg(long, env = "HEADER_TIMEOUT", value_parser = positive_duration, default_value = "20s")]
    pub header_timeout: Duration,

    /// Longest pause while a request body arrives, e.g. `30s`; past it the request fails and
    /// nothing is written.
    #[arg(long, env = "BODY_TIMEOUT", value_parser = positive_duration, default_value = "30s")]
    pub body_timeout: Duration,

    /// Longest time a client may take no byte of what it is sent, e.g. `30s`; past it its
    /// connection is closed, with everything queued for it.
    #[arg(long, env = "SEND_TIMEOUT", value_parser = positive_duration, default_value = "30s")]
    pub send_timeout: Duration,

    /// Events one socket may send per second, sustained; more get an `{ error }` ack, and a
    /// socket that keeps sending at over twice this rate is disconnected.
    #[arg(long, env = "EVENTS_PER_SECOND", default_value_t = 100)]
    pub events_per_second: u32,

    /// Events one socket may send in a burst above the sustained rate.
    #[arg(long, env = "EVENT_BURST", default_value_t = 200)]
    pub event_burst: u32,

    /// Bytes of event arguments one socket may have waiting to run (4 MiB by default); an
    /// event past it is answered `{ error }` at once.
    #[arg(long, env = "MAX_PENDING_BYTES", value_parser = clap::value_parser!(u64).range(1024..), default_value_t = 4 * 1024 * 1024)]
    pub max_pending_bytes: u64,

    /// Packets queued for one socket while it does not read. Every packet counts at least
    /// `SEND_BUFFER_BYTES` over half of this, so the bytes run out first.
    #[arg(long, env = "SEND_BUFFER_PACKETS", value_parser = clap::value_parser!(u64).range(2..=65_536), default_value_t = 1024)]
    pub send_buffer_packets: u64,

    /// Bytes sent to one socket and not yet read by its client (2 MiB by default). Replies
    /// take at most half and wait for the client to read (one that reads nothing for
    /// `PING_TIMEOUT` is dropped); a client behind by all of it is dropped.
    #[arg(long, env = "SEND_BUFFER_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub send_buffer_bytes: u64,

    /// Kernel send buffer of each client connection (`SO_SNDBUF`, 256 KiB by default; Linux
    /// doubles it); 0: the kernel's own tuning, which lets a client that does not read hold
    /// megabytes in the kernel.
    #[arg(long, env = "SOCKET_SEND_BUFFER", default_value_t = 256 * 1024)]
    pub socket_send_buffer: usize,

    /// Origins browsers may call from (comma-separated, e.g. `https://app.example.com`);
    /// unset: any origin, without credentials, as the original.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Whether browsers may send cookies and HTTP auth with cross-origin requests
    /// (`Access-Control-Allow-Credentials`); only with `CORS_ORIGINS`.
    #[arg(long, env = "CORS_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub cors_credentials: bool,

    /// How often the server pings each client (Engine.IO `pingInterval`), e.g. `25s`.
    #[arg(long, env = "PING_INTERVAL", value_parser = humantime::parse_duration, default_value = "25s")]
    pub ping_interval: Duration,

    /// How long a client has to answer a ping before it is disconnected (`pingTimeout`).
    #[arg(long, env = "PING_TIMEOUT", value_parser = humantime::parse_duration, default_value = "20s")]
    pub ping_timeout: Duration,

    /// Largest content-addressed blob, in bytes (64 MiB by default); a larger upload is refused
    /// while it arrives.
    #[arg(long, env = "CONTENT_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub content_max_bytes: u64,

    /// Content-addressed blobs larger than this come as a direct URL rather than inline when a
    /// `blob-request` asks for redirects.
    #[arg(long, env = "CONTENT_REDIRECT_BYTES", default_value_t = 256 * 1024)]
    pub content_redirect_bytes: u64,

    /// The former names of the two settings above (`CAS_MAX_BYTES`, `CAS_REDIRECT_BYTES`):
    /// refused with their new names, so a configuration that still sets them never falls back
    /// to the defaults unnoticed.
    #[arg(long = "cas-max-bytes", env = "CAS_MAX_BYTES", hide = true)]
    pub renamed_max_bytes: Option<String>,
    #[arg(long = "cas-redirect-bytes", env = "CAS_REDIRECT_BYTES", hide = true)]
    pub renamed_redirect_bytes: Option<String>,

    /// How long a direct transfer URL stays valid, e.g. `15m`.
    #[arg(long, env = "DIRECT_URL_TTL", value_parser = humantime::parse_duration, default_value = "15m")]
    pub direct_url_ttl: Duration,

    /// How often an idle event stream (SSE change stream, metadata stream) gets a keep-alive,
    /// so proxies and clients keep it open, e.g. `15s`.
    #[arg(long, env = "STREAM_KEEP_ALIVE", value_parser = positive_duration, default_value = "15s")]
    pub stream_keep_alive: Duration,

    /// How often the Blob Service's retention sweep runs (it also runs at start), e.g. `1m`.
    #[arg(long, env = "RETENTION_SWEEP_INTERVAL", value_parser = positive_duration, default_value = "1m")]
    pub retention_sweep_interval: Duration,

    /// How often the file store checkpoints: the blob files written since the last one are
    /// synced together and the journal that held their writes is dropped. Bounds what a
    /// restart after a crash replays, e.g. `5s`.
    #[arg(long, env = "CHECKPOINT_INTERVAL", value_parser = positive_duration, default_value = "5s")]
    pub checkpoint_interval: Duration,

    /// How often stored content is read back and checked against its hash in the
    /// background (files only), e.g. `24h`.
    #[arg(long, env = "SCRUB_INTERVAL", value_parser = positive_duration, default_value = "24h")]
    pub scrub_interval: Duration,

    /// Where blobs live: `fs` (JSON files and content under `STORAGE`) or `s3` (an
    /// S3-compatible object store shared by every node: versioned blobs, content-addressed
    /// blobs and Blob Service records all live there; `STORAGE` is not used).
    #[arg(long, env = "STORE", value_enum, default_value = "fs")]
    pub store: StoreKind,

    /// S3 endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://minio:9000`.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 bucket that holds the blobs.
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// S3 region.
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// S3 access key id.
    #[arg(long, env = "S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,

    /// S3 secret access key.
    #[arg(long, env = "S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Prefix of every object name, e.g. `blobs/`.
    #[arg(long, env = "S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// With `STORE=s3`: bytes of blobs a node keeps, so that a read the store answers `304 Not
    /// Modified` (the kept blob is still current) needs no body; 0 keeps none. Every read
    /// still asks the store.
    #[arg(long, env = "OBJECT_CACHE_BYTES", default_value_t = DEFAULT_OBJECT_CACHE_BYTES)]
    pub object_cache_bytes: u64,

    /// Redis URL (`redis://host:6379`): when set, Socket.IO rooms and change notifications
    /// span every node on this Redis (Redis 7 or later, RESP3).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Most bytes one bucket may store, its versioned blobs, content and Blob Service records
    /// together, e.g. `10GiB`; 0: no limit. Past it, writes are refused with HTTP 507 or an
    /// `{ error }` acknowledgement (deletes always pass).
    #[arg(long, env = "BUCKET_QUOTA_BYTES", value_parser = parse_size, default_value = "10GiB")]
    pub bucket_quota_bytes: u64,

    /// Most Blob Service records one bucket may hold (each takes about 1.3 KB of memory while
    /// the server runs); 0: no limit.
    #[arg(long, env = "BUCKET_MAX_RECORDS", default_value_t = 100_000)]
    pub bucket_max_records: u64,

    /// Quotas of single buckets, in place of the two above: `bucket:bytes[:records]`,
    /// comma-separated, e.g. `app1:50GiB:1000000,app2:0` (0: no limit; records left out: the
    /// default).
    #[arg(long, env = "BUCKET_QUOTAS", value_delimiter = ',', value_parser = parse_bucket_quota)]
    pub bucket_quotas: Vec<BucketQuota>,

    /// Free space kept on the storage's file system (`STORE=fs`), or on the temp directory
    /// uploads are received into (`STORE=s3`), e.g. `1GiB`: below it writes that add bytes
    /// are refused with HTTP 507, while the journal, checkpoints and deletes go on. 0: no
    /// reserve.
    #[arg(long, env = "MIN_FREE_BYTES", value_parser = parse_size, default_value = "1GiB")]
    pub min_free_bytes: u64,

    /// With the file store: bytes of committed blobs whose files wait for the next checkpoint
    /// (the journal holds them durably; readers get them from memory), e.g. `64MiB`. Past half
    /// of it a checkpoint starts early; at all of it writers wait for one. 0: every write
    /// replaces its file before it is acknowledged, so the files are always current (slower).
    #[arg(long, env = "UNWRITTEN_BYTES", value_parser = parse_size, default_value = "64MiB")]
    pub unwritten_bytes: u64,

    /// Public origin of this server in direct transfer URLs, e.g. `https://blobs.example.com`.
    /// Unset: `http://` plus the `Host` the client connected with.
    #[arg(long, env = "PUBLIC_URL", value_parser = parse_origin)]
    pub public_url: Option<String>,
}

/// Where versioned blobs live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Fs,
    S3,
}

/// A duration above zero, e.g. `30s`.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// An origin for URLs: `http://` or `https://`, a host, no trailing slash.
fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    let host = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| format!("{text:?} must start with http:// or https://"))?;
    if host.is_empty() || host.contains(['?', '#', ' ']) {
        return Err(format!(
            "{text:?} is not an origin like https://blobs.example.com"
        ));
    }
    Ok(text.to_owned())
}

/// An address (`10.0.0.1`, taken as a /32 or /128) or a CIDR block (`10.0.0.0/8`).
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a CIDR block"))
}

/// The shortest token secret accepted, in bytes after trimming, for `TOKEN_SECRET` and every
/// entry of `PREVIOUS_TOKEN_SECRETS`. A secret is the one key to every bucket: a blank one (a
/// stray space, `"old, "`) lets anyone sign tokens, and a short one falls to a brute-force
/// search of the HMAC of any token seen in a web page.
pub const MIN_SECRET_BYTES: usize = 16;

/// A secret as it is used: without the whitespace around it (which `.env` files and
/// comma-separated lists bring in by accident).
fn trimmed(secret: &str) -> &str {
    secret.trim()
}

/// `TOKEN_SECRET`, trimmed, refusing a missing, blank or short one: the rule of the server and
/// of the `token` binary alike.
pub fn token_secret(secret: Option<&str>) -> Result<&str, ConfigError> {
    match secret.map(trimmed) {
        None | Some("") => Err(ConfigError::MissingSecret),
        Some(secret) if secret.len() < MIN_SECRET_BYTES => Err(ConfigError::ShortSecret),
        Some(secret) => Ok(secret),
    }
}

/// A configuration that cannot start a server; its message is one sentence for the operator.
/// No message ever quotes a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "TOKEN_SECRET is not set or blank: put a long random secret in the environment or in .env (see .env.example)"
    )]
    MissingSecret,
    #[error(
        "TOKEN_SECRET is shorter than 16 bytes (whitespace around it does not count): use a long random secret, e.g. `openssl rand -hex 32`"
    )]
    ShortSecret,
    #[error(
        "entry {0} of PREVIOUS_TOKEN_SECRETS is shorter than 16 bytes (whitespace around it does not count): correct it or remove it"
    )]
    ShortPreviousSecret(usize),
    #[error("STORE=s3 needs S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY")]
    MissingS3,
    #[error("the S3 settings are not usable: {0}")]
    BadS3(String),
    #[error("CORS_CREDENTIALS=true needs CORS_ORIGINS: credentials are never sent to any origin")]
    CredentialsWithoutOrigins,
    #[error("{0} is now called {1}: rename it in the configuration")]
    Renamed(&'static str, &'static str),
    #[error("BUCKET_QUOTAS names the bucket {0} twice: give each bucket one quota")]
    DuplicateQuota(String),
}

/// Refuses an `S3_ENDPOINT` that is not an `http://` or `https://` URL of a host.
fn s3_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::BadS3(format!("S3_ENDPOINT {endpoint:?} {why}"));
    let url = url::Url::parse(endpoint).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("is not an http:// or https:// URL of a host"));
    }
    Ok(())
}

/// Longest `S3_PREFIX`: object names stay far below S3's 1,024 bytes.
const MAX_S3_PREFIX: usize = 256;

/// Refuses an `S3_PREFIX` that is not empty or `/`-separated plain names ending in `/`: the
/// prefix is glued to the bucket's name, so `prod` would make bucket `2app` of one deployment
/// the bucket `app` of a deployment with prefix `prod2`, and a name the store would rewrite
/// (`..`, `/abs`, spaces) would not be the one the operator sees.
fn s3_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| ConfigError::BadS3(format!("S3_PREFIX {prefix:?} {why}"));
    let Some(names) = prefix.strip_suffix('/') else {
        return Err(bad("must end with `/` (e.g. `blobs/`)"));
    };
    if prefix.len() > MAX_S3_PREFIX {
        return Err(bad(&format!("is longer than {MAX_S3_PREFIX} bytes")));
    }
    let plain = |name: &str| {
        !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if !names.split('/').all(plain) {
        return Err(bad(
            "must be names of letters, digits, `-`, `_` and `.` (not `.` or `..`), each ending in `/`",
        ));
    }
    Ok(())
}

impl Config {
    /// The settings of `STORE=s3`, checked: endpoint, bucket, access key and secret.
    pub fn s3_settings(&self) -> Result<(&str, &str, &str, &str), ConfigError> {
        let (Some(endpoint), Some(bucket), Some(key), Some(secret)) = (
            &self.s3_endpoint,
            &self.s3_bucket,
            &self.s3_access_key_id,
            &self.s3_secret_access_key,
        ) else {
            return Err(ConfigError::MissingS3);
        };
        if [endpoint, bucket, key, secret]
            .iter()
            .any(|v| v.trim().is_empty())
        {
            return Err(ConfigError::MissingS3);
        }
        s3_endpoint(endpoint)?;
        s3_prefix(&self.s3_prefix)?;
        Ok((endpoint, bucket, key, secret))
    }

    /// Refuses what no server can start with, before anything is bound or opened: a missing
    /// secret, or a former setting name still in use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.renamed_max_bytes.is_some() {
            return Err(ConfigError::Renamed("CAS_MAX_BYTES", "CONTENT_MAX_BYTES"));
        }
        if self.renamed_redirect_bytes.is_some() {
            return Err(ConfigError::Renamed(
                "CAS_REDIRECT_BYTES",
                "CONTENT_REDIRECT_BYTES",
            ));
        }
        let mut quotas = std::collections::HashSet::new();
        if let Some(twice) = self
            .bucket_quotas
            .iter()
            .find(|q| !quotas.insert(&q.bucket))
        {
            return Err(ConfigError::DuplicateQuota(twice.bucket.to_string()));
        }
        if self.store == StoreKind::S3 {
            self.s3_settings()?;
        }
        self.secret()?;
        self.previous_secrets().map(drop)
    }

    /// The token secret, trimmed, refusing a missing, blank or short one (see
    /// [`token_secret`]).
    pub fn secret(&self) -> Result<&str, ConfigError> {
        token_secret(self.token_secret.as_deref())
    }

    /// The entries of `PREVIOUS_TOKEN_SECRETS`, trimmed, without the empty ones (`"old, "`
    /// is one secret), refusing a short one: its message names the entry by its position
    /// (from 1), never by its text.
    pub fn previous_secrets(&self) -> Result<Vec<&str>, ConfigError> {
        let mut secrets = Vec::new();
        for (position, secret) in self.previous_token_secrets.iter().enumerate() {
            match trimmed(secret) {
                "" => {}
                short if short.len() < MIN_SECRET_BYTES => {
                    return Err(ConfigError::ShortPreviousSecret(position + 1));
                }
                secret => secrets.push(secret),
            }
        }
        Ok(secrets)
    }
}

/// Bytes of object-store blobs kept in memory by default (`OBJECT_CACHE_BYTES`).
pub const DEFAULT_OBJECT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// One entry of `BUCKET_QUOTAS`: `bucket:bytes[:records]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketQuota {
    pub bucket: Bucket,
    pub bytes: u64,
    /// `None`: the default record limit.
    pub records: Option<u64>,
}

/// A size: bytes (`1048576`), or a number with a unit (`64MiB`, `10 GiB`, `1.5GB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(bytes) = text.parse::<u64>() {
        return Ok(bytes);
    }
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("{text:?} is not a size: use bytes or a unit, e.g. 10GiB or 500MB"))
}

/// Parses one `BUCKET_QUOTAS` entry, `bucket:bytes[:records]`.
pub fn parse_bucket_quota(text: &str) -> Result<BucketQuota, String> {
    let text = text.trim();
    let shape = || format!("{text:?} is not bucket:bytes[:records], e.g. app1:50GiB:1000000");
    let mut parts = text.split(':');
    let (Some(name), Some(bytes)) = (parts.next(), parts.next()) else {
        return Err(shape());
    };
    let records = parts
        .next()
        .map(|n| n.trim().parse::<u64>().map_err(|_| shape()))
        .transpose()?;
    if parts.next().is_some() {
        return Err(shape());
    }
    let bucket = Bucket::parse(name.trim())
        .ok_or_else(|| format!("{name:?} in {text:?} is not a bucket name"))?;
    Ok(BucketQuota {
        bucket,
        bytes: parse_size(bytes)?,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_settings_are_checked_before_start() {
        let s3 = |endpoint: &str, prefix: &str| {
            Config::parse_from([
                "blobs",
                "--token-secret",
                LONG,
                "--store",
                "s3",
                "--s3-endpoint",
                endpoint,
                "--s3-bucket",
                "blobs",
                "--s3-access-key-id",
                "key",
                "--s3-secret-access-key",
                "secret",
                "--s3-prefix",
                prefix,
            ])
            .validate()
        };
        assert!(s3("http://127.0.0.1:9000", "").is_ok());
        assert!(s3("https://s3.eu-west-1.amazonaws.com", "blobs/prod-1/").is_ok());
        for endpoint in [
            "notaurl",
            "ftp://127.0.0.1:9000",
            "http://",
            "127.0.0.1:9000",
        ] {
            let refused = s3(endpoint, "").unwrap_err().to_string();
            assert!(refused.contains("S3_ENDPOINT"), "{endpoint}: {refused}");
        }
        let long = "p/".repeat(200);
        for prefix in [
            "noslash", "../", "/abs/", "x/../y/", "a b/", "a//", "a\nb/", &long,
        ] {
            let refused = s3("http://127.0.0.1:9000", prefix).unwrap_err().to_string();
            assert!(refused.contains("S3_PREFIX"), "{prefix}: {refused}");
        }
        let mut blank = Config::parse_from(["blobs", "--token-secret", LONG, "--store", "s3"]);
        blank.s3_endpoint = Some("http://127.0.0.1:9000".into());
        blank.s3_bucket = Some(" ".into());
        assert!(matches!(blank.validate(), Err(ConfigError::MissingS3)));
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::parse_from(["blobs", "--token-secret", LONG]);
        assert_eq!(config.port, 3000);
        assert_eq!(config.host.to_string(), "0.0.0.0");
        assert_eq!(config.storage, PathBuf::from("./data"));
        assert_eq!(config.secret().ok(), Some(LONG));
        assert_eq!(config.previous_secrets().ok(), Some(vec![]));
        assert!(!config.expose_uploader_ip);
        let loopback: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(loopback, ["127.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn trusted_proxies_take_addresses_and_blocks() {
        let config = Config::parse_from([
            "blobs",
            "--trusted-proxies",
            "10.0.0.1, 192.168.0.0/16,fd00::/8",
        ]);
        let parsed: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(parsed, ["10.0.0.1/32", "192.168.0.0/16", "fd00::/8"]);
        assert!(Config::try_parse_from(["blobs", "--trusted-proxies", "nope"]).is_err());
    }

    #[test]
    fn public_urls_are_http_origins() {
        let config = Config::parse_from(["blobs", "--public-url", "https://blobs.example.com/"]);
        assert_eq!(
            config.public_url.as_deref(),
            Some("https://blobs.example.com")
        );
        assert_eq!(config.content_max_bytes, 64 * 1024 * 1024);
        let renamed = Config::parse_from(["blobs", "--token-secret", LONG, "--cas-max-bytes", "1"]);
        assert!(matches!(renamed.validate(), Err(ConfigError::Renamed(..))));
        assert_eq!(config.direct_url_ttl, Duration::from_secs(900));
        for bad in ["blobs.example.com", "ftp://x", "https://", "http://a b"] {
            assert!(
                Config::try_parse_from(["blobs", "--public-url", bad]).is_err(),
                "{bad}"
            );
        }
    }

    /// A secret of the shortest length accepted.
    const LONG: &str = "0123456789abcdef";

    fn with_secrets(current: &str, previous: &str) -> Config {
        Config::parse_from([
            "blobs",
            "--token-secret",
            current,
            "--previous-token-secrets",
            previous,
        ])
    }

    #[test]
    fn an_empty_or_blank_secret_is_refused() {
        for blank in ["", " ", "\t", " \n "] {
            let config = Config::parse_from(["blobs", "--token-secret", blank]);
            assert!(
                matches!(config.secret(), Err(ConfigError::MissingSecret)),
                "{blank:?}"
            );
            assert!(config.validate().is_err(), "{blank:?}");
        }
        let unset = Config::parse_from(["blobs"]);
        assert!(matches!(unset.validate(), Err(ConfigError::MissingSecret)));
    }

    #[test]
    fn secrets_are_trimmed_and_need_sixteen_bytes() {
        let short = &LONG[..MIN_SECRET_BYTES - 1];
        let config = Config::parse_from(["blobs", "--token-secret", short]);
        assert!(matches!(config.secret(), Err(ConfigError::ShortSecret)));
        // Whitespace around a secret is not part of it, and does not make it long enough.
        let padded = format!("  {short}   ");
        let config = Config::parse_from(["blobs", "--token-secret", &padded]);
        assert!(matches!(config.secret(), Err(ConfigError::ShortSecret)));
        let padded = format!(" {LONG}\n");
        let config = Config::parse_from(["blobs", "--token-secret", &padded]);
        assert_eq!(config.secret().ok(), Some(LONG));
        // Sixteen bytes, not characters: eight two-byte characters are enough.
        let config = Config::parse_from(["blobs", "--token-secret", "éééééééé"]);
        assert!(config.secret().is_ok());
        // The message never quotes the secret.
        let message = ConfigError::ShortSecret.to_string();
        assert!(message.contains("16 bytes") && !message.contains(short));
    }

    #[test]
    fn previous_secrets_are_trimmed_blank_ones_dropped_and_short_ones_refused() {
        let alpha = "alpha-secret-0123";
        let beta = "beta-secret-45678";
        let config = with_secrets(LONG, &format!("{alpha}, {beta} ,, "));
        assert_eq!(config.previous_secrets().unwrap(), [alpha, beta]);
        assert!(config.validate().is_ok());
        // `"old, "` is one secret, not a blank key anyone can sign with.
        let config = with_secrets(LONG, &format!("{alpha}, "));
        assert_eq!(config.previous_secrets().unwrap(), [alpha]);
        let config = with_secrets(LONG, " ");
        assert!(config.previous_secrets().unwrap().is_empty());
        let config = with_secrets(LONG, &format!("{alpha}, tooshort"));
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ShortPreviousSecret(2))
        ));
        assert!(
            !ConfigError::ShortPreviousSecret(2)
                .to_string()
                .contains("tooshort")
        );
    }

    #[test]
    fn quotas_default_to_a_bound_and_take_exceptions() {
        let config = Config::parse_from(["blobs", "--token-secret", LONG]);
        assert_eq!(config.bucket_quota_bytes, 10 << 30);
        assert_eq!(config.bucket_max_records, 100_000);
        assert_eq!(config.min_free_bytes, 1 << 30);
        let config = Config::parse_from([
            "blobs",
            "--token-secret",
            "s",
            "--bucket-quotas",
            "big:1TiB:0, small:1MiB",
        ]);
        let limits = crate::storage::quota::Limits::from_config(&config);
        let bucket = |name| crate::names::Bucket::parse(name).unwrap();
        assert_eq!(
            (
                limits.of(&bucket("big")).bytes,
                limits.of(&bucket("big")).records
            ),
            (1 << 40, 0)
        );
        assert_eq!(limits.of(&bucket("small")).records, 100_000);
        let twice = Config::parse_from([
            "blobs",
            "--token-secret",
            LONG,
            "--bucket-quotas",
            "a:1,a:2",
        ]);
        assert!(matches!(
            twice.validate(),
            Err(ConfigError::DuplicateQuota(_))
        ));
        assert!(Config::try_parse_from(["blobs", "--bucket-quotas", "a"]).is_err());
        assert!(Config::try_parse_from(["blobs", "--min-free-bytes", "lots"]).is_err());
    }
}
