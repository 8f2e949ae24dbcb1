//! `/v1/apps/{app}/secrets`: setting, listing and deleting an app's
//! secrets. Write-only: values go in, sealed under the master key, and
//! never come out of the API; listing shows names and times.
//!
//! **Invariants**
//! - A value is sealed before it reaches the store; the record, the audit
//!   entry, logs and errors never hold it.
//! - Values are UTF-8 (guests read them as `wasi:config` strings), at most
//!   1 MiB; NUL bytes are kept.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use http_body_util::BodyExt;
use verge_api::{Confirmation, Scope, SecretDeleted, SecretInfo, SecretList, SecretSet};
use verge_manifest::check_config_name;
use verge_secrets::MAX_SECRET_BYTES;
use verge_store::{Expect, Op};

use crate::audit::{Outcome, Record};
use crate::deploy::check_app_name;
use crate::model::{SECRETS_PREFIX, SecretRecord, now, secret_key};
use crate::{ApiError, Caller, Control};

/// Most secrets one app may have.
const MAX_SECRETS_PER_APP: usize = 64;

fn check_names(app: &str, name: &str) -> Result<(), ApiError> {
    check_app_name(app)?;
    check_config_name(name)
        .map_err(|why| ApiError::BadRequest(format!("invalid secret name `{name}`: {why}")))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/secrets",
    operation_id = "listSecrets",
    tag = "secrets",
    summary = "List an app's secrets",
    description = "Requires `apps:read`. Names and times only: no route ever returns a secret's value.",
    params(("app" = String, Path, description = "App name, within the caller's tenant.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "The app's secrets.", body = verge_api::SecretList, content_type = "application/json"),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<SecretList>, ApiError> {
    caller.require(Scope::AppsRead, caller.tenant()).await?;
    check_app_name(&app)?;
    let prefix = format!("{SECRETS_PREFIX}{}/{app}/", caller.tenant());
    let mut secrets = Vec::new();
    for entry in control.store.list(&prefix).await? {
        let record: SecretRecord =
            serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
        secrets.push(SecretInfo {
            name: record.name,
            created: record.created,
            updated: record.updated,
        });
    }
    Ok(Json(SecretList { secrets }))
}

#[utoipa::path(
    put,
    path = "/v1/apps/{app}/secrets/{name}",
    operation_id = "setSecret",
    tag = "secrets",
    summary = "Set a secret",
    description = "Requires `secrets:write`. The body is the value: UTF-8 text (guests read it through `wasi:config/store`), at most 1 MiB, NUL bytes kept. It is sealed with XChaCha20-Poly1305 under the node's master key before it is stored; the audit entry names the secret, never the value. Components that declare the secret see the new value once the answer says `serving`. The app must exist (404 otherwise) and may have at most 64 secrets (409 for a new one beyond that).",
    params(("app" = String, Path, description = "App name, within the caller's tenant."), ("name" = String, Path, description = "Secret name: 1 to 64 of a-z, 0-9 and `_`, starting with a letter.")),
    request_body(content = verge_api::RawBody, content_type = "application/octet-stream", description = "The raw bytes."),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "Stored.", body = verge_api::SecretSet, content_type = "application/json"),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "Not found, or not visible to this tenant (`not_found`).", body = verge_api::ErrorBody),
        (status = 409, description = "A precondition or a claim conflicts (`conflict`).", body = verge_api::ErrorBody),
        (status = 413, description = "The body is too large (`too_large`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn set(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath((app, name)): UrlPath<(String, String)>,
    body: Body,
) -> Result<Json<SecretSet>, ApiError> {
    let target = format!("{}/{app}/{name}", caller.tenant());
    caller.require(Scope::SecretsWrite, &target).await?;
    let result = set_value(&control, &caller, &app, &name, body).await;
    if let Err(e) = &result {
        control
            .audit(
                Record::new("secret.set", &target, Outcome::Failed)
                    .actor(&caller.token.id, caller.tenant())
                    .detail(e.code()),
            )
            .await;
    }
    let (created, revision) = result?;
    let confirmation = applied(&control, &caller, &app, revision).await;
    Ok(Json(SecretSet {
        app,
        secret: name,
        created,
        confirmation,
    }))
}

async fn set_value(
    control: &Control,
    caller: &Caller,
    app: &str,
    name: &str,
    body: Body,
) -> Result<(bool, u64), ApiError> {
    check_names(app, name)?;
    // Serialised with deploys and deletes, so a secret is never written
    // for an app that a concurrent delete is removing.
    let _serial = control.deploy_lock.lock().await;
    // Secrets belong to an existing app (deleting it deletes them), and
    // an app has a bounded number of them: the node keeps them in memory.
    crate::apps::load(control, caller, app)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::NotFound(format!(
                "no app named `{app}`; deploy it first, then set its secrets"
            )),
            other => other,
        })?;
    let bytes = zeroize::Zeroizing::new(
        http_body_util::Limited::new(body, MAX_SECRET_BYTES)
            .collect()
            .await
            .map_err(|_| {
                ApiError::TooLarge(format!("a secret can be at most {MAX_SECRET_BYTES} bytes"))
            })?
            .to_bytes()
            .to_vec(),
    );
    if std::str::from_utf8(&bytes).is_err() {
        return Err(ApiError::BadRequest(
            "a secret must be UTF-8 text: guests read it as a wasi:config string".to_string(),
        ));
    }
    let key = secret_key(caller.tenant(), app, name);
    let existing = control.store.get(&key).await?;
    if existing.is_none() {
        let prefix = format!("{SECRETS_PREFIX}{}/{app}/", caller.tenant());
        let count = control
            .store
            .list_page(&prefix, None, MAX_SECRETS_PER_APP + 1)
            .await?
            .len();
        if count >= MAX_SECRETS_PER_APP {
            return Err(ApiError::Conflict(format!(
                "app `{app}` has {MAX_SECRETS_PER_APP} secrets, the limit; delete one first"
            )));
        }
    }
    let (created, expect) = match &existing {
        Some(entry) => {
            let old: SecretRecord =
                serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
            (old.created, Expect::Revision(entry.revision))
        }
        None => (now(), Expect::Absent),
    };
    let mut record = SecretRecord {
        tenant: caller.tenant().to_string(),
        app: app.to_string(),
        name: name.to_string(),
        created,
        updated: now(),
        sealed: verge_secrets::Sealed {
            key_id: String::new(),
            nonce: String::new(),
            ciphertext: String::new(),
        },
    };
    record.sealed = control
        .keyring
        .seal(record.id(), &bytes)
        .map_err(ApiError::internal)?;
    let value = serde_json::to_vec(&record).map_err(ApiError::internal)?;
    let revision = control
        .audited(
            Record::new(
                "secret.set",
                &format!("{}/{app}/{name}", caller.tenant()),
                Outcome::Ok,
            )
            .actor(&caller.token.id, caller.tenant()),
            vec![Op::put(&key, value, expect)],
        )
        .await?;
    Ok((existing.is_none(), revision))
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/secrets/{name}",
    operation_id = "deleteSecret",
    tag = "secrets",
    summary = "Delete a secret",
    description = "Requires `secrets:write`. Components that declared it read it as unset from then on.",
    params(("app" = String, Path, description = "App name, within the caller's tenant."), ("name" = String, Path, description = "Secret name: 1 to 64 of a-z, 0-9 and `_`, starting with a letter.")),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "Deleted.", body = verge_api::SecretDeleted, content_type = "application/json"),
        (status = 400, description = "The request is invalid (`bad_request`).", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 404, description = "Not found, or not visible to this tenant (`not_found`).", body = verge_api::ErrorBody),
        (status = 409, description = "A precondition or a claim conflicts (`conflict`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath((app, name)): UrlPath<(String, String)>,
) -> Result<Json<SecretDeleted>, ApiError> {
    let target = format!("{}/{app}/{name}", caller.tenant());
    caller.require(Scope::SecretsWrite, &target).await?;
    check_names(&app, &name)?;
    let revision = {
        let _serial = control.deploy_lock.lock().await;
        let key = secret_key(caller.tenant(), &app, &name);
        let entry = control
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("app `{app}` has no secret `{name}`")))?;
        control
            .audited(
                Record::new("secret.delete", &target, Outcome::Ok)
                    .actor(&caller.token.id, caller.tenant()),
                vec![Op::delete(&key, Expect::Revision(entry.revision))],
            )
            .await?
    };
    let confirmation = applied(&control, &caller, &app, revision).await;
    Ok(Json(SecretDeleted {
        app,
        deleted: name,
        confirmation,
    }))
}

/// Waits until the node has the change at `revision`, and says so.
async fn applied(control: &Control, caller: &Caller, app: &str, revision: u64) -> Confirmation {
    control
        .confirm(&format!("{}/{app}", caller.tenant()), revision)
        .await
}
