//! Tokens: `GET|POST /v1/tokens` and `DELETE /v1/tokens/{id}`.
//!
//! **Invariants**
//! - A token's text (`verge_{id}_{secret}`) appears only in
//!   [`TokenCreated`], the answer to its creation; no other type holds it.
//! - [`Token`] always has `expires` and `revoked`, null when unset.
//! - [`CreateTokenRequest`] refuses unknown fields and unknown scopes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::scope::Scope;

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Tenant the token acts for; default: the caller's. Another tenant
    /// needs `tenants:admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Scopes to grant (at least one); each must be held by the caller.
    pub scopes: Vec<Scope>,
    /// What the token is for: at most 200 printable characters.
    #[serde(default)]
    pub name: String,
    /// Lifetime, e.g. `30days` or `12h`, at most 10 years; default: no
    /// expiry. Never later than the expiry of the token creating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// Token id: 16 hex digits, the part after `verge_`.
    pub id: String,
    /// Tenant the token acts for.
    pub tenant: String,
    /// Granted scopes, sorted. Text, not [`Scope`]s: a newer server may
    /// report scopes this client does not know.
    #[schema(value_type = Vec<Scope>)]
    pub scopes: Vec<String>,
    /// What the token is for.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Expiry (RFC 3339), or null if it never expires.
    #[schema(required = true)]
    pub expires: Option<String>,
    /// When it was revoked (RFC 3339), or null.
    #[schema(required = true)]
    pub revoked: Option<String>,
    /// Whether it can be used now.
    pub state: TokenState,
}

/// Whether a token can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// Neither revoked nor expired.
    Active,
    /// Revoked (whether or not it has expired since).
    Revoked,
    /// Past its expiry.
    Expired,
    /// A state this client does not know (from a newer server).
    #[serde(other)]
    Unknown,
}

impl TokenState {
    /// The state as the API writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
            TokenState::Unknown => "unknown",
        }
    }
}

/// Answer of `POST /v1/tokens` (201): the new token and, only here, its
/// text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// The token.
    #[serde(flatten)]
    pub info: Token,
    /// `verge_{id}_{secret}`: the bearer token. Shown once.
    pub token: String,
}

/// Answer of `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// The tokens of the caller's tenant, or of every tenant with
    /// `tenants:admin`.
    pub tokens: Vec<Token>,
}
