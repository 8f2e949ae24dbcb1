//! The audit log, as `tokens.rs` and `audit.rs` of `verge-control` answer
//! it.

use serde_json::json;

use super::{check_wire, read};
use crate::*;

fn entry(seq: u64, outcome: &str) -> serde_json::Value {
    json!({
        "seq": seq,
        "time": "2026-12-01T10:00:00.123Z",
        "actor": "0123456789abcdef",
        "tenant": "acme",
        "action": "app.deploy",
        "target": "acme/shop",
        "outcome": outcome,
        "detail": "version v3",
        "prev": "0".repeat(64),
        "hash": "e".repeat(64),
    })
}

#[test]
fn audit_pages_keep_their_shape() {
    let page: AuditPage = check_wire(json!({
        "entries": [entry(1, "ok"), entry(2, "denied"), entry(3, "failed")],
        "next_after": 3,
    }));
    assert_eq!(
        page.entries
            .iter()
            .map(|e| e.outcome.as_str())
            .collect::<Vec<_>>(),
        ["ok", "denied", "failed"]
    );
    let last: AuditPage = check_wire(json!({"entries": [], "next_after": null}));
    assert_eq!(last.next_after, None);
    // A refused authentication has no known actor.
    let mut anonymous = entry(4, "denied");
    anonymous["actor"] = json!("-");
    anonymous["tenant"] = json!("-");
    anonymous["action"] = json!("auth.failed");
    check_wire::<AuditEntry>(anonymous);
    // A tampered entry is shown as stored, whatever its outcome says.
    check_wire::<AuditEntry>(entry(5, "maybe"));
}

#[test]
fn verification_keeps_its_shape() {
    let intact: Verification = check_wire(json!({"entries": 5, "ok": true}));
    assert_eq!((intact.first_bad, intact.problem), (None, None));
    let broken: Verification = check_wire(json!({
        "entries": 2,
        "ok": false,
        "first_bad": 3,
        "problem": "its content does not match its hash",
    }));
    assert_eq!(broken.first_bad, Some(3));
}

#[test]
fn audit_queries_keep_their_shape() {
    check_wire::<AuditQuery>(json!({"after": 0, "limit": 100}));
    let query: AuditQuery = read(&json!({}));
    assert_eq!(query, AuditQuery::default());
}
