//! How often a PieProbe's last outcomes reach its status. Every probe Pod's outcome used to be
//! written at once: at `probePeriod: 1` on 1,000 nodes, 17 writes a second to one PieProbe,
//! each rewriting the whole object in etcd, though the status says the same thing (`OnTime`)
//! with another time and node. Now an outcome is written at once when it is the first of its
//! PieProbe and kind, or when its result differs from the last one written (a failure shows
//! without delay); otherwise it waits, replaced by any later one, until the last write is
//! `every` old.

use std::collections::HashMap;
use std::hash::Hash;

/// The status writes of outcomes, per key (namespace, PieProbe, probe kind); `A` is what
/// carries a write out.
#[derive(Debug)]
pub struct StatusThrottle<K, A> {
    every_ms: i64,
    entries: HashMap<K, Entry<A>>,
}

#[derive(Debug)]
struct Entry<A> {
    written_ms: i64,
    result: String,
    pending: Option<(String, A)>,
}

impl<K: Hash + Eq, A> StatusThrottle<K, A> {
    /// Writes of one key at most once per `every` (in ms), except when the result changes.
    pub fn new(every_ms: i64) -> StatusThrottle<K, A> {
        StatusThrottle {
            every_ms,
            entries: HashMap::new(),
        }
    }

    /// An outcome with `result` for `key` at `now_ms`: `Some(write)` to carry out now, or
    /// `None` when it waits for [`StatusThrottle::due`] (replacing any earlier waiting one).
    pub fn offer(&mut self, key: K, result: &str, write: A, now_ms: i64) -> Option<A> {
        if let Some(e) = self.entries.get_mut(&key)
            && e.result == result
            && now_ms - e.written_ms < self.every_ms
        {
            e.pending = Some((result.to_owned(), write));
            return None;
        }
        // The first outcome of its key, a changed result, or the last write `every` old.
        self.entries.insert(
            key,
            Entry {
                written_ms: now_ms,
                result: result.to_owned(),
                pending: None,
            },
        );
        Some(write)
    }

    /// The waiting writes whose key was last written `every` ago or more, now counted as
    /// written. Keys idle for ten periods are forgotten (a deleted PieProbe's).
    pub fn due(&mut self, now_ms: i64) -> Vec<A> {
        let every = self.every_ms;
        let mut out = Vec::new();
        for e in self.entries.values_mut() {
            if now_ms - e.written_ms >= every
                && let Some((result, write)) = e.pending.take()
            {
                e.written_ms = now_ms;
                e.result = result;
                out.push(write);
            }
        }
        self.entries
            .retain(|_, e| e.pending.is_some() || now_ms - e.written_ms < 10 * every);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outcome_and_every_change_are_written_at_once() {
        let mut t = StatusThrottle::new(30_000);
        assert_eq!(t.offer("p", "OnTime", 1, 0), Some(1));
        assert_eq!(
            t.offer("p", "OnTime", 2, 1_000),
            None,
            "same result, too soon"
        );
        assert_eq!(t.offer("p", "NotStarted", 3, 2_000), Some(3), "a change");
        assert_eq!(t.offer("q", "OnTime", 4, 2_000), Some(4), "another key");
        assert_eq!(t.offer("p", "OnTime", 5, 3_000), Some(5), "changed back");
        assert_eq!(t.due(100_000), Vec::<i32>::new(), "nothing waits");
    }

    #[test]
    fn a_waiting_outcome_is_replaced_by_later_ones_and_written_once_due() {
        let mut t = StatusThrottle::new(30_000);
        assert_eq!(t.offer("p", "OnTime", 1, 0), Some(1));
        assert_eq!(t.offer("p", "OnTime", 2, 10_000), None);
        assert_eq!(t.offer("p", "OnTime", 3, 20_000), None);
        assert_eq!(t.due(29_999), Vec::<i32>::new(), "not yet");
        assert_eq!(t.due(30_000), vec![3], "the latest only");
        assert_eq!(t.due(90_000), Vec::<i32>::new(), "written once");
        // Written at 30 s: the next one waits until 60 s.
        assert_eq!(t.offer("p", "OnTime", 4, 59_000), None);
        assert_eq!(t.offer("p", "OnTime", 5, 61_000), Some(5), "due by itself");
        assert_eq!(t.due(200_000), Vec::<i32>::new(), "4 was replaced by 5");
    }

    #[test]
    fn a_change_discards_the_waiting_outcome_it_supersedes() {
        let mut t = StatusThrottle::new(30_000);
        t.offer("p", "OnTime", 1, 0);
        assert_eq!(t.offer("p", "OnTime", 2, 1_000), None);
        assert_eq!(t.offer("p", "Late", 3, 2_000), Some(3));
        assert_eq!(t.due(100_000), Vec::<i32>::new(), "2 is older than 3");
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let mut t = StatusThrottle::new(1_000);
        t.offer("p", "OnTime", 1, 0);
        t.due(10_000);
        assert!(t.entries.is_empty());
        assert_eq!(
            t.offer("p", "OnTime", 2, 10_001),
            Some(2),
            "a first outcome again"
        );
    }
}
