//! Behaviour of the SQLite store against real database files.

use std::time::Duration;

use crate::{Change, Expect, Op, SqliteStore, Store, StoreError};

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("state.db")).expect("opens")
}

#[tokio::test]
async fn compare_and_set_refuses_stale_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let r1 = store
        .put("apps/a", b"one".to_vec(), Expect::Absent)
        .await
        .expect("create");
    assert!(matches!(
        store.put("apps/a", b"x".to_vec(), Expect::Absent).await,
        Err(StoreError::Conflict { current: Some(r), .. }) if r == r1
    ));
    let r2 = store
        .put("apps/a", b"two".to_vec(), Expect::Revision(r1))
        .await
        .expect("update");
    assert!(r2 > r1);
    assert!(matches!(
        store
            .put("apps/a", b"three".to_vec(), Expect::Revision(r1))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let entry = store.get("apps/a").await.expect("get").expect("present");
    assert_eq!((entry.value.as_slice(), entry.revision), (&b"two"[..], r2));
    assert!(matches!(
        store.delete("apps/a", Expect::Revision(r1)).await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .delete("apps/a", Expect::Revision(r2))
        .await
        .expect("delete");
    assert_eq!(store.get("apps/a").await.expect("get"), None);
    // A deleted key can be created again.
    store
        .put("apps/a", b"again".to_vec(), Expect::Absent)
        .await
        .expect("recreate");
}

#[tokio::test]
async fn list_returns_live_keys_under_a_prefix_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    for key in ["apps/t/b", "apps/t/a", "apps/u/a", "apps/t", "tokens/x"] {
        store
            .put(key, key.as_bytes().to_vec(), Expect::Any)
            .await
            .expect("put");
    }
    store.delete("apps/u/a", Expect::Any).await.expect("delete");
    let keys: Vec<String> = store
        .list("apps/")
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["apps/t", "apps/t/a", "apps/t/b"]);
}

#[tokio::test]
async fn pages_cover_a_range_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    for i in 0..25 {
        store
            .put(&format!("log/{i:04}"), Vec::new(), Expect::Any)
            .await
            .expect("put");
    }
    store
        .put("other", Vec::new(), Expect::Any)
        .await
        .expect("put");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_page("log/", after.as_deref(), 10)
            .await
            .expect("page");
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        seen.extend(page.into_iter().map(|e| e.key));
    }
    let expected: Vec<String> = (0..25).map(|i| format!("log/{i:04}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_batch_applies_whole_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let r = store
        .put("a", b"1".to_vec(), Expect::Any)
        .await
        .expect("put");
    // The second op fails its precondition: the first is rolled back.
    let err = store
        .apply(vec![
            Op::put("b", b"2".to_vec(), Expect::Absent),
            Op::put("a", b"x".to_vec(), Expect::Revision(r + 99)),
        ])
        .await
        .expect_err("conflict");
    assert!(
        matches!(err, StoreError::Conflict { ref key, .. } if key == "a"),
        "{err}"
    );
    assert_eq!(store.get("b").await.expect("get"), None);
    assert_eq!(store.revision().await.expect("revision"), r);
    let last = store
        .apply(vec![
            Op::put("b", b"2".to_vec(), Expect::Absent),
            Op::delete("a", Expect::Revision(r)),
        ])
        .await
        .expect("batch");
    assert_eq!(last, r + 2, "each write has its own revision");
    assert_eq!(store.get("a").await.expect("get"), None);
    assert_eq!(
        store.get("b").await.expect("get").map(|e| e.revision),
        Some(r + 1)
    );
}

#[tokio::test]
async fn bad_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    for key in ["", "a\nb", &"k".repeat(513)] {
        assert!(matches!(
            store.put(key, Vec::new(), Expect::Any).await,
            Err(StoreError::InvalidKey(_))
        ));
    }
}

#[tokio::test]
async fn watch_follows_every_key_to_its_latest_state_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let before = store
        .put("apps/old", b"0".to_vec(), Expect::Any)
        .await
        .expect("put");
    let mut watch = store.watch("apps/", before).await.expect("watch");
    let writer = store.clone();
    let task = tokio::spawn(async move {
        for i in 0..50u32 {
            let key = format!("apps/{}", i % 5);
            writer
                .put(&key, i.to_string().into_bytes(), Expect::Any)
                .await
                .expect("put");
            writer
                .put("other/x", Vec::new(), Expect::Any)
                .await
                .expect("put");
        }
        writer.delete("apps/0", Expect::Any).await.expect("delete")
    });
    let mut state = std::collections::BTreeMap::new();
    let mut last_revision = before;
    let final_revision = loop {
        let batch = watch.next(Duration::from_millis(200)).await.expect("next");
        for change in &batch {
            assert!(change.key().starts_with("apps/"), "{change:?}");
            assert!(change.revision() > last_revision, "in revision order");
            last_revision = change.revision();
            match change {
                Change::Put(e) => state.insert(e.key.clone(), e.value.clone()),
                Change::Delete { key, .. } => state.remove(key),
            };
        }
        if task.is_finished() && batch.is_empty() {
            break task.await.expect("writer");
        }
    };
    // Whatever was folded, the watcher ends at the store's state.
    let expected: std::collections::BTreeMap<_, _> = [
        ("apps/1", "46"),
        ("apps/2", "47"),
        ("apps/3", "48"),
        ("apps/4", "49"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    assert_eq!(state, expected);
    assert_eq!(last_revision, final_revision, "the deletion was seen last");
    assert!(
        watch
            .next(Duration::from_millis(50))
            .await
            .expect("next")
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_compare_and_set_loses_no_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    store
        .put("counter", b"0".to_vec(), Expect::Absent)
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                loop {
                    let e = store.get("counter").await.expect("get").expect("present");
                    let n: u64 = String::from_utf8_lossy(&e.value).parse().expect("number");
                    match store
                        .put(
                            "counter",
                            (n + 1).to_string().into_bytes(),
                            Expect::Revision(e.revision),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let e = store.get("counter").await.expect("get").expect("present");
    assert_eq!(e.value, b"200");
}

#[tokio::test]
async fn state_and_revisions_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = {
        let store = open(&dir);
        store
            .put("a", b"1".to_vec(), Expect::Any)
            .await
            .expect("put");
        store.delete("a", Expect::Any).await.expect("delete")
    };
    let store = open(&dir);
    assert_eq!(store.revision().await.expect("revision"), r);
    assert_eq!(store.get("a").await.expect("get"), None);
    let next = store.put("b", Vec::new(), Expect::Any).await.expect("put");
    assert!(next > r, "revisions never go back after a restart");
}

#[test]
fn a_database_from_a_newer_verge_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).expect("opens"));
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", 99).expect("bump");
    drop(conn);
    let Err(err) = SqliteStore::open(&path) else {
        panic!("a newer schema must be refused");
    };
    assert!(err.to_string().contains("newer than this Verge"), "{err}");
}

#[tokio::test]
async fn a_replica_applies_each_log_entry_once_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    assert_eq!(store.replica().await.expect("replica"), None);
    store.start_replica("LOG@1").await.expect("starts");
    let batch = vec![
        Op::put("a", b"1".to_vec(), Expect::Absent),
        Op::put("b", b"2".to_vec(), Expect::Absent),
    ];
    // Preconditions are the writer's business: both hold here.
    assert!(store.check(batch.clone()).await.expect("check"));
    let mut watch = store.watch("", 0).await.expect("watch");
    store.apply_replicated(5, batch).await.expect("applies");
    // Applying an entry again, or an older one, changes nothing.
    store
        .apply_replicated(5, vec![Op::put("a", b"again".to_vec(), Expect::Any)])
        .await
        .expect("skipped");
    store
        .apply_replicated(3, vec![Op::delete("b", Expect::Any)])
        .await
        .expect("skipped");
    let changes = watch.next(Duration::from_secs(1)).await.expect("next");
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.iter().all(|c| c.revision() == 5));
    // An entry that changes nothing still moves the position.
    store.apply_replicated(9, Vec::new()).await.expect("empty");
    assert_eq!(store.revision().await.expect("revision"), 9);
    assert!(matches!(
        store
            .check(vec![Op::put("a", Vec::new(), Expect::Absent)])
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(
        !store
            .check(vec![Op::delete("absent", Expect::Any)])
            .await
            .expect("check"),
        "deleting an absent key changes nothing"
    );
    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.replica().await.expect("replica"),
        Some(("LOG@1".to_string(), 9))
    );
    assert_eq!(store.get("a").await.expect("get").expect("a").value, b"1");
    let err = store.start_replica("LOG@2").await.expect_err("another log");
    assert!(err.to_string().contains("new --data folder"), "{err}");
}
