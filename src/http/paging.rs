//! Paging of the listings: `limit` items a page (1 to 1000, 100 by default), and `next`, the
//! cursor of the following page, while there is one.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Result};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Items a page holds, checked.
pub fn limit(asked: Option<usize>) -> Result<usize> {
    let limit = asked.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad("limit must be from 1 to 1000"))
    }
}

/// One page of a listing: `{ "blobs": [...], "next"?: "<cursor>" }`.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    /// The listed items (blobs, content or records), named `blobs` on the wire, as the
    /// original named its listing.
    #[serde(rename = "blobs")]
    pub items: Vec<T>,
    /// Where the next page starts (pass it back as the listing's cursor); absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The page of `items`, followed by another when `more`, which starts after the last item
    /// (`cursor` names it).
    pub fn new(items: Vec<T>, more: bool, cursor: impl Fn(&T) -> String) -> Self {
        let next = more.then(|| items.last().map(cursor)).flatten();
        Self { items, next }
    }
}

/// The query of the listings in name order: `after` (the `next` of the previous page) and
/// `limit`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct After {
    /// Start after this name (the `next` of the previous page).
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<usize>,
}

/// The page of a listing that asked for `limit + 1` items: the first `limit` of `found` as
/// `entry` makes them, with a `next` when there was one more.
pub fn page<I, T>(
    mut found: Vec<I>,
    limit: usize,
    entry: impl FnMut(I) -> T,
    cursor: impl Fn(&T) -> String,
) -> Page<T> {
    let more = found.len() > limit;
    found.truncate(limit);
    Page::new(found.into_iter().map(entry).collect(), more, cursor)
}
