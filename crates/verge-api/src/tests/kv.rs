//! Key pages, as `kv.rs` of `verge-control` answers them.

use serde_json::json;

use super::{check_wire, read};
use crate::*;

#[test]
fn key_pages_keep_their_shape() {
    // From `verge-control/src/tests/state.rs`.
    let page: KeyPage = check_wire(json!({"keys": ["user/1 ✓"], "next": null}));
    assert_eq!(page.next, None);
    let page: KeyPage = check_wire(json!({"keys": ["a", "b"], "next": "b"}));
    assert_eq!(page.next.as_deref(), Some("b"));
    check_wire::<KeyPage>(json!({"keys": [], "next": null}));
}

#[test]
fn list_queries_keep_their_shape() {
    check_wire::<KvListQuery>(json!({"after": "user/1", "limit": 1000}));
    let query: KvListQuery = check_wire(json!({}));
    assert_eq!(query, KvListQuery::default());
    let query: KvListQuery = read(&json!({"limit": 10}));
    assert_eq!(query.limit, Some(10));
}
