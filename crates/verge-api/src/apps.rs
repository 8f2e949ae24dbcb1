//! Reading and changing apps: `GET /v1/apps`, `GET|DELETE /v1/apps/{app}`,
//! `GET /v1/apps/{app}/versions`, `PUT /v1/apps/{app}/traffic`,
//! `POST /v1/apps/{app}/rollback` and `GET /v1/apps/{app}/logs`.
//!
//! **Invariants**
//! - Versions are written `v3` ([`VersionName`]) in every body.
//! - Traffic and rollback requests refuse unknown fields; an empty
//!   rollback body means [`RollbackRequest::default`].
//! - [`LogLine`]s stream as newline-delimited JSON, not one JSON body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::serving::Confirmation;
use crate::version::VersionName;

/// An app: its versions and the routes of those taking traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppSummary {
    /// App name, unique within the tenant.
    pub name: String,
    /// Owning tenant.
    pub tenant: String,
    /// When the app was first deployed (RFC 3339).
    pub created: String,
    /// Number of versions kept.
    pub versions: u64,
    /// Versions taking traffic; weights sum to 100.
    pub traffic: Vec<TrafficShare>,
    /// Routes served by the versions taking traffic, without duplicates:
    /// `{host}{path prefix}` or just the path prefix.
    pub routes: Vec<String>,
}

/// A version's share of an app's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficShare {
    /// The version.
    pub version: VersionName,
    /// Percentage of traffic, 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    pub weight: u32,
}

/// Answer of `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    /// The apps of the caller's tenant.
    pub apps: Vec<AppSummary>,
}

/// Answer of `DELETE /v1/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppDeleted {
    /// The deleted app's name.
    pub deleted: String,
}

/// Answer of `PUT /v1/apps/{app}/traffic` and
/// `POST /v1/apps/{app}/rollback`: the app after the change, and whether
/// it is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppChanged {
    /// The app after the change.
    #[serde(flatten)]
    pub app: AppSummary,
    /// Whether the change is served.
    #[serde(flatten)]
    pub confirmation: Confirmation,
}

/// One version of an app, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// The version.
    pub version: VersionName,
    /// sha256 over the manifest and the component digests (64 lower-case
    /// hex digits).
    pub digest: String,
    /// When it was deployed (RFC 3339).
    pub created: String,
    /// Id of the token that deployed it.
    pub created_by: String,
    /// Component name → blob digest (sha256, 64 lower-case hex digits).
    pub components: BTreeMap<String, String>,
    /// Routes the version serves.
    pub routes: Vec<String>,
    /// Current traffic share; 0 if it takes none.
    #[schema(maximum = 100)]
    pub weight: u32,
}

/// Answer of `GET /v1/apps/{app}/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    /// The app's name.
    pub app: String,
    /// Its versions, newest first.
    pub versions: Vec<VersionInfo>,
}

/// Body of `PUT /v1/apps/{app}/traffic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficRequest {
    /// Versions and weights; non-zero weights must sum to 100, entries of
    /// weight 0 are dropped.
    pub split: Vec<SplitEntry>,
}

/// One entry of a requested traffic split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    /// The version (`v3` or `3`).
    pub version: VersionName,
    /// Percentage of traffic, 0 to 100.
    #[schema(maximum = 100)]
    pub weight: u32,
}

/// Body of `POST /v1/apps/{app}/rollback`; optional (an empty body is the
/// default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to serve (`v3` or `3`); default: the highest version
    /// below the one serving now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionName>,
}

/// Query of `GET /v1/apps/{app}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep the response open and stream new lines.
    #[serde(default)]
    pub follow: bool,
    /// Recent lines to send first (default 100, at most 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
}

/// One line of `GET /v1/apps/{app}/logs` (newline-delimited JSON): the
/// app's guest output, or the node's line about one of its requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// When (RFC 3339). Empty in the note a lagging follower gets.
    #[serde(default)]
    #[schema(required = true)]
    pub time: String,
    /// `INFO`, `WARN`, ...
    pub level: String,
    /// The component, if known. Empty in the note a lagging follower gets.
    #[serde(default)]
    #[schema(required = true)]
    pub component: String,
    /// The version that served the request (`v3`); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub version: Option<String>,
    /// The context string of a `wasi:logging` record; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub context: Option<String>,
    /// The request, if known. Empty in the note a lagging follower gets.
    #[serde(default)]
    #[schema(required = true)]
    pub request_id: String,
    /// `stdout`, `stderr`, `log` (a `wasi:logging` record), or empty for
    /// the node's own lines.
    #[serde(default)]
    #[schema(required = true)]
    pub stream: String,
    /// The text.
    pub message: String,
}
