//! The chain verifies when untouched and names the first entry edited,
//! removed or reordered by hand.

use verge_store::{Expect, SqliteStore, Store};

use super::*;

async fn log_with(n: u64) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("state.db")).expect("open");
    for i in 0..n {
        append(
            &store,
            Record::new("app.deploy", &format!("t/app{i}"), Outcome::Ok).actor("abc", "t"),
            Vec::new(),
        )
        .await
        .expect("append");
    }
    (dir, store)
}

async fn rewrite(store: &SqliteStore, seq: u64, edit: impl FnOnce(&mut AuditEntry)) {
    let key = log_key(seq);
    let stored = store.get(&key).await.expect("get").expect("entry");
    let mut entry: AuditEntry = serde_json::from_slice(&stored.value).expect("json");
    edit(&mut entry);
    store
        .put(&key, serde_json::to_vec(&entry).expect("json"), Expect::Any)
        .await
        .expect("put");
}

#[tokio::test]
async fn an_untouched_chain_verifies() {
    let (_dir, store) = log_with(5).await;
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.entries, v.first_bad), (true, 5, None));
    let all = entries(&store, 0, 100, |_| true).await.expect("entries");
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(all.windows(2).all(|w| w[1].prev == w[0].hash));
}

#[tokio::test]
async fn an_edited_field_is_found() {
    let (_dir, store) = log_with(5).await;
    rewrite(&store, 3, |e| e.outcome = "denied".into()).await;
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.first_bad), (false, Some(3)), "{v:?}");
}

#[tokio::test]
async fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
    let (_dir, store) = log_with(5).await;
    rewrite(&store, 2, |e| {
        e.target = "t/other".into();
        e.hash = e.compute_hash();
    })
    .await;
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.first_bad), (false, Some(3)), "{v:?}");
}

#[tokio::test]
async fn removed_entries_are_found() {
    let (_dir, store) = log_with(5).await;
    store
        .delete(&log_key(4), Expect::Any)
        .await
        .expect("delete");
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.first_bad), (false, Some(4)), "{v:?}");

    let (_dir, store) = log_with(5).await;
    store
        .delete(&log_key(5), Expect::Any)
        .await
        .expect("delete");
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.first_bad), (false, Some(5)), "{v:?}");
}

#[tokio::test]
async fn an_entry_orphaned_by_a_crash_is_adopted() {
    let (_dir, store) = log_with(2).await;
    // As if the process died after writing entry 3 but before the head.
    let head = store.get(HEAD).await.expect("get").expect("head");
    let head_value = head.value.clone();
    append(
        &store,
        Record::new("app.delete", "t/x", Outcome::Ok),
        Vec::new(),
    )
    .await
    .expect("append");
    store
        .put(HEAD, head_value, Expect::Any)
        .await
        .expect("rewind head");
    append(
        &store,
        Record::new("token.create", "t", Outcome::Ok),
        Vec::new(),
    )
    .await
    .expect("append after crash");
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.entries), (true, 4), "{v:?}");
}

#[tokio::test]
async fn long_logs_are_read_and_verified_a_page_at_a_time() {
    let (_dir, store) = log_with(1203).await;
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.entries), (true, 1203), "{v:?}");
    let tail = entries(&store, 1190, 100, |_| true).await.expect("entries");
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1191..=1203).collect::<Vec<_>>()
    );
    let filtered = entries(&store, 0, 3, |e| e.target.ends_with('7'))
        .await
        .expect("entries");
    assert_eq!(
        filtered.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [8, 18, 28]
    );
    rewrite(&store, 1001, |e| e.outcome = "denied".into()).await;
    let v = verify(&store).await.expect("verify");
    assert_eq!((v.ok, v.first_bad), (false, Some(1001)), "{v:?}");
}

#[tokio::test]
async fn a_change_and_its_entry_land_together_or_not_at_all() {
    let (_dir, store) = log_with(2).await;
    let r = store
        .put("apps/t/a", b"v1".to_vec(), Expect::Any)
        .await
        .expect("put");
    // A stale precondition: neither the change nor the entry is written.
    let err = append(
        &store,
        Record::new("app.deploy", "t/a", Outcome::Ok),
        vec![Op::put(
            "apps/t/a",
            b"v2".to_vec(),
            Expect::Revision(r + 50),
        )],
    )
    .await
    .expect_err("conflict");
    assert!(matches!(err, StoreError::Conflict { .. }));
    assert_eq!(verify(&store).await.expect("verify").entries, 2);
    let (entry, revision) = append(
        &store,
        Record::new("app.deploy", "t/a", Outcome::Ok),
        vec![Op::put("apps/t/a", b"v2".to_vec(), Expect::Revision(r))],
    )
    .await
    .expect("append");
    assert_eq!(entry.seq, 3);
    let app = store.get("apps/t/a").await.expect("get").expect("app");
    assert_eq!(app.value, b"v2");
    assert_eq!(
        revision, app.revision,
        "the revision watchers of the app see"
    );
}
