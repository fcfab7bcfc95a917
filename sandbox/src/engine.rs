//! The one shared wasmtime `Engine` and its epoch ticker.

use crate::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The largest linear memory a grant may ask for unless the embedder sets
/// another maximum on the [`crate::HostBuilder`].
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 1 << 30;

/// Engine tuning, set through [`crate::HostBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct EngineOptions {
    /// Runs (component instances) alive at the same time.
    pub max_instances: u32,
    /// Largest linear memory any grant may ask for.
    pub max_memory_bytes: u64,
    /// Wasm stack available to guest code; deeper recursion traps.
    pub max_wasm_stack: usize,
    /// How often the epoch advances: the resolution of timeouts.
    pub epoch_tick: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_instances: 64,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_wasm_stack: 1 << 20,
            epoch_tick: Duration::from_millis(10),
        }
    }
}

/// Core instances, memories and tables one coderclaw component uses at most.
/// A Rust wasm32-wasip2 component is the program module plus a few small
/// adapter/shim modules; these leave headroom.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Linear memory kept resident (reset with memset, not madvise) between
/// reuses of a pool slot: enough for a small skill's stack and heap.
const KEEP_RESIDENT_BYTES: usize = 128 << 10;

pub(crate) fn build_engine(opts: &EngineOptions) -> Result<Engine, Error> {
    let mut pool = PoolingAllocationConfig::new();
    let n = opts.max_instances;
    pool.total_component_instances(n)
        .total_core_instances(n * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(n * MEMORIES_PER_COMPONENT)
        .total_tables(n * TABLES_PER_COMPONENT)
        .total_stacks(n)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memory_size(
            usize::try_from(opts.max_memory_bytes).map_err(|_| Error::Setup("memory maximum too large".into()))?,
        )
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // Component-model async (p3) is not part of our contract; keeping it
        // off removes its per-call bookkeeping.
        .concurrency_support(false)
        .epoch_interruption(true)
        .max_wasm_stack(opts.max_wasm_stack)
        // Host calls run on the fiber too: leave room above the wasm stack.
        .async_stack_size(opts.max_wasm_stack + (1 << 20))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| Error::Setup(format!("cannot configure the wasm engine: {e}")))
}

/// Advances the engine's epoch every tick on a background thread, so epoch
/// deadlines turn into timeouts. Stops when dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("coderclaw-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Setup(format!("cannot start the epoch ticker thread: {e}")))?;
        Ok(Self { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
