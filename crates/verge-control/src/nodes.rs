//! `GET /v1/nodes`: the nodes serving this control plane, for operators
//! (`tenants:admin`): a tenant has no business knowing the fleet.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use verge_api::{NodeList, Scope};

use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;

#[utoipa::path(
    get,
    path = "/v1/nodes",
    operation_id = "listNodes",
    tag = "nodes",
    summary = "The nodes of the cluster: health, labels, load, what they serve",
    description = "Requires the `tenants:admin` scope. Every node heard of in the last day, as the answering node sees it: `status` is `up`, `down` (silent for three heartbeats), `degraded` (the answering node, cut off from the cluster) or `unknown` (another node, while the answering one is cut off). A standalone server lists itself.",
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The nodes, sorted by name.", body = verge_api::NodeList, content_type = "application/json"),
        (status = 403, description = "The token lacks `tenants:admin`.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<NodeList>, ApiError> {
    caller.require(Scope::TenantsAdmin, "nodes").await?;
    Ok(Json(NodeList {
        nodes: control.data_plane.nodes(),
    }))
}
