//! `GET /v1/nodes`: the nodes of the cluster as the answering node sees
//! them (operators only, `tenants:admin`); a standalone server lists
//! itself.
//!
//! **Invariant**: a [`NodeStatus`] is a node's own report (what it says
//! of itself every heartbeat) plus what the answering node observed of it
//! (`status`, `seen_ms`, `this_node`, `rtt_ms`), in one flat object.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// Every node heard of in the last day, sorted by name.
    pub nodes: Vec<NodeStatus>,
}

/// A node as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    /// The node's name (`--node-name`).
    pub name: String,
    /// Its placement labels.
    pub labels: BTreeMap<String, String>,
    /// The Verge version it runs.
    pub version: String,
    /// Where its ingress is reached, if advertised; null otherwise.
    #[schema(required = true)]
    pub addr: Option<String>,
    /// When it started (Unix seconds).
    pub started: u64,
    /// When it sent its latest report (Unix milliseconds, its own clock).
    pub sent: u64,
    /// The state revision the node serves: every change up to it is
    /// applied.
    pub applied: u64,
    /// Apps it serves.
    pub apps: u64,
    /// Apps (`tenant/app`) it could not load, with the revision that
    /// failed.
    pub failed: BTreeMap<String, u64>,
    /// The host's one-minute load average.
    pub load: f64,
    /// Bytes of usage summaries sent to the cluster since the node started.
    #[serde(default)]
    #[schema(required = true)]
    pub uplink_bytes: u64,
    /// Whether it serves, as far as the answering node knows.
    pub status: NodeState,
    /// Milliseconds since its latest report arrived.
    pub seen_ms: u64,
    /// Whether it is the node answering.
    pub this_node: bool,
    /// Averaged round trip from the answering node, in milliseconds; null
    /// until measured.
    #[schema(required = true)]
    pub rtt_ms: Option<f64>,
}

/// Whether a node serves, as the answering node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Reporting.
    Up,
    /// Silent for three heartbeats.
    Down,
    /// The answering node, cut off from the cluster (it serves from its
    /// replica and refuses writes).
    Degraded,
    /// Another node, while the answering one is cut off; also any state
    /// this client does not know (from a newer server).
    #[serde(other)]
    Unknown,
}

impl NodeState {
    /// The state as the API writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Degraded => "degraded",
            NodeState::Unknown => "unknown",
        }
    }
}
