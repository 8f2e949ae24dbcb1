//! App secrets: `GET /v1/apps/{app}/secrets` and
//! `PUT|DELETE /v1/apps/{app}/secrets/{name}`. A secret's value goes in as
//! the raw body of the PUT.
//!
//! **Invariant**: no type here has a field for a secret's value; the API
//! never returns one.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::serving::Confirmation;

/// Answer of `GET /v1/apps/{app}/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    /// The app's secrets, by name.
    pub secrets: Vec<SecretInfo>,
}

/// A secret's name and times (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    /// Its name, as components declare it.
    pub name: String,
    /// When it was first set (RFC 3339).
    pub created: String,
    /// When its value last changed (RFC 3339).
    pub updated: String,
}

/// Answer of `PUT /v1/apps/{app}/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretSet {
    /// The app's name.
    pub app: String,
    /// The secret's name.
    pub secret: String,
    /// Whether the secret is new (false: its value was replaced).
    pub created: bool,
    /// Whether components see the new value.
    #[serde(flatten)]
    pub confirmation: Confirmation,
}

/// Answer of `DELETE /v1/apps/{app}/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretDeleted {
    /// The app's name.
    pub app: String,
    /// The deleted secret's name.
    pub deleted: String,
    /// Whether components read it as unset now.
    #[serde(flatten)]
    pub confirmation: Confirmation,
}
