//! Projection: which fields of each matching document to return.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::path::FieldPath;
use super::{check_limits, QueryError};

/// The top-level field kept in inclusion mode unless excluded explicitly.
const ID: &str = "id";

/// A parsed `fields` object: inclusion (`{"id": 1, "hashrate_hs": 1}`) or
/// exclusion (`{"raw": 0}`), never both, except that `"id": 0` is allowed in
/// inclusion mode. Inclusion always keeps `id` unless `"id": 0` is given.
/// Dotted paths select inside objects and inside each object element of
/// arrays (`{"labels.hostname": 1}` → `{"labels": {"hostname": …}}`); numeric
/// segments name object keys here, not array positions (as in MongoDB). The
/// default projection returns whole documents.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    mode: Mode,
}

#[derive(Debug, Clone, Default)]
enum Mode {
    #[default]
    All,
    Include(Tree),
    Exclude(Tree),
}

/// Path segments as a tree: a leaf selects the whole value below it.
#[derive(Debug, Clone, Default)]
struct Tree(BTreeMap<String, Node>);

#[derive(Debug, Clone)]
enum Node {
    Leaf,
    Branch(Tree),
}

impl Projection {
    /// Parses a `fields` object; `null` or `{}` returns whole documents.
    /// Values are 1/0 or true/false.
    pub fn parse(fields: &Value) -> Result<Projection, QueryError> {
        let map = match fields {
            Value::Null => return Ok(Projection::default()),
            Value::Object(map) => map,
            _ => {
                return Err(QueryError::WrongType {
                    what: "`fields`",
                    expected: "a JSON object",
                })
            }
        };
        check_limits(fields, "`fields`")?;
        let mut id = None;
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for (key, value) in map {
            let keep = match value {
                Value::Bool(b) => *b,
                Value::Number(n) if n.as_f64() == Some(1.0) => true,
                Value::Number(n) if n.as_f64() == Some(0.0) => false,
                _ => return Err(QueryError::BadProjectionValue { path: key.clone() }),
            };
            let path = FieldPath::parse(key)?;
            if key == ID {
                id = Some(keep);
            } else if keep {
                include.push(path);
            } else {
                exclude.push(path);
            }
        }
        if let (Some(i), Some(e)) = (include.first(), exclude.first()) {
            return Err(QueryError::MixedProjection {
                include: i.as_str().to_owned(),
                exclude: e.as_str().to_owned(),
            });
        }
        let mode = if !include.is_empty() {
            let mut tree = Tree::default();
            for path in &include {
                tree.insert(path, &include)?;
            }
            if id != Some(false) && !tree.0.contains_key(ID) {
                tree.0.insert(ID.to_owned(), Node::Leaf);
            }
            Mode::Include(tree)
        } else {
            let mut tree = Tree::default();
            for path in &exclude {
                tree.insert(path, &exclude)?;
            }
            match id {
                Some(false) => {
                    if !tree.0.contains_key(ID) {
                        tree.0.insert(ID.to_owned(), Node::Leaf);
                    }
                    Mode::Exclude(tree)
                }
                Some(true) if exclude.is_empty() => {
                    tree.0.insert(ID.to_owned(), Node::Leaf);
                    Mode::Include(tree)
                }
                _ if exclude.is_empty() => Mode::All,
                _ => Mode::Exclude(tree),
            }
        };
        Ok(Projection { mode })
    }

    /// Whether this projection returns whole documents.
    pub fn is_all(&self) -> bool {
        matches!(self.mode, Mode::All)
    }

    /// The projected copy of `doc`. A document that is not an object is
    /// returned unchanged.
    pub fn apply(&self, doc: &Value) -> Value {
        match (&self.mode, doc) {
            (Mode::Include(tree), Value::Object(map)) => Value::Object(tree.include(map)),
            (Mode::Exclude(tree), Value::Object(map)) => Value::Object(tree.exclude(map)),
            _ => doc.clone(),
        }
    }
}

impl Tree {
    /// Adds `path`; rejects it when it contains or is contained in a path
    /// already added (`all` is searched to name the other one).
    fn insert(&mut self, path: &FieldPath, all: &[FieldPath]) -> Result<(), QueryError> {
        let names: Vec<&str> = path.names().collect();
        let Some((last, parents)) = names.split_last() else {
            return Ok(());
        };
        let collision = || {
            let other = all
                .iter()
                .find(|o| o.as_str() != path.as_str() && (is_prefix(o, path) || is_prefix(path, o)))
                .map_or_else(String::new, |o| o.as_str().to_owned());
            QueryError::ProjectionCollision {
                first: other,
                second: path.as_str().to_owned(),
            }
        };
        let mut tree = self;
        for name in parents {
            let node = tree
                .0
                .entry((*name).to_owned())
                .or_insert_with(|| Node::Branch(Tree::default()));
            tree = match node {
                Node::Branch(sub) => sub,
                Node::Leaf => return Err(collision()),
            };
        }
        if tree.0.contains_key(*last) {
            return Err(collision());
        }
        tree.0.insert((*last).to_owned(), Node::Leaf);
        Ok(())
    }

    fn include(&self, map: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, node) in &self.0 {
            let Some(value) = map.get(key) else {
                continue;
            };
            let kept = match node {
                Node::Leaf => Some(value.clone()),
                Node::Branch(sub) => sub.include_value(value),
            };
            if let Some(kept) = kept {
                out.insert(key.clone(), kept);
            }
        }
        out
    }

    /// A sub-path applied to a value: objects keep the selected fields,
    /// arrays keep their object (and array) elements projected, scalars are
    /// dropped.
    fn include_value(&self, value: &Value) -> Option<Value> {
        match value {
            Value::Object(map) => Some(Value::Object(self.include(map))),
            Value::Array(items) => Some(Value::Array(
                items.iter().filter_map(|v| self.include_value(v)).collect(),
            )),
            _ => None,
        }
    }

    fn exclude(&self, map: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, value) in map {
            match self.0.get(key) {
                None => {
                    out.insert(key.clone(), value.clone());
                }
                Some(Node::Leaf) => {}
                Some(Node::Branch(sub)) => {
                    out.insert(key.clone(), sub.exclude_value(value));
                }
            }
        }
        out
    }

    fn exclude_value(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(self.exclude(map)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.exclude_value(v)).collect())
            }
            other => other.clone(),
        }
    }
}

/// Whether `a`'s segments are a proper or equal prefix of `b`'s.
fn is_prefix(a: &FieldPath, b: &FieldPath) -> bool {
    let mut bs = b.names();
    a.names().all(|n| bs.next() == Some(n))
}
