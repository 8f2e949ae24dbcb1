//! `GET /v1/status`: the server, the caller's token and its tenant's app
//! count. Needs a valid token but no scope (`verge login` checks a token
//! with it).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::scope::Scope;

/// The server version and store revision, the caller's token, and its
/// tenant's app count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The server answering.
    pub server: ServerInfo,
    /// The token of the request.
    pub token: CallerToken,
    /// Number of the tenant's apps.
    pub apps: u64,
}

/// The server answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// Verge version of the server.
    pub version: String,
    /// Current store revision.
    pub revision: u64,
}

/// The token of a request, as its bearer may see it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CallerToken {
    /// Token id: 16 hex digits, the part after `verge_`.
    pub id: String,
    /// Tenant the token acts for.
    pub tenant: String,
    /// Scopes the token holds. Text, not [`Scope`]s: a newer server may
    /// report scopes this client does not know.
    #[schema(value_type = Vec<Scope>)]
    pub scopes: Vec<String>,
}
