//! Nodes, as `verge-server`'s plane writes them (`NodeStatus` of
//! `verge-cluster`, its report flattened).

use serde_json::json;

use super::{check_wire, read, written};
use crate::*;

/// A standalone server lists itself (`plane.rs` `nodes()`).
fn standalone() -> serde_json::Value {
    json!({
        "name": "standalone",
        "labels": {},
        "version": "0.1.0",
        "addr": null,
        "started": 1_764_583_200u64,
        "sent": 0,
        "applied": 42,
        "apps": 3,
        "failed": {},
        "load": 0.0,
        "uplink_bytes": 0,
        "status": "up",
        "seen_ms": 0,
        "this_node": true,
        "rtt_ms": null,
    })
}

#[test]
fn node_lists_keep_their_shape() {
    let list: NodeList = check_wire(json!({"nodes": [standalone()]}));
    assert_eq!(list.nodes[0].status, NodeState::Up);

    let mut other = standalone();
    other["name"] = json!("n2");
    other["labels"] = json!({"region": "eu-west", "zone": "a"});
    other["addr"] = json!("http://10.0.0.5:8080");
    other["failed"] = json!({"acme/shop": 41});
    other["load"] = json!(0.75);
    other["status"] = json!("down");
    other["seen_ms"] = json!(4200);
    other["this_node"] = json!(false);
    other["rtt_ms"] = json!(1.5);
    let node: NodeStatus = check_wire(other.clone());
    assert_eq!(node.failed.get("acme/shop"), Some(&41));
    for state in ["degraded", "unknown"] {
        other["status"] = json!(state);
        check_wire::<NodeStatus>(other.clone());
    }
    check_wire::<NodeList>(json!({"nodes": []}));
}

#[test]
fn a_report_from_before_uplink_bytes_still_reads() {
    let mut old = standalone();
    old.as_object_mut().expect("object").remove("uplink_bytes");
    let node: NodeStatus = read(&old);
    assert_eq!(node.uplink_bytes, 0);
    assert_eq!(written(&node), standalone());
}
