//! The ingest writer: one task that group-commits verified heartbeats.
//!
//! Sessions verify signatures and seq order themselves (in parallel), then
//! submit records here in order. The writer takes whatever is queued (up
//! to a batch limit), drops heartbeats whose seq the store already holds
//! (a resend after a reconnect raced the old session), writes the rest
//! and the sentries' progress in one transaction and flushes. A second
//! stage then folds the batch into the fleet (registry, rollups) and only
//! then acknowledges, while the writer already stores the next batch: an
//! ack means stored and applied, and the two stages run on two cores.
//! Acks are cumulative per session, carried by a `watch`, so
//! a sentry that does not read cannot make them pile up.
//!
//! When a batch cannot be stored, every session in it is marked
//! [`Acked::Failed`] for good: its session closes, so no later cumulative
//! ack can cover the lost heartbeats; the sentry reconnects, learns the
//! stored mark from `Welcome` and resends from there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::error;

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::{HeartbeatRecord, HeartbeatWrite, Store};

/// Heartbeats that may wait for the writer before sessions are slowed down.
const QUEUE: usize = 16_384;

/// What the writer has done for a session's heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// Everything up to this seq is durably stored.
    Upto(u64),
    /// A batch with this session's heartbeats could not be stored: the
    /// session must end.
    Failed,
}

/// One verified heartbeat on its way to the store.
pub struct IngestItem {
    pub sentry_id: u64,
    pub record: HeartbeatRecord,
    /// The submitting session's acknowledgement state.
    pub acked: Arc<watch::Sender<Acked>>,
}

/// Submits heartbeats to the writer.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<IngestItem>,
}

/// The writer has stopped (the commander is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("ingest has stopped")]
pub struct IngestClosed;

impl Ingest {
    /// Starts the writer. It ends when `stop` turns true, after writing
    /// everything already queued.
    pub fn spawn(
        store: Arc<dyn Store>,
        fleet: Arc<Fleet>,
        metrics: Arc<Metrics>,
        batch_max: usize,
        stop: watch::Receiver<bool>,
    ) -> (Ingest, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(store, fleet, metrics, batch_max, rx, stop));
        (Ingest { tx }, task)
    }

    /// Queues a heartbeat; waits while the queue is full.
    pub async fn submit(&self, item: IngestItem) -> Result<(), IngestClosed> {
        self.tx.send(item).await.map_err(|_| IngestClosed)
    }
}

async fn writer(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    mut rx: mpsc::Receiver<IngestItem>,
    mut stop: watch::Receiver<bool>,
) {
    // Stored batches go on to be applied and acknowledged while the next
    // one is written: the two stages overlap, each on its own thread.
    let (stored_tx, stored_rx) = mpsc::channel::<Stored>(STORED_QUEUE);
    let applier = tokio::spawn(apply_loop(store.clone(), fleet, metrics.clone(), stored_rx));
    // Highest stored seq per sentry, as far as this writer knows.
    let mut known: HashMap<u64, u64> = HashMap::new();
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.recv().await {
                Some(item) => item,
                None => break,
            }
        } else {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                _ = hashfleet_agent::runtime::until_stopped(&mut stop) => {
                    // Refuse new work, then drain what is queued.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if let Some(stored) = commit(&store, &metrics, &mut known, batch).await {
            if stored_tx.send(stored).await.is_err() {
                error!("the ingest applier stopped; heartbeats are stored but not acknowledged");
                break;
            }
        }
    }
    // Everything stored is applied before the writer reports done, so the
    // shutdown checkpoint holds it.
    drop(stored_tx);
    let _ = applier.await;
}

/// Stored batches waiting for the applier before the writer waits.
const STORED_QUEUE: usize = 2;

/// A durably stored batch, waiting to be applied and acknowledged.
struct Stored {
    writes: Vec<HeartbeatWrite>,
    /// Every item of the batch (duplicates too): its session's ack state,
    /// its seq and when it was received (ms).
    acks: Vec<(Arc<watch::Sender<Acked>>, u64, u64)>,
    duplicates: u64,
}

/// Writes a batch; `None` when it failed (its sessions are told).
async fn commit(
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    known: &mut HashMap<u64, u64>,
    batch: Vec<IngestItem>,
) -> Option<Stored> {
    let started = Instant::now();
    let store = store.clone();
    let mut k = std::mem::take(known);
    // Dedupe and write on a blocking thread: both read and write sled.
    let joined = tokio::task::spawn_blocking(move || {
        let result = write_batch(store.as_ref(), &mut k, batch);
        (k, result)
    })
    .await;
    let (k, result) = match joined {
        Ok(v) => v,
        Err(e) => {
            // The batch is gone with the task; its sessions' own senders
            // were dropped with it, which ends those sessions too.
            error!("ingest task failed: {e}");
            return None;
        }
    };
    match result {
        Ok(stored) => {
            *known = k;
            metrics.commit(started.elapsed().as_secs_f64());
            Some(stored)
        }
        Err(BatchFailed { reason, sessions }) => {
            // Nothing is acknowledged, and these sessions end: the sentries
            // keep the heartbeats in their outboxes and resend them.
            error!(
                "storing a batch of {} heartbeats failed, none acknowledged: {reason}",
                sessions.len()
            );
            for acked in &sessions {
                acked.send_replace(Acked::Failed);
            }
            None
        }
    }
}

/// Folds stored batches into the fleet, then acknowledges them, in order.
async fn apply_loop(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Stored>,
) {
    while let Some(stored) = rx.recv().await {
        let store = store.clone();
        let fleet = fleet.clone();
        let joined = tokio::task::spawn_blocking(move || {
            apply_batch(store.as_ref(), &fleet, &stored.writes);
            stored
        })
        .await;
        let stored = match joined {
            Ok(s) => s,
            Err(e) => {
                // The batch is stored but not acknowledged: its sentries
                // resend after their ack deadline, and the writer drops
                // those as duplicates and acknowledges them. Its samples
                // are missing from the rollups; this error says so.
                error!("ingest apply task failed: {e}");
                continue;
            }
        };
        metrics.heartbeats_n("ok", stored.writes.len() as u64);
        metrics.heartbeats_n("duplicate", stored.duplicates);
        let now = hashfleet_shared::now_ms();
        for (acked, seq, received_ms) in &stored.acks {
            metrics.ingest_latency(now.saturating_sub(*received_ms) as f64 / 1e3);
            let seq = *seq;
            acked.send_if_modified(|state| match state {
                Acked::Upto(v) if seq > *v => {
                    *v = seq;
                    true
                }
                _ => false,
            });
        }
    }
}

/// A batch that could not be stored, and the sessions to tell.
struct BatchFailed {
    reason: String,
    /// One per heartbeat of the batch.
    sessions: Vec<Arc<watch::Sender<Acked>>>,
}

/// Drops heartbeats already stored, writes the rest. Blocking.
fn write_batch(
    store: &dyn Store,
    known: &mut HashMap<u64, u64>,
    batch: Vec<IngestItem>,
) -> Result<Stored, BatchFailed> {
    let mut writes = Vec::with_capacity(batch.len());
    let mut acks = Vec::with_capacity(batch.len());
    let mut duplicates = 0u64;
    let mut failed: Option<String> = None;
    // `known` runs ahead of the store during the batch; on failure the
    // caller forgets it entirely.
    for item in batch {
        let seq = item.record.seq;
        acks.push((item.acked, seq, item.record.received_ms));
        if failed.is_some() {
            continue;
        }
        let last = match known.get(&item.sentry_id) {
            Some(last) => *last,
            None => match store.progress(item.sentry_id) {
                Ok(p) => p.last_seq,
                Err(e) => {
                    failed = Some(format!("reading progress of {:016x}: {e}", item.sentry_id));
                    continue;
                }
            },
        };
        if seq <= last {
            // Already stored: acknowledging it again is correct.
            duplicates += 1;
        } else {
            writes.push(HeartbeatWrite {
                sentry_id: item.sentry_id,
                record: item.record,
            });
        }
        known.insert(item.sentry_id, last.max(seq));
    }
    let result = match failed {
        Some(reason) => Err(reason),
        None => store.append_heartbeats(&writes).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => Ok(Stored {
            writes,
            acks,
            duplicates,
        }),
        Err(reason) => Err(BatchFailed {
            reason,
            sessions: acks.into_iter().map(|(a, _, _)| a).collect(),
        }),
    }
}

/// Folds stored heartbeats into the registry and rollups (derived state,
/// rebuilt from the heartbeats after a crash). Blocking.
fn apply_batch(store: &dyn Store, fleet: &Fleet, writes: &[HeartbeatWrite]) {
    for w in writes {
        if let Err(e) = fleet.apply(store, w.sentry_id, &w.record) {
            error!(
                sentry_id = w.sentry_id,
                seq = w.record.seq,
                "updating the device registry: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        HeartbeatRecord, ProgressRecord, SentryRecord, StoreError, TokenRecord, TokenUse,
    };
    use hashfleet_shared::NodeId;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A store whose heartbeat writes fail while `fail` is set.
    #[derive(Default)]
    struct FlakyStore {
        fail: AtomicBool,
        written: std::sync::Mutex<Vec<u64>>,
    }

    impl Store for FlakyStore {
        fn sentry(&self, _: u64) -> Result<Option<SentryRecord>, StoreError> {
            Ok(None)
        }
        fn sentry_id_for_node(&self, _: &NodeId) -> Result<Option<u64>, StoreError> {
            Ok(None)
        }
        fn sentries(&self, _: usize, _: usize) -> Result<Vec<SentryRecord>, StoreError> {
            Ok(vec![])
        }
        fn sentry_count(&self) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn put_sentry(&self, _: &SentryRecord) -> Result<(), StoreError> {
            Ok(())
        }
        fn progress(&self, _: u64) -> Result<ProgressRecord, StoreError> {
            Ok(ProgressRecord::default())
        }
        fn put_token(&self, _: &[u8; 32], _: &TokenRecord) -> Result<(), StoreError> {
            Ok(())
        }
        fn use_token(&self, _: &[u8; 32], _: u64) -> Result<TokenUse, StoreError> {
            Ok(TokenUse::Unknown)
        }
        fn create_user(&self, _: &crate::store::UserRecord) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn put_user(&self, _: &crate::store::UserRecord) -> Result<(), StoreError> {
            Ok(())
        }
        fn user(&self, _: &str) -> Result<Option<crate::store::UserRecord>, StoreError> {
            Ok(None)
        }
        fn users(&self) -> Result<Vec<crate::store::UserRecord>, StoreError> {
            Ok(vec![])
        }
        fn put_api_token(
            &self,
            _: &[u8; 32],
            _: &crate::store::ApiTokenRecord,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn api_token(
            &self,
            _: &[u8; 32],
        ) -> Result<Option<crate::store::ApiTokenRecord>, StoreError> {
            Ok(None)
        }
        fn api_tokens(&self) -> Result<Vec<([u8; 32], crate::store::ApiTokenRecord)>, StoreError> {
            Ok(vec![])
        }
        fn revoke_api_token(&self, _: &[u8; 32]) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn prune_api_tokens(&self, _: u64) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn append_heartbeats(&self, batch: &[HeartbeatWrite]) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Transaction("disk full".into()));
            }
            self.written
                .lock()
                .unwrap()
                .extend(batch.iter().map(|w| w.record.seq));
            Ok(())
        }
        fn recent_heartbeats(&self, _: u64, _: usize) -> Result<Vec<HeartbeatRecord>, StoreError> {
            Ok(vec![])
        }
        fn revoked_keys(&self) -> Result<Vec<[u8; 32]>, StoreError> {
            Ok(vec![])
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn size_on_disk(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn logical_bytes(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn all_progress(&self) -> Result<Vec<(u64, ProgressRecord)>, StoreError> {
            Ok(vec![])
        }
        fn heartbeats_after(
            &self,
            _: u64,
            _: u64,
            _: usize,
        ) -> Result<Vec<HeartbeatRecord>, StoreError> {
            Ok(vec![])
        }
        fn prune_heartbeats(&self, _: u64, _: u64, _: u64, _: u64) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn devices(&self) -> Result<Vec<crate::store::DeviceStateRecord>, StoreError> {
            Ok(vec![])
        }
        fn series(&self) -> Result<Vec<(String, u64)>, StoreError> {
            Ok(vec![])
        }
        fn rollup_marks(
            &self,
        ) -> Result<Vec<(u64, crate::fleet::rollup::Resolution, u64)>, StoreError> {
            Ok(vec![])
        }
        fn group_marks(&self) -> Result<crate::store::GroupMarks, StoreError> {
            Ok(vec![])
        }
        fn bucket(
            &self,
            _: &crate::store::RollupKey,
        ) -> Result<Option<crate::store::RollupRecord>, StoreError> {
            Ok(None)
        }
        fn buckets(
            &self,
            _: u64,
            _: crate::fleet::rollup::Resolution,
            _: u64,
            _: u64,
        ) -> Result<Vec<(u64, crate::store::RollupRecord)>, StoreError> {
            Ok(vec![])
        }
        fn checkpoint(&self, _: &crate::store::Checkpoint) -> Result<(), StoreError> {
            Ok(())
        }
        fn prune_buckets(
            &self,
            _: &[u64],
            _: crate::fleet::rollup::Resolution,
            _: u64,
        ) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn backup(
            &self,
            _: &mut dyn std::io::Write,
        ) -> Result<crate::store::BackupStats, StoreError> {
            Err(StoreError::Backup("not supported".into()))
        }
    }

    fn item(seq: u64, acked: &Arc<watch::Sender<Acked>>) -> IngestItem {
        IngestItem {
            sentry_id: 1,
            record: HeartbeatRecord {
                seq,
                ts_ms: 0,
                received_ms: 0,
                devices: vec![],
            },
            acked: acked.clone(),
        }
    }

    #[tokio::test]
    async fn a_failed_batch_ends_its_sessions_and_later_batches_never_ack_them() {
        let store = Arc::new(FlakyStore::default());
        let (_stop_tx, stop) = watch::channel(false);
        let fleet = Arc::new(
            crate::fleet::Fleet::load(
                store.as_ref(),
                crate::fleet::FleetConfig::new(vec![0], vec![], Default::default()),
            )
            .unwrap(),
        );
        let (ingest, _task) =
            Ingest::spawn(store.clone(), fleet, Arc::new(Metrics::default()), 16, stop);
        let (tx, mut rx) = watch::channel(Acked::Upto(0));
        let tx = Arc::new(tx);

        ingest.submit(item(1, &tx)).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), Acked::Upto(1));

        store.fail.store(true, Ordering::SeqCst);
        ingest.submit(item(2, &tx)).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), Acked::Failed);

        // Storage recovers; a later heartbeat of the failed session is
        // stored but must not be acknowledged cumulatively over seq 2.
        store.fail.store(false, Ordering::SeqCst);
        ingest.submit(item(3, &tx)).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !store.written.lock().unwrap().contains(&3) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(*rx.borrow(), Acked::Failed);
        assert_eq!(*store.written.lock().unwrap(), vec![1, 3]);
    }
}
