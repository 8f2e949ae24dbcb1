//! The API through its router (`oneshot`), on a real SQLite store and blob
//! folder. The data plane here accepts every version: compiling and
//! serving are covered by the end-to-end tests against the real binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use verge_store::{FsBlobs, Revision, SqliteStore};

use super::*;

struct AcceptAll;

#[async_trait]
impl DataPlane for AcceptAll {
    async fn prepare(&self, _: &AppRecord, _: &VersionRecord) -> Result<(), PrepareError> {
        Ok(())
    }
    fn release(&self, _: &AppRecord, _: &VersionRecord) {}
    async fn wait_applied(&self, _: &str, _: Revision, _: Duration) -> Applied {
        Applied::Serving
    }
    fn nodes(&self) -> Vec<verge_api::NodeStatus> {
        Vec::new()
    }
    async fn wait_fleet(&self, _: &str, _: Revision, _: Duration) -> Option<Fleet> {
        None
    }
}

struct Api {
    _dir: tempfile::TempDir,
    router: Router,
    admin: String,
    store: Arc<SqliteStore>,
    usage: Arc<verge_meter::UsageDb>,
}

async fn api_with(config: ControlConfig) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
    let blobs = Arc::new(FsBlobs::open(&dir.path().join("blobs")).expect("blobs"));
    let usage = Arc::new(verge_meter::UsageDb::open(&dir.path().join("usage.db")).expect("usage"));
    let control = Control::new(
        store.clone(),
        blobs,
        Arc::new(AcceptAll),
        logs::LogHub::new(),
        config,
        StateAccess {
            keyring: Arc::new(verge_secrets::Keyring::single(
                verge_secrets::MasterKey::generate().expect("key"),
            )),
            key_value: Some(verge_kv::KeyValue::open(
                &dir.path().join("kv"),
                verge_kv::Quotas {
                    max_value_bytes: 1024,
                    ..verge_kv::Quotas::default()
                },
            )),
            usage: Some(usage.clone()),
            prices: verge_meter::PriceSheet {
                per_million_requests: 1_000_000.0,
                ..verge_meter::PriceSheet::default()
            },
        },
    );
    let admin = control
        .bootstrap(false)
        .await
        .expect("bootstrap")
        .expect("first token")
        .text;
    assert!(
        control.bootstrap(false).await.expect("bootstrap").is_none(),
        "only once"
    );
    Api {
        _dir: dir,
        router: router(control),
        admin,
        store,
        usage,
    }
}

async fn api() -> Api {
    api_with(ControlConfig::default()).await
}

impl Api {
    async fn call_from(
        &self,
        peer: [u8; 4],
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let mut request = request.body(body).expect("request");
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        self.call_from([10, 0, 0, 1], method, path, Some(token), body)
            .await
    }

    async fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/tokens",
                &self.admin,
                json!({"tenant": tenant, "scopes": scopes, "name": "test"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token text").to_string()
    }

    async fn upload(&self, token: &str, bytes: &'static [u8]) -> String {
        let digest = verge_store::BlobId::of(bytes).to_string();
        let (status, body) = self.put_blob(token, &digest, bytes).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        digest
    }

    /// Revokes the token whose text is `token`, as `by`.
    async fn revoke(&self, token: &str, by: &str) -> (StatusCode, Value) {
        let id = &token["verge_".len().."verge_".len() + 16];
        self.call(Method::DELETE, &format!("/v1/tokens/{id}"), by, Value::Null)
            .await
    }

    async fn put_blob(
        &self,
        token: &str,
        digest: &str,
        bytes: &'static [u8],
    ) -> (StatusCode, Value) {
        self.call_from(
            [10, 0, 0, 1],
            Method::PUT,
            &format!("/v1/blobs/{digest}"),
            Some(token),
            Body::from(bytes),
        )
        .await
    }

    async fn deploy(&self, token: &str, app: &str, route: &str) -> (StatusCode, Value) {
        let digest = self.upload(token, b"component bytes").await;
        let manifest = format!("[component.web]\nsource = \"web.wasm\"\nroutes = [\"{route}\"]\n");
        self.call(
            Method::POST,
            &format!("/v1/apps/{app}/versions"),
            token,
            json!({"manifest": manifest, "components": {"web": digest}}),
        )
        .await
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Every documented operation, with the path parameters filled in.
fn documented_operations() -> Vec<(Method, String)> {
    let doc: Value = serde_json::from_str(openapi()).expect("the OpenAPI document is JSON");
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_some() {
                let path = path
                    .replace("{app}", "shop")
                    .replace("{digest}", &"a".repeat(64))
                    .replace("{id}", &"b".repeat(16))
                    .replace("{name}", "api_key")
                    .replace("{store}", "default")
                    .replace("{key}", "k");
                ops.push((
                    Method::from_bytes(method.to_uppercase().as_bytes()).expect("method"),
                    path,
                ));
            }
        }
    }
    ops
}

#[tokio::test]
async fn nothing_but_health_and_the_document_is_reachable_without_a_token() {
    let api = api().await;
    let ops = documented_operations();
    assert!(
        ops.len() >= 15,
        "the document lists every operation: {ops:?}"
    );
    for (i, (method, path)) in ops.into_iter().enumerate() {
        // One source per call: the failures must not hit the rate limit.
        let peer = [10, 0, 1, u8::try_from(i).expect("few operations")];
        let (status, body) = api
            .call_from(peer, method.clone(), &path, None, Body::empty())
            .await;
        if path == "/v1/health" || path == "/v1/openapi.json" {
            assert_eq!(status, StatusCode::OK, "{method} {path}");
        } else {
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
        }
    }
    let (status, body) = api
        .call(Method::GET, "/v1/no-such-thing", &api.admin, Value::Null)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_tenant_cannot_see_or_touch_another_tenants_apps() {
    let api = api().await;
    let a = api
        .token("acme", &["apps:read", "apps:deploy", "apps:delete"])
        .await;
    let b = api
        .token("bravo", &["apps:read", "apps:deploy", "apps:delete"])
        .await;
    let (status, body) = api.deploy(&a, "shop", "/shop").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, body) = api.deploy(&a, "shop", "/shop/v2").await;
    assert_eq!(body["version"], "v2");

    let (status, body) = api.call(Method::GET, "/v1/apps", &b, Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["apps"], json!([]), "bravo sees no app of acme");
    for (method, path, payload) in [
        (Method::GET, "/v1/apps/shop", Value::Null),
        (Method::GET, "/v1/apps/shop/versions", Value::Null),
        (
            Method::PUT,
            "/v1/apps/shop/traffic",
            json!({"split": [{"version": "v1", "weight": 100}]}),
        ),
        (Method::POST, "/v1/apps/shop/rollback", json!({})),
        (Method::DELETE, "/v1/apps/shop", Value::Null),
    ] {
        let (status, body) = api.call(method.clone(), path, &b, payload).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        assert!(
            !body.to_string().contains("acme"),
            "{method} {path}: {body}"
        );
    }
    // Bravo's own app of the same name is a different app.
    let (status, body) = api.deploy(&b, "shop", "/bravo-shop").await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::CREATED, json!("v1"))
    );
    let (_, body) = api
        .call(Method::GET, "/v1/apps/shop", &a, Value::Null)
        .await;
    assert_eq!(body["traffic"], json!([{"version": "v2", "weight": 100}]));

    // Bravo cannot claim a route overlapping acme's, nor the catch-all.
    for route in ["/shop/v2", "/shop/v2/cart"] {
        let (status, body) = api.deploy(&b, "grab", route).await;
        assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    }
    let (status, body) = api.deploy(&b, "grab", "/").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(body.to_string().contains("only an operator"), "{body}");
    // Nor deploy a component only acme uploaded.
    let acme_digest = api.upload(&a, b"acme-only component").await;
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/apps/copy/versions",
            &b,
            json!({"manifest": "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/copy\"]\n",
                   "components": {"web": acme_digest}}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(body.to_string().contains("was not uploaded"), "{body}");
    // Bravo's audit view holds only bravo's entries.
    let audit_b = api.token("bravo", &["audit:read"]).await;
    let (_, page) = api
        .call(Method::GET, "/v1/audit", &audit_b, Value::Null)
        .await;
    let entries = page["entries"].as_array().expect("entries");
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["tenant"] == "bravo"), "{page}");
}

#[tokio::test]
async fn scopes_are_enforced_and_cannot_be_escalated() {
    let api = api().await;
    let reader = api.token("acme", &["apps:read"]).await;
    let (status, body) = api.deploy_without_upload(&reader).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let admin_a = api.token("acme", &["tokens:admin", "apps:read"]).await;
    for request in [
        json!({"scopes": ["apps:deploy"]}),
        json!({"scopes": ["apps:read"], "tenant": "bravo"}),
    ] {
        let (status, body) = api
            .call(Method::POST, "/v1/tokens", &admin_a, request)
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/tokens",
            &admin_a,
            json!({"scopes": ["apps:write"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // A tenant's token admin sees only its tenant's tokens.
    let (_, list) = api
        .call(Method::GET, "/v1/tokens", &admin_a, Value::Null)
        .await;
    let tokens = list["tokens"].as_array().expect("tokens");
    assert!(tokens.iter().all(|t| t["tenant"] == "acme"), "{list}");
    assert!(!list.to_string().contains("secret"), "{list}");
    let (_, audit) = api
        .call(Method::GET, "/v1/audit", &api.admin, Value::Null)
        .await;
    let text = audit.to_string();
    assert!(text.contains("auth.forbidden"), "{text}");
    assert!(
        !text.contains(&reader[..]),
        "token text never reaches the audit log"
    );
}

impl Api {
    async fn deploy_without_upload(&self, token: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/apps/shop/versions",
            token,
            json!({"manifest": "", "components": {}}),
        )
        .await
    }
}

#[tokio::test]
async fn revoked_expired_and_malformed_tokens_are_refused() {
    let api = api().await;
    let token = api.token("acme", &["apps:read"]).await;
    let (status, _) = api.call(Method::GET, "/v1/apps", &token, Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.revoke(&token, &api.admin).await;
    assert_eq!(
        (status, body["state"].clone()),
        (StatusCode::OK, json!("revoked"))
    );
    let (status, body) = api.call(Method::GET, "/v1/apps", &token, Value::Null).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");

    let (_, created) = api
        .call(
            Method::POST,
            "/v1/tokens",
            &api.admin,
            json!({"scopes": ["apps:read"], "expires_in": "1s"}),
        )
        .await;
    let short = created["token"].as_str().expect("token").to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _) = api.call(Method::GET, "/v1/apps", &short, Value::Null).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Right shape, wrong secret.
    // (The last digit changed to another one: a fixed "0" would forge nothing
    // one time in sixteen.)
    let last = if api.admin.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &api.admin[..api.admin.len() - 1]);
    for bad in [forged.as_str(), "verge_x", "Basic abc", ""] {
        let (status, _) = api.call(Method::GET, "/v1/apps", bad, Value::Null).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let (_, audit) = api
        .call(Method::GET, "/v1/audit", &api.admin, Value::Null)
        .await;
    let text = audit.to_string();
    assert!(text.contains("revoked token"), "{text}");
    assert!(text.contains("expired token"), "{text}");
}

#[tokio::test]
async fn failed_authentication_is_rate_limited_per_source() {
    let api = api().await;
    let attacker = [10, 0, 0, 66];
    let mut limited = None;
    for i in 0..20 {
        let (status, body) = api
            .call_from(
                attacker,
                Method::GET,
                "/v1/apps",
                Some("verge_nope"),
                Body::empty(),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            limited = Some(i);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        limited,
        Some(10),
        "the 11th failure within a minute is refused"
    );
    // Another source is not affected.
    let (status, _) = api
        .call_from(
            [10, 0, 0, 67],
            Method::GET,
            "/v1/apps",
            Some(&api.admin),
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The audit log records the failures that were let through, not the flood.
    let (_, audit) = api
        .call(Method::GET, "/v1/audit?limit=1000", &api.admin, Value::Null)
        .await;
    let failures = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "auth.failed")
        .count();
    assert_eq!(failures, 10);
}

#[tokio::test]
async fn bad_deploys_store_nothing() {
    let api = api_with(ControlConfig {
        max_upload: 1024,
        ..ControlConfig::default()
    })
    .await;
    let token = &api.admin.clone();
    let (status, _) = api.deploy(token, "shop", "/shop").await;
    assert_eq!(status, StatusCode::CREATED);
    let digest = api.upload(token, b"component bytes").await;
    let cases = [
        (
            json!({"manifest": "[component.web]\nsource = 3\n", "components": {"web": digest}}),
            "verge.toml:2:10",
        ),
        (
            json!({"manifest": "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/shop\"]\n", "components": {}}),
            "no uploaded digest",
        ),
        (
            json!({"manifest": "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/shop\"]\n", "components": {"web": "c".repeat(64)}}),
            "was not uploaded",
        ),
        (
            json!({"manifest": "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/v1/x\"]\n", "components": {"web": digest}}),
            "reserved",
        ),
        (
            json!({"manifest": "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/shop\"]\n", "components": {"web": digest}, "extra": 1}),
            "unknown field",
        ),
        (
            json!({"manifest": "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/shop\"]\n", "components": {"web": digest}, "expect_version": "v7"}),
            "no longer serves v7",
        ),
    ];
    for (request, needle) in cases {
        let (status, body) = api
            .call(Method::POST, "/v1/apps/shop/versions", token, request)
            .await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::CONFLICT,
            "{status} {body}"
        );
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    let (status, body) = api
        .call(Method::POST, "/v1/apps/Bad_Name/versions", token, json!({}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (_, versions) = api
        .call(Method::GET, "/v1/apps/shop/versions", token, Value::Null)
        .await;
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(1),
        "{versions}"
    );

    // Uploads: too large, and bytes that do not match their name.
    let big: &'static [u8] = Box::leak(vec![7u8; 2048].into_boxed_slice());
    let digest = verge_store::BlobId::of(big).to_string();
    let (status, body) = api.put_blob(token, &digest, big).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let (status, body) = api.put_blob(token, &"d".repeat(64), b"other bytes").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn traffic_splits_and_rollback() {
    let api = api().await;
    let token = &api.admin.clone();
    api.deploy(token, "shop", "/shop").await;
    api.deploy(token, "shop", "/shop2").await;
    let (status, body) = api.deploy(token, "shop", "/shop2").await;
    assert_eq!(
        (status, body["unchanged"].clone()),
        (StatusCode::OK, json!(true)),
        "same content, same version"
    );
    let split = |a: u32, b: u32| json!({"split": [{"version": "v1", "weight": a}, {"version": "v2", "weight": b}]});
    let (status, body) = api
        .call(Method::PUT, "/v1/apps/shop/traffic", token, split(90, 10))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["traffic"],
        json!([{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}])
    );
    let (status, body) = api
        .call(Method::PUT, "/v1/apps/shop/traffic", token, split(90, 20))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/apps/shop/traffic",
            token,
            json!({"split": [{"version": "v9", "weight": 100}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/apps/shop/rollback",
            token,
            json!({"version": "v2"}),
        )
        .await;
    assert_eq!(
        (status, body["traffic"].clone()),
        (StatusCode::OK, json!([{"version": "v2", "weight": 100}]))
    );
    let (_, body) = api
        .call(Method::POST, "/v1/apps/shop/rollback", token, Value::Null)
        .await;
    assert_eq!(body["traffic"], json!([{"version": "v1", "weight": 100}]));
    let (status, body) = api
        .call(Method::POST, "/v1/apps/shop/rollback", token, Value::Null)
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (_, report) = api
        .call(Method::GET, "/v1/audit/verify", token, Value::Null)
        .await;
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test]
async fn concurrent_deploys_to_one_app_both_land_in_order() {
    let api = api().await;
    let token = api.admin.clone();
    let (a, b) = tokio::join!(
        api.deploy(&token, "shop", "/a"),
        api.deploy(&token, "shop", "/b")
    );
    assert_eq!(
        (a.0, b.0),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{a:?} {b:?}"
    );
    let mut versions = [a.1["version"].clone(), b.1["version"].clone()];
    versions.sort_by_key(ToString::to_string);
    assert_eq!(versions, [json!("v1"), json!("v2")]);
    let (_, app) = api
        .call(Method::GET, "/v1/apps/shop", &token, Value::Null)
        .await;
    let last = if a.1["revision"].as_u64() > b.1["revision"].as_u64() {
        &a.1
    } else {
        &b.1
    };
    assert_eq!(
        app["traffic"][0]["version"], last["version"],
        "the later deploy serves"
    );
    // A deploy that names a stale version is refused.
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/apps/shop/versions",
            &token,
            json!({"manifest": "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/c\"]\n",
                   "components": {"web": api.upload(&token, b"component bytes").await},
                   "expect_version": "v1"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn token_lifetimes_and_revocation_cannot_be_abused() {
    let api = api().await;
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/tokens",
            &api.admin,
            json!({"scopes": ["apps:read"], "expires_in": "10000years"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // A short-lived token admin cannot mint a longer-lived token.
    let (_, short) = api
        .call(
            Method::POST,
            "/v1/tokens",
            &api.admin,
            json!({"tenant": "acme", "scopes": ["tokens:admin", "apps:read"], "expires_in": "1h"}),
        )
        .await;
    let short_expiry = short["expires"].clone();
    let short = short["token"].as_str().expect("token").to_string();
    let (status, child) = api
        .call(
            Method::POST,
            "/v1/tokens",
            &short,
            json!({"scopes": ["apps:read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{child}");
    assert_eq!(child["expires"], short_expiry, "{child}");
    // It cannot revoke a token holding scopes it lacks.
    let deployer = api.token("acme", &["apps:deploy"]).await;
    let (status, body) = api.revoke(&deployer, &short).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    // The last operator token cannot be revoked.
    let (status, body) = api.revoke(&api.admin, &api.admin).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // Verifying the whole chain is an operator's task.
    let auditor = api.token("acme", &["audit:read"]).await;
    let (status, body) = api
        .call(Method::GET, "/v1/audit/verify", &auditor, Value::Null)
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn operator_only_grants_and_weights_out_of_range_are_refused() {
    let api = api().await;
    let tenant = api.token("acme", &["apps:deploy", "apps:read"]).await;
    let digest = api.upload(&tenant, b"component bytes").await;
    let manifest = "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/web\"]\nallowed_outbound_hosts = [\"http://127.0.0.1:8080\"]\n";
    let request = json!({"manifest": manifest, "components": {"web": digest}});
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/apps/web/versions",
            &tenant,
            request.clone(),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(body.to_string().contains("private network"), "{body}");
    api.upload(&api.admin, b"component bytes").await;
    let (status, body) = api
        .call(Method::POST, "/v1/apps/web/versions", &api.admin, request)
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "an operator may grant it: {body}"
    );

    api.deploy(&tenant, "shop", "/shop").await;
    api.deploy(&tenant, "shop", "/shop2").await;
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/apps/shop/traffic",
            &tenant,
            json!({"split": [{"version": "v1", "weight": 4294967295u32}, {"version": "v2", "weight": 101}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn a_log_stream_ends_when_its_token_is_revoked() {
    let api = api_with(ControlConfig {
        log_recheck: Duration::from_millis(50),
        ..ControlConfig::default()
    })
    .await;
    let reader = api.token("default", &["apps:read"]).await;
    api.deploy(&api.admin, "shop", "/shop").await;
    let mut request = Request::builder()
        .uri("/v1/apps/shop/logs?follow=true")
        .header("authorization", format!("Bearer {reader}"))
        .body(Body::empty())
        .expect("request");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 1))));
    let response = api
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = api.revoke(&reader, &api.admin).await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    assert!(ended.is_ok(), "the stream must end after the revocation");
}

mod claims;
mod state;
mod usage;

/// Nodes of a cluster sharing one store and starting together: each sees
/// no token, yet only one first admin token is minted.
#[tokio::test]
async fn nodes_starting_together_mint_one_first_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
    let controls: Vec<Arc<Control>> = (0..4)
        .map(|i| {
            Control::new(
                store.clone(),
                Arc::new(FsBlobs::open(&dir.path().join(format!("blobs{i}"))).expect("blobs")),
                Arc::new(AcceptAll),
                logs::LogHub::new(),
                ControlConfig::default(),
                StateAccess {
                    keyring: Arc::new(verge_secrets::Keyring::single(
                        verge_secrets::MasterKey::generate().expect("key"),
                    )),
                    key_value: None,
                    usage: None,
                    prices: verge_meter::PriceSheet::default(),
                },
            )
        })
        .collect();
    let minted = futures::future::join_all(controls.iter().map(|c| c.bootstrap(false))).await;
    let minted: Vec<_> = minted
        .into_iter()
        .map(|r| r.expect("bootstrap"))
        .filter(Option::is_some)
        .collect();
    assert_eq!(minted.len(), 1);
    assert_eq!(store.list("tokens/").await.expect("list").len(), 1);
}
