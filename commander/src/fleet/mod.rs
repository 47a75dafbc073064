//! The fleet: every device's latest state and the time-series rollups,
//! derived from the durable heartbeats.
//!
//! The ingest writer applies each batch it has stored ([`Fleet::apply`]);
//! everything here is then updated in memory: the registry and the open
//! rollup buckets of every device series and group series. A periodic
//! [`Fleet::checkpoint`] writes what changed (devices, buckets, new series
//! names) with per-sentry marks, "these buckets hold every heartbeat up to
//! this seq". Group series mix sentries, so their buckets are written in
//! one atomic part with a group mark for every sentry; device series belong
//! to one sentry, so their buckets go in small parts, each with the device
//! marks of its sentries. Small parts let ingest commits run between them.
//! After a crash, [`Fleet::load`] replays the stored heartbeats above each
//! mark into the buckets that lack them: the rollups come back exactly,
//! with no sample counted twice or lost.
//!
//! Group series (for tail and daily aggregates) exist per `type` and per
//! `type` + tag, for the metrics listed in the config, so dashboards never
//! scan devices.

pub mod device;
pub mod retention;
pub mod rollup;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use crate::query::{Projection, Query, Sort};
use crate::store::{
    Checkpoint, DevicePart, DeviceStateRecord, HeartbeatRecord, RollupKey, Store, StoreError,
};
use device::{Status, StatusRules};
use rollup::{Bucket, Resolution};

/// Tags with group series unless configured otherwise: per-sentry groups
/// (`sentry-…`) are left out, they would multiply the series by sentries.
pub const DEFAULT_GROUP_TAG_PREFIXES: [&str; 3] = ["t-", "site-", "rack-"];

/// Most buckets one series read may cover.
pub const MAX_BUCKETS_PER_READ: u64 = 100_000;
const SEP: char = '\u{1f}';

/// What the fleet is configured to keep.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub rules: StatusRules,
    /// Every resolution kept: 1m, 5m, 1h and one 1d per timezone offset.
    pub resolutions: Vec<Resolution>,
    /// Metrics rolled up per group (type, type + tag).
    pub group_metrics: HashSet<String>,
    /// Configured timezone offsets (ms) for daily buckets.
    pub timezone_offsets: Vec<i64>,
    /// Tags that get group series, by prefix (`t-`, `site-`, `rack-`).
    pub group_tag_prefixes: Vec<String>,
}

impl FleetConfig {
    pub fn new(timezone_offsets: Vec<i64>, group_metrics: Vec<String>, rules: StatusRules) -> Self {
        let mut resolutions = vec![Resolution::M1, Resolution::M5, Resolution::H1];
        let mut offsets = timezone_offsets.clone();
        if offsets.is_empty() {
            offsets.push(0);
        }
        offsets.sort_unstable();
        offsets.dedup();
        resolutions.extend(
            offsets
                .iter()
                .map(|&offset_ms| Resolution::D1 { offset_ms }),
        );
        FleetConfig {
            rules,
            resolutions,
            group_metrics: group_metrics.into_iter().collect(),
            timezone_offsets: offsets,
            group_tag_prefixes: DEFAULT_GROUP_TAG_PREFIXES
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

/// Why a fleet read was refused.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the range covers {0} buckets; at most {MAX_BUCKETS_PER_READ} per request: narrow the range or use a coarser resolution")]
    RangeTooLong(u64),
    #[error("resolution {0} is not kept by this commander (daily buckets exist for the configured timezone offsets only)")]
    NotKept(String),
}

struct Entry {
    record: DeviceStateRecord,
    /// The document and the status it was built with.
    doc: Option<(Status, Value)>,
    dirty_gen: u64,
    /// Series ids of its metrics, for the type and tags it has: looked up
    /// once, not by name on every heartbeat.
    series: Vec<MetricSeries>,
}

/// One metric's device series and group series.
struct MetricSeries {
    metric: String,
    device: u64,
    groups: Vec<u64>,
}

struct CachedBucket {
    bucket: Bucket,
    dirty_gen: u64,
    /// Who added to it since it was last saved.
    owner: Owner,
}

/// What fed a bucket since it was last saved, which decides the part of a
/// checkpoint it is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A group series: every sentry's heartbeats.
    Group,
    /// A device series fed by this sentry only.
    Sentry(u64),
    /// A device series fed by more than one sentry (a device that moved):
    /// its buckets and those sentries' marks must be written together.
    Shared,
}

/// About how many records one checkpoint part holds. A part is written in
/// one sled transaction, and sled runs one at a time: ingest waits for it.
const PART_RECORDS: usize = 256;

#[derive(Default)]
struct State {
    gen: u64,
    devices: BTreeMap<String, Entry>,
    series: HashMap<String, u64>,
    next_series: u64,
    unsaved_series: Vec<(String, u64)>,
    buckets: HashMap<RollupKey, CachedBucket>,
    /// Per sentry: the last heartbeat applied in memory.
    applied: HashMap<u64, u64>,
    /// Per sentry and resolution: the device mark stored with that
    /// resolution's device buckets (every heartbeat up to it is in them,
    /// none after it).
    saved: HashMap<(u64, Resolution), u64>,
    /// Per sentry: (site, rack), from its hello labels.
    places: HashMap<u64, (String, String)>,
}

impl State {
    fn series_id(&mut self, name: String) -> u64 {
        if let Some(id) = self.series.get(&name) {
            return *id;
        }
        let id = self.next_series;
        self.next_series += 1;
        self.unsaved_series.push((name.clone(), id));
        self.series.insert(name, id);
        id
    }

    fn bucket_mut(
        &mut self,
        store: &dyn Store,
        key: RollupKey,
        owner: Owner,
    ) -> Result<&mut Bucket, StoreError> {
        let gen = self.gen;
        let cached = match self.buckets.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let bucket = store.bucket(&key)?.unwrap_or_default();
                v.insert(CachedBucket {
                    bucket,
                    dirty_gen: 0,
                    owner,
                })
            }
        };
        if cached.dirty_gen == 0 {
            cached.owner = owner;
        } else if cached.owner != owner {
            cached.owner = Owner::Shared;
        }
        cached.dirty_gen = gen;
        Ok(&mut cached.bucket)
    }

    fn place(&mut self, store: &dyn Store, sentry_id: u64) -> Result<(String, String), StoreError> {
        if let Some(p) = self.places.get(&sentry_id) {
            return Ok(p.clone());
        }
        let place = match store.sentry(sentry_id)? {
            Some(r) => (
                r.labels.get("site").cloned().unwrap_or_default(),
                r.labels.get("rack").cloned().unwrap_or_default(),
            ),
            None => Default::default(),
        };
        self.places.insert(sentry_id, place.clone());
        Ok(place)
    }
}

/// Name of a device's metric series.
pub fn device_series(device_id: &str, metric: &str) -> String {
    format!("d{SEP}{device_id}{SEP}{metric}")
}

/// Name of a group's metric series; `tag` `*` is the whole type.
pub fn group_series(kind: &str, tag: &str, metric: &str) -> String {
    format!("g{SEP}{kind}/{tag}{SEP}{metric}")
}

/// What a checkpoint wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointStats {
    pub devices: usize,
    pub buckets: usize,
    pub series: usize,
}

pub struct Fleet {
    config: FleetConfig,
    state: Mutex<State>,
    /// One checkpoint at a time: each takes what is dirty and marks it
    /// clean. It holds what only checkpoints change, the group marks as
    /// stored (per resolution and sentry; never below the device mark), so
    /// building them does not hold up ingest's lock on the state.
    checkpointing: Mutex<GroupMarksSaved>,
    /// About how many records a checkpoint part holds ([`PART_RECORDS`]).
    part_records: usize,
}

impl Fleet {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Loads the registry and rollups, replays heartbeats stored after the
    /// last checkpoint, and checkpoints the result. Blocking.
    pub fn load(store: &dyn Store, config: FleetConfig) -> Result<Fleet, StoreError> {
        let mut state = State::default();
        for (name, id) in store.series()? {
            state.next_series = state.next_series.max(id + 1);
            state.series.insert(name, id);
        }
        for record in store.devices()? {
            state.devices.insert(
                record.id.clone(),
                Entry {
                    record,
                    doc: None,
                    dirty_gen: 0,
                    series: Vec::new(),
                },
            );
        }
        for (sentry, r, seq) in store.rollup_marks()? {
            state.saved.insert((sentry, r), seq);
        }
        let mut saved_group: GroupMarksSaved = store
            .group_marks()?
            .into_iter()
            .map(|(r, marks)| (r, marks.into_iter().collect()))
            .collect();
        // A resolution with no group marks was last written with one mark
        // for device and group buckets (or never): the device marks hold.
        for r in &config.resolutions {
            if !saved_group.contains_key(r) {
                let marks = state
                    .saved
                    .iter()
                    .filter(|((_, mr), _)| mr == r)
                    .map(|((sentry, _), seq)| (*sentry, *seq))
                    .collect();
                saved_group.insert(*r, marks);
            }
        }
        let fleet = Fleet {
            config,
            state: Mutex::new(state),
            checkpointing: Mutex::new(GroupMarksSaved::new()),
            part_records: PART_RECORDS,
        };
        let mut replayed = 0u64;
        let resolutions = fleet.config.resolutions.clone();
        for (sentry, progress) in store.all_progress()? {
            // Each resolution resumes from its own marks, device and group.
            let (device_marks, group_marks): (Vec<u64>, Vec<u64>) = {
                let st = fleet.lock();
                resolutions
                    .iter()
                    .map(|r| {
                        let device = st.saved.get(&(sentry, *r)).copied().unwrap_or(0);
                        let group = saved_group
                            .get(r)
                            .and_then(|m| m.get(&sentry))
                            .copied()
                            .unwrap_or(0);
                        if group < device {
                            tracing::error!(sentry, resolution = r.name(), group, device, "a group mark is below its device mark; the group buckets' sums of averages may be off for the heartbeats between them");
                        }
                        (device, group)
                    })
                    .unzip()
            };
            let mut from = device_marks
                .iter()
                .chain(&group_marks)
                .copied()
                .min()
                .unwrap_or(0);
            while from < progress.last_seq {
                let batch = store.heartbeats_after(sentry, from, 1000)?;
                let Some(last) = batch.last().map(|h| h.seq) else {
                    break;
                };
                for hb in &batch {
                    let due = |marks: &[u64]| -> Vec<Resolution> {
                        resolutions
                            .iter()
                            .zip(marks)
                            .filter(|(_, m)| hb.seq > **m)
                            .map(|(r, _)| *r)
                            .collect()
                    };
                    fleet.apply_to(store, sentry, hb, &due(&device_marks), &due(&group_marks))?;
                }
                replayed += batch.len() as u64;
                from = last;
            }
        }
        *fleet
            .checkpointing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = saved_group;
        if replayed > 0 {
            tracing::info!(
                replayed,
                "rollups rebuilt from heartbeats stored after the last checkpoints"
            );
            fleet.checkpoint(store, hashfleet_shared::now_ms(), &resolutions)?;
        }
        Ok(fleet)
    }

    /// Forgets the cached place of a sentry (its labels changed).
    pub fn forget_place(&self, sentry_id: u64) {
        self.lock().places.remove(&sentry_id);
    }

    /// Folds one stored heartbeat into the registry and rollups. Blocking
    /// (it may read buckets from the store).
    pub fn apply(
        &self,
        store: &dyn Store,
        sentry_id: u64,
        hb: &HeartbeatRecord,
    ) -> Result<(), StoreError> {
        let all = &self.config.resolutions;
        self.apply_to(store, sentry_id, hb, all, all)
    }

    /// The series ids of one metric of a device: its device series and,
    /// for a group metric, the series of its type and of each grouping tag.
    fn metric_series(
        &self,
        st: &mut State,
        record: &DeviceStateRecord,
        metric: &str,
    ) -> MetricSeries {
        let device = st.series_id(device_series(&record.id, metric));
        let groups = if self.config.group_metrics.contains(metric) {
            let prefixes = &self.config.group_tag_prefixes;
            std::iter::once("*")
                .chain(
                    record
                        .tags
                        .iter()
                        .map(String::as_str)
                        .filter(|t| prefixes.iter().any(|p| t.starts_with(p.as_str()))),
                )
                .map(|g| st.series_id(group_series(&record.kind, g, metric)))
                .collect()
        } else {
            Vec::new()
        };
        MetricSeries {
            metric: metric.to_string(),
            device,
            groups,
        }
    }

    /// Folds a heartbeat into the registry, into the device buckets of
    /// `device_res` and into the group buckets of `group_res` only (replay
    /// skips those already holding it).
    fn apply_to(
        &self,
        store: &dyn Store,
        sentry_id: u64,
        hb: &HeartbeatRecord,
        device_res: &[Resolution],
        group_res: &[Resolution],
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.gen += 1;
        let gen = st.gen;
        let (site, rack) = st.place(store, sentry_id)?;
        for snapshot in &hb.devices {
            if snapshot.id.is_empty() {
                continue;
            }
            let record = device::update(
                st.devices.get(&snapshot.id).map(|e| &e.record),
                snapshot,
                sentry_id,
                &site,
                &rack,
                hb.ts_ms,
                hb.received_ms,
            );
            let online = device::reported_status(&record, &self.config.rules).is_online();
            // The ids found for this device before hold while its type and
            // tags do (tags decide its groups).
            let mut ids = st
                .devices
                .get_mut(&snapshot.id)
                .filter(|e| e.record.kind == record.kind && e.record.tags == record.tags)
                .map(|e| std::mem::take(&mut e.series))
                .unwrap_or_default();
            let flags = [
                ("online", if online { 1.0 } else { 0.0 }),
                ("offline", if online { 0.0 } else { 1.0 }),
            ];
            let samples = record
                .metrics
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .chain(flags);
            for (metric, value) in samples {
                let at = match ids.iter().position(|m| m.metric == metric) {
                    Some(at) => at,
                    None => {
                        ids.push(self.metric_series(&mut st, &record, metric));
                        ids.len() - 1
                    }
                };
                let dseries = ids[at].device;
                let gseries = &ids[at].groups;
                for &resolution in &self.config.resolutions {
                    let to_device = device_res.contains(&resolution);
                    let to_groups = !gseries.is_empty() && group_res.contains(&resolution);
                    if !to_device && !to_groups {
                        continue;
                    }
                    let start_ms = resolution.bucket_start(hb.ts_ms);
                    let key = RollupKey {
                        series: dseries,
                        resolution,
                        start_ms,
                    };
                    let (before, after) = if to_device {
                        let b = st.bucket_mut(store, key, Owner::Sentry(sentry_id))?;
                        let before = b.avg();
                        b.add(hb.ts_ms, value);
                        (before, b.avg().unwrap_or(value))
                    } else {
                        // The device bucket holds this sample already (a group
                        // mark below a device mark, which checkpoints never
                        // store): its average is the best there is.
                        let avg = match st.buckets.get(&key) {
                            Some(c) => c.bucket.avg(),
                            None => store.bucket(&key)?.and_then(|b| b.avg()),
                        };
                        (avg, avg.unwrap_or(value))
                    };
                    if !to_groups {
                        continue;
                    }
                    for &g in gseries {
                        let gkey = RollupKey {
                            series: g,
                            resolution,
                            start_ms,
                        };
                        st.bucket_mut(store, gkey, Owner::Group)?
                            .add_to_group(hb.ts_ms, value, before, after);
                    }
                }
            }
            match st.devices.get_mut(&record.id) {
                Some(e) => {
                    e.record = record;
                    e.doc = None;
                    e.dirty_gen = gen;
                    e.series = ids;
                }
                None => {
                    st.devices.insert(
                        record.id.clone(),
                        Entry {
                            record,
                            doc: None,
                            dirty_gen: gen,
                            series: ids,
                        },
                    );
                }
            }
        }
        let applied = st.applied.entry(sentry_id).or_insert(0);
        *applied = (*applied).max(hb.seq);
        Ok(())
    }

    /// Writes the dirty buckets of `resolutions` with each sentry's marks
    /// for them, new series names, and (when `resolutions` holds 1m) the
    /// changed devices, in the parts [`Checkpoint`] describes. Then drops
    /// closed, saved buckets from memory. Blocking.
    ///
    /// Resolutions are checkpointed at their own pace (see `upkeep`): coarse
    /// buckets stay open for hours, and rewriting them as often as 1m ones
    /// would multiply the writes.
    pub fn checkpoint(
        &self,
        store: &dyn Store,
        now_ms: u64,
        resolutions: &[Resolution],
    ) -> Result<CheckpointStats, StoreError> {
        self.checkpoint_via(now_ms, resolutions, |cp| store.checkpoint(cp))
    }

    /// [`Fleet::checkpoint`] with the store write given: tests stop it
    /// part-way, as a crash would.
    fn checkpoint_via(
        &self,
        now_ms: u64,
        resolutions: &[Resolution],
        write: impl FnOnce(&Checkpoint) -> Result<(), StoreError>,
    ) -> Result<CheckpointStats, StoreError> {
        let mut saved_group = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let with_devices = resolutions.contains(&Resolution::M1);
        // One look at the state, under its lock: the buckets and the marks
        // must describe the same moment.
        let applied: Vec<(u64, u64)>;
        let (mut snap, gen) = {
            let st = self.lock();
            let mut snap = Snapshot {
                series: st.unsaved_series.clone(),
                ..Default::default()
            };
            for (&sentry, &seq) in &st.applied {
                for &r in resolutions {
                    if st.saved.get(&(sentry, r)) != Some(&seq) {
                        snap.device_marks.push((sentry, r, seq));
                    }
                }
            }
            applied = st.applied.iter().map(|(s, q)| (*s, *q)).collect();
            if with_devices {
                snap.devices = st
                    .devices
                    .values()
                    .filter(|e| e.dirty_gen > 0)
                    .map(|e| e.record.clone())
                    .collect();
            }
            for (k, c) in &st.buckets {
                if c.dirty_gen > 0 && resolutions.contains(&k.resolution) {
                    snap.buckets.push((c.owner, *k, c.bucket));
                }
            }
            (snap, st.gen)
        };
        // The group marks, off the state's lock.
        for &r in resolutions {
            let saved = saved_group.get(&r);
            if applied
                .iter()
                .all(|(sentry, seq)| saved.and_then(|m| m.get(sentry)) == Some(seq))
            {
                continue;
            }
            let mut marks = saved.cloned().unwrap_or_default();
            marks.extend(applied.iter().copied());
            let mut marks: Vec<(u64, u64)> = marks.into_iter().collect();
            marks.sort_unstable();
            snap.group_marks.push((r, marks));
        }
        let stats = CheckpointStats {
            devices: snap.devices.len(),
            buckets: snap.buckets.len(),
            series: snap.series.len(),
        };
        if stats.devices == 0
            && stats.buckets == 0
            && stats.series == 0
            && snap.device_marks.is_empty()
            && snap.group_marks.is_empty()
        {
            return Ok(stats);
        }
        let cp = snap.into_parts(self.part_records);
        write(&cp)?;
        let mut st = self.lock();
        let saved_series = cp.series.len().min(st.unsaved_series.len());
        st.unsaved_series.drain(..saved_series);
        let written = cp
            .groups
            .buckets
            .iter()
            .chain(cp.parts.iter().flat_map(|p| &p.buckets));
        for (key, _) in written {
            if let Some(c) = st.buckets.get_mut(key) {
                if c.dirty_gen <= gen {
                    c.dirty_gen = 0;
                }
            }
        }
        for d in &cp.devices {
            if let Some(e) = st.devices.get_mut(&d.id) {
                if e.dirty_gen <= gen {
                    e.dirty_gen = 0;
                }
            }
        }
        for (sentry, r, seq) in cp.parts.iter().flat_map(|p| &p.marks) {
            st.saved.insert((*sentry, *r), *seq);
        }
        for (r, marks) in &cp.groups.marks {
            saved_group.insert(*r, marks.iter().copied().collect());
        }
        // Closed, saved buckets need not stay in memory.
        st.buckets
            .retain(|k, c| c.dirty_gen > 0 || k.start_ms + 2 * k.resolution.width_ms() > now_ms);
        Ok(stats)
    }

    /// Checkpoints every resolution (start-up after replay, shutdown).
    pub fn checkpoint_all(
        &self,
        store: &dyn Store,
        now_ms: u64,
    ) -> Result<CheckpointStats, StoreError> {
        let all = self.config.resolutions.clone();
        self.checkpoint(store, now_ms, &all)
    }

    /// Runs `query` over every device document, sorted, paged, projected.
    pub fn query(
        &self,
        query: &Query,
        sort: &Sort,
        projection: &Projection,
        offset: usize,
        limit: usize,
        now_ms: u64,
    ) -> (usize, Vec<Value>) {
        let mut st = self.lock();
        let rules = self.config.rules;
        for e in st.devices.values_mut() {
            let s = device::status(&e.record, now_ms, &rules);
            if e.doc.as_ref().map(|d| d.0) != Some(s) {
                e.doc = Some((s, device::document(&e.record, s)));
            }
        }
        // Documents are in id order, and the sort is stable: ties keep it.
        let docs = st
            .devices
            .values()
            .filter_map(|e| e.doc.as_ref().map(|d| &d.1));
        crate::query::run(docs, query, sort, projection, offset, limit)
    }

    /// One device's document.
    pub fn device(&self, id: &str, now_ms: u64) -> Option<Value> {
        let st = self.lock();
        let e = st.devices.get(id)?;
        Some(device::document(
            &e.record,
            device::status(&e.record, now_ms, &self.config.rules),
        ))
    }

    pub fn device_count(&self) -> usize {
        self.lock().devices.len()
    }

    /// Checks that a resolution is kept.
    pub fn kept(&self, r: Resolution) -> Result<(), FleetError> {
        if self.config.resolutions.contains(&r) {
            Ok(())
        } else {
            Err(FleetError::NotKept(match r {
                Resolution::D1 { offset_ms } => format!("1d at offset {offset_ms} ms"),
                other => other.name().to_string(),
            }))
        }
    }

    /// Buckets of a series in `[start, end]` (by bucket start), ascending,
    /// including those not yet checkpointed. Blocking.
    pub fn read_series(
        &self,
        store: &dyn Store,
        name: &str,
        r: Resolution,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<(u64, Bucket)>, FleetError> {
        self.kept(r)?;
        let first = r.bucket_start(start_ms);
        if end_ms < first {
            return Ok(Vec::new());
        }
        let span = (end_ms - first) / r.width_ms() + 1;
        if span > MAX_BUCKETS_PER_READ {
            return Err(FleetError::RangeTooLong(span));
        }
        // Hold the lock across the store read: a checkpoint only forgets a
        // bucket after it is stored, so nothing falls between the two.
        let st = self.lock();
        let Some(&series) = st.series.get(name) else {
            return Ok(Vec::new());
        };
        let mut out: BTreeMap<u64, Bucket> = store
            .buckets(series, r, first, end_ms)?
            .into_iter()
            .collect();
        let mut t = first;
        while t <= end_ms {
            if let Some(c) = st.buckets.get(&RollupKey {
                series,
                resolution: r,
                start_ms: t,
            }) {
                out.insert(t, c.bucket);
            }
            t += r.width_ms();
        }
        Ok(out.into_iter().filter(|(_, b)| b.count > 0).collect())
    }

    /// Fleet metrics for Prometheus, summed over devices that share the
    /// same bounded labels (never per device or IP).
    pub fn prometheus(&self, now_ms: u64, out: &mut String) {
        type Labels = (String, String, String, String, String, String, String);
        #[derive(Default)]
        struct Sums {
            hashrate: f64,
            expected: f64,
            power: f64,
            temp_max: Option<f64>,
            by_status: BTreeMap<&'static str, u64>,
            alerts: BTreeMap<String, u64>,
        }
        let st = self.lock();
        let mut groups: BTreeMap<Labels, Sums> = BTreeMap::new();
        for e in st.devices.values() {
            let d = &e.record;
            let key = (
                d.site.clone(),
                d.rack.clone(),
                d.kind.clone(),
                d.make.clone(),
                d.model.clone(),
                d.firmware.clone(),
                format!("{:016x}", d.sentry_id),
            );
            let s = groups.entry(key).or_default();
            let status = device::status(d, now_ms, &self.config.rules);
            *s.by_status.entry(status.as_str()).or_default() += 1;
            if status.is_online() {
                s.hashrate += d.metrics.get("hashrate_hs").copied().unwrap_or(0.0);
                s.expected += d
                    .metrics
                    .get("expected_hashrate_hs")
                    .copied()
                    .unwrap_or(0.0);
                s.power += d.metrics.get("power_w").copied().unwrap_or(0.0);
                if let Some(t) = d.metrics.get("temp_c") {
                    s.temp_max = Some(s.temp_max.map_or(*t, |m| m.max(*t)));
                }
            }
            for a in &d.alerts {
                *s.alerts.entry(a.severity.clone()).or_default() += 1;
            }
        }
        let labels = |l: &Labels| {
            format!(
                "site=\"{}\",rack=\"{}\",type=\"{}\",make=\"{}\",model=\"{}\",firmware=\"{}\",sentry=\"{}\"",
                esc(&l.0),
                esc(&l.1),
                esc(&l.2),
                esc(&l.3),
                esc(&l.4),
                esc(&l.5),
                esc(&l.6)
            )
        };
        let header = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
        };
        header(out, "hashfleet_devices", "Devices by status class.");
        for (l, s) in &groups {
            for status in Status::ALL {
                let n = s.by_status.get(status.as_str()).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "hashfleet_devices{{{},status=\"{}\"}} {n}",
                    labels(l),
                    status.as_str()
                );
            }
        }
        header(
            out,
            "hashfleet_hashrate_hashes_per_second",
            "Hashrate of online devices.",
        );
        for (l, s) in &groups {
            let _ = writeln!(
                out,
                "hashfleet_hashrate_hashes_per_second{{{}}} {}",
                labels(l),
                s.hashrate
            );
        }
        header(
            out,
            "hashfleet_expected_hashrate_hashes_per_second",
            "Nominal hashrate of online devices.",
        );
        for (l, s) in &groups {
            let _ = writeln!(
                out,
                "hashfleet_expected_hashrate_hashes_per_second{{{}}} {}",
                labels(l),
                s.expected
            );
        }
        header(
            out,
            "hashfleet_power_watts",
            "Power drawn by online devices.",
        );
        for (l, s) in &groups {
            let _ = writeln!(out, "hashfleet_power_watts{{{}}} {}", labels(l), s.power);
        }
        header(
            out,
            "hashfleet_temperature_max_celsius",
            "Highest temperature among online devices.",
        );
        for (l, s) in &groups {
            if let Some(t) = s.temp_max {
                let _ = writeln!(
                    out,
                    "hashfleet_temperature_max_celsius{{{}}} {t}",
                    labels(l)
                );
            }
        }
        header(
            out,
            "hashfleet_device_alerts",
            "Active device alerts by severity.",
        );
        for (l, s) in &groups {
            for sev in ["critical", "high", "medium"] {
                let n = s.alerts.get(sev).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "hashfleet_device_alerts{{{},severity=\"{sev}\"}} {n}",
                    labels(l)
                );
            }
        }
    }

    /// Every series id, for retention.
    pub fn series_ids(&self) -> Vec<u64> {
        self.lock().series.values().copied().collect()
    }
}

/// Per resolution and sentry: a stored group mark.
type GroupMarksSaved = HashMap<Resolution, HashMap<u64, u64>>;

/// What a checkpoint took from the state, before it is cut into parts.
#[derive(Default)]
struct Snapshot {
    series: Vec<(String, u64)>,
    devices: Vec<DeviceStateRecord>,
    buckets: Vec<(Owner, RollupKey, Bucket)>,
    device_marks: Vec<(u64, Resolution, u64)>,
    group_marks: Vec<(Resolution, Vec<(u64, u64)>)>,
}

impl Snapshot {
    /// Cuts the snapshot into the store's parts. A sentry's device buckets
    /// of one resolution travel with its device mark of that resolution,
    /// in one part; parts are filled up to about [`PART_RECORDS`]. When a
    /// device series was fed by more than one sentry, all device buckets
    /// and marks go in one part: which sentry's mark covers which sample
    /// is then not known per bucket.
    fn into_parts(self, part_records: usize) -> Checkpoint {
        let mut groups = crate::store::GroupPart {
            buckets: Vec::new(),
            marks: self.group_marks,
        };
        // Per (sentry, resolution): its device buckets and its mark.
        let mut units: BTreeMap<(u64, Resolution), DevicePart> = BTreeMap::new();
        let mut shared = false;
        for (owner, key, bucket) in self.buckets {
            match owner {
                Owner::Group => groups.buckets.push((key, bucket)),
                Owner::Sentry(sentry) => units
                    .entry((sentry, key.resolution))
                    .or_default()
                    .buckets
                    .push((key, bucket)),
                Owner::Shared => {
                    shared = true;
                    units
                        .entry((u64::MAX, key.resolution))
                        .or_default()
                        .buckets
                        .push((key, bucket));
                }
            }
        }
        for (sentry, r, seq) in self.device_marks {
            units
                .entry((sentry, r))
                .or_default()
                .marks
                .push((sentry, r, seq));
        }
        let mut parts: Vec<DevicePart> = Vec::new();
        let mut current = DevicePart::default();
        for unit in units.into_values() {
            if !shared && !current.is_empty() && current.len() + unit.len() > part_records {
                parts.push(std::mem::take(&mut current));
            }
            if current.is_empty() {
                current = unit;
            } else {
                current.buckets.extend(unit.buckets);
                current.marks.extend(unit.marks);
            }
        }
        if !current.is_empty() {
            parts.push(current);
        }
        Checkpoint {
            series: self.series,
            devices: self.devices,
            groups,
            parts,
        }
    }
}

/// Escapes a Prometheus label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeviceRecord, HeartbeatWrite, ProgressRecord, SledStore};

    fn hb(seq: u64, ts_ms: u64, value: f64) -> HeartbeatRecord {
        HeartbeatRecord {
            seq,
            ts_ms,
            received_ms: ts_ms,
            devices: vec![DeviceRecord {
                id: "m1".into(),
                kind: "miner".into(),
                make: "Antminer".into(),
                model: "S21".into(),
                firmware: String::new(),
                metrics: [("hashrate_hs".to_string(), value)].into(),
                labels: Default::default(),
                alerts: vec![],
                raw: String::new(),
            }],
        }
    }

    fn config() -> FleetConfig {
        FleetConfig::new(
            vec![0, 3 * 3_600_000],
            vec!["hashrate_hs".into()],
            StatusRules::default(),
        )
    }

    fn counts(fleet: &Fleet, store: &dyn Store, name: &str) -> Vec<u64> {
        fleet
            .config()
            .resolutions
            .iter()
            .map(|r| {
                fleet
                    .read_series(store, name, *r, 0, 10 * rollup::DAY_MS)
                    .unwrap()
                    .iter()
                    .map(|(_, b)| b.count)
                    .sum()
            })
            .collect()
    }

    /// Stores heartbeats `range` as the ingest writer does, then applies them.
    fn ingest(store: &dyn Store, fleet: &Fleet, range: std::ops::RangeInclusive<u64>) {
        for seq in range {
            let record = hb(seq, seq * 20_000, seq as f64);
            store
                .append_heartbeats(&[HeartbeatWrite {
                    sentry_id: 7,
                    record: record.clone(),
                }])
                .unwrap();
            fleet.apply(store, 7, &record).unwrap();
        }
    }

    /// One heartbeat of a sentry: `value + i` for its i-th device.
    fn hb_of(seq: u64, devices: &[&str], value: f64) -> HeartbeatRecord {
        let mut record = hb(seq, seq * 20_000, value);
        let template = record.devices.remove(0);
        record.devices = devices
            .iter()
            .enumerate()
            .map(|(i, id)| DeviceRecord {
                id: id.to_string(),
                metrics: [("hashrate_hs".to_string(), value + i as f64)].into(),
                ..template.clone()
            })
            .collect();
        record
    }

    /// Sentry 7 reports a1..a3 and sentry 8 b1, b2, interleaved, for
    /// `seqs`; `moved` is reported by 7 up to seq 25 and by 8 after.
    fn two_sentries(
        store: &dyn Store,
        fleet: &Fleet,
        seqs: std::ops::RangeInclusive<u64>,
        moved: bool,
    ) {
        for seq in seqs {
            for (sentry, mut devices) in [(7u64, vec!["a1", "a2", "a3"]), (8, vec!["b1", "b2"])] {
                if moved && (sentry == 7) == (seq <= 25) {
                    devices.push("m");
                }
                let record = hb_of(seq, &devices, (seq % 7) as f64);
                store
                    .append_heartbeats(&[HeartbeatWrite {
                        sentry_id: sentry,
                        record: record.clone(),
                    }])
                    .unwrap();
                fleet.apply(store, sentry, &record).unwrap();
            }
        }
    }

    /// Per series and resolution: bucket start, then count, sum, min,
    /// max, devices and the sum of averages (rounded).
    type Rollups = Vec<(String, Vec<(u64, [f64; 6])>)>;

    /// Every bucket of every series, all resolutions, without `last`
    /// (group samples arrive in another order on replay).
    fn all_buckets(fleet: &Fleet, store: &dyn Store) -> Rollups {
        let mut names = vec![group_series("miner", "*", "hashrate_hs")];
        for d in ["a1", "a2", "a3", "b1", "b2", "m"] {
            names.push(device_series(d, "hashrate_hs"));
            names.push(device_series(d, "online"));
        }
        let mut out = Vec::new();
        for name in names {
            for r in &fleet.config().resolutions {
                let buckets = fleet
                    .read_series(store, &name, *r, 0, 10 * rollup::DAY_MS)
                    .unwrap()
                    .into_iter()
                    .map(|(t, b)| {
                        (
                            t,
                            [
                                b.count as f64,
                                b.sum,
                                b.min,
                                b.max,
                                b.devices as f64,
                                // Sums of averages differ in the last bits by order.
                                (b.sum_of_avgs * 1e6).round(),
                            ],
                        )
                    })
                    .collect();
                out.push((format!("{name} {}", r.name()), buckets));
            }
        }
        out
    }

    /// Runs the two-sentry scenario with a checkpoint that a crash stops
    /// after `step` of its writes (series, devices, the group part, then
    /// each device part), restarts, and returns the rollups and how many
    /// steps that checkpoint had.
    fn crash_after(step: usize, moved: bool) -> (Rollups, usize) {
        let dir = tempfile::tempdir().unwrap();
        let steps;
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut fleet = Fleet::load(&store, config()).unwrap();
            fleet.part_records = 4;
            two_sentries(&store, &fleet, 1..=20, moved);
            fleet.checkpoint(&store, 0, &[Resolution::M1]).unwrap();
            two_sentries(&store, &fleet, 21..=40, moved);
            let all = fleet.config().resolutions.clone();
            let mut n = 0;
            let crashed = fleet.checkpoint_via(0, &all, |cp| {
                n = 3 + cp.parts.len();
                let mut prefix = cp.clone();
                if step < 1 {
                    prefix.devices.clear();
                }
                if step < 2 {
                    prefix.groups = Default::default();
                }
                prefix.parts.truncate(step.saturating_sub(2));
                store.checkpoint(&prefix)?;
                Err(StoreError::Transaction("crashed here".into()))
            });
            assert!(crashed.is_err());
            steps = n;
        }
        let store = SledStore::open(dir.path()).unwrap();
        let fleet = Fleet::load(&store, config()).unwrap();
        let doc = fleet.device("b2", 40 * 20_000).unwrap();
        assert_eq!(doc["hashrate_hs"], (40 % 7 + 1) as f64, "step {step}");
        (all_buckets(&fleet, &store), steps)
    }

    fn uncrashed(moved: bool) -> Rollups {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let fleet = Fleet::load(&store, config()).unwrap();
        two_sentries(&store, &fleet, 1..=40, moved);
        all_buckets(&fleet, &store)
    }

    #[test]
    fn a_crash_between_any_two_checkpoint_parts_loses_and_doubles_nothing() {
        let expected = uncrashed(false);
        assert!(expected.iter().any(|(_, b)| !b.is_empty()));
        let (_, steps) = crash_after(0, false);
        assert!(
            steps > 5,
            "the checkpoint was cut into {steps} steps; the test needs several device parts"
        );
        for step in 0..=steps {
            let (got, _) = crash_after(step, false);
            assert!(got == expected, "a crash after step {step} of {steps}");
        }
    }

    #[test]
    fn a_device_fed_by_two_sentries_keeps_its_buckets_exact_across_a_crash() {
        let expected = uncrashed(true);
        let (_, steps) = crash_after(0, true);
        // One device part holds every device bucket and mark.
        assert_eq!(steps, 4, "the shared device series did not force one part");
        for step in 0..=steps {
            let (got, _) = crash_after(step, true);
            assert!(got == expected, "a crash after step {step} of {steps}");
        }
    }

    #[test]
    fn replay_after_partial_checkpoints_counts_every_sample_once() {
        let dir = tempfile::tempdir().unwrap();
        let device = device_series("m1", "hashrate_hs");
        let group = group_series("miner", "*", "hashrate_hs");
        {
            let store = SledStore::open(dir.path()).unwrap();
            let fleet = Fleet::load(&store, config()).unwrap();
            ingest(&store, &fleet, 1..=100);
            // Only the 1m resolution is saved, then more arrive: a crash now
            // leaves every resolution at a different mark.
            fleet.checkpoint(&store, 0, &[Resolution::M1]).unwrap();
            ingest(&store, &fleet, 101..=150);
            fleet.checkpoint(&store, 0, &[Resolution::M5]).unwrap();
            ingest(&store, &fleet, 151..=160);
            assert_eq!(counts(&fleet, &store, &device), vec![160; 5]);
            assert_eq!(
                store.progress(7).unwrap(),
                ProgressRecord {
                    last_seq: 160,
                    heartbeats: 160,
                    last_seen_ms: 160 * 20_000
                }
            );
        }
        let store = SledStore::open(dir.path()).unwrap();
        let fleet = Fleet::load(&store, config()).unwrap();
        assert_eq!(
            counts(&fleet, &store, &device),
            vec![160; 5],
            "device series after replay"
        );
        assert_eq!(
            counts(&fleet, &store, &group),
            vec![160; 5],
            "group series after replay"
        );
        // And a clean reload (everything checkpointed at load) stays exact.
        drop(fleet);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        let fleet = Fleet::load(&store, config()).unwrap();
        assert_eq!(counts(&fleet, &store, &device), vec![160; 5]);
        let doc = fleet.device("m1", 160 * 20_000).unwrap();
        assert_eq!(doc["hashrate_hs"], 160.0);
    }
}
