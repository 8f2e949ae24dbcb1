//! Secrets, as `secrets.rs` of `verge-control` answers them.

use serde_json::json;

use super::check_wire;
use crate::*;

#[test]
fn secret_lists_keep_their_shape() {
    let list: SecretList = check_wire(json!({"secrets": [{
        "name": "api_key",
        "created": "2026-12-01T10:00:00.123Z",
        "updated": "2026-12-02T10:00:00.123Z",
    }]}));
    assert_eq!(list.secrets[0].name, "api_key");
    check_wire::<SecretList>(json!({"secrets": []}));
}

#[test]
fn setting_and_deleting_say_whether_components_see_it() {
    let set: SecretSet =
        check_wire(json!({"app": "shop", "secret": "api_key", "created": true, "serving": true}));
    assert!(set.created);
    check_wire::<SecretSet>(json!({
        "app": "shop", "secret": "api_key", "created": false, "serving": false,
        "problem": "the node did not confirm in time; it may still be loading",
    }));
    let deleted: SecretDeleted =
        check_wire(json!({"app": "shop", "deleted": "api_key", "serving": true}));
    assert_eq!(deleted.deleted, "api_key");
    check_wire::<SecretDeleted>(json!({
        "app": "shop", "deleted": "api_key", "serving": true,
        "nodes": {"ready": ["n1"], "lagging": [], "down": [], "min_replicas": null},
    }));
}
