//! Rollup arithmetic, with no storage: resolutions, bucket alignment (with
//! timezone offsets for days) and the aggregates kept per bucket.
//!
//! A device series keeps `count, sum, min, max, last` per bucket. A group
//! series (devices of a type, or of a type and tag) keeps the same over all
//! its devices' samples, plus `devices` (how many devices reported in the
//! bucket) and `sum_of_avgs` (Σ over devices of each device's average in
//! the bucket): the fleet total, e.g. site hashrate, which a plain sum of
//! samples would overstate by the number of samples per device.

use bincode::{Decode, Encode};

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// A bucket width. Days carry the timezone offset their midnight is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    M1,
    M5,
    H1,
    /// A local day at this offset from UTC, in milliseconds.
    D1 {
        offset_ms: i64,
    },
}

impl Resolution {
    /// Parses `1m`, `5m`, `1h`, `1d` (a day in UTC unless `offset_ms`).
    pub fn parse(text: &str, offset_ms: i64) -> Option<Self> {
        match text {
            "1m" => Some(Resolution::M1),
            "5m" => Some(Resolution::M5),
            "1h" => Some(Resolution::H1),
            "1d" => Some(Resolution::D1 { offset_ms }),
            _ => None,
        }
    }

    pub fn width_ms(&self) -> u64 {
        match self {
            Resolution::M1 => MINUTE_MS,
            Resolution::M5 => 5 * MINUTE_MS,
            Resolution::H1 => HOUR_MS,
            Resolution::D1 { .. } => DAY_MS,
        }
    }

    /// Start of the bucket holding `ts_ms`.
    pub fn bucket_start(&self, ts_ms: u64) -> u64 {
        let w = self.width_ms() as i128;
        let offset = match self {
            Resolution::D1 { offset_ms } => *offset_ms as i128,
            _ => 0,
        };
        // Local time = UTC + offset; align in local time, shift back.
        let local = ts_ms as i128 + offset;
        let start = local.div_euclid(w) * w - offset;
        start.max(0) as u64
    }

    /// A stable one-byte code plus the offset in minutes, for store keys.
    pub fn key_parts(&self) -> (u8, i32) {
        match self {
            Resolution::M1 => (1, 0),
            Resolution::M5 => (2, 0),
            Resolution::H1 => (3, 0),
            Resolution::D1 { offset_ms } => (4, (*offset_ms / MINUTE_MS as i64) as i32),
        }
    }

    pub fn from_key_parts(code: u8, offset_min: i32) -> Option<Self> {
        match code {
            1 => Some(Resolution::M1),
            2 => Some(Resolution::M5),
            3 => Some(Resolution::H1),
            4 => Some(Resolution::D1 {
                offset_ms: offset_min as i64 * MINUTE_MS as i64,
            }),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Resolution::M1 => "1m",
            Resolution::M5 => "5m",
            Resolution::H1 => "1h",
            Resolution::D1 { .. } => "1d",
        }
    }
}

/// What one bucket of one series holds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Encode, Decode)]
pub struct Bucket {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    /// Sentry timestamp of `last`.
    pub last_ts: u64,
    /// Group series only: devices that reported in this bucket.
    pub devices: u64,
    /// Group series only: Σ over those devices of their bucket average.
    pub sum_of_avgs: f64,
}

impl Bucket {
    pub fn avg(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Adds one sample.
    pub fn add(&mut self, ts_ms: u64, value: f64) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        self.sum += value;
        if ts_ms >= self.last_ts {
            self.last = value;
            self.last_ts = ts_ms;
        }
    }

    /// Adds a device sample to a group bucket, given that device's bucket
    /// average before the sample (`None`: its first sample here) and after.
    pub fn add_to_group(
        &mut self,
        ts_ms: u64,
        value: f64,
        device_before: Option<f64>,
        device_after: f64,
    ) {
        self.add(ts_ms, value);
        match device_before {
            None => {
                self.devices += 1;
                self.sum_of_avgs += device_after;
            }
            Some(before) => self.sum_of_avgs += device_after - before,
        }
    }

    /// The value of one aggregate operation, as the API names them. On a
    /// group: `sum` is the fleet total (Σ device averages), `avg` the mean
    /// device; on a device series `sum` is the plain sum of samples.
    pub fn value(&self, op: Op, group: bool) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        Some(match op {
            Op::Sum if group => self.sum_of_avgs,
            Op::Sum => self.sum,
            Op::Avg if group => self.sum_of_avgs / self.devices.max(1) as f64,
            Op::Avg => self.sum / self.count as f64,
            Op::Min => self.min,
            Op::Max => self.max,
            Op::Last => self.last,
            Op::Count => self.count as f64,
        })
    }
}

/// An aggregate operation in a field spec such as `hashrate_hs:sum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Sum,
    Avg,
    Min,
    Max,
    Last,
    Count,
}

impl Op {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sum" => Some(Op::Sum),
            "avg" => Some(Op::Avg),
            "min" => Some(Op::Min),
            "max" => Some(Op::Max),
            "last" => Some(Op::Last),
            "count" => Some(Op::Count),
            _ => None,
        }
    }
}

/// Combines several buckets of a group (days into a range): counts, sums,
/// extremes and last add up; `sum_of_avgs` and `devices` become the mean
/// over the buckets, so `sum` is the average fleet total over the range.
pub fn combine_group(buckets: &[Bucket]) -> Bucket {
    let mut out = Bucket::default();
    let mut n = 0u64;
    let mut devices = 0u64;
    for b in buckets.iter().filter(|b| b.count > 0) {
        if out.count == 0 {
            out.min = b.min;
            out.max = b.max;
        } else {
            out.min = out.min.min(b.min);
            out.max = out.max.max(b.max);
        }
        out.count += b.count;
        out.sum += b.sum;
        if b.last_ts >= out.last_ts {
            out.last = b.last;
            out.last_ts = b.last_ts;
        }
        out.sum_of_avgs += b.sum_of_avgs;
        devices += b.devices;
        n += 1;
    }
    if n > 0 {
        out.sum_of_avgs /= n as f64;
        out.devices = devices.div_ceil(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_in_utc_and_in_local_days() {
        let t = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(Resolution::M1.bucket_start(t + 59_999), t);
        assert_eq!(Resolution::M5.bucket_start(t + 5 * MINUTE_MS - 1), t);
        assert_eq!(
            Resolution::M5.bucket_start(t + 5 * MINUTE_MS),
            t + 5 * MINUTE_MS
        );
        assert_eq!(Resolution::H1.bucket_start(t + HOUR_MS + 1), t + HOUR_MS);
        assert_eq!(
            Resolution::D1 { offset_ms: 0 }.bucket_start(t + DAY_MS - 1),
            t
        );
        // At UTC+3, local midnight of Jan 1 is 21:00 UTC on Dec 31.
        let plus3 = Resolution::D1 {
            offset_ms: 3 * HOUR_MS as i64,
        };
        assert_eq!(plus3.bucket_start(t), t - 3 * HOUR_MS);
        assert_eq!(plus3.bucket_start(t + 21 * HOUR_MS - 1), t - 3 * HOUR_MS);
        assert_eq!(plus3.bucket_start(t + 21 * HOUR_MS), t + 21 * HOUR_MS);
        // At UTC-5, local midnight of Jan 1 is 05:00 UTC on Jan 1.
        let minus5 = Resolution::D1 {
            offset_ms: -5 * HOUR_MS as i64,
        };
        assert_eq!(
            minus5.bucket_start(t + 4 * HOUR_MS),
            t + 5 * HOUR_MS - DAY_MS
        );
        assert_eq!(minus5.bucket_start(t + 5 * HOUR_MS), t + 5 * HOUR_MS);
        for r in [Resolution::M1, Resolution::H1, plus3, minus5] {
            let (code, off) = r.key_parts();
            assert_eq!(Resolution::from_key_parts(code, off), Some(r));
        }
    }

    #[test]
    fn group_sum_is_the_fleet_total_not_the_sum_of_samples() {
        // Two devices, three samples each in one bucket.
        let mut group = Bucket::default();
        let mut dev = [Bucket::default(), Bucket::default()];
        let samples = [
            (0usize, 100.0),
            (1, 10.0),
            (0, 110.0),
            (1, 20.0),
            (0, 120.0),
            (1, 30.0),
        ];
        for (i, (d, v)) in samples.iter().enumerate() {
            let before = dev[*d].avg();
            dev[*d].add(i as u64, *v);
            group.add_to_group(i as u64, *v, before, dev[*d].avg().unwrap());
        }
        assert_eq!(group.value(Op::Sum, true), Some(110.0 + 20.0));
        assert_eq!(group.value(Op::Avg, true), Some(65.0));
        assert_eq!(group.value(Op::Max, true), Some(120.0));
        assert_eq!(group.value(Op::Min, true), Some(10.0));
        assert_eq!(group.value(Op::Count, true), Some(6.0));
        assert_eq!(group.value(Op::Last, true), Some(30.0));
        assert_eq!(dev[0].value(Op::Sum, false), Some(330.0));
        assert_eq!(Bucket::default().value(Op::Sum, true), None);
    }

    #[test]
    fn combining_days_averages_the_fleet_totals() {
        let a = Bucket {
            count: 2,
            sum: 4.0,
            min: 1.0,
            max: 3.0,
            last: 3.0,
            last_ts: 1,
            devices: 2,
            sum_of_avgs: 4.0,
        };
        let b = Bucket {
            count: 2,
            sum: 8.0,
            min: 2.0,
            max: 6.0,
            last: 6.0,
            last_ts: 2,
            devices: 2,
            sum_of_avgs: 8.0,
        };
        let c = combine_group(&[a, b, Bucket::default()]);
        assert_eq!(c.value(Op::Sum, true), Some(6.0));
        assert_eq!((c.count, c.min, c.max, c.last), (4, 1.0, 6.0, 6.0));
    }
}
