//! The blob file's bytes, the same for both backends: decoding it with its checks, what a
//! listing reads of it, and which of several spellings of one ref holds the blob.
//!
//! A blob file is *damaged* when it does not parse or its version is outside
//! `1..=MAX_VERSION` (a JavaScript client could not compare-and-swap it). A damaged file is
//! never served: reading it is a storage error naming the file, a write to it is refused (the
//! file stays as it is, for a person to look at), and listings leave it out.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{Blob, Listed, MAX_VERSION, decoded_len};

/// What every blob file written by Blobs or by the original begins with (its first key is
/// `data`): the head a listing checks before it reads only the tail of a large file.
pub(crate) const HEAD: &[u8] = br#"{"data":""#;

/// Bytes of a blob file's end a listing reads. What follows `data` (version, times, address)
/// is about 140 bytes in practice; a file whose metadata is longer is read whole.
pub(crate) const TAIL: usize = 4096;

/// Why blob bytes are damaged, if they are: they do not parse, or the version is out of range.
pub fn damage(bytes: &[u8]) -> Option<String> {
    decode(bytes).err()
}

/// Decodes blob bytes, refusing damaged ones (see the module doc) with the reason.
pub fn decode(bytes: &[u8]) -> Result<Blob, String> {
    let blob: Blob = serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
    check_version(blob.version)?;
    Ok(blob)
}

fn check_version(version: u64) -> Result<(), String> {
    if (1..=MAX_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(format!("version {version} is outside 1..={MAX_VERSION}"))
    }
}

/// A blob file as a listing sees it: `None` for a tombstone.
pub(crate) type Summary = Option<Listed>;

/// The fields a listing shows; `data` is measured, never copied into a string.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    data: Option<DataLen>,
    version: u64,
    created: u64,
    #[serde(default)]
    updated: Option<u64>,
    /// Checked for its type only, as [`Blob`] reads it.
    #[serde(default, rename = "ip")]
    _ip: String,
    #[serde(default)]
    deleted: bool,
}

impl Head {
    fn summary(self, size: usize) -> Result<Summary, String> {
        check_version(self.version)?;
        Ok((!self.deleted).then(|| Listed {
            version: self.version,
            size,
            updated: self.updated.unwrap_or(self.created),
        }))
    }
}

/// The decoded length of a `data` string, measured where the parser holds it.
struct DataLen(usize);

impl<'de> Deserialize<'de> for DataLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Measure;
        impl Visitor<'_> for Measure {
            type Value = DataLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<DataLen, E> {
                Ok(DataLen(decoded_len(text)))
            }
        }
        deserializer.deserialize_str(Measure)
    }
}

/// What a listing shows of a whole blob file, checked as [`decode`] checks it, without
/// building its data.
pub(crate) fn summarize(bytes: &[u8]) -> Result<Summary, String> {
    let head: Head = serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let size = head.data.as_ref().map_or(0, |d| d.0);
    head.summary(size)
}

/// What a listing shows of a large blob file from its first [`HEAD`]`.len()` bytes and its
/// last [`TAIL`] bytes (`total` bytes in all, more than both): the file is read in full only
/// when these do not have the layout every writer produces (`data` first, as base64, then the
/// other keys within the tail). `None`: read the whole file and [`summarize`] it.
///
/// The middle of the data is not looked at: a file damaged there (not a torn one, whose end
/// is missing) is listed, and answers a storage error when read.
pub(crate) fn summarize_ends(
    head: &[u8],
    tail: &[u8],
    total: u64,
) -> Option<Result<Summary, String>> {
    if head != HEAD || total < (HEAD.len() + tail.len()) as u64 {
        return None;
    }
    // The data string ends at the first quote of the tail: base64 has none.
    let quote = tail.iter().position(|&b| b == b'"')?;
    let is_base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if !tail[..quote].iter().all(is_base64) {
        return None;
    }
    let rest = tail[quote + 1..].strip_prefix(b",")?;
    let mut object = Vec::with_capacity(rest.len() + 1);
    object.push(b'{');
    object.extend_from_slice(rest);
    let head: Head = match serde_json::from_slice(&object) {
        Ok(head) => head,
        // Torn, or not the usual layout: the whole file decides.
        Err(_) => return None,
    };
    if head.data.is_some() {
        return None;
    }
    let chars = total - HEAD.len() as u64 - (tail.len() - quote) as u64;
    let padding = tail[..quote]
        .iter()
        .rev()
        .take_while(|&&b| b == b'=')
        .count() as u64;
    let size = (chars.saturating_sub(padding) * 3 / 4) as usize;
    Some(head.summary(size))
}

/// Of the files holding one blob under different spellings of its ref (the original stored
/// the ref as the client sent it), the index of the one to keep: an intact one before a
/// damaged one, then the higher version, then the later change (`updated`, else `created`);
/// on a full tie the first, so callers list the file already under the lower-case name first.
pub fn preferred(candidates: &[Option<Blob>]) -> usize {
    let rank = |blob: &Option<Blob>| blob.as_ref().map(|b| (b.version, b.modified()));
    let mut best = 0;
    for (i, candidate) in candidates.iter().enumerate().skip(1) {
        if rank(candidate) > rank(&candidates[best]) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"data":"aGk=","version":3,"created":1763780000000,"updated":1763780100000,"ip":"203.0.113.7"}"#;

    #[test]
    fn versions_outside_the_safe_range_are_damage() {
        assert!(decode(FILE.as_bytes()).is_ok());
        for version in [0, MAX_VERSION + 1, u64::MAX] {
            let text = format!(r#"{{"version":{version},"created":1}}"#);
            assert!(
                damage(text.as_bytes()).unwrap().contains("outside"),
                "{version}"
            );
            assert!(summarize(text.as_bytes()).is_err(), "{version}");
        }
        assert!(
            damage(b"{\"data\":\"aG")
                .unwrap()
                .starts_with("does not parse")
        );
        assert!(damage(br#"{"version":1,"created":1,"ip":7}"#).is_some());
        assert!(summarize(br#"{"version":1,"created":1,"ip":7}"#).is_err());
    }

    #[test]
    fn a_summary_says_what_the_blob_says() {
        let blob = decode(FILE.as_bytes()).unwrap();
        assert_eq!(
            summarize(FILE.as_bytes()).unwrap(),
            Some(Listed::from(&blob))
        );
        let tombstone = br#"{"version":4,"created":5,"ip":"unknown","deleted":true}"#;
        assert_eq!(summarize(tombstone).unwrap(), None);
    }

    /// A large file, its head and tail as a listing reads them.
    fn ends(data_chars: usize, after: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut data = "QUJD".repeat(data_chars / 4);
        data.truncate(data_chars - 1);
        data.push('=');
        let file = format!(r#"{{"data":"{data}"{after}"#).into_bytes();
        let head = file[..HEAD.len()].to_vec();
        let tail = file[file.len() - TAIL..].to_vec();
        (file, head, tail)
    }

    #[test]
    fn the_ends_of_a_large_file_agree_with_the_whole() {
        for chars in [TAIL + 4, 10_000, 1_048_576] {
            let (file, head, tail) = ends(
                chars,
                r#","version":9,"created":1,"updated":2,"ip":"203.0.113.7"}"#,
            );
            let whole = summarize(&file).unwrap();
            assert_eq!(
                summarize_ends(&head, &tail, file.len() as u64),
                Some(Ok(whole)),
                "{chars}"
            );
            assert_eq!(
                whole.unwrap().size,
                Listed::from(&decode(&file).unwrap()).size
            );
        }
        // Its longest writers, as many as a blob remembers, still fit the tail.
        let writer = format!(
            r#"{{"writer":"{}","seq":{MAX_VERSION},"version":{MAX_VERSION}}}"#,
            "w".repeat(crate::storage::store::MAX_WRITER)
        );
        let writers = vec![writer; crate::storage::store::WRITERS].join(",");
        let after = format!(
            r#","version":{MAX_VERSION},"created":{MAX_VERSION},"updated":{MAX_VERSION},"ip":"2001:db8::1","writers":[{writers}]}}"#
        );
        let (file, head, tail) = ends(10_000, &after);
        assert_eq!(
            summarize_ends(&head, &tail, file.len() as u64),
            Some(summarize(&file))
        );
        let (file, head, tail) = ends(10_000, r#","version":0,"created":1}"#);
        assert!(
            summarize_ends(&head, &tail, file.len() as u64)
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn files_of_another_layout_are_read_whole() {
        let total = |file: &[u8]| file.len() as u64;
        // Torn: the end is missing.
        let (file, head, tail) = ends(10_000, r#","version":9,"created":1"#);
        assert_eq!(summarize_ends(&head, &tail, total(&file)), None);
        assert!(summarize(&file).is_err());
        // Another key first, or metadata longer than the tail, or a second `data`.
        let (file, _, tail) = ends(10_000, r#","version":9,"created":1}"#);
        assert_eq!(summarize_ends(br#"{"x":1,"d"#, &tail, total(&file)), None);
        let long = format!(r#","version":9,"created":1,"x":"{}"}}"#, "y".repeat(TAIL));
        let (file, head, tail) = ends(10_000, &long);
        assert_eq!(summarize_ends(&head, &tail, total(&file)), None);
        let (file, head, tail) = ends(10_000, r#","version":9,"created":1,"data":"AA"}"#);
        assert_eq!(summarize_ends(&head, &tail, total(&file)), None);
    }

    #[test]
    fn the_newest_intact_spelling_is_preferred() {
        let blob = |version, created, updated| {
            Some(Blob {
                data: None,
                version,
                created,
                updated,
                ip: "unknown".into(),
                deleted: false,
                writers: Vec::new(),
            })
        };
        assert_eq!(preferred(&[blob(3, 1, None), blob(5, 1, None)]), 1);
        assert_eq!(preferred(&[blob(5, 1, None), blob(3, 9, Some(9))]), 0);
        assert_eq!(preferred(&[blob(4, 1, Some(2)), blob(4, 1, Some(3))]), 1);
        assert_eq!(preferred(&[blob(4, 7, None), blob(4, 1, Some(3))]), 0);
        assert_eq!(preferred(&[blob(4, 1, None), blob(4, 1, None)]), 0);
        assert_eq!(preferred(&[None, blob(1, 1, None)]), 1);
        assert_eq!(preferred(&[None, None]), 0);
    }
}
