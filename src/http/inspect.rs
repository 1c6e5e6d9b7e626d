//! The inspector page at `/inspect/`: a bucket's blobs, content and Blob Service uploads, live,
//! for whoever holds its token. Its files are compiled into the binary (no CDN, works
//! offline); the client library is the browser bundle of `clients/js`, kept in `inspect/` and
//! checked against a fresh build by the tests.
//!
//! Served with a strict Content Security Policy: scripts and styles of this origin only, no
//! inline code, images from this origin or `blob:` URLs, connections to this origin only, no
//! framing, no form posts. The page keeps the token in memory; nothing it loads carries it in
//! a URL.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::error::ApiError;
use crate::serve::state::AppState;

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The page's files: name, content type, bytes.
const FILES: [(&str, &str, &str); 4] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../inspect/index.html"),
    ),
    (
        "inspect.js",
        "text/javascript; charset=utf-8",
        include_str!("../../inspect/inspect.js"),
    ),
    (
        "inspect.css",
        "text/css; charset=utf-8",
        include_str!("../../inspect/inspect.css"),
    ),
    (
        "blobs-client.js",
        "text/javascript; charset=utf-8",
        include_str!("../../inspect/blobs-client.js"),
    ),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/inspect", get(async || Redirect::permanent("/inspect/")))
        .route("/inspect/", get(async || file("index.html")))
        .route(
            "/inspect/{file}",
            get(async |Path(name): Path<String>| file(&name)),
        )
}

fn file(name: &str) -> Response {
    let Some((_, content_type, body)) = FILES.iter().find(|(file, ..)| *file == name) else {
        return ApiError::NotFound.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        *body,
    )
        .into_response()
}
