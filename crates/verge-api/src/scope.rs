//! Token scopes: what a bearer token may do. [`Scope`] is the closed set
//! the server grants (`crates/verge-control/src/auth.rs` `SCOPES`), each
//! written on the wire as `area:verb` (`apps:read`).
//!
//! **Invariants**
//! - [`Scope::ALL`] lists every scope, in the order the server documents
//!   them; `as_str`, `FromStr`, `Display` and serde agree on the spelling.
//! - Scopes order by their text (`apps:delete` < `apps:deploy` <
//!   `apps:read`), as the server sorts a new token's scopes, so a sorted
//!   list reads the same as before scopes were typed.
//! - Parsing an unknown scope fails with [`UnknownScope`], whose message
//!   lists the valid ones; nothing unknown is ever carried along.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// A permission of a token. A token may only grant scopes its creator
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub enum Scope {
    /// Read apps, versions, logs and secret names (`apps:read`).
    #[serde(rename = "apps:read")]
    AppsRead,
    /// Upload components, deploy versions, change traffic and roll back
    /// (`apps:deploy`).
    #[serde(rename = "apps:deploy")]
    AppsDeploy,
    /// Delete apps (`apps:delete`).
    #[serde(rename = "apps:delete")]
    AppsDelete,
    /// Set and delete apps' secrets (`secrets:write`).
    #[serde(rename = "secrets:write")]
    SecretsWrite,
    /// Read apps' key-value data (`kv:read`).
    #[serde(rename = "kv:read")]
    KvRead,
    /// Write and delete apps' key-value data (`kv:write`).
    #[serde(rename = "kv:write")]
    KvWrite,
    /// Create, list and revoke the tenant's tokens (`tokens:admin`).
    #[serde(rename = "tokens:admin")]
    TokensAdmin,
    /// Read the audit log (`audit:read`).
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Read usage and cost (`usage:read`).
    #[serde(rename = "usage:read")]
    UsageRead,
    /// Read `/metrics` on the admin listener from elsewhere than loopback
    /// (`metrics:read`).
    #[serde(rename = "metrics:read")]
    MetricsRead,
    /// Act across tenants: every tenant's tokens, usage and audit entries,
    /// the cluster's nodes, operator-only grants (`tenants:admin`).
    #[serde(rename = "tenants:admin")]
    TenantsAdmin,
}

impl Scope {
    /// Every scope, in the order the server lists them.
    pub const ALL: [Scope; 11] = [
        Scope::AppsRead,
        Scope::AppsDeploy,
        Scope::AppsDelete,
        Scope::SecretsWrite,
        Scope::KvRead,
        Scope::KvWrite,
        Scope::TokensAdmin,
        Scope::AuditRead,
        Scope::UsageRead,
        Scope::MetricsRead,
        Scope::TenantsAdmin,
    ];

    /// The scope as written on the wire and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::AppsRead => "apps:read",
            Scope::AppsDeploy => "apps:deploy",
            Scope::AppsDelete => "apps:delete",
            Scope::SecretsWrite => "secrets:write",
            Scope::KvRead => "kv:read",
            Scope::KvWrite => "kv:write",
            Scope::TokensAdmin => "tokens:admin",
            Scope::AuditRead => "audit:read",
            Scope::UsageRead => "usage:read",
            Scope::MetricsRead => "metrics:read",
            Scope::TenantsAdmin => "tenants:admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// By text, not by declaration: the server has always sorted scopes as
/// strings.
impl Ord for Scope {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// A scope that is not one of [`Scope::ALL`]; its message names the valid
/// ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScope(
    /// What was given (at most 80 characters of it).
    pub String,
);

impl fmt::Display for UnknownScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown scope `{}`; scopes are ", self.0)?;
        for (i, scope) in Scope::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownScope {}

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.chars().take(80).collect()))
    }
}

/// Through [`FromStr`], so an unknown scope in a request is refused with
/// [`UnknownScope`]'s message rather than serde's.
impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scope;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scope such as `apps:read`")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Scope, E> {
                s.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}
