//! `GET /v1/nodes`: the nodes serving this control plane, for operators
//! (`tenants:admin`): a tenant has no business knowing the fleet.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;

pub(crate) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require("tenants:admin", "nodes").await?;
    Ok(Json(json!({ "nodes": control.data_plane.nodes() })))
}
