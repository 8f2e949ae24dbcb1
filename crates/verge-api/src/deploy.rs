//! Deploying: `PUT /v1/blobs/{digest}` uploads a component (the body is
//! its bytes) and `POST /v1/apps/{app}/versions` creates a version from a
//! manifest and the digests of uploaded components.
//!
//! **Invariants**
//! - [`DeployRequest`] refuses unknown fields; its optional fields are left
//!   out when unset (and read as unset when null).
//! - [`DeployResponse`] always has `revision` and `unset_secrets`, and the
//!   [`Confirmation`] of the deploy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::serving::Confirmation;
use crate::version::VersionName;

/// Answer of `PUT /v1/blobs/{digest}` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BlobUploaded {
    /// sha256 of the bytes stored, 64 lower-case hex digits (without a
    /// `sha256:` prefix).
    pub digest: String,
    /// Bytes stored.
    pub size: u64,
}

/// Body of `POST /v1/apps/{app}/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The app's `verge.toml`, as text (at most 64 KiB).
    pub manifest: String,
    /// Component name → sha256 of its uploaded `.wasm` (optionally prefixed
    /// `sha256:`); exactly the manifest's components.
    pub components: BTreeMap<String, String>,
    /// Refuse with 409 unless this version (`v3`) serves now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<VersionName>,
    /// The manifest environment (`[environments.NAME]`) whose variables the
    /// version uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// Answer of `POST /v1/apps/{app}/versions`: 201 for a new version, 200
/// when a version with the same digest was reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployResponse {
    /// The app's name.
    pub app: String,
    /// The app's tenant.
    pub tenant: String,
    /// The version now taking all traffic.
    pub version: VersionName,
    /// The version's content digest (sha256, 64 lower-case hex digits).
    pub digest: String,
    /// Routes the version serves: `{host}{path prefix}` or just the path
    /// prefix.
    pub routes: Vec<String>,
    /// True if an existing version with the same digest was reused.
    pub unchanged: bool,
    /// Store revision that recorded the deploy.
    pub revision: u64,
    /// Secrets the manifest declares that are not set yet; components read
    /// them as unset until `verge secrets set`.
    pub unset_secrets: Vec<String>,
    /// Whether the version is served.
    #[serde(flatten)]
    pub confirmation: Confirmation,
}
