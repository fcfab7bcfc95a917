//! Invocation benchmark for the `echo` skill: prints figures; asserts only that its setup is what the figures claim.
//!
//! `cargo bench -p coderclaw-e2e --bench invoke [-- ITERATIONS]`
//!
//! Measures, for coderclaw's host and for bare wasmtime with the same
//! pooling allocator (the floor: no epoch interruption, resource limiter
//! or stack settings, so the gap includes what those safety checks cost):
//! cold compile, load from the compiled-code cache,
//! instantiate + call + drop per invocation (p50/p99, one thread and two),
//! and a warm call on a live instance (bare wasmtime only: the host gives
//! every run a fresh instance by design, so it has no warm call).

use coderclaw::{Grant, Host};
use coderclaw_e2e::guest;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod floor {
    wasmtime::component::bindgen!({
        world: "agent",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

const INPUT: &str = r#"{"hello":"world"}"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<58} p50 {:>9.2?}  p99 {:>9.2?}  (n={})",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.len()
    );
}

struct FloorState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for FloorState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl floor::coderclaw::skill::types::Host for FloorState {}
impl floor::coderclaw::skill::host::Host for FloorState {
    async fn log(&mut self, _: floor::coderclaw::skill::host::LogLevel, _: String) {}
    async fn progress(&mut self, _: f32, _: String) {}
    async fn request_input(&mut self, _: String) -> Result<String, String> {
        Err("floor".into())
    }
}
impl floor::coderclaw::skill::memory::Host for FloorState {
    async fn get(&mut self, _: String) -> Result<Option<String>, floor::coderclaw::skill::memory::MemoryError> {
        Err(floor::coderclaw::skill::memory::MemoryError::Denied("floor".into()))
    }
    async fn set(&mut self, _: String, _: String) -> Result<(), floor::coderclaw::skill::memory::MemoryError> {
        Err(floor::coderclaw::skill::memory::MemoryError::Denied("floor".into()))
    }
    async fn delete(&mut self, _: String) -> Result<bool, floor::coderclaw::skill::memory::MemoryError> {
        Err(floor::coderclaw::skill::memory::MemoryError::Denied("floor".into()))
    }
}
impl floor::coderclaw::skill::shell::Host for FloorState {
    async fn exec(
        &mut self,
        _: floor::coderclaw::skill::shell::Command,
    ) -> Result<floor::coderclaw::skill::shell::Output, floor::coderclaw::skill::shell::ShellError> {
        Err(floor::coderclaw::skill::shell::ShellError::Denied("floor".into()))
    }
}
impl floor::coderclaw::skill::skills::Host for FloorState {
    async fn invoke(&mut self, _: String, _: String) -> Result<String, floor::coderclaw::skill::types::SkillError> {
        Err(floor::coderclaw::skill::types::SkillError::Denied("floor".into()))
    }
}

/// The tuned bare-wasmtime configuration: pooling allocator with
/// pagemap_scan and a small keep-resident, concurrency support off.
fn floor_engine() -> Engine {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(64)
        .total_core_instances(64 * 16)
        .total_memories(128)
        .total_tables(256)
        .total_stacks(64)
        .max_memory_size(1 << 30)
        .linear_memory_keep_resident(128 << 10)
        .table_keep_resident(128 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config.concurrency_support(false).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).expect("floor engine")
}

fn time_n(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn main() {
    let iterations: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let wasm = std::fs::read(guest("echo")).expect("echo component");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("echo component: {} bytes, {iterations} invocations per figure\n", wasm.len());

    // --- coderclaw host ---
    let compile = time_n(5, || {
        let host = Host::builder().dangerous_allow_unsigned().build().unwrap();
        host.load_bytes("echo", &wasm).unwrap();
    });
    report("coderclaw: cold compile (host build + compile)", compile);

    let cache = tempfile::tempdir().unwrap();
    Host::builder()
        .compiled_cache(cache.path())
        .dangerous_allow_unsigned()
        .build()
        .unwrap()
        .load_bytes("echo", &wasm)
        .unwrap();
    let hosts: Vec<Host> = (0..20)
        .map(|_| Host::builder().compiled_cache(cache.path()).dangerous_allow_unsigned().build().unwrap())
        .collect();
    let mut hosts = hosts.into_iter();
    let cached = time_n(20, || {
        let host = hosts.next().unwrap();
        let skill = host.load_bytes("echo", &wasm).unwrap();
        assert_eq!(skill.source(), coderclaw::LoadSource::DiskCache);
    });
    report("coderclaw: load from compiled-code cache", cached);

    let host = Host::builder().dangerous_allow_unsigned().build().unwrap();
    let skill = host.load_bytes("echo", &wasm).unwrap();
    let grant = Grant::deny_all();
    let one = rt.block_on(async {
        for _ in 0..1000 {
            host.run(&skill, INPUT, &grant).await.unwrap();
        }
        let mut v = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            host.run(&skill, INPUT, &grant).await.unwrap();
            v.push(t.elapsed());
        }
        v
    });
    report("coderclaw: instantiate+call+drop, 1 thread", one);

    let make_host_call = || {
        let (host, skill) = (host.clone(), skill.clone());
        Box::new(move |rt: &tokio::runtime::Runtime| {
            rt.block_on(async {
                let t = Instant::now();
                host.run(&skill, INPUT, &Grant::deny_all()).await.unwrap();
                t.elapsed()
            })
        }) as Call
    };
    on_threads(1, iterations, "coderclaw: throughput", make_host_call);
    let two = on_threads(2, iterations, "coderclaw: throughput", make_host_call);
    report("coderclaw: instantiate+call+drop, 2 threads (per call)", two);

    // --- bare wasmtime, same tuning ---
    let engine = floor_engine();
    let t = Instant::now();
    let component = Component::new(&engine, &wasm).unwrap();
    println!("{:<58} {:>13.2?}", "bare wasmtime: cold compile", t.elapsed());
    let mut linker: Linker<FloorState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    floor::Agent::add_to_linker::<FloorState, HasSelf<FloorState>>(&mut linker, |s| s).unwrap();
    let pre = Arc::new(floor::AgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap());
    let new_store = |engine: &Engine| {
        Store::new(engine, FloorState { wasi: WasiCtx::builder().build(), table: ResourceTable::new() })
    };

    let floor_one = rt.block_on(async {
        let mut v = Vec::with_capacity(iterations);
        for i in 0..iterations + 1000 {
            let t = Instant::now();
            let mut store = new_store(&engine);
            let inst = pre.instantiate_async(&mut store).await.unwrap();
            inst.call_run(&mut store, INPUT).await.unwrap().unwrap();
            drop(store);
            if i >= 1000 {
                v.push(t.elapsed());
            }
        }
        v
    });
    report("bare wasmtime: instantiate+call+drop, 1 thread", floor_one);

    let make_floor_call = || {
        let (pre, engine) = (pre.clone(), engine.clone());
        Box::new(move |rt: &tokio::runtime::Runtime| {
            rt.block_on(async {
                let t = Instant::now();
                let mut store = new_store(&engine);
                let inst = pre.instantiate_async(&mut store).await.unwrap();
                inst.call_run(&mut store, INPUT).await.unwrap().unwrap();
                drop(store);
                t.elapsed()
            })
        }) as Call
    };
    on_threads(1, iterations, "bare wasmtime: throughput", make_floor_call);
    let floor_two = on_threads(2, iterations, "bare wasmtime: throughput", make_floor_call);
    report("bare wasmtime: instantiate+call+drop, 2 threads (per call)", floor_two);

    let warm = rt.block_on(async {
        let mut store = new_store(&engine);
        let inst = pre.instantiate_async(&mut store).await.unwrap();
        let mut v = Vec::with_capacity(iterations);
        for i in 0..iterations + 1000 {
            let t = Instant::now();
            // The generated binding runs post-return, so the same instance
            // can be called again.
            inst.call_run(&mut store, INPUT).await.unwrap().unwrap();
            if i >= 1000 {
                v.push(t.elapsed());
            }
        }
        v
    });
    report("bare wasmtime: warm call on a live instance", warm);
}

type Call = Box<dyn FnMut(&tokio::runtime::Runtime) -> Duration + Send>;

/// Runs `iterations` calls on each of `threads` threads at once (each with
/// its own current-thread runtime), prints the aggregate throughput and
/// returns every call's latency.
fn on_threads(threads: usize, iterations: usize, label: &str, make: impl Fn() -> Call) -> Vec<Duration> {
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut call = make();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                for _ in 0..1000 {
                    call(&rt);
                }
                barrier.wait();
                (0..iterations).map(|_| call(&rt)).collect::<Vec<_>>()
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let samples: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    println!("{label:<58} {rate:>10.0} calls/s on {threads} thread(s)");
    samples
}
