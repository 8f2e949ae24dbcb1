//! The raw layer: `verge.toml` exactly as written, with the byte span of every
//! value kept for error messages. Unknown fields are refused. Nothing here
//! checks meaning; see `validate` for that.
//!
//! ```toml
//! name = "shop"
//!
//! [component.api]
//! source = "api/target/wasm32-wasip2/release/api.wasm"
//! routes = ["/api", { path = "/", host = "api.example.com" }]
//! allowed_outbound_hosts = ["https://payments.example.com"]
//! environment = { LOG_LEVEL = "debug" }
//! build = { command = "cargo build --target wasm32-wasip2 --release", workdir = "api", watch = ["src/**/*.rs"] }
//! limits = { memory = "64MiB", timeout = "10s", max_concurrency = 50, max_request_body = "1MiB" }
//! key_value_stores = ["default"]
//! variables = ["greeting"]
//! secrets = ["payments_key"]
//! ai_models = ["all-minilm-l6-v2"]
//! vector_indexes = ["products"]
//! classifiers = ["sentiment"]
//!
//! [variables]
//! greeting = "hello"
//!
//! [environments.staging.variables]
//! greeting = "hello from staging"
//!
//! [placement]
//! region = ["eu-west", "us-east"]
//! min_replicas = 2
//!
//! [key_value.sessions]
//! consistency = "edge-local"
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// The app's name: lower-case letters, digits and `-`. Defaults to the
    /// manifest folder's name.
    pub name: Option<Spanned<String>>,
    /// The app's components, keyed by name (`[component.NAME]`).
    #[serde(default)]
    pub component: BTreeMap<Spanned<String>, Spanned<RawComponent>>,
    /// App variables and their default values (`[variables]`); components
    /// read those they list in their own `variables`.
    #[serde(default)]
    pub variables: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Named environments (`[environments.NAME]`) overriding variables,
    /// chosen with `--env NAME`.
    #[serde(default)]
    pub environments: BTreeMap<Spanned<String>, Spanned<RawEnvironment>>,
    /// Which cluster nodes run the app (`[placement]`): label selectors
    /// (`region = ["eu-west"]`) and `min_replicas`.
    #[serde(default)]
    pub placement: BTreeMap<Spanned<String>, Spanned<RawSelector>>,
    /// Settings of key-value stores (`[key_value.NAME]`).
    #[serde(default)]
    pub key_value: BTreeMap<Spanned<String>, Spanned<RawStoreSettings>>,
}

/// One `[key_value.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreSettings {
    /// `strict` (the default) or `edge-local`.
    pub consistency: Option<Spanned<String>>,
}

/// One entry of `[placement]`: the values a node label may have, or (for
/// `min_replicas`) a count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSelector {
    /// `region = ["eu-west", "us-east"]`.
    Values(Vec<String>),
    /// `region = "eu-west"`.
    Value(String),
    /// `min_replicas = 2`.
    Count(i64),
}

/// One `[environments.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    /// Values replacing the defaults of `[variables]` in this environment.
    #[serde(default)]
    pub variables: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// One `[component.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawComponent {
    /// Path of the `.wasm` component, relative to the manifest folder.
    pub source: Spanned<String>,
    /// Routes: a path prefix string, or `{ path = "/x", host = "a.example.com" }`.
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// Build step run before serving.
    pub build: Option<Spanned<RawBuild>>,
    /// Environment variables the guest sees.
    #[serde(default)]
    pub environment: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Hosts the guest may call over HTTP: `[scheme://]host[:port]`.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<Spanned<String>>,
    /// Resource limits.
    pub limits: Option<Spanned<RawLimits>>,
    /// Key-value stores the guest may open with `wasi:keyvalue/store.open`.
    #[serde(default)]
    pub key_value_stores: Vec<Spanned<String>>,
    /// App variables (from `[variables]`) the guest may read with `wasi:config/store`.
    #[serde(default)]
    pub variables: Vec<Spanned<String>>,
    /// App secrets (set with `verge secrets set`) the guest may read with `wasi:config/store`.
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    /// AI models the guest may use through `verge:ai` (embed, classify).
    #[serde(default)]
    pub ai_models: Vec<Spanned<String>>,
    /// Vector indexes the guest may open through `verge:ai/vectors`.
    #[serde(default)]
    pub vector_indexes: Vec<Spanned<String>>,
    /// Trained classifiers (`verge ai train`) the guest may use.
    #[serde(default)]
    pub classifiers: Vec<Spanned<String>>,
}

/// A route as written: either `"/prefix"` or `{ path, host }`.
#[derive(Debug)]
pub struct RawRoute {
    /// Path prefix.
    pub path: String,
    /// Optional host the route is bound to.
    pub host: Option<String>,
}

/// The `build` table of a component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuild {
    /// Shell command that builds the component.
    pub command: Spanned<String>,
    /// Folder the command runs in, relative to the manifest folder.
    pub workdir: Option<Spanned<String>>,
    /// Globs (relative to `workdir`) whose changes trigger a rebuild with `--watch`.
    #[serde(default)]
    pub watch: Vec<Spanned<String>>,
    /// Longest time the build may take, e.g. `"10m"` (default 10 minutes).
    pub timeout: Option<Spanned<String>>,
}

/// The `limits` table of a component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Linear-memory cap per instance, e.g. `"64MiB"`.
    pub memory: Option<Spanned<RawSize>>,
    /// Wall-clock limit per request, e.g. `"10s"`.
    pub timeout: Option<Spanned<String>>,
    /// Instances that may run at once.
    pub max_concurrency: Option<Spanned<i64>>,
    /// Largest accepted request body, e.g. `"1MiB"`.
    pub max_request_body: Option<Spanned<RawSize>>,
}

/// A size written as a number of bytes or a string with a unit.
#[derive(Debug)]
pub enum RawSize {
    /// A plain integer: bytes.
    Bytes(i64),
    /// A string such as `"64MiB"`.
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                i64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom("size too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawRoute {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            path: String,
            host: Option<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRoute;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path prefix such as \"/api\" or a table { path = \"/api\", host = \"example.com\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRoute, E> {
                Ok(RawRoute {
                    path: v.to_string(),
                    host: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRoute, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawRoute {
                    path: full.path,
                    host: full.host,
                })
            }
        }
        d.deserialize_any(V)
    }
}
