//! Who may do what: bucket tokens (this module), their revocation ([`revocation`]) and the
//! signed URLs of direct transfers ([`signed_url`]). Auth imports storage (revocations are kept
//! in the store) and never a transport.
//!
//! Bucket tokens: HS256 JWTs whose `bucket` claim names the one bucket a client may use.
//!
//! Tokens minted by the original carry `{ bucket, iat }` and no `exp`, so `exp` is not
//! required; when `exp` or `nbf` is present it is enforced with no leeway, as the original's
//! `jsonwebtoken.verify` did. An `iat` more than [`IAT_LEEWAY_SECS`] ahead of the clock is
//! refused, and so is any token whose header has `crit`. Only the HMAC family is accepted:
//! `none` and every asymmetric algorithm are refused, so a public key can never be mistaken
//! for the secret.
//!
//! Secrets rotate: tokens are minted with `TOKEN_SECRET` alone, and verified with it or with
//! any of `PREVIOUS_TOKEN_SECRETS`. Every key has an id, the first 16 hex digits of the SHA-256
//! of its secret, which minted tokens carry as their `kid` header; a `kid` that names a known
//! key selects it, and a token without one (every token of the original) is tried against each
//! key, the current one first.
//!
//! A token may narrow what it grants with `"scope": "read"` (read-only); a token without
//! `scope` grants full access, as every token of the original does. Any other scope is refused,
//! so a token minted for a narrower scope of a later version never grants more here.

pub mod revocation;
pub mod signed_url;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::{now_ms, now_unix};
use crate::names::Bucket;

/// The `scope` of a read-only token.
const READ_SCOPE: &str = "read";

/// How far ahead of this server's clock a token's `iat` may be, in seconds. A bucket's
/// revocation (`blobs revoke --before`) refuses the tokens issued before its cut-off, so a
/// token whose `iat` lies in the future would outlive every revocation until that time comes.
/// Only the difference between the clock of the machine that minted it and this one is
/// forgiven: NTP keeps it well under a second, and a minute also covers a clock that has not
/// synced yet, while a token can never lead a revocation by more than that minute.
pub const IAT_LEEWAY_SECS: u64 = 60;

/// Longest protected header read, in base64url characters (3 KiB of JSON; a header minted
/// here is under 100): it is decoded before the signature is checked, so its cost is bounded.
const MAX_HEADER_CHARS: usize = 4096;

/// The claims this server reads and writes. Unknown claims are ignored; `exp` and `nbf` are
/// checked by the JWT library.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// Checked by the JWT library (which refuses a non-numeric one) and kept in the grant, so
    /// a live connection ends when it passes.
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The token's id, which `blobs revoke --jti` names. A non-string id is no id.
    #[serde(
        default,
        deserialize_with = "string_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    jti: Option<String>,
}

/// What a verified token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub bucket: Bucket,
    /// Read-only tokens may `ref`, `get` and hear `changed`; every write is refused.
    pub read_only: bool,
    /// When the token stops working (`exp`, seconds since the epoch); `None`: never, as with
    /// every token of the original.
    pub expires: Option<u64>,
    /// When the token was issued (`iat`, seconds since the epoch), which a bucket's
    /// revocation compares with.
    pub issued: Option<u64>,
    /// The token's id (`jti`), which a revocation may name.
    pub id: Option<String>,
}

impl Grant {
    /// Resolves when the token expires (never for a token without `exp`): connections and
    /// streams opened with it end then.
    pub fn expiry(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        // An `exp` past what the clock can represent never comes.
        let left = self
            .expires
            .and_then(|exp| exp.checked_mul(1000))
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        async move {
            match left {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        }
    }

    /// The bucket, when the token may write to it.
    pub fn writable_bucket(&self) -> Option<&Bucket> {
        (!self.read_only).then_some(&self.bucket)
    }
}

/// Options of a token to mint.
#[derive(Clone, Debug, Default)]
pub struct MintOptions {
    /// Lifetime from now; `None` mints a token that never expires (the original's kind).
    pub expires_in: Option<Duration>,
    pub read_only: bool,
    /// The token's id (`jti`), for revoking this one token; `None`: no id.
    pub id: Option<String>,
}

/// Keys and validation rules built once from the secrets; cheap to share behind the state.
pub struct Keys {
    encoding: EncodingKey,
    /// The id of the minting secret, in the `kid` header of every token minted here.
    kid: String,
    /// Every secret tokens are verified with, by id: the current one first.
    decoding: Vec<(String, DecodingKey)>,
    validation: Validation,
}

/// The id of a secret: not the secret, and the same on every node that has it.
fn key_id(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(secret.as_bytes())[..8])
}

impl Keys {
    /// Keys of one secret.
    pub fn new(secret: &str) -> Self {
        Self::rotated(secret, &[])
    }

    /// Keys that mint with `secret` and verify with it or any of `previous` (empty ones are
    /// skipped).
    pub fn rotated(secret: &str, previous: &[&str]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        // The original's tokens have no `exp`: require nothing, enforce what is present.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 0;
        let secrets = std::iter::once(secret).chain(
            previous
                .iter()
                .copied()
                .filter(|s| !s.is_empty() && *s != secret),
        );
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            kid: key_id(secret),
            decoding: secrets
                .map(|s| (key_id(s), DecodingKey::from_secret(s.as_bytes())))
                .collect(),
            validation,
        }
    }

    /// What a token grants, or `None` for any token that must be refused: bad signature,
    /// wrong algorithm, expired, not yet valid, a bucket claim that is not a safe directory
    /// name, or an unknown scope.
    pub fn verify(&self, token: &str) -> Option<Grant> {
        let header = protected_header(token)?;
        let kid = header.get("kid").and_then(serde_json::Value::as_str);
        let named = self
            .decoding
            .iter()
            .find(|(id, _)| Some(id.as_str()) == kid);
        let candidates = match named {
            Some(key) => std::slice::from_ref(key),
            None => &self.decoding[..],
        };
        let claims = candidates.iter().find_map(|(_, key)| {
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()
        })?;
        let claims = claims.claims;
        if claims
            .iat
            .is_some_and(|iat| iat > now_unix().saturating_add(IAT_LEEWAY_SECS))
        {
            return None;
        }
        let read_only = match claims.scope.as_deref() {
            None => false,
            Some(READ_SCOPE) => true,
            Some(_) => return None,
        };
        Some(Grant {
            bucket: Bucket::parse(&claims.bucket)?,
            read_only,
            expires: claims.exp,
            issued: claims.iat,
            id: claims.jti,
        })
    }

    /// Mints a full-access token for `bucket` in the original's shape: `{ bucket, iat }`,
    /// HS256, no expiry (plus the `kid` header, which the original ignores).
    pub fn mint(&self, bucket: &Bucket) -> String {
        self.mint_with(bucket, &MintOptions::default())
    }

    /// Mints a token for `bucket`, optionally expiring and read-only.
    pub fn mint_with(&self, bucket: &Bucket, options: &MintOptions) -> String {
        let now = now_unix();
        let claims = Claims {
            bucket: bucket.as_str().to_owned(),
            iat: Some(now),
            exp: options.expires_in.map(|d| now.saturating_add(d.as_secs())),
            scope: options.read_only.then(|| READ_SCOPE.to_owned()),
            jti: options.id.clone(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("HS256 signing of a serialisable claim set cannot fail")
    }
}

/// The protected header of `token` as JSON, or `None` when the token must be refused: a
/// header too long, not base64url, not a JSON object, or one with `crit`.
///
/// `crit` lists extensions a recipient must understand or else refuse the token (RFC 7515
/// §4.1.11); this server understands none, so any `crit` refuses it, whatever its value. The
/// header is read here because the JWT library verifies a token without looking at `crit`
/// (and reads `"crit": null` as no `crit` at all).
fn protected_header(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine as _;
    let (encoded, _) = token.split_once('.')?;
    if encoded.len() > MAX_HEADER_CHARS {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json).ok()?;
    (!header.contains_key("crit")).then_some(header)
}

/// Whether an expiry (`exp`, seconds since the epoch) has passed: from its second on, a token
/// is expired (RFC 7519 §4.1.4). `None` never passes.
pub fn has_passed(expires: Option<u64>) -> bool {
    expires.is_some_and(|exp| now_unix() >= exp)
}

/// A claim kept only when it is a string.
fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// `exp` as the JWT library accepts it: any JSON number (a fraction is cut off).
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<f64>::deserialize(d)?;
    Ok(value.map(|seconds| seconds.max(0.0) as u64))
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
    fn previous_secrets_verify_and_never_mint() {
        let bucket = Bucket::parse("photos").unwrap();
        let previous = ["old-one", "", "old-two"];
        let keys = Keys::rotated(SECRET, &previous);
        // Tokens of the previous secrets, with and without their `kid`, and of the original.
        for old in ["old-one", "old-two"] {
            let minted = Keys::new(old).mint(&bucket);
            assert!(keys.verify(&minted).is_some(), "{old}, with kid");
            let plain = sign(Algorithm::HS256, json!({"bucket": "photos"}), old);
            assert!(keys.verify(&plain).is_some(), "{old}, no kid");
        }
        // New tokens are the current secret's alone.
        let minted = keys.mint(&bucket);
        assert!(Keys::new(SECRET).verify(&minted).is_some());
        assert!(Keys::new("old-one").verify(&minted).is_none());
        let header = jsonwebtoken::decode_header(&minted).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key_id(SECRET).as_str()));
        // A secret no longer listed is refused, whatever `kid` says.
        assert!(keys.verify(&Keys::new("retired").mint(&bucket)).is_none());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key_id("old-one"));
        let forged = jsonwebtoken::encode(
            &header,
            &json!({"bucket": "photos"}),
            &EncodingKey::from_secret(b"retired"),
        )
        .unwrap();
        assert!(keys.verify(&forged).is_none());
        // An empty previous secret never verifies anything.
        assert!(
            keys.verify(&sign(Algorithm::HS256, json!({"bucket": "photos"}), ""))
                .is_none()
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let keys = Keys::new(SECRET);
        let bucket = Bucket::parse("photos").unwrap();
        let full = keys.verify(&keys.mint(&bucket)).unwrap();
        assert_eq!(full.bucket, bucket);
        assert!(!full.read_only);
        assert_eq!(full.expires, None);
        assert_eq!(full.id, None);
        let issued = full.issued.expect("minted tokens carry iat");
        assert!((now_unix() - 1..=now_unix()).contains(&issued));
        let options = MintOptions {
            expires_in: Some(Duration::from_secs(60)),
            read_only: true,
            id: Some("token-7".to_owned()),
        };
        let read_only = keys.verify(&keys.mint_with(&bucket, &options)).unwrap();
        assert!(read_only.read_only);
        assert_eq!(read_only.id.as_deref(), Some("token-7"));
        let exp = read_only
            .expires
            .expect("an expiring token's grant knows its expiry");
        assert!((now_unix() + 59..=now_unix() + 60).contains(&exp));
        assert!(!has_passed(read_only.expires));
        // An expiry beyond the clock's range is never reached, and never panics.
        let far = Grant {
            expires: Some(u64::MAX),
            ..read_only
        };
        assert!(!has_passed(far.expires));
        drop(far.expiry());
    }

    #[test]
    fn expiring_tokens_carry_exp_and_unknown_scopes_are_refused() {
        let keys = Keys::new(SECRET);
        let bucket = Bucket::parse("b").unwrap();
        let expired = MintOptions {
            expires_in: Some(Duration::ZERO),
            ..MintOptions::default()
        };
        // `exp == now` is already past once the second turns; a token with exp in the past
        // is refused (checked with a hand-made one below to avoid waiting).
        let token = keys.mint_with(&bucket, &expired);
        let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&token)
            .unwrap()
            .claims;
        assert_eq!(claims["exp"], claims["iat"]);
        let admin = sign(
            Algorithm::HS256,
            json!({"bucket": "b", "scope": "admin"}),
            SECRET,
        );
        assert!(keys.verify(&admin).is_none());
    }

    #[test]
    fn tokens_of_the_original_without_exp_verify() {
        let keys = Keys::new(SECRET);
        let token = sign(
            Algorithm::HS256,
            json!({"bucket": "Legacy", "iat": 1_600_000_000}),
            SECRET,
        );
        assert_eq!(keys.verify(&token).unwrap().bucket.as_str(), "Legacy");
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, json!({"bucket": "b"}), SECRET);
            assert!(keys.verify(&token).is_some(), "{alg:?} is accepted");
        }
    }

    /// A token signed with `secret` whose header is exactly `header` (JSON text).
    fn with_header(header: &str, claims: serde_json::Value, secret: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", b64.encode(header), b64.encode(claims.to_string()));
        let key = EncodingKey::from_secret(secret.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
            .expect("HS256 signs");
        format!("{message}.{signature}")
    }

    #[test]
    fn a_crit_header_refuses_the_token() {
        let keys = Keys::new(SECRET);
        let claims = json!({"bucket": "b"});
        let plain = with_header(r#"{"alg":"HS256","typ":"JWT"}"#, claims.clone(), SECRET);
        assert!(keys.verify(&plain).is_some(), "the same token without crit");
        for header in [
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","crit":["x-ext"],"x-ext":"must be understood"}"#,
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
            r#"{"alg":"HS256","crit":"x"}"#,
            r#"{"alg":"HS256","cr\u0069t":["x"]}"#,
        ] {
            let token = with_header(header, claims.clone(), SECRET);
            assert!(keys.verify(&token).is_none(), "{header}");
        }
        // A header past the bound is refused before it is decoded.
        let padding = "x".repeat(MAX_HEADER_CHARS);
        let long = with_header(
            &format!(r#"{{"alg":"HS256","pad":"{padding}"}}"#),
            claims,
            SECRET,
        );
        assert!(keys.verify(&long).is_none());
    }

    #[test]
    fn an_iat_in_the_future_is_refused_past_the_leeway() {
        let keys = Keys::new(SECRET);
        let now = now_unix();
        let issued = |iat: u64| sign(Algorithm::HS256, json!({"bucket": "b", "iat": iat}), SECRET);
        // Within the leeway: a minting clock a little ahead of this one.
        assert!(keys.verify(&issued(now + 30)).is_some());
        assert!(keys.verify(&issued(now + IAT_LEEWAY_SECS - 5)).is_some());
        for ahead in [IAT_LEEWAY_SECS + 5, 3600, 100 * 365 * 86_400] {
            assert!(
                keys.verify(&issued(now + ahead)).is_none(),
                "{ahead} s ahead"
            );
        }
        assert!(keys.verify(&issued(u64::MAX)).is_none());
        assert!(
            keys.verify(&issued(0)).is_some(),
            "an iat in the past is fine"
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        let keys = Keys::new(SECRET);
        let now = now_unix();
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
            sign(Algorithm::HS256, json!({"bucket": "a\u{0}b"}), SECRET),
            sign(Algorithm::HS256, json!({"bucket": "bücket"}), SECRET),
            sign(Algorithm::HS256, json!({"bucket": "b", "scope": 1}), SECRET),
            "not.a.token".to_owned(),
            String::new(),
        ];
        for token in refused {
            assert!(keys.verify(&token).is_none(), "{token} must be refused");
        }
    }
}
