//! The compile cache: a restart serves from the compiled artifact instead
//! of compiling again, and a damaged artifact is recompiled, not trusted.

use crate::support::*;

#[tokio::test]
async fn a_restart_loads_the_compiled_component_from_the_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = cache.path().join("compiled");
    let hello = guests().hello.to_str().expect("utf-8").to_string();

    let first = Up::new(&[&hello]).cache(Some(dir.clone())).start();
    first.wait_for_log("compiled component");
    assert!(!first.log().contains("from cache"));
    assert_eq!(get(first.addr, "/").await.status, 200);
    drop(first);

    let artifacts: Vec<_> = std::fs::read_dir(&dir).expect("cache dir").collect();
    assert_eq!(artifacts.len(), 1, "one artifact per component and engine");

    let second = Up::new(&[&hello]).cache(Some(dir.clone())).start();
    second.wait_for_log("loaded compiled component from cache");
    assert_eq!(get(second.addr, "/").await.text(), "Hello, world!\n");
    drop(second);

    // A damaged artifact is detected, thrown away and rebuilt.
    let artifact = std::fs::read_dir(&dir)
        .expect("dir")
        .next()
        .expect("one")
        .expect("entry")
        .path();
    std::fs::write(&artifact, b"garbage").expect("damage it");
    let third = Up::new(&[&hello]).cache(Some(dir.clone())).start();
    third.wait_for_log("ignoring unusable compiled artifact");
    third.wait_for_log("compiled component");
    assert_eq!(get(third.addr, "/").await.status, 200);
}

#[tokio::test]
async fn a_cache_folder_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let verge = Up::new(&[guests().hello.to_str().expect("utf-8")])
        .cache(Some(cache.path().to_path_buf()))
        .start();
    verge.wait_for_log("compile cache disabled: the folder is writable by others");
    assert_eq!(get(verge.addr, "/").await.status, 200);
    assert_eq!(std::fs::read_dir(cache.path()).expect("dir").count(), 0);
}

#[tokio::test]
async fn after_kill_9_a_restart_serves_from_the_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = cache.path().join("compiled");
    let tp = guests().test_programs.to_str().expect("utf-8").to_string();
    let first = Up::new(&[&tp]).cache(Some(dir.clone())).start();
    // Killed while a request is in flight.
    let addr = first.addr;
    let in_flight = tokio::spawn(async move {
        send(addr, request("GET", addr, "/sleep?ms=3000", empty()))
            .await
            .map(|r| r.status())
    });
    first.wait_for_sleepers(1).await;
    first.signal(rustix::process::Signal::KILL);
    let _ = first.wait();
    assert!(
        in_flight.await.expect("task").is_err(),
        "a killed process answered"
    );

    let second = Up::new(&[&tp]).cache(Some(dir)).start();
    second.wait_for_log("loaded compiled component from cache");
    assert_eq!(get(second.addr, "/sleep?ms=10").await.status, 200);
}
