//! OpenAI-compatible AI runtimes (vLLM and the like) on an AI node: the
//! `[[runtime]]` config entry, and a client that polls one into a
//! `runtime` device snapshot: its health, the models it serves, and its
//! request load.
//!
//! Each poll asks `GET /health` first; when that gets no reply the runtime
//! is `offline` and nothing else is asked. Then, at the same time:
//! - `GET /v1/models` (`{"data":[{"id":…}]}`) for the models;
//! - the load: `GET <load_path>` when configured (a number, JSON with
//!   `num_requests_running`/`num_requests_waiting`, or Prometheus text),
//!   else vLLM's Prometheus `GET /metrics` (`vllm:num_requests_running`,
//!   `vllm:num_requests_waiting`, summed over models); a runtime without
//!   `/metrics` simply reports no load;
//! - `GET /version` (vLLM's `{"version":…}`) for `firmware`.
//!
//! Requests and reply bounds are those of [`crate::minersw`] (a timeout per
//! request, bodies read up to [`MAX_BODY`]). Replies are mapped by pure
//! functions ([`parse_models`], [`parse_load`], [`parse_prometheus_load`]).

use std::collections::BTreeMap;
use std::time::Duration;

use hashfleet_shared::wire::{DeviceAlert, DeviceSnapshot, Severity};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::minersw::{
    as_num, check_name, check_token, clip, fetch, http_client, parse_http_url, CallError, Endpoint,
    EntryError, Fetched, DEFAULT_TIMEOUT, MAX_BODY, MAX_RAW,
};

/// Most model ids taken from one `/v1/models` reply.
pub const MAX_MODELS: usize = 64;
/// Longest `models` label.
const MAX_MODELS_LABEL: usize = 1024;
/// Longest `load_path`.
const MAX_PATH: usize = 256;

/// One `[[runtime]]` in the sentry config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEntry {
    /// `http://HOST:PORT` of the OpenAI-compatible server.
    pub url: String,
    /// The device id is `runtime-<name>` when set, else
    /// `runtime-<host:port>`.
    pub name: Option<String>,
    /// The server's API key (vLLM `--api-key`), sent as a bearer token.
    pub token: Option<String>,
    /// A load endpoint (e.g. `/load`) to read instead of `/metrics`.
    pub load_path: Option<String>,
}

impl RuntimeEntry {
    /// Checks every field; the error says which and what to write instead.
    pub fn validate(&self) -> Result<(), EntryError> {
        self.endpoint().map(|_| ())
    }

    fn endpoint(&self) -> Result<Endpoint, EntryError> {
        let who = self.name.as_deref().unwrap_or(&self.url);
        let err = |p: String| EntryError::new("runtime", who, p);
        if let Some(name) = &self.name {
            check_name(name).map_err(err)?;
        }
        if let Some(token) = &self.token {
            check_token(token).map_err(err)?;
        }
        if let Some(path) = &self.load_path {
            check_path(path).map_err(err)?;
        }
        parse_http_url(&self.url).map_err(err)
    }
}

/// A load path: `/…`, up to 256 printable ASCII characters, no `#`.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() > MAX_PATH {
        return Err(format!(
            "`load_path` `{}` must start with `/` and be at most {MAX_PATH} characters (e.g. /load)",
            clip(path, 80)
        ));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(format!(
            "`load_path` `{}` may only hold printable ASCII characters, without spaces or `#`",
            clip(path, 80)
        ));
    }
    Ok(())
}

/// The models a runtime serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Models {
    /// At most [`MAX_MODELS`] ids, each at most 128 bytes.
    pub ids: Vec<String>,
    /// How many the reply listed.
    pub count: usize,
    /// The first non-empty `owned_by` (vLLM says `vllm`).
    pub owned_by: Option<String>,
}

/// Maps `GET /v1/models`: `{"data":[{"id":…, "owned_by":…}, …]}`.
pub fn parse_models(reply: &Value) -> Result<Models, String> {
    let data = reply
        .get("data")
        .and_then(Value::as_array)
        .ok_or("the /v1/models reply lacks a `data` list: is this an OpenAI-compatible server?")?;
    let ids = data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .take(MAX_MODELS)
        .map(|id| clip(id, 128))
        .collect();
    let owned_by = data
        .iter()
        .filter_map(|m| m.get("owned_by").and_then(Value::as_str))
        .find(|o| !o.trim().is_empty())
        .map(|o| clip(o.trim(), 32));
    Ok(Models {
        ids,
        count: data.len(),
        owned_by,
    })
}

/// Requests in progress and queued.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub running: Option<f64>,
    pub waiting: Option<f64>,
}

impl Load {
    fn is_empty(&self) -> bool {
        self.running.is_none() && self.waiting.is_none()
    }
}

/// Reads a load endpoint's reply: a bare number (requests running), JSON
/// (a number, or an object with `num_requests_running`/`requests_running`/
/// `running` and `num_requests_waiting`/`requests_waiting`/`waiting`), or
/// Prometheus text. `None` when none of these gives a number.
pub fn parse_load(body: &str) -> Option<Load> {
    let body = body.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let load = match serde_json::from_str::<Value>(body) {
        Ok(v @ (Value::Number(_) | Value::String(_))) => Load {
            running: as_num(&v),
            waiting: None,
        },
        Ok(v @ Value::Object(_)) => {
            let first = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(as_num));
            Load {
                running: first(&["num_requests_running", "requests_running", "running"]),
                waiting: first(&["num_requests_waiting", "requests_waiting", "waiting"]),
            }
        }
        _ => parse_prometheus_load(body),
    };
    (!load.is_empty()).then_some(load)
}

/// Sums `vllm:num_requests_running` and `vllm:num_requests_waiting` over
/// all their label sets in Prometheus text (the `vllm:` prefix may be
/// missing). Lines that do not parse are skipped.
pub fn parse_prometheus_load(text: &str) -> Load {
    let mut load = Load::default();
    for line in text.lines() {
        let Some((name, value)) = prometheus_sample(line) else {
            continue;
        };
        let slot = match name.strip_prefix("vllm:").unwrap_or(name) {
            "num_requests_running" => &mut load.running,
            "num_requests_waiting" => &mut load.waiting,
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    load
}

/// `name{labels} value [timestamp]` → (name, value); comments, blank lines
/// and non-finite values give `None`.
fn prometheus_sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        // Skip the label set; label values may hold `}` inside quotes.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    value.is_finite().then_some((name, value))
}

/// Polls one OpenAI-compatible runtime.
#[derive(Debug, Clone)]
pub struct RuntimeClient {
    entry: RuntimeEntry,
    endpoint: Endpoint,
    timeout: Duration,
    http: reqwest::Client,
}

impl RuntimeClient {
    /// Validates `entry` and builds the client (no I/O yet), with
    /// [`DEFAULT_TIMEOUT`] per request.
    pub fn new(entry: RuntimeEntry) -> Result<RuntimeClient, EntryError> {
        let endpoint = entry.endpoint()?;
        let http = http_client(DEFAULT_TIMEOUT).map_err(|p| {
            EntryError::new("runtime", entry.name.as_deref().unwrap_or(&entry.url), p)
        })?;
        Ok(RuntimeClient {
            entry,
            endpoint,
            timeout: DEFAULT_TIMEOUT,
            http,
        })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> RuntimeClient {
        if let Ok(http) = http_client(timeout) {
            self.http = http;
            self.timeout = timeout;
        }
        self
    }

    pub fn entry(&self) -> &RuntimeEntry {
        &self.entry
    }

    /// `runtime-<name>`, else `runtime-<host:port>`.
    pub fn id(&self) -> String {
        match &self.entry.name {
            Some(name) => format!("runtime-{name}"),
            None => format!("runtime-{}", self.endpoint.authority()),
        }
    }

    fn who(&self) -> String {
        format!("runtime at {}", self.endpoint.authority())
    }

    async fn get(&self, path: &str) -> Result<Fetched, CallError> {
        let url = format!("http://{}{path}", self.endpoint.authority());
        let mut req = self.http.get(url);
        if let Some(t) = &self.entry.token {
            req = req.bearer_auth(t);
        }
        fetch(req, &self.who(), self.timeout).await
    }

    /// Reads the runtime. Never fails: no reply to `/health` gives `state`
    /// = `offline`; a `/health` other than 200 gives `healthy` 0, `state` =
    /// `error` and a `runtime_unhealthy` alert; trouble with the models or
    /// the load endpoint gives an alert and leaves those metrics out.
    pub async fn poll(&self) -> DeviceSnapshot {
        let who = self.who();
        let mut labels = BTreeMap::new();
        labels.insert("address".to_string(), self.endpoint.authority());
        let mut alerts = Vec::new();
        let mut alert = |code: &str, severity: Severity, message: String| {
            alerts.push(DeviceAlert {
                code: code.into(),
                severity,
                message: clip(&message, 500),
            })
        };
        let health = match self.get("/health").await {
            Err(CallError::Unreachable(why)) => {
                labels.insert("state".into(), "offline".into());
                labels.insert("error".into(), clip(&why, 500));
                return DeviceSnapshot {
                    id: self.id(),
                    kind: "runtime".into(),
                    labels,
                    ..DeviceSnapshot::default()
                };
            }
            Err(e) => Err(e.message().to_string()),
            Ok(f) if f.status == 200 => Ok(f.status),
            Ok(f) => Err(format!(
                "{who}: GET /health answered HTTP {}: {}",
                f.status,
                clip(&f.text(), 200)
            )),
        };
        let (models, load, version) = tokio::join!(
            self.get("/v1/models"),
            self.get(self.entry.load_path.as_deref().unwrap_or("/metrics")),
            self.get("/version"),
        );

        let mut metrics = BTreeMap::new();
        let healthy = health.is_ok();
        metrics.insert("healthy".to_string(), if healthy { 1.0 } else { 0.0 });
        labels.insert(
            "state".into(),
            if healthy { "online" } else { "error" }.into(),
        );
        if let Err(why) = &health {
            labels.insert("error".into(), clip(why, 500));
            alert("runtime_unhealthy", Severity::High, why.clone());
        }

        let mut raw = json!({ "health": health.as_ref().map_or(Value::Null, |s| json!(s)) });
        let mut make = "OpenAI-compatible".to_string();
        let mut model = String::new();
        match models_from(&who, models) {
            Ok((m, body)) => {
                metrics.insert("models".into(), m.count as f64);
                labels.insert("models".into(), clip(&m.ids.join(","), MAX_MODELS_LABEL));
                model = m.ids.first().cloned().unwrap_or_default();
                if let Some(o) = m.owned_by {
                    make = if o.eq_ignore_ascii_case("vllm") {
                        "vLLM".into()
                    } else {
                        o
                    };
                }
                raw["models"] = Value::String(clip(&body, 2048));
            }
            Err((code, why)) => {
                let severity = if code == "runtime_auth_failed" {
                    Severity::High
                } else {
                    Severity::Medium
                };
                alert(code, severity, why);
            }
        }

        match (&self.entry.load_path, load) {
            (Some(path), Ok(f)) if (200..300).contains(&f.status) => match parse_load(&f.text()) {
                Some(l) => {
                    put_load(&mut metrics, l);
                    raw["load"] = Value::String(clip(&f.text(), 512));
                }
                None => alert(
                    "runtime_bad_reply",
                    Severity::Medium,
                    format!(
                        "{who}: GET {path} gave no load number (a number, or JSON with num_requests_running/num_requests_waiting): {}",
                        clip(&f.text(), 120)
                    ),
                ),
            },
            (Some(path), Ok(f)) => alert(
                "runtime_bad_reply",
                Severity::Medium,
                format!("{who}: GET {path} answered HTTP {}", f.status),
            ),
            (Some(_), Err(e)) => alert("runtime_bad_reply", Severity::Medium, e.message().into()),
            // /metrics is optional: a runtime without it reports no load.
            (None, Ok(f)) if f.status == 200 => {
                let l = parse_prometheus_load(&f.text());
                if !l.is_empty() {
                    put_load(&mut metrics, l);
                    raw["load"] = json!({ "running": l.running, "waiting": l.waiting });
                }
            }
            (None, _) => {}
        }

        let firmware = version
            .ok()
            .filter(|f| f.status == 200 && !f.truncated)
            .and_then(|f| serde_json::from_slice::<Value>(&f.body).ok())
            .and_then(|v| {
                v.get("version")
                    .and_then(Value::as_str)
                    .map(|s| clip(s, 64))
            })
            .unwrap_or_default();

        DeviceSnapshot {
            id: self.id(),
            kind: "runtime".into(),
            make,
            model,
            firmware,
            metrics,
            labels,
            alerts,
            raw: clip(&raw.to_string(), MAX_RAW),
        }
    }
}

fn put_load(metrics: &mut BTreeMap<String, f64>, l: Load) {
    if let Some(v) = l.running {
        metrics.insert("requests_running".into(), v);
    }
    if let Some(v) = l.waiting {
        metrics.insert("requests_waiting".into(), v);
    }
}

/// The models from a `/v1/models` exchange, or an alert code and message.
fn models_from(
    who: &str,
    reply: Result<Fetched, CallError>,
) -> Result<(Models, String), (&'static str, String)> {
    let f = reply.map_err(|e| ("runtime_bad_reply", e.message().to_string()))?;
    match f.status {
        200..=299 => {}
        401 | 403 => {
            return Err((
                "runtime_auth_failed",
                format!(
                    "{who}: GET /v1/models answered HTTP {}: set `token` to the runtime's API key (vLLM --api-key)",
                    f.status
                ),
            ))
        }
        s => {
            return Err((
                "runtime_bad_reply",
                format!("{who}: GET /v1/models answered HTTP {s}"),
            ))
        }
    }
    if f.truncated {
        return Err((
            "runtime_bad_reply",
            format!("{who}: GET /v1/models: the reply is larger than {MAX_BODY} bytes"),
        ));
    }
    let body = f.text();
    let value: Value = serde_json::from_str(&body).map_err(|e| {
        (
            "runtime_bad_reply",
            format!(
                "{who}: GET /v1/models: the reply is not JSON ({e}): {}",
                clip(&body, 120)
            ),
        )
    })?;
    let models = parse_models(&value).map_err(|e| ("runtime_bad_reply", format!("{who}: {e}")))?;
    Ok((models, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str) -> RuntimeEntry {
        RuntimeEntry {
            url: url.into(),
            name: None,
            token: None,
            load_path: None,
        }
    }

    #[test]
    fn entries_are_validated() {
        let mut e = entry("http://127.0.0.1:8000");
        e.validate().unwrap();
        assert_eq!(
            RuntimeClient::new(e.clone()).unwrap().id(),
            "runtime-127.0.0.1:8000"
        );
        e.name = Some("llm-1".into());
        e.load_path = Some("/load?format=json".into());
        e.token = Some("sk-abc".into());
        assert_eq!(RuntimeClient::new(e.clone()).unwrap().id(), "runtime-llm-1");
        e.load_path = Some("load".into());
        let err = e.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("[[runtime]] `llm-1`") && err.contains("start with `/`"),
            "{err}"
        );
        e.load_path = Some("/a b".into());
        assert!(e.validate().is_err());
        assert!(entry("http://127.0.0.1").validate().is_err());
        assert!(entry("https://127.0.0.1:8000").validate().is_err());
        let v = json!({"url": "http://127.0.0.1:8000", "api_key": "x"});
        assert!(serde_json::from_value::<RuntimeEntry>(v).is_err());
    }

    #[test]
    fn models_are_listed_and_bounded() {
        let m = parse_models(&json!({"object": "list", "data": [
            {"id": "meta-llama/Llama-3.1-8B-Instruct", "owned_by": "vllm"},
            {"id": "lora-1", "owned_by": "vllm"}
        ]}))
        .unwrap();
        assert_eq!(m.ids, ["meta-llama/Llama-3.1-8B-Instruct", "lora-1"]);
        assert_eq!(m.count, 2);
        assert_eq!(m.owned_by.as_deref(), Some("vllm"));
        let many: Vec<Value> = (0..200).map(|i| json!({"id": format!("m{i}")})).collect();
        let m = parse_models(&json!({ "data": many })).unwrap();
        assert_eq!((m.ids.len(), m.count), (MAX_MODELS, 200));
        assert!(parse_models(&json!({"models": []})).is_err());
    }

    #[test]
    fn load_reads_numbers_json_and_prometheus() {
        assert_eq!(
            parse_load("3\n"),
            Some(Load {
                running: Some(3.0),
                waiting: None
            })
        );
        assert_eq!(
            parse_load(r#"{"num_requests_running": 2, "num_requests_waiting": "5"}"#),
            Some(Load {
                running: Some(2.0),
                waiting: Some(5.0)
            })
        );
        assert_eq!(parse_load(r#"{"waiting": 1}"#).unwrap().waiting, Some(1.0));
        assert_eq!(parse_load(r#"{"busy": true}"#), None);
        assert_eq!(parse_load("<html>oops</html>"), None);
        let prom = "# HELP vllm:num_requests_running Number of requests.\n\
            # TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{engine=\"0\",model_name=\"a}b\"} 4.0\n\
            vllm:num_requests_running{engine=\"1\",model_name=\"c\"} 1.0 1700000000\n\
            vllm:num_requests_waiting{model_name=\"a\"} 7\n\
            vllm:num_requests_waiting_by_reason{reason=\"x\"} 100\n\
            vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.5\n\
            vllm:num_requests_running{model_name=\"x\"} NaN\n\
            broken{line 5\n";
        assert_eq!(
            parse_prometheus_load(prom),
            Load {
                running: Some(5.0),
                waiting: Some(7.0)
            }
        );
        assert_eq!(parse_load(prom).unwrap().waiting, Some(7.0));
        assert!(parse_prometheus_load("up 1\n").is_empty());
    }
}
