//! Tokens (create, list, revoke) and reading the audit log.
//!
//! **Invariants**
//! - A token can only grant scopes its creator holds, for the creator's own
//!   tenant unless the creator holds `tenants:admin`.
//! - A tenant's token admin sees and revokes only that tenant's tokens; a
//!   foreign token id answers 404.
//! - The secret of a token is returned once, by create; list never shows it.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use verge_store::{Expect, Op};

use crate::audit::{self, Outcome, Record};
use crate::auth::{self, SCOPES};
use crate::deploy::read_json;
use crate::model::{TokenRecord, now, rfc3339, token_key, unix_now};
use crate::{ApiError, Caller, Control};

/// Body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// Tenant the token acts for; default: the caller's.
    #[serde(default)]
    tenant: Option<String>,
    /// Scopes to grant.
    scopes: Vec<String>,
    /// What the token is for.
    #[serde(default)]
    name: String,
    /// Lifetime, e.g. `30days` or `12h`; default: no expiry.
    #[serde(default)]
    expires_in: Option<String>,
}

/// Longest lifetime a token may be given (10 years).
const MAX_LIFETIME_SECS: u64 = 10 * 366 * 24 * 3600;

fn visible(caller: &Caller, record: &TokenRecord) -> bool {
    record.tenant == caller.tenant() || caller.has("tenants:admin")
}

fn describe(record: &TokenRecord) -> Value {
    let state = if record.revoked.is_some() {
        "revoked"
    } else if record.expires_at.is_some_and(|t| t <= unix_now()) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": record.id,
        "tenant": record.tenant,
        "scopes": record.scopes,
        "name": record.name,
        "created": record.created,
        "expires": record.expires_at.map(rfc3339),
        "revoked": record.revoked,
        "state": state,
    })
}

pub(crate) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require("tokens:admin", caller.tenant()).await?;
    let request: CreateToken = read_json(body, 64 * 1024).await?;
    let tenant = request
        .tenant
        .clone()
        .unwrap_or_else(|| caller.tenant().to_string());
    let result = async {
        verge_manifest::check_name(&tenant).map_err(|hint| {
            ApiError::BadRequest(format!("invalid tenant name `{tenant}`: {hint}"))
        })?;
        if tenant != caller.tenant() && !caller.has("tenants:admin") {
            return Err(ApiError::Forbidden("tenants:admin".to_string()));
        }
        if request.scopes.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "give at least one scope: {}",
                SCOPES.join(", ")
            )));
        }
        for scope in &request.scopes {
            if !SCOPES.contains(&scope.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown scope `{scope}`; scopes are {}",
                    SCOPES.join(", ")
                )));
            }
            if !caller.has(scope) {
                return Err(ApiError::Forbidden(scope.clone()));
            }
        }
        if request.name.len() > 200 || request.name.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(
                "the token name must be at most 200 printable characters".to_string(),
            ));
        }
        let requested = match &request.expires_in {
            None => None,
            Some(text) => {
                let d = humantime::parse_duration(text).map_err(|e| {
                    ApiError::BadRequest(format!("invalid `expires_in` `{text}`: {e}"))
                })?;
                if d.as_secs() > MAX_LIFETIME_SECS {
                    return Err(ApiError::BadRequest(format!(
                        "`expires_in` `{text}` is longer than 10 years; leave it out for a token \
                         that does not expire"
                    )));
                }
                Some(unix_now().saturating_add(d.as_secs().max(1)))
            }
        };
        // A token never outlives the token that created it.
        let expires_at = match (requested, caller.token.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut scopes = request.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let issued = auth::mint(&tenant, scopes, &request.name, expires_at)?;
        let entry = Record::new("token.create", &tenant, Outcome::Ok)
            .actor(&caller.token.id, caller.tenant())
            .detail(format!(
                "token {} scopes {}",
                issued.record.id,
                issued.record.scopes.join(",")
            ));
        control.audited(entry, vec![issued.op()?]).await?;
        Ok(issued)
    }
    .await;
    if let Err(e) = &result {
        control
            .audit(
                Record::new("token.create", &tenant, Outcome::Failed)
                    .actor(&caller.token.id, caller.tenant())
                    .detail(e.code()),
            )
            .await;
    }
    let issued = result?;
    let mut body = describe(&issued.record);
    body["token"] = Value::String(issued.text);
    Ok((StatusCode::CREATED, Json(body)))
}

pub(crate) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require("tokens:admin", caller.tenant()).await?;
    let mut tokens = Vec::new();
    for entry in control.store.list("tokens/").await? {
        let record: TokenRecord =
            serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
        if visible(&caller, &record) {
            tokens.push(describe(&record));
        }
    }
    Ok(Json(json!({ "tokens": tokens })))
}

pub(crate) async fn revoke(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("tokens:admin", caller.tenant()).await?;
    let not_found = || ApiError::NotFound(format!("no token with id `{id}`"));
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let key = token_key(&id);
    let entry = control.store.get(&key).await?.ok_or_else(not_found)?;
    let mut record: TokenRecord =
        serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
    if !visible(&caller, &record) {
        return Err(not_found());
    }
    // Revoking is as powerful as what the token could do: only a caller
    // holding every scope of the token may revoke it.
    if let Some(scope) = record.scopes.iter().find(|s| !caller.has(s)) {
        return Err(ApiError::Forbidden(scope.clone()));
    }
    if record.revoked.is_none() && record.scopes.iter().any(|s| s == "tenants:admin") {
        let mut admins = 0;
        for entry in control.store.list("tokens/").await? {
            let other: TokenRecord =
                serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
            let active = other.revoked.is_none() && other.expires_at.is_none_or(|t| t > unix_now());
            if active && other.scopes.iter().any(|s| s == "tenants:admin") {
                admins += 1;
            }
        }
        if admins <= 1 {
            return Err(ApiError::Conflict(
                "this is the last token with `tenants:admin`; create another one first (or \
                 issue a new one with `verge server --issue-admin-token`)"
                    .to_string(),
            ));
        }
    }
    if record.revoked.is_none() {
        record.revoked = Some(now());
        let value = serde_json::to_vec(&record).map_err(ApiError::internal)?;
        control
            .audited(
                Record::new("token.revoke", &record.tenant, Outcome::Ok)
                    .actor(&caller.token.id, caller.tenant())
                    .detail(format!("token {id}")),
                vec![Op::put(&key, value, Expect::Revision(entry.revision))],
            )
            .await?;
    }
    Ok(Json(describe(&record)))
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    /// Only entries after this sequence number.
    #[serde(default)]
    after: u64,
    /// At most this many entries (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

pub(crate) async fn audit_list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require("audit:read", caller.tenant()).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let all = caller.has("tenants:admin");
    let tenant = caller.tenant();
    let entries = audit::entries(control.store.as_ref(), query.after, limit, |e| {
        all || e.tenant == tenant
    })
    .await?;
    let next = (entries.len() == limit).then(|| entries.last().map(|e| e.seq));
    Ok(Json(
        json!({ "entries": entries, "next_after": next.flatten() }),
    ))
}

pub(crate) async fn audit_verify(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    // The chain spans every tenant: verifying it is an operator's task.
    caller.require("audit:read", caller.tenant()).await?;
    caller.require("tenants:admin", caller.tenant()).await?;
    let report = audit::verify(control.store.as_ref()).await?;
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}
