//! Apps' key-value data: `GET /v1/apps/{app}/kv/{store}` lists keys a page
//! at a time; `GET|PUT|DELETE /v1/apps/{app}/kv/{store}/{key}` read, write
//! and delete one value, as raw bytes (no JSON body).
//!
//! **Invariant**: `next` is always present, null on the last page.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query of `GET /v1/apps/{app}/kv/{store}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KvListQuery {
    /// Start after this key (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Keys per page (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Answer of `GET /v1/apps/{app}/kv/{store}`: keys in byte order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPage {
    /// Keys of this page.
    pub keys: Vec<String>,
    /// Pass as `after` for the next page; null on the last page.
    #[schema(required = true)]
    pub next: Option<String>,
}
