//! Reading the audit log: `GET /v1/audit` (a page of entries) and
//! `GET /v1/audit/verify` (the check of the hash chain).
//!
//! **Invariants**
//! - [`AuditEntry`] is the entry as stored, field for field; its `hash`
//!   covers every other field, so these types never rename or reformat one.
//! - `next_after` is always present (null on the last page); `first_bad`
//!   and `problem` only when the chain is broken.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries with a greater `seq`.
    #[serde(default)]
    pub after: u64,
    /// At most this many entries (default 100, clamped to 1..1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One entry of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Position, from 1.
    #[schema(minimum = 1)]
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// Token id, or `-` when unknown.
    pub actor: String,
    /// Tenant of the actor, or `-`.
    pub tenant: String,
    /// What was attempted, e.g. `app.deploy`, `token.create`,
    /// `auth.failed`.
    pub action: String,
    /// What it applied to, e.g. `acme/shop`.
    pub target: String,
    /// How it ended: `ok`, `denied` or `failed`. Text, not an enum, so
    /// that a tampered entry is still shown as it is stored.
    #[schema(examples("ok", "denied", "failed"))]
    pub outcome: String,
    /// A short note (never a secret).
    pub detail: String,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev: String,
    /// sha256 of this entry's fields.
    pub hash: String,
}

/// Answer of `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Entries, oldest first.
    pub entries: Vec<AuditEntry>,
    /// When the page is full, the `seq` of its last entry, to pass as
    /// `after`; otherwise null.
    #[schema(required = true)]
    pub next_after: Option<u64>,
}

/// Answer of `GET /v1/audit/verify`; a broken chain is still a 200, with
/// `ok: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    /// Entries checked (before the first bad one, if any).
    pub entries: u64,
    /// Whether the whole chain is intact.
    pub ok: bool,
    /// The first entry that does not verify; absent when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub first_bad: Option<u64>,
    /// What is wrong there; absent when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub problem: Option<String>,
}
