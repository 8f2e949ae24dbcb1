//! Upgrades: a data folder written by the previous release
//! (`tests/data/state-0.1.0`, see its README) opens in this one, serves
//! what it served, and every client call still works on it: stored
//! records and the wire contract are both compatible.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::control::Plane;
use crate::support::repo;

/// Copies `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_data_folder_of_the_previous_release_opens_and_serves_as_before() {
    let fixture = repo().join("crates/verge/tests/data/state-0.1.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    copy_dir(&fixture.join("data"), &data);
    std::fs::copy(fixture.join("data.token"), data.with_extension("token")).expect("token");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let key = data.join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let plane = Plane::open(&data, &[]);

    // What it served: hello, and visits split 50/50 between v1 (the prod
    // environment) and v2, counting on from the two visits stored.
    let (status, body, _) = plane.get("/hello");
    assert_eq!((status, body.as_str()), (200, "Hello, world!\n"));
    let mut seen = std::collections::BTreeSet::new();
    for visit in 3..=12 {
        let (status, body, version) = plane.get("/");
        assert_eq!(status, 200, "{body}");
        let greeting = if version == "v1" { "Welcome" } else { "Hello" };
        assert_eq!(body, format!("{greeting}, visitor number {visit}!\n"));
        seen.insert(version);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"]);

    // The stored records read through the typed API.
    let apps = plane.cli(&["apps"]);
    assert!(apps.status.success(), "{}", apps.stderr);
    assert!(apps.stdout.contains("hello   v1=100"), "{}", apps.stdout);
    assert!(
        apps.stdout.contains("visits  v1=50 v2=50  2         /"),
        "{}",
        apps.stdout
    );
    let verified = plane.cli(&["audit", "verify"]);
    assert!(verified.status.success(), "{}", verified.stderr);
    let secrets = plane.cli(&["secrets", "list", "visits"]);
    assert!(secrets.stdout.contains("admin_key"), "{}", secrets.stdout);
    let tokens = plane.cli(&["tokens", "list", "--json"]);
    let tokens: serde_json::Value = serde_json::from_str(&tokens.stdout).expect("JSON");
    let acme_token = tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["tenant"] == "acme")
        .expect("the acme token");
    assert_eq!(acme_token["state"], "active");
    assert_eq!(
        acme_token["scopes"],
        serde_json::json!(["apps:deploy", "apps:read"])
    );
    let usage = plane.cli(&[
        "usage", "--app", "visits", "--since", "3650d", "--format", "json",
    ]);
    assert!(usage.status.success(), "{}", usage.stderr);
    let rows: serde_json::Value = serde_json::from_str(&usage.stdout).expect("JSON");
    let requests: u64 = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["requests"].as_u64().expect("requests"))
        .sum();
    assert!(requests >= 2, "the two visits metered before: {rows}");

    // The tenant token issued by the previous release still works, and
    // still sees only its own tenant.
    let acme = std::fs::read_to_string(fixture.join("acme.token")).expect("token");
    let acme = acme.trim();
    let listed = plane.cli_as(acme, &["apps"]);
    assert!(listed.status.success(), "{}", listed.stderr);
    assert!(!listed.stdout.contains("visits"), "{}", listed.stdout);

    // And the app moves on: a new version on top of the old ones.
    let run = plane.cli_in(
        &plane.admin,
        &["deploy"],
        &repo().join("examples/visits"),
        None,
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.contains("visits v2"),
        "same as v2: {}",
        run.stdout
    );
    let rolled = plane.cli(&["rollback", "visits", "v1"]);
    assert!(rolled.status.success(), "{}", rolled.stderr);
    let (_, body, version) = plane.get("/");
    assert_eq!(
        (version.as_str(), body.as_str()),
        ("v1", "Welcome, visitor number 13!\n")
    );
}
