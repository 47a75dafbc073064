//! Periodic upkeep: checkpointing the fleet state, and retention.

use std::sync::Arc;

use hashfleet_shared::now_ms;
use tokio::sync::watch;
use tracing::{debug, error, info};

use crate::app::App;
use crate::fleet::retention;
use crate::fleet::rollup::Resolution;

/// Checkpoints the fleet every `config.checkpoint` until `stop`.
///
/// 1m buckets and devices every round, 5m every 2nd, 1h and days every
/// 10th: each bucket is rewritten a few times while it is open, and a
/// restart replays at most 10 rounds of heartbeats.
pub async fn checkpoints(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.checkpoint);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => return,
        }
        round += 1;
        let due = due_resolutions(&app.fleet.config().resolutions, round);
        checkpoint(&app, due).await;
    }
}

/// The resolutions checkpointed in round `round` (counting from 1).
pub fn due_resolutions(all: &[Resolution], round: u64) -> Vec<Resolution> {
    all.iter()
        .copied()
        .filter(|r| match r {
            Resolution::M1 => true,
            Resolution::M5 => round % 2 == 0,
            Resolution::H1 | Resolution::D1 { .. } => round % 10 == 0,
        })
        .collect()
}

/// Checkpoints every resolution, on a blocking thread.
pub async fn checkpoint_now(app: &Arc<App>) {
    checkpoint(app, app.fleet.config().resolutions.clone()).await;
}

async fn checkpoint(app: &Arc<App>, resolutions: Vec<Resolution>) {
    let app2 = app.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        app2.fleet
            .checkpoint(app2.store.as_ref(), now_ms(), &resolutions)
    })
    .await;
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(Ok(stats)) => debug!(
            devices = stats.devices,
            buckets = stats.buckets,
            series = stats.series,
            ms,
            "checkpoint"
        ),
        Ok(Err(e)) => error!("fleet checkpoint failed (retried at the next interval): {e}"),
        Err(e) => error!("fleet checkpoint task failed: {e}"),
    }
}

/// Prunes old heartbeats and buckets every `retention.interval` until `stop`.
pub async fn retention(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => return,
        }
        let app2 = app.clone();
        let result = tokio::task::spawn_blocking(move || {
            // Expired login tokens can never be used again.
            match app2.store.prune_api_tokens(now_ms()) {
                Ok(n) if n > 0 => debug!(tokens = n, "pruned expired session tokens"),
                Ok(_) => {}
                Err(e) => error!("pruning expired session tokens failed: {e}"),
            }
            retention::prune(
                app2.store.as_ref(),
                &app2.fleet,
                &app2.config.retention,
                now_ms(),
            )
        })
        .await;
        match result {
            Ok(Ok(stats)) if stats.heartbeats + stats.buckets > 0 => info!(
                heartbeats = stats.heartbeats,
                buckets = stats.buckets,
                "retention pruned old data"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => error!("retention failed (retried at the next interval): {e}"),
            Err(e) => error!("retention task failed: {e}"),
        }
    }
}
