//! Blob uploads and deploys, as `deploy.rs` of `verge-control` answers
//! them and `deploy.rs` of the CLI sends them.

use serde_json::json;

use super::{check_wire, read, refused, written};
use crate::*;

const MANIFEST: &str = "[component.web]\nsource = \"w.wasm\"\nroutes = [\"/shop\"]\n";

#[test]
fn an_upload_answer_keeps_its_shape() {
    let blob: BlobUploaded = check_wire(json!({"digest": "a".repeat(64), "size": 15}));
    assert_eq!(blob.size, 15);
}

#[test]
fn deploy_requests_read_as_the_cli_sends_them() {
    let digest = "a".repeat(64);
    let request: DeployRequest =
        check_wire(json!({"manifest": MANIFEST, "components": {"web": digest}}));
    assert_eq!((request.expect_version, request.environment), (None, None));

    let request: DeployRequest = check_wire(json!({
        "manifest": MANIFEST,
        "components": {"web": format!("sha256:{digest}")},
        "expect_version": "v7",
        "environment": "staging",
    }));
    assert_eq!(request.expect_version, Some(VersionName(7)));

    // `null` reads as unset and is left out when written.
    let request: DeployRequest = read(&json!({
        "manifest": MANIFEST, "components": {}, "expect_version": null, "environment": null,
    }));
    assert_eq!(
        written(&request),
        json!({"manifest": MANIFEST, "components": {}})
    );
}

#[test]
fn deploy_requests_refuse_what_the_server_refused() {
    let digest = "a".repeat(64);
    let e = refused::<DeployRequest>(
        json!({"manifest": MANIFEST, "components": {"web": digest}, "extra": 1}),
    );
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = refused::<DeployRequest>(json!({}));
    assert!(e.contains("missing field `manifest`"), "{e}");
    let e = refused::<DeployRequest>(
        json!({"manifest": MANIFEST, "components": {}, "expect_version": "newest"}),
    );
    assert!(e.contains("`newest` is not a version"), "{e}");
}

/// The body `deploy()` of `verge-control/src/deploy.rs` builds.
fn answer(unchanged: bool) -> serde_json::Value {
    let number = 3;
    json!({
        "app": "shop",
        "tenant": "acme",
        "version": format!("v{number}"),
        "digest": "f".repeat(64),
        "routes": ["/shop", "shop.example.com/"],
        "unchanged": unchanged,
        "revision": 42,
        "unset_secrets": ["api_key"],
    })
}

#[test]
fn deploy_answers_keep_their_shape() {
    let mut wire = answer(false);
    wire["serving"] = json!(true);
    let deployed: DeployResponse = check_wire(wire.clone());
    assert_eq!(deployed.version, VersionName(3));
    assert!(!deployed.unchanged && deployed.confirmation.serving);

    wire["nodes"] = json!({"ready": ["n1"], "lagging": ["n2"], "down": [], "min_replicas": 2});
    let deployed: DeployResponse = check_wire(wire);
    assert_eq!(
        deployed.confirmation.nodes.map(|n| n.lagging),
        Some(vec!["n2".to_string()])
    );

    let mut wire = answer(true);
    wire["unset_secrets"] = json!([]);
    wire["serving"] = json!(false);
    wire["problem"] = json!("component `web` failed to load: out of memory");
    let deployed: DeployResponse = check_wire(wire);
    assert!(deployed.unchanged);
}
