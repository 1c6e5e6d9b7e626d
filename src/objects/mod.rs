//! The object layer: the one byte-level interface every object-store backend sits on, with the
//! differences between S3 implementations handled here and nowhere else.
//!
//! The interface is `object_store`'s [`ObjectStore`] trait. What this module adds is
//! [`Normalized`], which wraps the S3 client so that a conditional write means the same on every
//! store, and [`probe()`], the proof at start that the store can do compare-and-swap at all.
//!
//! What S3 implementations are seen to do with a conditional `PUT` (`docs/SCALING.md` lists
//! them by store):
//! - **ETag quoting.** S3 returns ETags quoted (`"…"`) and compares `If-Match` either way. Ceph's
//!   RADOS Gateway before 17 compares `If-Match` with the stored ETag *without* its quotes, so a
//!   quoted current ETag is refused (412) every time. The probe finds out which form the store
//!   takes, and [`Normalized`] sends that one.
//! - **An ambiguous answer to the loser of a race.** RGW answers the loser of two racing
//!   conditional `PUT`s 500 in most races (nothing written); AWS documents 409
//!   `ConditionalRequestConflict`; and the client retries a 5xx, so a write that was applied but
//!   answered 5xx comes back from its retry as 412. None of these tells whether *this* write
//!   landed. [`Normalized`] settles each by a fresh read (a `HEAD`): the object carries this
//!   write's id (the write landed), or another's (it lost: 412), or still the ETag the write
//!   expected (nothing happened: the write is sent again). A caller sees success or a lost race,
//!   never an error a retry would have settled. The id is a random `x-amz-meta-blobs-write` per
//!   conditional write, not the bytes: two clients writing the same data on the same version in
//!   the same millisecond store the same bytes, and only one of them won.
//! - **`If-None-Match: *` on create** is honoured by every store the probe lets start.

mod normalized;
mod probe;

pub use normalized::Normalized;
pub use probe::{ProbeError, probe};

use std::sync::Arc;

use object_store::ObjectStore;

/// The S3 client of `STORE=s3`, proved able to compare-and-swap (the probe writes and removes
/// one object under `<prefix>.probe/`), wrapped so conditional writes mean the same on every
/// store.
pub async fn open(
    s3: object_store::aws::AmazonS3,
    prefix: &str,
) -> Result<Arc<dyn ObjectStore>, ProbeError> {
    let raw: Arc<dyn ObjectStore> = Arc::new(s3);
    let quirks = probe(raw.as_ref(), prefix).await?;
    Ok(Arc::new(Normalized::new(raw, quirks)))
}

/// How a store departs from S3 in conditional requests, as the probe found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// `If-Match` must carry the ETag without its quotes (Ceph RGW before 17).
    pub unquoted_if_match: bool,
}

/// The metadata (`x-amz-meta-blobs-write`) naming the conditional write that stored an object:
/// a random id per write, so a fresh read tells this write from another that stored the same
/// bytes (two clients writing the same data on the same version in the same millisecond).
pub(crate) fn write_id() -> object_store::Attribute {
    object_store::Attribute::Metadata("blobs-write".into())
}

/// An ETag without the quotes around it (and without a weak `W/` mark), as Ceph 16 compares it.
fn unquoted(e_tag: &str) -> &str {
    let e_tag = e_tag.strip_prefix("W/").unwrap_or(e_tag);
    e_tag
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(e_tag)
}

/// Whether two ETags name the same version, quoted or not.
fn same_e_tag(a: &str, b: &str) -> bool {
    unquoted(a) == unquoted(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_taken_off_an_e_tag() {
        assert_eq!(unquoted("\"abc\""), "abc");
        assert_eq!(unquoted("W/\"abc\""), "abc");
        assert_eq!(unquoted("abc"), "abc");
        assert_eq!(unquoted("\""), "\"");
        assert!(same_e_tag("\"abc\"", "abc"));
        assert!(!same_e_tag("\"abc\"", "\"abd\""));
    }
}
