//! MongoDB-style queries over device documents, so `POST /api/v1/devices/query`
//! can filter, sort, page and project a fleet without a database behind it.
//!
//! The engine is pure: it never does I/O and never panics on untrusted input.
//! A request is parsed once ([`Query::parse`], [`Projection::parse`],
//! [`Sort::parse`]); every parse error is a [`QueryError`] whose text names the
//! bad operator or path. Evaluation after a successful parse is infallible.
//! [`run`] strings the pieces together: filter, count, sort, page, project.
//!
//! Semantics follow MongoDB where it matters to a fleet operator:
//! - a filter object is an implicit `$and` of its fields; a bare value means
//!   `$eq`; supported operators are `$eq $ne $gt $gte $lt $lte $in $nin
//!   $exists $regex`(+`$options`) `$not` on fields and `$and $or $nor` at
//!   filter level;
//! - dotted paths (`labels.hostname`, `alerts.severity`, `raw.stats.0.x`)
//!   walk objects; a non-numeric segment applied to an array walks into every
//!   object element, a numeric segment indexes the array;
//! - a condition on an array value matches if the whole array or any element
//!   matches (`{"tags": "t-miner"}`);
//! - `{"f": null}` (and `$in` with `null`) also matches a missing `f`;
//!   `$ne`/`$nin`/`$not` are plain negations, so they match missing fields.
//!
//! Cross-type comparison: `$gt $gte $lt $lte` only compare values of the same
//! type bracket (numbers with numbers, strings with strings, booleans with
//! booleans, objects with objects, arrays with arrays); a comparison across
//! brackets is false, as in MongoDB. Numbers compare by exact numeric value
//! whether stored as i64, u64 or f64. Strings compare by bytes (code points).
//! `$gte`/`$lte` with `null` behave like `$eq: null`; `$gt`/`$lt` with `null`
//! match nothing.
//!
//! Sorting uses a total order across brackets (see [`Sort`]), so mixed types
//! never make it fail.
//!
//! Bounds against hostile requests: a query may nest at most
//! [`MAX_DEPTH`] JSON levels and hold at most [`MAX_NODES`] JSON values;
//! paths have at most [`MAX_PATH_SEGMENTS`] segments; a query may hold at
//! most [`MAX_REGEXES`] regexes, each compiled once with a
//! [`REGEX_SIZE_LIMIT`]-byte size limit.

mod filter;
mod order;
mod path;
mod project;
mod sort;

#[cfg(test)]
mod tests;

use serde_json::Value;

pub use filter::Query;
pub use project::Projection;
pub use sort::Sort;

/// Deepest JSON nesting a query, projection or sort may have (the top-level
/// object is level 1).
pub const MAX_DEPTH: usize = 32;
/// Most JSON values (objects, arrays, scalars, counted recursively) a query,
/// projection or sort may hold.
pub const MAX_NODES: usize = 10_000;
/// Most segments a dotted field path may have.
pub const MAX_PATH_SEGMENTS: usize = 32;
/// Most `$regex` operators one query may hold.
pub const MAX_REGEXES: usize = 32;
/// Compiled-size limit of each regex, in bytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Most keys a sort may have.
pub const MAX_SORT_KEYS: usize = 32;

/// The field operators, as listed in error messages.
const FIELD_OPERATORS: &str = "$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not";
/// The filter-level operators, as listed in error messages.
const LOGICAL_OPERATORS: &str = "$and $or $nor";

/// Why a query, projection or sort was rejected. The text names the bad part
/// and is meant for the API caller; [`QueryError::code`] is the stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The filter, `fields` or `sort` was not of the JSON type it must be.
    #[error("{what} must be {expected}")]
    WrongType {
        /// Which part, e.g. "query" or "`fields`".
        what: &'static str,
        /// What it must be, e.g. "a JSON object".
        expected: &'static str,
    },
    /// A `$` operator that is not supported at a field.
    #[error("unknown operator `{op}` at `{path}`: supported are {FIELD_OPERATORS}")]
    UnknownOperator {
        /// The operator as written.
        op: String,
        /// The field path it was applied to.
        path: String,
    },
    /// A `$` key at filter level that is not `$and`, `$or` or `$nor`.
    #[error("unknown operator `{op}`{}: supported at filter level are {LOGICAL_OPERATORS}; field conditions are written {{\"field\": {{\"$gt\": 1}}}}", at_suffix(.at))]
    UnknownLogical {
        /// The operator as written.
        op: String,
        /// Where in the filter, e.g. "$and[1]"; empty at the top level.
        at: String,
    },
    /// An operator got an operand of the wrong shape.
    #[error("`{op}`{} needs {expected}", at_suffix(.at))]
    BadOperand {
        /// The operator, e.g. "$in".
        op: String,
        /// The field path or filter position; empty at the top level.
        at: String,
        /// What it needs, e.g. "an array".
        expected: &'static str,
    },
    /// An object mixing `$` operators with plain field names.
    #[error("the condition at `{path}` mixes `$` operators with plain fields (`{field}`); use either an operator object or a value to compare with")]
    MixedOperators {
        /// The field path.
        path: String,
        /// The first plain field found.
        field: String,
    },
    /// A `$regex` that does not compile or has unknown `$options`.
    #[error("invalid `$regex` at `{path}`: {reason}")]
    InvalidRegex {
        /// The field path.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A field path that is empty, has an empty segment, a `$` segment or too
    /// many segments.
    #[error("invalid field path `{path}`: {reason}")]
    BadPath {
        /// The path as written.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The request nests deeper than [`MAX_DEPTH`].
    #[error("{what} nests deeper than {limit} levels")]
    TooDeep {
        /// Which part.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The request holds more than [`MAX_NODES`] values.
    #[error("{what} holds more than {limit} values")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The query holds more than [`MAX_REGEXES`] regexes.
    #[error("query holds more than {limit} `$regex` operators")]
    TooManyRegexes {
        /// The limit.
        limit: usize,
    },
    /// A projection value that is not 1, 0, true or false.
    #[error("`fields.{path}` must be 1 or 0 (or true/false)")]
    BadProjectionValue {
        /// The field path.
        path: String,
    },
    /// A projection mixing inclusion and exclusion.
    #[error("`fields` mixes inclusion (`{include}`) and exclusion (`{exclude}`); use one mode (only `id` may be excluded in inclusion mode)")]
    MixedProjection {
        /// A path that was included.
        include: String,
        /// A path that was excluded.
        exclude: String,
    },
    /// Two projection paths where one is a prefix of the other.
    #[error("`fields` paths `{first}` and `{second}` collide: one contains the other")]
    ProjectionCollision {
        /// One path.
        first: String,
        /// The other.
        second: String,
    },
    /// A sort direction other than 1 or -1.
    #[error("sort direction for `{path}` must be 1 or -1")]
    BadSortDirection {
        /// The field path.
        path: String,
    },
    /// A malformed sort key in the array form.
    #[error("sort entry {index} must be a [\"field\", 1|-1] pair or a one-key object {{\"field\": 1|-1}}")]
    BadSortEntry {
        /// The position in the sort array.
        index: usize,
    },
    /// A sort object with several keys in a build whose JSON objects do not
    /// keep key order.
    #[error("a sort object with several keys loses its key order; give the order as an array, e.g. [[\"hashrate_hs\", -1], [\"id\", 1]]")]
    SortOrderLost,
    /// More than [`MAX_SORT_KEYS`] sort keys.
    #[error("sort has more than {limit} keys")]
    TooManySortKeys {
        /// The limit.
        limit: usize,
    },
}

impl QueryError {
    /// The machine-readable API error code for every query error.
    pub fn code(&self) -> &'static str {
        "ERR_QUERY_INVALID"
    }
}

/// " at `x`" or nothing when `at` is empty (the top level).
fn at_suffix(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!(" at `{at}`")
    }
}

/// Rejects a request value nesting deeper than [`MAX_DEPTH`] or holding more
/// than [`MAX_NODES`] values. Runs before any other parsing, so later
/// recursion over the value is bounded.
fn check_limits(value: &Value, what: &'static str) -> Result<(), QueryError> {
    let mut nodes = 0usize;
    walk_limits(value, 1, &mut nodes, what)
}

fn walk_limits(
    value: &Value,
    depth: usize,
    nodes: &mut usize,
    what: &'static str,
) -> Result<(), QueryError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(QueryError::TooLarge {
            what,
            limit: MAX_NODES,
        });
    }
    if depth > MAX_DEPTH {
        return Err(QueryError::TooDeep {
            what,
            limit: MAX_DEPTH,
        });
    }
    match value {
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| walk_limits(v, depth + 1, nodes, what)),
        Value::Object(map) => map
            .values()
            .try_for_each(|v| walk_limits(v, depth + 1, nodes, what)),
        _ => Ok(()),
    }
}

/// Filters `docs` with `query`, counts the matches, sorts them with `sort`
/// (stable: ties keep input order), skips `offset`, keeps at most `limit`
/// and projects what is left. Returns the number of matches before paging
/// and the page. A `limit` of 0 returns an empty page (a count-only query).
pub fn run<'a>(
    docs: impl IntoIterator<Item = &'a Value>,
    query: &Query,
    sort: &Sort,
    projection: &Projection,
    offset: usize,
    limit: usize,
) -> (usize, Vec<Value>) {
    let mut hits: Vec<&Value> = docs.into_iter().filter(|d| query.matches(d)).collect();
    let total = hits.len();
    if !sort.is_empty() {
        hits.sort_by(|a, b| sort.compare(a, b));
    }
    let page = hits
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|doc| projection.apply(doc))
        .collect();
    (total, page)
}
