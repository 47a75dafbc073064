//! `/api/v1/devices…`: query, get, history, and their CSV forms.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hashfleet_shared::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Principal;
use super::csv;
use super::error::ApiError;
use crate::app::App;
use crate::fleet::rollup::{Resolution, HOUR_MS};
use crate::fleet::{device_series, FleetError};
use crate::permissions::Level;
use crate::query::{Projection, Query, QueryError, Sort};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// `POST /api/v1/devices/query`, also `q=` of `export.csv`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    #[serde(default)]
    pub query: Value,
    #[serde(default)]
    pub fields: Value,
    #[serde(default)]
    pub sort: Value,
    #[serde(default)]
    pub offset: usize,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct QueryResponse {
    pub total: usize,
    pub devices: Vec<Value>,
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Store(s) => s.into(),
            other => ApiError::params(other.to_string()),
        }
    }
}

/// The request's filter, narrowed to the device types in `readable`
/// (`None`: every type) by an `$and` with `{"type": {"$in": readable}}`.
/// The caller's own filter is parsed first, so its errors read as written.
pub fn visible_query(filter: &Value, readable: Option<&[&str]>) -> Result<Query, QueryError> {
    if !filter.is_null() {
        Query::parse(filter)?;
    }
    match readable {
        None if filter.is_null() => Ok(Query::default()),
        None => Query::parse(filter),
        Some(types) => {
            let only = json!({"type": {"$in": types}});
            if filter.is_null() {
                Query::parse(&only)
            } else {
                Query::parse(&json!({"$and": [filter, only]}))
            }
        }
    }
}

fn run_query(
    app: &App,
    req: &QueryRequest,
    max: usize,
    readable: Option<&[&str]>,
) -> Result<QueryResponse, ApiError> {
    let query = visible_query(&req.query, readable)?;
    let sort = Sort::parse(&req.sort)?;
    let projection = Projection::parse(&req.fields)?;
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > max {
        return Err(ApiError::params(format!("limit must be at most {max}")));
    }
    let (total, devices) = app
        .fleet
        .query(&query, &sort, &projection, req.offset, limit, now_ms());
    Ok(QueryResponse { total, devices })
}

pub async fn query(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Json<QueryResponse>, ApiError> {
    let Json(req) = body?;
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || {
        let readable = principal.readable_device_types();
        run_query(&app2, &req, MAX_LIMIT, readable.as_deref()).map(Json)
    })
    .await?
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvQuery {
    q: Option<String>,
}

pub async fn export_csv(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    params: Result<QueryParams<CsvQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let QueryParams(params) = params?;
    let mut req: QueryRequest = match params.q.as_deref() {
        None | Some("") => QueryRequest::default(),
        Some(q) => serde_json::from_str(q).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "ERR_QUERY_INVALID",
                format!("q is not a query document: {e}"),
            )
        })?,
    };
    req.limit = Some(req.limit.unwrap_or(100_000));
    let app2 = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        let readable = principal.readable_device_types();
        run_query(&app2, &req, 100_000, readable.as_deref())
    })
    .await??;
    Ok(csv_response(csv::devices(&result.devices), "devices.csv"))
}

fn csv_response(body: String, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// A device's document, if it exists and `principal` may read its type:
/// 404 `ERR_THING_NOTFOUND`, or 403 naming the `type:r` it needs.
fn visible_device(app: &App, principal: &Principal, id: &str) -> Result<Value, ApiError> {
    let doc = app
        .fleet
        .device(id, now_ms())
        .ok_or_else(|| not_found(id))?;
    let kind = doc.get("type").and_then(Value::as_str).unwrap_or_default();
    principal.require(kind, Level::Read)?;
    Ok(doc)
}

pub async fn get_one(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible_device(&app, &principal, &id).map(Json)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ERR_THING_NOTFOUND",
        format!(
            "no device `{}` on this commander",
            id.chars().take(128).collect::<String>()
        ),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    metric: Option<String>,
    resolution: Option<String>,
    start: Option<u64>,
    end: Option<u64>,
    timezone_offset_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct HistoryRow {
    pub ts: u64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    pub last: f64,
}

fn history_rows(
    app: &App,
    principal: &Principal,
    id: &str,
    q: &HistoryQuery,
) -> Result<Vec<HistoryRow>, ApiError> {
    let metric = q
        .metric
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::params("metric is required, e.g. ?metric=hashrate_hs"))?;
    let resolution_text = q.resolution.as_deref().unwrap_or("1m");
    let resolution = Resolution::parse(resolution_text, q.timezone_offset_ms.unwrap_or(0))
        .ok_or_else(|| {
            ApiError::params(format!(
                "resolution `{resolution_text}` is not one of 1m, 5m, 1h, 1d"
            ))
        })?;
    let end = q.end.unwrap_or_else(now_ms);
    let start = q.start.unwrap_or_else(|| end.saturating_sub(HOUR_MS));
    if start > end {
        return Err(ApiError::params("start must not be after end"));
    }
    visible_device(app, principal, id)?;
    let buckets = app.fleet.read_series(
        app.store.as_ref(),
        &device_series(id, metric),
        resolution,
        start,
        end,
    )?;
    Ok(buckets
        .into_iter()
        .map(|(ts, b)| HistoryRow {
            ts,
            avg: b.avg().unwrap_or(0.0),
            min: b.min,
            max: b.max,
            sum: b.sum,
            count: b.count,
            last: b.last,
        })
        .collect())
}

pub async fn history(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    params: Result<QueryParams<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<HistoryRow>>, ApiError> {
    let QueryParams(q) = params?;
    tokio::task::spawn_blocking(move || history_rows(&app, &principal, &id, &q).map(Json)).await?
}

pub async fn history_csv(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    params: Result<QueryParams<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let QueryParams(q) = params?;
    let rows =
        tokio::task::spawn_blocking(move || history_rows(&app, &principal, &id, &q)).await??;
    let mut out = String::from("ts,avg,min,max,sum,count,last\r\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\r\n",
            r.ts, r.avg, r.min, r.max, r.sum, r.count, r.last
        ));
    }
    Ok(csv_response(out, "history.csv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, kind: &str, temp: f64) -> Value {
        json!({"id": id, "type": kind, "temp_c": temp})
    }

    #[test]
    fn queries_are_narrowed_to_readable_types() {
        let docs = [
            doc("m1", "miner", 80.0),
            doc("m2", "miner", 60.0),
            doc("h1", "host", 90.0),
        ];
        let matching = |q: &Query| -> Vec<&str> {
            docs.iter()
                .filter(|d| q.matches(d))
                .map(|d| d["id"].as_str().unwrap())
                .collect()
        };
        let miners = Some(&["miner"][..]);
        let hot = json!({"temp_c": {"$gt": 70}});
        assert_eq!(
            matching(&visible_query(&Value::Null, None).unwrap()),
            ["m1", "m2", "h1"]
        );
        assert_eq!(
            matching(&visible_query(&Value::Null, miners).unwrap()),
            ["m1", "m2"]
        );
        assert_eq!(matching(&visible_query(&hot, None).unwrap()), ["m1", "h1"]);
        assert_eq!(matching(&visible_query(&hot, miners).unwrap()), ["m1"]);
        assert_eq!(
            matching(&visible_query(&json!({}), miners).unwrap()),
            ["m1", "m2"]
        );
        // An `$or` cannot reach past the narrowing.
        let either = json!({"$or": [{"type": "host"}, {"temp_c": {"$lt": 70}}]});
        assert_eq!(matching(&visible_query(&either, miners).unwrap()), ["m2"]);
        // The caller's errors are about the caller's filter.
        let err = visible_query(&json!({"$bogus": 1}), miners).unwrap_err();
        assert!(err.to_string().contains("$bogus"), "{err}");
        assert!(!err.to_string().contains("$and["), "{err}");
    }
}
