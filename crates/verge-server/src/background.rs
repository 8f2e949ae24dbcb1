//! The background tasks of a server (following the store, auditing quota
//! refusals, probing other nodes, loading vector indexes, and the
//! cluster's own): every one is started here and stops at
//! [`Background::shutdown`], which joins them.
//!
//! Shutdown has two phases. Tasks that still write through the store (the
//! quota auditor) finish first, while the cluster's followers still run:
//! in a cluster a write returns only once this node's replica applied it.
//! Then everything else stops.
//!
//! **Invariant**: once `shutdown` returns without leftovers, no task of
//! the server is running; a task still running after the grace period is
//! counted in the log, never silently left behind.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the server's background tasks run.
#[derive(Clone, Default)]
pub(crate) struct Background {
    pub(crate) tasks: TaskTracker,
    pub(crate) stop: CancellationToken,
    /// Tasks that finish their queued writes first (phase one).
    pub(crate) writers: TaskTracker,
    /// Tells the writers to take no new work and finish.
    pub(crate) drain: CancellationToken,
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
    // Only the vector-index preload uses it so far.
    #[cfg_attr(not(feature = "ai"), allow(dead_code))]
    pub(crate) fn spawn_blocking(&self, work: impl FnOnce() + Send + 'static) {
        self.tasks.spawn_blocking(work);
    }

    /// Runs `task`, which writes through the store, until it ends; it is
    /// given the drain token and must end soon after it is cancelled,
    /// having finished what is queued.
    pub(crate) fn spawn_writer<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.writers.spawn(task(self.drain.clone()));
    }

    /// Lets the writers finish, then stops every other task, and waits for
    /// them, at most `grace` for each phase; returns how many tasks were
    /// still running then.
    pub(crate) async fn shutdown(&self, grace: Duration) -> usize {
        self.drain.cancel();
        let writers = join(&self.writers, grace).await;
        self.stop.cancel();
        writers + join(&self.tasks, grace).await
    }
}

/// Closes `tasks` and waits for them, at most `grace`; how many are left.
async fn join(tasks: &TaskTracker, grace: Duration) -> usize {
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_ok() {
        return 0;
    }
    let left = tasks.len();
    tracing::warn!("{left} background task(s) still running after {grace:?}; leaving them");
    left
}
