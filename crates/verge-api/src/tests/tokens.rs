//! Tokens, as `tokens.rs` of `verge-control` answers them (`describe`)
//! and `manage.rs` of the CLI asks for them.

use serde_json::json;

use super::{check_wire, read, refused, written};
use crate::*;

/// `describe()` of `verge-control/src/tokens.rs`.
fn described(expires: Option<&str>, revoked: Option<&str>, state: &str) -> serde_json::Value {
    json!({
        "id": "0123456789abcdef",
        "tenant": "acme",
        "scopes": ["apps:deploy", "apps:read", "kv:read"],
        "name": "ci",
        "created": "2026-12-01T10:00:00.123Z",
        "expires": expires,
        "revoked": revoked,
        "state": state,
    })
}

#[test]
fn tokens_keep_their_shape() {
    let token: Token = check_wire(described(None, None, "active"));
    assert_eq!(token.scopes, ["apps:deploy", "apps:read", "kv:read"]);
    // A state or scope of a newer server reads, as unknown and as text.
    let newer: Token = read(&described(None, None, "suspended"));
    assert_eq!(newer.state, TokenState::Unknown);
    assert_eq!((token.expires, token.revoked), (None, None));

    let token: Token = check_wire(described(
        Some("2027-01-01T00:00:00Z"),
        Some("2026-12-02T08:00:00.000Z"),
        "revoked",
    ));
    assert_eq!(token.state, TokenState::Revoked);
    let token: Token = check_wire(described(Some("2026-12-01T11:00:00Z"), None, "expired"));
    assert_eq!(token.state, TokenState::Expired);

    check_wire::<TokenList>(json!({"tokens": [described(None, None, "active")]}));
    check_wire::<TokenList>(json!({"tokens": []}));
}

#[test]
fn a_created_token_carries_its_text() {
    let mut wire = described(None, None, "active");
    wire["token"] = json!(format!("verge_0123456789abcdef_{}", "9".repeat(64)));
    let created: TokenCreated = check_wire(wire);
    assert!(created.token.starts_with("verge_0123456789abcdef_"));
    assert_eq!(created.info.id, "0123456789abcdef");
}

#[test]
fn create_requests_read_as_the_cli_sends_them() {
    // `verge tokens create --scopes apps:read,apps:deploy` always sends a name.
    let request: CreateTokenRequest =
        check_wire(json!({"scopes": ["apps:read", "apps:deploy"], "name": ""}));
    assert_eq!((request.tenant, request.expires_in), (None, None));
    check_wire::<CreateTokenRequest>(json!({
        "scopes": ["tokens:admin", "apps:read"],
        "name": "test",
        "tenant": "bravo",
        "expires_in": "30days",
    }));
    // The name may be left out; it reads as empty and is written.
    let request: CreateTokenRequest = read(&json!({"scopes": ["apps:read"]}));
    assert_eq!(
        written(&request),
        json!({"scopes": ["apps:read"], "name": ""})
    );
    // No scope is the handler's to refuse ("give at least one scope").
    let request: CreateTokenRequest = read(&json!({"scopes": []}));
    assert!(request.scopes.is_empty());
}

#[test]
fn create_requests_refuse_what_the_server_refused() {
    let e = refused::<CreateTokenRequest>(json!({"scopes": ["apps:write"]}));
    assert!(
        e.contains("unknown scope `apps:write`; scopes are apps:read, apps:deploy"),
        "{e}"
    );
    let e = refused::<CreateTokenRequest>(json!({"scopes": ["apps:read"], "admin": true}));
    assert!(e.contains("unknown field `admin`"), "{e}");
    let e = refused::<CreateTokenRequest>(json!({"name": "x"}));
    assert!(e.contains("missing field `scopes`"), "{e}");
}

#[test]
fn sorted_scopes_read_as_the_server_sorted_them() {
    // The handler sorts a new token's scopes as strings.
    let mut text = vec![
        "tenants:admin",
        "apps:read",
        "usage:read",
        "apps:delete",
        "apps:deploy",
    ];
    let mut typed: Vec<Scope> = text.iter().map(|s| s.parse().expect("scope")).collect();
    text.sort();
    typed.sort();
    assert_eq!(written(&typed), json!(text));
}
