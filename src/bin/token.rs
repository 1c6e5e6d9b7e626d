//! Mints a bucket token: `token <bucket>` prints `Token for bucket: <bucket>` and the JWT.

use std::process::ExitCode;

use clap::Parser;

use blobs::auth::Keys;
use blobs::config::ConfigError;
use blobs::names::Bucket;

/// Prints a token that grants access to one bucket (signed with TOKEN_SECRET).
#[derive(Parser)]
#[command(name = "token")]
struct Args {
    /// The bucket: a letter or digit, then up to 127 letters, digits, `.`, `_` or `-`.
    bucket: String,
    /// Secret the server verifies tokens with.
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
}

fn main() -> ExitCode {
    dotenvy::dotenv().ok();
    let args = Args::parse();
    let Some(secret) = args.token_secret.filter(|s| !s.is_empty()) else {
        eprintln!("{}", ConfigError::MissingSecret);
        return ExitCode::from(2);
    };
    let Some(bucket) = Bucket::parse(&args.bucket) else {
        eprintln!(
            "invalid bucket name {:?}: use a letter or digit, then up to 127 letters, digits, '.', '_' or '-'",
            args.bucket
        );
        return ExitCode::from(2);
    };
    println!("Token for bucket: {bucket}");
    println!("{}", Keys::new(&secret).mint(&bucket));
    ExitCode::SUCCESS
}
