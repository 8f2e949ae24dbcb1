//! The OpenAPI schemas derived from the types: every type and field is
//! described, enums list exactly the values the wire carries, requests
//! refuse unknown fields where the server does, and fields the server
//! always writes (`null` or not) are required.

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::*;

#[derive(OpenApi)]
#[openapi(components(schemas(
    AppChanged,
    AppDeleted,
    AppList,
    AppSummary,
    AuditEntry,
    AuditPage,
    AuditQuery,
    BlobUploaded,
    CallerToken,
    Confirmation,
    Cost,
    CreateTokenRequest,
    DeployRequest,
    DeployResponse,
    ErrorBody,
    ErrorCode,
    ErrorDetail,
    Fleet,
    Granularity,
    KeyPage,
    KvListQuery,
    LogLine,
    LogsQuery,
    NodeList,
    NodeState,
    NodeStatus,
    RollbackRequest,
    Scope,
    SecretDeleted,
    SecretInfo,
    SecretList,
    SecretSet,
    ServerInfo,
    SplitEntry,
    Status,
    Token,
    TokenCreated,
    TokenList,
    TokenState,
    TrafficRequest,
    TrafficShare,
    UsagePage,
    UsageParams,
    UsageRow,
    Verification,
    VersionInfo,
    VersionList,
    VersionName,
)))]
struct Doc;

fn schemas() -> serde_json::Map<String, Value> {
    let doc = serde_json::to_value(Doc::openapi()).expect("serialize");
    doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .clone()
}

/// Properties of `schema` (and of the objects it is `allOf`), by name.
fn properties(schema: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = schema["properties"]
        .as_object()
        .map(|p| p.clone().into_iter().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(properties(part));
    }
    out
}

#[test]
fn every_type_and_field_is_described() {
    let schemas = schemas();
    assert_eq!(schemas.len(), 48, "every type is in the document");
    for (name, schema) in &schemas {
        // An optional reference is `oneOf: [null, {$ref, description}]`.
        let described = |s: &Value| {
            let own = |s: &Value| s["description"].as_str().is_some_and(|d| !d.is_empty());
            own(s) || s["oneOf"].as_array().into_iter().flatten().any(own)
        };
        assert!(described(schema), "{name} has no description");
        for (field, property) in properties(schema) {
            assert!(described(&property), "{name}.{field} has no description");
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            if part.get("$ref").is_some() {
                assert!(
                    described(part),
                    "a flattened part of {name} has no description"
                );
            }
        }
    }
}

#[test]
fn enums_list_what_the_wire_carries() {
    let schemas = schemas();
    let values = |name: &str| schemas[name]["enum"].clone();
    assert_eq!(values("Scope"), json!(Scope::ALL.map(Scope::as_str)));
    assert_eq!(
        values("ErrorCode"),
        json!(ErrorCode::ALL.map(ErrorCode::as_str))
    );
    assert_eq!(
        values("TokenState"),
        json!(["active", "revoked", "expired", "unknown"])
    );
    assert_eq!(values("Granularity"), json!(["minute", "hour", "day"]));
    assert_eq!(
        values("NodeState"),
        json!(["up", "down", "degraded", "unknown"])
    );
    assert_eq!(schemas["VersionName"]["type"], "string");
}

#[test]
fn requests_refuse_unknown_fields_where_the_server_does() {
    let schemas = schemas();
    let closed: Vec<&str> = schemas
        .iter()
        .filter(|(_, s)| s["additionalProperties"] == json!(false))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        closed,
        [
            "CreateTokenRequest",
            "DeployRequest",
            "RollbackRequest",
            "SplitEntry",
            "TrafficRequest",
            "UsageParams",
        ]
    );
}

#[test]
fn fields_always_written_are_required() {
    let schemas = schemas();
    let required = |name: &str| schemas[name]["required"].clone();
    // Present as `null` when unset.
    assert_eq!(
        required("Token"),
        json!([
            "id", "tenant", "scopes", "name", "created", "expires", "revoked", "state"
        ])
    );
    assert_eq!(required("AuditPage"), json!(["entries", "next_after"]));
    assert_eq!(required("KeyPage"), json!(["keys", "next"]));
    assert_eq!(
        required("UsagePage"),
        json!(["by", "currency", "rows", "next"])
    );
    assert_eq!(
        required("Fleet"),
        json!(["ready", "lagging", "down", "min_replicas"])
    );
    // Left out when unset.
    assert_eq!(required("Confirmation"), json!(["serving"]));
    assert_eq!(required("Verification"), json!(["entries", "ok"]));
    assert_eq!(
        required("LogLine"),
        json!([
            "time",
            "level",
            "component",
            "request_id",
            "stream",
            "message"
        ])
    );
    assert_eq!(
        schemas["Confirmation"]["properties"]["problem"]["type"], "string",
        "never written as null"
    );
}
