//! Who a request acts for: a bucket token, sent as `Authorization: Bearer <token>` or, on GET
//! and HEAD, as the `access_token` query parameter (RFC 6750 section 2.3: for `<img src>`,
//! downloads and `EventSource`, which cannot set headers); or, on the content routes only, a
//! direct URL's signature, which takes precedence there.

use axum::extract::{FromRequestParts, Query};
use axum::http::Method;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, Result};
use crate::auth::Grant;
use crate::auth::signed_url::Denied;
use crate::names::Bucket;
use crate::serve::state::AppState;

/// The token as a query parameter.
#[derive(Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccessToken {
    /// The bucket token, on GET and HEAD only.
    access_token: Option<String>,
}

/// The query of a direct transfer URL (handed out over Socket.IO).
#[derive(Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// The bucket the URL was signed for.
    bucket: Option<String>,
    /// Expiry, seconds since the epoch.
    exp: Option<u64>,
    /// HMAC-SHA256 signature, hex.
    sig: Option<String>,
}

/// The signature of a direct URL, not yet checked: that needs the content and method it was
/// signed for.
pub struct Signature {
    pub bucket: Bucket,
    pub exp: u64,
    pub sig: String,
}

/// The grant of a request that must carry a bucket token.
pub struct Token(pub Grant);

impl FromRequestParts<AppState> for Token {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        if let Some(grant) = bearer(&parts.headers).and_then(|token| state.authorize(token)) {
            return Ok(Token(grant));
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return Err(ApiError::Unauthorized);
        }
        Query::<AccessToken>::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|Query(query)| query.access_token)
            .and_then(|token| state.authorize(&token))
            .map(Token)
            .ok_or(ApiError::Unauthorized)
    }
}

impl Token {
    /// The bucket, when the token may write to it.
    pub fn writer(&self) -> Result<&Bucket> {
        self.0.writable_bucket().ok_or(ApiError::ReadOnly)
    }
}

/// Who a request of the content routes acts for: a direct URL's signature when the query has
/// one (a query that does not parse is a bad signature), else a bucket token.
pub enum Caller {
    Token(Grant),
    Signed(Signature),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let Query(query) = Query::<SignedQuery>::from_request_parts(parts, state)
            .await
            .map_err(|_| Denied::BadSignature)?;
        if query.bucket.is_none() && query.exp.is_none() && query.sig.is_none() {
            return Token::from_request_parts(parts, state)
                .await
                .map(|Token(grant)| Caller::Token(grant));
        }
        let (Some(bucket), Some(exp), Some(sig)) = (
            query.bucket.as_deref().and_then(Bucket::parse),
            query.exp,
            query.sig,
        ) else {
            return Err(Denied::BadSignature.into());
        };
        Ok(Caller::Signed(Signature { bucket, exp, sig }))
    }
}

/// The token of `Authorization: Bearer <token>`.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.trim())
}
