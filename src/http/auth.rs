//! Who a request acts for: a bucket token, sent as `Authorization: Bearer <token>` or, on GET
//! and HEAD, as the `access_token` query parameter (RFC 6750 section 2.3: for `<img src>`,
//! downloads and `EventSource`, which cannot set headers); or, on the content routes only, a
//! direct URL's signature.

use axum::extract::{FromRequestParts, Query};
use axum::http::Method;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, Result};
use crate::auth::Grant;
use crate::direct::Denied;
use crate::names::Bucket;
use crate::state::AppState;

/// What the query may carry instead of an `Authorization` header.
#[derive(Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Credentials {
    /// The bucket token, on GET and HEAD only.
    access_token: Option<String>,
    /// A direct URL's bucket.
    bucket: Option<String>,
    /// A direct URL's expiry, seconds since the epoch.
    exp: Option<String>,
    /// A direct URL's signature: HMAC-SHA256, hex.
    sig: Option<String>,
}

/// The signature of a direct URL, not yet checked: that needs the content and method it was
/// signed for.
pub struct Signature {
    pub bucket: Bucket,
    pub exp: u64,
    pub sig: String,
}

/// Who a request acts for.
pub enum Caller {
    Token(Grant),
    Signed(Signature),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let Query(query) = Query::<Credentials>::from_request_parts(parts, state)
            .await
            .unwrap_or_default();
        if query.bucket.is_some() || query.exp.is_some() || query.sig.is_some() {
            let (Some(bucket), Some(exp), Some(sig)) = (
                query.bucket.as_deref().and_then(Bucket::parse),
                query.exp.and_then(|exp| exp.parse().ok()),
                query.sig,
            ) else {
                return Err(Denied::BadSignature.into());
            };
            return Ok(Caller::Signed(Signature { bucket, exp, sig }));
        }
        let token = bearer(&parts.headers).or_else(|| {
            (parts.method == Method::GET || parts.method == Method::HEAD)
                .then_some(query.access_token.as_deref())
                .flatten()
        });
        token
            .and_then(|token| state.keys().verify(token))
            .map(Caller::Token)
            .ok_or(ApiError::Unauthorized)
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.trim())
}

/// The grant of a request that must carry a bucket token (every route but the content
/// routes, which also take direct URLs).
pub struct Token(pub Grant);

impl FromRequestParts<AppState> for Token {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Token(grant) => Ok(Token(grant)),
            Caller::Signed(_) => Err(ApiError::Unauthorized),
        }
    }
}

impl Token {
    /// The bucket, when the token may write to it.
    pub fn writer(&self) -> Result<&Bucket> {
        self.0.writable_bucket().ok_or(ApiError::ReadOnly)
    }
}
