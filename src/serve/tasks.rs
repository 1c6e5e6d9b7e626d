//! The server's background work: the Blob Service's retention sweep, the sweep of direct
//! uploads nobody confirmed, the content scrub, the file store's checkpoints, and reading the
//! revoked tokens again. Each runs until shutdown.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::auth::revocation;
use crate::config::{Config, StoreKind};
use crate::serve::state::AppState;
use crate::storage::layout::Tree;
use crate::{clock, metrics};

/// Starts every background task the configuration asks for; each ends soon after shutdown
/// begins, and the set resolves once all have.
pub fn spawn(state: &AppState, config: &Config) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    tasks.spawn(revocation_polls(state.clone()));
    tasks.spawn(retention_sweeps(
        state.clone(),
        config.retention_sweep_interval,
        // A direct upload nobody confirmed within twice its URL's lifetime never will be.
        config.direct_url_ttl * 2,
    ));
    if crate::metrics::enabled()
        && let Some(tree) = state.quota().tree()
    {
        tasks.spawn(content_measures(state.clone(), tree.clone()));
    }
    if config.store == StoreKind::Fs {
        tasks.spawn(scrubs(state.clone(), config.scrub_interval));
        tasks.spawn(checkpoints(state.clone(), config.checkpoint_interval));
    }
    tasks
}

/// Reads the revoked tokens again every [`revocation::POLL`], until shutdown.
async fn revocation_polls(state: AppState) {
    let first = Instant::now() + revocation::POLL;
    every(
        first,
        revocation::POLL,
        state.shutdown().clone().cancelled_owned(),
        || state.revocations().refresh(),
    )
    .await;
}

/// Measures the content store for the metrics, now and every
/// [`metrics::CONTENT_MEASURE_INTERVAL`], until shutdown.
async fn content_measures(state: AppState, tree: Tree) {
    let interval = metrics::CONTENT_MEASURE_INTERVAL;
    every(
        Instant::now(),
        interval,
        state.shutdown().clone().cancelled_owned(),
        || async {
            match tree.measure_content().await {
                Ok((objects, bytes)) => metrics::content_measured(objects, bytes),
                Err(e) => tracing::warn!("cannot measure the content store: {e}"),
            }
        },
    )
    .await;
}

/// Checkpoints the store every `interval`, and sooner when the store asks, until shutdown
/// (which checkpoints once more after the last write).
async fn checkpoints(state: AppState, interval: Duration) {
    let closing = state.shutdown().clone().cancelled_owned();
    tokio::pin!(closing);
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = state.store().checkpoint_wanted() => ticks.reset(),
            () = &mut closing => return,
        }
        if let Err(e) = state.store().checkpoint().await {
            tracing::error!("checkpoint failed; the journal keeps every write: {e}");
        }
    }
}

/// Runs `work` at `first` and every `interval` after it (a late run delays the next ones), until
/// `closing` resolves.
async fn every<F: Future<Output = ()>>(
    first: Instant,
    interval: Duration,
    closing: impl Future<Output = ()>,
    mut work: impl FnMut() -> F,
) {
    tokio::pin!(closing);
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut closing => return,
        }
        work().await;
    }
}

/// Runs the Blob Service's retention sweep, and the sweep of direct uploads nobody confirmed
/// within `staging_age`, now and every `interval`, until shutdown.
async fn retention_sweeps(state: AppState, interval: Duration, staging_age: Duration) {
    every(
        Instant::now(),
        interval,
        state.changes().shutdown(),
        || async {
            let swept = state.service().sweep(clock::now_ms()).await;
            crate::metrics::swept(swept.records as u64, swept.contents as u64, swept.bytes);
            if swept.records > 0 || swept.contents > 0 {
                tracing::info!(
                    records = swept.records,
                    contents = swept.contents,
                    bytes = swept.bytes,
                    "retention sweep removed expired blobs"
                );
            } else {
                tracing::debug!("retention sweep: nothing expired");
            }
            match state.content().sweep_staging(staging_age).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "unconfirmed direct uploads removed"),
                Err(e) => tracing::error!("cannot sweep unconfirmed direct uploads: {e}"),
            }
        },
    )
    .await;
}

/// Reads stored content back against its hash every `interval` (the first time one interval
/// after start, so a restart does not reread everything), until shutdown.
async fn scrubs(state: AppState, interval: Duration) {
    let first = Instant::now() + interval;
    every(
        first,
        interval,
        state.shutdown().clone().cancelled_owned(),
        || async {
            match state.content().scrub(state.shutdown().clone()).await {
                Ok(found) if found.corrupt > 0 => tracing::error!(
                    checked = found.checked,
                    corrupt = found.corrupt,
                    "content scrub found content that no longer matches its hash"
                ),
                Ok(found) => tracing::info!(checked = found.checked, "content scrub: all intact"),
                Err(e) => tracing::error!("content scrub failed: {e}"),
            }
        },
    )
    .await;
}
