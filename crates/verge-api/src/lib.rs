//! The wire contract of the control API (`/v1`): the JSON bodies and query
//! strings of every endpoint, shared by the server (`verge-control`) and
//! the CLI (`verge`), with the OpenAPI schema of each (`utoipa::ToSchema`).
//!
//! One module per area of the API: [`apps`], [`deploy`], [`secrets`],
//! [`kv`], [`tokens`], [`audit`], [`usage`], [`nodes`], plus what several
//! share: [`scope`] (token scopes), [`version`] (`v3`), [`serving`] (what a
//! change's answer says about the nodes serving it), [`status`] and
//! [`error`] (the one error body).
//!
//! **Invariants**
//! - The JSON is exactly what the server answered before these types
//!   existed: same field names, the same fields omitted when empty and the
//!   same ones present as `null`, versions written `v3`. Changing a type
//!   here changes the wire: old CLIs and scripts read it.
//! - Request types refuse unknown fields where the server always did
//!   (`deny_unknown_fields`); response types accept unknown fields, so a
//!   newer server may add some without breaking older clients.
//! - Every type and field has a `///` doc: it is the OpenAPI description.
//!
//! **API boundary**: plain data and parsing only. No HTTP framework, no
//! wasmtime, no other Verge crate; what a handler checks beyond the shape
//! (names, limits, grants) stays in the handler.

#![forbid(unsafe_code)]

pub mod apps;
pub mod audit;
pub mod deploy;
pub mod error;
pub mod kv;
pub mod nodes;
pub mod scope;
pub mod secrets;
pub mod serving;
pub mod status;
pub mod tokens;
pub mod usage;
pub mod version;

pub use apps::{
    AppChanged, AppDeleted, AppList, AppSummary, LogLine, LogsQuery, RollbackRequest, SplitEntry,
    TrafficRequest, TrafficShare, VersionInfo, VersionList,
};
pub use audit::{AuditEntry, AuditPage, AuditQuery, Verification};
pub use deploy::{BlobUploaded, DeployRequest, DeployResponse};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use kv::{KeyPage, KvListQuery};
pub use nodes::{NodeList, NodeState, NodeStatus};
pub use scope::{Scope, UnknownScope};
pub use secrets::{SecretDeleted, SecretInfo, SecretList, SecretSet};
pub use serving::{Confirmation, Fleet};
pub use status::{CallerToken, ServerInfo, Status};
pub use tokens::{CreateTokenRequest, Token, TokenCreated, TokenList, TokenState};
pub use usage::{Cost, Granularity, UsagePage, UsageParams, UsageRow};
pub use version::{InvalidVersion, VersionName};

/// The raw bytes of a body that is not JSON: a component, a secret's value
/// or a key-value value (`application/octet-stream`).
#[derive(Debug, Clone, utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawBody(pub Vec<u8>);

#[cfg(test)]
mod tests;
