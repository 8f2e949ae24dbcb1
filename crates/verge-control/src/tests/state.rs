//! Secrets and key-value data through the API: write-only secrets sealed
//! at rest, per-tenant stores, and the refusals of bad input.

use verge_store::Store;

use super::*;

impl Api {
    /// Deploys `app` with one component declaring `stores`.
    async fn deploy_with_stores(&self, token: &str, app: &str, route: &str, stores: &str) {
        let digest = self.upload(token, b"component bytes").await;
        let manifest = format!(
            "[component.web]\nsource = \"web.wasm\"\nroutes = [\"{route}\"]\nkey_value_stores = [{stores}]\n"
        );
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/apps/{app}/versions"),
                token,
                json!({"manifest": manifest, "components": {"web": digest}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// PUTs secret `name` of app `shop`.
    async fn set_secret(
        &self,
        token: &str,
        name: &str,
        value: impl Into<Body>,
    ) -> (StatusCode, Value) {
        self.send(
            Method::PUT,
            &format!("/v1/apps/shop/secrets/{name}"),
            token,
            value,
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        self.call_from([10, 0, 0, 1], method, path, Some(token), body.into())
            .await
    }
}

#[tokio::test]
async fn secrets_are_write_only_sealed_and_per_tenant() {
    let api = api().await;
    let acme = api
        .token(
            "acme",
            &["apps:read", "apps:deploy", "secrets:write", "audit:read"],
        )
        .await;
    let bravo = api.token("bravo", &["apps:read", "secrets:write"]).await;
    let value = "k3y\0with NUL ✓";
    // Secrets belong to an existing app.
    let (status, body) = api.set_secret(&acme, "api_key", value.to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.to_string().contains("deploy it first"), "{body}");
    let (status, body) = api.deploy(&acme, "shop", "/shop").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api.set_secret(&acme, "api_key", value.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], true);
    let (status, body) = api.set_secret(&acme, "api_key", "second".to_string()).await;
    assert_eq!(
        (status, body["created"].clone()),
        (StatusCode::OK, json!(false))
    );

    // Listing shows names and times, never values.
    let (status, body) = api
        .call(Method::GET, "/v1/apps/shop/secrets", &acme, Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["secrets"][0]["name"], "api_key");
    assert!(body["secrets"][0]["updated"].is_string());
    assert!(!body.to_string().contains("second"), "{body}");
    // No route reads a value.
    let (status, _) = api
        .call(
            Method::GET,
            "/v1/apps/shop/secrets/api_key",
            &acme,
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // The stored record is sealed; the audit names the secret, not the value.
    let entry = api
        .store
        .get("secrets/acme/shop/api_key")
        .await
        .expect("get")
        .expect("stored");
    let raw = String::from_utf8_lossy(&entry.value);
    assert!(
        !raw.contains("second") && raw.contains("ciphertext"),
        "{raw}"
    );
    let (_, audit) = api.call(Method::GET, "/v1/audit", &acme, Value::Null).await;
    let audit = audit.to_string();
    assert!(
        audit.contains("secret.set") && audit.contains("acme/shop/api_key"),
        "{audit}"
    );
    assert!(
        !audit.contains("second") && !audit.contains("k3y"),
        "{audit}"
    );

    // Another tenant sees nothing and deletes nothing.
    let (_, body) = api
        .call(Method::GET, "/v1/apps/shop/secrets", &bravo, Value::Null)
        .await;
    assert_eq!(body["secrets"], json!([]));
    let (status, _) = api
        .call(
            Method::DELETE,
            "/v1/apps/shop/secrets/api_key",
            &bravo,
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad input: names, non-UTF-8, over 1 MiB; 1 MiB exactly is fine.
    let (status, _) = api.set_secret(&acme, "Bad-Name", "x".to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = api.set_secret(&acme, "bin", vec![0xffu8, 0xfe]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("UTF-8"), "{body}");
    let mib = "s".repeat(1024 * 1024);
    let (status, _) = api.set_secret(&acme, "big", mib.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.set_secret(&acme, "big", mib + "s").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // At most 64 secrets per app (there are 2 now).
    for i in 0..62 {
        let (status, _) = api
            .set_secret(&acme, &format!("s{i}"), "v".to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body) = api.set_secret(&acme, "one_more", "v".to_string()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("64 secrets, the limit"), "{body}");
    let (status, _) = api.set_secret(&acme, "s0", "updated".to_string()).await;
    assert_eq!(status, StatusCode::OK, "updating one is still fine");

    // Needs the scope.
    let reader = api.token("acme", &["apps:read"]).await;
    let (status, _) = api.set_secret(&reader, "x", "v".to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            Method::DELETE,
            "/v1/apps/shop/secrets/api_key",
            &acme,
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        api.store
            .get("secrets/acme/shop/api_key")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn deleting_an_app_deletes_its_secrets() {
    let api = api().await;
    let (status, body) = api.deploy(&api.admin, "shop", "/shop").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = api
        .send(
            Method::PUT,
            "/v1/apps/shop/secrets/api_key",
            &api.admin,
            "v".to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(Method::DELETE, "/v1/apps/shop", &api.admin, Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(api.store.list("secrets/").await.expect("list").is_empty());
}

#[tokio::test]
async fn key_value_data_is_per_tenant_and_checked() {
    let api = api().await;
    let acme = api
        .token("acme", &["kv:read", "kv:write", "apps:deploy"])
        .await;
    let bravo = api
        .token("bravo", &["kv:read", "kv:write", "apps:deploy"])
        .await;
    // Only the stores an existing app declares are reachable.
    let (status, body) = api
        .send(
            Method::GET,
            "/v1/apps/shop/kv/default",
            &acme,
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    api.deploy_with_stores(&acme, "shop", "/acme", "\"default\"")
        .await;
    api.deploy_with_stores(&bravo, "shop", "/bravo", "\"default\"")
        .await;
    let (status, body) = api
        .send(Method::PUT, "/v1/apps/shop/kv/undeclared/k", &acme, "v")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body.to_string().contains("declares no key-value store"),
        "{body}"
    );
    let path = "/v1/apps/shop/kv/default/user%2F1%20%E2%9C%93";
    let (status, body) = api.send(Method::PUT, path, &acme, vec![0u8, 1, 2]).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = api.send(Method::GET, path, &acme, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::String("\u{0}\u{1}\u{2}".to_string()));
    let (_, list) = api
        .call(Method::GET, "/v1/apps/shop/kv/default", &acme, Value::Null)
        .await;
    assert_eq!(list, json!({"keys": ["user/1 ✓"], "next": null}));

    // The same app and store names of another tenant are another store.
    let (status, _) = api.send(Method::GET, path, &bravo, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = api
        .call(Method::GET, "/v1/apps/shop/kv/default", &bravo, Value::Null)
        .await;
    assert_eq!(list["keys"], json!([]));

    // Keys that are not UTF-8, empty or too long; values over the quota.
    let (status, body) = api
        .send(Method::PUT, "/v1/apps/shop/kv/default/%FF%FE", &acme, "v")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("UTF-8"), "{body}");
    let long = "k".repeat(1025);
    let (status, _) = api
        .send(
            Method::PUT,
            &format!("/v1/apps/shop/kv/default/{long}"),
            &acme,
            "v",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .send(
            Method::PUT,
            "/v1/apps/shop/kv/default/big",
            &acme,
            vec![0u8; 1024],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "1 KiB is the quota here");
    let (status, _) = api
        .send(
            Method::PUT,
            "/v1/apps/shop/kv/default/big",
            &acme,
            vec![0u8; 1025],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = api
        .send(Method::PUT, "/v1/apps/shop/kv/Bad%20Store/k", &acme, "v")
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no app declares such a store"
    );

    // Scopes: reading does not allow writing.
    let reader = api.token("acme", &["kv:read"]).await;
    let (status, _) = api.send(Method::DELETE, path, &reader, Body::empty()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.send(Method::DELETE, path, &acme, Body::empty()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.send(Method::GET, path, &acme, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
