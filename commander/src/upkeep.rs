//! Periodic upkeep: checkpointing the fleet state, and retention.

use std::sync::Arc;

use hashfleet_shared::now_ms;
use tokio::sync::watch;
use tracing::{debug, error, info};

use crate::app::App;
use crate::fleet::retention;

/// Checkpoints the fleet every `config.checkpoint` until `stop`.
pub async fn checkpoints(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.checkpoint);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => return,
        }
        checkpoint_now(&app).await;
    }
}

/// One checkpoint, on a blocking thread.
pub async fn checkpoint_now(app: &Arc<App>) {
    let app2 = app.clone();
    let result =
        tokio::task::spawn_blocking(move || app2.fleet.checkpoint(app2.store.as_ref(), now_ms()))
            .await;
    match result {
        Ok(Ok(stats)) => debug!(
            devices = stats.devices,
            buckets = stats.buckets,
            series = stats.series,
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
            retention::prune(
                app2.store.as_ref(),
                &app2.fleet,
                &app2.config.retention,
                now_ms(),
            )
        })
        .await;
        match result {
            Ok(Ok(stats)) if stats.heartbeats + stats.buckets > 0 => {
                info!(
                    heartbeats = stats.heartbeats,
                    buckets = stats.buckets,
                    "retention pruned old data"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => error!("retention failed (retried at the next interval): {e}"),
            Err(e) => error!("retention task failed: {e}"),
        }
    }
}
