//! Scopes: the server's list, their spelling, and the error for an
//! unknown one.

use serde_json::json;

use super::{read, refused, written};
use crate::*;

/// `SCOPES` of `verge-control/src/auth.rs`, copied.
const SERVER: [&str; 11] = [
    "apps:read",
    "apps:deploy",
    "apps:delete",
    "secrets:write",
    "kv:read",
    "kv:write",
    "tokens:admin",
    "audit:read",
    "usage:read",
    "metrics:read",
    "tenants:admin",
];

#[test]
fn every_scope_of_the_server_and_no_other() {
    assert_eq!(Scope::ALL.map(Scope::as_str), SERVER);
    for (scope, text) in Scope::ALL.into_iter().zip(SERVER) {
        assert_eq!(text.parse::<Scope>(), Ok(scope));
        assert_eq!(scope.to_string(), text);
        assert_eq!(written(&scope), json!(text));
        assert_eq!(read::<Scope>(&json!(text)), scope);
    }
}

#[test]
fn an_unknown_scope_names_the_valid_ones() {
    let e = "apps:write".parse::<Scope>().expect_err("unknown");
    assert_eq!(
        e.to_string(),
        format!(
            "unknown scope `apps:write`; scopes are {}",
            SERVER.join(", ")
        )
    );
    for bad in ["", "APPS:READ", "apps:read ", "apps"] {
        assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
    }
    // A long one is cut in the message.
    let long = "x".repeat(1000);
    let e = long.parse::<Scope>().expect_err("unknown");
    assert_eq!(e.0.len(), 80);

    let e = refused::<Scope>(json!("apps:write"));
    assert!(
        e.contains("unknown scope `apps:write`; scopes are apps:read,"),
        "{e}"
    );
    refused::<Scope>(json!(3));
}

#[test]
fn scopes_order_by_their_text() {
    let mut sorted = Scope::ALL;
    sorted.sort();
    let mut text = SERVER;
    text.sort_unstable();
    assert_eq!(sorted.map(Scope::as_str), text);
}
