//! Validated names: the bucket a token grants, the ref a client subscribes to and the hash
//! that names a content-addressed blob.
//!
//! Every storage path is built from these types and nothing else, so a name that could
//! escape the storage root (`..`, `a/b`, NUL, an absolute path) can never reach the file
//! system: it is refused here, before any path exists.

use std::fmt;

/// Longest bucket name, in bytes (the first character plus 127 more).
const MAX_BUCKET_LEN: usize = 128;

/// Length of a ref: 32 bytes written as hex.
const REF_LEN: usize = 64;

/// A bucket name that is safe as one directory name: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
///
/// Upper case is kept as it is, because buckets of the original may use it and their
/// directories must keep their names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket(String);

impl Bucket {
    /// Accepts `name` when it matches the pattern above.
    pub fn parse(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        let first_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric);
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        (first_ok && rest_ok && bytes.len() <= MAX_BUCKET_LEN).then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob reference: 64 hex characters, normalised to lower case.
///
/// The original accepted either case but stored the name as sent, so one blob could have two
/// files; lower-casing here gives every blob exactly one name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ref(String);

impl Ref {
    /// Accepts 64 ASCII hex digits of either case.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == REF_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard directory of this ref: its first two characters.
    pub fn shard(&self) -> &str {
        &self.0[..2]
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` is exactly `len` lower-case hex digits (the only spelling of content hashes
/// and handles).
fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The name of a content-addressed blob: the BLAKE3 hash of its bytes as 64 lower-case hex
/// characters.
///
/// Unlike [`Ref`], nothing is normalised: the content-addressed contract forbids lower-casing,
/// so `AB…` is refused rather than taken for `ab…`, and every blob has exactly one spelling.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(String);

impl ContentHash {
    /// Accepts exactly 64 lower-case hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        is_lower_hex(text, REF_LEN).then(|| Self(text.to_owned()))
    }

    /// The name of `hash`.
    pub fn from_blake3(hash: &blake3::Hash) -> Self {
        Self(hash.to_hex().to_string())
    }

    /// The name of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_blake3(&blake3::hash(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard directory of this hash: its first two characters.
    pub fn shard(&self) -> &str {
        &self.0[..2]
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of one Blob Service upload: 32 lower-case hex characters (a random UUID).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(String);

/// Length of a handle: 16 random bytes written as hex.
const HANDLE_LEN: usize = 32;

impl Handle {
    /// A new random handle.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Accepts exactly 32 lower-case hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        is_lower_hex(text, HANDLE_LEN).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard directory of this handle: its first two characters.
    pub fn shard(&self) -> &str {
        &self.0[..2]
    }
}

impl Default for Handle {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_single_safe_directory_names() {
        for ok in ["a", "A", "0", "My.Bucket_1-2", &"b".repeat(128)] {
            assert!(Bucket::parse(ok).is_some(), "{ok:?} should be accepted");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "a\\b",
            "a\0b",
            "a b",
            "é",
            &"b".repeat(129),
        ] {
            assert!(Bucket::parse(bad).is_none(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refs_are_64_hex_lower_cased() {
        let upper = "AB".repeat(32);
        let r = Ref::parse(&upper).expect("hex of either case is a ref");
        assert_eq!(r.as_str(), "ab".repeat(32));
        assert_eq!(r.shard(), "ab");
        for bad in [
            String::new(),
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            format!("{}é", "a".repeat(62)),
            format!("../{}", "a".repeat(61)),
        ] {
            assert!(Ref::parse(&bad).is_none(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn content_hashes_are_canonical_lower_case_hex() {
        let empty = ContentHash::of(b"");
        assert_eq!(
            empty.as_str(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(ContentHash::parse(empty.as_str()), Some(empty.clone()));
        assert_eq!(empty.shard(), "af");
        for bad in [
            empty.as_str().to_ascii_uppercase(),
            format!("A{}", &empty.as_str()[1..]),
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            format!("../{}", "a".repeat(61)),
        ] {
            assert!(
                ContentHash::parse(&bad).is_none(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn handles_are_random_lower_case_hex() {
        let (a, b) = (Handle::new(), Handle::new());
        assert_ne!(a, b);
        assert_eq!(Handle::parse(a.as_str()), Some(a.clone()));
        for bad in [
            a.as_str().to_ascii_uppercase(),
            "a".repeat(31),
            "../x".repeat(8),
        ] {
            assert!(Handle::parse(&bad).is_none(), "{bad:?} should be refused");
        }
    }
}
