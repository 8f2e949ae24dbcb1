//! The NATS hardening of docs/cluster.md, for real: nkey users limited to
//! the subjects Verge needs, and TLS with a private CA. Every part of a
//! node (state, blobs, registry, key-value log, usage) must work within
//! those permissions, and a node without the right credentials or CA must
//! be refused with a reason.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Nats, config, join_cluster};
use verge_cluster::{Cluster, ClusterConfig, LocalState, NatsAuth};
use verge_kv::Replicator;
use verge_store::{BlobId, BlobStore, Expect, FsBlobs, SqliteStore, Store};

/// The permissions docs/cluster.md gives each node.
const PERMISSIONS: &str = r#"permissions: {
        publish:   ["$JS.API.>", "$JS.FC.>", "verge.>", "$KV.VERGE_NODES.>", "$O.VERGE_BLOBS.>", "_INBOX.>"]
        subscribe: ["_INBOX.>", "verge.>", "$KV.VERGE_NODES.>", "$O.VERGE_BLOBS.>"]
      }"#;

async fn join(config: ClusterConfig, dir: &Path) -> Result<Cluster, verge_cluster::ClusterError> {
    std::fs::create_dir_all(dir).expect("node folder");
    let local = SqliteStore::open(&dir.join("state.db")).expect("replica");
    let blobs = FsBlobs::open(&dir.join("blobs")).expect("blobs");
    join_cluster(config, local, blobs).await
}

/// Uses every part of the cluster through `a` and `b`.
async fn exercise(a: &Cluster, b: &Cluster) {
    a.store
        .put("apps/t/x", b"1".to_vec(), Expect::Absent)
        .await
        .expect("state write");
    let r = b
        .store
        .put("apps/t/y", b"2".to_vec(), Expect::Absent)
        .await
        .expect("state write from the other node");
    assert!(a.store.replica().wait_for(r, Duration::from_secs(5)).await);
    let bytes = b"component".repeat(1000);
    let id = BlobId::of(&bytes);
    let mut writer = a.blobs.writer().await.expect("writer");
    writer.write(&bytes).await.expect("write");
    writer.finish(Some(&id)).await.expect("blob upload");
    let path = b.blobs.local_path(&id).await.expect("blob fetch");
    assert_eq!(std::fs::read(path).expect("read"), bytes);
    a.kv.publish("tenant", b"entry".to_vec())
        .await
        .expect("key-value log");
    for cluster in [a, b] {
        cluster.registry.start_heartbeats(LocalState::default);
    }
    let start = Instant::now();
    while a
        .registry
        .nodes()
        .iter()
        .filter(|n| n.status == "up")
        .count()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "registry: {:?}",
            a.registry.nodes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_work_as_nkey_users_limited_to_verge_subjects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users: Vec<nkeys::KeyPair> = (0..2).map(|_| nkeys::KeyPair::new_user()).collect();
    let entries: Vec<String> = users
        .iter()
        .map(|u| format!("{{ nkey: {}\n      {PERMISSIONS} }}", u.public_key()))
        .collect();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{\n  users: [\n    {}\n  ]\n}}\n",
            entries.join("\n    ")
        ),
    )
    .expect("config");
    let nats = Nats::with_config(Some(conf));
    let mut nodes = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let seed = dir.path().join(format!("node{i}.nk"));
        std::fs::write(&seed, user.seed().expect("seed")).expect("seed file");
        let home = dir.path().join(format!("node{i}"));
        let config = ClusterConfig {
            auth: NatsAuth::NkeySeed(seed),
            ..config(&nats, &format!("node{i}"))
        };
        nodes.push(join(config, &home).await.expect("joins with its nkey"));
    }
    exercise(&nodes[0], &nodes[1]).await;

    // A stranger's nkey, or none, is refused, and the error says why.
    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().expect("seed")).expect("seed");
    for auth in [NatsAuth::NkeySeed(stranger), NatsAuth::None] {
        let config = ClusterConfig {
            auth,
            join_timeout: Duration::from_secs(2),
            ..config(&nats, "stranger")
        };
        let err = join(config, &dir.path().join("stranger"))
            .await
            .err()
            .expect("refused");
        let err = err.to_string().to_lowercase();
        assert!(err.contains("authorization"), "{err}");
    }
    let missing = ClusterConfig {
        auth: NatsAuth::NkeySeed(dir.path().join("missing.nk")),
        ..config(&nats, "x")
    };
    let err = join(missing, &dir.path().join("x"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("missing.nk"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_verify_the_nats_server_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.clone().self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("pem");
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let cert = write("server.pem", server.pem());
    let key = write("server.key", server_key.serialize_pem());
    let conf = write(
        "nats.conf",
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n}}\n",
            cert.display(),
            key.display()
        ),
    );
    let nats = Nats::with_config(Some(conf));
    let tls = |name: &str| ClusterConfig {
        url: format!("tls://127.0.0.1:{}", nats.port),
        tls_ca: Some(ca_file.clone()),
        ..config(&nats, name)
    };
    let a = join(tls("a"), &dir.path().join("a"))
        .await
        .expect("joins over TLS");
    let b = join(tls("b"), &dir.path().join("b"))
        .await
        .expect("joins over TLS");
    exercise(&a, &b).await;
    // Without the CA the server's certificate is not trusted.
    let untrusted = ClusterConfig {
        tls_ca: None,
        join_timeout: Duration::from_secs(2),
        ..tls("c")
    };
    let err = join(untrusted, &dir.path().join("c"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cannot reach NATS"), "{err}");
}
