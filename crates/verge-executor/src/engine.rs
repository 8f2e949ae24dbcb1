//! The process-wide engine: wasmtime configuration, the linker, the epoch
//! ticker and the compile cache, behind a cheaply cloneable [`Executor`].
//!
//! The pooling allocator is sized once at start ([`ExecutorConfig`]). When
//! an instance is freed its memory is reset in place (`keep_resident` plus
//! the `PAGEMAP_SCAN` ioctl where the kernel has it) instead of being handed
//! back to the kernel: returning pages costs TLB shootdowns on every core,
//! which is where most per-request time went in `wasmtime serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use crate::cache::CompileCache;
use crate::host::Host;
use crate::lane::SlowLane;

/// Outbound connections open at once across the process.
const MAX_OUTBOUND_CONNECTIONS: usize = 256;

/// Settings fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Folder for compiled components; `None` compiles in memory every time.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may be alive at once across all components. Requests
    /// beyond this get [`crate::HandleError::Overloaded`].
    pub max_instances: u32,
    /// The largest linear memory any component may be granted, in bytes.
    pub max_memory: u64,
    /// How often running guests are interrupted to check deadlines and yield.
    pub epoch_tick: Duration,
    /// Bytes of each freed linear memory reset in place rather than returned
    /// to the kernel.
    pub memory_keep_resident: usize,
    /// Threads of the slow lane, where guests running longer than one epoch
    /// tick continue (see `lane`).
    pub slow_lane_threads: usize,
    /// Key-value stores for `wasi:keyvalue`; without them, a component
    /// that declares a store cannot be loaded.
    pub key_value: Option<Arc<verge_host_keyvalue::KeyValue>>,
    /// Models and vector indexes for `verge:ai`; without them, a component
    /// that declares a model or an index cannot be loaded.
    #[cfg(feature = "ai")]
    pub ai: Option<Arc<verge_host_ai::AiServices>>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 1000,
            max_memory: verge_capabilities::Limits::MAX_MEMORY,
            epoch_tick: Duration::from_millis(1),
            memory_keep_resident: 4 * 1024 * 1024,
            // Half the cores (at least one): heavy guests can never take
            // every core from the workers serving short requests.
            slow_lane_threads: std::thread::available_parallelism()
                .map_or(1, |n| (n.get() / 2).max(1)),
            key_value: None,
            #[cfg(feature = "ai")]
            ai: None,
        }
    }
}

/// A wasmtime error, kept with its chain of causes.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the executor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// wasmtime refused the configuration (for example, not enough address space).
    #[error("cannot create the WebAssembly engine")]
    Engine(#[source] BoxError),
    /// The linker could not be set up.
    #[error("cannot set up the host APIs for guests")]
    Linker(#[source] BoxError),
    /// A thread the engine needs could not be started.
    #[error("cannot start the {0} thread(s)")]
    Thread(&'static str, #[source] std::io::Error),
}

/// Cheap handle to the process-wide engine.
#[derive(Clone)]
pub struct Executor {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<Host>,
    pub(crate) cache: Option<CompileCache>,
    pub(crate) slow_lane: SlowLane,
    pub(crate) key_value: Option<Arc<verge_host_keyvalue::KeyValue>>,
    #[cfg(feature = "ai")]
    pub(crate) ai: Option<Arc<verge_host_ai::AiServices>>,
    /// Outbound connections open at once across all guests. Kept below
    /// tokio's blocking-thread limit, since each connect resolves a name on
    /// a blocking thread.
    pub(crate) outbound_slots: Arc<tokio::sync::Semaphore>,
    /// Components already compiled and linked in this process, by content
    /// hash: many apps (or versions) with the same component share one
    /// copy of its code. Weak, so unused components are freed.
    pub(crate) linked: std::sync::Mutex<
        std::collections::HashMap<
            String,
            std::sync::Weak<wasmtime_wasi_http::p2::bindings::ProxyPre<crate::host::Host>>,
        >,
    >,
    /// Counts for the node's metrics.
    pub(crate) stats: Stats,
    pub(crate) instance_slots: u64,
    /// Most CPU time billed for a guest's first poll (see `invoke`).
    pub(crate) first_poll_cap: Duration,
    _ticker: EpochTicker,
}

/// Counters the executor keeps for metrics, read with [`Executor::stats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) cache_hits: std::sync::atomic::AtomicU64,
    pub(crate) cache_misses: std::sync::atomic::AtomicU64,
}

/// A snapshot of the executor's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Component instances in the pool now.
    pub active_instances: u64,
    /// Linear memories in use in the pool.
    pub pool_memories: u64,
    /// Resident bytes of unused memories kept warm for reuse.
    pub pool_warm_bytes: u64,
    /// Instances that may exist at once.
    pub instance_slots: u64,
    /// Components loaded from the compile cache (or shared with one
    /// already loaded).
    pub compile_cache_hits: u64,
    /// Components compiled.
    pub compile_cache_misses: u64,
}

impl Executor {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(config: &ExecutorConfig) -> Result<Self, ExecutorError> {
        let engine =
            Engine::new(&wasmtime_config(config)).map_err(|e| ExecutorError::Engine(e.into()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| ExecutorError::Linker(e.into()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| ExecutorError::Linker(e.into()))?;
        crate::apis::add_to_linker(&mut linker).map_err(|e| ExecutorError::Linker(e.into()))?;
        let cache = config
            .cache_dir
            .as_ref()
            .and_then(|dir| CompileCache::open(dir, &engine));
        let ticker = EpochTicker::spawn(engine.clone(), config.epoch_tick)
            .map_err(|e| ExecutorError::Thread("epoch ticker", e))?;
        let slow_lane = SlowLane::start(config.slow_lane_threads)
            .map_err(|e| ExecutorError::Thread("slow-lane", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                slow_lane,
                key_value: config.key_value.clone(),
                #[cfg(feature = "ai")]
                ai: config.ai.clone(),
                outbound_slots: Arc::new(tokio::sync::Semaphore::new(MAX_OUTBOUND_CONNECTIONS)),
                linked: std::sync::Mutex::default(),
                stats: Stats::default(),
                instance_slots: u64::from(config.max_instances),
                first_poll_cap: config.epoch_tick.saturating_mul(2),
                _ticker: ticker,
            }),
        })
    }
}

impl Executor {
    /// Stops the slow lane, dropping the guests still on it. Call it from
    /// outside any async context when the server has stopped, before its
    /// runtime shuts down.
    pub fn shutdown(&self) {
        self.inner.slow_lane.shutdown();
    }

    /// The executor's counters, for metrics.
    pub fn stats(&self) -> ExecutorStats {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.inner.stats;
        let pool = self.inner.engine.pooling_allocator_metrics();
        ExecutorStats {
            active_instances: pool.as_ref().map_or(0, |p| p.component_instances()),
            pool_memories: pool.as_ref().map_or(0, |p| p.memories() as u64),
            pool_warm_bytes: pool
                .as_ref()
                .map_or(0, |p| p.unused_memory_bytes_resident() as u64),
            instance_slots: self.inner.instance_slots,
            compile_cache_hits: s.cache_hits.load(Relaxed),
            compile_cache_misses: s.cache_misses.load(Relaxed),
        }
    }
}

fn wasmtime_config(config: &ExecutorConfig) -> Config {
    let n = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        // Toolchains split a component into several core modules (shims,
        // libc, the language runtime); budget generously, it is only metadata.
        .total_core_instances(n.saturating_mul(16))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(16))
        .total_stacks(n)
        // Per-component bounds, so one component cannot take every slot of
        // the pool (and a component beyond them fails at load, not later).
        .max_core_instances_per_component(128)
        .max_memories_per_component(8)
        .max_tables_per_component(256)
        .max_memory_size(usize::try_from(config.max_memory).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(config.memory_keep_resident)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(Enabled::Auto);

    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .cranelift_opt_level(OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    c
}

/// Increments the engine's epoch every tick on a dedicated thread; dropping
/// it stops and joins the thread.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker. Without it no deadline would ever fire, so failing
    /// to start it is an error, never a degraded mode.
    fn spawn(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("verge-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(tick);
                        engine.increment_epoch();
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
