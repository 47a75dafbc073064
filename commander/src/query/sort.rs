//! Sort: ordering matching documents by one or more keys.

use std::cmp::Ordering;

use serde_json::Value;

use super::order::{compare, preserves_order};
use super::path::FieldPath;
use super::{check_limits, QueryError, MAX_SORT_KEYS};

/// A parsed sort specification.
///
/// Two forms are accepted:
/// - an array, which always keeps key order:
///   `[["hashrate_hs", -1], ["id", 1]]` (entries may also be one-key objects,
///   `[{"hashrate_hs": -1}, {"id": 1}]`);
/// - an object, `{"hashrate_hs": -1}`. serde_json in this workspace does not
///   keep object key order (no `preserve_order` feature), so an object with
///   several keys is rejected with [`QueryError::SortOrderLost`] rather than
///   silently sorted in alphabetical key order; if a build enables
///   `preserve_order`, multi-key objects are accepted in their written order.
///
/// Directions are `1` (ascending) or `-1` (descending). Keys are dotted
/// paths; numeric segments index arrays, and a path does not fan out over
/// array elements (an array value is compared as a whole). Missing values
/// sort as `null`. Values of different types follow MongoDB's BSON order:
/// null/missing < numbers < strings < objects < arrays < booleans; within a
/// type numbers compare numerically, strings by bytes, objects entry by entry,
/// arrays element by element. The default sort has no keys.
#[derive(Debug, Clone, Default)]
pub struct Sort {
    keys: Vec<(FieldPath, bool)>,
}

static NULL: Value = Value::Null;

impl Sort {
    /// Parses the object or array form; `null`, `{}` and `[]` mean no sort.
    pub fn parse(sort: &Value) -> Result<Sort, QueryError> {
        if !matches!(sort, Value::Null | Value::Object(_) | Value::Array(_)) {
            return Err(QueryError::WrongType {
                what: "`sort`",
                expected: "a JSON object or an array of [\"field\", 1|-1] pairs",
            });
        }
        check_limits(sort, "`sort`")?;
        let mut keys = Vec::new();
        match sort {
            Value::Object(map) => {
                if map.len() > 1 && !preserves_order() {
                    return Err(QueryError::SortOrderLost);
                }
                for (path, direction) in map {
                    keys.push(key(path, direction)?);
                }
            }
            Value::Array(entries) => {
                for (index, entry) in entries.iter().enumerate() {
                    let (path, direction) = match entry {
                        Value::Array(pair) => match pair.as_slice() {
                            [Value::String(path), direction] => (path, direction),
                            _ => return Err(QueryError::BadSortEntry { index }),
                        },
                        Value::Object(map) if map.len() == 1 => match map.iter().next() {
                            Some(entry) => entry,
                            None => return Err(QueryError::BadSortEntry { index }),
                        },
                        _ => return Err(QueryError::BadSortEntry { index }),
                    };
                    keys.push(key(path, direction)?);
                }
            }
            _ => {}
        }
        if keys.len() > MAX_SORT_KEYS {
            return Err(QueryError::TooManySortKeys {
                limit: MAX_SORT_KEYS,
            });
        }
        Ok(Sort { keys })
    }

    /// Whether there are no sort keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Orders two documents by the keys in turn; a tie on one key falls to
    /// the next; equal on all keys is `Equal`. A total order: safe for
    /// `sort_by` on any mix of types.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for (path, descending) in &self.keys {
            let x = path.get(a).unwrap_or(&NULL);
            let y = path.get(b).unwrap_or(&NULL);
            let ord = compare(x, y);
            let ord = if *descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    }
}

fn key(path: &str, direction: &Value) -> Result<(FieldPath, bool), QueryError> {
    let descending = match direction.as_i64() {
        Some(1) => false,
        Some(-1) => true,
        _ => {
            return Err(QueryError::BadSortDirection {
                path: path.to_owned(),
            })
        }
    };
    Ok((FieldPath::parse(path)?, descending))
}
