//! The cluster store, blobs and registry against a real `nats-server -js`
//! (Debian's package), with two "nodes" in one process, each with its own
//! replica and blob folder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use verge_cluster::Cluster;
use verge_store::{
    BlobError, BlobId, BlobStore, Change, Expect, FsBlobs, Op, SqliteStore, Store, StoreError,
};

mod support;

use support::{Nats, config, join_cluster};

struct Member {
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

async fn join(nats: &Nats, name: &str) -> Member {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = SqliteStore::open(&dir.path().join("state.db")).expect("replica");
    let blobs = FsBlobs::open(&dir.path().join("blobs")).expect("blobs");
    let cluster = join_cluster(config(nats, name), local, blobs)
        .await
        .expect("joins");
    cluster
        .registry
        .start_heartbeats(verge_cluster::LocalState::default);
    Member { cluster, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_and_atomic_writes_hold_across_nodes() {
    let nats = Nats::start();
    let a = join(&nats, "a").await;
    let b = join(&nats, "b").await;
    let (sa, sb) = (a.cluster.store.clone(), b.cluster.store.clone());

    // Two creates of one key: exactly one wins.
    let (ra, rb) = tokio::join!(
        sa.put("k", b"a".to_vec(), Expect::Absent),
        sb.put("k", b"b".to_vec(), Expect::Absent)
    );
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        matches!(loser, Err(StoreError::Conflict { .. })),
        "{loser:?}"
    );

    // Read-modify-write from both nodes at once: no increment is lost.
    async fn increment(store: Arc<verge_cluster::ClusterStore>, times: usize) {
        for _ in 0..times {
            loop {
                let entry = store.get("counter").await.expect("get");
                let (value, expect) = match &entry {
                    Some(e) => (
                        String::from_utf8_lossy(&e.value)
                            .parse::<u64>()
                            .expect("number"),
                        Expect::Revision(e.revision),
                    ),
                    None => (0, Expect::Absent),
                };
                match store
                    .put("counter", (value + 1).to_string().into_bytes(), expect)
                    .await
                {
                    Ok(_) => break,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
    tokio::join!(increment(sa.clone(), 15), increment(sb.clone(), 15));
    let revision = sa.revision().await.expect("revision");
    assert!(
        b.cluster
            .store
            .replica()
            .wait_for(revision, Duration::from_secs(5))
            .await
    );
    let counter = sb.get("counter").await.expect("get").expect("exists");
    assert_eq!(counter.value, b"30");

    // A batch is one entry: both writes or neither, seen alike on the
    // other node.
    let r = sa
        .apply(vec![
            Op::put("x", b"1".to_vec(), Expect::Absent),
            Op::put("y", b"2".to_vec(), Expect::Absent),
        ])
        .await
        .expect("batch");
    assert!(
        b.cluster
            .store
            .replica()
            .wait_for(r, Duration::from_secs(5))
            .await
    );
    assert_eq!(sb.get("x").await.expect("get").expect("x").revision, r);
    assert_eq!(sb.get("y").await.expect("get").expect("y").revision, r);
    let failed = sb
        .apply(vec![
            Op::put("z", b"3".to_vec(), Expect::Absent),
            Op::put("x", b"9".to_vec(), Expect::Absent),
        ])
        .await;
    assert!(
        matches!(failed, Err(StoreError::Conflict { ref key, .. }) if key == "x"),
        "{failed:?}"
    );
    assert!(
        sa.get("z").await.expect("get").is_none(),
        "a refused batch wrote nothing"
    );

    // A watcher on one node sees the other node's change and deletion.
    let mut watch = sb
        .watch("w/", sb.revision().await.expect("rev"))
        .await
        .expect("watch");
    sa.put("w/1", b"v".to_vec(), Expect::Any)
        .await
        .expect("put");
    sa.delete("w/1", Expect::Any).await.expect("delete");
    let mut seen = Vec::new();
    let start = Instant::now();
    while !seen.iter().any(|c| matches!(c, Change::Delete { .. })) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "watch saw {seen:?}"
        );
        seen.extend(watch.next(Duration::from_millis(200)).await.expect("next"));
    }
    // A node acting right after another's write acts on it, never on a
    // copy that lags behind: each delete finds the key just created.
    for i in 0..20 {
        let key = format!("lag/{i}");
        sa.put(&key, b"v".to_vec(), Expect::Absent)
            .await
            .expect("put");
        sb.delete(&key, Expect::Any).await.expect("delete");
        let r = sb.revision().await.expect("rev");
        assert!(sa.replica().wait_for(r, Duration::from_secs(5)).await);
        assert!(
            sa.get(&key).await.expect("get").is_none(),
            "{key} was deleted"
        );
    }
    // Deleting an absent key changes nothing and appends nothing.
    let before = sa.revision().await.expect("rev");
    assert_eq!(
        sa.delete("never", Expect::Any).await.expect("no-op"),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_travel_between_nodes_and_are_verified() {
    let nats = Nats::start();
    let a = join(&nats, "a").await;
    let b = join(&nats, "b").await;
    let bytes = b"\0asm component bytes".repeat(10_000);
    let id = BlobId::of(&bytes);
    let mut writer = a.cluster.blobs.writer().await.expect("writer");
    writer.write(&bytes).await.expect("write");
    writer.finish(Some(&id)).await.expect("finish");
    assert!(
        b.cluster.blobs.list().await.expect("list").is_empty(),
        "b fetches lazily"
    );
    let path = b.cluster.blobs.local_path(&id).await.expect("fetched");
    assert_eq!(std::fs::read(path).expect("read"), bytes);
    assert_eq!(
        b.cluster.blobs.list().await.expect("list"),
        vec![id.clone()]
    );
    // A wrong digest is refused at upload and stored nowhere.
    let mut writer = a.cluster.blobs.writer().await.expect("writer");
    writer.write(b"other").await.expect("write");
    let wrong = BlobId::of(b"not other");
    assert!(matches!(
        writer.finish(Some(&wrong)).await,
        Err(BlobError::Mismatch { .. })
    ));
    assert!(matches!(
        b.cluster.blobs.local_path(&wrong).await,
        Err(BlobError::Missing(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_reads_answer_and_writes_are_refused_until_it_returns() {
    let mut nats = Nats::start();
    let a = join(&nats, "a").await;
    let store = a.cluster.store.clone();
    store
        .put("k", b"1".to_vec(), Expect::Any)
        .await
        .expect("put");
    nats.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = store.put("k", b"2".to_vec(), Expect::Any).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(ref m)) if m.contains("cannot reach the cluster")),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at once"
    );
    let upload = a.cluster.blobs.writer().await;
    assert!(
        matches!(upload, Err(BlobError::Unavailable(_))),
        "uploads are refused"
    );
    assert_eq!(store.get("k").await.expect("get").expect("k").value, b"1");
    let nodes = a.cluster.registry.nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].status, "degraded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    let start = Instant::now();
    loop {
        match store.put("k", b"3".to_vec(), Expect::Any).await {
            Ok(_) => break,
            Err(StoreError::Unavailable(_)) if start.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(store.get("k").await.expect("get").expect("k").value, b"3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_cluster_log_is_refused_not_mixed() {
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        (
            SqliteStore::open(&dir.path().join("state.db")).expect("replica"),
            FsBlobs::open(&dir.path().join("blobs")).expect("blobs"),
        )
    };
    {
        let (local, blobs) = open();
        let cluster = join_cluster(config(&nats, "a"), local, blobs)
            .await
            .expect("joins");
        cluster
            .store
            .put("k", b"1".to_vec(), Expect::Any)
            .await
            .expect("put");
    }
    // NATS loses its JetStream data.
    nats.kill();
    std::fs::remove_dir_all(nats.store.path()).expect("wipe");
    nats.restart();
    let (local, blobs) = open();
    let cluster = join_cluster(config(&nats, "a"), local, blobs)
        .await
        .expect("starts from its copy");
    assert_eq!(
        cluster
            .store
            .get("k")
            .await
            .expect("get")
            .expect("kept")
            .value,
        b"1"
    );
    let start = Instant::now();
    let refused = loop {
        match cluster.store.put("k2", b"x".to_vec(), Expect::Any).await {
            Err(StoreError::Unavailable(m)) if m.contains("recreated") => break m,
            other if start.elapsed() > Duration::from_secs(10) => panic!("{other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(refused.contains("new --data folder"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_data_folder_cannot_join() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = SqliteStore::open(&dir.path().join("state.db")).expect("store");
    local
        .put("apps/t/a", b"{}".to_vec(), Expect::Any)
        .await
        .expect("put");
    let blobs = FsBlobs::open(&dir.path().join("blobs")).expect("blobs");
    let err = join_cluster(config(&nats, "a"), local, blobs)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("standalone server's state"),
        "{err}"
    );
}
