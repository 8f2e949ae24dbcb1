//! The slow lane: a thread pool, apart from the workers that accept
//! connections, where guests that run longer than an epoch tick continue.
//!
//! Its threads run at a lower OS priority (nice 10), so when the machine is
//! busy the kernel prefers the workers serving short requests; a loop or a
//! long computation then costs other components only the CPU share the
//! scheduler gives it, not their latency.
//!
//! **Invariant**: dropping the lane never blocks (it may be dropped inside an
//! async context); running guests on it are simply abandoned.

/// Nice value of slow-lane threads; the connection workers keep 0.
const SLOW_LANE_NICE: i32 = 10;

pub(crate) struct SlowLane {
    runtime: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl SlowLane {
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("verge-slow-lane")
            .enable_all()
            .on_thread_start(|| {
                // Best effort: without the privilege to change it, the lane
                // still isolates by running on its own threads.
                let _ = rustix::process::setpriority_process(
                    Some(rustix::thread::gettid()),
                    SLOW_LANE_NICE,
                );
            })
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: std::sync::Mutex::new(Some(runtime)),
            handle,
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Stops the lane and waits (briefly) for its threads, dropping the
    /// guests on it. Call it from outside any async context, before the
    /// runtime whose timers those guests use goes away.
    pub(crate) fn shutdown(&self) {
        if let Some(runtime) = self.take() {
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
        }
    }

    fn take(&self) -> Option<tokio::runtime::Runtime> {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for SlowLane {
    fn drop(&mut self) {
        if let Some(runtime) = self.take() {
            runtime.shutdown_background();
        }
    }
}
