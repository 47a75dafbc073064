//! Equality and the total order over JSON values shared by filters and sorts.

use std::cmp::Ordering;
use std::sync::OnceLock;

use serde_json::{Number, Value};

/// Comparison stops below this depth and calls the rest equal; documents
/// parsed by serde_json are at most 128 deep, so this only guards the stack
/// against documents built in code.
const MAX_COMPARE_DEPTH: usize = 256;

/// The type bracket of a value in MongoDB's BSON order:
/// null < numbers < strings < objects < arrays < booleans.
pub(crate) fn bracket(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Number(_) => 1,
        Value::String(_) => 2,
        Value::Object(_) => 3,
        Value::Array(_) => 4,
        Value::Bool(_) => 5,
    }
}

/// A total order over all JSON values: first by [`bracket`], then numbers by
/// exact value, strings by bytes, objects entry by entry (key, then value, in
/// map order), arrays element by element, `false < true`.
pub(crate) fn compare(a: &Value, b: &Value) -> Ordering {
    compare_at(a, b, 0)
}

/// Equality consistent with [`compare`]: `1 == 1.0`, objects regardless of
/// key order (serde_json keeps keys sorted unless `preserve_order` is on).
pub(crate) fn equal(a: &Value, b: &Value) -> bool {
    compare(a, b) == Ordering::Equal
}

fn compare_at(a: &Value, b: &Value, depth: usize) -> Ordering {
    if depth > MAX_COMPARE_DEPTH {
        return Ordering::Equal;
    }
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (u, v) in x.iter().zip(y) {
                let ord = compare_at(u, v, depth + 1);
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            if !preserves_order() {
                return compare_entries(x.iter(), y.iter(), x.len(), y.len(), depth);
            }
            // With insertion order, sort the entries so that equality does
            // not depend on key order.
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            compare_entries(xs.into_iter(), ys.into_iter(), x.len(), y.len(), depth)
        }
        _ => bracket(a).cmp(&bracket(b)),
    }
}

fn compare_entries<'a>(
    xs: impl Iterator<Item = (&'a String, &'a Value)>,
    ys: impl Iterator<Item = (&'a String, &'a Value)>,
    x_len: usize,
    y_len: usize,
    depth: usize,
) -> Ordering {
    for ((xk, xv), (yk, yv)) in xs.zip(ys) {
        let ord = xk
            .as_bytes()
            .cmp(yk.as_bytes())
            .then_with(|| compare_at(xv, yv, depth + 1));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    x_len.cmp(&y_len)
}

/// Whether this build's `serde_json::Map` keeps insertion order (the
/// `preserve_order` feature, which Cargo may enable for the whole build).
pub(crate) fn preserves_order() -> bool {
    static PRESERVES: OnceLock<bool> = OnceLock::new();
    *PRESERVES.get_or_init(|| {
        let mut map = serde_json::Map::new();
        map.insert("b".to_owned(), Value::Null);
        map.insert("a".to_owned(), Value::Null);
        map.keys().next().is_some_and(|k| k == "b")
    })
}

enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Exact numeric comparison across i64, u64 and f64 (NaN, which serde_json
/// cannot hold anyway, sorts below every number).
pub(crate) fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => compare_floats(x, y),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

fn compare_floats(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // Neither is NaN, so partial_cmp is total here (and -0.0 == 0.0).
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// Compares an integer in the i64/u64 range with a float exactly.
fn compare_int_float(i: i128, f: f64) -> Ordering {
    // 2^64 and -2^63 are exact in f64.
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= TWO_POW_64 {
        return Ordering::Less;
    }
    if f < MINUS_TWO_POW_63 {
        return Ordering::Greater;
    }
    // Within [-2^63, 2^64) the integral part converts to i128 exactly.
    let whole = f.trunc();
    match i.cmp(&(whole as i128)) {
        Ordering::Equal if f > whole => Ordering::Less,
        Ordering::Equal if f < whole => Ordering::Greater,
        ord => ord,
    }
}
