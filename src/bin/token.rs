//! Mints a bucket token: `token <bucket>` prints `Token for bucket: <bucket>` and the JWT.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use blobs::auth::{Keys, MintOptions};
use blobs::config;
use blobs::names::Bucket;

/// Prints a token that grants access to one bucket (signed with TOKEN_SECRET).
#[derive(Parser)]
#[command(name = "token")]
struct Args {
    /// The bucket: a letter or digit, then up to 127 letters, digits, `.`, `_` or `-`.
    bucket: String,
    /// Lifetime of the token, e.g. `90d`, `12h`, `15m` (sets `exp`); without it the token
    /// never expires.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<Duration>,
    /// Mint a read-only token: it may `ref`, `get` and receive `changed`, and every write is
    /// refused.
    #[arg(long)]
    read_only: bool,
    /// The token's id (`jti`), which `blobs revoke --jti` names to revoke this one token;
    /// without it a random id is set.
    #[arg(long)]
    jti: Option<String>,
    /// Secret the server verifies tokens with: trimmed, and at least 16 bytes, as the server
    /// requires.
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
}

fn main() -> ExitCode {
    dotenvy::dotenv().ok();
    let args = Args::parse();
    // The server's rule: a token it would refuse to verify is never minted.
    let secret = match config::token_secret(args.token_secret.as_deref()) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(bucket) = Bucket::parse(&args.bucket) else {
        eprintln!(
            "invalid bucket name {:?}: use a letter or digit, then up to 127 letters, digits, '.', '_' or '-'",
            args.bucket
        );
        return ExitCode::from(2);
    };
    let id = args
        .jti
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if id.is_empty() || id.len() > 128 {
        eprintln!("invalid --jti: use 1 to 128 characters");
        return ExitCode::from(2);
    }
    let options = MintOptions {
        expires_in: args.expires_in,
        read_only: args.read_only,
        id: Some(id.clone()),
    };
    // The id goes to stderr, so the two lines of stdout stay the original's.
    eprintln!("Token id (for `blobs revoke --jti`): {id}");
    println!("Token for bucket: {bucket}");
    println!("{}", Keys::new(secret).mint_with(&bucket, &options));
    ExitCode::SUCCESS
}
