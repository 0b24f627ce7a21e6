//! What one watch has seen, so that a re-list reports what was deleted meanwhile.
//!
//! A watch that restarts (its resourceVersion expired, the API server restarted) lists again
//! (`Init`, `InitApply`..., `InitDone`) and sends no `Delete` for objects that went away in the
//! gap. [`Relist`] remembers every key (with a value, e.g. a fingerprint) and, when a list
//! completes, returns the keys that list did not contain.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// The keys (and a value per key) one watch has seen.
#[derive(Debug)]
pub struct Relist<K, V = ()> {
    known: HashMap<K, V>,
    listing: Option<HashSet<K>>,
}

impl<K, V> Default for Relist<K, V> {
    fn default() -> Self {
        Relist {
            known: HashMap::new(),
            listing: None,
        }
    }
}

impl<K: Hash + Eq + Clone, V> Relist<K, V> {
    /// A (re-)list starts.
    pub fn init(&mut self) {
        self.listing = Some(HashSet::new());
    }

    /// `key` exists, now with `value`; returns its previous value (`None`: new).
    pub fn apply(&mut self, key: K, value: V) -> Option<V> {
        if let Some(set) = &mut self.listing {
            set.insert(key.clone());
        }
        self.known.insert(key, value)
    }

    /// `key` was deleted; returns its value if it was known.
    pub fn delete(&mut self, key: &K) -> Option<V> {
        self.known.remove(key)
    }

    /// The list is complete: the keys it did not contain are gone (and forgotten). Outside a
    /// list nothing is gone.
    pub fn init_done(&mut self) -> Vec<K> {
        let Some(listed) = self.listing.take() else {
            return Vec::new();
        };
        let gone: Vec<K> = self
            .known
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for k in &gone {
            self.known.remove(k);
        }
        gone
    }

    /// Keys known (tests read it).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Nothing known (tests read it).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_reports_what_went_away_in_the_gap() {
        let mut seen: Relist<&str, u64> = Relist::default();
        seen.init();
        assert_eq!(seen.apply("a", 1), None);
        assert_eq!(seen.apply("b", 2), None);
        assert!(seen.init_done().is_empty());
        assert_eq!(
            seen.apply("b", 3),
            Some(2),
            "an update returns the old value"
        );
        // The watch restarts; "a" was deleted while it was down.
        seen.init();
        seen.apply("b", 3);
        seen.apply("c", 4);
        assert_eq!(seen.init_done(), ["a"]);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.delete(&"c"), Some(4));
        assert_eq!(seen.delete(&"c"), None, "deleted once");
        assert!(seen.init_done().is_empty(), "no list in progress");
    }
}
