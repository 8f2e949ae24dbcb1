//! Route claims hold across nodes, and what a deploy prepared is released.
//!
//! Two [`Control`]s over one store are two nodes of a cluster: each has
//! its own process-local locks, and only the store orders their writes.
//! The store here lets a test hold both deploys of a pair at the claim
//! check until both have reached it, so the race is not left to chance.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use verge_store::{Entry, Expect, Op, Store, StoreError, Watch};

use super::*;

/// A store that makes the first `armed` listings of apps wait for each
/// other, so two deploys both check their claims before either writes.
struct Gated {
    inner: SqliteStore,
    armed: AtomicUsize,
    barrier: tokio::sync::Barrier,
}

#[async_trait]
impl Store for Gated {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let gate = prefix == model::APPS_PREFIX
            && self
                .armed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
        let page = self.inner.list_page(prefix, after, limit).await;
        if gate {
            self.barrier.wait().await;
        }
        page
    }
    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.inner.apply(ops).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        self.inner.put(key, value, expect).await
    }
    async fn delete(&self, key: &str, expect: Expect) -> Result<Revision, StoreError> {
        self.inner.delete(key, expect).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        self.inner.watch(prefix, after).await
    }
}

/// Accepts every version and counts what is held: prepared, not released.
#[derive(Default)]
struct Counting {
    held: Mutex<BTreeMap<(String, u32, String), usize>>,
    prepares: AtomicUsize,
}

impl Counting {
    fn held(&self) -> usize {
        self.held
            .lock()
            .expect("lock")
            .values()
            .copied()
            .sum::<usize>()
    }
}

fn prepared_key(app: &AppRecord, version: &VersionRecord) -> (String, u32, String) {
    (
        format!("{}/{}", app.tenant, app.name),
        version.number,
        version.digest.clone(),
    )
}

#[async_trait]
impl DataPlane for Counting {
    async fn prepare(&self, app: &AppRecord, version: &VersionRecord) -> Result<(), PrepareError> {
        self.prepares.fetch_add(1, Ordering::SeqCst);
        *self
            .held
            .lock()
            .expect("lock")
            .entry(prepared_key(app, version))
            .or_default() += 1;
        Ok(())
    }
    fn release(&self, app: &AppRecord, version: &VersionRecord) {
        let mut held = self.held.lock().expect("lock");
        let key = prepared_key(app, version);
        let count = held.get_mut(&key).expect("released what was prepared");
        *count -= 1;
        if *count == 0 {
            held.remove(&key);
        }
    }
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

/// Two nodes over one gated store.
struct TwoNodes {
    _dir: tempfile::TempDir,
    store: Arc<Gated>,
    plane: Arc<Counting>,
    nodes: [Router; 2],
    admin: String,
}

async fn two_nodes() -> TwoNodes {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Gated {
        inner: SqliteStore::open(&dir.path().join("state.db")).expect("store"),
        armed: AtomicUsize::new(0),
        barrier: tokio::sync::Barrier::new(2),
    });
    let blobs = Arc::new(FsBlobs::open(&dir.path().join("blobs")).expect("blobs"));
    let plane = Arc::new(Counting::default());
    let control = || {
        Control::new(
            store.clone(),
            blobs.clone(),
            plane.clone(),
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
    };
    let (a, b) = (control(), control());
    let admin = a
        .bootstrap(false)
        .await
        .expect("bootstrap")
        .expect("first token")
        .text;
    TwoNodes {
        _dir: dir,
        store,
        plane,
        nodes: [router(a), router(b)],
        admin,
    }
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: &str,
    body: Body,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .expect("request");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40000))));
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

impl TwoNodes {
    async fn token(&self, tenant: &str) -> String {
        let body = json!({"tenant": tenant, "scopes": ["apps:read", "apps:deploy"]});
        let (status, body) = call(
            &self.nodes[0],
            Method::POST,
            "/v1/tokens",
            &self.admin,
            Body::from(body.to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    /// Uploads the (fake) component through node `i`; returns its digest.
    async fn upload(&self, i: usize, token: &str) -> String {
        let bytes: &'static [u8] = b"component bytes";
        let digest = verge_store::BlobId::of(bytes).to_string();
        let path = format!("/v1/blobs/{digest}");
        let (status, body) =
            call(&self.nodes[i], Method::PUT, &path, token, Body::from(bytes)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        digest
    }

    async fn deploy(
        &self,
        i: usize,
        token: &str,
        digest: &str,
        app: &str,
        route: &str,
    ) -> StatusCode {
        let manifest = format!("[component.web]\nsource = \"web.wasm\"\nroutes = [\"{route}\"]\n");
        let body = json!({"manifest": manifest, "components": {"web": digest}});
        let path = format!("/v1/apps/{app}/versions");
        let (status, body) = call(
            &self.nodes[i],
            Method::POST,
            &path,
            token,
            Body::from(body.to_string()),
        )
        .await;
        assert!(
            matches!(status, StatusCode::CREATED | StatusCode::CONFLICT),
            "{status} {body}"
        );
        status
    }

    /// Every live route of every app: (tenant/app, route).
    async fn claims(&self) -> Vec<(String, verge_router::Route)> {
        let mut claims = Vec::new();
        for entry in self.store.list(model::APPS_PREFIX).await.expect("list") {
            let record: AppRecord = serde_json::from_slice(&entry.value).expect("record");
            for route in crate::deploy::live_routes(&record) {
                claims.push((format!("{}/{}", record.tenant, record.name), route));
            }
        }
        claims
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_one_route_let_exactly_one_win() {
    let nodes = Arc::new(two_nodes().await);
    let (acme, globex) = (nodes.token("acme").await, nodes.token("globex").await);
    let (d0, d1) = (nodes.upload(0, &acme).await, nodes.upload(1, &globex).await);
    for i in 0..50 {
        // Same tenant, two apps, one route; or two tenants whose routes
        // overlap (`/r{i}` and `/r{i}/deep`).
        let (token_b, route_b) = if i % 2 == 0 {
            (&acme, format!("/r{i}"))
        } else {
            (&globex, format!("/r{i}/deep"))
        };
        let digest_b = if i % 2 == 0 { &d0 } else { &d1 };
        let (app_a, app_b, route_a) = (format!("a{i}"), format!("b{i}"), format!("/r{i}"));
        nodes.store.armed.store(2, Ordering::SeqCst);
        let (a, b) = tokio::join!(
            nodes.deploy(0, &acme, &d0, &app_a, &route_a),
            nodes.deploy(1, token_b, digest_b, &app_b, &route_b),
        );
        let won = [a, b].iter().filter(|s| **s == StatusCode::CREATED).count();
        assert_eq!(won, 1, "pair {i}: {a} and {b}");
    }
    let claims = nodes.claims().await;
    assert_eq!(claims.len(), 50, "{claims:?}");
    for (i, (app, route)) in claims.iter().enumerate() {
        for (other, theirs) in &claims[i + 1..] {
            assert!(
                !route.overlaps(theirs),
                "{app} `{route}` and {other} `{theirs}`"
            );
        }
    }
    // Every deploy, refused or not, gave back what it prepared.
    assert!(nodes.plane.prepares.load(Ordering::SeqCst) >= 100);
    assert_eq!(nodes.plane.held(), 0);
}

#[tokio::test]
async fn a_refused_deploy_or_traffic_change_releases_what_it_prepared() {
    let nodes = two_nodes().await;
    let acme = nodes.token("acme").await;
    let digest = nodes.upload(0, &acme).await;
    assert_eq!(
        nodes.deploy(0, &acme, &digest, "shop", "/shop").await,
        StatusCode::CREATED
    );
    let before = nodes.plane.prepares.load(Ordering::SeqCst);
    // A new version of another app on a taken route: compiled, then 409.
    assert_eq!(
        nodes.deploy(1, &acme, &digest, "blog", "/shop").await,
        StatusCode::CONFLICT
    );
    assert!(nodes.plane.prepares.load(Ordering::SeqCst) > before);
    assert_eq!(nodes.plane.held(), 0);
    // A traffic change to a version that does not exist, and a valid one.
    let path = "/v1/apps/shop/traffic";
    let split = |v: &str| Body::from(json!({"split": [{"version": v, "weight": 100}]}).to_string());
    let (status, _) = call(&nodes.nodes[0], Method::PUT, path, &acme, split("v9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&nodes.nodes[1], Method::PUT, path, &acme, split("v1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(nodes.plane.held(), 0);
}
