//! Removing what is no longer needed: expired records and the content no record refers to
//! (the retention sweep), and content a shared flow deletes.

use crate::names::{Bucket, ContentHash, Handle};
use crate::storage::quota::UsageChange;

use super::{BlobService, Relayed, Result, SETTLE};

/// What one retention sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub records: usize,
    pub contents: usize,
    pub bytes: u64,
}

impl BlobService {
    /// Deletes content for a shared flow (`DELETE /blobs/{hash}`): while records of this
    /// service refer to it, the content becomes the service's (removed with its last record)
    /// instead. `false` when there is no such content.
    pub async fn delete_shared(&self, bucket: &Bucket, hash: &ContentHash) -> Result<bool> {
        let this = self.clone();
        let (bucket, hash) = (bucket.clone(), hash.clone());
        tokio::spawn(async move {
            let content = &this.0.content;
            let account = this.account(&bucket).await;
            let held = content.lock(&bucket, &hash).await;
            if this.with_index(&bucket, |index| index.referenced(&hash)) {
                return Ok(content.claim(&bucket, &hash, held).await?);
            }
            let size = match &account {
                Some(_) => content.size(&bucket, &hash).await?,
                None => None,
            };
            let removed = content.remove(&bucket, &hash, held).await?;
            if let (true, Some(account), Some(size)) = (removed, account, size) {
                account.apply(UsageChange::content(-(size as i64)));
            }
            Ok(removed)
        })
        .await?
    }

    /// Deletes every expired record, then the service's content no record refers to (also
    /// what a crash or a failed upload left behind). A failure is logged and the sweep goes on.
    pub async fn sweep(&self, now: u64) -> Swept {
        if self.0.storage.shared() {
            // Another node's records refer to content too: look at them all, not only at
            // what arrived through Redis.
            let settled = now.saturating_sub(SETTLE.as_millis() as u64);
            if let Err(e) = self.catch_up(settled).await {
                tracing::error!("sweep: cannot read the records, nothing removed: {e}");
                return Swept::default();
            }
        }
        let expired = self.records().select(|_, _, r| !r.live(now));
        let mut swept = Swept::default();
        for (bucket, handle) in expired {
            match self.remove_record(&bucket, &handle).await {
                Ok(()) => swept.records += 1,
                Err(e) => tracing::error!(%bucket, %handle, "sweep: cannot remove a record: {e}"),
            }
        }
        let owned = match self.0.content.service_owned().await {
            Ok(owned) => owned,
            Err(e) => {
                tracing::error!("sweep: cannot list the service's content: {e}");
                return swept;
            }
        };
        for (bucket, hash) in owned {
            if self.with_index(&bucket, |index| index.referenced(&hash)) {
                continue;
            }
            match self.collect(&bucket, &hash).await {
                Ok(Some(bytes)) => {
                    swept.contents += 1;
                    swept.bytes += bytes;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%bucket, %hash, "sweep: cannot remove content: {e}"),
            }
        }
        swept
    }

    /// Removes a record from storage, then from memory (here and on the other nodes).
    pub(super) async fn remove_record(&self, bucket: &Bucket, handle: &Handle) -> Result<()> {
        let account = self.account(bucket).await;
        self.0.storage.remove(bucket, handle).await?;
        if let Some(cluster) = self.0.nodes.get() {
            let message = Relayed::Removed {
                bucket: bucket.to_string(),
                handle: handle.to_string(),
            };
            if let Err(e) = cluster.publish(&message).await {
                tracing::warn!(%bucket, %handle, "removal not announced to the other nodes: {e}");
            }
        }
        let removed = self.records().remove(bucket, handle);
        if let (Some(account), Some(record)) = (account, removed) {
            account.apply(UsageChange::record(-super::record_len(&record)));
        }
        Ok(())
    }

    /// Removes the service's content if no record refers to it (checked under its lock, so
    /// an upload of the same bytes either commits first and keeps it, or finds it gone and
    /// stores it again); its size when removed.
    pub(super) async fn collect(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<u64>> {
        let content = &self.0.content;
        let account = self.account(bucket).await;
        let held = content.lock(bucket, hash).await;
        if self.with_index(bucket, |index| index.referenced(hash)) {
            return Ok(None);
        }
        let released = content.release(bucket, hash, held).await?;
        if let (Some(account), Some(size)) = (account, released) {
            account.apply(UsageChange::content(-(size as i64)));
        }
        Ok(released)
    }
}
