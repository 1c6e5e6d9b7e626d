//! Server configuration: flags, environment variables and a `.env` file.
//!
//! The binary reads `.env` with dotenvy first, so a variable set in the real environment wins
//! over the file and a flag wins over both (clap's `env` fallback).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

/// Everything the server needs to start. Tests build it with [`Config::parse_from`].
#[derive(Clone, Debug, Parser)]
#[command(
    name = "blobs",
    version,
    about = "Blob server with optimistic concurrency over Socket.IO"
)]
pub struct Config {
    /// Secret that signs and verifies the bucket tokens (HS256). Required and non-empty.
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Directory that holds the buckets (one JSON file per blob).
    #[arg(long, env = "STORAGE", default_value = "./data")]
    pub storage: PathBuf,
}

/// A configuration that cannot start a server; its message is one sentence for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "TOKEN_SECRET is not set: put a long random secret in the environment or in .env (see .env.example)"
    )]
    MissingSecret,
}

impl Config {
    /// The token secret, refusing a missing or empty one.
    pub fn secret(&self) -> Result<&str, ConfigError> {
        match self.token_secret.as_deref() {
            Some(secret) if !secret.is_empty() => Ok(secret),
            _ => Err(ConfigError::MissingSecret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::parse_from(["blobs", "--token-secret", "s"]);
        assert_eq!(config.port, 3000);
        assert_eq!(config.host.to_string(), "0.0.0.0");
        assert_eq!(config.storage, PathBuf::from("./data"));
        assert_eq!(config.secret().ok(), Some("s"));
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let config = Config::parse_from(["blobs", "--token-secret", ""]);
        assert!(matches!(config.secret(), Err(ConfigError::MissingSecret)));
    }
}
