//! A whole server in-process on a temporary data folder: shutdown stops
//! and joins every background task.

use super::*;

fn config(data: &Path) -> ServerConfig {
    ServerConfig {
        data_dir: data.to_path_buf(),
        cache_dir: None,
        max_instances: 10,
        kv_quotas: Quotas::default(),
        master_key: KeySource::File(data.join("master.key")),
        rotate_master_key: false,
        control: ControlConfig::default(),
        issue_admin_token: false,
        logs: LogHub::new(),
        telemetry: TelemetryConfig {
            usage_flush: Duration::from_millis(50),
            ..TelemetryConfig::default()
        },
        ai: verge_node::AiSettings::new(data.join("models")),
        cluster: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_joins_every_background_task_and_frees_the_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (server, issued) = Server::start(config(&data)).await.expect("start");
    assert!(issued.is_some(), "the first start issues an admin token");
    assert!(
        !server.background.tasks.is_empty(),
        "the sync and the auditor run in the background"
    );
    // A second server on the same folder is refused while this one runs.
    assert!(matches!(
        Server::start(config(&data)).await,
        Err(ServerError::DataDir { .. })
    ));
    assert_eq!(server.shutdown(Duration::from_secs(10)).await, 0);
    assert!(server.background.tasks.is_empty(), "every task was joined");
    assert!(server.background.tasks.is_closed());
    assert!(
        server.background.writers.is_empty(),
        "the auditor was joined first"
    );
    drop(server);
    // The folder is free again, with its state: no new admin token.
    let (again, issued) = Server::start(config(&data)).await.expect("restart");
    assert!(issued.is_none());
    assert_eq!(again.shutdown(Duration::from_secs(10)).await, 0);
}
