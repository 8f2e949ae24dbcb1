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
use verge_api::{
    AuditPage, AuditQuery, CreateTokenRequest, Scope, Token, TokenCreated, TokenList, TokenState,
    Verification,
};
use verge_store::{Expect, Op};

use crate::audit::{self, Outcome, Record};
use crate::auth;
use crate::deploy::read_json;
use crate::model::{TokenRecord, now, rfc3339, token_key, unix_now};
use crate::{ApiError, Caller, Control};

/// Longest lifetime a token may be given (10 years).
const MAX_LIFETIME_SECS: u64 = 10 * 366 * 24 * 3600;

fn visible(caller: &Caller, record: &TokenRecord) -> bool {
    record.tenant == caller.tenant() || caller.has(Scope::TenantsAdmin)
}

fn describe(record: &TokenRecord) -> Token {
    let state = if record.revoked.is_some() {
        TokenState::Revoked
    } else if record.expires_at.is_some_and(|t| t <= unix_now()) {
        TokenState::Expired
    } else {
        TokenState::Active
    };
    Token {
        id: record.id.clone(),
        tenant: record.tenant.clone(),
        scopes: record.scopes.clone(),
        name: record.name.clone(),
        created: record.created.clone(),
        expires: record.expires_at.map(rfc3339),
        revoked: record.revoked.clone(),
        state,
    }
}

#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "createToken",
    tag = "tokens",
    summary = "Create a token",
    description = "Requires the `tokens:admin` scope. A token can only grant scopes the caller holds, for the caller's own tenant unless the caller holds `tenants:admin`. The token text is returned once. The body is at most 64 KiB. Audited as `token.create`. `expires_in` is at most 10 years; a token never expires later than the token creating it.",
    request_body(content = verge_api::CreateTokenRequest, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        (status = 201, description = "The token was created.", body = verge_api::TokenCreated, content_type = "application/json"),
        (status = 400, description = "Invalid JSON, tenant name or `expires_in`; no scope or an unknown scope; or a name longer than 200 characters or with control characters.", body = verge_api::ErrorBody),
        (status = 403, description = "The caller lacks `tokens:admin`, `tenants:admin` (for another tenant), or a scope it tries to grant.", body = verge_api::ErrorBody),
        (status = 413, description = "The request body is larger than 64 KiB.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    body: Body,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    caller.require(Scope::TokensAdmin, caller.tenant()).await?;
    let request: CreateTokenRequest = read_json(body, 64 * 1024).await?;
    let tenant = request
        .tenant
        .clone()
        .unwrap_or_else(|| caller.tenant().to_string());
    let result = async {
        verge_manifest::check_name(&tenant).map_err(|hint| {
            ApiError::BadRequest(format!("invalid tenant name `{tenant}`: {hint}"))
        })?;
        if tenant != caller.tenant() && !caller.has(Scope::TenantsAdmin) {
            return Err(ApiError::Forbidden("tenants:admin".to_string()));
        }
        if request.scopes.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "give at least one scope: {}",
                Scope::ALL.map(Scope::as_str).join(", ")
            )));
        }
        for scope in &request.scopes {
            if !caller.has(*scope) {
                return Err(ApiError::Forbidden(scope.to_string()));
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
        let mut scopes: Vec<String> = request.scopes.iter().map(|s| s.to_string()).collect();
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
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            info: describe(&issued.record),
            token: issued.text,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "listTokens",
    tag = "tokens",
    summary = "List tokens",
    description = "Requires the `tokens:admin` scope. Lists the tokens of the caller's tenant, or of every tenant with `tenants:admin`. Secrets are never shown.",
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The visible tokens.", body = verge_api::TokenList, content_type = "application/json"),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<TokenList>, ApiError> {
    caller.require(Scope::TokensAdmin, caller.tenant()).await?;
    let mut tokens = Vec::new();
    for entry in control.store.list("tokens/").await? {
        let record: TokenRecord =
            serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
        if visible(&caller, &record) {
            tokens.push(describe(&record));
        }
    }
    Ok(Json(TokenList { tokens }))
}

#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    operation_id = "revokeToken",
    tag = "tokens",
    summary = "Revoke a token",
    description = "Requires the `tokens:admin` scope. Revokes a token of the caller's tenant (any tenant with `tenants:admin`). Revoking a revoked token changes nothing and answers it again. Audited as `token.revoke`. The caller must hold every scope of the token it revokes (403 otherwise); the last active `tenants:admin` token cannot be revoked (409).",
    params(("id" = String, Path, description = "Token id, 16 hex digits.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The token, now revoked.", body = verge_api::Token, content_type = "application/json"),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "No such token, a malformed id, or a token of another tenant.", body = verge_api::ErrorBody),
        (status = 409, description = "The token changed concurrently; try again.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn revoke(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Token>, ApiError> {
    caller.require(Scope::TokensAdmin, caller.tenant()).await?;
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
    let held = |s: &String| s.parse().is_ok_and(|scope| caller.has(scope));
    if let Some(scope) = record.scopes.iter().find(|s| !held(s)) {
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

#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "listAudit",
    tag = "audit",
    summary = "Read the audit log",
    description = "Requires the `audit:read` scope. Entries of the caller's tenant, or of every tenant with `tenants:admin`, oldest first.",
    params(AuditQuery),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "A page of entries.", body = verge_api::AuditPage, content_type = "application/json"),
        (status = 400, description = "The query string does not parse.", body = verge_api::ErrorBody, content_type = "application/json"),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn audit_list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Scope::AuditRead, caller.tenant()).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let all = caller.has(Scope::TenantsAdmin);
    let tenant = caller.tenant();
    let entries = audit::entries(control.store.as_ref(), query.after, limit, |e| {
        all || e.tenant == tenant
    })
    .await?;
    let next_after = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    let entries = entries
        .into_iter()
        .map(|e| verge_api::AuditEntry {
            seq: e.seq,
            time: e.time,
            actor: e.actor,
            tenant: e.tenant,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            detail: e.detail,
            prev: e.prev,
            hash: e.hash,
        })
        .collect();
    Ok(Json(AuditPage {
        entries,
        next_after,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    operation_id = "verifyAudit",
    tag = "audit",
    summary = "Verify the audit chain",
    description = "Requires `audit:read` and `tenants:admin`: the chain spans every tenant. Recomputes the hash chain and reports the first entry that was edited, removed or reordered.",
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The result of the check (a broken chain is still 200, with `ok: false`).", body = verge_api::Verification, content_type = "application/json"),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn audit_verify(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> Result<Json<Verification>, ApiError> {
    // The chain spans every tenant: verifying it is an operator's task.
    caller.require(Scope::AuditRead, caller.tenant()).await?;
    caller.require(Scope::TenantsAdmin, caller.tenant()).await?;
    let report = audit::verify(control.store.as_ref()).await?;
    Ok(Json(Verification {
        entries: report.entries,
        ok: report.ok,
        first_bad: report.first_bad,
        problem: report.problem,
    }))
}
