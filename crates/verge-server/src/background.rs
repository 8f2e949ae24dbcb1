//! The background tasks of a server (following the store, auditing quota
//! refusals, probing other nodes, loading vector indexes, and the
//! cluster's own): every one is started here and stops at
//! [`Background::shutdown`], which joins them.
//!
//! **Invariant**: once `shutdown` returns without leftovers, no task of
//! the server is running; a task still running after the grace period is
//! named in the log, never silently left behind.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the server's background tasks run.
#[derive(Clone, Default)]
pub(crate) struct Background {
    pub(crate) tasks: TaskTracker,
    pub(crate) stop: CancellationToken,
}

impl Background {
    /// Runs `task` until it ends or the server stops (it is dropped at its
    /// next `.await` then).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            stop.run_until_cancelled(task).await;
        });
    }

    /// Runs blocking `work` on the blocking pool; shutdown waits for it.
    pub(crate) fn spawn_blocking(&self, work: impl FnOnce() + Send + 'static) {
        self.tasks.spawn_blocking(work);
    }

    /// Stops every task and waits for them, at most `grace`; returns how
    /// many were still running then.
    pub(crate) async fn shutdown(&self, grace: Duration) -> usize {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            let left = self.tasks.len();
            tracing::warn!("{left} background task(s) still running after {grace:?}; leaving them");
            return left;
        }
        0
    }
}
