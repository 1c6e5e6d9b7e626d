//! Bucket tokens: HS256 JWTs whose `bucket` claim names the one bucket a client may use.
//!
//! Tokens minted by the original carry `{ bucket, iat }` and no `exp`, so `exp` is not
//! required; when `exp` or `nbf` is present it is enforced with no leeway, as the original's
//! `jsonwebtoken.verify` did. Only the HMAC family is accepted: `none` and every asymmetric
//! algorithm are refused, so a public key can never be mistaken for the secret.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::names::Bucket;

/// The claims this server reads and writes. Unknown claims are ignored.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Keys and validation rules built once from the secret; cheap to share behind the state.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Keys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        // The original's tokens have no `exp`: require nothing, enforce what is present.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The bucket a token grants, or `None` for any token that must be refused: bad
    /// signature, wrong algorithm, expired, not yet valid, or a bucket claim that is not a
    /// safe directory name.
    pub fn verify(&self, token: &str) -> Option<Bucket> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        Bucket::parse(&data.claims.bucket)
    }

    /// Mints a token for `bucket` in the original's shape: `{ bucket, iat }`, HS256, no expiry.
    pub fn mint(&self, bucket: &Bucket) -> String {
        let claims = Claims {
            bucket: bucket.as_str().to_owned(),
            iat: Some(unix_seconds()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a serialisable claim set cannot fail")
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "unit-test-secret";

    fn sign(alg: Algorithm, claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn minted_tokens_verify() {
        let keys = Keys::new(SECRET);
        let bucket = Bucket::parse("photos").unwrap();
        assert_eq!(keys.verify(&keys.mint(&bucket)), Some(bucket));
    }

    #[test]
    fn tokens_of_the_original_without_exp_verify() {
        let keys = Keys::new(SECRET);
        let token = sign(
            Algorithm::HS256,
            json!({"bucket": "Legacy", "iat": 1_600_000_000}),
            SECRET,
        );
        assert_eq!(keys.verify(&token).unwrap().as_str(), "Legacy");
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, json!({"bucket": "b"}), SECRET);
            assert!(keys.verify(&token).is_some(), "{alg:?} is accepted");
        }
    }

    #[test]
    fn bad_tokens_are_refused() {
        let keys = Keys::new(SECRET);
        let now = unix_seconds();
        let refused = [
            sign(Algorithm::HS256, json!({"bucket": "b"}), "other"),
            sign(
                Algorithm::HS256,
                json!({"bucket": "b", "exp": now - 1}),
                SECRET,
            ),
            sign(
                Algorithm::HS256,
                json!({"bucket": "b", "nbf": now + 3600}),
                SECRET,
            ),
            sign(
                Algorithm::HS256,
                json!({"bucket": "b", "exp": "never"}),
                SECRET,
            ),
            sign(
                Algorithm::HS256,
                json!({"bucket": "b", "nbf": "soon"}),
                SECRET,
            ),
            sign(Algorithm::HS256, json!({"iat": now}), SECRET),
            sign(Algorithm::HS256, json!({"bucket": ".."}), SECRET),
            sign(Algorithm::HS256, json!({"bucket": "a/b"}), SECRET),
            sign(Algorithm::HS256, json!({"bucket": ""}), SECRET),
            sign(Algorithm::HS256, json!({"bucket": 7}), SECRET),
            "not.a.token".to_owned(),
            String::new(),
        ];
        for token in refused {
            assert!(keys.verify(&token).is_none(), "{token} must be refused");
        }
    }
}
