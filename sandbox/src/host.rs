//! [`Host`] and [`HostBuilder`]: load components, run them under a grant.

use crate::bindings::{Agent, AgentPre};
use crate::caps::http::HttpGate;
use crate::caps::wasi::{resolve_grant, wasi_ctx};
use crate::compiled_cache::CompiledCache;
use crate::engine::{EngineOptions, EpochTicker, build_engine};
use crate::events::{DiscardEvents, EventKind, EventSink, LogLevel, MAX_MESSAGE_BYTES, truncate};
use crate::state::{RunContext, RunLimiter, RunState};
use crate::task_link::{Caller, TaskLink};
use crate::{Digest, Error, SkillError, VerifiedPackage};
use coderclaw_core::Grant;
use coderclaw_core::input_schema::{InputSchema, SchemaCache};
use coderclaw_core::units::format_size;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;

/// Configures a [`Host`]. Every setting has a safe default:
///
/// | setting | default |
/// | --- | --- |
/// | [`max_instances`](Self::max_instances) | 64 runs alive at once (pool size) |
/// | [`max_memory`](Self::max_memory) | 1 GiB: no grant may ask for more |
/// | [`max_wasm_stack`](Self::max_wasm_stack) | 1 MiB of wasm stack per run |
/// | [`epoch_tick`](Self::epoch_tick) | 10 ms timeout resolution |
/// | [`hostcall_fuel`](Self::hostcall_fuel) | 16 MiB copied from guest to host per call |
/// | [`max_resources`](Self::max_resources) | 10 000 live WASI handles per run |
/// | [`compiled_cache`](Self::compiled_cache) | none: compile in memory each process |
/// | [`event_sink`](Self::event_sink) | discard events |
/// | [`dangerous_allow_unsigned`](Self::dangerous_allow_unsigned) | off: only [`Host::load_verified`] loads code |
#[derive(Clone)]
pub struct HostBuilder {
    engine: EngineOptions,
    hostcall_fuel: usize,
    max_resources: usize,
    cache_dir: Option<PathBuf>,
    sink: Arc<dyn EventSink>,
    allow_unsigned: bool,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self {
            engine: EngineOptions::default(),
            hostcall_fuel: 16 << 20,
            max_resources: 10_000,
            cache_dir: None,
            sink: Arc::new(DiscardEvents),
            allow_unsigned: false,
        }
    }
}

impl HostBuilder {
    /// How many runs (including agents' nested runs) may be alive at once.
    pub fn max_instances(mut self, n: u32) -> Self {
        self.engine.max_instances = n.max(1);
        self
    }

    /// The most memory any grant may ask for; larger grants are refused.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.engine.max_memory_bytes = bytes;
        self
    }

    /// Wasm stack per run; deeper recursion traps as a stack overflow.
    pub fn max_wasm_stack(mut self, bytes: usize) -> Self {
        self.engine.max_wasm_stack = bytes;
        self
    }

    /// How often timeouts are checked.
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.engine.epoch_tick = tick;
        self
    }

    /// Most bytes a guest may hand the host in one call (strings, lists).
    pub fn hostcall_fuel(mut self, bytes: usize) -> Self {
        self.hostcall_fuel = bytes;
        self
    }

    /// Most WASI resources (files, streams, requests) a run may hold at once.
    pub fn max_resources(mut self, n: usize) -> Self {
        self.max_resources = n;
        self
    }

    /// Keep compiled code in `dir` so the next process need not recompile.
    pub fn compiled_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Where `log`, `progress` and capability events go by default.
    pub fn event_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sink = sink;
        self
    }

    /// **Dangerous.** Lets [`Host::load_file`] and [`Host::load_bytes`] load
    /// components that carry no signature, skipping the check of who wrote
    /// them. For skill development and tests only; every such load is
    /// logged at warn level.
    pub fn dangerous_allow_unsigned(mut self) -> Self {
        self.allow_unsigned = true;
        self
    }

    /// Builds the engine, the linker and the epoch ticker.
    pub fn build(self) -> Result<Host, Error> {
        let engine = build_engine(&self.engine)?;
        let mut linker: Linker<RunState> = Linker::new(&engine);
        let setup = |e: wasmtime::Error| Error::Setup(format!("cannot link host interfaces: {e}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(setup)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(setup)?;
        Agent::add_to_linker::<RunState, HasSelf<RunState>>(&mut linker, |s| s).map_err(setup)?;
        let cache = match &self.cache_dir {
            Some(dir) => Some(CompiledCache::open(dir, &engine).map_err(|e| {
                Error::Setup(format!("cannot create the compiled-code cache at {}: {e}", dir.display()))
            })?),
            None => None,
        };
        let ticker = EpochTicker::start(engine.clone(), self.engine.epoch_tick)?;
        Ok(Host {
            inner: Arc::new(HostInner {
                engine,
                linker,
                cache,
                opts: self,
                loaded: Mutex::new(HashMap::new()),
                registry: RwLock::new(HashMap::new()),
                schemas: SchemaCache::default(),
                stats: Stats::default(),
                _ticker: ticker,
            }),
        })
    }
}

/// The embeddable skill host. Cheap to clone; share one per process.
///
/// ```no_run
/// # async fn demo() -> Result<(), coderclaw_sandbox::Error> {
/// use coderclaw_sandbox::{Access, Grant, Host};
/// let host = Host::builder().compiled_cache("/tmp/coderclaw-cache").build()?;
/// let skill = host.load_file("word_count.wasm")?;
/// let grant = Grant::builder().dir(".", ".", Access::Read).build().unwrap();
/// let output = host.run(&skill, r#"{"path": "."}"#, &grant).await?;
/// println!("{output}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    engine: Engine,
    linker: Linker<RunState>,
    cache: Option<CompiledCache>,
    opts: HostBuilder,
    /// Compiled and linked components by digest: compile once per process.
    loaded: Mutex<HashMap<Digest, Skill>>,
    /// Skills agents may invoke, by id, with the grant each runs under.
    registry: RwLock<HashMap<String, (Skill, Arc<Authorize>)>>,
    /// Input schemas compiled once per process.
    schemas: SchemaCache,
    stats: Stats,
    _ticker: EpochTicker,
}

#[derive(Default)]
struct Stats {
    compiled: AtomicU64,
    disk_cache_hits: AtomicU64,
    memory_cache_hits: AtomicU64,
}

/// Counters of how components were obtained; lets tests and users see that
/// the compiled-code cache works without timing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HostStats {
    /// Components compiled from wasm by this host.
    pub compiled: u64,
    /// Components loaded from the on-disk compiled-code cache.
    pub disk_cache_hits: u64,
    /// Loads answered by the in-process cache.
    pub memory_cache_hits: u64,
}

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadSource {
    /// Compiled now.
    Compiled,
    /// Read from the on-disk compiled-code cache.
    DiskCache,
    /// Already loaded in this process.
    Memory,
}

/// A loaded, linked component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Skill {
    name: Arc<str>,
    digest: Digest,
    source: LoadSource,
    pre: AgentPre<RunState>,
    /// The package's signed input schema, checked before every run; `None`
    /// for code loaded without a manifest (unsigned development runs).
    input_schema: Option<Arc<Result<InputSchema, String>>>,
}

impl Skill {
    /// The name it was loaded under (file name or the name given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the component bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Where this handle's machine code came from.
    pub fn source(&self) -> LoadSource {
        self.source
    }
}

impl std::fmt::Debug for Skill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Skill").field("name", &self.name).field("digest", &self.digest).finish()
    }
}

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Bytes 4..8 of a core module (version 1); components use another layer.
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

impl Host {
    /// A builder with the defaults listed on [`HostBuilder`].
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// Loads a package that [`coderclaw_core::package::Package::verify`]
    /// accepted: the signature was checked against the trust store before
    /// this point, and the compiled-code cache is keyed by the verified
    /// component digest. The skill is named by its manifest id.
    pub fn load_verified(&self, package: &VerifiedPackage) -> Result<Skill, Error> {
        let skill =
            self.load_checked(package.manifest().id.as_str(), package.component(), package.component_digest())?;
        Ok(self.with_schema_of(skill, package))
    }

    /// The compiled skill for `package` if this host holds it in memory
    /// already (so nothing is read or compiled, and nothing blocks);
    /// `None` otherwise: call [`Host::load_verified`].
    pub fn loaded(&self, package: &VerifiedPackage) -> Option<Skill> {
        let skill = self.in_memory(package.manifest().id.as_str(), &package.component_digest())?;
        Some(self.with_schema_of(skill, package))
    }

    /// `skill` checking its input against `package`'s signed schema. Set per
    /// package, not kept with the compiled code: two packages may share a
    /// component and differ in their schemas.
    fn with_schema_of(&self, skill: Skill, package: &VerifiedPackage) -> Skill {
        // Keyed by the package digest, which covers the manifest: the
        // schema is not serialised again for every run.
        let schema = self.inner.schemas.get_keyed(package.digest().to_hex(), &package.manifest().input_schema);
        Skill { input_schema: Some(schema), ..skill }
    }

    fn in_memory(&self, name: &str, digest: &Digest) -> Option<Skill> {
        let inner = &self.inner;
        let skill = inner.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned()?;
        inner.stats.memory_cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(Skill { name: name.into(), source: LoadSource::Memory, ..skill })
    }

    /// Loads an unsigned component file. Refused unless the builder called
    /// [`HostBuilder::dangerous_allow_unsigned`] (see [`Host::load_bytes`]).
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Skill, Error> {
        let path = path.as_ref();
        let name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        // Refuse before reading: an unsigned file is never even opened.
        self.unsigned_door(&name)?;
        let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        self.load_checked(&name, &bytes, Digest::of(&bytes))
    }

    /// Loads unsigned component bytes. Refused with
    /// [`Error::UnsignedRefused`] unless the builder called
    /// [`HostBuilder::dangerous_allow_unsigned`]; otherwise as
    /// [`Host::load_verified`].
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Skill, Error> {
        self.unsigned_door(name)?;
        self.load_checked(name, bytes, Digest::of(bytes))
    }

    /// The one check in front of every unsigned load; each load it lets
    /// through is logged at warn level.
    fn unsigned_door(&self, name: &str) -> Result<(), Error> {
        if !self.inner.opts.allow_unsigned {
            return Err(Error::UnsignedRefused { name: name.to_owned() });
        }
        tracing::warn!(skill = name, "loading an UNSIGNED component (dangerous_allow_unsigned)");
        Ok(())
    }

    /// Loads a component whose `digest` the caller computed: from this
    /// process's cache, else from the on-disk compiled-code cache (keyed by
    /// that digest), else by compiling it (and filling the disk cache).
    /// Checks that it fits the coderclaw contract before returning.
    fn load_checked(&self, name: &str, bytes: &[u8], digest: Digest) -> Result<Skill, Error> {
        let span = tracing::info_span!("load", skill = name, digest = %digest);
        let _enter = span.enter();
        if let Some(skill) = self.in_memory(name, &digest) {
            return Ok(skill);
        }
        let inner = &self.inner;
        check_header(name, bytes)?;
        let cached = inner.cache.as_ref().and_then(|c| c.load(&inner.engine, &digest));
        let (component, source) = match cached {
            Some(c) => {
                inner.stats.disk_cache_hits.fetch_add(1, Ordering::Relaxed);
                (c, LoadSource::DiskCache)
            }
            None => {
                let c = Component::new(&inner.engine, bytes)
                    .map_err(|e| Error::Compile { name: name.to_owned(), message: format!("{e:#}") })?;
                inner.stats.compiled.fetch_add(1, Ordering::Relaxed);
                if let Some(cache) = &inner.cache
                    && let Err(e) = cache.store(&digest, &c)
                {
                    tracing::warn!(error = %e, "compiled code not cached");
                }
                (c, LoadSource::Compiled)
            }
        };
        let contract = |e: wasmtime::Error| Error::Contract { name: name.to_owned(), message: format!("{e:#}") };
        let pre = inner.linker.instantiate_pre(&component).map_err(contract)?;
        let pre = AgentPre::new(pre).map_err(contract)?;
        let skill = Skill { name: name.into(), digest, source, pre, input_schema: None };
        inner.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, skill.clone());
        tracing::debug!(?source, "loaded");
        Ok(skill)
    }

    /// Makes `skill` invocable by agents as `id`, running under `grant`
    /// narrowed to the calling agent's grant. Replaces an earlier entry.
    pub fn register(&self, id: impl Into<String>, skill: Skill, grant: Grant) {
        self.register_authorized(id, skill, move |_caller: &Caller<'_>| Ok(grant.clone()));
    }

    /// Makes `skill` invocable by agents as `id`, deciding its grant at
    /// every invocation: `authorize(caller)` (the calling agent, and its task
    /// and session when it runs as a task) returns the grant (then
    /// narrowed to the agent's) or the reasons for a refusal. This is how a
    /// policy-aware embedder (the CLI) puts nested calls through the
    /// decision function. It may block (e.g. to write an audit record): it
    /// runs on tokio's blocking pool.
    pub fn register_authorized(
        &self,
        id: impl Into<String>,
        skill: Skill,
        authorize: impl Fn(&Caller<'_>) -> Result<Grant, String> + Send + Sync + 'static,
    ) {
        let entry = (skill, Arc::new(authorize) as Arc<Authorize>);
        self.inner.registry.write().unwrap_or_else(|p| p.into_inner()).insert(id.into(), entry);
    }

    /// Runs `skill` on JSON `input` under `grant`, sending events to the
    /// builder's sink. Returns the skill's JSON output.
    pub async fn run(&self, skill: &Skill, input: &str, grant: &Grant) -> Result<String, Error> {
        let sink = self.inner.opts.sink.clone();
        self.run_with_events(skill, input, grant, sink).await
    }

    /// Like [`Host::run`], sending this run's events to `sink`.
    pub async fn run_with_events(
        &self,
        skill: &Skill,
        input: &str,
        grant: &Grant,
        sink: Arc<dyn EventSink>,
    ) -> Result<String, Error> {
        let grant = resolve_grant(grant)?;
        let timeout = grant.limits().timeout;
        let env = RunEnv { sink, task: None };
        self.inner.clone().run_nested(skill.clone(), input.to_owned(), grant, env, 0, timeout).await
    }

    /// Like [`Host::run_with_events`], for a run that is a task: the guest
    /// can ask for input and use the session's memory through `task`.
    pub async fn run_for_task(
        &self,
        skill: &Skill,
        input: &str,
        grant: &Grant,
        sink: Arc<dyn EventSink>,
        task: TaskLink,
    ) -> Result<String, Error> {
        let grant = resolve_grant(grant)?;
        let timeout = grant.limits().timeout;
        let env = RunEnv { sink, task: Some(task) };
        self.inner.clone().run_nested(skill.clone(), input.to_owned(), grant, env, 0, timeout).await
    }

    /// How components were obtained so far.
    pub fn stats(&self) -> HostStats {
        let s = &self.inner.stats;
        HostStats {
            compiled: s.compiled.load(Ordering::Relaxed),
            disk_cache_hits: s.disk_cache_hits.load(Ordering::Relaxed),
            memory_cache_hits: s.memory_cache_hits.load(Ordering::Relaxed),
        }
    }

    /// The wasmtime engine, for embedders that need it (e.g. to precompile).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

impl Host {
    /// Cheap check that `bytes` look like a WebAssembly component (not a
    /// core module, not another file), without compiling anything. Used
    /// before signing so nobody signs the wrong file.
    pub fn check_component(name: &str, bytes: &[u8]) -> Result<(), Error> {
        check_header(name, bytes)
    }
}

fn check_header(name: &str, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        return Err(Error::NotWasm { name: name.to_owned() });
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        return Err(Error::NotAComponent { name: name.to_owned() });
    }
    Ok(())
}

/// Decides a nested skill's grant for its caller, or refuses with the
/// reasons.
pub(crate) type Authorize = dyn Fn(&Caller<'_>) -> Result<Grant, String> + Send + Sync;

/// Inputs up to this size are checked on the caller's thread; larger ones
/// on the blocking pool, within the run's time limit.
const INLINE_CHECK_BYTES: usize = 64 << 10;

/// [`check_input`], bounded by the run's `timeout`: a large input against
/// a schema of many patterns is a CPU cost the submitter chooses.
async fn checked_in_time(skill: &Skill, input: &str, timeout: Duration) -> Result<(), Error> {
    if skill.input_schema.is_none() || input.len() <= INLINE_CHECK_BYTES {
        return check_input(skill, input);
    }
    let (owned, text) = (skill.clone(), input.to_owned());
    let check = tokio::task::spawn_blocking(move || check_input(&owned, &text));
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(Error::Setup(format!("checking the input: {e}"))),
        Err(_) => Err(Error::Timeout { name: skill.name.to_string(), timeout }),
    }
}

/// Refuses `input` unless it matches `skill`'s signed input schema: the
/// guest never sees an input its publisher declared it does not take.
fn check_input(skill: &Skill, input: &str) -> Result<(), Error> {
    let Some(schema) = &skill.input_schema else { return Ok(()) };
    let refused = |reason: String, problems| Error::InputRefused { name: skill.name.to_string(), reason, problems };
    match schema.as_ref() {
        Ok(schema) => schema.check_text(input).map_err(|m| refused(m.to_string(), m.0)),
        Err(e) => Err(refused(
            format!(
                "its signed input schema is not one this host can use ({e}); ask its publisher for a fixed package"
            ),
            Vec::new(),
        )),
    }
}

/// Where a run's events go and the task it belongs to, if any.
#[derive(Clone)]
pub(crate) struct RunEnv {
    pub sink: Arc<dyn EventSink>,
    pub task: Option<TaskLink>,
}

impl HostInner {
    pub(crate) fn registered(&self, id: &str) -> Option<(Skill, Arc<Authorize>)> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Runs one invocation. `grant` has canonical directories; `timeout`
    /// bounds this run on top of the grant's (an agent's remaining time).
    pub(crate) async fn run_nested(
        self: Arc<Self>,
        skill: Skill,
        input: String,
        grant: Grant,
        env: RunEnv,
        depth: u32,
        timeout: Duration,
    ) -> Result<String, Error> {
        let span = tracing::info_span!("run", skill = %skill.name, depth);
        async move {
            let limits = *grant.limits();
            if limits.memory_bytes > self.opts.engine.max_memory_bytes {
                return Err(Error::AboveHostMaximum {
                    what: "memory",
                    asked: format_size(limits.memory_bytes),
                    max: format_size(self.opts.engine.max_memory_bytes),
                });
            }
            let timeout = limits.timeout.min(timeout);
            checked_in_time(&skill, &input, timeout).await?;
            let wasi = wasi_ctx(&grant)?;
            let ctx = Arc::new(RunContext {
                name: skill.name.clone(),
                depth,
                grant,
                dirs: wasi.dirs,
                sink: env.sink,
                task: env.task,
                host: self.clone(),
                deadline: Instant::now() + timeout,
            });
            let events = ctx.clone();
            let mut store = self.store(ctx, wasi.ctx, limits.memory_bytes, Instant::now() + timeout);

            // The epoch deadline stops guest code that never yields; this
            // timer stops a guest that waits in a host call (HTTP, shell).
            let call = async {
                let instance =
                    skill.pre.instantiate_async(&mut store).instrument(tracing::debug_span!("instantiate")).await?;
                instance.call_run(&mut store, &input).instrument(tracing::debug_span!("call")).await
            };
            let outcome = tokio::time::timeout(timeout, call).await;
            let name = skill.name.to_string();
            forward_output(&events, "stdout", wasi.stdout.contents(), LogLevel::Info);
            let stderr = forward_output(&events, "stderr", wasi.stderr.contents(), LogLevel::Warn);
            match outcome {
                Err(_) => Err(Error::Timeout { name, timeout }),
                Ok(Err(e)) => {
                    let refused = store.data().limiter.memory_refused;
                    Err(classify_trap(e, &name, timeout, refused, limits.memory_bytes, &stderr))
                }
                Ok(Ok(Err(e))) => Err(Error::Skill { name, error: SkillError::from(e) }),
                Ok(Ok(Ok(output))) => Ok(output),
            }
        }
        .instrument(span)
        .await
    }

    /// A store for one run: its WASI context and capabilities, the memory
    /// limiter, hostcall fuel, and the epoch deadline.
    fn store(&self, ctx: Arc<RunContext>, wasi: WasiCtx, memory_bytes: u64, deadline: Instant) -> Store<RunState> {
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.opts.max_resources);
        let state = RunState {
            wasi,
            http: WasiHttpCtx::new(),
            http_gate: HttpGate { ctx: ctx.clone() },
            table,
            limiter: RunLimiter {
                memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
                memory_refused: false,
            },
            ctx,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.opts.hostcall_fuel);
        // Every epoch tick the guest yields to tokio: a guest in a tight
        // loop can then be cancelled by dropping its future (the task
        // engine's cancel), and past its deadline it traps.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        store
    }
}

/// Guest stdout/stderr become log events, one per line (at most
/// [`MAX_OUTPUT_LINES`]), so `println!` debugging and panic messages show up.
/// Turns captured guest output into log events (and says how much was
/// dropped over the cap); returns the kept bytes.
fn forward_output(ctx: &RunContext, stream: &str, (bytes, dropped): (Vec<u8>, u64), level: LogLevel) -> Vec<u8> {
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(MAX_OUTPUT_LINES) {
        ctx.emit(EventKind::Log { level, message: truncate(line.to_owned(), MAX_MESSAGE_BYTES) });
    }
    if dropped > 0 {
        let message = format!("guest {stream} over {} bytes: {dropped} more bytes dropped", bytes.len());
        ctx.emit(EventKind::Log { level: LogLevel::Warn, message });
    }
    bytes
}

const MAX_OUTPUT_LINES: usize = 200;
/// How much of the guest's stderr a crash error quotes.
const STDERR_TAIL_BYTES: usize = 2048;

fn classify_trap(
    e: wasmtime::Error,
    name: &str,
    timeout: Duration,
    memory_refused: bool,
    limit: u64,
    stderr: &[u8],
) -> Error {
    let name = name.to_owned();
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return Error::Busy;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Error::Timeout { name, timeout },
        Some(Trap::StackOverflow) => Error::StackOverflow { name },
        _ if memory_refused => Error::MemoryLimit { name, limit },
        _ => {
            // The guest's own last words (e.g. a panic message) come first.
            let trap = format!("{e:?}");
            let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(STDERR_TAIL_BYTES)..]);
            let message = if tail.trim().is_empty() { trap } else { format!("{}\n{trap}", tail.trim_end()) };
            Error::Trap { name, message }
        }
    }
}

impl From<crate::bindings::coderclaw::skill::types::SkillError> for SkillError {
    fn from(e: crate::bindings::coderclaw::skill::types::SkillError) -> Self {
        use crate::bindings::coderclaw::skill::types::SkillError as W;
        match e {
            W::InvalidInput(m) => SkillError::InvalidInput(m),
            W::Denied(m) => SkillError::Denied(m),
            W::Failed(m) => SkillError::Failed(m),
        }
    }
}
