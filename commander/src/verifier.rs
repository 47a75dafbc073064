//! The heartbeat signature verifier: one thread checks the signatures of
//! every session in batches ([`hashfleet_shared::batch`]).
//!
//! A session hands its heartbeat's signature over and waits for the
//! verdict, so it still checks in the protocol's order (payload, node,
//! signature, seq, clock). Whatever arrived from other sessions meanwhile
//! joins the same batch: under load batches grow toward [`MAX_BATCH`] and
//! each signature costs less; when idle a batch is one signature.

use std::sync::Arc;

use hashfleet_shared::batch::{verify_all, Pending};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// Most signatures in one batch.
pub const MAX_BATCH: usize = 64;
/// Signatures waiting before sessions wait to hand theirs over.
const QUEUE: usize = 4 * 1024;

struct Job {
    item: Pending,
    reply: oneshot::Sender<bool>,
}

/// A handle on the verifier thread; it stops when every handle is gone.
#[derive(Clone)]
pub struct Verifier {
    tx: mpsc::Sender<Job>,
}

impl Verifier {
    /// Starts the verifier thread.
    pub fn start(metrics: Arc<Metrics>) -> std::io::Result<Verifier> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("hashfleet-verify".into())
            .spawn(move || {
                let mut items = Vec::with_capacity(MAX_BATCH);
                let mut replies = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = rx.blocking_recv() {
                    items.push(first.item);
                    replies.push(first.reply);
                    while items.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => {
                                items.push(job.item);
                                replies.push(job.reply);
                            }
                            Err(_) => break,
                        }
                    }
                    let verdicts = verify_all(&items);
                    metrics.verified_batch(items.len());
                    items.clear();
                    for (reply, ok) in replies.drain(..).zip(verdicts) {
                        // A session that went away no longer needs it.
                        let _ = reply.send(ok);
                    }
                }
            })?;
        Ok(Verifier { tx })
    }

    /// Checks one signature, batched with whatever else is waiting.
    /// `None` when the verifier thread is gone.
    pub async fn verify(&self, item: Pending) -> Option<bool> {
        let (reply, verdict) = oneshot::channel();
        self.tx.send(Job { item, reply }).await.ok()?;
        verdict.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hashfleet_shared::batch::PreparedKey;
    use hashfleet_shared::sign::{sign, Domain};
    use hashfleet_shared::NodeKey;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sessions_get_their_own_verdicts_from_shared_batches() {
        let metrics = Arc::new(Metrics::default());
        let verifier = Verifier::start(metrics.clone()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..400u32 {
            let verifier = verifier.clone();
            tasks.push(tokio::spawn(async move {
                let key = NodeKey::generate();
                let payload = i.to_be_bytes();
                let mut signature = sign(&key, Domain::Heartbeat, &payload);
                let forged = i % 7 == 0;
                if forged {
                    signature[3] ^= 0x40;
                }
                let prepared = PreparedKey::new(&key.node_id());
                let item = Pending::new(prepared, Domain::Heartbeat, &payload, signature);
                (forged, verifier.verify(item).await)
            }));
        }
        for task in tasks {
            let (forged, verdict) = task.await.unwrap();
            assert_eq!(verdict, Some(!forged));
        }
        let (batches, signatures) = metrics.verified();
        assert_eq!(signatures, 400);
        assert!((1..=400).contains(&batches), "{batches} batches");
    }
}
