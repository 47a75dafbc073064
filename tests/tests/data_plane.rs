//! The commander's data plane, end to end: device registry and queries,
//! rollups checked against hand-computed values, timezone-shifted days,
//! status classes, retention, restarts, CSV and Prometheus.

use std::time::Duration;

use hashfleet_commander::config::Timezone;
use hashfleet_shared::now_ms;
use hashfleet_tests::{device, init_logs, parse_metric, wait_until, TestCommander, VirtualSentry};
use serde_json::{json, Value};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

fn miner(
    id: &str,
    make: &str,
    hashrate: f64,
    power: f64,
    temp: f64,
) -> hashfleet_shared::wire::DeviceSnapshot {
    device(
        id,
        "miner",
        make,
        "S21",
        &[
            ("hashrate_hs", hashrate),
            ("power_w", power),
            ("temp_c", temp),
        ],
    )
}

async fn query(c: &TestCommander, body: Value) -> (u16, Value) {
    c.post("/api/v1/devices/query", body).await
}

#[tokio::test]
async fn devices_are_registered_tagged_and_queryable() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let mut a = VirtualSentry::enroll(&c, &[("site", "hel1"), ("rack", "r1")]).await;
    let mut b = VirtualSentry::enroll(&c, &[("site", "ams")]).await;
    let now = now_ms();
    a.send(
        now,
        vec![
            miner("aa:00:00:00:00:01", "Antminer", 200e12, 3500.0, 65.0),
            miner("aa:00:00:00:00:02", "Antminer", 90e12, 3400.0, 85.0),
            device(
                "GPU-1111",
                "gpu",
                "NVIDIA",
                "RTX 4090",
                &[("temp_c", 70.0), ("power_w", 300.0)],
            ),
        ],
    )
    .await;
    b.send(
        now,
        vec![
            miner("bb:00:00:00:00:01", "Whatsminer", 150e12, 3300.0, 70.0),
            device(
                "cont-1",
                "container",
                "Antspace",
                "HK3",
                &[("temp_c", 30.0)],
            ),
        ],
    )
    .await;

    let (status, body) = query(&c, json!({"query": {"type": "miner"}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 3);

    let (_, body) = query(
        &c,
        json!({"query": {"hashrate_hs": {"$gt": 100e12}}, "sort": {"hashrate_hs": -1}}),
    )
    .await;
    let ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["aa:00:00:00:00:01", "bb:00:00:00:00:01"]);

    let (_, body) = query(
        &c,
        json!({"query": {"tags": "site-hel1"}, "fields": {"id": 1, "type": 1}}),
    )
    .await;
    assert_eq!(body["total"], 3);
    let first = &body["devices"][0];
    assert!(
        first.get("hashrate_hs").is_none() && first.get("type").is_some(),
        "projection: {first}"
    );

    let (_, body) = query(
        &c,
        json!({"query": {"$or": [{"type": "container"}, {"temp_c": {"$gte": 85}}]}}),
    )
    .await;
    assert_eq!(body["total"], 2);
    let (_, body) = query(
        &c,
        json!({"query": {"tags": {"$in": ["t-miner-whatsminer"]}}, "limit": 1, "offset": 0}),
    )
    .await;
    assert_eq!(body["total"], 1);

    // Efficiency is derived in J/TH when the sentry sends hashrate and power.
    let d = c.get("/api/v1/devices/aa:00:00:00:00:01").await;
    assert_eq!(d["efficiency_j_per_th"].as_f64().unwrap(), 17.5);
    assert_eq!(d["status"], "active");
    assert_eq!(d["site"], "hel1");
    assert_eq!(d["sentry_id"], a.sentry_id.as_str());
    assert_eq!(d["raw"]["source"], "virtual");
    let tags: Vec<&str> = d["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let sentry_tag = format!("sentry-{}", a.sentry_id);
    for t in [
        "t-miner",
        "t-miner-antminer",
        sentry_tag.as_str(),
        "site-hel1",
        "rack-r1",
    ] {
        assert!(tags.contains(&t), "{t} missing from {tags:?}");
    }

    // Bad queries name the problem.
    let (status, body) = query(&c, json!({"query": {"temp_c": {"$foo": 1}}})).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "ERR_QUERY_INVALID");
    assert!(body["message"].as_str().unwrap().contains("$foo"), "{body}");
    let (status, body) = c
        .request(
            reqwest::Method::GET,
            "/api/v1/devices/nope",
            None,
            Some(&c.token),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("ERR_THING_NOTFOUND"))
    );

    // CSV of a query.
    let q =
        urlencode(&json!({"query": {"type": "miner"}, "sort": {"hashrate_hs": -1}}).to_string());
    let (status, csv) = c
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/devices/export.csv?q={q}"),
            None,
            Some(&c.token),
        )
        .await;
    assert_eq!(status, 200);
    let csv = csv.as_str().unwrap().to_string();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[0]
            .starts_with("id,type,make,model,firmware,sentry_id,site,rack,status,last_seen,tags,"),
        "{csv}"
    );
    assert!(
        lines[0].contains("hashrate_hs") && lines[0].contains("power_w"),
        "{csv}"
    );
    assert!(
        lines[1].starts_with("aa:00:00:00:00:01,miner,Antminer,S21"),
        "{csv}"
    );
    c.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn rows(v: &Value) -> Vec<(u64, f64, f64, f64, f64, u64, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ts"].as_u64().unwrap(),
                r["avg"].as_f64().unwrap(),
                r["min"].as_f64().unwrap(),
                r["max"].as_f64().unwrap(),
                r["sum"].as_f64().unwrap(),
                r["count"].as_u64().unwrap(),
                r["last"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn rollups_match_hand_computed_values_across_bucket_boundaries() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    let mut c = TestCommander::start_in(&data, None).await;
    let mut s = VirtualSentry::enroll(&c, &[("site", "hel1")]).await;
    // An hour boundary three hours ago; samples straddle 1m, 5m and 1h edges.
    let t0 = (now_ms() / HOUR - 3) * HOUR;
    let samples: [(u64, f64); 7] = [
        (0, 10.0),
        (30_000, 20.0),
        (MIN, 30.0),
        (MIN + 30_000, 40.0),
        (4 * MIN + 50_000, 50.0),
        (5 * MIN, 60.0),
        (HOUR, 70.0),
    ];
    for (dt, v) in samples {
        s.send(
            t0 + dt,
            vec![
                device("m1", "miner", "Antminer", "S21", &[("hashrate_hs", v)]),
                device("m2", "miner", "Antminer", "S21", &[("hashrate_hs", 100.0)]),
            ],
        )
        .await;
    }
    let hist = |res: &str| {
        format!(
            "/api/v1/devices/m1/history?metric=hashrate_hs&resolution={res}&start={t0}&end={}",
            t0 + 2 * HOUR
        )
    };

    let one = rows(&c.get(&hist("1m")).await);
    assert_eq!(
        one,
        vec![
            (t0, 15.0, 10.0, 20.0, 30.0, 2, 20.0),
            (t0 + MIN, 35.0, 30.0, 40.0, 70.0, 2, 40.0),
            (t0 + 4 * MIN, 50.0, 50.0, 50.0, 50.0, 1, 50.0),
            (t0 + 5 * MIN, 60.0, 60.0, 60.0, 60.0, 1, 60.0),
            (t0 + HOUR, 70.0, 70.0, 70.0, 70.0, 1, 70.0),
        ]
    );
    let five = rows(&c.get(&hist("5m")).await);
    assert_eq!(
        five,
        vec![
            (t0, 30.0, 10.0, 50.0, 150.0, 5, 50.0),
            (t0 + 5 * MIN, 60.0, 60.0, 60.0, 60.0, 1, 60.0),
            (t0 + HOUR, 70.0, 70.0, 70.0, 70.0, 1, 70.0),
        ]
    );
    let hour = rows(&c.get(&hist("1h")).await);
    assert_eq!(
        hour,
        vec![
            (t0, 35.0, 10.0, 60.0, 210.0, 6, 60.0),
            (t0 + HOUR, 70.0, 70.0, 70.0, 70.0, 1, 70.0)
        ]
    );

    // Group rollups: the fleet total is the sum of device averages.
    let (status, tail) = c
        .post(
            "/api/v1/aggregates/tail",
            json!({"type": "miner", "tag": "site-hel1", "resolution": "1m",
                   "fields": ["hashrate_hs:sum", "hashrate_hs:max", "hashrate_hs:avg"],
                   "start": t0, "end": t0 + 2 * HOUR, "limit": 3}),
        )
        .await;
    assert_eq!(status, 200, "{tail}");
    let tail = tail.as_array().unwrap();
    assert_eq!(tail.len(), 3, "the newest 3 buckets, oldest first");
    assert_eq!(tail[0]["ts"], t0 + 4 * MIN);
    assert_eq!(tail[2]["ts"], t0 + HOUR);
    assert_eq!(tail[2]["hashrate_hs:sum"], 170.0);
    assert_eq!(tail[2]["count"], 2);
    assert_eq!(
        tail[2]["range"],
        format!("{}-{}", t0 + HOUR, t0 + HOUR + MIN - 1)
    );
    let (_, first) = c
        .post(
            "/api/v1/aggregates/tail",
            json!({"type": "miner", "resolution": "5m", "fields": ["hashrate_hs:sum", "hashrate_hs:min", "hashrate_hs:avg"], "start": t0, "end": t0 + MIN}),
        )
        .await;
    assert_eq!(first[0]["hashrate_hs:sum"], 130.0, "30 + 100: {first}");
    assert_eq!(first[0]["hashrate_hs:min"], 10.0);
    assert_eq!(first[0]["hashrate_hs:avg"], 65.0);
    assert_eq!(first[0]["count"], 10);
    let (_, multi) = c
        .post(
            "/api/v1/aggregates/multi",
            json!({"queries": [
                {"type": "miner", "resolution": "1h", "fields": ["hashrate_hs:count"], "start": t0, "end": t0 + 2 * HOUR},
                {"type": "gpu", "resolution": "1h", "fields": ["temp_c:max"], "start": t0, "end": t0 + 2 * HOUR}
            ]}),
        )
        .await;
    assert_eq!(multi[0].as_array().unwrap().len(), 2);
    assert_eq!(multi[0][0]["hashrate_hs:count"], 12.0);
    assert_eq!(multi[1], json!([]));

    // History CSV carries the same numbers.
    let (_, csv) = c
        .request(
            reqwest::Method::GET,
            &hist("5m").replace("/history?", "/history.csv?"),
            None,
            Some(&c.token),
        )
        .await;
    let csv = csv.as_str().unwrap().to_string();
    assert_eq!(csv.lines().next(), Some("ts,avg,min,max,sum,count,last"));
    assert_eq!(
        csv.lines().nth(1),
        Some(format!("{t0},30,10,50,150,5,50").as_str()),
        "{csv}"
    );

    // Everything survives a restart.
    let before = c.get(&hist("1m")).await;
    c.stop().await;
    let mut c = TestCommander::start_in(&data, None).await;
    assert_eq!(c.get(&hist("1m")).await, before);
    assert_eq!(c.get("/api/v1/devices/m1").await["hashrate_hs"], 70.0);
    c.stop().await;
}

#[tokio::test]
async fn daily_totals_follow_the_configured_timezone() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let plus3 = 3 * HOUR as i64;
    let mut c = TestCommander::start_with(&dir.path().join("c"), None, |cfg| {
        cfg.timezones = vec![
            Timezone {
                code: "UTC".into(),
                offset_ms: 0,
            },
            Timezone {
                code: "EAT".into(),
                offset_ms: plus3,
            },
        ];
    })
    .await;
    let mut s = VirtualSentry::enroll(&c, &[]).await;
    // Midnight UTC three days ago = day D; one sample at 22:00 the day
    // before, one at 01:00 on D. At UTC+3 both fall on local day D.
    let d = (now_ms() / DAY - 3) * DAY;
    s.send(
        d - 2 * HOUR,
        vec![device(
            "m1",
            "miner",
            "Antminer",
            "S21",
            &[("hashrate_hs", 10.0)],
        )],
    )
    .await;
    s.send(
        d + HOUR,
        vec![device(
            "m1",
            "miner",
            "Antminer",
            "S21",
            &[("hashrate_hs", 30.0)],
        )],
    )
    .await;
    let date = |ms: u64| {
        let days = (ms / DAY) as i64;
        hashfleet_commander_date(days)
    };
    let (day_before, day_d) = (date(d - DAY), date(d));

    let daily = |offset: i64, daily: bool| {
        json!({"type": "miner", "start_date": day_before, "end_date": day_d, "timezone_offset_ms": offset,
               "fields": ["hashrate_hs:avg", "hashrate_hs:sum"], "daily": daily})
    };
    let (status, utc) = c.post("/api/v1/aggregates/daily", daily(0, true)).await;
    assert_eq!(status, 200, "{utc}");
    assert_eq!(utc.as_array().unwrap().len(), 2, "{utc}");
    assert_eq!(
        (
            utc[0]["date"].as_str().unwrap(),
            utc[0]["hashrate_hs:avg"].as_f64().unwrap()
        ),
        (day_before.as_str(), 10.0)
    );
    assert_eq!(
        (
            utc[1]["date"].as_str().unwrap(),
            utc[1]["hashrate_hs:avg"].as_f64().unwrap()
        ),
        (day_d.as_str(), 30.0)
    );
    assert_eq!(utc[1]["ts"], d);

    let (_, eat) = c.post("/api/v1/aggregates/daily", daily(plus3, true)).await;
    assert_eq!(eat.as_array().unwrap().len(), 1, "{eat}");
    assert_eq!(eat[0]["date"], day_d.as_str());
    assert_eq!(eat[0]["ts"], d - 3 * HOUR);
    assert_eq!(eat[0]["hashrate_hs:avg"], 20.0);
    assert_eq!(eat[0]["count"], 2);

    let (_, total) = c.post("/api/v1/aggregates/daily", daily(0, false)).await;
    assert_eq!(
        total["hashrate_hs:sum"], 20.0,
        "mean daily fleet total: {total}"
    );
    assert_eq!(total["count"], 2);

    let (status, body) = c
        .post("/api/v1/aggregates/daily", daily(HOUR as i64, true))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("ERR_TIMEZONE_OFFSET_INVALID")),
        "{body}"
    );
    let mut bad = daily(0, true);
    bad["start_date"] = json!("2026-02-30");
    let (status, body) = c.post("/api/v1/aggregates/daily", bad).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("ERR_START_DATE_INVALID"))
    );
    c.stop().await;
}

/// `YYYY-MM-DD` of days since the epoch (test-side, independent of the server's).
fn hashfleet_commander_date(days: i64) -> String {
    let secs = days * 86_400;
    humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)).to_string()
        [..10]
        .to_string()
}

#[tokio::test]
async fn silent_devices_go_stale_then_lost() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_with(&dir.path().join("c"), None, |cfg| {
        cfg.status_rules.stale_after_ms = 1_000;
        cfg.status_rules.lost_after_ms = 2_500;
    })
    .await;
    let mut s = VirtualSentry::enroll(&c, &[]).await;
    let mut sleeping = device("m2", "miner", "Antminer", "S21", &[("hashrate_hs", 0.0)]);
    sleeping.labels.insert("state".into(), "sleeping".into());
    s.send(
        now_ms(),
        vec![miner("m1", "Antminer", 1e12, 10.0, 50.0), sleeping],
    )
    .await;
    async fn status(c: &TestCommander, id: &str) -> String {
        c.get(&format!("/api/v1/devices/{id}")).await["status"]
            .as_str()
            .unwrap()
            .to_string()
    }
    assert_eq!(status(&c, "m1").await, "active");
    assert_eq!(status(&c, "m2").await, "sleeping");
    wait_until(Duration::from_secs(10), "stale", || async {
        status(&c, "m1").await == "stale"
    })
    .await;
    wait_until(Duration::from_secs(10), "lost", || async {
        status(&c, "m1").await == "lost"
    })
    .await;
    let (_, body) = query(&c, json!({"query": {"status": "lost"}})).await;
    assert_eq!(body["total"], 2);
    c.stop().await;
}

#[tokio::test]
async fn retention_bounds_raw_heartbeats_and_old_buckets() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_with(&dir.path().join("c"), None, |cfg| {
        cfg.retention.heartbeats_max_per_sentry = 5;
        cfg.retention.m1 = Duration::from_secs(3600);
        cfg.retention.interval = Duration::from_millis(300);
        cfg.checkpoint = Duration::from_millis(200);
    })
    .await;
    let mut s = VirtualSentry::enroll(&c, &[]).await;
    let old = now_ms() - 2 * HOUR;
    for i in 0..20u64 {
        s.send(
            old + i * 1000,
            vec![device(
                "m1",
                "miner",
                "Antminer",
                "S21",
                &[("hashrate_hs", 1.0)],
            )],
        )
        .await;
    }
    let path = format!("/api/v1/sentries/{}/heartbeats?limit=10000", s.sentry_id);
    wait_until(
        Duration::from_secs(20),
        "raw heartbeats pruned to 5",
        || async { c.get(&path).await.as_array().unwrap().len() == 5 },
    )
    .await;
    let seqs: Vec<u64> = c
        .get(&path)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![20, 19, 18, 17, 16], "the newest are kept");
    // The accepted count is history, not what is kept.
    assert_eq!(
        c.get(&format!("/api/v1/sentries/{}", s.sentry_id)).await["heartbeats"],
        20
    );
    // 1m buckets older than an hour go; 5m buckets stay.
    let hist = |res: &str| {
        format!(
            "/api/v1/devices/m1/history?metric=hashrate_hs&resolution={res}&start={}&end={}",
            old - HOUR,
            now_ms()
        )
    };
    wait_until(Duration::from_secs(20), "old 1m buckets pruned", || async {
        c.get(&hist("1m")).await.as_array().unwrap().is_empty()
    })
    .await;
    let five = c.get(&hist("5m")).await;
    assert_eq!(
        five.as_array()
            .unwrap()
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>(),
        20
    );
    c.stop().await;
}

#[tokio::test]
async fn metrics_pass_promtool_and_can_be_public() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c =
        TestCommander::start_with(&dir.path().join("c"), None, |cfg| cfg.metrics_public = true)
            .await;
    let mut s = VirtualSentry::enroll(&c, &[("site", "hel1"), ("rack", "r\"1")]).await;
    s.send(
        now_ms(),
        vec![
            miner("m1", "Antminer", 200e12, 3500.0, 65.0),
            miner("m2", "Antminer", 100e12, 3000.0, 75.0),
        ],
    )
    .await;
    let (status, body) = c
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(status, 200, "public metrics need no token");
    let text = body.as_str().unwrap().to_string();
    let labels = format!(
        "site=\"hel1\",rack=\"r\\\"1\",type=\"miner\",make=\"Antminer\",model=\"S21\",firmware=\"fw-1\",sentry=\"{}\"",
        s.sentry_id
    );
    assert_eq!(
        parse_metric(
            &text,
            &format!("hashfleet_hashrate_hashes_per_second{{{labels}}}")
        ),
        Some(300e12),
        "{text}"
    );
    assert_eq!(
        parse_metric(&text, &format!("hashfleet_power_watts{{{labels}}}")),
        Some(6500.0)
    );
    assert_eq!(
        parse_metric(
            &text,
            &format!("hashfleet_temperature_max_celsius{{{labels}}}")
        ),
        Some(75.0)
    );
    assert_eq!(
        parse_metric(
            &text,
            &format!("hashfleet_devices{{{labels},status=\"active\"}}")
        ),
        Some(2.0)
    );
    assert!(parse_metric(&text, "hashfleet_build_info{version=\"0.1.0\"}").is_some());
    assert!(!text.contains("127.0.0.1"), "no addresses as labels");

    match std::process::Command::new("promtool")
        .arg("--version")
        .output()
    {
        Ok(_) => {
            let path = dir.path().join("metrics.txt");
            std::fs::write(&path, &text).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("promtool check metrics < {}", path.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("promtool is missing in CI: .ci/run installs the Debian package prometheus")
        }
        Err(_) => {
            eprintln!("promtool not installed (apt-get install prometheus); skipping its check")
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn sentry_list_paginates_with_a_total_count() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(VirtualSentry::enroll(&c, &[]).await.sentry_id);
    }
    ids.sort();
    let client = reqwest::Client::new();
    let page = |offset: usize, limit: usize| {
        let url = format!("{}/api/v1/sentries?offset={offset}&limit={limit}", c.http);
        let req = client.get(url).bearer_auth(&c.token);
        async move {
            let resp = req.send().await.unwrap();
            let total = resp.headers()["x-total-count"]
                .to_str()
                .unwrap()
                .to_string();
            let body: Value = resp.json().await.unwrap();
            let page: Vec<String> = body
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["sentry_id"].as_str().unwrap().to_string())
                .collect();
            (total, page)
        }
    };
    let (total, first) = page(0, 2).await;
    assert_eq!(total, "5");
    assert_eq!(first, ids[..2]);
    let (_, rest) = page(2, 10).await;
    assert_eq!(rest, ids[2..]);
    let (_, none) = page(5, 10).await;
    assert!(none.is_empty());
    c.stop().await;
}
