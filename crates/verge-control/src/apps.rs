//! Reading and changing apps: list, show, versions, traffic splits,
//! rollback and delete. Every change is one compare-and-set of the app's
//! record and is audited.
//!
//! **Invariant**: apps are looked up under the caller's tenant only, so a
//! foreign app is indistinguishable from a missing one (404).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::broadcast;
use verge_api::{
    AppChanged, AppDeleted, AppList, AppSummary, CallerToken, LogsQuery, RollbackRequest, Scope,
    ServerInfo, Status, TrafficRequest, VersionInfo, VersionList, VersionName,
};
use verge_store::{Expect, Op, Revision};

use crate::audit::{Outcome, Record};
use crate::deploy::{
    Claims, MAX_ATTEMPTS, check_app_name, check_claims, live_routes, read_json, read_optional_json,
};
use crate::model::{APPS_PREFIX, AppRecord, RouteRecord, SECRETS_PREFIX, TrafficShare, app_key};
use crate::{ApiError, Caller, Control, Prepared};

pub(crate) async fn load(
    control: &Control,
    caller: &Caller,
    app: &str,
) -> Result<(AppRecord, Revision), ApiError> {
    check_app_name(app)?;
    let entry = control
        .store
        .get(&app_key(caller.tenant(), app))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no app named `{app}`")))?;
    let record = serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
    Ok((record, entry.revision))
}

fn summary(record: &AppRecord) -> AppSummary {
    let mut routes: Vec<String> = Vec::new();
    for (v, _) in record.live() {
        for r in v.routes.iter().filter_map(RouteRecord::route) {
            let r = r.to_string();
            if !routes.contains(&r) {
                routes.push(r);
            }
        }
    }
    AppSummary {
        name: record.name.clone(),
        tenant: record.tenant.clone(),
        created: record.created.clone(),
        versions: record.versions.len() as u64,
        traffic: record
            .traffic
            .iter()
            .map(|s| verge_api::TrafficShare {
                version: VersionName(s.version),
                weight: s.weight,
            })
            .collect(),
        routes,
    }
}

#[utoipa::path(
    get,
    path = "/v1/status",
    operation_id = "getStatus",
    tag = "meta",
    summary = "Server and token status",
    description = "Needs a valid token; no scope is required.",
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The server version and store revision, the caller's token, and its tenant's app count.", body = verge_api::Status, content_type = "application/json"),
    ),
)]
pub(crate) async fn status(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<Status>, ApiError> {
    let prefix = format!("{APPS_PREFIX}{}/", caller.tenant());
    let apps = control.store.list(&prefix).await?.len();
    Ok(Json(Status {
        server: ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: control.store.revision().await?,
        },
        token: CallerToken {
            id: caller.token.id.clone(),
            tenant: caller.tenant().to_string(),
            scopes: caller.token.scopes.clone(),
        },
        apps: apps as u64,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/apps",
    operation_id = "listApps",
    tag = "apps",
    summary = "List the tenant's apps",
    description = "Requires the `apps:read` scope. Lists the apps of the caller's tenant only.",
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The tenant's apps.", body = verge_api::AppList, content_type = "application/json"),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<AppList>, ApiError> {
    caller.require(Scope::AppsRead, caller.tenant()).await?;
    let prefix = format!("{APPS_PREFIX}{}/", caller.tenant());
    let mut apps = Vec::new();
    for entry in control.store.list(&prefix).await? {
        let record: AppRecord = serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
        apps.push(summary(&record));
    }
    Ok(Json(AppList { apps }))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}",
    operation_id = "getApp",
    tag = "apps",
    summary = "Show an app",
    description = "Requires the `apps:read` scope. Another tenant's app answers 404, as a missing one does.",
    params(("app" = String, Path, description = "App name, within the caller's tenant.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The app.", body = verge_api::AppSummary, content_type = "application/json"),
        (status = 400, description = "Invalid app name.", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "No such app for this tenant.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn show(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<AppSummary>, ApiError> {
    caller.require(Scope::AppsRead, caller.tenant()).await?;
    let (record, _) = load(&control, &caller, &app).await?;
    Ok(Json(summary(&record)))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/versions",
    operation_id = "listVersions",
    tag = "apps",
    summary = "List an app's versions",
    description = "Requires the `apps:read` scope. Versions newest first, with their current traffic weight.",
    params(("app" = String, Path, description = "App name, within the caller's tenant.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The app's versions.", body = verge_api::VersionList, content_type = "application/json"),
        (status = 400, description = "Invalid app name.", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "No such app for this tenant.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn versions(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<VersionList>, ApiError> {
    caller.require(Scope::AppsRead, caller.tenant()).await?;
    let (record, _) = load(&control, &caller, &app).await?;
    let versions = record
        .versions
        .iter()
        .rev()
        .map(|v| {
            let weight = record
                .traffic
                .iter()
                .find(|s| s.version == v.number)
                .map_or(0, |s| s.weight);
            VersionInfo {
                version: VersionName(v.number),
                digest: v.digest.clone(),
                created: v.created.clone(),
                created_by: v.created_by.clone(),
                components: v.components.clone(),
                routes: v
                    .routes
                    .iter()
                    .filter_map(RouteRecord::route)
                    .map(|r| r.to_string())
                    .collect(),
                weight,
            }
        })
        .collect();
    Ok(Json(VersionList { app, versions }))
}

const MAX_SMALL_REQUEST: usize = 64 * 1024;

#[utoipa::path(
    put,
    path = "/v1/apps/{app}/traffic",
    operation_id = "setTraffic",
    tag = "apps",
    summary = "Set the traffic split",
    description = "Requires the `apps:deploy` scope. Replaces the app's traffic split, then waits (up to the apply timeout) for the node to serve it. The body is at most 64 KiB. Audited as `app.traffic`. Every version that will take traffic is compiled first; one that cannot load is refused with 400 and nothing changes.",
    params(("app" = String, Path, description = "App name, within the caller's tenant.")),
    request_body(content = verge_api::TrafficRequest, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The new split is recorded.", body = verge_api::AppChanged, content_type = "application/json"),
        (status = 400, description = "Invalid app name or JSON, a version that does not parse, a version listed twice, or weights not summing to 100.", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "No such app for this tenant, or the app has no such version.", body = verge_api::ErrorBody),
        (status = 409, description = "A route is claimed by another app, or the app changed meanwhile.", body = verge_api::ErrorBody),
        (status = 413, description = "The request body is larger than 64 KiB.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn set_traffic(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
    body: Body,
) -> Result<Json<AppChanged>, ApiError> {
    let target = format!("{}/{app}", caller.tenant());
    caller.require(Scope::AppsDeploy, &target).await?;
    let request: TrafficRequest = read_json(body, MAX_SMALL_REQUEST).await?;
    let mut split = Vec::new();
    for e in &request.split {
        let version = e.version.number();
        if split.iter().any(|s: &TrafficShare| s.version == version) {
            return Err(ApiError::BadRequest(format!("v{version} is listed twice")));
        }
        if e.weight > 100 {
            return Err(ApiError::BadRequest(format!(
                "the weight of v{version} is {}; weights are percentages, 0 to 100",
                e.weight
            )));
        }
        if e.weight > 0 {
            split.push(TrafficShare {
                version,
                weight: e.weight,
            });
        }
    }
    let total: u32 = split.iter().map(|s| s.weight).sum();
    if total != 100 {
        return Err(ApiError::BadRequest(format!(
            "the weights add up to {total}; they must add up to 100"
        )));
    }
    change(&control, &caller, &app, "app.traffic", split).await
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/rollback",
    operation_id = "rollback",
    tag = "apps",
    summary = "Roll back to a version",
    description = "Requires the `apps:deploy` scope. Sends 100% of the traffic to the given version, or by default to the highest version below the one serving now, then waits (up to the apply timeout) for the node to serve it. The body is optional (empty means default) and at most 64 KiB. Audited as `app.rollback`. Every version that will take traffic is compiled first; one that cannot load is refused with 400 and nothing changes.",
    params(("app" = String, Path, description = "App name, within the caller's tenant.")),
    request_body(content = verge_api::RollbackRequest, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The rollback is recorded.", body = verge_api::AppChanged, content_type = "application/json"),
        (status = 400, description = "Invalid app name or JSON, or a version that does not parse.", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "No such app for this tenant, or the app has no such version.", body = verge_api::ErrorBody),
        (status = 409, description = "No version before the current one, a route is claimed by another app, or the app changed meanwhile.", body = verge_api::ErrorBody),
        (status = 413, description = "The request body is larger than 64 KiB.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn rollback(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
    body: Body,
) -> Result<Json<AppChanged>, ApiError> {
    let target = format!("{}/{app}", caller.tenant());
    caller.require(Scope::AppsDeploy, &target).await?;
    let request: RollbackRequest = read_optional_json(body, MAX_SMALL_REQUEST).await?;
    let (record, _) = load(&control, &caller, &app).await?;
    let version = match &request.version {
        Some(v) => v.number(),
        None => {
            let current = record.primary().unwrap_or(0);
            record
                .versions
                .iter()
                .map(|v| v.number)
                .filter(|n| *n < current)
                .max()
                .ok_or_else(|| {
                    ApiError::Conflict(format!("`{app}` has no version before v{current}"))
                })?
        }
    };
    change(
        &control,
        &caller,
        &app,
        "app.rollback",
        vec![TrafficShare {
            version,
            weight: 100,
        }],
    )
    .await
}

/// Records a new traffic split and waits until the node serves it.
async fn change(
    control: &Control,
    caller: &Caller,
    app: &str,
    action: &str,
    split: Vec<TrafficShare>,
) -> Result<Json<AppChanged>, ApiError> {
    let target = format!("{}/{app}", caller.tenant());
    let detail = split
        .iter()
        .map(|s| format!("v{}={}", s.version, s.weight))
        .collect::<Vec<_>>()
        .join(" ");
    let result = async {
        let _serial = control.deploy_lock.lock().await;
        // Held until the node confirms: what a failed change compiled goes.
        let mut prepared = Prepared::new(&control.data_plane);
        for _ in 0..MAX_ATTEMPTS {
            let claims = Claims::read(control).await?;
            let (mut record, revision) = load(control, caller, app).await?;
            for share in &split {
                if record.version(share.version).is_none() {
                    return Err(ApiError::NotFound(format!(
                        "`{app}` has no version v{}",
                        share.version
                    )));
                }
            }
            let before = live_routes(&record);
            record.traffic = split.clone();
            // Every version that will take traffic is compiled before the
            // change is recorded (usually a cache hit), so a version that
            // cannot load is refused here instead of failing on the node.
            for (version, _) in record.live() {
                if !prepared.holds(version) {
                    prepared
                        .prepare(&record, version)
                        .await
                        .map_err(|e| e.context(&format!("v{}", version.number)))?;
                }
            }
            let routes = live_routes(&record);
            check_claims(control, caller.tenant(), app, &routes).await?;
            let key = app_key(caller.tenant(), app);
            let value = serde_json::to_vec(&record).map_err(ApiError::internal)?;
            let mut ops = vec![Op::put(&key, value, Expect::Revision(revision))];
            ops.extend(claims.op_if_new(&key, &before, &routes));
            let entry = Record::new(action, &target, Outcome::Ok)
                .actor(&caller.token.id, caller.tenant())
                .detail(detail.clone());
            if let Some(revision) = control.try_audited(entry, ops).await? {
                return Ok((record, revision, prepared));
            }
        }
        Err(ApiError::Conflict(
            "other changes kept landing meanwhile; try again".to_string(),
        ))
    }
    .await;
    if let Err(e) = &result {
        control
            .audit(
                Record::new(action, &target, Outcome::Failed)
                    .actor(&caller.token.id, caller.tenant())
                    .detail(format!("{detail}: {}", e.code())),
            )
            .await;
    }
    let (record, revision, _prepared) = result?;
    Ok(Json(AppChanged {
        app: summary(&record),
        confirmation: control.confirm(&target, revision).await,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app}",
    operation_id = "deleteApp",
    tag = "apps",
    summary = "Delete an app",
    description = "Requires the `apps:delete` scope. Deletes the app and all its versions, then waits (up to the apply timeout) for the node to apply it. Audited as `app.delete`.",
    params(("app" = String, Path, description = "App name, within the caller's tenant.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The app was deleted.", body = verge_api::AppDeleted, content_type = "application/json"),
        (status = 400, description = "Invalid app name.", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "No such app for this tenant.", body = verge_api::ErrorBody),
        (status = 409, description = "The app changed meanwhile; try again.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<AppDeleted>, ApiError> {
    let target = format!("{}/{app}", caller.tenant());
    caller.require(Scope::AppsDelete, &target).await?;
    let result = async {
        let _serial = control.deploy_lock.lock().await;
        let (_, revision) = load(&control, &caller, &app).await?;
        // The app's secrets go with it, in the same write.
        let secrets = control
            .store
            .list(&format!("{SECRETS_PREFIX}{target}/"))
            .await?;
        let mut ops: Vec<Op> = secrets
            .iter()
            .map(|s| Op::delete(&s.key, Expect::Revision(s.revision)))
            .collect();
        ops.push(Op::delete(
            app_key(caller.tenant(), &app),
            Expect::Revision(revision),
        ));
        control
            .audited(
                Record::new("app.delete", &target, Outcome::Ok)
                    .actor(&caller.token.id, caller.tenant())
                    .detail(format!("with {} secret(s)", secrets.len())),
                ops,
            )
            .await
    }
    .await;
    if result.is_err() {
        control
            .audit(
                Record::new("app.delete", &target, Outcome::Failed)
                    .actor(&caller.token.id, caller.tenant()),
            )
            .await;
    }
    let revision = result?;
    control
        .data_plane
        .wait_applied(&target, revision, control.config.apply_timeout)
        .await;
    Ok(Json(AppDeleted { deleted: app }))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/logs",
    operation_id = "appLogs",
    tag = "apps",
    summary = "Read or follow an app's log lines",
    description = "Requires `apps:read`. Newline-delimited JSON, one log line per line: the app's guest output (stdout, stderr) and the node's lines about its requests (refused, failed, timed out). With `follow=true` the response stays open and streams new lines; a follower that falls behind gets a WARN line saying how many lines it lost.",
    params(("app" = String, Path, description = "App name, within the caller's tenant."), verge_api::LogsQuery),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "Log lines.", body = verge_api::LogLine, content_type = "application/x-ndjson"),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "Not found, or not visible to this tenant (`not_found`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn logs(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    caller.require(Scope::AppsRead, caller.tenant()).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    load(&control, &caller, &app).await?;
    let key = format!("{}/{app}", caller.tenant());
    // Subscribe before reading the ring, so no line falls in between.
    let live = query.follow.then(|| control.logs.follow());
    let tail = query.tail.unwrap_or(100).min(crate::logs::RECENT);
    let recent: Vec<Bytes> = control
        .logs
        .recent(&key, tail)
        .iter()
        .map(|l| ndjson(l))
        .collect();
    let recent = futures::stream::iter(recent.into_iter().map(Ok::<_, Infallible>));
    let body = match live {
        None => Body::from_stream(recent),
        Some(rx) => {
            let Some(slot) = FollowerSlot::take(&control) else {
                return Err(ApiError::Unavailable(format!(
                    "{MAX_FOLLOWERS} log streams are open on this server; try again later"
                )));
            };
            let follow = Follow {
                rx,
                key,
                control: control.clone(),
                token: caller.token.id.clone(),
                check: tokio::time::interval(control.config.log_recheck),
                _slot: slot,
            };
            Body::from_stream(recent.chain(futures::stream::unfold(follow, Follow::next)))
        }
    };
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .map_err(ApiError::internal)
}

fn ndjson(line: &crate::logs::LogLine) -> Bytes {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

/// Most `logs?follow=true` streams open at once on a server.
const MAX_FOLLOWERS: usize = 256;

/// A place among the open followers, given back when the stream ends.
struct FollowerSlot(Arc<std::sync::atomic::AtomicUsize>);

impl FollowerSlot {
    fn take(control: &Control) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let count = control.followers.clone();
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FOLLOWERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A live log stream. It ends when the token is revoked or expires, or
/// when the app is deleted (checked every `log_recheck`).
struct Follow {
    rx: broadcast::Receiver<Arc<crate::logs::LogLine>>,
    key: String,
    control: Arc<Control>,
    token: String,
    check: tokio::time::Interval,
    _slot: FollowerSlot,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(line) if line.app == self.key => return Some((Ok(ndjson(&line)), self)),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = json!({"level": "WARN", "message": format!("{n} log lines dropped: this follower fell behind")});
                        return Some((Ok(Bytes::from(format!("{note}\n"))), self));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.check.tick() => {
                    if !self.still_allowed().await {
                        return None;
                    }
                }
            }
        }
    }

    async fn still_allowed(&self) -> bool {
        let store = self.control.store.as_ref();
        let token_ok = match store.get(&crate::model::token_key(&self.token)).await {
            Ok(Some(entry)) => serde_json::from_slice::<crate::model::TokenRecord>(&entry.value)
                .is_ok_and(|t| {
                    t.revoked.is_none() && t.expires_at.is_none_or(|e| e > crate::model::unix_now())
                }),
            _ => false,
        };
        let app_ok = matches!(
            store.get(&format!("{APPS_PREFIX}{}", self.key)).await,
            Ok(Some(_))
        );
        token_ok && app_ok
    }
}
