//! The start-up proof that an object store can compare-and-swap: several nodes rely on it for
//! every write, so a node refuses to start on a store that cannot.

use object_store::path::Path;
use object_store::{
    Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use super::{Quirks, unquoted, write_id};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot use the object store: {step} failed: {source}")]
    Store {
        step: &'static str,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "the object store overwrote an existing object on a create-if-absent (If-None-Match: *), so it cannot do compare-and-swap and several nodes would lose writes"
    )]
    CreateOverwrote,
    #[error(
        "the object store accepted a write whose If-Match named a stale ETag, so it cannot do compare-and-swap and several nodes would lose writes"
    )]
    StaleAccepted,
    #[error(
        "the object store refused a write whose If-Match named the current ETag, quoted and unquoted ({0}), so no blob could ever be updated"
    )]
    CurrentRefused(String),
    #[error("the object store acknowledged a conditional write it did not keep")]
    NotKept,
    #[error(
        "the object store does not keep an object's metadata (x-amz-meta-*), by which a node tells its own write from another's after an ambiguous answer"
    )]
    MetadataDropped,
}

/// The first request of the probe: writing a new object.
const FIRST_STEP: &str = "writing a probe object";

/// Proves on one probe object under `<prefix>.probe/` that the store refuses a create over an
/// existing object and an update naming a stale ETag, and takes one naming the current ETag;
/// the form of `If-Match` it takes is the [`Quirks`] returned. The object is removed after.
pub async fn probe(store: &dyn ObjectStore, prefix: &str) -> Result<Quirks, ProbeError> {
    let path = Path::from(format!("{prefix}.probe/{}", uuid::Uuid::new_v4()));
    let proved = prove(store, &path).await;
    // Nothing to remove when the first write failed (a store that cannot be reached, or
    // refuses the keys): its error is the one sentence to show.
    let created = !matches!(
        proved,
        Err(ProbeError::Store {
            step: FIRST_STEP,
            ..
        })
    );
    if created && let Err(e) = store.delete(&path).await {
        tracing::warn!(%path, "cannot remove the compare-and-swap probe: {e}");
    }
    proved
}

async fn prove(store: &dyn ObjectStore, path: &Path) -> Result<Quirks, ProbeError> {
    let put = |body: &'static [u8], mode: PutMode| {
        let opts = PutOptions {
            mode,
            attributes: Attributes::from_iter([(write_id(), "probe")]),
            ..PutOptions::default()
        };
        store.put_opts(path, PutPayload::from_static(body), opts)
    };
    let failed = |step| move |source| ProbeError::Store { step, source };
    let created = put(b"created", PutMode::Create)
        .await
        .map_err(failed(FIRST_STEP))?;
    match put(b"created again", PutMode::Create).await {
        Ok(_) => return Err(ProbeError::CreateOverwrote),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {}
        Err(e) => return Err(failed("a create over an existing object")(e)),
    }
    let stale = UpdateVersion {
        e_tag: Some("\"00000000000000000000000000000000\"".to_owned()),
        version: None,
    };
    match put(b"stale", PutMode::Update(stale)).await {
        Ok(_) => return Err(ProbeError::StaleAccepted),
        Err(object_store::Error::Precondition { .. }) => {}
        Err(e) => return Err(failed("an update naming a stale ETag")(e)),
    }
    let Some(current) = created.e_tag else {
        return Err(ProbeError::CurrentRefused("no ETag returned".to_owned()));
    };
    let update = |e_tag: &str| {
        let version = UpdateVersion {
            e_tag: Some(e_tag.to_owned()),
            version: created.version.clone(),
        };
        put(b"updated", PutMode::Update(version))
    };
    let quirks = match update(&current).await {
        Ok(_) => Quirks::default(),
        Err(object_store::Error::Precondition { .. }) if unquoted(&current) != current => {
            match update(unquoted(&current)).await {
                Ok(_) => Quirks {
                    unquoted_if_match: true,
                },
                Err(e) => return Err(ProbeError::CurrentRefused(e.to_string())),
            }
        }
        Err(e) => return Err(ProbeError::CurrentRefused(e.to_string())),
    };
    let stored = store
        .get(path)
        .await
        .map_err(failed("reading the probe back"))?;
    let write = stored.attributes.get(&write_id()).cloned();
    let bytes = stored
        .bytes()
        .await
        .map_err(failed("reading the probe back"))?;
    if bytes.as_ref() != b"updated" {
        return Err(ProbeError::NotKept);
    }
    if write.as_deref() != Some("probe") {
        return Err(ProbeError::MetadataDropped);
    }
    Ok(quirks)
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    /// object_store's in-memory store does compare-and-swap as S3 does.
    #[tokio::test]
    async fn an_honest_store_passes_without_quirks() {
        let store = object_store::memory::InMemory::new();
        assert_eq!(probe(&store, "p/").await.unwrap(), Quirks::default());
        let left = store.list(None).next().await;
        assert!(left.is_none(), "the probe object is removed: {left:?}");
    }
}
