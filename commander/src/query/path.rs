//! Dotted field paths and how they resolve against a document.

use serde_json::Value;

use super::{QueryError, MAX_PATH_SEGMENTS};

/// A parsed dotted path such as `labels.hostname` or `raw.stats.0.x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    name: String,
    /// Set when the segment is a canonical array index (`0`, `17`).
    index: Option<usize>,
}

/// What a path found in one document.
pub(crate) struct Resolved<'a> {
    /// The values at the end of the path (several when it crossed arrays).
    pub(crate) leaves: Vec<&'a Value>,
    /// Whether some branch of the walk found nothing.
    pub(crate) missing: bool,
}

impl Resolved<'_> {
    /// Whether the path exists (at least one value at its end).
    pub(crate) fn exists(&self) -> bool {
        !self.leaves.is_empty()
    }

    /// The values a condition is tested against: each leaf, and each element
    /// of a leaf that is an array (one level, as in MongoDB).
    pub(crate) fn candidates(&self) -> impl Iterator<Item = &Value> + '_ {
        self.leaves.iter().flat_map(|leaf| {
            let elements: &[Value] = match leaf {
                Value::Array(items) => items,
                _ => &[],
            };
            std::iter::once(*leaf).chain(elements.iter())
        })
    }
}

impl FieldPath {
    /// Parses a dotted path; rejects empty paths and segments, segments
    /// starting with `$` and paths over [`MAX_PATH_SEGMENTS`] segments.
    pub(crate) fn parse(text: &str) -> Result<Self, QueryError> {
        let bad = |reason| QueryError::BadPath {
            path: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("the path is empty"));
        }
        let mut segments = Vec::new();
        for name in text.split('.') {
            if name.is_empty() {
                return Err(bad("a segment is empty"));
            }
            if name.starts_with('$') {
                return Err(bad("a segment starts with `$`"));
            }
            if segments.len() == MAX_PATH_SEGMENTS {
                return Err(bad("the path has too many segments"));
            }
            segments.push(Segment {
                name: name.to_owned(),
                index: array_index(name),
            });
        }
        Ok(FieldPath {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The segment names in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(|s| s.name.as_str())
    }

    /// Walks `doc` the MongoDB way: objects by key; on an array a numeric
    /// segment indexes it and any other segment walks into each object
    /// element (scalar elements are skipped).
    pub(crate) fn resolve<'a>(&self, doc: &'a Value) -> Resolved<'a> {
        let mut current = vec![doc];
        let mut missing = false;
        for segment in &self.segments {
            let mut next = Vec::with_capacity(current.len());
            for value in current {
                match value {
                    Value::Object(map) => match map.get(&segment.name) {
                        Some(v) => next.push(v),
                        None => missing = true,
                    },
                    Value::Array(items) => match segment.index {
                        Some(i) => match items.get(i) {
                            Some(v) => next.push(v),
                            None => missing = true,
                        },
                        None => {
                            for item in items {
                                if let Value::Object(map) = item {
                                    match map.get(&segment.name) {
                                        Some(v) => next.push(v),
                                        None => missing = true,
                                    }
                                }
                            }
                        }
                    },
                    _ => missing = true,
                }
            }
            current = next;
        }
        if current.is_empty() {
            missing = true;
        }
        Resolved {
            leaves: current,
            missing,
        }
    }

    /// The single value at the path without walking into array elements
    /// (numeric segments still index arrays); used as a sort key.
    pub(crate) fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut current = doc;
        for segment in &self.segments {
            current = match current {
                Value::Object(map) => map.get(&segment.name)?,
                Value::Array(items) => items.get(segment.index?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// `Some(n)` for a canonical decimal index (`0`, `12`; not `01`, `+1`).
fn array_index(name: &str) -> Option<usize> {
    let canonical =
        name.bytes().all(|b| b.is_ascii_digit()) && (name == "0" || !name.starts_with('0'));
    if canonical {
        name.parse().ok()
    } else {
        None
    }
}
