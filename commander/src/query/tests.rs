use std::cmp::Ordering;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn device(n: u32) -> Value {
    match n {
        1 => json!({
            "id": "aa:bb:cc:00:00:01", "type": "miner", "make": "antminer", "model": "S21",
            "firmware": "2024.1", "sentry_id": "43acda78ca02a452",
            "tags": ["t-miner", "t-miner-antminer", "sentry-43acda78ca02a452", "site-hel1"],
            "status": "active", "last_seen": 1_795_321_566_427_u64,
            "alerts": [{"code": "overheat", "severity": "critical", "message": "hot"},
                       {"code": "fan", "severity": "warning", "message": "slow fan"}],
            "hashrate_hs": 2.0e14, "power_w": 3500.0, "temp_c": 71.5,
            "labels": {"hostname": "rig-01", "rack": "r1"},
            "raw": {"stats": [{"x": 5}, {"x": 7}]}
        }),
        2 => json!({
            "id": "aa:bb:cc:00:00:02", "type": "miner", "make": "whatsminer", "model": "M60S",
            "tags": ["t-miner", "site-hel1"], "status": "offline", "last_seen": 1_795_321_000_000_u64,
            "alerts": [], "hashrate_hs": 180_000_000_000_000_u64, "power_w": 3300, "temp_c": 85,
            "labels": {"hostname": "rig-02"},
            "raw": {"stats": [{"x": 9}]}
        }),
        3 => json!({
            "id": "aa:bb:cc:00:00:03", "type": "pdu", "make": "apc", "model": "AP8959",
            "tags": ["t-pdu", "site-fra1"], "status": "active", "last_seen": 1_795_321_500_000_u64,
            "alerts": [{"code": "overload", "severity": "warning", "message": "load"}],
            "hashrate_hs": null, "power_w": 12.5,
            "labels": {}
        }),
        _ => json!({
            "id": "aa:bb:cc:00:00:04", "type": "miner", "make": "antminer", "model": "s19 pro",
            "tags": "t-miner", "status": "active", "temp_c": "n/a", "hashrate_hs": 1.1e14,
            "labels": {"hostname": "RIG-04"}
        }),
    }
}

fn fleet() -> Vec<Value> {
    (1..=4).map(device).collect()
}

/// Ids of the fleet documents matching `filter`.
fn ids(filter: Value) -> Vec<String> {
    let query = Query::parse(&filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
    fleet()
        .iter()
        .filter(|d| query.matches(d))
        .map(|d| d["id"].as_str().unwrap_or_default()[15..].to_owned())
        .collect()
}

fn err(filter: Value) -> String {
    match Query::parse(&filter) {
        Ok(q) => panic!("{filter} parsed: {q:?}"),
        Err(e) => {
            assert_eq!(e.code(), "ERR_QUERY_INVALID");
            e.to_string()
        }
    }
}

// ---- filter: equality, bare values, arrays, paths ----

#[test]
fn empty_query_matches_everything() {
    assert_eq!(ids(json!({})), ["01", "02", "03", "04"]);
    assert!(Query::default().matches(&json!({"any": 1})));
}

#[test]
fn bare_value_is_eq() {
    assert_eq!(ids(json!({"type": "miner"})), ["01", "02", "04"]);
    assert_eq!(ids(json!({"type": {"$eq": "miner"}})), ["01", "02", "04"]);
    assert_eq!(
        ids(json!({"type": "miner", "make": "antminer"})),
        ["01", "04"]
    );
    assert_eq!(ids(json!({"type": "router"})), Vec::<String>::new());
}

#[test]
fn eq_on_array_matches_any_element_or_whole_array() {
    assert_eq!(ids(json!({"tags": "t-miner"})), ["01", "02", "04"]);
    assert_eq!(ids(json!({"tags": "site-hel1"})), ["01", "02"]);
    assert_eq!(ids(json!({"tags": ["t-miner", "site-hel1"]})), ["02"]);
    // Order matters for whole-array equality.
    assert_eq!(
        ids(json!({"tags": ["site-hel1", "t-miner"]})),
        Vec::<String>::new()
    );
    assert_eq!(ids(json!({"alerts": []})), ["02"]);
}

#[test]
fn eq_on_embedded_object() {
    assert_eq!(ids(json!({"labels": {"hostname": "rig-02"}})), ["02"]);
    assert_eq!(ids(json!({"labels": {}})), ["03"]);
    // Key order does not matter.
    assert_eq!(
        ids(json!({"labels": {"rack": "r1", "hostname": "rig-01"}})),
        ["01"]
    );
}

#[test]
fn dotted_paths() {
    assert_eq!(ids(json!({"labels.hostname": "rig-01"})), ["01"]);
    assert_eq!(ids(json!({"alerts.severity": "critical"})), ["01"]);
    assert_eq!(ids(json!({"alerts.severity": "warning"})), ["01", "03"]);
    assert_eq!(ids(json!({"raw.stats.x": 9})), ["02"]);
    assert_eq!(ids(json!({"raw.stats.0.x": 5})), ["01"]);
    assert_eq!(ids(json!({"raw.stats.1.x": 7})), ["01"]);
    assert_eq!(ids(json!({"raw.stats.1.x": {"$exists": true}})), ["01"]);
    assert_eq!(ids(json!({"tags.0": "t-pdu"})), ["03"]);
    // A path through a scalar finds nothing.
    assert_eq!(
        ids(json!({"model.x": {"$exists": true}})),
        Vec::<String>::new()
    );
}

#[test]
fn numeric_index_rules() {
    let doc = json!({"a": {"0": "key"}, "b": ["x", "y"], "c": {"01": 1}});
    let m = |f: Value| Query::parse(&f).map(|q| q.matches(&doc)).unwrap_or(false);
    assert!(m(json!({"a.0": "key"})));
    assert!(m(json!({"b.1": "y"})));
    assert!(!m(json!({"b.2": {"$exists": true}})));
    assert!(!m(json!({"b.01": "y"})));
    assert!(m(json!({"c.01": 1})));
}

#[test]
fn numbers_compare_across_representations() {
    assert_eq!(ids(json!({"temp_c": 85.0})), ["02"]);
    assert_eq!(ids(json!({"power_w": 3500})), ["01"]);
    assert_eq!(ids(json!({"hashrate_hs": {"$gt": 1.9e14}})), ["01"]);
    assert_eq!(
        ids(json!({"hashrate_hs": {"$gte": 180_000_000_000_000_u64}})),
        ["01", "02"]
    );
    assert_eq!(ids(json!({"temp_c": {"$gt": 80}})), ["02"]);
    assert_eq!(ids(json!({"temp_c": {"$lt": 71.6, "$gte": 71}})), ["01"]);
    assert_eq!(ids(json!({"power_w": {"$lte": 12.5}})), ["03"]);
    assert_eq!(ids(json!({"power_w": {"$lt": 13}})), ["03"]);
    let big = json!({"n": u64::MAX});
    let q = |f: Value| Query::parse(&f).map(|q| q.matches(&big)).unwrap_or(false);
    assert!(q(json!({"n": {"$gt": i64::MAX}})));
    assert!(q(json!({"n": {"$lt": 1.9e19}})));
    assert!(q(json!({"n": {"$gt": 1.8e19}})));
    assert!(!q(json!({"n": -1})));
    let neg = json!({"n": -3});
    assert!(Query::parse(&json!({"n": {"$lt": -2.5, "$gt": -3.5}}))
        .map(|q| q.matches(&neg))
        .unwrap_or(false));
    assert!(Query::parse(&json!({"n": -3.0}))
        .map(|q| q.matches(&neg))
        .unwrap_or(false));
}

#[test]
fn comparisons_across_types_are_false() {
    // Device 04 has temp_c "n/a": neither above nor below a number.
    assert_eq!(ids(json!({"temp_c": {"$gt": 0}})), ["01", "02"]);
    assert_eq!(ids(json!({"temp_c": {"$lt": 1000}})), ["01", "02"]);
    assert_eq!(ids(json!({"temp_c": {"$gte": ""}})), ["04"]);
    assert_eq!(ids(json!({"model": {"$gt": 0}})), Vec::<String>::new());
    assert_eq!(ids(json!({"temp_c": "85"})), Vec::<String>::new());
    let doc = json!({"on": true, "b": [3, "x"]});
    let m = |f: Value| Query::parse(&f).map(|q| q.matches(&doc)).unwrap_or(false);
    assert!(m(json!({"on": {"$gt": false}})));
    assert!(!m(json!({"on": {"$gt": 0}})));
    assert!(m(json!({"b": {"$gt": 2}})));
    assert!(m(json!({"b": {"$gte": "x"}})));
    assert!(!m(json!({"b": {"$gt": "x"}})));
}

#[test]
fn strings_compare_lexicographically() {
    assert_eq!(ids(json!({"model": {"$gte": "S", "$lt": "T"}})), ["01"]);
    assert_eq!(ids(json!({"make": {"$lt": "b"}})), ["01", "03", "04"]);
    assert_eq!(
        ids(json!({"id": {"$gt": "aa:bb:cc:00:00:02"}})),
        ["03", "04"]
    );
}

#[test]
fn ne_and_nin_are_negations() {
    assert_eq!(ids(json!({"type": {"$ne": "miner"}})), ["03"]);
    assert_eq!(ids(json!({"tags": {"$ne": "t-miner"}})), ["03"]);
    // Missing fields satisfy $ne.
    assert_eq!(
        ids(json!({"firmware": {"$ne": "2024.1"}})),
        ["02", "03", "04"]
    );
    assert_eq!(ids(json!({"make": {"$nin": ["antminer", "apc"]}})), ["02"]);
    assert_eq!(
        ids(json!({"alerts.code": {"$nin": ["overheat"]}})),
        ["02", "03", "04"]
    );
}

#[test]
fn in_operator() {
    assert_eq!(
        ids(json!({"make": {"$in": ["apc", "whatsminer"]}})),
        ["02", "03"]
    );
    assert_eq!(
        ids(json!({"tags": {"$in": ["site-fra1", "t-miner-antminer"]}})),
        ["01", "03"]
    );
    assert_eq!(
        ids(json!({"power_w": {"$in": [3300.0, 12.5]}})),
        ["02", "03"]
    );
    assert_eq!(ids(json!({"make": {"$in": []}})), Vec::<String>::new());
    // null in $in matches missing and null.
    assert_eq!(
        ids(json!({"firmware": {"$in": [null, "2024.1"]}})),
        ["01", "02", "03", "04"]
    );
}

#[test]
fn null_and_exists() {
    // null matches explicit null and missing.
    assert_eq!(ids(json!({"hashrate_hs": null})), ["03"]);
    assert_eq!(ids(json!({"temp_c": null})), ["03"]);
    assert_eq!(ids(json!({"temp_c": {"$ne": null}})), ["01", "02", "04"]);
    // $exists sees an explicit null as present.
    assert_eq!(
        ids(json!({"hashrate_hs": {"$exists": true}})),
        ["01", "02", "03", "04"]
    );
    assert_eq!(ids(json!({"temp_c": {"$exists": false}})), ["03"]);
    assert_eq!(ids(json!({"firmware": {"$exists": 1}})), ["01"]);
    assert_eq!(ids(json!({"labels.hostname": {"$exists": false}})), ["03"]);
    assert_eq!(ids(json!({"alerts.code": {"$exists": true}})), ["01", "03"]);
    assert_eq!(ids(json!({"temp_c": {"$gte": null}})), ["03"]);
    assert_eq!(ids(json!({"temp_c": {"$gt": null}})), Vec::<String>::new());
}

#[test]
fn not_operator() {
    assert_eq!(
        ids(json!({"temp_c": {"$not": {"$gt": 80}}})),
        ["01", "03", "04"]
    );
    assert_eq!(
        ids(json!({"temp_c": {"$not": {"$gt": 70, "$lt": 80}}})),
        ["02", "03", "04"]
    );
    assert_eq!(
        ids(json!({"model": {"$not": {"$regex": "^s", "$options": "i"}}})),
        ["02", "03"]
    );
    assert_eq!(
        ids(json!({"type": {"$not": {"$in": ["pdu"]}}})),
        ["01", "02", "04"]
    );
}

#[test]
fn regex_operator() {
    assert_eq!(ids(json!({"model": {"$regex": "^S"}})), ["01"]);
    assert_eq!(
        ids(json!({"model": {"$regex": "^s", "$options": "i"}})),
        ["01", "04"]
    );
    assert_eq!(
        ids(json!({"labels.hostname": {"$regex": "rig-0[14]", "$options": "i"}})),
        ["01", "04"]
    );
    // Any string element of an array.
    assert_eq!(ids(json!({"tags": {"$regex": "^site-fra"}})), ["03"]);
    // Non-strings never match.
    assert_eq!(
        ids(json!({"temp_c": {"$regex": "8"}})),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(json!({"model": {"$regex": "pro$", "$options": "iu"}})),
        ["04"]
    );
    let doc = json!({"m": "line1\nLINE2"});
    let m = |f: Value| Query::parse(&f).map(|q| q.matches(&doc)).unwrap_or(false);
    assert!(!m(json!({"m": {"$regex": "^line2$", "$options": "i"}})));
    assert!(m(json!({"m": {"$regex": "^line2$", "$options": "im"}})));
    assert!(m(json!({"m": {"$regex": "1.L", "$options": "s"}})));
    assert!(m(json!({"m": {"$regex": "l ine 1", "$options": "x"}})));
}

#[test]
fn logical_operators() {
    assert_eq!(
        ids(json!({"$or": [{"type": "pdu"}, {"temp_c": {"$gt": 80}}]})),
        ["02", "03"]
    );
    assert_eq!(
        ids(json!({"$and": [{"type": "miner"}, {"status": "active"}]})),
        ["01", "04"]
    );
    assert_eq!(
        ids(json!({"$nor": [{"type": "pdu"}, {"status": "offline"}]})),
        ["01", "04"]
    );
    assert_eq!(
        ids(json!({
            "type": "miner",
            "$or": [
                {"$and": [{"make": "antminer"}, {"model": {"$regex": "^S2"}}]},
                {"$and": [{"status": "offline"}, {"$or": [{"temp_c": {"$gte": 85}}, {"power_w": 0}]}]}
            ]
        })),
        ["01", "02"]
    );
    assert_eq!(
        ids(json!({"$and": [{"$or": [{"status": "active"}]}, {"$nor": [{"make": "apc"}]}]})),
        ["01", "04"]
    );
}

#[test]
fn several_operators_on_one_field_all_hold() {
    assert_eq!(
        ids(json!({"power_w": {"$gt": 100, "$lt": 3400, "$ne": 3500}})),
        ["02"]
    );
    assert_eq!(
        ids(json!({"temp_c": {"$exists": true, "$gte": 71.5}})),
        ["01", "02"]
    );
    assert_eq!(
        ids(json!({"tags": {"$in": ["site-hel1"], "$nin": ["t-miner-antminer"]}})),
        ["02"]
    );
}

#[test]
fn non_object_documents_do_not_panic() {
    let q = Query::parse(&json!({"a.b": 1, "x": null})).unwrap_or_default();
    for doc in [
        json!(null),
        json!(1),
        json!("s"),
        json!([1, {"a": {"b": 1}}]),
    ] {
        let _ = q.matches(&doc);
    }
    assert!(q.matches(&json!([{"a": {"b": 1}}])) || !q.matches(&json!(1)));
}

// ---- filter errors ----

#[test]
fn errors_name_the_bad_part() {
    let e = err(json!({"temp_c": {"$foo": 1}}));
    assert!(
        e.starts_with("unknown operator `$foo` at `temp_c`: supported are $eq $ne"),
        "{e}"
    );
    assert_eq!(
        err(json!({"type": {"$in": "miner"}})),
        "`$in` at `type` needs an array"
    );
    assert_eq!(
        err(json!({"type": {"$nin": {"a": 1}}})),
        "`$nin` at `type` needs an array"
    );
    let e = err(json!({"model": {"$regex": "("}}));
    assert!(e.starts_with("invalid `$regex` at `model`: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = err(json!({"model": {"$regex": 5}}));
    assert!(e.starts_with("invalid `$regex` at `model`: "), "{e}");
    let e = err(json!({"model": {"$regex": "a", "$options": "q"}}));
    assert!(e.contains("`q`"), "{e}");
    assert_eq!(
        err(json!({"model": {"$options": "i"}})),
        "`$options` at `model` needs a `$regex` beside it"
    );
    assert_eq!(err(json!([1])), "query must be a JSON object");
    assert_eq!(err(json!("x")), "query must be a JSON object");
    let e = err(json!({"$where": "1"}));
    assert!(
        e.starts_with("unknown operator `$where`: supported at filter level are $and $or $nor"),
        "{e}"
    );
    let e = err(json!({"$or": [{"$gt": 1}]}));
    assert!(e.starts_with("unknown operator `$gt` at `$or[0]`"), "{e}");
    assert_eq!(
        err(json!({"$or": []})),
        "`$or` needs a non-empty array of filter objects"
    );
    assert_eq!(
        err(json!({"$and": {"a": 1}})),
        "`$and` needs a non-empty array of filter objects"
    );
    assert_eq!(
        err(json!({"$nor": [1]})),
        "`$nor` needs a non-empty array of filter objects"
    );
    assert_eq!(
        err(json!({"$and": [{"$or": "x"}]})),
        "`$or` at `$and[0]` needs a non-empty array of filter objects"
    );
    let e = err(json!({"temp_c": {"$not": 5}}));
    assert!(
        e.starts_with("`$not` at `temp_c` needs an operator object"),
        "{e}"
    );
    let e = err(json!({"temp_c": {"$not": {}}}));
    assert!(e.starts_with("`$not` at `temp_c` needs"), "{e}");
    let e = err(json!({"temp_c": {"$not": {"$bar": 1}}}));
    assert!(e.starts_with("unknown operator `$bar` at `temp_c`"), "{e}");
    let e = err(json!({"temp_c": {"$gt": 1, "x": 2}}));
    assert!(e.contains("`temp_c`") && e.contains("`x`"), "{e}");
    assert_eq!(
        err(json!({"temp_c": {"$exists": "yes"}})),
        "`$exists` at `temp_c` needs true or false"
    );
    let e = err(json!({"temp_c": {"$or": [{"a": 1}]}}));
    assert!(
        e.starts_with("`$or` at `temp_c` needs to be at filter level"),
        "{e}"
    );
    assert!(err(json!({"": 1})).starts_with("invalid field path ``"));
    assert!(err(json!({"a..b": 1})).starts_with("invalid field path `a..b`: a segment is empty"));
    assert!(err(json!({"a.$b": 1})).starts_with("invalid field path `a.$b`"));
}

#[test]
fn depth_limit() {
    let mut filter = json!({"a": 1});
    for _ in 0..40 {
        filter = json!({"$and": [filter]});
    }
    assert_eq!(
        err(filter),
        format!("query nests deeper than {MAX_DEPTH} levels")
    );
    // Exactly at the limit is fine: 15 × ($and object + array) + leaf object + value = 32.
    let mut filter = json!({"a": 1});
    for _ in 0..15 {
        filter = json!({"$and": [filter]});
    }
    assert!(Query::parse(&filter).is_ok());
    let deep_operand = (0..40).fold(json!(1), |v, _| json!([v]));
    assert!(err(json!({"a": deep_operand})).contains("nests deeper"));
}

#[test]
fn size_limit() {
    let many: Vec<Value> = (0..MAX_NODES).map(|i| json!(i)).collect();
    assert_eq!(
        err(json!({"a": {"$in": many}})),
        format!("query holds more than {MAX_NODES} values")
    );
    let ok: Vec<Value> = (0..MAX_NODES - 10).map(|i| json!(i)).collect();
    assert!(Query::parse(&json!({"a": {"$in": ok}})).is_ok());
}

#[test]
fn regex_limits() {
    let branches: Vec<Value> = (0..=MAX_REGEXES)
        .map(|_| json!({"m": {"$regex": "a"}}))
        .collect();
    assert_eq!(
        err(json!({"$or": branches})),
        format!("query holds more than {MAX_REGEXES} `$regex` operators")
    );
    // A pattern whose compiled program is huge is refused, not built.
    let e = err(json!({"m": {"$regex": "\\w{1000}\\w{1000}\\w{1000}"}}));
    assert!(e.starts_with("invalid `$regex` at `m`: "), "{e}");
    let nested = format!("{}a{}", "(".repeat(200), ")".repeat(200));
    assert!(err(json!({"m": {"$regex": nested}})).starts_with("invalid `$regex` at `m`"));
}

#[test]
fn path_segment_limit() {
    let long = vec!["a"; MAX_PATH_SEGMENTS + 1].join(".");
    assert!(err(json!({ long: 1 })).contains("too many segments"));
    let ok = vec!["a"; MAX_PATH_SEGMENTS].join(".");
    assert!(Query::parse(&json!({ ok: 1 })).is_ok());
}

// ---- projection ----

fn project(fields: Value, doc: &Value) -> Value {
    Projection::parse(&fields)
        .unwrap_or_else(|e| panic!("{fields}: {e}"))
        .apply(doc)
}

#[test]
fn projection_inclusion_keeps_id() {
    let doc = device(1);
    assert_eq!(
        project(json!({"hashrate_hs": 1, "temp_c": true}), &doc),
        json!({"id": "aa:bb:cc:00:00:01", "hashrate_hs": 2.0e14, "temp_c": 71.5})
    );
    assert_eq!(
        project(json!({"hashrate_hs": 1, "id": 0}), &doc),
        json!({"hashrate_hs": 2.0e14})
    );
    assert_eq!(
        project(json!({"id": 1}), &doc),
        json!({"id": "aa:bb:cc:00:00:01"})
    );
    assert_eq!(
        project(json!({"nope": 1}), &doc),
        json!({"id": "aa:bb:cc:00:00:01"})
    );
}

#[test]
fn projection_exclusion() {
    let doc = device(2);
    let out = project(json!({"raw": 0, "alerts": false}), &doc);
    let mut expected = doc.clone();
    if let Some(map) = expected.as_object_mut() {
        map.remove("raw");
        map.remove("alerts");
    }
    assert_eq!(out, expected);
    let out = project(json!({"id": 0}), &doc);
    assert!(out.get("id").is_none() && out.get("raw").is_some());
    // "id": 1 beside exclusions keeps exclusion mode.
    let out = project(json!({"id": 1, "raw": 0}), &doc);
    assert!(out.get("id").is_some() && out.get("raw").is_none() && out.get("tags").is_some());
    let out = project(
        json!({"labels.hostname": 0, "alerts.message": 0}),
        &device(1),
    );
    assert_eq!(out["labels"], json!({"rack": "r1"}));
    assert_eq!(
        out["alerts"][0],
        json!({"code": "overheat", "severity": "critical"})
    );
}

#[test]
fn projection_dotted_paths() {
    let doc = device(1);
    assert_eq!(
        project(json!({"labels.hostname": 1}), &doc),
        json!({"id": "aa:bb:cc:00:00:01", "labels": {"hostname": "rig-01"}})
    );
    assert_eq!(
        project(
            json!({"alerts.severity": 1, "raw.stats.x": 1, "id": 0}),
            &doc
        ),
        json!({"alerts": [{"severity": "critical"}, {"severity": "warning"}], "raw": {"stats": [{"x": 5}, {"x": 7}]}})
    );
    assert_eq!(
        project(
            json!({"labels.hostname": 1, "labels.rack": 1, "id": 0}),
            &doc
        ),
        json!({"labels": {"hostname": "rig-01", "rack": "r1"}})
    );
    // A sub-path of a scalar is dropped; scalar array elements are dropped.
    assert_eq!(project(json!({"model.x": 1, "id": 0}), &doc), json!({}));
    assert_eq!(
        project(
            json!({"a.b": 1, "id": 0}),
            &json!({"a": [{"b": 1, "c": 2}, 3, {"c": 4}]})
        ),
        json!({"a": [{"b": 1}, {}]})
    );
}

#[test]
fn projection_all_and_errors() {
    let doc = device(3);
    assert_eq!(project(json!({}), &doc), doc);
    assert_eq!(project(Value::Null, &doc), doc);
    assert!(Projection::default().is_all());
    assert_eq!(Projection::default().apply(&json!(5)), json!(5));
    let e = Projection::parse(&json!({"a": 1, "b": 0}))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), "ERR_QUERY_INVALID");
    assert!(
        e.to_string()
            .starts_with("`fields` mixes inclusion (`a`) and exclusion (`b`)"),
        "{e}"
    );
    let e = Projection::parse(&json!({"a": 2})).map(|_| ()).unwrap_err();
    assert_eq!(e.to_string(), "`fields.a` must be 1 or 0 (or true/false)");
    let e = Projection::parse(&json!({"labels": 1, "labels.hostname": 1}))
        .map(|_| ())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`labels` and `labels.hostname` collide"),
        "{e}"
    );
    let e = Projection::parse(&json!(["a"])).map(|_| ()).unwrap_err();
    assert_eq!(e.to_string(), "`fields` must be a JSON object");
    assert!(Projection::parse(&json!({"a..b": 1})).is_err());
}

// ---- sort ----

fn sorted(spec: Value, docs: Vec<Value>) -> Vec<Value> {
    let sort = Sort::parse(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let mut docs = docs;
    docs.sort_by(|a, b| sort.compare(a, b));
    docs
}

#[test]
fn sort_mixed_types_in_bson_order() {
    let docs = vec![
        json!({"v": true}),
        json!({"v": [1]}),
        json!({"v": {"a": 1}}),
        json!({"v": "b"}),
        json!({"v": 2.5}),
        json!({"v": null}),
        json!({"v": -7}),
        json!({}),
        json!({"v": "a"}),
        json!({"v": false}),
        json!({"v": u64::MAX}),
    ];
    let out: Vec<Value> = sorted(json!({"v": 1}), docs.clone())
        .into_iter()
        .map(|d| d.get("v").cloned().unwrap_or(json!("missing")))
        .collect();
    assert_eq!(
        out,
        [
            json!(null),
            json!("missing"),
            json!(-7),
            json!(2.5),
            json!(u64::MAX),
            json!("a"),
            json!("b"),
            json!({"a": 1}),
            json!([1]),
            json!(false),
            json!(true)
        ]
    );
    let desc: Vec<Value> = sorted(json!({"v": -1}), docs)
        .into_iter()
        .filter_map(|d| d.get("v").cloned())
        .collect();
    assert_eq!(desc.first(), Some(&json!(true)));
    assert_eq!(desc.last(), Some(&json!(null)));
}

#[test]
fn sort_descending_with_ties_broken_by_later_keys() {
    let docs = vec![
        json!({"id": "c", "h": 100}),
        json!({"id": "a", "h": 200}),
        json!({"id": "b", "h": 100.0}),
        json!({"id": "d", "h": 300}),
        json!({"id": "a2", "h": 200}),
    ];
    let order = |spec: Value| -> Vec<String> {
        sorted(spec, docs.clone())
            .iter()
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        order(json!([["h", -1], ["id", 1]])),
        ["d", "a", "a2", "b", "c"]
    );
    assert_eq!(
        order(json!([{"h": -1}, {"id": -1}])),
        ["d", "a2", "a", "c", "b"]
    );
    assert_eq!(
        order(json!([["h", 1], ["id", -1]])),
        ["c", "b", "a2", "a", "d"]
    );
    assert_eq!(order(json!({"id": 1})), ["a", "a2", "b", "c", "d"]);
    // Stable on full ties.
    assert_eq!(order(json!({"h": 1})), ["c", "b", "a", "a2", "d"]);
    assert_eq!(order(json!(null)), ["c", "a", "b", "d", "a2"]);
}

#[test]
fn sort_dotted_and_indexed_keys() {
    let docs = vec![
        json!({"id": 1, "labels": {"hostname": "b"}, "raw": {"stats": [{"x": 3}]}}),
        json!({"id": 2, "labels": {"hostname": "a"}, "raw": {"stats": [{"x": 9}]}}),
        json!({"id": 3, "raw": {"stats": []}}),
    ];
    let order = |spec: Value| -> Vec<Value> {
        sorted(spec, docs.clone())
            .iter()
            .map(|d| d["id"].clone())
            .collect()
    };
    assert_eq!(
        order(json!({"labels.hostname": 1})),
        [json!(3), json!(2), json!(1)]
    );
    assert_eq!(
        order(json!({"raw.stats.0.x": -1})),
        [json!(2), json!(1), json!(3)]
    );
}

#[test]
fn sort_errors() {
    let e = |spec: Value| Sort::parse(&spec).map(|_| ()).unwrap_err().to_string();
    assert_eq!(e(json!({"h": 2})), "sort direction for `h` must be 1 or -1");
    assert_eq!(
        e(json!({"h": "desc"})),
        "sort direction for `h` must be 1 or -1"
    );
    assert_eq!(
        e(json!([["h", 0]])),
        "sort direction for `h` must be 1 or -1"
    );
    assert!(e(json!([["h"]])).starts_with("sort entry 0 must be"));
    assert!(e(json!([["h", 1], 5])).starts_with("sort entry 1 must be"));
    assert!(e(json!([{"a": 1, "b": 1}])).starts_with("sort entry 0 must be"));
    assert!(e(json!("h")).starts_with("`sort` must be a JSON object or an array"));
    assert!(e(json!({"": 1})).starts_with("invalid field path"));
    let many: Vec<Value> = (0..=MAX_SORT_KEYS)
        .map(|i| json!([format!("k{i}"), 1]))
        .collect();
    assert_eq!(
        e(Value::Array(many)),
        format!("sort has more than {MAX_SORT_KEYS} keys")
    );
    if !order::preserves_order() {
        assert!(e(json!({"h": -1, "id": 1})).contains("[[\"hashrate_hs\", -1], [\"id\", 1]]"));
    }
    assert_eq!(
        Sort::parse(&json!({"h": -1, "id": 1}))
            .map(|_| ())
            .unwrap_err()
            .code(),
        "ERR_QUERY_INVALID"
    );
}

// ---- run ----

#[test]
fn run_filters_counts_sorts_pages_projects() {
    let query = Query::parse(&json!({"type": "miner"})).unwrap_or_default();
    let sort = Sort::parse(&json!([["hashrate_hs", -1]])).unwrap_or_default();
    let fields = Projection::parse(&json!({"hashrate_hs": 1})).unwrap_or_default();
    let (total, page) = run(&fleet(), &query, &sort, &fields, 0, 100);
    assert_eq!(total, 3);
    assert_eq!(
        page,
        [
            json!({"id": "aa:bb:cc:00:00:01", "hashrate_hs": 2.0e14}),
            json!({"id": "aa:bb:cc:00:00:02", "hashrate_hs": 180_000_000_000_000_u64}),
            json!({"id": "aa:bb:cc:00:00:04", "hashrate_hs": 1.1e14}),
        ]
    );
    let (total, page) = run(&fleet(), &query, &sort, &fields, 1, 1);
    assert_eq!((total, page.len()), (3, 1));
    assert_eq!(page[0]["id"], "aa:bb:cc:00:00:02");
    let (total, page) = run(&fleet(), &query, &sort, &fields, 5, 10);
    assert_eq!((total, page.len()), (3, 0));
    let (total, page) = run(&fleet(), &query, &sort, &fields, 0, 0);
    assert_eq!((total, page.len()), (3, 0));
    let (total, page) = run(
        &fleet(),
        &Query::default(),
        &Sort::default(),
        &Projection::default(),
        2,
        10,
    );
    assert_eq!(total, 4);
    assert_eq!(page, [device(3), device(4)]);
}

// ---- order internals ----

#[test]
fn number_order_is_exact() {
    use serde_json::Number;
    let n = |v: Value| match v {
        Value::Number(n) => n,
        _ => Number::from(0),
    };
    let c = |a: Value, b: Value| order::compare_numbers(&n(a), &n(b));
    assert_eq!(c(json!(1), json!(1.0)), Ordering::Equal);
    assert_eq!(c(json!(0), json!(-0.0)), Ordering::Equal);
    assert_eq!(
        c(
            json!(9_007_199_254_740_993_u64),
            json!(9_007_199_254_740_992.0)
        ),
        Ordering::Greater
    );
    assert_eq!(
        c(json!(u64::MAX), json!(1.8446744073709552e19)),
        Ordering::Less
    );
    assert_eq!(c(json!(i64::MIN), json!(i64::MIN as f64)), Ordering::Equal);
    assert_eq!(c(json!(i64::MIN), json!(-1e19)), Ordering::Greater);
    assert_eq!(c(json!(-2), json!(-1.5)), Ordering::Less);
    assert_eq!(c(json!(2.5), json!(2)), Ordering::Greater);
    assert_eq!(c(json!(-1), json!(u64::MAX)), Ordering::Less);
}

// ---- property tests ----

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "$eq",
            "$ne",
            "$gt",
            "$gte",
            "$lt",
            "$lte",
            "$in",
            "$nin",
            "$exists",
            "$regex",
            "$options",
            "$not",
            "$and",
            "$or",
            "$nor",
            "$foo",
            "tags",
            "alerts.severity",
            "raw.stats.0.x",
            "labels.hostname",
            "temp_c",
            "a",
            "a.b",
            "0",
            "a.0",
            "",
            "a..b",
        ])
        .prop_map(str::to_owned),
        "[a-c$.0-1]{0,4}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z.*^$()\\[\\]+?|\\\\{}0-9]{0,8}".prop_map(Value::String),
        prop::sample::select(vec!["i", "imsx", "q", "^S", "("]).prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_queries_never_panic(filter in arb_json(), doc in arb_json()) {
        if let Ok(query) = Query::parse(&filter) {
            let _ = query.matches(&doc);
            for d in fleet() {
                let _ = query.matches(&d);
            }
        }
        if let Ok(fields) = Projection::parse(&filter) {
            let _ = fields.apply(&doc);
            let _ = fields.apply(&device(1));
        }
        if let Ok(sort) = Sort::parse(&filter) {
            let _ = sort.compare(&doc, &device(1));
        }
    }

    #[test]
    fn operator_shaped_queries_never_panic(
        field in arb_key(),
        op in arb_key(),
        operand in arb_json(),
        doc in arb_json(),
    ) {
        let filter = json!({ field: { op: operand } });
        if let Ok(query) = Query::parse(&filter) {
            let _ = query.matches(&doc);
            for d in fleet() {
                let _ = query.matches(&d);
            }
        }
    }

    #[test]
    fn value_order_is_total(a in arb_json(), b in arb_json(), c in arb_json()) {
        let ab = order::compare(&a, &b);
        prop_assert_eq!(ab, order::compare(&b, &a).reverse());
        prop_assert_eq!(order::compare(&a, &a), Ordering::Equal);
        let bc = order::compare(&b, &c);
        if ab != Ordering::Greater && bc != Ordering::Greater {
            prop_assert_ne!(order::compare(&a, &c), Ordering::Greater);
        }
        let mut docs: Vec<Value> = [a, b, c].into_iter().map(|v| json!({"v": v})).collect();
        let sort = Sort::parse(&json!([["v", -1]])).unwrap_or_default();
        docs.sort_by(|x, y| sort.compare(x, y));
    }
}
