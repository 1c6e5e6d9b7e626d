//! Direct transfer URLs: a client moves large content with a plain HTTP request to a URL the
//! server handed out, without a Bearer token, instead of through the Socket.IO connection.
//!
//! Handing out URLs is behind [`DirectUrls`]. [`SignedUrls`] is this server's own kind: its
//! `/blobs/{hash}` routes with `?bucket=&exp=&sig=`, where `sig` is an HMAC-SHA256 over the
//! method, bucket, hash and expiry. [`PresignedUrls`] are the object store's own (S3 query
//! signatures), so the bytes bypass the nodes: a GET reads the content's object, a PUT writes
//! a staging object that `blob-uploaded` verifies by hash before it becomes the content. A URL
//! is good for one method, one bucket and one hash until it expires; changing any part of it
//! breaks the signature.

use std::time::Duration;

use axum::http::Method;
use hmac::{Hmac, Mac};
use object_store::signer::Signer;
use serde::Serialize;
use sha2::Sha256;

use crate::names::{Bucket, ContentHash};
use crate::storage::content;

/// A URL handed to a client, and when it stops working.
#[derive(Clone, Debug, Serialize)]
pub struct DirectUrl {
    pub url: String,
    pub expires_at_unix: u64,
}

/// Hands out direct transfer URLs.
#[async_trait::async_trait]
pub trait DirectUrls: Send + Sync + 'static {
    /// A URL that lets its holder `method` (GET or PUT) this one content of `bucket` until it
    /// expires. `origin` is this server's public origin (`https://blobs.example.com`).
    async fn grant(
        &self,
        origin: &str,
        method: &Method,
        bucket: &Bucket,
        hash: &ContentHash,
        now_unix: u64,
    ) -> content::Result<DirectUrl>;
}

/// Why a signed URL is refused (the client sees 403 either way).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the URL has expired")]
    Expired,
    #[error("the URL's signature does not match")]
    BadSignature,
}

/// This server's signed URLs.
#[derive(Clone)]
pub struct SignedUrls {
    /// Derived from the token secret, so a URL signature can never serve as a token signature.
    key: Vec<u8>,
    lifetime: Duration,
}

/// Separates URL signatures from every other use of the token secret.
const KEY_CONTEXT: &[u8] = b"blobs direct transfer URL v1";

type HmacSha256 = Hmac<Sha256>;

impl SignedUrls {
    pub fn new(secret: &str, lifetime: Duration) -> Self {
        let mut derive =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        derive.update(KEY_CONTEXT);
        Self {
            key: derive.finalize().into_bytes().to_vec(),
            lifetime,
        }
    }

    fn mac(&self, method: &Method, bucket: &Bucket, hash: &ContentHash, exp: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        // No part can contain a newline, so the message is unambiguous.
        mac.update(format!("{method}\n{bucket}\n{hash}\n{exp}").as_bytes());
        mac
    }

    /// Checks a URL's `exp` and `sig` for a request of `method` on `bucket`/`hash` (in constant
    /// time).
    pub fn verify(
        &self,
        method: &Method,
        bucket: &Bucket,
        hash: &ContentHash,
        exp: u64,
        sig: &str,
        now_unix: u64,
    ) -> Result<(), Denied> {
        let sig = hex::decode(sig).map_err(|_| Denied::BadSignature)?;
        self.mac(method, bucket, hash, exp)
            .verify_slice(&sig)
            .map_err(|_| Denied::BadSignature)?;
        if now_unix >= exp {
            return Err(Denied::Expired);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl DirectUrls for SignedUrls {
    async fn grant(
        &self,
        origin: &str,
        method: &Method,
        bucket: &Bucket,
        hash: &ContentHash,
        now_unix: u64,
    ) -> content::Result<DirectUrl> {
        let exp = now_unix + self.lifetime.as_secs().max(1);
        let sig = hex::encode(self.mac(method, bucket, hash, exp).finalize().into_bytes());
        // Bucket names and hashes need no escaping in a URL.
        Ok(DirectUrl {
            url: format!("{origin}/blobs/{hash}?bucket={bucket}&exp={exp}&sig={sig}"),
            expires_at_unix: exp,
        })
    }
}

/// The object store's presigned URLs (S3 query signatures).
pub struct PresignedUrls {
    s3: object_store::aws::AmazonS3,
    /// Prepended to every object name (`S3_PREFIX`).
    prefix: String,
    lifetime: Duration,
}

impl PresignedUrls {
    pub fn new(s3: object_store::aws::AmazonS3, prefix: &str, lifetime: Duration) -> Self {
        Self {
            s3,
            prefix: prefix.to_owned(),
            lifetime,
        }
    }
}

#[async_trait::async_trait]
impl DirectUrls for PresignedUrls {
    async fn grant(
        &self,
        _origin: &str,
        method: &Method,
        bucket: &Bucket,
        hash: &ContentHash,
        now_unix: u64,
    ) -> content::Result<DirectUrl> {
        // Uploads land beside the content, never on it: `blob-uploaded` checks them first.
        let path = if method == Method::PUT {
            content::staging_path(&self.prefix, bucket, hash)
        } else {
            content::content_path(&self.prefix, bucket, hash)
        };
        let lifetime = self.lifetime.max(Duration::from_secs(1));
        let url = self
            .s3
            .signed_url(method.clone(), &path, lifetime)
            .await
            .map_err(|e| content::Error::Io {
                path: path.to_string(),
                source: std::io::Error::other(e),
            })?;
        Ok(DirectUrl {
            url: url.to_string(),
            expires_at_unix: now_unix + lifetime.as_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(url: &str, name: &str) -> String {
        let query = url.split_once('?').unwrap().1;
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn a_url_is_good_for_one_method_bucket_and_hash_until_it_expires() {
        let urls = SignedUrls::new("secret", Duration::from_secs(900));
        let bucket = Bucket::parse("photos").unwrap();
        let hash = ContentHash::of(b"bytes");
        let granted = urls
            .grant("http://h", &Method::PUT, &bucket, &hash, 1_000)
            .await
            .unwrap();
        assert_eq!(granted.expires_at_unix, 1_900);
        assert!(granted.url.starts_with(&format!(
            "http://h/blobs/{hash}?bucket=photos&exp=1900&sig="
        )));
        let sig = query(&granted.url, "sig");
        let check = |method: &Method, bucket: &Bucket, hash: &ContentHash, exp, now| {
            urls.verify(method, bucket, hash, exp, &sig, now)
        };
        assert_eq!(check(&Method::PUT, &bucket, &hash, 1_900, 1_899), Ok(()));
        assert_eq!(
            check(&Method::PUT, &bucket, &hash, 1_900, 1_900),
            Err(Denied::Expired)
        );
        let other_bucket = Bucket::parse("other").unwrap();
        let other_hash = ContentHash::of(b"other");
        for (method, bucket, hash, exp) in [
            (&Method::GET, &bucket, &hash, 1_900),
            (&Method::PUT, &other_bucket, &hash, 1_900),
            (&Method::PUT, &bucket, &other_hash, 1_900),
            (&Method::PUT, &bucket, &hash, 9_999),
        ] {
            assert_eq!(
                check(method, bucket, hash, exp, 1_000),
                Err(Denied::BadSignature)
            );
        }
        let other_secret = SignedUrls::new("other", Duration::from_secs(900));
        assert_eq!(
            other_secret.verify(&Method::PUT, &bucket, &hash, 1_900, &sig, 1_000),
            Err(Denied::BadSignature)
        );
        assert_eq!(
            urls.verify(&Method::PUT, &bucket, &hash, 1_900, "zz", 1_000),
            Err(Denied::BadSignature)
        );
    }
}
