//! Name patterns of the configuration: `*` stands for any run of
//! characters (dots included), everything else for itself. `kv.*` matches
//! `kv.store` and `kv.store.backup`; `*` matches every name.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A name pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// The pattern `text`.
    pub fn new(text: &str) -> Glob {
        Glob(text.to_owned())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it has a wildcard (else it is one exact name).
    pub fn is_pattern(&self) -> bool {
        self.0.contains('*')
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        // Without a `*`, the one part must be the whole name.
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for p in middle {
            match rest.find(p) {
                Some(i) => rest = &rest[i + p.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Glob, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("an empty name pattern matches nothing"));
        }
        Ok(Glob(s))
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn stars_match_runs_and_the_rest_matches_itself() {
        let g = |p: &str, n: &str| Glob::new(p).matches(n);
        assert!(g("kv.*", "kv.store") && g("kv.*", "kv.a.b") && !g("kv.*", "kvx") && !g("kv.*", "db.kv.x"));
        assert!(g("*", "anything") && g("kv.store", "kv.store") && !g("kv.store", "kv.stores"));
        assert!(g("*.front", "camera.front") && !g("*.front", "camera.back"));
        assert!(g("a*b*c", "abc") && g("a*b*c", "axxbyyc") && !g("a*b*c", "acb"));
        assert!(!g("ab*ba", "aba"), "the two ends may not overlap");
    }
}
