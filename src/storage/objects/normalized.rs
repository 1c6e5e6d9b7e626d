//! [`Normalized`]: an object store whose conditional writes answer success or a lost race,
//! whatever the S3 implementation behind it answered (see the module above).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    AttributeValue, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    UpdateVersion,
};

use super::{Quirks, same_e_tag, unquoted, write_id};
use crate::metrics;

/// Times one conditional write is sent while the store keeps answering ambiguously and a fresh
/// read shows nothing changed; past it the last answer is the caller's error.
const SENDS: usize = 4;

/// An object store whose conditional writes mean the same on every S3 implementation: the
/// `If-Match` form the store takes, and every ambiguous answer settled by a fresh read.
#[derive(Debug)]
pub struct Normalized {
    inner: Arc<dyn ObjectStore>,
    quirks: Quirks,
}

/// What a fresh read says of a conditional write answered ambiguously.
enum Settled {
    /// The object carries the write's id.
    Landed(PutResult),
    /// Another write's object is there (or, for an update, the object is gone).
    Lost,
    /// The object is as the write expected it: nothing happened, the write may go again.
    Unchanged,
}

impl Normalized {
    pub fn new(inner: Arc<dyn ObjectStore>, quirks: Quirks) -> Self {
        Self { inner, quirks }
    }

    /// The `If-Match` value the store takes for `e_tag`.
    fn if_match(&self, e_tag: String) -> String {
        if self.quirks.unquoted_if_match {
            unquoted(&e_tag).to_owned()
        } else {
            e_tag
        }
    }

    async fn settle(
        &self,
        location: &Path,
        write: &AttributeValue,
        expected: Option<&UpdateVersion>,
    ) -> Result<Settled> {
        metrics::object_store_request("get");
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let mut found = match self.inner.get_opts(location, head).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(match expected {
                    None => Settled::Unchanged,
                    Some(_) => Settled::Lost,
                });
            }
            Err(e) => return Err(e),
        };
        let meta = found.meta.clone();
        if found.attributes.get(&write_id()) == Some(write) {
            return Ok(Settled::Landed(PutResult {
                e_tag: meta.e_tag,
                version: meta.version,
                extensions: std::mem::take(&mut found.extensions),
            }));
        }
        let unchanged = expected
            .and_then(|v| v.e_tag.as_deref())
            .zip(meta.e_tag.as_deref())
            .is_some_and(|(expected, now)| same_e_tag(expected, now));
        Ok(if unchanged {
            Settled::Unchanged
        } else {
            Settled::Lost
        })
    }
}

/// An answer that does not tell whether the write landed: a lost race (412, 409), a retry of
/// a write that had landed (412 for an update, `AlreadyExists` for a create), a 404 for an
/// update, or a server error the client gave up retrying.
fn ambiguous(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotFound { .. }
            | object_store::Error::Generic { .. }
    )
}

/// A lost race, as `object_store` names it: `AlreadyExists` for a create, `Precondition` for
/// an update.
fn lost(location: &Path, create: bool, answer: object_store::Error) -> object_store::Error {
    let path = location.to_string();
    let source = Box::new(answer);
    if create {
        object_store::Error::AlreadyExists { path, source }
    } else {
        object_store::Error::Precondition { path, source }
    }
}

impl fmt::Display for Normalized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Normalized({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Normalized {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        let expected = match &mut opts.mode {
            PutMode::Overwrite => {
                metrics::object_store_request("put");
                return self.inner.put_opts(location, payload, opts).await;
            }
            PutMode::Create => None,
            PutMode::Update(version) => {
                let expected = version.clone();
                version.e_tag = version.e_tag.take().map(|e| self.if_match(e));
                Some(expected)
            }
        };
        let write = AttributeValue::from(uuid::Uuid::new_v4().simple().to_string());
        opts.attributes.insert(write_id(), write.clone());
        let mut sends = 0;
        loop {
            metrics::object_store_request("put");
            let answer = match self
                .inner
                .put_opts(location, payload.clone(), opts.clone())
                .await
            {
                Ok(done) => return Ok(done),
                Err(e) if !ambiguous(&e) => return Err(e),
                Err(e) => e,
            };
            sends += 1;
            match self.settle(location, &write, expected.as_ref()).await? {
                Settled::Landed(done) => return Ok(done),
                Settled::Lost => return Err(lost(location, expected.is_none(), answer)),
                Settled::Unchanged if sends < SENDS => continue,
                Settled::Unchanged => return Err(answer),
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        metrics::object_store_request("upload");
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, mut options: GetOptions) -> Result<GetResult> {
        options.if_match = options.if_match.take().map(|e| self.if_match(e));
        let got = self.inner.get_opts(location, options).await;
        let request = match got {
            Err(object_store::Error::NotModified { .. }) => "not_modified",
            _ => "get",
        };
        metrics::object_store_request(request);
        got
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        for _ in ranges {
            metrics::object_store_request("get");
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let counted = locations.inspect(|_| metrics::object_store_request("delete"));
        self.inner.delete_stream(counted.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        metrics::object_store_request("list");
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        metrics::object_store_request("list");
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        metrics::object_store_request("list");
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        metrics::object_store_request("copy");
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;
    use crate::storage::objects::probe::{self, probe};

    /// How the next conditional write goes wrong.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// Applied, then answered 500 (the client gave up retrying).
        AppliedThen500,
        /// Applied, answered 500, and the client's retry answered 412.
        AppliedThen412,
        /// Not applied, answered 409 (`ConditionalRequestConflict`).
        Conflict409,
    }

    /// An in-memory store with quoted ETags that it compares unquoted, as Ceph 16 does when
    /// `quoted`, and one injected fault at a time.
    #[derive(Debug, Default)]
    struct Quirky {
        inner: InMemory,
        quoted: bool,
        /// Writes every object unconditionally, as a store without compare-and-swap does.
        unconditional: bool,
        fault: Mutex<Option<Fault>>,
    }

    impl Quirky {
        fn quote(&self, e_tag: Option<String>) -> Option<String> {
            e_tag.map(|e| if self.quoted { format!("\"{e}\"") } else { e })
        }

        fn fail_next(&self, fault: Fault) {
            *self.fault.lock().unwrap() = Some(fault);
        }
    }

    impl fmt::Display for Quirky {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Quirky")
        }
    }

    fn answer(status: u16) -> object_store::Error {
        let source = format!("answered {status}").into();
        match status {
            409 => object_store::Error::AlreadyExists {
                path: String::new(),
                source,
            },
            412 => object_store::Error::Precondition {
                path: String::new(),
                source,
            },
            _ => object_store::Error::Generic {
                store: "Quirky",
                source,
            },
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Quirky {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            mut opts: PutOptions,
        ) -> Result<PutResult> {
            if self.unconditional {
                opts.mode = PutMode::Overwrite;
            }
            let fault = self.fault.lock().unwrap().take();
            if let Some(Fault::Conflict409) = fault {
                return Err(answer(409));
            }
            let mut done = self.inner.put_opts(location, payload, opts).await?;
            done.e_tag = self.quote(done.e_tag);
            match fault {
                Some(Fault::AppliedThen500) => Err(answer(500)),
                Some(Fault::AppliedThen412) => Err(answer(412)),
                _ => Ok(done),
            }
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            let mut found = self.inner.get_opts(location, options).await?;
            found.meta.e_tag = self.quote(found.meta.e_tag);
            Ok(found)
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A store as Ceph 16 behaves, found out by the probe and normalized.
    async fn normalized(quoted: bool) -> (Arc<Quirky>, Normalized) {
        let quirky = Arc::new(Quirky {
            quoted,
            ..Quirky::default()
        });
        let quirks = probe(quirky.as_ref(), "").await.unwrap();
        assert_eq!(quirks.unquoted_if_match, quoted);
        (quirky.clone(), Normalized::new(quirky, quirks))
    }

    async fn put(store: &Normalized, body: &'static str, mode: PutMode) -> Result<PutResult> {
        let path = Path::from("blob.json");
        store
            .put_opts(&path, PutPayload::from_static(body.as_bytes()), mode.into())
            .await
    }

    fn update(done: &PutResult) -> PutMode {
        PutMode::Update(UpdateVersion {
            e_tag: done.e_tag.clone(),
            version: done.version.clone(),
        })
    }

    async fn stored(store: &Normalized) -> Bytes {
        let found = store.get(&Path::from("blob.json")).await.unwrap();
        found.bytes().await.unwrap()
    }

    #[tokio::test]
    async fn a_store_without_compare_and_swap_fails_the_probe() {
        let quirky = Quirky {
            unconditional: true,
            ..Quirky::default()
        };
        let refused = probe(&quirky, "").await.unwrap_err();
        assert!(
            matches!(refused, probe::ProbeError::CreateOverwrote),
            "{refused}"
        );
        assert!(refused.to_string().contains("cannot do compare-and-swap"));
    }

    #[tokio::test]
    async fn an_unquoted_if_match_store_takes_updates_with_the_etag_it_returned() {
        let (_, store) = normalized(true).await;
        let first = put(&store, "one", PutMode::Create).await.unwrap();
        assert!(first.e_tag.as_deref().unwrap().starts_with('"'));
        let second = put(&store, "two", update(&first)).await.unwrap();
        assert_eq!(stored(&store).await, "two");
        // A stale one is still refused.
        let stale = put(&store, "three", update(&first)).await;
        assert!(matches!(
            stale,
            Err(object_store::Error::Precondition { .. })
        ));
        put(&store, "three", update(&second)).await.unwrap();
    }

    #[tokio::test]
    async fn a_write_that_landed_is_a_success_whatever_the_answer() {
        for fault in [Fault::AppliedThen500, Fault::AppliedThen412] {
            let (quirky, store) = normalized(true).await;
            quirky.fail_next(fault);
            let first = put(&store, "one", PutMode::Create).await.unwrap();
            quirky.fail_next(fault);
            put(&store, "two", update(&first)).await.unwrap();
            assert_eq!(stored(&store).await, "two", "{fault:?}");
        }
    }

    #[tokio::test]
    async fn a_conflict_answer_with_nothing_written_is_sent_again() {
        let (quirky, store) = normalized(false).await;
        quirky.fail_next(Fault::Conflict409);
        let first = put(&store, "one", PutMode::Create).await.unwrap();
        quirky.fail_next(Fault::Conflict409);
        put(&store, "two", update(&first)).await.unwrap();
        assert_eq!(stored(&store).await, "two");
    }

    #[tokio::test]
    async fn a_lost_race_is_reported_lost_and_writes_nothing() {
        let (quirky, store) = normalized(true).await;
        let first = put(&store, "one", PutMode::Create).await.unwrap();
        let created_again = put(&store, "uno", PutMode::Create).await;
        assert!(matches!(
            created_again,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        put(&store, "two", update(&first)).await.unwrap();
        // The loser of the race to replace "one", answered ambiguously.
        quirky.fail_next(Fault::Conflict409);
        let lost = put(&store, "deux", update(&first)).await;
        assert!(matches!(
            lost,
            Err(object_store::Error::Precondition { .. })
        ));
        assert_eq!(stored(&store).await, "two");
    }

    #[tokio::test]
    async fn the_loser_of_a_race_to_write_the_same_bytes_is_told_it_lost() {
        let (quirky, store) = normalized(true).await;
        let first = put(&store, "one", PutMode::Create).await.unwrap();
        put(&store, "two", update(&first)).await.unwrap();
        // A second writer stored the same bytes on the same version and was answered
        // ambiguously: the bytes alone would say it won too.
        quirky.fail_next(Fault::Conflict409);
        let lost = put(&store, "two", update(&first)).await;
        assert!(matches!(
            lost,
            Err(object_store::Error::Precondition { .. })
        ));
        quirky.fail_next(Fault::Conflict409);
        let created = put(&store, "one", PutMode::Create).await;
        assert!(matches!(
            created,
            Err(object_store::Error::AlreadyExists { .. })
        ));
    }
}
