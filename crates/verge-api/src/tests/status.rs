//! `GET /v1/status`, as `status()` of `verge-control/src/apps.rs` answers.

use serde_json::json;

use super::check_wire;
use crate::*;

#[test]
fn status_keeps_its_shape() {
    let status: Status = check_wire(json!({
        "server": {"version": "0.1.0", "revision": 42},
        "token": {"id": "0123456789abcdef", "tenant": "default", "scopes": [
            "apps:read", "apps:deploy", "apps:delete", "secrets:write", "kv:read", "kv:write",
            "tokens:admin", "audit:read", "usage:read", "metrics:read", "tenants:admin",
        ]},
        "apps": 0,
    }));
    assert_eq!(status.token.scopes, Scope::ALL.map(Scope::as_str));
    assert_eq!(status.server.revision, 42);
}
