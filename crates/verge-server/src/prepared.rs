//! The compiled versions a node keeps ready, keyed by app, version number
//! and digest, so the sync that follows a deploy swaps in the very runtime
//! the deploy compiled.
//!
//! A version is kept while the store records it as live (the sync says so
//! with [`Prepared::retain`]) or while a deploy or traffic change that
//! prepared it is still under way (a *hold*, taken by
//! [`Prepared::hold`] and given back by [`Prepared::release`]).
//!
//! **Invariant**: an entry with no hold that the last `retain` of its app
//! did not keep is gone: a deploy that fails after compiling (a refused
//! route, a conflict, a client that went away) leaves nothing behind, so
//! failed deploys cannot grow the node's memory.

use std::collections::HashMap;
use std::sync::Mutex;

/// App (`tenant/app`), version number, version digest.
pub(crate) type PreparedKey = (String, u32, String);

/// Prepared values (compiled runtimes) with their holds.
pub(crate) struct Prepared<T> {
    entries: Mutex<HashMap<PreparedKey, Entry<T>>>,
}

struct Entry<T> {
    value: T,
    /// Deploys or traffic changes under way that prepared it.
    holds: usize,
    /// Whether the last `retain` of its app kept it (the store records it).
    recorded: bool,
}

impl<T: Clone> Prepared<T> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PreparedKey, Entry<T>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value prepared under `key`, if any.
    pub(crate) fn get(&self, key: &PreparedKey) -> Option<T> {
        self.lock().get(key).map(|e| e.value.clone())
    }

    /// Keeps `value` under `key` unless one is there already (two
    /// compiles raced); returns the one kept. Without a hold or a
    /// `retain` keeping it, it goes at the next `retain` of its app.
    pub(crate) fn insert(&self, key: PreparedKey, value: T) -> T {
        self.with_entry(key, value, |entry| entry.value.clone())
    }

    /// Holds `key` (inserting `value` if it went meanwhile) until
    /// [`Prepared::release`].
    pub(crate) fn hold(&self, key: PreparedKey, value: T) {
        self.with_entry(key, value, |entry| entry.holds += 1);
    }

    /// Runs `f` on the entry of `key`, made with `value` if there is none.
    fn with_entry<R>(&self, key: PreparedKey, value: T, f: impl FnOnce(&mut Entry<T>) -> R) -> R {
        let mut entries = self.lock();
        let entry = entries.entry(key).or_insert(Entry {
            value,
            holds: 0,
            recorded: false,
        });
        f(entry)
    }

    /// Gives back a hold: the entry goes unless the store records it or
    /// another hold remains.
    pub(crate) fn release(&self, key: &PreparedKey) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.holds = entry.holds.saturating_sub(1);
            if entry.holds == 0 && !entry.recorded {
                entries.remove(key);
            }
        }
    }

    /// The store records exactly `keep` (number, digest) as the live
    /// versions of `app`: those are kept, held ones stay until released,
    /// the rest go.
    pub(crate) fn retain(&self, app: &str, keep: &[(u32, String)]) {
        self.lock().retain(|(a, n, d), entry| {
            if a != app {
                return true;
            }
            entry.recorded = keep.iter().any(|(kn, kd)| kn == n && kd == d);
            entry.recorded || entry.holds > 0
        });
    }

    /// How many values are kept (for tests and metrics).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests;
