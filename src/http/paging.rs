//! Paging of the listings: `limit` items a page (1 to 1000, 100 by default), and `next`, the
//! cursor of the following page, while there is one.

use serde::Serialize;
use utoipa::ToSchema;

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
    pub blobs: Vec<T>,
    /// Where the next page starts (pass it back as the listing's cursor); absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The page of `items`, followed by another when `more`, which starts after the last item
    /// (`cursor` names it).
    pub fn new(items: Vec<T>, more: bool, cursor: impl Fn(&T) -> String) -> Self {
        let next = more.then(|| items.last().map(cursor)).flatten();
        Self { blobs: items, next }
    }
}
