//! `/api/v1/aggregates/{tail,multi,daily}`: group rollups per device type
//! (and tag), read from the buckets kept at ingest, never from devices.
//!
//! A field is `metric:op`. On a group, `sum` is the fleet total (Σ device
//! averages in the bucket, e.g. site hashrate), `avg` the mean device,
//! `min`/`max` the extremes of all samples, `last` the latest sample and
//! `count` the samples (devices × samples). `efficiency_j_per_th:fleet` is
//! `power_w:sum / hashrate_hs:sum` in J/TH.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use hashfleet_shared::now_ms;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Principal;
use super::error::ApiError;
use crate::app::App;
use crate::fleet::group_series;
use crate::fleet::rollup::{combine_group, Bucket, Op, Resolution, DAY_MS};
use crate::permissions::Level;

const MAX_ROWS: usize = 10_000;
const MAX_FIELDS: usize = 32;
const MAX_DAYS: i64 = 1_000;
const MAX_MULTI: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldOp {
    Op(Op),
    /// Fleet efficiency from the power and hashrate sums.
    Fleet,
}

struct Field {
    name: String,
    metric: String,
    op: FieldOp,
}

fn parse_fields(fields: &[String]) -> Result<Vec<Field>, ApiError> {
    if fields.is_empty() || fields.len() > MAX_FIELDS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_KEYS_INVALID",
            format!("fields must list 1 to {MAX_FIELDS} entries like \"hashrate_hs:sum\""),
        ));
    }
    fields
        .iter()
        .map(|f| {
            let (metric, op) = f.rsplit_once(':').ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ERR_KEYS_INVALID",
                    format!("field `{f}` is not metric:op"),
                )
            })?;
            let op = match (metric, op) {
                ("efficiency_j_per_th", "fleet") => FieldOp::Fleet,
                (_, op) => FieldOp::Op(Op::parse(op).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "ERR_TYPE_AGGR_INVALID",
                        format!("`{op}` in `{f}` is not one of sum, avg, min, max, last, count"),
                    )
                })?),
            };
            Ok(Field {
                name: f.clone(),
                metric: metric.to_string(),
                op,
            })
        })
        .collect()
}

fn check_type(kind: &str) -> Result<(), ApiError> {
    if kind.is_empty() || kind.len() > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_TYPE_INVALID",
            "type is required: miner, gpu, host, container, powermeter, relay or runtime",
        ));
    }
    Ok(())
}

/// Reads the buckets each field needs, by bucket start.
fn read_fields(
    app: &App,
    kind: &str,
    tag: &str,
    fields: &[Field],
    r: Resolution,
    start: u64,
    end: u64,
) -> Result<Vec<BTreeMap<u64, Bucket>>, ApiError> {
    let mut cache: BTreeMap<String, BTreeMap<u64, Bucket>> = BTreeMap::new();
    let mut read = |metric: &str| -> Result<BTreeMap<u64, Bucket>, ApiError> {
        if let Some(b) = cache.get(metric) {
            return Ok(b.clone());
        }
        let b: BTreeMap<u64, Bucket> = app
            .fleet
            .read_series(
                app.store.as_ref(),
                &group_series(kind, tag, metric),
                r,
                start,
                end,
            )?
            .into_iter()
            .collect();
        cache.insert(metric.to_string(), b.clone());
        Ok(b)
    };
    fields
        .iter()
        .map(|f| match f.op {
            FieldOp::Op(_) => read(&f.metric),
            FieldOp::Fleet => {
                // Carry power in `sum_of_avgs` and hashrate in `sum`.
                let power = read("power_w")?;
                let hashrate = read("hashrate_hs")?;
                Ok(power
                    .into_iter()
                    .filter_map(|(ts, p)| {
                        hashrate.get(&ts).map(|h| {
                            (
                                ts,
                                Bucket {
                                    count: p.count.max(h.count),
                                    sum: h.sum_of_avgs,
                                    sum_of_avgs: p.sum_of_avgs,
                                    ..Bucket::default()
                                },
                            )
                        })
                    })
                    .collect())
            }
        })
        .collect()
}

fn field_value(f: &Field, b: &Bucket) -> Option<f64> {
    match f.op {
        FieldOp::Op(op) => b.value(op, true),
        FieldOp::Fleet => (b.sum > 0.0).then(|| b.sum_of_avgs / (b.sum / 1e12)),
    }
}

fn to_json(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map(|x| json!(x))
        .unwrap_or(Value::Null)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailRequest {
    #[serde(rename = "type")]
    kind: String,
    tag: Option<String>,
    resolution: Option<String>,
    fields: Vec<String>,
    start: Option<u64>,
    end: Option<u64>,
    limit: Option<usize>,
    timezone_offset_ms: Option<i64>,
}

fn tail_rows(app: &App, req: &TailRequest) -> Result<Vec<Value>, ApiError> {
    check_type(&req.kind)?;
    let fields = parse_fields(&req.fields)?;
    let text = req.resolution.as_deref().unwrap_or("5m");
    let r = Resolution::parse(text, req.timezone_offset_ms.unwrap_or(0)).ok_or_else(|| {
        ApiError::params(format!("resolution `{text}` is not one of 1m, 5m, 1h, 1d"))
    })?;
    let limit = req.limit.unwrap_or(288);
    if limit == 0 || limit > MAX_ROWS {
        return Err(ApiError::params(format!(
            "limit must be between 1 and {MAX_ROWS}"
        )));
    }
    let end = req.end.unwrap_or_else(now_ms);
    let start = req
        .start
        .unwrap_or_else(|| end.saturating_sub(r.width_ms() * limit as u64));
    if start > end {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_START_DATE_INVALID",
            "start must not be after end",
        ));
    }
    let tag = req.tag.as_deref().unwrap_or("*");
    let series = read_fields(app, &req.kind, tag, &fields, r, start, end)?;
    let mut starts: Vec<u64> = series.iter().flat_map(|s| s.keys().copied()).collect();
    starts.sort_unstable();
    starts.dedup();
    let skip = starts.len().saturating_sub(limit);
    Ok(starts
        .into_iter()
        .skip(skip)
        .map(|ts| {
            let mut row = Map::new();
            row.insert("ts".into(), json!(ts));
            row.insert(
                "range".into(),
                json!(format!("{ts}-{}", ts + r.width_ms() - 1)),
            );
            let count = series
                .iter()
                .filter_map(|s| s.get(&ts))
                .map(|b| b.count)
                .max()
                .unwrap_or(0);
            row.insert("count".into(), json!(count));
            for (f, s) in fields.iter().zip(&series) {
                row.insert(
                    f.name.clone(),
                    to_json(s.get(&ts).and_then(|b| field_value(f, b))),
                );
            }
            Value::Object(row)
        })
        .collect())
}

pub async fn tail(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<TailRequest>, JsonRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Json(req) = body?;
    principal.require(&req.kind, Level::Read)?;
    tokio::task::spawn_blocking(move || tail_rows(&app, &req).map(Json)).await?
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiRequest {
    queries: Vec<TailRequest>,
}

pub async fn multi(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<MultiRequest>, JsonRejection>,
) -> Result<Json<Vec<Vec<Value>>>, ApiError> {
    let Json(req) = body?;
    for q in &req.queries {
        principal.require(&q.kind, Level::Read)?;
    }
    if req.queries.is_empty() || req.queries.len() > MAX_MULTI {
        return Err(ApiError::params(format!(
            "queries must hold 1 to {MAX_MULTI} tail queries"
        )));
    }
    tokio::task::spawn_blocking(move || {
        req.queries
            .iter()
            .map(|q| tail_rows(&app, q))
            .collect::<Result<Vec<_>, _>>()
            .map(Json)
    })
    .await?
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyRequest {
    #[serde(rename = "type")]
    kind: String,
    tag: Option<String>,
    start_date: String,
    end_date: String,
    #[serde(default)]
    timezone_offset_ms: i64,
    fields: Vec<String>,
    #[serde(default = "yes")]
    daily: bool,
}

fn yes() -> bool {
    true
}

/// Days since 1970-01-01 of a proleptic Gregorian `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `YYYY-MM-DD` of days since the epoch.
pub fn format_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

fn daily_result(app: &App, req: &DailyRequest) -> Result<Value, ApiError> {
    check_type(&req.kind)?;
    let fields = parse_fields(&req.fields)?;
    if !app
        .fleet
        .config()
        .timezone_offsets
        .contains(&req.timezone_offset_ms)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_TIMEZONE_OFFSET_INVALID",
            format!(
                "timezone_offset_ms {} is not configured; configured offsets: {:?} (add it to `timezones` in the commander config)",
                req.timezone_offset_ms,
                app.fleet.config().timezone_offsets
            ),
        ));
    }
    let bad_date = |code: &'static str, what: &str, text: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("{what} `{text}` is not a date like 2026-01-31"),
        )
    };
    let first = parse_date(&req.start_date)
        .ok_or_else(|| bad_date("ERR_START_DATE_INVALID", "start_date", &req.start_date))?;
    let last = parse_date(&req.end_date)
        .ok_or_else(|| bad_date("ERR_END_DATE_INVALID", "end_date", &req.end_date))?;
    if last < first || last - first >= MAX_DAYS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_END_DATE_INVALID",
            format!("end_date must be on or after start_date and within {MAX_DAYS} days of it"),
        ));
    }
    let offset = req.timezone_offset_ms;
    let midnight = |day: i64| (day * DAY_MS as i64 - offset).max(0) as u64;
    let r = Resolution::D1 { offset_ms: offset };
    let tag = req.tag.as_deref().unwrap_or("*");
    let series = read_fields(
        app,
        &req.kind,
        tag,
        &fields,
        r,
        midnight(first),
        midnight(last),
    )?;
    if req.daily {
        let mut rows = Vec::new();
        for day in first..=last {
            let ts = midnight(day);
            let buckets: Vec<Option<&Bucket>> = series.iter().map(|s| s.get(&ts)).collect();
            if buckets.iter().all(Option::is_none) {
                continue;
            }
            let mut row = Map::new();
            row.insert("ts".into(), json!(ts));
            row.insert("date".into(), json!(format_date(day)));
            row.insert(
                "count".into(),
                json!(buckets.iter().flatten().map(|b| b.count).max().unwrap_or(0)),
            );
            for (f, b) in fields.iter().zip(&buckets) {
                row.insert(f.name.clone(), to_json(b.and_then(|b| field_value(f, b))));
            }
            rows.push(Value::Object(row));
        }
        Ok(Value::Array(rows))
    } else {
        let mut row = Map::new();
        row.insert("start_date".into(), json!(format_date(first)));
        row.insert("end_date".into(), json!(format_date(last)));
        let mut count = 0;
        for (f, s) in fields.iter().zip(&series) {
            let combined = combine_group(&s.values().copied().collect::<Vec<_>>());
            count = count.max(combined.count);
            let value = match f.op {
                FieldOp::Fleet => {
                    let p: f64 =
                        s.values().map(|b| b.sum_of_avgs).sum::<f64>() / s.len().max(1) as f64;
                    let h: f64 = s.values().map(|b| b.sum).sum::<f64>() / s.len().max(1) as f64;
                    (h > 0.0).then(|| p / (h / 1e12))
                }
                FieldOp::Op(op) => combined.value(op, true),
            };
            row.insert(f.name.clone(), to_json(value));
        }
        row.insert("count".into(), json!(count));
        Ok(Value::Object(row))
    }
}

pub async fn daily(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<DailyRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body?;
    principal.require(&req.kind, Level::Read)?;
    tokio::task::spawn_blocking(move || daily_result(&app, &req).map(Json)).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_reject_nonsense() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2026-01-01"), Some(20_454));
        assert_eq!(
            parse_date("2024-02-29").map(format_date).as_deref(),
            Some("2024-02-29")
        );
        for d in [-1000, 0, 20_454, 47_000] {
            assert_eq!(parse_date(&format_date(d)), Some(d));
        }
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "26-01-01",
            "2026-1-01",
            "x",
            "2026-01-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
