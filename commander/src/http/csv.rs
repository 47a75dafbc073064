//! CSV rendering (RFC 4180 quoting) for device lists and history.

use std::collections::BTreeSet;

use serde_json::Value;

/// One CSV field, quoted when it must be.
pub fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => field(s),
        Some(Value::Array(items)) => field(
            &items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Some(other) => field(&other.to_string()),
    }
}

/// Fixed columns first, then every numeric top-level field any device has.
pub fn devices(docs: &[Value]) -> String {
    const FIXED: [&str; 11] = [
        "id",
        "type",
        "make",
        "model",
        "firmware",
        "sentry_id",
        "site",
        "rack",
        "status",
        "last_seen",
        "tags",
    ];
    let mut metrics = BTreeSet::new();
    for d in docs {
        if let Some(obj) = d.as_object() {
            for (k, v) in obj {
                if v.is_number() && !FIXED.contains(&k.as_str()) && k != "first_seen" && k != "ts" {
                    metrics.insert(k.clone());
                }
            }
        }
    }
    let mut out = String::new();
    let header: Vec<&str> = FIXED
        .iter()
        .copied()
        .chain(metrics.iter().map(String::as_str))
        .collect();
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    for d in docs {
        let row: Vec<String> = header.iter().map(|h| cell(d.get(*h))).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quotes_what_needs_quoting_and_unions_metric_columns() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        let csv = devices(&[
            json!({"id": "m1", "type": "miner", "hashrate_hs": 1.5, "tags": ["t-miner", "site-a"]}),
            json!({"id": "g,1", "type": "gpu", "temp_c": 60}),
        ]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], "id,type,make,model,firmware,sentry_id,site,rack,status,last_seen,tags,hashrate_hs,temp_c");
        assert_eq!(lines[1], "m1,miner,,,,,,,,,t-miner site-a,1.5,");
        assert_eq!(lines[2], "\"g,1\",gpu,,,,,,,,,,,60");
    }
}
