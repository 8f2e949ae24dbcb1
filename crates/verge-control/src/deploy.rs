//! Deploying: component uploads and new versions.
//!
//! A deploy is two steps, so that large components stream and repeated
//! components are not sent twice: `PUT /v1/blobs/{sha256}` for each
//! component, then `POST /v1/apps/{app}/versions` with the manifest and the
//! digests. The version is validated, checked against other apps' routes,
//! compiled by the data plane, and only then recorded with all the traffic,
//! in one compare-and-set of the app's record.
//!
//! **Invariant**: nothing is recorded for a deploy that fails; the running
//! version is untouched.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use verge_manifest::{Manifest, ManifestError};
use verge_router::Route;
use verge_store::{BlobError, BlobId, Expect, Op};

use crate::audit::{Outcome, Record};
use crate::model::{
    APPS_PREFIX, AppRecord, RouteRecord, TrafficShare, VersionRecord, app_key, now, parse_version,
    secret_key,
};
use crate::{ApiError, Caller, Control};

/// Largest deploy request (the manifest and digests), in bytes.
const MAX_DEPLOY_REQUEST: usize = 1024 * 1024;

/// Largest manifest accepted, in bytes.
const MAX_MANIFEST: usize = 64 * 1024;

/// Path prefixes apps may not claim: the control API and node endpoints.
const RESERVED: &[&str] = &["/v1", "/.well-known/verge"];

pub(crate) async fn upload_blob(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require("apps:deploy", "blobs").await?;
    let id: BlobId = digest
        .parse()
        .map_err(|e: BlobError| ApiError::BadRequest(e.to_string()))?;
    let max = control.config.max_upload;
    let too_large = || {
        ApiError::TooLarge(format!(
            "the component is larger than this server's upload limit of {max} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let mut writer = control.blobs.writer().await.map_err(blob_error)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the upload was interrupted: {e}")))?;
        if writer.len() + chunk.len() as u64 > max {
            return Err(too_large());
        }
        writer.write(&chunk).await.map_err(blob_error)?;
    }
    let size = writer.len();
    match writer.finish(Some(&id)).await {
        Ok(id) => {
            control
                .store
                .put(&upload_key(caller.tenant(), &id), Vec::new(), Expect::Any)
                .await?;
            Ok((
                StatusCode::CREATED,
                Json(json!({"digest": id.to_string(), "size": size})),
            ))
        }
        Err(e @ BlobError::Mismatch { .. }) => Err(ApiError::BadRequest(e.to_string())),
        Err(e) => Err(blob_error(e)),
    }
}

/// A blob store that cannot be reached is a 503 with its reason; any other
/// failure is internal.
fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::Unavailable(message) => ApiError::Unavailable(message),
        e => ApiError::internal(e),
    }
}

/// Body of `POST /v1/apps/{app}/versions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployRequest {
    /// The app's `verge.toml`, as text.
    manifest: String,
    /// Component name → sha256 of its uploaded `.wasm`.
    components: BTreeMap<String, String>,
    /// Refuse with 409 unless this version (`v3`) serves now.
    #[serde(default)]
    expect_version: Option<String>,
    /// The manifest environment whose variables to use.
    #[serde(default)]
    environment: Option<String>,
}

/// Reads a JSON body of at most `limit` bytes.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    read_optional_json::<Option<T>>(body, limit)
        .await?
        .ok_or_else(|| ApiError::BadRequest("the request needs a JSON body".to_string()))
}

/// Reads a JSON body of at most `limit` bytes; an empty body is `T::default()`.
pub(crate) async fn read_optional_json<T: serde::de::DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| ApiError::TooLarge(format!("the request body is larger than {limit} bytes")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON request: {e}")))
}

pub(crate) fn check_app_name(app: &str) -> Result<(), ApiError> {
    verge_manifest::check_name(app)
        .map_err(|hint| ApiError::BadRequest(format!("invalid app name `{app}`: {hint}")))
}

pub(crate) async fn create_version(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let target = format!("{}/{app}", caller.tenant());
    caller.require("apps:deploy", &target).await?;
    // A deploy that lands is audited in the same write; one that fails
    // is audited here.
    let result = deploy(&control, &caller, &app, body).await;
    if let Err(e) = &result {
        control
            .audit(
                Record::new("app.deploy", &target, Outcome::Failed)
                    .actor(&caller.token.id, caller.tenant())
                    .detail(e.code()),
            )
            .await;
    }
    let (status, body) = result?;
    // Stopping here leaves the version recorded but maybe not yet served.
    control.pause_if("recorded").await;
    let mut body = body;
    match body["revision"].as_u64() {
        Some(revision) => control.confirm(&target, revision, &mut body).await,
        None => crate::Applied::TimedOut.describe(&mut body),
    }
    Ok((status, Json(body)))
}

async fn deploy(
    control: &Control,
    caller: &Caller,
    app: &str,
    body: Body,
) -> Result<(StatusCode, Value), ApiError> {
    check_app_name(app)?;
    let request: DeployRequest = read_json(body, MAX_DEPLOY_REQUEST).await?;
    if request.manifest.len() > MAX_MANIFEST {
        return Err(ApiError::TooLarge(format!(
            "the manifest is larger than {MAX_MANIFEST} bytes"
        )));
    }
    let mut manifest = Manifest::parse(&request.manifest, Path::new("verge.toml"))
        .map_err(|e: ManifestError| ApiError::BadRequest(e.to_string()))?;
    if let Some(env) = &request.environment {
        manifest
            .select_environment(env)
            .map_err(ApiError::BadRequest)?;
    }
    let mut components = BTreeMap::new();
    for c in &manifest.components {
        let digest = request.components.get(&c.name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "component `{}` of the manifest has no uploaded digest",
                c.name
            ))
        })?;
        let id: BlobId = digest
            .parse()
            .map_err(|e: BlobError| ApiError::BadRequest(format!("component `{}`: {e}", c.name)))?;
        // The tenant's upload record is enough: a blob and its records go
        // together, and compiling the version reads (and verifies) it next.
        let uploaded = control
            .store
            .get(&upload_key(caller.tenant(), &id))
            .await?
            .is_some();
        if !uploaded {
            return Err(ApiError::BadRequest(format!(
                "component `{}`: blob {id} was not uploaded; PUT it to /v1/blobs/{id} first",
                c.name
            )));
        }
        components.insert(c.name.clone(), id.to_string());
    }
    if let Some(extra) = request
        .components
        .keys()
        .find(|name| manifest.component(name).is_none())
    {
        return Err(ApiError::BadRequest(format!(
            "`{extra}` is not a component of the manifest"
        )));
    }
    let routes: Vec<Route> = manifest
        .components
        .iter()
        .flat_map(|c| c.routes.iter().cloned())
        .collect();
    for route in &routes {
        let prefix = route.prefix();
        let reserved = RESERVED
            .iter()
            .any(|p| prefix == *p || prefix.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
        if reserved {
            return Err(ApiError::BadRequest(format!(
                "route `{route}` is reserved for the control API and node endpoints"
            )));
        }
    }
    check_operator_grants(caller, &manifest, &routes)?;
    let digest = version_digest(
        &request.manifest,
        &components,
        request.environment.as_deref(),
    );
    control.pause_if("validated").await;

    // Compile before taking the lock, so a slow compile of one tenant
    // never holds up everyone's deploys; under the lock the version
    // number is confirmed (a concurrent deploy may have taken it, then
    // compiling again hits the compile cache).
    let key = app_key(caller.tenant(), app);
    let draft = |record: &AppRecord| VersionRecord {
        number: record.next_version,
        digest: digest.clone(),
        manifest: request.manifest.clone(),
        components: components.clone(),
        routes: routes.iter().map(RouteRecord::from).collect(),
        created: now(),
        created_by: caller.token.id.clone(),
        environment: request.environment.clone(),
    };
    let (early, _) = read_record(control, &key, caller.tenant(), app).await?;
    let mut prepared = None;
    if !early.versions.iter().any(|v| v.digest == digest) {
        let v = draft(&early);
        control
            .data_plane
            .prepare(&early, &v)
            .await
            .map_err(ApiError::BadRequest)?;
        prepared = Some(v.number);
    }

    let _serial = control.deploy_lock.lock().await;
    let (mut record, expect) = read_record(control, &key, caller.tenant(), app).await?;
    if let Some(expected) = &request.expect_version {
        let expected = parse_version(expected)
            .ok_or_else(|| ApiError::BadRequest(format!("`{expected}` is not a version")))?;
        if record.primary() != Some(expected) {
            return Err(ApiError::Conflict(format!(
                "the app no longer serves v{expected} (now {}); deploy again from the latest state",
                record
                    .primary()
                    .map_or("nothing".to_string(), |v| format!("v{v}"))
            )));
        }
    }
    check_claims(control, caller.tenant(), app, &routes).await?;

    let reused = record.versions.iter().find(|v| v.digest == digest).cloned();
    let unchanged = reused.is_some();
    let version = match reused {
        Some(v) => v,
        None => {
            let v = draft(&record);
            if prepared != Some(v.number) {
                control
                    .data_plane
                    .prepare(&record, &v)
                    .await
                    .map_err(ApiError::BadRequest)?;
            }
            record.next_version += 1;
            record.versions.push(v.clone());
            v
        }
    };
    control.pause_if("prepared").await;
    record.traffic = vec![TrafficShare {
        version: version.number,
        weight: 100,
    }];
    record.prune();
    let value = serde_json::to_vec(&record).map_err(ApiError::internal)?;
    let revision = control
        .audited(
            Record::new(
                "app.deploy",
                &format!("{}/{app}", caller.tenant()),
                Outcome::Ok,
            )
            .actor(&caller.token.id, caller.tenant())
            .detail(format!("version v{}", version.number)),
            vec![Op::put(&key, value, expect)],
        )
        .await?;
    tracing::info!(app = %key, version = version.number, "deployed");
    // Declared secrets nobody has set yet read as unset in the guest: say
    // so, since a deploy is usually when that is noticed.
    let mut unset = Vec::new();
    for name in manifest
        .components
        .iter()
        .flat_map(|c| &c.capabilities.secrets)
    {
        let stored = control
            .store
            .get(&secret_key(caller.tenant(), app, name))
            .await?
            .is_some();
        if !stored && !unset.contains(name) {
            unset.push(name.clone());
        }
    }
    Ok((
        if unchanged {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        json!({
            "app": app,
            "tenant": caller.tenant(),
            "version": format!("v{}", version.number),
            "digest": digest,
            "routes": routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "unchanged": unchanged,
            "revision": revision,
            "unset_secrets": unset,
        }),
    ))
}

/// The app's record, or a new empty one, with the precondition to write it.
async fn read_record(
    control: &Control,
    key: &str,
    tenant: &str,
    app: &str,
) -> Result<(AppRecord, Expect), ApiError> {
    Ok(match control.store.get(key).await? {
        Some(entry) => (
            serde_json::from_slice::<AppRecord>(&entry.value).map_err(ApiError::internal)?,
            Expect::Revision(entry.revision),
        ),
        None => (
            AppRecord {
                tenant: tenant.to_string(),
                name: app.to_string(),
                created: now(),
                next_version: 1,
                versions: Vec::new(),
                traffic: Vec::new(),
            },
            Expect::Absent,
        ),
    })
}

/// What only an operator (`tenants:admin`) may grant an app: the
/// catch-all route (`/` on every host), and outbound calls to this
/// machine or a private network.
fn check_operator_grants(
    caller: &Caller,
    manifest: &Manifest,
    routes: &[Route],
) -> Result<(), ApiError> {
    if caller.has("tenants:admin") {
        return Ok(());
    }
    if routes
        .iter()
        .any(|r| r.host().is_none() && r.prefix() == "/")
    {
        return Err(ApiError::BadRequest(
            "route `/` on every host would take all of this server's traffic; only an operator \
             may claim it. Deploy under a prefix (e.g. `--route /NAME`) or on a host"
                .to_string(),
        ));
    }
    for c in &manifest.components {
        if let Some(p) = c
            .capabilities
            .outbound
            .patterns()
            .iter()
            .find(|p| p.names_internal())
        {
            return Err(ApiError::BadRequest(format!(
                "component `{}` may call `{p}`, which names this server or a private network; \
                 only an operator may grant that",
                c.name
            )));
        }
    }
    Ok(())
}

/// The store key recording that `tenant` uploaded blob `id`.
pub(crate) fn upload_key(tenant: &str, id: &BlobId) -> String {
    format!("uploads/{tenant}/{id}")
}

/// Refuses routes another app already serves: any overlap with another
/// tenant's route, or the same route as another app of this tenant.
pub(crate) async fn check_claims(
    control: &Control,
    tenant: &str,
    app: &str,
    routes: &[Route],
) -> Result<(), ApiError> {
    for entry in control.store.list(APPS_PREFIX).await? {
        let Ok(other) = serde_json::from_slice::<AppRecord>(&entry.value) else {
            continue;
        };
        if other.tenant == tenant && other.name == app {
            continue;
        }
        for (version, _) in other.live() {
            for claimed in version.routes.iter().filter_map(RouteRecord::route) {
                for route in routes {
                    if other.tenant != tenant && claimed.overlaps(route) {
                        return Err(ApiError::Conflict(format!(
                            "route `{route}` overlaps a route claimed by another tenant; \
                             choose another path prefix or host"
                        )));
                    }
                    if other.tenant == tenant && &claimed == route {
                        return Err(ApiError::Conflict(format!(
                            "route `{route}` is already served by app `{}`",
                            other.name
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The content digest of a version: its manifest and its components.
fn version_digest(
    manifest: &str,
    components: &BTreeMap<String, String>,
    environment: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(manifest.as_bytes());
    if let Some(env) = environment {
        hasher.update(b"\0environment=");
        hasher.update(env.as_bytes());
    }
    for (name, digest) in components {
        hasher.update(b"\0");
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(digest.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}
