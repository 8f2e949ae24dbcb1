//! The request pipeline, in order: node endpoints, router (app, then
//! version by weight, then component), guard (quotas, then the
//! component's limits), executor.
//!
//! Why this order: the router must pick the app and component before the
//! guard can apply their quotas and limits; the guard runs before the
//! executor so a rejected request costs no instance. Quotas come before
//! the concurrency cap so a tenant over its quota never takes a slot.
//! Every request that reached an app is metered: rejected ones here, the
//! others by the executor when they are over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use verge_executor::{BodyError, HandleError, RequestContext, RequestId};
use verge_guard::{Rejection, check_declared_body};
use verge_ingress::{Conn, Handler};
use verge_meter::Rejected;

use crate::trace::{RequestTrace, executor_context};
use crate::usage::AppUsage;
use crate::{ComponentRuntime, INTERNAL_PREFIX, Node, NodeBody};

const REQUEST_ID: &str = "x-request-id";
/// Names the app version that answered, when a control plane labels them.
const VERSION: &str = "x-verge-version";

impl Handler for Node {
    type Body = NodeBody;
    type BodyError = HandleError;

    async fn handle(&self, request: Request<Incoming>, conn: Conn) -> Response<NodeBody> {
        self.call(request, conn).await
    }
}

impl Node {
    /// Answers one request through the whole pipeline, whatever its body:
    /// the ingress calls it for every connection's requests, tests call it
    /// in-process with bodies of their own.
    pub async fn call<B>(&self, mut request: Request<B>, conn: Conn) -> Response<NodeBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BodyError>,
    {
        let id = RequestId::next();
        // HTTP/1.0 may omit Host; guests always get an authority: the
        // address the client connected to.
        if request.uri().authority().is_none()
            && !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&conn.local.to_string())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        let trace = self.telemetry.tracing.as_ref().map(|t| {
            RequestTrace::start(
                t,
                request.headers(),
                request.method(),
                request.uri().path(),
                id,
            )
        });
        let mut response = self.route(request, conn.peer, id, trace).await;
        if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        response
    }

    async fn route<B>(
        &self,
        request: Request<B>,
        peer: SocketAddr,
        id: RequestId,
        mut trace: Option<RequestTrace>,
    ) -> Response<NodeBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BodyError>,
    {
        let path = request.uri().path();
        let answer = |trace: Option<RequestTrace>, response: Response<NodeBody>| {
            if let Some(trace) = trace {
                trace.finish(response.status().as_u16(), None);
            }
            response
        };
        if path.starts_with(INTERNAL_PREFIX) {
            return answer(trace, self.internal(path));
        }
        if !self.is_ready() {
            let response = plain(StatusCode::SERVICE_UNAVAILABLE, "no app is loaded yet", id);
            return answer(trace, response);
        }
        let host = request.uri().host().or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        // A guard, not a counted reference: no shared counter is touched
        // per request. It is dropped before the guest runs.
        let apps = self.apps.load();
        let routed = apps
            .lookup(host, path)
            .map(|slot| slot.pick())
            .and_then(|app| {
                let (_, component) = app.routes.lookup(host, path)?;
                Some((app, Arc::clone(component)))
            });
        let Some((app, component)) = routed else {
            if let Some(metrics) = &self.metrics {
                metrics.unrouted.increment(1);
            }
            let response = plain(StatusCode::NOT_FOUND, "no route matches this path", id);
            return answer(trace, response);
        };
        let version = app
            .version
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok());
        let usage = app.usage.clone();
        if let Some(trace) = &mut trace {
            trace.routed(&app.name, app.version.as_deref());
        }
        drop(apps);
        let mut response = self.serve(request, component, usage, id, peer, trace).await;
        if let Some(version) = version {
            response.headers_mut().insert(VERSION, version);
        }
        response
    }

    async fn serve<B>(
        &self,
        mut request: Request<B>,
        component: Arc<ComponentRuntime>,
        usage: Option<Arc<AppUsage>>,
        id: RequestId,
        peer: SocketAddr,
        trace: Option<RequestTrace>,
    ) -> Response<NodeBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BodyError>,
    {
        let limits = component.loaded.limits();
        let quota = usage
            .as_ref()
            .and_then(|u| u.quota.as_ref())
            .map(|q| (q, SystemTime::now()));
        let admitted = match quota {
            Some((quota, now)) => quota.admit(now).map_err(Rejection::OverQuota),
            None => Ok(()),
        };
        let admitted = admitted.and_then(|()| {
            let limited = check_declared_body(request.headers(), limits.max_request_body)
                .and_then(|()| component.limit.try_acquire());
            if let (Err(_), Some((quota, now))) = (&limited, quota) {
                // Refused by a limit after all: it takes no quota.
                quota.refund(now);
            }
            limited
        });
        let permit = match admitted {
            Ok(p) => p,
            Err(rejection) => {
                if let Some(usage) = &usage {
                    let reason = match rejection {
                        Rejection::OverQuota(_) => Rejected::Quota,
                        _ => Rejected::Limit,
                    };
                    usage.rejected(reason, rejection.status().as_u16());
                }
                if let Some(trace) = trace {
                    trace.finish(rejection.status().as_u16(), None);
                }
                return rejected(&rejection, &component, id, peer);
            }
        };
        let (sink, parent) = executor_context(trace, usage, request.headers_mut());
        match component
            .loaded
            .handle(
                request,
                RequestContext {
                    id,
                    hold: Some(Box::new(permit)),
                    usage: sink,
                    trace: parent,
                },
            )
            .await
        {
            Ok(response) => response.map(NodeBody::Guest),
            Err(error) => failed(&error, &component, id, limits.timeout),
        }
    }

    fn internal(&self, path: &str) -> Response<NodeBody> {
        match path.strip_prefix(INTERNAL_PREFIX) {
            Some("health") if self.is_ready() => text(StatusCode::OK, "ok\n"),
            Some("health") => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            _ => text(StatusCode::NOT_FOUND, "unknown node endpoint\n"),
        }
    }
}

fn rejected(
    rejection: &Rejection,
    runtime: &ComponentRuntime,
    id: RequestId,
    peer: SocketAddr,
) -> Response<NodeBody> {
    let (app, component) = (runtime.loaded.app(), runtime.loaded.name());
    if let Rejection::OverQuota(_) = rejection {
        // A flood over quota must not flood the log: the refusal is
        // audited once per window instead.
        tracing::debug!(request_id = %id, app, component, %peer, "request rejected: {rejection}");
    } else {
        tracing::info!(request_id = %id, app, component, %peer, "request rejected: {rejection}");
    }
    let mut response = plain(rejection.status(), &rejection.to_string(), id);
    if let Some(secs) = rejection.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn failed(
    error: &HandleError,
    runtime: &ComponentRuntime,
    id: RequestId,
    timeout: std::time::Duration,
) -> Response<NodeBody> {
    let (app, component) = (runtime.loaded.app(), runtime.loaded.name());
    let reason = match error {
        HandleError::Timeout(_) => {
            tracing::warn!(request_id = %id, app, component, "request cut off: no response within {timeout:?}");
            format!("the function did not finish within {timeout:?}")
        }
        HandleError::MemoryLimit { limit, detail } => {
            tracing::warn!(request_id = %id, app, component, "guest exceeded its memory limit of {limit} bytes: {detail}");
            "the function exceeded its memory limit".to_string()
        }
        HandleError::Trap { message, detail } => {
            tracing::warn!(request_id = %id, app, component, "guest trapped: {message}");
            tracing::debug!(request_id = %id, app, component, "trap detail: {detail}");
            "the function failed".to_string()
        }
        HandleError::BodyTooLarge(limit) => {
            tracing::info!(request_id = %id, app, component, "request body exceeded {limit} bytes");
            format!("request body larger than {limit} bytes")
        }
        HandleError::Overloaded(detail) => {
            tracing::warn!(request_id = %id, app, component, "no instance slot: {detail}");
            "the node is at capacity".to_string()
        }
        HandleError::BadRequest(detail) => {
            tracing::info!(request_id = %id, app, component, "request cannot be passed to the guest: {detail}");
            "the request cannot be passed to the function".to_string()
        }
        other => {
            tracing::warn!(request_id = %id, app, component, "{other}");
            "the function failed".to_string()
        }
    };
    let mut response = plain(error.status(), &reason, id);
    if error.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
    }
    response
}

fn plain(status: StatusCode, reason: &str, id: RequestId) -> Response<NodeBody> {
    let reason_phrase = status.canonical_reason().unwrap_or("");
    text(
        status,
        &format!(
            "{} {reason_phrase}: {reason} (request id {id})\n",
            status.as_u16()
        ),
    )
}

fn text(status: StatusCode, body: &str) -> Response<NodeBody> {
    let mut response = Response::new(NodeBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
