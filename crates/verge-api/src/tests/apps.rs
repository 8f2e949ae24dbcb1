//! Apps, versions, traffic, rollback and log lines, as `apps.rs` of
//! `verge-control` writes them and `manage.rs` of the CLI sends them.

use serde_json::json;

use super::{check_wire, read, refused, written};
use crate::*;

/// `summary()` of `verge-control/src/apps.rs`, for an app at v2.
fn summary() -> serde_json::Value {
    let version = 2;
    json!({
        "name": "shop",
        "tenant": "acme",
        "created": "2026-12-01T10:00:00.123Z",
        "versions": 2,
        "traffic": [{"version": format!("v{}", version), "weight": 100}],
        "routes": ["/shop/v2", "shop.example.com/"],
    })
}

#[test]
fn an_app_summary_and_lists_keep_their_shape() {
    let app: AppSummary = check_wire(summary());
    assert_eq!(app.traffic[0].version, VersionName(2));
    let list: AppList = check_wire(json!({ "apps": [summary(), summary()] }));
    assert_eq!(list.apps.len(), 2);
    check_wire::<AppList>(json!({ "apps": [] }));
    check_wire::<AppDeleted>(json!({ "deleted": "shop" }));
}

#[test]
fn a_split_traffic_keeps_its_order() {
    let mut wire = summary();
    wire["traffic"] = json!([{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]);
    let app: AppSummary = check_wire(wire);
    assert_eq!(
        app.traffic,
        [
            TrafficShare {
                version: VersionName(1),
                weight: 90
            },
            TrafficShare {
                version: VersionName(2),
                weight: 10
            },
        ]
    );
}

#[test]
fn versions_keep_their_shape() {
    let wire = json!({
        "app": "shop",
        "versions": [
            {
                "version": format!("v{}", 2),
                "digest": "a".repeat(64),
                "created": "2026-12-01T10:00:00.123Z",
                "created_by": "0123456789abcdef",
                "components": {"api": "b".repeat(64), "web": "c".repeat(64)},
                "routes": ["/shop/v2", "/shop/v2/cart"],
                "weight": 100,
            },
            {
                "version": "v1",
                "digest": "d".repeat(64),
                "created": "2026-11-30T09:00:00.000Z",
                "created_by": "0123456789abcdef",
                "components": {"web": "e".repeat(64)},
                "routes": [],
                "weight": 0,
            },
        ],
    });
    let list: VersionList = check_wire(wire);
    assert_eq!(list.versions[1].version.number(), 1);
}

#[test]
fn a_change_says_whether_it_is_served() {
    // `Control::confirm`: serving, then the fleet in a cluster.
    let mut wire = summary();
    wire["serving"] = json!(true);
    let changed: AppChanged = check_wire(wire.clone());
    assert!(changed.confirmation.serving);
    assert_eq!(changed.app.name, "shop");

    wire["nodes"] =
        json!({"ready": ["n1", "n2"], "lagging": [], "down": ["n3"], "min_replicas": null});
    let changed: AppChanged = check_wire(wire.clone());
    let fleet = changed.confirmation.nodes.expect("nodes");
    assert_eq!((fleet.ready.len(), fleet.min_replicas), (2, None));
    wire["nodes"]["min_replicas"] = json!(2);
    check_wire::<AppChanged>(wire);

    // `Applied::describe` for a node that did not confirm.
    let mut wire = summary();
    wire["serving"] = json!(false);
    wire["problem"] = json!("the node did not confirm in time; it may still be loading");
    let changed: AppChanged = check_wire(wire);
    assert!(changed.confirmation.problem.is_some());
}

#[test]
fn traffic_requests_read_as_the_cli_sends_them() {
    // `verge traffic shop v3=90 4=10`.
    let wire = json!({"split": [{"version": "v3", "weight": 90}, {"version": "v4", "weight": 10}]});
    let request: TrafficRequest = check_wire(wire);
    assert_eq!(request.split[1].version, VersionName(4));

    // The server always took `3` for `v3`; it writes `v3` back.
    let request: TrafficRequest = read(&json!({"split": [{"version": "3", "weight": 100}]}));
    assert_eq!(
        written(&request),
        json!({"split": [{"version": "v3", "weight": 100}]})
    );

    // Out-of-range weights are the handler's to refuse, with its message.
    let request: TrafficRequest = read(
        &json!({"split": [{"version": "v1", "weight": 4294967295u32}, {"version": "v2", "weight": 101}]}),
    );
    assert_eq!(request.split[0].weight, u32::MAX);
}

#[test]
fn traffic_requests_refuse_what_the_server_refused() {
    let e = refused::<TrafficRequest>(json!({"split": [], "extra": 1}));
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = refused::<TrafficRequest>(json!({"split": [{"version": "v1", "weight": 100, "x": 0}]}));
    assert!(e.contains("unknown field `x`"), "{e}");
    let e = refused::<TrafficRequest>(json!({"split": [{"version": "latest", "weight": 100}]}));
    assert!(e.contains("`latest` is not a version"), "{e}");
    refused::<TrafficRequest>(json!({"split": [{"version": "v1", "weight": 4294967296u64}]}));
    refused::<TrafficRequest>(json!({"split": [{"version": "v1", "weight": -1}]}));
    refused::<TrafficRequest>(json!({}));
}

#[test]
fn rollback_requests_read_as_the_cli_sends_them() {
    let default: RollbackRequest = check_wire(json!({}));
    assert_eq!(default, RollbackRequest::default());
    let request: RollbackRequest = check_wire(json!({"version": "v2"}));
    assert_eq!(request.version, Some(VersionName(2)));
    let request: RollbackRequest = read(&json!({"version": null}));
    assert_eq!(request.version, None);
    let e = refused::<RollbackRequest>(json!({"to": "v2"}));
    assert!(e.contains("unknown field `to`"), "{e}");
}

#[test]
fn log_queries_keep_their_shape() {
    check_wire::<LogsQuery>(json!({"follow": true, "tail": 50}));
    let query: LogsQuery = read(&json!({}));
    assert_eq!(query, LogsQuery::default());
    assert_eq!(written(&query), json!({"follow": false}));
}

#[test]
fn log_lines_keep_their_shape() {
    // A platform line: no version, no context (`skip_serializing_if`).
    let line: LogLine = check_wire(json!({
        "time": "2026-12-01T10:00:00.123Z",
        "level": "WARN",
        "component": "web",
        "request_id": "01JF2Z",
        "stream": "",
        "message": "request refused: concurrency limit",
    }));
    assert_eq!((line.version, line.context), (None, None));
    // A guest's `wasi:logging` record.
    let line: LogLine = check_wire(json!({
        "time": "2026-12-01T10:00:00.123Z",
        "level": "INFO",
        "component": "web",
        "version": "v3",
        "context": "cart",
        "request_id": "01JF2Z",
        "stream": "log",
        "message": "added 2 items",
    }));
    assert_eq!(line.version.as_deref(), Some("v3"));
}

#[test]
fn the_note_of_a_lagging_follower_still_reads() {
    // `Follow::next` writes only `level` and `message` (a shape bug).
    let note =
        json!({"level": "WARN", "message": "12 log lines dropped: this follower fell behind"});
    let line: LogLine = read(&note);
    assert_eq!(line.level, "WARN");
    assert!(line.time.is_empty() && line.component.is_empty());
}
