//! The OpenAPI document of the control API, generated from the wire types
//! of `verge-api` and the `#[utoipa::path]` of every handler: nothing in
//! it is written by hand, so it cannot drift from what the server does.
//!
//! **Invariant**: `openapi.json` beside this file is the generated
//! document, byte for byte (a test fails otherwise; `UPDATE_EXPECT=1
//! cargo test -p verge-control openapi` rewrites it). Every route of
//! [`crate::router`] is in it, and every operation but the two of `meta`
//! needs the bearer token.

use std::sync::LazyLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{apps, deploy, kv, nodes, secrets, tokens, usage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Verge control API",
        version = "1",
        description = "The control plane of Verge: apps and their immutable versions, traffic \
            splits and rollback, secrets and key-value data of apps, scoped tokens of tenants, \
            usage and cost, the nodes of a cluster, and a hash-chained audit log. Every route \
            except `/v1/health` and `/v1/openapi.json` needs `Authorization: Bearer \
            verge_{id}_{secret}`. A tenant sees only its own apps: another tenant's app answers \
            404. Unknown endpoints answer 404 with the `ErrorBody` shape.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "/")),
    paths(
        health,
        openapi_document,
        apps::status,
        apps::list,
        apps::show,
        apps::delete,
        apps::versions,
        apps::set_traffic,
        apps::rollback,
        apps::logs,
        deploy::upload_blob,
        deploy::create_version,
        secrets::list,
        secrets::set,
        secrets::delete,
        kv::list,
        kv::get,
        kv::set,
        kv::delete,
        tokens::list,
        tokens::create,
        tokens::revoke,
        tokens::audit_list,
        tokens::audit_verify,
        usage::query,
        nodes::list,
    ),
    components(schemas(verge_api::Scope, verge_api::ErrorCode)),
    modifiers(&BearerAuth),
    security(("bearerAuth" = [])),
    tags(
        (name = "meta", description = "Health and this document; no token needed."),
        (name = "apps", description = "Apps, their versions, traffic splits and logs."),
        (name = "deploy", description = "Component uploads and new versions."),
        (name = "secrets", description = "Write-only app secrets, sealed at rest."),
        (name = "kv", description = "Apps' key-value data."),
        (name = "tokens", description = "Scoped tokens of tenants."),
        (name = "audit", description = "The hash-chained audit log."),
        (name = "usage", description = "Metered usage and its cost (see docs/metering.md)."),
        (name = "nodes", description = "The nodes of a cluster, for operators."),
    )
)]
struct ApiDoc;

/// The bearer token scheme, and no token for the `meta` operations.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token `verge_{id}_{secret}`."))
                    .build(),
            ),
        );
        for path in ["/v1/health", "/v1/openapi.json"] {
            if let Some(item) = openapi.paths.paths.get_mut(path)
                && let Some(get) = item.get.as_mut()
            {
                get.security = Some(Vec::new());
            }
        }
    }
}

/// The answers every operation that needs a token may give besides its
/// own (all with the `ErrorBody` shape).
#[derive(utoipa::IntoResponses)]
#[allow(
    dead_code,
    reason = "never built: it only describes answers in the document"
)]
pub(crate) enum CommonErrors {
    /// Missing, malformed, unknown, expired or revoked bearer token
    /// (`unauthenticated`).
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthenticated(verge_api::ErrorBody),
    /// Too many failed authentications from this source address
    /// (`rate_limited`).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    RateLimited(verge_api::ErrorBody),
    /// Something failed inside the server (`internal`); details are logged.
    #[response(status = 500)]
    Internal(verge_api::ErrorBody),
    /// This node cannot serve the request now (`unavailable`): in a
    /// cluster it is cut off from NATS, or a store or limit of the server
    /// (such as the open log streams) is unavailable; the message says
    /// which.
    #[response(status = 503)]
    Unavailable(verge_api::ErrorBody),
}

/// The document, as served at `/v1/openapi.json`.
pub(crate) static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the document: {e}\"}}"));
    text.push('\n');
    text
});

#[utoipa::path(
    get,
    path = "/v1/health",
    operation_id = "health",
    tag = "meta",
    summary = "Liveness check",
    description = "Needs no token.",
    responses(
        (status = 200, description = "The server is up.", body = String, content_type = "text/plain"),
    ),
)]
pub(crate) async fn health() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    summary = "This OpenAPI document",
    description = "Needs no token.",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Object, content_type = "application/json"),
    ),
)]
pub(crate) async fn openapi_document() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    //! The committed document is the generated one.

    #[test]
    fn the_committed_document_is_the_generated_one() {
        expect_test::expect_file!["openapi.json"].assert_eq(&super::DOCUMENT);
    }
}
