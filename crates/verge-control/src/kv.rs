//! `/v1/apps/{app}/kv/{store}`: operators read and change an app's
//! key-value data (`verge kv`). Stores are the tenant's own: the tenant
//! comes from the token, never from the request; and only the stores the
//! app's serving versions declare are reachable.
//!
//! **Invariant**: keys must be UTF-8, as guests see them; a key that is not
//! is refused with 400 before anything is read or written. Changes are
//! audited with the key, never the value.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use verge_api::{KeyPage, KvListQuery, Scope};
use verge_kv::{Bucket, KvError};

use crate::audit::{Outcome, Record};
use crate::{ApiError, Caller, Control};
use verge_manifest::Manifest;

fn kv_error(e: KvError) -> ApiError {
    match e {
        KvError::InvalidKey(_) | KvError::InvalidStore(_) | KvError::InvalidTenant(_) => {
            ApiError::BadRequest(e.to_string())
        }
        KvError::QuotaExceeded(_) => ApiError::TooLarge(e.to_string()),
        KvError::NotACounter(_) | KvError::Overflow(_) => ApiError::Conflict(e.to_string()),
        KvError::Unavailable(message) => ApiError::Unavailable(message),
        _ => ApiError::internal(e),
    }
}

fn path<T>(path: Result<UrlPath<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|UrlPath(p)| p).map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; keys are UTF-8 text, percent-encoded in the URL",
            e.body_text()
        ))
    })
}

/// The store `store` of `app` of the caller's tenant, which must be an app
/// whose serving version declares that store: operators reach the stores
/// the app uses, and cannot create others.
async fn bucket(
    control: &Control,
    caller: &Caller,
    app: &str,
    store: &str,
) -> Result<Bucket, ApiError> {
    let (record, _) = crate::apps::load(control, caller, app).await?;
    let manifests: Vec<Manifest> = record
        .live()
        .filter_map(|(version, _)| {
            Manifest::parse(&version.manifest, std::path::Path::new("verge.toml")).ok()
        })
        .collect();
    let declares = |list: fn(&verge_capabilities::Capabilities) -> &Vec<String>| {
        manifests.iter().any(|m| {
            m.components
                .iter()
                .any(|c| list(&c.capabilities).iter().any(|s| s == store))
        })
    };
    let declared = declares(|c| &c.key_value_stores);
    // An operator's write follows the store's declared consistency.
    let consistency = if declares(|c| &c.edge_local_stores) {
        verge_kv::Consistency::EdgeLocal
    } else {
        verge_kv::Consistency::Strict
    };
    if !declared {
        return Err(ApiError::NotFound(format!(
            "app `{app}` declares no key-value store `{}`; components declare theirs with \
             `key_value_stores` in verge.toml",
            store.escape_debug()
        )));
    }
    let kv = control
        .key_value
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this node has no key-value storage".into()))?;
    let (tenant, app, store) = (
        caller.tenant().to_string(),
        app.to_string(),
        store.to_string(),
    );
    // Opening a tenant's database the first time touches the disk.
    tokio::task::spawn_blocking(move || kv.bucket_with(&tenant, &app, &store, consistency))
        .await
        .map_err(ApiError::internal)?
        .map_err(kv_error)
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/kv/{store}",
    operation_id = "listKeys",
    tag = "kv",
    summary = "List keys of an app's key-value store",
    description = "Requires `kv:read`. Keys of the caller's tenant's store, in byte order, a page at a time. Only stores that a serving version of the app declares are reachable; others answer 404.",
    params(("app" = String, Path, description = "App name, within the caller's tenant."), ("store" = String, Path, description = "Store name, as components declare it in `key_value_stores`."), verge_api::KvListQuery),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "A page of keys.", body = verge_api::KeyPage, content_type = "application/json"),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "Not found, or not visible to this tenant (`not_found`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    url: Result<UrlPath<(String, String)>, PathRejection>,
    Query(query): Query<KvListQuery>,
) -> Result<Json<KeyPage>, ApiError> {
    let (app, store) = path(url)?;
    caller
        .require(Scope::KvRead, &format!("{}/{app}", caller.tenant()))
        .await?;
    let bucket = bucket(&control, &caller, &app, &store).await?;
    let (keys, more) = bucket
        .list_sorted(query.after, query.limit.unwrap_or(1000))
        .await
        .map_err(kv_error)?;
    let next = if more { keys.last().cloned() } else { None };
    Ok(Json(KeyPage { keys, next }))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/kv/{store}/{key}",
    operation_id = "getKey",
    tag = "kv",
    summary = "Read a value",
    description = "Requires `kv:read`. Only stores that a serving version of the app declares are reachable; others answer 404.",
    params(("app" = String, Path, description = "App name, within the caller's tenant."), ("store" = String, Path, description = "Store name, as components declare it in `key_value_stores`."), ("key" = String, Path, description = "The key: UTF-8, percent-encoded, 1 to 1024 bytes, no NUL.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The value's bytes.", body = verge_api::RawBody, content_type = "application/octet-stream"),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "Not found, or not visible to this tenant (`not_found`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    url: Result<UrlPath<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (app, store, key) = path(url)?;
    caller
        .require(Scope::KvRead, &format!("{}/{app}", caller.tenant()))
        .await?;
    let bucket = bucket(&control, &caller, &app, &store).await?;
    match bucket.get(&key).await.map_err(kv_error)? {
        Some(value) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            value,
        )
            .into_response()),
        None => Err(ApiError::NotFound(format!(
            "store `{store}` of app `{app}` has no key `{}`",
            key.escape_debug()
        ))),
    }
}

#[utoipa::path(
    put,
    path = "/v1/apps/{app}/kv/{store}/{key}",
    operation_id = "setKey",
    tag = "kv",
    summary = "Write a value",
    description = "Requires `kv:write`. Durable when answered. Over the store's quotas (value size, keys, bytes) answers 413. Audited with the key, not the value. Only stores that a serving version of the app declares are reachable; others answer 404.",
    params(("app" = String, Path, description = "App name, within the caller's tenant."), ("store" = String, Path, description = "Store name, as components declare it in `key_value_stores`."), ("key" = String, Path, description = "The key: UTF-8, percent-encoded, 1 to 1024 bytes, no NUL.")),
    request_body(content = verge_api::RawBody, content_type = "application/octet-stream", description = "The raw bytes."),
    responses(
        crate::openapi::CommonErrors,
        (status = 204, description = "Stored."),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "Not found, or not visible to this tenant (`not_found`).", body = verge_api::ErrorBody),
        (status = 413, description = "The body is too large (`too_large`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn set(
    State(control): State<Arc<Control>>,
    caller: Caller,
    url: Result<UrlPath<(String, String, String)>, PathRejection>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (app, store, key) = path(url)?;
    let target = format!("{}/{app}/{store}", caller.tenant());
    caller.require(Scope::KvWrite, &target).await?;
    let bucket = bucket(&control, &caller, &app, &store).await?;
    bucket.check_key(&key).map_err(kv_error)?;
    let limit = bucket.quotas().max_value_bytes;
    let value = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| ApiError::TooLarge(format!("a value can be at most {limit} bytes")))?
        .to_bytes();
    let result = bucket
        .set(key.clone(), value.to_vec())
        .await
        .map_err(kv_error);
    audit(&control, &caller, "kv.set", &target, &key, result.is_ok()).await;
    result.map(|()| StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/kv/{store}/{key}",
    operation_id = "deleteKey",
    tag = "kv",
    summary = "Delete a key",
    description = "Requires `kv:write`. Deleting a missing key succeeds. Only stores that a serving version of the app declares are reachable; others answer 404.",
    params(("app" = String, Path, description = "App name, within the caller's tenant."), ("store" = String, Path, description = "Store name, as components declare it in `key_value_stores`."), ("key" = String, Path, description = "The key: UTF-8, percent-encoded, 1 to 1024 bytes, no NUL.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 204, description = "Deleted."),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "Not found, or not visible to this tenant (`not_found`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    url: Result<UrlPath<(String, String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (app, store, key) = path(url)?;
    let target = format!("{}/{app}/{store}", caller.tenant());
    caller.require(Scope::KvWrite, &target).await?;
    let bucket = bucket(&control, &caller, &app, &store).await?;
    let result = bucket.delete(key.clone()).await.map_err(kv_error);
    audit(
        &control,
        &caller,
        "kv.delete",
        &target,
        &key,
        result.is_ok(),
    )
    .await;
    result.map(|()| StatusCode::NO_CONTENT)
}

/// Records an operator's change to key-value data (after it was made: the
/// data lives outside the state store, so the two cannot be one write).
async fn audit(
    control: &Control,
    caller: &Caller,
    action: &str,
    target: &str,
    key: &str,
    ok: bool,
) {
    control
        .audit(
            Record::new(
                action,
                target,
                if ok { Outcome::Ok } else { Outcome::Failed },
            )
            .actor(&caller.token.id, caller.tenant())
            .detail(format!("key {}", key.escape_debug())),
        )
        .await;
}
