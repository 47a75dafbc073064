//! Retention: raw heartbeats bounded by age and count per sentry, rollup
//! buckets by age per resolution, so no fleet can fill the disk.
//!
//! Raw heartbeats above a sentry's checkpointed rollup mark are never
//! deleted: they are what a restart replays into the rollups.

use std::collections::HashMap;
use std::time::Duration;

use super::rollup::Resolution;
use super::Fleet;
use crate::store::{Store, StoreError};

/// How long each kind of data is kept.
#[derive(Debug, Clone)]
pub struct Retention {
    pub heartbeats_max_age: Duration,
    pub heartbeats_max_per_sentry: u64,
    pub m1: Duration,
    pub m5: Duration,
    pub h1: Duration,
    pub d1: Duration,
    /// How often the pruner runs.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Retention {
            heartbeats_max_age: 7 * day,
            heartbeats_max_per_sentry: 10_000,
            m1: 7 * day,
            m5: 30 * day,
            h1: 400 * day,
            d1: 5 * 366 * day,
            interval: Duration::from_secs(600),
        }
    }
}

impl Retention {
    pub fn for_resolution(&self, r: Resolution) -> Duration {
        match r {
            Resolution::M1 => self.m1,
            Resolution::M5 => self.m5,
            Resolution::H1 => self.h1,
            Resolution::D1 { .. } => self.d1,
        }
    }
}

/// What one pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub heartbeats: u64,
    pub buckets: u64,
}

/// One pruning pass. Blocking.
pub fn prune(
    store: &dyn Store,
    fleet: &Fleet,
    retention: &Retention,
    now_ms: u64,
) -> Result<PruneStats, StoreError> {
    let mut stats = PruneStats::default();
    // Raw heartbeats stay until every resolution holds them, in device
    // and group buckets: the lower of the two marks counts.
    // A resolution with no group marks keeps one mark for both.
    let saved: HashMap<(u64, Resolution), u64> = store
        .rollup_marks()?
        .into_iter()
        .map(|(sentry, r, seq)| ((sentry, r), seq))
        .collect();
    let group: HashMap<Resolution, HashMap<u64, u64>> = store
        .group_marks()?
        .into_iter()
        .map(|(r, marks)| (r, marks.into_iter().collect()))
        .collect();
    let resolutions = &fleet.config().resolutions;
    let age_cutoff = now_ms.saturating_sub(retention.heartbeats_max_age.as_millis() as u64);
    for (sentry, progress) in store.all_progress()? {
        let mark = resolutions
            .iter()
            .map(|r| {
                let device = saved.get(&(sentry, *r)).copied().unwrap_or(0);
                match group.get(r) {
                    Some(marks) => device.min(marks.get(&sentry).copied().unwrap_or(0)),
                    None => device,
                }
            })
            .min()
            .unwrap_or(0);
        let upto = progress
            .last_seq
            .saturating_sub(retention.heartbeats_max_per_sentry);
        stats.heartbeats += store.prune_heartbeats(sentry, upto, age_cutoff, mark)?;
    }
    let series = fleet.series_ids();
    for &r in &fleet.config().resolutions {
        let cutoff = now_ms.saturating_sub(retention.for_resolution(r).as_millis() as u64);
        stats.buckets += store.prune_buckets(&series, r, r.bucket_start(cutoff))?;
    }
    Ok(stats)
}
