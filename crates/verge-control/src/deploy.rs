//! Deploying: component uploads and new versions.
//!
//! A deploy is two steps, so that large components stream and repeated
//! components are not sent twice: `PUT /v1/blobs/{sha256}` for each
//! component, then `POST /v1/apps/{app}/versions` with the manifest and the
//! digests. The version is validated, checked against other apps' routes,
//! compiled by the data plane, and only then recorded with all the traffic,
//! in one compare-and-set of the app's record (with the route claims'
//! key when it claims new routes: see [`Claims`]).
//!
//! **Invariants**
//! - Nothing is recorded for a deploy that fails; the running version is
//!   untouched, and what it compiled is released.
//! - No two apps serve the same route, nor two tenants overlapping ones,
//!   however many nodes deploy at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use verge_api::{BlobUploaded, Confirmation, DeployRequest, DeployResponse, Scope, VersionName};
use verge_manifest::{Manifest, ManifestError};
use verge_router::Route;
use verge_store::{BlobError, BlobId, Expect, Op, Revision};

use crate::audit::{Outcome, Record};
use crate::model::{
    APPS_PREFIX, AppRecord, RouteRecord, TrafficShare, VersionRecord, app_key, now, secret_key,
};
use crate::{ApiError, Caller, Control, Prepared};

/// Largest deploy request (the manifest and digests), in bytes.
const MAX_DEPLOY_REQUEST: usize = 1024 * 1024;

/// Largest manifest accepted, in bytes.
const MAX_MANIFEST: usize = 64 * 1024;

/// Path prefixes apps may not claim: the control API and node endpoints.
const RESERVED: &[&str] = &["/v1", "/.well-known/verge"];

#[utoipa::path(
    put,
    path = "/v1/blobs/{digest}",
    operation_id = "uploadBlob",
    tag = "deploy",
    summary = "Upload a component",
    description = "Requires the `apps:deploy` scope. Streams a component's `.wasm` into the blob store; the bytes must hash to `digest`. Larger than the server's upload limit (default 64 MiB) answers 413.",
    params(("digest" = String, Path, description = "sha256 of the body: 64 lower-case hex digits, optionally prefixed `sha256:`.")),
    request_body(content = verge_api::RawBody, content_type = "application/octet-stream", description = "The raw bytes."),
    responses(
        crate::openapi::CommonErrors,
        (status = 201, description = "The blob is stored.", body = verge_api::BlobUploaded, content_type = "application/json"),
        (status = 400, description = "`digest` is not a sha256, the upload was interrupted, or the bytes hash to another digest.", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 413, description = "The component is larger than the server's upload limit.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn upload_blob(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BlobUploaded>), ApiError> {
    caller.require(Scope::AppsDeploy, "blobs").await?;
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
                Json(BlobUploaded {
                    digest: id.to_string(),
                    size,
                }),
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

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/versions",
    operation_id = "deployVersion",
    tag = "deploy",
    summary = "Deploy a version",
    description = "Requires the `apps:deploy` scope. Creates the app if needed. Upload every component with `PUT /v1/blobs/{digest}` first. The version is validated, its routes are checked against other apps' claims, it is compiled by the data plane, and then recorded taking 100% of the traffic. A version with the same digest as an existing one is reused (200, `unchanged: true`). The body is at most 1 MiB. Audited as `app.deploy`. Only a token with `tenants:admin` may claim the catch-all route (`/` on every host) or grant outbound calls to this machine or a private network (400 otherwise). Components must have been uploaded by the caller's tenant. The manifest may be at most 64 KiB (413). The response's `serving` is false, with `problem` saying why, when the node could not confirm it serves the version.",
    params(("app" = String, Path, description = "App name, within the caller's tenant.")),
    request_body(content = verge_api::DeployRequest, content_type = "application/json"),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "An identical version already existed; it now takes all traffic.", body = verge_api::DeployResponse, content_type = "application/json"),
        (status = 201, description = "A new version was recorded and takes all traffic.", body = verge_api::DeployResponse, content_type = "application/json"),
        (status = 400, description = "Invalid app name, JSON, manifest or digest; a component without an uploaded blob or not in the manifest; a reserved route (`/v1`, `/.well-known/verge`); `expect_version` not a version; or the data plane refused to compile the version.", body = verge_api::ErrorBody),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
        (status = 409, description = "`expect_version` does not serve now, a route is claimed by another app, or the app changed during the deploy.", body = verge_api::ErrorBody),
        (status = 413, description = "The request body is larger than 1 MiB.", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn create_version(
    State(control): State<Arc<Control>>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
    body: Body,
) -> Result<(StatusCode, Json<DeployResponse>), ApiError> {
    let target = format!("{}/{app}", caller.tenant());
    caller.require(Scope::AppsDeploy, &target).await?;
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
    // What the deploy compiled stays held until the node confirms it.
    let (status, mut body, _prepared) = result?;
    // Stopping here leaves the version recorded but maybe not yet served.
    control.pause_if("recorded").await;
    body.confirmation = control.confirm(&target, body.revision).await;
    Ok((status, Json(body)))
}

/// A deploy request that passed every check that needs no lock: what
/// `record_version` turns into a version.
struct Draft {
    request: DeployRequest,
    manifest: Manifest,
    /// Component name → blob digest.
    components: BTreeMap<String, String>,
    routes: Vec<Route>,
    /// The version's content digest.
    digest: String,
}

impl Draft {
    /// The version this draft becomes as the next one of `record`.
    fn version(&self, record: &AppRecord, caller: &Caller) -> VersionRecord {
        VersionRecord {
            number: record.next_version,
            digest: self.digest.clone(),
            manifest: self.request.manifest.clone(),
            components: self.components.clone(),
            routes: self.routes.iter().map(RouteRecord::from).collect(),
            created: now(),
            created_by: caller.token.id.clone(),
            environment: self.request.environment.clone(),
        }
    }
}

async fn deploy(
    control: &Control,
    caller: &Caller,
    app: &str,
    body: Body,
) -> Result<(StatusCode, DeployResponse, Prepared), ApiError> {
    check_app_name(app)?;
    let request: DeployRequest = read_json(body, MAX_DEPLOY_REQUEST).await?;
    let draft = check_request(control, caller, request).await?;
    control.pause_if("validated").await;

    // Compile before taking the lock, so a slow compile of one tenant
    // never holds up everyone's deploys; under the lock the version
    // number is confirmed (a concurrent deploy may have taken it, then
    // compiling again hits the compile cache).
    let key = app_key(caller.tenant(), app);
    let mut prepared = Prepared::new(&control.data_plane);
    let (early, _) = read_record(control, &key, caller.tenant(), app).await?;
    if !early.versions.iter().any(|v| v.digest == draft.digest) {
        prepared
            .prepare(&early, &draft.version(&early, caller))
            .await?;
    }
    let (version, unchanged, revision) =
        record_version(control, caller, app, &draft, &mut prepared).await?;
    tracing::info!(app = %key, version = version.number, "deployed");
    let unset = unset_secrets(control, caller.tenant(), app, &draft.manifest).await?;
    let status = if unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = DeployResponse {
        app: app.to_string(),
        tenant: caller.tenant().to_string(),
        version: VersionName(version.number),
        digest: draft.digest.clone(),
        routes: draft.routes.iter().map(ToString::to_string).collect(),
        unchanged,
        revision,
        unset_secrets: unset,
        confirmation: Confirmation::default(),
    };
    Ok((status, body, prepared))
}

/// Checks a deploy request against the manifest rules, the caller's
/// uploads and grants, and reserved routes.
async fn check_request(
    control: &Control,
    caller: &Caller,
    request: DeployRequest,
) -> Result<Draft, ApiError> {
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
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
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
    Ok(Draft {
        request,
        manifest,
        components,
        routes,
        digest,
    })
}

/// Most times a deploy or traffic change is tried again when another
/// change (on this node or another node of a cluster) landed between
/// reading the state and writing it.
pub(crate) const MAX_ATTEMPTS: usize = 20;

/// Records `draft` as the version taking all traffic of `app`, in one
/// compare-and-set of the app's record together with its route claims
/// (see [`Claims`]); tried again from a fresh read when another change
/// landed meanwhile. Returns the version, whether it already existed, and
/// the revision of the write.
async fn record_version(
    control: &Control,
    caller: &Caller,
    app: &str,
    draft: &Draft,
    prepared: &mut Prepared,
) -> Result<(VersionRecord, bool, Revision), ApiError> {
    let key = app_key(caller.tenant(), app);
    let _serial = control.deploy_lock.lock().await;
    for _ in 0..MAX_ATTEMPTS {
        let claims = Claims::read(control).await?;
        let (mut record, expect) = read_record(control, &key, caller.tenant(), app).await?;
        if let Some(VersionName(expected)) = draft.request.expect_version
            && record.primary() != Some(expected)
        {
            return Err(ApiError::Conflict(format!(
                "the app no longer serves v{expected} (now {}); deploy again from the latest state",
                record
                    .primary()
                    .map_or("nothing".to_string(), |v| format!("v{v}"))
            )));
        }
        check_claims(control, caller.tenant(), app, &draft.routes).await?;
        let before = live_routes(&record);
        let reused = record
            .versions
            .iter()
            .find(|v| v.digest == draft.digest)
            .cloned();
        let unchanged = reused.is_some();
        let version = match reused {
            Some(v) => v,
            None => {
                let v = draft.version(&record, caller);
                if !prepared.holds(&v) {
                    prepared.prepare(&record, &v).await?;
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
        let mut ops = vec![Op::put(&key, value, expect)];
        ops.extend(claims.op_if_new(&key, &before, &draft.routes));
        let entry = Record::new("app.deploy", &key_target(caller, app), Outcome::Ok)
            .actor(&caller.token.id, caller.tenant())
            .detail(format!("version v{}", version.number));
        if let Some(revision) = control.try_audited(entry, ops).await? {
            return Ok((version, unchanged, revision));
        }
    }
    Err(ApiError::Conflict(
        "other deploys kept changing the routes meanwhile; try again".to_string(),
    ))
}

fn key_target(caller: &Caller, app: &str) -> String {
    format!("{}/{app}", caller.tenant())
}

/// Declared secrets nobody has set yet read as unset in the guest: a
/// deploy says so, since that is usually when it is noticed.
async fn unset_secrets(
    control: &Control,
    tenant: &str,
    app: &str,
    manifest: &Manifest,
) -> Result<Vec<String>, ApiError> {
    let mut unset = Vec::new();
    for name in manifest
        .components
        .iter()
        .flat_map(|c| &c.capabilities.secrets)
    {
        let stored = control
            .store
            .get(&secret_key(tenant, app, name))
            .await?
            .is_some();
        if !stored && !unset.contains(name) {
            unset.push(name.clone());
        }
    }
    Ok(unset)
}

/// The routes the versions of `record` taking traffic serve.
pub(crate) fn live_routes(record: &AppRecord) -> Vec<Route> {
    record
        .live()
        .flat_map(|(v, _)| v.routes.iter().filter_map(RouteRecord::route))
        .collect()
}

/// The route claims of every app, ordered cluster-wide by one key.
///
/// Checking that a route is free reads every app; claiming it writes one.
/// Two changes (on one node or two nodes of a cluster) could each check
/// before the other writes and both claim overlapping routes. So every
/// change that claims a route its app does not hold yet also rewrites
/// [`CLAIMS_KEY`] under the revision it read before checking, in the same
/// atomic write as the app's record: of two such changes, the second
/// fails its precondition and checks again against the first.
///
/// **Invariant**: no two apps ever serve the same route, and no two
/// tenants overlapping ones, whatever the number of nodes deploying.
pub(crate) struct Claims {
    expect: Expect,
}

/// The key whose revision orders every new route claim.
pub(crate) const CLAIMS_KEY: &str = "meta/claims";

impl Claims {
    /// Reads the claims' revision; to be done before checking claims.
    pub(crate) async fn read(control: &Control) -> Result<Self, ApiError> {
        let expect = match control.store.get(CLAIMS_KEY).await? {
            Some(entry) => Expect::Revision(entry.revision),
            None => Expect::Absent,
        };
        Ok(Self { expect })
    }

    /// The write that orders this change after every other claim, if
    /// `routes` has a route that `held` (what the app serves now) lacks.
    /// Routes the app already holds were checked when it claimed them.
    pub(crate) fn op_if_new(&self, app_key: &str, held: &[Route], routes: &[Route]) -> Option<Op> {
        routes
            .iter()
            .any(|r| !held.contains(r))
            .then(|| Op::put(CLAIMS_KEY, app_key.as_bytes().to_vec(), self.expect))
    }
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
    if caller.has(Scope::TenantsAdmin) {
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
