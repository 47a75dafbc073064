//! The ingest writer: one task that group-commits verified heartbeats.
//!
//! Sessions verify signatures and seq order themselves (in parallel), then
//! submit records here in order. The writer takes whatever is queued (up
//! to a batch limit), drops heartbeats whose seq the store already holds
//! (a resend after a reconnect raced the old session), writes the rest
//! and the sentries' progress in one transaction, flushes, and only then
//! acknowledges. Acks are cumulative per session, carried by a `watch`, so
//! a sentry that does not read cannot make them pile up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::error;

use crate::metrics::Metrics;
use crate::store::{HeartbeatRecord, HeartbeatWrite, Store};

/// Heartbeats that may wait for the writer before sessions are slowed down.
const QUEUE: usize = 16_384;

/// One verified heartbeat on its way to the store.
pub struct IngestItem {
    pub sentry_id: u64,
    pub record: HeartbeatRecord,
    /// The submitting session's highest acknowledged seq.
    pub acked: Arc<watch::Sender<u64>>,
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
        metrics: Arc<Metrics>,
        batch_max: usize,
        stop: watch::Receiver<bool>,
    ) -> (Ingest, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(store, metrics, batch_max, rx, stop));
        (Ingest { tx }, task)
    }

    /// Queues a heartbeat; waits while the queue is full.
    pub async fn submit(&self, item: IngestItem) -> Result<(), IngestClosed> {
        self.tx.send(item).await.map_err(|_| IngestClosed)
    }
}

async fn writer(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    mut rx: mpsc::Receiver<IngestItem>,
    mut stop: watch::Receiver<bool>,
) {
    // Highest stored seq per sentry, as far as this writer knows.
    let mut stored: HashMap<u64, u64> = HashMap::new();
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.recv().await {
                Some(item) => item,
                None => return,
            }
        } else {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => return,
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
        commit(&store, &metrics, &mut stored, batch).await;
    }
}

async fn commit(
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    stored: &mut HashMap<u64, u64>,
    batch: Vec<IngestItem>,
) {
    let mut writes = Vec::with_capacity(batch.len());
    let mut acks = Vec::with_capacity(batch.len());
    let mut duplicates = 0u64;
    for item in batch {
        let last = match stored.get(&item.sentry_id) {
            Some(last) => *last,
            None => match store.progress(item.sentry_id) {
                Ok(p) => p.last_seq,
                Err(e) => {
                    error!(sentry_id = item.sentry_id, "reading progress: {e}");
                    continue;
                }
            },
        };
        let seq = item.record.seq;
        if seq <= last {
            // Already stored: acknowledging it again is correct.
            duplicates += 1;
        } else {
            writes.push(HeartbeatWrite {
                sentry_id: item.sentry_id,
                record: item.record,
            });
        }
        stored.insert(item.sentry_id, last.max(seq));
        acks.push((item.acked, seq));
    }
    let count = writes.len() as u64;
    let started = Instant::now();
    let store2 = store.clone();
    let written = tokio::task::spawn_blocking(move || store2.append_heartbeats(&writes)).await;
    match written {
        Ok(Ok(())) => {
            metrics.commit(started.elapsed().as_secs_f64());
            metrics.heartbeats_n("ok", count);
            metrics.heartbeats_n("duplicate", duplicates);
            for (acked, seq) in acks {
                acked.send_if_modified(|v| {
                    if seq > *v {
                        *v = seq;
                        true
                    } else {
                        false
                    }
                });
            }
        }
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(Ok(())) => unreachable!(),
            };
            // Nothing is acknowledged: the sentries keep these heartbeats in
            // their outboxes and resend them. Forget what we assumed stored.
            error!("storing a batch of {count} heartbeats failed, none acknowledged: {reason}");
            stored.clear();
        }
    }
}
