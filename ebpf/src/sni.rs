//! Route matching by server name: exact names first, then `*.suffix` wildcards.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// An exact server name, or a wildcard `*.example.com` matching exactly one more label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SniPattern {
    Exact(String),
    /// The suffix after `*.`, lower-cased.
    Wildcard(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SniPatternError(&'static str);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the same SNI pattern is given twice")]
pub struct DuplicatePattern;

fn valid_dns(name: &str) -> Result<(), SniPatternError> {
    if name.is_empty() || name.len() > 253 {
        return Err(SniPatternError("name is empty or longer than 253 bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(SniPatternError("empty or overlong label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SniPatternError(
                "only letters, digits, '-' and '_' are allowed in labels",
            ));
        }
    }
    Ok(())
}

impl FromStr for SniPattern {
    type Err = SniPatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim_end_matches('.').to_ascii_lowercase();
        if let Some(suffix) = s.strip_prefix("*.") {
            valid_dns(suffix)?;
            if !suffix.contains('.') {
                return Err(SniPatternError(
                    "a wildcard needs at least two labels after '*.'",
                ));
            }
            Ok(SniPattern::Wildcard(suffix.to_owned()))
        } else if s.contains('*') {
            Err(SniPatternError(
                "'*' is only allowed as the whole first label",
            ))
        } else {
            valid_dns(&s)?;
            Ok(SniPattern::Exact(s))
        }
    }
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniPattern::Exact(n) => f.write_str(n),
            SniPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Values keyed by SNI pattern; lookups try the exact name, then the wildcard for its parent.
pub struct SniTable<T> {
    exact: HashMap<String, T>,
    wildcard: HashMap<String, T>,
}

impl<T> Default for SniTable<T> {
    fn default() -> Self {
        SniTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> SniTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, pattern: SniPattern, value: T) -> Result<(), DuplicatePattern> {
        let (map, key) = match pattern {
            SniPattern::Exact(n) => (&mut self.exact, n),
            SniPattern::Wildcard(s) => (&mut self.wildcard, s),
        };
        if map.contains_key(&key) {
            return Err(DuplicatePattern);
        }
        map.insert(key, value);
        Ok(())
    }

    /// `server_name` as the parser returns it (lower-case, no trailing dot).
    pub fn lookup(&self, server_name: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(server_name) {
            return Some(v);
        }
        let (_, parent) = server_name.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// Every pattern with its value, exact names first, in no particular order otherwise.
    pub fn iter(&self) -> impl Iterator<Item = (SniPattern, &T)> {
        let exact = self
            .exact
            .iter()
            .map(|(n, v)| (SniPattern::Exact(n.clone()), v));
        let wildcard = self
            .wildcard
            .iter()
            .map(|(s, v)| (SniPattern::Wildcard(s.clone()), v));
        exact.chain(wildcard)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_wildcard_and_wildcards_match_one_label() {
        let mut t = SniTable::new();
        t.insert("*.repl.test".parse().unwrap(), 1).unwrap();
        t.insert("pg.repl.test".parse().unwrap(), 2).unwrap();
        assert_eq!(t.lookup("pg.repl.test"), Some(&2));
        assert_eq!(t.lookup("redis.repl.test"), Some(&1));
        assert_eq!(t.lookup("repl.test"), None);
        assert_eq!(t.lookup("a.b.repl.test"), None);
        assert!(t.insert("PG.Repl.Test.".parse().unwrap(), 3).is_err());
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "*", "*.com", "a.*.test", "bad name.test", "x..test"] {
            assert!(bad.parse::<SniPattern>().is_err(), "{bad:?}");
        }
    }
}
