//! Direct transfer URLs: a client moves large content with a plain HTTP request to a URL the
//! server handed out, without a Bearer token, instead of through the Socket.IO connection.
//!
//! Handing out URLs is behind [`DirectUrls`], so an object-store backend can give its own
//! presigned URLs instead. [`SignedUrls`] is this server's own kind: its `/blobs/{hash}` routes
//! with `?bucket=&exp=&sig=`, where `sig` is an HMAC-SHA256 over the method, bucket, hash and
//! expiry. A URL is good for one method, one bucket and one hash until it expires; changing any
//! part of it breaks the signature.

use std::time::Duration;

use axum::http::Method;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::names::{Bucket, ContentHash};

/// A URL handed to a client, and when it stops working.
#[derive(Clone, Debug, Serialize)]
pub struct DirectUrl {
    pub url: String,
    pub expires_at_unix: u64,
}

/// Hands out direct transfer URLs.
pub trait DirectUrls: Send + Sync + 'static {
    /// A URL that lets its holder `method` (GET or PUT) this one content of `bucket` until it
    /// expires. `origin` is this server's public origin (`https://blobs.example.com`).
    fn grant(
        &self,
        origin: &str,
        method: &Method,
        bucket: &Bucket,
        hash: &ContentHash,
        now_unix: u64,
    ) -> DirectUrl;
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

impl DirectUrls for SignedUrls {
    fn grant(
        &self,
        origin: &str,
        method: &Method,
        bucket: &Bucket,
        hash: &ContentHash,
        now_unix: u64,
    ) -> DirectUrl {
        let exp = now_unix + self.lifetime.as_secs().max(1);
        let sig = hex::encode(self.mac(method, bucket, hash, exp).finalize().into_bytes());
        // Bucket names and hashes need no escaping in a URL.
        DirectUrl {
            url: format!("{origin}/blobs/{hash}?bucket={bucket}&exp={exp}&sig={sig}"),
            expires_at_unix: exp,
        }
    }
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    crate::store::now_ms() / 1000
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

    #[test]
    fn a_url_is_good_for_one_method_bucket_and_hash_until_it_expires() {
        let urls = SignedUrls::new("secret", Duration::from_secs(900));
        let bucket = Bucket::parse("photos").unwrap();
        let hash = ContentHash::of(b"bytes");
        let granted = urls.grant("http://h", &Method::PUT, &bucket, &hash, 1_000);
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
