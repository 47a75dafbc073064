//! The filter: parsing a MongoDB-style query object and matching documents.

use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::order::{bracket, compare, equal};
use super::path::{FieldPath, Resolved};
use super::{check_limits, QueryError, MAX_REGEXES, REGEX_SIZE_LIMIT};

/// A parsed filter. Parse once with [`Query::parse`], then test any number of
/// documents with [`Query::matches`]. The default query matches everything.
#[derive(Debug, Clone, Default)]
pub struct Query {
    root: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    /// All operators must hold for the path.
    Field(FieldPath, Vec<Op>),
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Value),
    Ne(Value),
    Cmp(Bound, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Regex(Regex),
    /// True when not all of the inner operators hold.
    Not(Vec<Op>),
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Bound {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            Bound::Gt => ord == Ordering::Greater,
            Bound::Gte => ord != Ordering::Less,
            Bound::Lt => ord == Ordering::Less,
            Bound::Lte => ord != Ordering::Greater,
        }
    }
}

impl Query {
    /// Parses a filter object such as
    /// `{"type": "miner", "temp_c": {"$gt": 80}, "$or": [{…}, {…}]}`.
    /// An empty object matches every document.
    pub fn parse(filter: &Value) -> Result<Query, QueryError> {
        let Value::Object(map) = filter else {
            return Err(QueryError::WrongType {
                what: "query",
                expected: "a JSON object",
            });
        };
        check_limits(filter, "query")?;
        let mut parser = Parser { regexes: 0 };
        Ok(Query {
            root: parser.filter(map, "")?,
        })
    }

    /// Whether `doc` satisfies the filter.
    pub fn matches(&self, doc: &Value) -> bool {
        self.root.iter().all(|node| node.matches(doc))
    }
}

impl Node {
    fn matches(&self, doc: &Value) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.matches(doc)),
            Node::Or(nodes) => nodes.iter().any(|n| n.matches(doc)),
            Node::Nor(nodes) => !nodes.iter().any(|n| n.matches(doc)),
            Node::Field(path, ops) => {
                let found = path.resolve(doc);
                ops.iter().all(|op| op.matches(&found))
            }
        }
    }
}

impl Op {
    fn matches(&self, found: &Resolved<'_>) -> bool {
        match self {
            Op::Eq(v) => eq_matches(v, found),
            Op::Ne(v) => !eq_matches(v, found),
            Op::Cmp(bound, v) => cmp_matches(*bound, v, found),
            Op::In(vs) => vs.iter().any(|v| eq_matches(v, found)),
            Op::Nin(vs) => !vs.iter().any(|v| eq_matches(v, found)),
            Op::Exists(want) => found.exists() == *want,
            Op::Regex(re) => found
                .candidates()
                .any(|c| c.as_str().is_some_and(|s| re.is_match(s))),
            Op::Not(ops) => !ops.iter().all(|op| op.matches(found)),
        }
    }
}

/// `null` also matches a missing path; otherwise any candidate must equal.
fn eq_matches(value: &Value, found: &Resolved<'_>) -> bool {
    if value.is_null() {
        found.missing || found.candidates().any(Value::is_null)
    } else {
        found.candidates().any(|c| equal(c, value))
    }
}

/// Range comparisons hold only within one type bracket.
fn cmp_matches(bound: Bound, value: &Value, found: &Resolved<'_>) -> bool {
    if value.is_null() {
        return match bound {
            Bound::Gte | Bound::Lte => eq_matches(value, found),
            Bound::Gt | Bound::Lt => false,
        };
    }
    found
        .candidates()
        .any(|c| bracket(c) == bracket(value) && bound.holds(compare(c, value)))
}

struct Parser {
    regexes: usize,
}

impl Parser {
    /// A filter object: an implicit `$and` of its entries. `at` says where it
    /// sits (e.g. `$or[1]`) for error messages; empty at the top level.
    fn filter(&mut self, map: &Map<String, Value>, at: &str) -> Result<Vec<Node>, QueryError> {
        let mut nodes = Vec::with_capacity(map.len());
        for (key, value) in map {
            if key.starts_with('$') {
                let make: fn(Vec<Node>) -> Node = match key.as_str() {
                    "$and" => Node::And,
                    "$or" => Node::Or,
                    "$nor" => Node::Nor,
                    _ => {
                        return Err(QueryError::UnknownLogical {
                            op: key.clone(),
                            at: at.to_owned(),
                        })
                    }
                };
                nodes.push(make(self.logical(key, value, at)?));
            } else {
                let path = FieldPath::parse(key)?;
                let ops = self.condition(&path, value)?;
                nodes.push(Node::Field(path, ops));
            }
        }
        Ok(nodes)
    }

    /// The operand of `$and`/`$or`/`$nor`: a non-empty array of filters.
    fn logical(&mut self, op: &str, value: &Value, at: &str) -> Result<Vec<Node>, QueryError> {
        let bad = || QueryError::BadOperand {
            op: op.to_owned(),
            at: at.to_owned(),
            expected: "a non-empty array of filter objects",
        };
        let items = match value {
            Value::Array(items) if !items.is_empty() => items,
            _ => return Err(bad()),
        };
        let mut nodes = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Value::Object(map) = item else {
                return Err(bad());
            };
            let child_at = if at.is_empty() {
                format!("{op}[{i}]")
            } else {
                format!("{at}.{op}[{i}]")
            };
            nodes.push(Node::And(self.filter(map, &child_at)?));
        }
        Ok(nodes)
    }

    /// The value of a field entry: an operator object or a value for `$eq`.
    fn condition(&mut self, path: &FieldPath, value: &Value) -> Result<Vec<Op>, QueryError> {
        match operator_object(path, value)? {
            Some(map) => self.operators(path, map),
            None => Ok(vec![Op::Eq(value.clone())]),
        }
    }

    /// Every entry of an operator object (all keys start with `$`).
    fn operators(
        &mut self,
        path: &FieldPath,
        map: &Map<String, Value>,
    ) -> Result<Vec<Op>, QueryError> {
        let bad = |op: &str, expected| QueryError::BadOperand {
            op: op.to_owned(),
            at: path.as_str().to_owned(),
            expected,
        };
        let mut ops = Vec::with_capacity(map.len());
        for (key, operand) in map {
            let op = match key.as_str() {
                "$eq" => Op::Eq(operand.clone()),
                "$ne" => Op::Ne(operand.clone()),
                "$gt" => Op::Cmp(Bound::Gt, operand.clone()),
                "$gte" => Op::Cmp(Bound::Gte, operand.clone()),
                "$lt" => Op::Cmp(Bound::Lt, operand.clone()),
                "$lte" => Op::Cmp(Bound::Lte, operand.clone()),
                "$in" | "$nin" => {
                    let Value::Array(items) = operand else {
                        return Err(bad(key, "an array"));
                    };
                    if key == "$in" {
                        Op::In(items.clone())
                    } else {
                        Op::Nin(items.clone())
                    }
                }
                "$exists" => match operand {
                    Value::Bool(b) => Op::Exists(*b),
                    Value::Number(n) => Op::Exists(n.as_f64().is_some_and(|f| f != 0.0)),
                    _ => return Err(bad(key, "true or false")),
                },
                "$regex" => {
                    let options = match map.get("$options") {
                        None => "",
                        Some(Value::String(s)) => s,
                        Some(_) => return Err(bad("$options", "a string of regex flags")),
                    };
                    Op::Regex(self.regex(path, operand, options)?)
                }
                // Consumed with `$regex`.
                "$options" if map.contains_key("$regex") => continue,
                "$options" => return Err(bad(key, "a `$regex` beside it")),
                "$not" => {
                    let inner = match operator_object(path, operand)? {
                        Some(inner) if !inner.is_empty() => inner,
                        _ => {
                            return Err(bad(
                                key,
                                "an operator object such as {\"$gt\": 80} or {\"$regex\": \"^S2\"}",
                            ))
                        }
                    };
                    Op::Not(self.operators(path, inner)?)
                }
                "$and" | "$or" | "$nor" => {
                    return Err(QueryError::BadOperand {
                        op: key.clone(),
                        at: path.as_str().to_owned(),
                        expected: "to be at filter level, e.g. {\"$or\": [{\"temp_c\": {\"$gt\": 80}}, …]}, not inside a field",
                    })
                }
                _ => {
                    return Err(QueryError::UnknownOperator {
                        op: key.clone(),
                        path: path.as_str().to_owned(),
                    })
                }
            };
            ops.push(op);
        }
        Ok(ops)
    }

    fn regex(
        &mut self,
        path: &FieldPath,
        pattern: &Value,
        options: &str,
    ) -> Result<Regex, QueryError> {
        let invalid = |reason: String| QueryError::InvalidRegex {
            path: path.as_str().to_owned(),
            reason,
        };
        let Value::String(pattern) = pattern else {
            return Err(invalid("the pattern must be a string".to_owned()));
        };
        self.regexes += 1;
        if self.regexes > MAX_REGEXES {
            return Err(QueryError::TooManyRegexes { limit: MAX_REGEXES });
        }
        let mut builder = RegexBuilder::new(pattern);
        builder
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .nest_limit(64);
        for flag in options.chars() {
            match flag {
                'i' => {
                    builder.case_insensitive(true);
                }
                'm' => {
                    builder.multi_line(true);
                }
                's' => {
                    builder.dot_matches_new_line(true);
                }
                'x' => {
                    builder.ignore_whitespace(true);
                }
                // Patterns are always Unicode-aware.
                'u' => {}
                other => {
                    return Err(invalid(format!(
                        "unknown `$options` flag `{other}`: supported are i m s x u"
                    )))
                }
            }
        }
        builder.build().map_err(|e| invalid(regex_reason(&e)))
    }
}

/// Some(map) when `value` is an operator object (all keys start with `$`);
/// None when it is a plain value; an error when it mixes both.
fn operator_object<'a>(
    path: &FieldPath,
    value: &'a Value,
) -> Result<Option<&'a Map<String, Value>>, QueryError> {
    let Value::Object(map) = value else {
        return Ok(None);
    };
    if !map.keys().any(|k| k.starts_with('$')) {
        return Ok(None);
    }
    match map.keys().find(|k| !k.starts_with('$')) {
        Some(field) => Err(QueryError::MixedOperators {
            path: path.as_str().to_owned(),
            field: field.clone(),
        }),
        None => Ok(Some(map)),
    }
}

/// A one-line reason: the regex crate's syntax errors span several lines.
fn regex_reason(error: &regex::Error) -> String {
    match error {
        regex::Error::CompiledTooBig(limit) => {
            format!("the pattern compiles to more than {limit} bytes")
        }
        other => other
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }
}
