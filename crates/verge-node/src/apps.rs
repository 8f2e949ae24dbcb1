//! The set of apps a node serves: for each app the versions taking traffic
//! with their weights, and one route table over every app.
//!
//! Routing is two-level. The node-wide table maps a host and path to an app
//! (the union of the routes of its live versions); the app then picks a
//! version by weight and that version's own table picks the component. So
//! versions of one app may differ in their routes, while two apps can never
//! claim the same route.
//!
//! **Invariant**: an [`Apps`] value is immutable; changes build a new one
//! that the node swaps in atomically.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use verge_router::{Route, RouteError, RouteTable};

use crate::AppRuntime;

/// One app: its live versions and how traffic is split between them.
pub struct AppSlot {
    versions: Vec<(Arc<AppRuntime>, u32)>,
    total: u32,
    turn: AtomicU32,
}

impl AppSlot {
    /// Live versions and their weights.
    pub fn versions(&self) -> &[(Arc<AppRuntime>, u32)] {
        &self.versions
    }

    /// The version that serves the next request. Weights are honoured
    /// exactly over every `total` requests (a rotating counter, not a
    /// random draw, over weights reduced by their common divisor: 50/50
    /// alternates, 90/10 sends 9 then 1).
    pub fn pick(&self) -> &Arc<AppRuntime> {
        if self.versions.len() > 1 && self.total > 0 {
            let mut n = self.turn.fetch_add(1, Ordering::Relaxed) % self.total;
            for (runtime, weight) in &self.versions {
                if n < *weight {
                    return runtime;
                }
                n -= weight;
            }
        }
        &self.versions[0].0
    }

    fn primary(&self) -> &Arc<AppRuntime> {
        let mut best = &self.versions[0];
        for v in &self.versions {
            if v.1 > best.1 {
                best = v;
            }
        }
        &best.0
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Every app served by a node.
#[derive(Default)]
pub struct Apps {
    slots: BTreeMap<String, Arc<AppSlot>>,
    table: RouteTable<Arc<AppSlot>>,
}

impl Apps {
    /// A copy with `key` serving `versions` (a version with weight 0 is
    /// dropped; no version at all removes the app).
    pub(crate) fn with(
        &self,
        key: String,
        versions: Vec<(Arc<AppRuntime>, u32)>,
    ) -> Result<Self, RouteError> {
        let versions: Vec<_> = versions.into_iter().filter(|(_, w)| *w > 0).collect();
        let mut slots = self.slots.clone();
        if versions.is_empty() {
            slots.remove(&key);
        } else {
            let divisor = versions.iter().fold(0, |g, (_, w)| gcd(g, *w));
            let versions: Vec<_> = versions
                .into_iter()
                .map(|(rt, w)| (rt, w / divisor.max(1)))
                .collect();
            let total = versions.iter().map(|(_, w)| w).sum();
            // Keep the rotation where it was, so a change of weights does
            // not restart the split from the first version.
            let turn = self
                .slots
                .get(&key)
                .map_or(0, |s| s.turn.load(Ordering::Relaxed));
            slots.insert(
                key.clone(),
                Arc::new(AppSlot {
                    versions,
                    total,
                    turn: AtomicU32::new(turn),
                }),
            );
        }
        Self::build(slots)
    }

    /// Apps served.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no app is served.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// App versions served, over all apps.
    pub fn version_count(&self) -> usize {
        self.slots.values().map(|s| s.versions.len()).sum()
    }

    /// A copy without `key`.
    pub(crate) fn without(&self, key: &str) -> Self {
        let mut slots = self.slots.clone();
        slots.remove(key);
        // Removing an app cannot create a conflict.
        Self::build(slots).unwrap_or_default()
    }

    fn build(slots: BTreeMap<String, Arc<AppSlot>>) -> Result<Self, RouteError> {
        let mut entries: Vec<(Route, Arc<AppSlot>)> = Vec::new();
        for slot in slots.values() {
            let mut routes: Vec<&Route> = Vec::new();
            for (runtime, _) in &slot.versions {
                for route in runtime.routes() {
                    if !routes.contains(&route) {
                        routes.push(route);
                    }
                }
            }
            entries.extend(routes.into_iter().map(|r| (r.clone(), slot.clone())));
        }
        let table = RouteTable::new(entries)?;
        Ok(Self { slots, table })
    }

    /// The app serving `host` and `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Arc<AppSlot>> {
        self.table.lookup(host, path).map(|(_, slot)| slot)
    }

    /// The app with this key.
    pub fn get(&self, key: &str) -> Option<&Arc<AppSlot>> {
        self.slots.get(key)
    }

    /// The heaviest version of the first app.
    pub(crate) fn first(&self) -> Option<Arc<AppRuntime>> {
        self.slots.values().next().map(|s| s.primary().clone())
    }
}
