//! The key-value engine on real SQLite files: durability, isolation between
//! tenants, apps and stores, limits at and around every quota, batches,
//! concurrent increments and key listing.

use std::sync::Arc;

use super::*;

fn small() -> Quotas {
    Quotas {
        max_key_bytes: 8,
        max_value_bytes: 16,
        max_keys: 3,
        max_store_bytes: 40,
    }
}

fn kv(dir: &tempfile::TempDir, quotas: Quotas) -> Arc<KeyValue> {
    KeyValue::open(&dir.path().join("kv"), quotas)
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_read_back_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let b = kv(&dir, Quotas::default())
            .bucket("acme", "shop", "default")
            .expect("bucket");
        assert_eq!(b.get("a").await, Ok(None));
        b.set("a".into(), b"1\0two".to_vec()).await.expect("set");
        b.set("b".into(), Vec::new()).await.expect("empty value");
        assert_eq!(b.get("a").await, Ok(Some(b"1\0two".to_vec())));
        assert_eq!(b.get("b").await, Ok(Some(Vec::new())));
        assert_eq!(b.exists("b").await, Ok(true));
        b.delete("b".into()).await.expect("delete");
        b.delete("never-set".into())
            .await
            .expect("delete of a missing key");
        assert_eq!(b.exists("b").await, Ok(false));
    }
    let b = kv(&dir, Quotas::default())
        .bucket("acme", "shop", "default")
        .expect("bucket");
    assert_eq!(b.get("a").await, Ok(Some(b"1\0two".to_vec())));
    assert_eq!(b.usage().await, Ok((1, 6)));
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_apps_and_stores_never_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = kv(&dir, Quotas::default());
    let names = [
        ("acme", "shop", "default"),
        ("bravo", "shop", "default"),
        ("acme", "blog", "default"),
        ("acme", "shop", "sessions"),
    ];
    for (i, (t, a, s)) in names.iter().enumerate() {
        let b = kv.bucket(t, a, s).expect("bucket");
        b.set("k".into(), vec![i as u8]).await.expect("set");
    }
    for (i, (t, a, s)) in names.iter().enumerate() {
        let b = kv.bucket(t, a, s).expect("bucket");
        assert_eq!(b.get("k").await, Ok(Some(vec![i as u8])), "{t}/{a}/{s}");
        assert_eq!(b.list_keys(None, 10).await.expect("list").keys, ["k"]);
    }
    // Each tenant has a file of its own.
    assert!(dir.path().join("kv/acme.db").is_file());
    assert!(dir.path().join("kv/bravo.db").is_file());
    assert!(matches!(
        kv.bucket("../x", "a", "s"),
        Err(KvError::InvalidTenant(_))
    ));
    assert!(matches!(
        kv.bucket("acme", "a", "Bad Name"),
        Err(KvError::InvalidStore(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_values_at_and_around_the_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = kv(&dir, small()).bucket("t", "a", "s").expect("bucket");
    // Key: 8 bytes fit, 9 do not; empty and NUL never.
    b.set("k".repeat(8), vec![]).await.expect("8-byte key");
    for bad in ["k".repeat(9), String::new(), "a\0b".to_string()] {
        assert!(
            matches!(
                b.set(bad.clone(), vec![]).await,
                Err(KvError::InvalidKey(_))
            ),
            "{bad:?}"
        );
        assert!(matches!(b.get(&bad).await, Err(KvError::InvalidKey(_))));
    }
    // Length counts bytes: 3 x 2 bytes fit, 3 x 3 bytes do not.
    b.set("ééé".into(), vec![]).await.expect("6 bytes");
    assert!(matches!(
        b.set("€€€".into(), vec![]).await,
        Err(KvError::InvalidKey(_))
    ));
    // Value: 16 bytes fit, 17 do not.
    b.set("v".into(), vec![7; 16]).await.expect("16-byte value");
    let err = b.set("v".into(), vec![7; 17]).await.expect_err("17 bytes");
    assert!(matches!(err, KvError::QuotaExceeded(_)), "{err}");
    assert_eq!(
        b.get("v").await,
        Ok(Some(vec![7; 16])),
        "the old value stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn store_quotas_count_keys_and_bytes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = kv(&dir, small()).bucket("t", "a", "s").expect("bucket");
    b.set("a".into(), vec![0; 10]).await.expect("a");
    b.set("b".into(), vec![0; 10]).await.expect("b");
    // Overwriting does not add a key, and only the difference in bytes counts.
    b.set("a".into(), vec![0; 16]).await.expect("overwrite a");
    assert_eq!(b.usage().await, Ok((2, 28)));
    // 28 + 1 + 12 = 41 > 40.
    let err = b.set("c".into(), vec![0; 12]).await.expect_err("bytes");
    assert!(
        err.to_string().contains("over its limit of 40 bytes"),
        "{err}"
    );
    b.set("c".into(), vec![0; 11])
        .await
        .expect("exactly 40 bytes");
    let err = b.set("d".into(), vec![]).await.expect_err("4th key");
    assert!(err.to_string().contains("3 keys"), "{err}");
    // Freeing a key makes room again.
    b.delete("c".into()).await.expect("delete");
    b.set("d".into(), vec![]).await.expect("after delete");
    assert_eq!(b.usage().await, Ok((3, 29)));
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_apply_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = kv(&dir, small()).bucket("t", "a", "s").expect("bucket");
    // The fourth key breaks the quota: none of the four is stored.
    let items: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| (k.to_string(), vec![1]))
        .collect();
    assert!(matches!(
        b.set_many(items).await,
        Err(KvError::QuotaExceeded(_))
    ));
    assert_eq!(b.usage().await, Ok((0, 0)));
    b.set_many(vec![("a".into(), vec![1]), ("b".into(), vec![2])])
        .await
        .expect("set_many");
    assert_eq!(
        b.get_many(vec!["b".into(), "x".into(), "a".into()]).await,
        Ok(vec![Some(vec![2]), None, Some(vec![1])])
    );
    b.delete_many(vec!["a".into(), "x".into()])
        .await
        .expect("delete_many");
    assert_eq!(b.list_keys(None, 10).await.expect("list").keys, ["b"]);
    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    assert!(matches!(
        b.get_many(too_many).await,
        Err(KvError::QuotaExceeded(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_increments_are_never_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = kv(&dir, Quotas::default());
    let b = kv.bucket("t", "a", "counters").expect("bucket");
    let tasks: Vec<_> = (0..2000)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.increment("hits".into(), 1).await })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("task").expect("increment"));
    }
    seen.sort_unstable();
    // Every increment saw a distinct value: 1..=2000.
    assert_eq!(seen, (1..=2000).collect::<Vec<u64>>());
    assert_eq!(b.get("hits").await, Ok(Some(b"2000".to_vec())));
    assert_eq!(b.increment("hits".into(), 0).await, Ok(2000));
}

#[tokio::test(flavor = "multi_thread")]
async fn increment_refuses_non_counters_and_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = kv(&dir, Quotas::default())
        .bucket("t", "a", "s")
        .expect("bucket");
    b.set("text".into(), b"hello".to_vec()).await.expect("set");
    assert_eq!(
        b.increment("text".into(), 1).await,
        Err(KvError::NotACounter("text".into()))
    );
    b.set("max".into(), u64::MAX.to_string().into_bytes())
        .await
        .expect("set");
    assert_eq!(
        b.increment("max".into(), 1).await,
        Err(KvError::Overflow("max".into()))
    );
    assert_eq!(b.get("text").await, Ok(Some(b"hello".to_vec())));
}

#[tokio::test(flavor = "multi_thread")]
async fn key_listing_pages_with_a_stable_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = kv(&dir, Quotas::default())
        .bucket("t", "a", "s")
        .expect("bucket");
    for i in 0..25 {
        b.set(format!("k{i:02}"), vec![]).await.expect("set");
    }
    let first = b.list_keys(None, 10).await.expect("page 1");
    assert_eq!(first.keys.len(), 10);
    // Keys deleted before the cursor or added after it do not shift pages.
    b.delete("k00".into()).await.expect("delete");
    b.set("new".into(), vec![]).await.expect("set");
    let mut all = first.keys.clone();
    let mut cursor = first.cursor;
    while let Some(c) = cursor {
        let page = b.list_keys(Some(c), 10).await.expect("page");
        all.extend(page.keys);
        cursor = page.cursor;
    }
    let mut expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    expected.push("new".into());
    assert_eq!(all, expected);
    // A cursor from nowhere is harmless.
    let page = b.list_keys(Some(u64::MAX), 10).await.expect("page");
    assert!(page.keys.is_empty() && page.cursor.is_none());
    let (sorted, more) = b.list_sorted(Some("k20".into()), 3).await.expect("sorted");
    assert_eq!(sorted, ["k21", "k22", "k23"]);
    assert!(more);
}
