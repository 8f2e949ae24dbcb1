//! The guest's future and where it runs.
//!
//! A request starts on the connection's task: most guests finish well within
//! one epoch tick, and staying there avoids a cross-thread hand-off. A guest
//! still running wasm when a tick passes is *heavy*: at its next yield it is
//! moved to the executor's slow lane, a separate thread pool at lower OS
//! priority, so loops and long computations cannot hold the workers that
//! accept connections and serve everyone else.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use super::HandleError;

/// What a guest future yields when it finishes.
pub(crate) type GuestResult = Result<(), HandleError>;
pub(crate) type GuestFuture = Pin<Box<dyn Future<Output = GuestResult> + Send>>;

/// Facts about one request, shared by its guest future, its epoch callback,
/// its request body and its response body.
#[derive(Debug)]
pub(crate) struct RequestShared {
    /// The request body passed the component's limit.
    pub(crate) too_large: AtomicBool,
    /// The guest was running wasm when an epoch tick passed.
    pub(crate) heavy: AtomicBool,
    /// The component's request-body limit, for messages.
    pub(crate) body_limit: u64,
}

impl RequestShared {
    pub(crate) fn new(body_limit: u64) -> Self {
        Self {
            too_large: AtomicBool::new(false),
            heavy: AtomicBool::new(false),
            body_limit,
        }
    }

    pub(crate) fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Acquire)
    }
}

/// A guest future, polled in place until it proves heavy, then on the slow lane.
pub(crate) enum GuestTask {
    Inline(GuestFuture),
    Offloaded(AbortOnDrop),
    Finished,
}

impl GuestTask {
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        shared: &RequestShared,
        slow_lane: &tokio::runtime::Handle,
    ) -> Poll<GuestResult> {
        loop {
            match self {
                GuestTask::Inline(future) => match future.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        *self = GuestTask::Finished;
                        return Poll::Ready(result);
                    }
                    Poll::Pending if shared.heavy.load(Ordering::Relaxed) => {
                        self.detach(shared, slow_lane);
                        // Loop to poll the join handle, registering our waker.
                    }
                    Poll::Pending => return Poll::Pending,
                },
                GuestTask::Offloaded(handle) => {
                    let result = match Pin::new(&mut handle.0).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(result)) => result,
                        Poll::Ready(Err(e)) => Err(HandleError::Trap {
                            message: "the guest's task ended abnormally".to_string(),
                            detail: e.to_string(),
                        }),
                    };
                    *self = GuestTask::Finished;
                    return Poll::Ready(result);
                }
                GuestTask::Finished => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Moves a guest that is still running onto a task of its own: the
    /// slow lane if it is heavy, else the current runtime (the same worker,
    /// usually). From then on it runs whether or not anyone polls it.
    pub(crate) fn detach(&mut self, shared: &RequestShared, slow_lane: &tokio::runtime::Handle) {
        if !matches!(self, GuestTask::Inline(_)) {
            return;
        }
        let GuestTask::Inline(future) = std::mem::replace(self, GuestTask::Finished) else {
            return;
        };
        let handle = if shared.heavy.load(Ordering::Relaxed) {
            slow_lane.spawn(future)
        } else {
            tokio::spawn(future)
        };
        *self = GuestTask::Offloaded(AbortOnDrop(handle));
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self, GuestTask::Finished)
    }
}

/// A guest running on the slow lane. Dropping it (the client is gone, the
/// response was abandoned) stops the guest there.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<GuestResult>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
