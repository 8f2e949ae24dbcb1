//! Deploys under load and crashes during deploys: no request fails while
//! versions change, and a `kill -9` at any stage of a deploy leaves the app
//! serving one complete version, the audit chain intact and no blob
//! dangling or missing.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::control::{Plane, get};
use crate::support::{guests, verge_bin};

#[test]
fn twenty_deploys_and_rollbacks_under_load_fail_no_request() {
    let g = guests();
    let plane = Plane::start();
    plane.deploy_file(&plane.admin, &g.hello, "app", "/");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures, seen) =
                (stop.clone(), ok.clone(), failures.clone(), seen.clone());
            let base = plane.url();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body, version) = get(&base, "/");
                    let expected = match version.as_str() {
                        "v1" => "Hello, world!\n",
                        "v2" => "hello from test-programs\n",
                        _ => "",
                    };
                    if status == 200 && body == expected {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.lock().expect("lock").insert(version);
                    } else {
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("{status} {version} {body:?}"));
                    }
                }
            })
        })
        .collect();

    for i in 0..20 {
        let before = ok.load(Ordering::Relaxed);
        // Deploy v2 (new, then the same content again), roll back to v1.
        match i % 2 {
            0 => plane.deploy_file(&plane.admin, &g.test_programs, "app", "/"),
            _ => {
                let run = plane.cli(&["rollback", "app"]);
                assert!(run.status.success(), "{}", run.stderr);
                String::new()
            }
        };
        // Let traffic flow between changes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ok.load(Ordering::Relaxed) < before + 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok.load(Ordering::Relaxed) > 400, "load kept flowing");
    assert_eq!(
        *seen.lock().expect("lock"),
        BTreeSet::from(["v1".to_string(), "v2".to_string()])
    );
    let run = plane.cli(&["audit", "verify"]);
    assert!(run.status.success(), "{}", run.stderr);
}

/// Every blob on disk is used by a version and every version's blobs exist.
fn assert_blobs_consistent(plane: &Plane) {
    let run = plane.cli(&["versions", "app", "--json"]);
    let versions: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let referenced: BTreeSet<String> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .flat_map(|v| v["components"].as_object().expect("components").values())
        .map(|d| d.as_str().expect("digest").to_string())
        .collect();
    let mut stored = BTreeSet::new();
    for shard in std::fs::read_dir(plane.data.join("blobs/sha256")).expect("blobs") {
        for f in std::fs::read_dir(shard.expect("shard").path()).expect("shard") {
            stored.insert(f.expect("file").file_name().to_string_lossy().into_owned());
        }
    }
    assert_eq!(stored, referenced, "blobs on disk match the versions");
    let tmp = std::fs::read_dir(plane.data.join("blobs/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "no half-written upload is left");
}

#[test]
fn kill_9_at_every_stage_of_a_deploy_leaves_one_complete_version() {
    let g = guests();
    for (stage, expected) in [("validated", "v1"), ("prepared", "v1"), ("recorded", "v2")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let plane = Plane::open(&data, &[]);
        plane.deploy_file(&plane.admin, &g.hello, "app", "/");
        let admin = plane.admin.clone();
        drop(plane);

        let plane = Plane::open(&data, &["--pause-deploys-at", stage]);
        let mut deploy = Command::new(verge_bin())
            .args([
                "deploy",
                &g.test_programs.display().to_string(),
                "--app",
                "app",
            ])
            .env("VERGE_URL", plane.url())
            .env("VERGE_TOKEN", &admin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("deploy starts");
        plane
            .verge
            .wait_for_log(&format!("deploy paused at stage `{stage}`"));
        plane.verge.signal(rustix::process::Signal::KILL);
        let _ = plane.verge_wait();
        let _ = deploy.kill();
        let _ = deploy.wait();

        let plane = Plane::open(&data, &[]);
        let (status, body, version) = plane.get("/");
        assert_eq!(
            (status, version.as_str()),
            (200, expected),
            "after a kill at `{stage}`: {body}"
        );
        let run = plane.cli_as(&admin, &["audit", "verify"]);
        assert!(
            run.status.success(),
            "after a kill at `{stage}`: {}",
            run.stderr
        );
        // The change and its audit entry landed together, or neither did.
        let run = plane.cli_as(&admin, &["audit", "--json"]);
        let page: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
        let v2_entries = page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| {
                e["action"] == "app.deploy" && e["outcome"] == "ok" && e["detail"] == "version v2"
            })
            .count();
        assert_eq!(
            v2_entries,
            usize::from(expected == "v2"),
            "after a kill at `{stage}`:\n{}",
            run.stdout
        );
        assert_blobs_consistent(&plane);
    }
}

impl Plane {
    /// Waits for the killed process, keeping the data folder.
    fn verge_wait(self) -> std::process::ExitStatus {
        let Plane { verge, .. } = self;
        verge.wait()
    }
}

#[test]
fn a_damaged_blob_is_never_served_and_the_app_returns_once_it_is_repaired() {
    let g = guests();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let plane = Plane::open(&data, &[]);
    plane.deploy_file(&plane.admin, &g.hello, "app", "/app");
    drop(plane);

    // Someone edits the stored component while the server is down.
    let shard = std::fs::read_dir(data.join("blobs/sha256"))
        .expect("blobs")
        .next()
        .expect("one shard")
        .expect("entry")
        .path();
    let blob = std::fs::read_dir(&shard)
        .expect("shard")
        .next()
        .expect("one blob")
        .expect("entry")
        .path();
    let original = std::fs::read(&blob).expect("blob");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut damaged = original.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(&blob, &damaged).expect("damage");

    let plane = Plane::open(&data, &[]);
    assert_eq!(
        plane.get("/app").0,
        404,
        "a damaged component is not served"
    );
    plane.verge.wait_for_log("is corrupt");

    // Repaired on disk, with no change to the app in the store: the node
    // retries, even while the store is busy with other writes (here, a
    // token created every moment: each is an audited change).
    std::fs::write(&blob, &original).expect("repair");
    let deadline = Instant::now() + Duration::from_secs(60);
    while plane.get("/app").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the app never came back:\n{}",
            plane.verge.log()
        );
        let run = plane.cli(&["tokens", "create", "--scopes", "apps:read"]);
        assert!(run.status.success(), "{}", run.stderr);
    }
    assert_eq!(plane.get("/app").1, "Hello, world!\n");
}

#[test]
fn apps_with_the_same_component_share_its_loaded_code() {
    let g = guests();
    let plane = Plane::start();
    plane.deploy_file(&plane.admin, &g.hello, "one", "/one");
    assert!(
        !plane
            .verge
            .log()
            .contains("sharing a component already loaded")
    );
    plane.deploy_file(&plane.admin, &g.hello, "two", "/two");
    plane
        .verge
        .wait_for_log("sharing a component already loaded");
    assert_eq!(plane.get("/one").1, "Hello, world!\n");
    assert_eq!(plane.get("/two").1, "Hello, world!\n");
    // Once no app uses it, a new load links it afresh.
    assert!(plane.cli(&["delete", "one"]).status.success());
    assert!(plane.cli(&["delete", "two"]).status.success());
    let before = plane.verge.log().matches("component from cache").count();
    plane.deploy_file(&plane.admin, &g.hello, "three", "/three");
    plane
        .verge
        .wait_for_log_count("component from cache", before + 1);
}
