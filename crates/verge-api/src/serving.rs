//! What the answer to a change (deploy, traffic, rollback, secret set or
//! delete) says about the nodes serving it: [`Confirmation`], flattened
//! into those answers, and in a cluster the [`Fleet`].
//!
//! **Invariants**
//! - `serving` is always present; `problem` only when `serving` is false;
//!   `nodes` only in a cluster, and only once this node serves the change.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whether the change is served, written into the answer to a change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Confirmation {
    /// Whether the node served the change before the apply timeout.
    pub serving: bool,
    /// Why the node does not serve it (it failed, or did not confirm in
    /// time); absent when `serving` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub problem: Option<String>,
    /// In a cluster, which nodes serve the change; absent for a standalone
    /// server or when this node does not serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub nodes: Option<Fleet>,
}

/// Which nodes of a cluster serve a change: those its placement selects
/// (nodes it does not select are not listed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Fleet {
    /// Nodes serving it.
    pub ready: Vec<String>,
    /// Nodes up but not serving it yet (still fetching or compiling, or
    /// failing: see `verge nodes`).
    pub lagging: Vec<String>,
    /// Nodes down or out of reach; they catch up when they return.
    pub down: Vec<String>,
    /// Fewest nodes that must serve the app (`[placement] min_replicas`);
    /// null when the app sets none.
    #[schema(required = true)]
    pub min_replicas: Option<u32>,
}
