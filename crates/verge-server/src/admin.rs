//! The admin listener: Prometheus metrics at `/metrics`, on an address of
//! its own so it can stay off the public network.
//!
//! **Invariant**: bound to a loopback address, the endpoint is open to
//! local scrapers; bound to any other address, every request needs a
//! token with the `metrics:read` scope (checked like the control API's,
//! failures audited and rate-limited), and sees the per-app metrics of its
//! own tenant only, unless it also holds `tenants:admin`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use axum::routing::get;
use http::{Request, Response, header};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::ServiceExt;
use verge_control::{ApiError, Caller, Control};
use verge_ingress::{Conn, Handler};
use verge_meter::{Meter, metric};
use verge_node::Node;

/// Another metrics recorder was installed in this process first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("another metrics recorder is installed: {0}")]
pub struct RecorderError(String);

/// Installs the process's metrics recorder (once; later calls get the
/// same handle) and describes every metric.
pub fn install_recorder() -> Result<PrometheusHandle, RecorderError> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, RecorderError>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // The cause cannot be kept (it is not `Clone`, and every call
            // gets the first result): its words are.
            metrics::set_global_recorder(recorder).map_err(|e| RecorderError(e.to_string()))?;
            metric::describe();
            Ok(handle)
        })
        .clone()
}

#[derive(Clone)]
struct AdminState {
    handle: PrometheusHandle,
    node: Arc<Node>,
    control: Arc<Control>,
    meter: Option<Arc<Meter>>,
}

impl axum::extract::FromRef<AdminState> for Arc<Control> {
    fn from_ref(state: &AdminState) -> Self {
        state.control.clone()
    }
}

/// What the admin listener serves.
pub struct Admin {
    router: Router,
}

impl Admin {
    /// Serves the metrics of `server`; `open` when bound to loopback (no
    /// token).
    pub fn new(handle: PrometheusHandle, server: &crate::Server, open: bool) -> Self {
        let state = AdminState {
            handle,
            node: server.node.clone(),
            control: server.control.clone(),
            meter: server.meter.clone(),
        };
        let metrics = if open {
            get(open_metrics)
        } else {
            get(guarded_metrics)
        };
        Self {
            router: Router::new()
                .route("/metrics", metrics)
                .fallback(|| async {
                    ApiError::NotFound("the admin listener serves /metrics".into())
                })
                .with_state(state),
        }
    }
}

async fn open_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    render(&state, None)
}

async fn guarded_metrics(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::MetricsRead, "metrics").await?;
    let tenant = (!caller.has(Scope::TenantsAdmin)).then(|| caller.tenant().to_string());
    Ok(render(&state, tenant.as_deref()))
}

/// The metrics text; per-app metrics only of `tenant` when given.
fn render(state: &AdminState, tenant: Option<&str>) -> impl IntoResponse + use<> {
    state.node.update_metrics(resident_memory());
    state.handle.run_upkeep();
    let mut text = state.handle.render();
    if let Some(meter) = &state.meter {
        let mut apps = meter.cumulative();
        if let Some(tenant) = tenant {
            let prefix = format!("{tenant}/");
            apps.retain(|(app, _)| app.starts_with(&prefix));
        }
        text.push_str(&metric::render_apps(&apps));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Resident memory of this process, from `/proc/self/statm` (0 if unknown).
fn resident_memory() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

impl Handler for Admin {
    type Body = axum::body::Body;
    type BodyError = axum::Error;

    async fn handle(&self, mut request: Request<Incoming>, conn: Conn) -> Response<Self::Body> {
        request.extensions_mut().insert(ConnectInfo(conn.peer));
        let request = request.map(axum::body::Body::new);
        let Ok(response) = self.router.clone().oneshot(request).await;
        response
    }
}
use verge_api::Scope;
