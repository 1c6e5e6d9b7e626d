//! The storage a node runs on, chosen by `STORE`: the JSON files under `STORAGE`, or one
//! object store (S3) that every node shares.

use std::sync::Arc;

use super::StartError;
use crate::auth::revocation::ListObject;
use crate::auth::signed_url::{DirectUrls, PresignedUrls};
use crate::blob_service::RecordStore;
use crate::config::{Config, StoreKind};
use crate::storage::content::{CLAIM_GRACE, ContentStore, FsContent, ObjectContent};
use crate::storage::layout::Tree;
use crate::storage::objects::{Objects, OpenError};
use crate::storage::quota::Quota;
use crate::storage::store::{FsStore, ObjectBlobs, Store};

/// Versioned blobs, content, the Blob Service's records, and the direct URLs of the storage
/// itself. With `STORE=s3` the four share one object-store client (one connection pool).
pub struct Backend {
    pub blobs: Arc<dyn Store>,
    pub content: Arc<dyn ContentStore>,
    pub records: Arc<RecordStore>,
    /// Presigned object-store URLs; `None`: this server signs its own direct URLs.
    pub direct: Option<Arc<dyn DirectUrls>>,
    /// Where the revoked tokens are listed.
    pub revocations: ListObject,
    /// The buckets' quotas, measured on this storage.
    pub quota: Arc<Quota>,
}

impl Backend {
    /// Opens the configured storage (the file store creates `STORAGE` and cleans what an
    /// interrupted write left behind; an object store must pass the compare-and-swap probe).
    pub async fn open(config: &Config) -> Result<Self, StartError> {
        match config.store {
            StoreKind::Fs => {
                let storage_error = |source| StartError::Storage {
                    path: config.storage.display().to_string(),
                    source,
                };
                // The journal and the content's verified reads are the file store's own; the
                // records and the revocations are objects of the directory.
                let objects = Objects::directory(&config.storage);
                Ok(Self {
                    blobs: Arc::new(
                        FsStore::with_unwritten_limit(&config.storage, config.unwritten_bytes)
                            .map_err(storage_error)?,
                    ),
                    content: Arc::new(FsContent::open(&config.storage).map_err(storage_error)?),
                    records: Arc::new(RecordStore::new(objects.clone())),
                    direct: None,
                    revocations: ListObject::new(objects.clone()),
                    quota: quota(config, Tree::new(objects), config.storage.clone()),
                })
            }
            StoreKind::S3 => {
                let s3 = crate::storage::s3::from_config(config)?;
                let prefix = &config.s3_prefix;
                // Proved able to compare-and-swap before anything is served.
                let objects = Objects::remote(Arc::new(s3.clone()), prefix)
                    .await
                    .map_err(OpenError::from)?;
                Ok(Self {
                    blobs: Arc::new(ObjectBlobs::with_cache(
                        objects.clone(),
                        config.object_cache_bytes,
                    )),
                    content: Arc::new(ObjectContent::new(&objects, CLAIM_GRACE)),
                    records: Arc::new(RecordStore::new(objects.clone())),
                    revocations: ListObject::new(objects.clone()),
                    // Uploads are received into local temp files before they go up.
                    quota: quota(config, Tree::new(objects), std::env::temp_dir()),
                    direct: Some(Arc::new(PresignedUrls::new(
                        s3,
                        prefix,
                        config.direct_url_ttl,
                    ))),
                })
            }
        }
    }
}

/// The quotas of `config` over `tree`, with the reserve of free space on the file system of
/// `disk`.
fn quota(config: &Config, tree: Tree, disk: std::path::PathBuf) -> Arc<Quota> {
    Arc::new(Quota::new(
        crate::storage::quota::Limits::from_config(config),
        tree,
        disk,
        config.min_free_bytes,
    ))
}
