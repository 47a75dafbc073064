//! Permissions: `type:level` entries such as `miner:rw` or `sentry:r`, and
//! roles (`role:operator`, a named set from `[roles]` in the config).
//!
//! Pure: no store, no HTTP. Parsing is strict: an unknown type, level or
//! role is an error, so a typo can neither silently grant nothing nor
//! everything. `rw` grants both levels; an admin holds every permission.

use std::collections::BTreeMap;

/// Device types (what a heartbeat's device `type` may be).
pub const DEVICE_TYPES: [&str; 7] = [
    "miner",
    "gpu",
    "host",
    "container",
    "powermeter",
    "relay",
    "runtime",
];

/// Every type a permission may name: the device types, then the API's own.
pub const TYPES: [&str; 13] = [
    "miner",
    "gpu",
    "host",
    "container",
    "powermeter",
    "relay",
    "runtime",
    "sentry",
    "token",
    "user",
    "audit",
    "action",
    "backup",
];

/// The prefix of a role reference in a user's permissions.
pub const ROLE_PREFIX: &str = "role:";

/// Longest role name.
const MAX_ROLE_NAME: usize = 64;

/// Reading or writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Read,
    Write,
}

impl Level {
    /// `r` or `w`.
    pub fn letter(self) -> &'static str {
        match self {
            Level::Read => "r",
            Level::Write => "w",
        }
    }
}

/// Named permission sets (`[roles]` in the commander config).
pub type Roles = BTreeMap<String, Vec<String>>;

/// Why a permission entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error("permission `{0}` is not type:level (for example miner:rw or role:operator)")]
    Malformed(String),
    #[error("permission `{text}` names an unknown type `{kind}`; types are {}", TYPES.join(", "))]
    UnknownType { text: String, kind: String },
    #[error("permission `{text}` has an unknown level `{level}`; levels are r, w and rw")]
    UnknownLevel { text: String, level: String },
    #[error("permission `{text}` names an unknown role; configured roles: {known}")]
    UnknownRole { text: String, known: String },
    #[error("role name `{0}` must be 1 to 64 characters of a-z, 0-9, `_` and `-`")]
    BadRoleName(String),
    #[error("role `{role}` includes `{text}`: a role lists type:level entries, not other roles")]
    NestedRole { role: String, text: String },
}

/// One parsed `type:level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub kind: &'static str,
    pub read: bool,
    pub write: bool,
}

impl Grant {
    /// The canonical text, e.g. `miner:rw`.
    pub fn text(&self) -> String {
        let level = match (self.read, self.write) {
            (true, true) => "rw",
            (true, false) => "r",
            (false, true) => "w",
            (false, false) => "",
        };
        format!("{}:{level}", self.kind)
    }
}

/// A user's permission entry: a grant or a role reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Grant(Grant),
    Role(String),
}

/// Parses `type:level` (no roles).
pub fn parse_grant(text: &str) -> Result<Grant, PermissionError> {
    let (kind, level) = text
        .split_once(':')
        .ok_or_else(|| PermissionError::Malformed(text.to_string()))?;
    let kind =
        TYPES
            .iter()
            .copied()
            .find(|t| *t == kind)
            .ok_or_else(|| PermissionError::UnknownType {
                text: text.to_string(),
                kind: kind.to_string(),
            })?;
    let (read, write) = match level {
        "r" => (true, false),
        "w" => (false, true),
        "rw" => (true, true),
        _ => {
            return Err(PermissionError::UnknownLevel {
                text: text.to_string(),
                level: level.to_string(),
            })
        }
    };
    Ok(Grant { kind, read, write })
}

fn valid_role_name(name: &str) -> bool {
    (1..=MAX_ROLE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses a user's entry: `type:level` or `role:NAME` (a role in `roles`).
pub fn parse_entry(text: &str, roles: &Roles) -> Result<Entry, PermissionError> {
    match text.strip_prefix(ROLE_PREFIX) {
        Some(name) => {
            if roles.contains_key(name) {
                Ok(Entry::Role(name.to_string()))
            } else {
                Err(PermissionError::UnknownRole {
                    text: text.to_string(),
                    known: if roles.is_empty() {
                        "none (add them under [roles] in the commander config)".into()
                    } else {
                        roles.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                })
            }
        }
        None => parse_grant(text).map(Entry::Grant),
    }
}

/// Checks role definitions: valid names, each entry a plain `type:level`.
pub fn validate_roles(roles: &Roles) -> Result<(), PermissionError> {
    for (name, entries) in roles {
        if !valid_role_name(name) {
            return Err(PermissionError::BadRoleName(name.clone()));
        }
        for text in entries {
            if text.starts_with(ROLE_PREFIX) {
                return Err(PermissionError::NestedRole {
                    role: name.clone(),
                    text: text.clone(),
                });
            }
            parse_grant(text)?;
        }
    }
    Ok(())
}

/// What a principal may do, with roles expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Every permission (admins).
    all: bool,
    /// Per type: (read, write).
    grants: BTreeMap<&'static str, (bool, bool)>,
}

impl Permissions {
    /// Every permission on every type.
    pub fn all() -> Self {
        Permissions {
            all: true,
            grants: BTreeMap::new(),
        }
    }

    fn add(&mut self, g: Grant) {
        let e = self.grants.entry(g.kind).or_default();
        e.0 |= g.read;
        e.1 |= g.write;
    }

    /// Expands `entries` with `roles`. Strict: the first bad entry is an error.
    pub fn resolve(entries: &[String], roles: &Roles) -> Result<Self, PermissionError> {
        let (permissions, mut errors) = Self::resolve_lenient(entries, roles);
        match errors.is_empty() {
            true => Ok(permissions),
            false => Err(errors.swap_remove(0)),
        }
    }

    /// Expands `entries`, skipping (and returning) those that no longer
    /// parse, e.g. a role removed from the config after the user was made:
    /// a bad entry grants nothing.
    pub fn resolve_lenient(entries: &[String], roles: &Roles) -> (Self, Vec<PermissionError>) {
        let mut out = Permissions::default();
        let mut errors = Vec::new();
        for text in entries {
            match parse_entry(text, roles) {
                Ok(Entry::Grant(g)) => out.add(g),
                Ok(Entry::Role(name)) => {
                    for role_entry in roles.get(&name).into_iter().flatten() {
                        match parse_grant(role_entry) {
                            Ok(g) => out.add(g),
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        (out, errors)
    }

    /// Whether `kind` may be read or written.
    pub fn allows(&self, kind: &str, level: Level) -> bool {
        if self.all {
            return true;
        }
        self.grants.get(kind).is_some_and(|(r, w)| match level {
            Level::Read => *r,
            Level::Write => *w,
        })
    }

    /// The device types that may be read.
    pub fn readable_device_types(&self) -> Vec<&'static str> {
        DEVICE_TYPES
            .iter()
            .copied()
            .filter(|t| self.allows(t, Level::Read))
            .collect()
    }

    /// Whether this holds every permission.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// The effective permissions as canonical `type:level` texts, by type.
    pub fn texts(&self) -> Vec<String> {
        if self.all {
            return TYPES.iter().map(|t| format!("{t}:rw")).collect();
        }
        TYPES
            .iter()
            .filter_map(|t| {
                self.grants.get(t).map(|(read, write)| {
                    Grant {
                        kind: t,
                        read: *read,
                        write: *write,
                    }
                    .text()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn levels_parse_and_rw_grants_both() {
        let p = Permissions::resolve(&strings(&["miner:rw", "host:r", "sentry:w"]), &Roles::new())
            .unwrap();
        assert!(p.allows("miner", Level::Read) && p.allows("miner", Level::Write));
        assert!(p.allows("host", Level::Read) && !p.allows("host", Level::Write));
        assert!(!p.allows("sentry", Level::Read) && p.allows("sentry", Level::Write));
        assert!(!p.allows("container", Level::Read));
        assert!(!p.allows("nonsense", Level::Read));
        assert_eq!(p.readable_device_types(), vec!["miner", "host"]);
        assert_eq!(p.texts(), strings(&["miner:rw", "host:r", "sentry:w"]));
        // Two entries for one type add up.
        let p = Permissions::resolve(&strings(&["miner:r", "miner:w"]), &Roles::new()).unwrap();
        assert_eq!(p.texts(), strings(&["miner:rw"]));
    }

    #[test]
    fn typos_are_errors_not_silent_grants() {
        let none = Roles::new();
        for (bad, want) in [
            ("miners:r", "unknown type `miners`"),
            ("Miner:r", "unknown type `Miner`"),
            ("miner:x", "unknown level `x`"),
            ("miner:wr", "unknown level `wr`"),
            ("miner:", "unknown level ``"),
            ("miner", "not type:level"),
            ("*:rw", "unknown type `*`"),
            ("", "not type:level"),
            (" miner:r", "unknown type ` miner`"),
            ("role:operator", "unknown role"),
        ] {
            let err = Permissions::resolve(&strings(&[bad]), &none).unwrap_err();
            assert!(err.to_string().contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn admins_hold_everything() {
        let p = Permissions::all();
        for t in TYPES {
            assert!(p.allows(t, Level::Read) && p.allows(t, Level::Write));
        }
        assert_eq!(p.readable_device_types(), DEVICE_TYPES.to_vec());
        assert!(p.is_all());
    }

    #[test]
    fn roles_expand_and_are_checked() {
        let mut roles = Roles::new();
        roles.insert("operator".into(), strings(&["miner:rw", "container:r"]));
        roles.insert("viewer".into(), strings(&["miner:r"]));
        validate_roles(&roles).unwrap();
        let p = Permissions::resolve(&strings(&["role:operator", "host:r"]), &roles).unwrap();
        assert!(p.allows("miner", Level::Write));
        assert!(p.allows("container", Level::Read) && !p.allows("container", Level::Write));
        assert!(p.allows("host", Level::Read));
        assert_eq!(
            parse_entry("role:viewer", &roles).unwrap(),
            Entry::Role("viewer".into())
        );
        let err = parse_entry("role:nope", &roles).unwrap_err().to_string();
        assert!(err.contains("operator, viewer"), "{err}");

        // A role that went away grants nothing, and the rest still holds.
        let (p, errors) = Permissions::resolve_lenient(&strings(&["role:gone", "miner:r"]), &roles);
        assert_eq!(errors.len(), 1);
        assert_eq!(p.texts(), strings(&["miner:r"]));

        let mut bad = Roles::new();
        bad.insert("ops".into(), strings(&["role:viewer"]));
        assert!(matches!(
            validate_roles(&bad),
            Err(PermissionError::NestedRole { .. })
        ));
        let mut bad = Roles::new();
        bad.insert("ops".into(), strings(&["miner:q"]));
        assert!(matches!(
            validate_roles(&bad),
            Err(PermissionError::UnknownLevel { .. })
        ));
        let mut bad = Roles::new();
        bad.insert("Ops Team".into(), strings(&["miner:r"]));
        assert!(matches!(
            validate_roles(&bad),
            Err(PermissionError::BadRoleName(_))
        ));
    }
}
