//! What the control plane stores, one JSON value per key:
//! - `apps/{tenant}/{app}` → [`AppRecord`]: every version of the app and
//!   the traffic split. One key per app, so a deploy, a traffic change or a
//!   rollback is a single compare-and-set: never half applied.
//! - `tokens/{id}` → [`TokenRecord`] (a hash of the secret, never the secret).
//! - `audit/log/{seq}` and `audit/head` → the audit chain (see `audit`).
//! - `secrets/{tenant}/{app}/{name}` → [`SecretRecord`]: the value sealed
//!   under the node's master key, never in clear.
//!
//! **Invariant**: versions are immutable once written; only the traffic
//! split of an app changes.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use verge_router::Route;

/// Most versions kept per app; older ones not taking traffic are dropped.
pub const MAX_VERSIONS: usize = 50;

/// The store key of a secret.
pub fn secret_key(tenant: &str, app: &str, name: &str) -> String {
    format!("{SECRETS_PREFIX}{tenant}/{app}/{name}")
}

/// Prefix of every secret key.
pub const SECRETS_PREFIX: &str = "secrets/";

/// A secret of an app, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Owning tenant.
    pub tenant: String,
    /// The app it belongs to.
    pub app: String,
    /// Its name, as components declare it.
    pub name: String,
    /// When it was first set (RFC 3339).
    pub created: String,
    /// When its value last changed (RFC 3339).
    pub updated: String,
    /// The value, sealed under the master key.
    pub sealed: verge_secrets::Sealed,
}

impl SecretRecord {
    /// What the value is sealed for.
    pub fn id(&self) -> verge_secrets::SecretId<'_> {
        verge_secrets::SecretId {
            tenant: &self.tenant,
            app: &self.app,
            name: &self.name,
        }
    }
}

/// The store key of an app.
pub fn app_key(tenant: &str, app: &str) -> String {
    format!("apps/{tenant}/{app}")
}

/// Prefix of every app key.
pub const APPS_PREFIX: &str = "apps/";

/// An app and its versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppRecord {
    /// Owning tenant.
    pub tenant: String,
    /// App name, unique within the tenant.
    pub name: String,
    /// When the app was first deployed (RFC 3339).
    pub created: String,
    /// The number the next new version gets.
    pub next_version: u32,
    /// Versions, oldest first.
    pub versions: Vec<VersionRecord>,
    /// Which versions take traffic; weights sum to 100.
    pub traffic: Vec<TrafficShare>,
}

/// One immutable version of an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Sequence number within the app (`v{number}`).
    pub number: u32,
    /// sha256 over the manifest and the component digests.
    pub digest: String,
    /// The manifest as deployed.
    pub manifest: String,
    /// Component name → blob digest.
    pub components: BTreeMap<String, String>,
    /// Routes the version serves.
    pub routes: Vec<RouteRecord>,
    /// When it was deployed (RFC 3339).
    pub created: String,
    /// Id of the token that deployed it.
    pub created_by: String,
    /// The manifest environment whose variables it uses, if one was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// A route as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Host, if the route is bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix.
    pub path: String,
}

impl RouteRecord {
    /// The route, or `None` if the stored value no longer parses.
    pub fn route(&self) -> Option<Route> {
        Route::new(self.host.as_deref(), &self.path).ok()
    }
}

impl From<&Route> for RouteRecord {
    fn from(r: &Route) -> Self {
        Self {
            host: r.host().map(str::to_string),
            path: r.prefix().to_string(),
        }
    }
}

/// A share of an app's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficShare {
    /// Version number.
    pub version: u32,
    /// Percentage, 1..=100.
    pub weight: u32,
}

impl AppRecord {
    /// The version with this number.
    pub fn version(&self, number: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// The version taking the most traffic.
    pub fn primary(&self) -> Option<u32> {
        self.traffic
            .iter()
            .max_by_key(|s| (s.weight, s.version))
            .map(|s| s.version)
    }

    /// Versions taking traffic, with their weights.
    pub fn live(&self) -> impl Iterator<Item = (&VersionRecord, u32)> {
        self.traffic
            .iter()
            .filter_map(|s| self.version(s.version).map(|v| (v, s.weight)))
    }

    /// Drops the oldest versions beyond [`MAX_VERSIONS`] that take no traffic.
    pub fn prune(&mut self) {
        while self.versions.len() > MAX_VERSIONS {
            let live: Vec<u32> = self.traffic.iter().map(|s| s.version).collect();
            match self.versions.iter().position(|v| !live.contains(&v.number)) {
                Some(i) => {
                    self.versions.remove(i);
                }
                None => break,
            }
        }
    }
}

/// Parses `v3` or `3` into a version number.
pub fn parse_version(s: &str) -> Option<u32> {
    s.strip_prefix('v').unwrap_or(s).parse().ok()
}

/// A stored token: everything but the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (also in the token text).
    pub id: String,
    /// Tenant the token acts for.
    pub tenant: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// sha256 of the secret part, hex.
    pub secret_sha256: String,
    /// A note saying what the token is for.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When it was revoked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// The store key of a token.
pub fn token_key(id: &str) -> String {
    format!("tokens/{id}")
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current time, RFC 3339 with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// An RFC 3339 time for seconds since the epoch (`-` if out of range).
pub fn rfc3339(unix: u64) -> String {
    use std::fmt::Write;
    let Some(time) = UNIX_EPOCH.checked_add(std::time::Duration::from_secs(unix)) else {
        return "-".to_string();
    };
    let mut out = String::new();
    match write!(out, "{}", humantime::format_rfc3339_seconds(time)) {
        Ok(()) => out,
        Err(_) => "-".to_string(),
    }
}
