//! Content received into a local temp file, and its commit into the object store: uploaded
//! under its name (or copied inside the store when verified bytes are already there), with the
//! marker written first as the parent module describes.

use std::sync::Arc;

use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::clock::now_ms;
use crate::names::{Bucket, ContentHash};

use super::super::{ContentLock, Incoming, Owner, Result};
use super::{Backoff, Marker, Shared, split, store_error};

/// Content received into a local temp file, waiting for its commit.
pub(super) struct ObjectIncoming {
    pub(super) file: tokio::fs::File,
    pub(super) hash: ContentHash,
    pub(super) size: u64,
    pub(super) bucket: Bucket,
    pub(super) objects: Arc<Shared>,
    /// An object holding the same, verified bytes: copied inside the store instead of
    /// uploaded from `file`.
    pub(super) copy_from: Option<Path>,
}

#[async_trait::async_trait]
impl Incoming for ObjectIncoming {
    fn hash(&self) -> &ContentHash {
        &self.hash
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn commit(
        mut self: Box<Self>,
        held: ContentLock,
        owner: Owner,
    ) -> Result<(bool, ContentLock)> {
        let objects = self.objects.clone();
        let (bucket, hash) = (&self.bucket, &self.hash);
        let (path, marker_path) = (
            objects.path(bucket, hash),
            objects.marker_path(bucket, hash),
        );
        let mut retry = Backoff::default();
        loop {
            // The marker is written before the content is looked at: a removal that checked
            // the marker before this write fails to doom it, and one that doomed it before is
            // waited out (it has removed the content by the time the marker is gone).
            let (state, version) = split(objects.settled_marker(&marker_path).await?);
            let mark = match (owner, state) {
                (Owner::Service, Some(Marker::Claimed(_) | Marker::Doomed(_))) => {
                    Some(Marker::Claimed(now_ms()))
                }
                // Maybe shared content: kept from removal for the grace, never the sweep's.
                (Owner::Service, _) => Some(Marker::Kept(now_ms())),
                (Owner::Shared, None | Some(Marker::Shared(_) | Marker::Kept(_))) => None,
                (Owner::Shared, Some(Marker::Claimed(_) | Marker::Doomed(_))) => {
                    Some(Marker::Shared(now_ms()))
                }
            };
            let mut version = version;
            if let Some(mark) = mark {
                version = objects.write_marker(&marker_path, mark, version).await?;
                if version.is_none() {
                    retry.wait(&marker_path).await?;
                    continue;
                }
            }
            if objects.head(&path).await? == Some(self.size) {
                if owner == Owner::Shared {
                    objects.unclaim(&marker_path).await?;
                }
                return Ok((false, held));
            }
            if owner == Owner::Service {
                // The service brings the bytes in: they are its own. Claimed again once they
                // are up, so the grace runs from when they are there.
                let claim = objects.write_marker(&marker_path, Marker::Claimed(now_ms()), version);
                version = claim.await?;
                if version.is_none() {
                    retry.wait(&marker_path).await?;
                    continue;
                }
            }
            match &self.copy_from {
                Some(from) => objects
                    .store()
                    .copy(from, &path)
                    .await
                    .map_err(|e| store_error(&path, e))?,
                None => objects.upload(&mut self.file, &path).await?,
            }
            if owner == Owner::Service {
                let claim = objects.write_marker(&marker_path, Marker::Claimed(now_ms()), version);
                if claim.await?.is_none() {
                    // Another upload or a shared store of the same bytes came in between:
                    // decide again with what it left.
                    retry.wait(&marker_path).await?;
                    continue;
                }
            } else {
                objects.unclaim(&marker_path).await?;
            }
            return Ok((true, held));
        }
    }
}
