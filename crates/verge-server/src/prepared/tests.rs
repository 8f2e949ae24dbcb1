//! Holds, releases and retains of prepared versions.

use super::*;

fn key(app: &str, n: u32, digest: &str) -> PreparedKey {
    (app.to_string(), n, digest.to_string())
}

#[test]
fn a_failed_deploy_leaves_nothing_behind() {
    let prepared = Prepared::new();
    // 100 deploys of a new app, each with another digest, all refused
    // after compiling (a route conflict, say): the store records none.
    for i in 0..100 {
        let k = key("acme/shop", 1, &format!("d{i}"));
        let v = prepared.insert(k.clone(), i);
        prepared.hold(k.clone(), v);
        prepared.release(&k);
    }
    assert_eq!(prepared.len(), 0);
}

#[test]
fn a_recorded_version_stays_after_its_deploy_is_over() {
    let prepared = Prepared::new();
    let k = key("acme/shop", 1, "a");
    prepared.hold(k.clone(), 1);
    // The sync applies the record before the deploy answers.
    prepared.retain("acme/shop", &[(1, "a".to_string())]);
    prepared.release(&k);
    assert_eq!(prepared.get(&k), Some(1));
    // A later version takes all the traffic: the old one goes.
    prepared.retain("acme/shop", &[(2, "b".to_string())]);
    assert_eq!(prepared.get(&k), None);
}

#[test]
fn a_held_version_survives_a_retain_until_released() {
    let prepared = Prepared::new();
    let live = key("acme/shop", 1, "a");
    let pending = key("acme/shop", 2, "b");
    prepared.insert(live.clone(), 1);
    prepared.retain("acme/shop", &[(1, "a".to_string())]);
    // A deploy compiles v2; the sync applies an unrelated change meanwhile.
    prepared.hold(pending.clone(), 2);
    prepared.retain("acme/shop", &[(1, "a".to_string())]);
    assert_eq!(prepared.get(&pending), Some(2));
    prepared.release(&pending);
    assert_eq!(prepared.get(&pending), None);
    assert_eq!(prepared.get(&live), Some(1));
}

#[test]
fn two_deploys_of_one_version_share_it_until_both_are_over() {
    let prepared = Prepared::new();
    let k = key("acme/shop", 3, "c");
    prepared.hold(k.clone(), 3);
    prepared.hold(k.clone(), 3);
    prepared.release(&k);
    assert_eq!(prepared.get(&k), Some(3));
    prepared.release(&k);
    assert_eq!(prepared.get(&k), None);
    // A release without a hold changes nothing.
    prepared.release(&k);
    assert_eq!(prepared.len(), 0);
}

#[test]
fn other_apps_are_untouched() {
    let prepared = Prepared::new();
    let other = key("acme/blog", 1, "a");
    prepared.insert(other.clone(), 7);
    prepared.retain("acme/shop", &[]);
    assert_eq!(prepared.get(&other), Some(7));
    // A value inserted without hold or record goes at its app's retain.
    prepared.retain("acme/blog", &[]);
    assert_eq!(prepared.get(&other), None);
}
