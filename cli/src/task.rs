//! `coderclaw serve`, `coderclaw task …` and `coderclaw status`: the task
//! engine in this process (the local transport) or on a server (--remote).

use crate::grant_args::HOST_MAX;
use crate::home;
use crate::output::print_json;
use anyhow::{Context, Result, bail};
use coderclaw::security::Security;
use coderclaw::tasks::grpc::server::{GrpcConfig, serve as serve_grpc};
use coderclaw::tasks::http_server::{ServerConfig, serve};
use coderclaw::tasks::mcp::http::McpHttpConfig;
use coderclaw::tasks::{
    CoderClawRuntime, EngineConfig, LocalTransport, MAX_EVENTS_PAGE, RunUpdate, RuntimeError, Transport,
};
use coderclaw::{LocalRuntime, OpenError};
use coderclaw_core::Access;
use coderclaw_core::decision::{Offer, OfferedDir};
use coderclaw_core::fsutil::{FinalLink, MAX_CONFIG_BYTES, read_text_bounded};
use coderclaw_core::runtime_config::{RuntimeConfig, RuntimeFile, RuntimeFlags};
use coderclaw_core::task::{
    FailureCode, RuntimeMode, TaskEventKind, TaskFilter, TaskState, TaskStatus, TaskSubmitRequest, TaskUpdateEvent,
    WorkspaceRef,
};
use futures_util::StreamExt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Where the task commands send their calls.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Target {
    /// Talk to the `coderclaw serve` at URL instead of running the engine
    /// in this process: http(s)://HOST:PORT (REST + SSE), ws(s)://HOST:PORT
    /// (WebSocket) or grpc(s)://HOST:PORT (gRPC, with serve --grpc-listen).
    /// Env CODERCLAW_REMOTE, or transport.url in
    /// $CODERCLAW_HOME/runtime.yaml; a repository's may not set it.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// Session token for --remote (default: the global --session).
    #[arg(long, value_name = "TOKEN", env = "CODERCLAW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for an https, wss or grpcs --remote.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The workspace local tasks run in (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Submit, follow, cancel and answer tasks.
///
/// Without --remote the task engine runs in this process on the state
/// directory ($CODERCLAW_HOME/tasks.db): a local `task submit` runs the
/// task to its end before returning. While `coderclaw serve` runs on the
/// same state directory, use --remote (or CODERCLAW_REMOTE) instead.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    Submit(SubmitArgs),
    /// Print a task's state.
    Status {
        /// Task id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stream a task's updates until it finishes; exit 0 only on COMPLETED.
    Watch {
        /// Task id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel a task: the guest is interrupted, shell children killed.
    /// Exits 1 (saying how it ended) when the task had already finished.
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// List tasks (your session's; all with admin:all and --session).
    List {
        /// Only tasks with this status (PENDING, RUNNING, …).
        #[arg(long)]
        status: Option<String>,
        /// Only this session's tasks (admin:all for other sessions).
        #[arg(long = "of-session", value_name = "SESSION_ID")]
        of_session: Option<String>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Print a task's history.
    Events {
        /// Task id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Answer a WAITING task's input request.
    Respond {
        /// Task id.
        id: String,
        /// The answer (passed to the skill as is; not recorded in the task history).
        answer: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Submit a task.
///
/// Exit codes with --wait (or a local run): 0 COMPLETED, 3 FAILED,
/// 4 CANCELLED, 1 could not submit.
///
/// Example (CI):
///   coderclaw task submit --skill team/security-scanner --input '{"path": "."}' --wait \
///     --remote https://coderclaw.internal:7420 --token "$CODERCLAW_TOKEN"
#[derive(clap::Args, Debug)]
pub(crate) struct SubmitArgs {
    /// Run this installed skill.
    #[arg(long, conflicts_with = "agent", required_unless_present = "agent")]
    pub skill: Option<String>,
    /// Run this installed agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Input JSON (default `{}`), `@FILE` to read it from a file, or `-`
    /// to read it from stdin.
    #[arg(long, value_name = "JSON|@FILE|-")]
    pub input: Option<String>,
    /// What the task is for.
    #[arg(long, default_value = "")]
    pub description: String,
    /// A label KEY=VALUE kept with the task (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Follow the task to its end, with live progress; exit 0 only on COMPLETED.
    /// Interrupted (Ctrl-C, or SIGTERM as when a CI job is cancelled), the
    /// task is given up: cancelled, audited as task.abandon (no task:cancel
    /// needed for the session's own task); exit 130 or 143.
    #[arg(long)]
    pub wait: bool,
    /// With --wait against a server: when interrupted, leave the task running
    /// and say how to follow it.
    #[arg(long, requires = "wait")]
    pub detach: bool,
    /// With --remote: run in this workspace of the server (one of
    /// `workspaces:` in its config.yaml that your roles may use). Without it
    /// or --workspace-upload a remote task runs in the directory the server
    /// was started in, never in your checkout.
    #[arg(long, value_name = "NAME")]
    pub server_workspace: Option<String>,
    /// With --remote: send a snapshot of the workspace (--workspace DIR, or
    /// the current directory) and run the task on it: what git would track
    /// (.gitignore honoured, .git and symbolic links left out), read-only,
    /// deleted on the server when the task ends.
    #[arg(long, conflicts_with = "server_workspace")]
    pub workspace_upload: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Largest snapshot this client builds; the server's own limit
/// (uploads.maxBytes) is usually lower and it says so.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// Run the task engine and serve the HTTP API (REST + Server-Sent Events),
/// WebSocket (/v1/ws), MCP (Streamable HTTP at /mcp, for AI agents on other
/// machines) and, with --grpc-listen, gRPC.
///
/// Every call needs a session token (`coderclaw login`), in every mode.
/// local-only (the default) binds loopback only and refuses remote peers;
/// remote-enabled accepts them; distributed-cluster is remote-enabled as
/// one node of a cluster whose nodes share a PostgreSQL database
/// (cluster.database or CODERCLAW_CLUSTER_DATABASE; see docs/cluster.md).
/// SIGTERM or SIGINT stops it cleanly (deployment.shutdownGrace). Edits to
/// config.yaml (roles, registries, identity) and the policy files take
/// effect at the next request, without a restart; a broken edit keeps the
/// last good version. Each change is logged on stderr as it is seen (at
/// most a second later, or at once on SIGHUP). Configuration
/// layers: flags > env > .coderClaw/runtime.yaml > $CODERCLAW_HOME/runtime.yaml.
/// The API is described at /v1/openapi.json.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:7420).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// One line per HTTP request on stderr (method, route, status, latency,
    /// user; never tokens or query strings). Default: on, except in
    /// local-only mode.
    #[arg(long, overrides_with = "no_access_log")]
    pub access_log: bool,
    /// No access log, whatever the mode.
    #[arg(long)]
    pub no_access_log: bool,
    /// local-only, remote-enabled or distributed-cluster (one node of a
    /// cluster sharing the PostgreSQL database in cluster.database or
    /// CODERCLAW_CLUSTER_DATABASE).
    #[arg(long)]
    pub mode: Option<String>,
    /// This node's name in a distributed cluster (default: cluster.node,
    /// CODERCLAW_NODE, or the host name). Unique among running nodes.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Tasks running at once (default 10; per node in a cluster).
    #[arg(long)]
    pub max_concurrent_tasks: Option<u32>,
    /// PEM certificate chain: serve https (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The workspace tasks run in (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Let tasks write the workspace (default read-only).
    #[arg(long)]
    pub workspace_write: bool,
    /// Also accept this Host at /mcp (NAME or NAME:PORT; repeatable): the
    /// name remote MCP clients reach this server by. Loopback names and the
    /// listen address are always accepted; other Hosts are refused (DNS
    /// rebinding).
    #[arg(long = "mcp-allowed-host", value_name = "HOST")]
    pub mcp_allowed_hosts: Vec<String>,
    /// Also accept requests at /mcp from web pages of this origin
    /// (SCHEME://HOST:PORT, or :* for any port; repeatable). By default
    /// only this server's own origins; requests without Origin (not from a
    /// browser) always pass.
    #[arg(long = "mcp-allowed-origin", value_name = "ORIGIN")]
    pub mcp_allowed_origins: Vec<String>,
    /// Also serve gRPC on ADDR (e.g. 127.0.0.1:7421): coderclaw.v1.Runtime
    /// (transport/proto/coderclaw/v1/runtime.proto) with the standard
    /// health and reflection services; TLS with --tls-cert/--tls-key as for
    /// HTTP. Clients use --remote grpc://ADDR (grpcs:// with TLS).
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<String>,
}

/// Print the runtime's status: version, uptime, tasks, mode, health, and
/// organisation-required skills that are missing.
#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
}

fn config(flags: &RuntimeFlags, workspace: &Path) -> Result<RuntimeConfig> {
    resolve_config(flags, Some(workspace))
}

/// The cluster database this machine is a node of (mode
/// distributed-cluster in the state directory's runtime.yaml or the
/// environment), if it is one.
pub(crate) fn configured_cluster() -> Result<Option<String>> {
    let c = resolve_config(&RuntimeFlags::default(), None)?;
    Ok(c.cluster_database.filter(|_| c.mode == RuntimeMode::DistributedCluster))
}

/// The runtime configuration: `flags`, the environment, the state
/// directory's runtime.yaml and, given a workspace, its own.
fn resolve_config(flags: &RuntimeFlags, workspace: Option<&Path>) -> Result<RuntimeConfig> {
    let mut files = Vec::new();
    let project = workspace.map(|w| w.join(".coderClaw/runtime.yaml"));
    for path in project.iter().cloned().chain([home::state_dir()?.join("runtime.yaml")]) {
        let link = if Some(&path) == project.as_ref() { FinalLink::Refuse } else { FinalLink::Follow };
        match read_text_bounded(&path, MAX_CONFIG_BYTES, link) {
            Ok(text) => {
                let name = path.display().to_string();
                let file = RuntimeFile::from_yaml(&text, &name)?;
                if Some(&path) == project.as_ref() {
                    file.check_project_layer(&name)?;
                }
                files.push((name, file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(RuntimeConfig::resolve(flags, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()), &files)?)
}

/// The security section of runtime.yaml must agree with config.yaml.
fn check_security(c: &RuntimeConfig, security: &Security) -> Result<()> {
    let enforced = &security.policy()?.config.security;
    let s = &c.security;
    let mismatch = |key: &str, here: String, there: String| {
        anyhow::anyhow!(
            "runtime.yaml security.{key} is {here} but config.yaml says {there}: security is configured in \
             $CODERCLAW_HOME/config.yaml; make them agree or drop the key from runtime.yaml"
        )
    };
    if let Some(v) = s.require_auth.filter(|v| *v != enforced.require_auth) {
        return Err(mismatch("requireAuth", v.to_string(), enforced.require_auth.to_string()));
    }
    if let Some(v) = s.enforce_trust.filter(|v| *v != enforced.enforce_trust) {
        return Err(mismatch("enforceTrust", v.to_string(), enforced.enforce_trust.to_string()));
    }
    if let Some(v) = s.default_roles.as_ref().filter(|v| **v != enforced.default_roles) {
        return Err(mismatch("defaultRoles", format!("{v:?}"), format!("{:?}", enforced.default_roles)));
    }
    Ok(())
}

/// The cluster database configured for this machine, if any.
pub(crate) fn cluster_database() -> Result<Option<String>> {
    let workspace = home::workspace(None)?;
    Ok(config(&RuntimeFlags::default(), &workspace)?.cluster_database)
}

/// This node's name: configured, or the host name.
fn node_name(c: &RuntimeConfig) -> String {
    c.cluster_node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_owned())
    })
}

/// `run_queue`: whether this process starts queued tasks (false for
/// commands that only look, so they never begin runs they would abandon).
fn open_engine(workspace: &Path, write: bool, run_queue: bool, c: &RuntimeConfig) -> Result<LocalRuntime> {
    if c.mode == RuntimeMode::DistributedCluster {
        bail!(
            "this machine is configured as a cluster node (mode distributed-cluster): its tasks live in the cluster's \
             database, reached through a node. Use --remote URL (or CODERCLAW_REMOTE) with a node's address, or \
             start one with `coderclaw serve`"
        );
    }
    open_runtime(workspace, write, run_queue, c)
}

fn open_runtime(workspace: &Path, write: bool, run_queue: bool, c: &RuntimeConfig) -> Result<LocalRuntime> {
    let security = home::open_security(Some(workspace))?;
    check_security(c, &security)?;
    let access = if write { Access::ReadWrite } else { Access::Read };
    let dir = OfferedDir { host: workspace.to_path_buf(), guest: ".".into(), access };
    let offer = Offer { dirs: [("workspace".to_owned(), dir)].into(), env: Default::default(), ceiling: HOST_MAX };
    let engine_config = EngineConfig {
        run_queue,
        max_concurrent_tasks: c.max_concurrent_tasks,
        task_timeout: Duration::from_millis(c.task_timeout_ms),
        mode: c.mode,
        ..EngineConfig::default()
    };
    let builder = LocalRuntime::builder_for(security).offer(offer).config(engine_config);
    if c.mode == RuntimeMode::DistributedCluster {
        let url = c.cluster_database.as_deref().context("mode distributed-cluster needs cluster.database")?;
        let lease = Duration::from_millis(c.cluster_lease_ms);
        // Several nodes may share a state directory: the tasks are in the database.
        return Ok(builder.cluster(url, node_name(c), lease).open()?);
    }
    match builder.exclusive().open() {
        Err(OpenError::Busy(root)) => bail!(
            "another coderclaw process (e.g. `coderclaw serve`) runs the task engine of {}: talk to it with \
             --remote URL (or CODERCLAW_REMOTE)",
            root.display()
        ),
        other => Ok(other?),
    }
}

/// The local engine for `workspace` under the configuration in force, as
/// `coderclaw mcp` runs it.
pub(crate) fn open_local_engine(workspace: &Path, write: bool, run_queue: bool) -> Result<LocalRuntime> {
    let c = config(&RuntimeFlags::default(), workspace)?;
    open_engine(workspace, write, run_queue, &c)
}

pub(crate) fn serve_main(args: ServeArgs) -> Result<ExitCode> {
    let workspace = home::workspace(args.workspace.as_deref())?;
    let flags = RuntimeFlags {
        mode: args.mode.clone(),
        listen: args.listen.clone(),
        max_concurrent_tasks: args.max_concurrent_tasks,
        node: args.node.clone(),
        ..Default::default()
    };
    let c = config(&flags, &workspace)?;
    if !c.http_enabled {
        bail!("transport.enabled is false in runtime.yaml: the HTTP server is switched off");
    }
    if c.mode == RuntimeMode::RemoteEnabled && !c.allow_remote_sessions {
        bail!("mode remote-enabled with deployment.allowRemoteSessions: false contradicts itself: pick one");
    }
    let listen = c.listen.parse().with_context(|| format!("--listen {}: expected IP:PORT", c.listen))?;
    let grpc_listen: Option<std::net::SocketAddr> = match &args.grpc_listen {
        Some(a) => Some(a.parse().with_context(|| format!("--grpc-listen {a}: expected IP:PORT"))?),
        None => None,
    };
    let rt = crate::runtime()?;
    rt.block_on(async {
        let local = open_runtime(&workspace, args.workspace_write, true, &c)?;
        let tls = args.tls_cert.clone().zip(args.tls_key.clone());
        let mut mcp = McpHttpConfig::for_listen(listen, tls.is_some());
        mcp.allowed_hosts.extend(args.mcp_allowed_hosts.iter().cloned());
        mcp.allowed_origins.extend(args.mcp_allowed_origins.iter().cloned());
        let logging = match (args.access_log, args.no_access_log) {
            (true, _) => true,
            (false, true) => false,
            (false, false) => c.mode != RuntimeMode::LocalOnly,
        };
        let access_log = logging.then(|| coderclaw::tasks::http_server::AccessLog(Arc::new(print_access)));
        let server_config = ServerConfig {
            listen,
            mode: c.mode,
            tls: tls.clone(),
            mcp: Some(mcp),
            access_log,
            ..ServerConfig::default()
        };
        let server = serve(local.service().clone(), server_config).await?;
        let grpc = match &grpc_listen {
            Some(addr) => {
                let config = GrpcConfig { listen: *addr, mode: c.mode, tls: tls.clone(), ..GrpcConfig::default() };
                Some(serve_grpc(local.service().clone(), config).await?)
            }
            None => None,
        };
        let ws = server.url().replacen("http", "ws", 1);
        let grpc_url = grpc.as_ref().map(|g| format!(", gRPC {}://{}", if g.tls { "grpcs" } else { "grpc" }, g.addr));
        let cluster = match (&c.cluster_database, c.mode) {
            (Some(db), RuntimeMode::DistributedCluster) => {
                format!(" node {} of {}", node_name(&c), coderclaw::tasks::store::redact_url(db))
            }
            _ => String::new(),
        };
        eprintln!(
            "coderclaw serving {} (WebSocket {ws}/v1/ws{}; {}{cluster}, {} tasks at once, state {})",
            server.url(),
            grpc_url.unwrap_or_default(),
            c.mode.as_str(),
            c.max_concurrent_tasks,
            local.security().home().root().display()
        );
        let reloads = tokio::spawn(crate::reload::watch(local.security().clone()));
        let mut signals = crate::signals::Signals::new()?;
        let first = signals.next().await;
        reloads.abort();
        // No new connections; open ones (streams, answers to WAITING
        // tasks) are served until the engine has stopped.
        server.shutdown();
        if let Some(grpc) = &grpc {
            grpc.shutdown();
        }
        let grace = Duration::from_millis(c.shutdown_grace_ms);
        let running = local.service().dangerous_engine().status().active_tasks;
        eprintln!(
            "{first}: shutting down: no new tasks; {running} running get up to {} to finish \
             (deployment.shutdownGrace; {first} again stops them now)",
            coderclaw_core::units::format_duration(grace)
        );
        let hurry = async move {
            let again = signals.next().await;
            eprintln!("{again}: stopping the running tasks now");
        };
        let report = local.service().shutdown(grace, hurry).await.map_err(rt_err)?;
        if c.mode == RuntimeMode::DistributedCluster {
            eprintln!(
                "stopped: {} finished, {} cancelled, {} resumable handed to the other nodes; left the cluster",
                report.finished,
                report.cancelled.len(),
                report.requeued.len()
            );
        } else {
            eprintln!(
                "stopped: {} finished, {} cancelled, {} resumable to re-run at the next start, {} queued kept",
                report.finished,
                report.cancelled.len(),
                report.requeued.len(),
                report.queued
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One access log line: `access GET /v1/tasks/{id} 200 3.1ms user=alice peer=…`.
/// A closed stderr loses the line, never the request.
fn print_access(r: &coderclaw::tasks::http_server::AccessRecord) {
    use std::io::Write as _;
    let user = r.user.as_deref().unwrap_or("-");
    let line =
        format!("access {} {} {} {:.1}ms user={user} peer={}\n", r.method, r.route, r.status, r.latency_ms, r.peer);
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Runs `f` against the runtime `target` names. A local engine starts
/// queued tasks only when `run_queue`.
/// The workspace and configuration a task command runs with.
fn resolve(target: &Target) -> Result<(PathBuf, RuntimeConfig)> {
    let workspace = home::workspace(target.workspace.as_deref())?;
    let flags = RuntimeFlags { remote: target.remote.clone(), ..Default::default() };
    let c = config(&flags, &workspace)?;
    Ok((workspace, c))
}

fn with_runtime<T>(target: &Target, run_queue: bool, f: impl AsyncFnOnce(Runtime) -> Result<T>) -> Result<T> {
    let (workspace, c) = resolve(target)?;
    let rt = crate::runtime()?;
    rt.block_on(async {
        match &c.remote_url {
            Some(url) => {
                let token = target.token.clone().or_else(|| home::session().map(str::to_owned));
                let transport = coderclaw::tasks::connect(url, token, target.ca.as_deref())?;
                f(Runtime::Remote(CoderClawRuntime::new(transport))).await
            }
            None => {
                let local = open_engine(&workspace, false, run_queue, &c)?;
                let result = f(Runtime::Local(local.runtime(home::session().map(str::to_owned)))).await;
                drop(local);
                result
            }
        }
    })
}

/// Either runtime, so one command body serves both.
enum Runtime {
    Local(CoderClawRuntime<LocalTransport>),
    Remote(CoderClawRuntime<Arc<dyn Transport>>),
}

macro_rules! call {
    ($rt:expr, $m:ident ( $($arg:expr),* )) => {
        match $rt {
            Runtime::Local(r) => r.$m($($arg),*).await,
            Runtime::Remote(r) => r.$m($($arg),*).await,
        }
    };
}

/// A runtime call's error as the CLI prints it: the message and its code,
/// kept typed so `hints` can add the next command for the code.
#[derive(Debug)]
pub(crate) struct CallError(pub(crate) RuntimeError);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0.message, self.0.code)
    }
}

impl std::error::Error for CallError {}

fn rt_err(e: RuntimeError) -> anyhow::Error {
    anyhow::Error::new(CallError(e))
}

/// 0 completed; 4 stopped (cancelled, or by a limit or a crash, as
/// `skill run` exits); 5 the skill's failure verdict (as `skill run`); 3
/// every other failure (refused, not installed, the skill's own error, the
/// host's).
fn exit_for(state: &TaskState) -> ExitCode {
    let stopped = [FailureCode::Cancelled, FailureCode::Timeout, FailureCode::MemoryLimit, FailureCode::Trap];
    match (state.status, &state.error) {
        (TaskStatus::Completed, _) => ExitCode::SUCCESS,
        (TaskStatus::Cancelled, _) => ExitCode::from(4),
        (_, Some(f)) if f.code == FailureCode::SkillVerdict => ExitCode::from(crate::run::VERDICT_EXIT),
        (_, Some(f)) if stopped.contains(&f.code) => ExitCode::from(4),
        _ => ExitCode::from(3),
    }
}

fn progress_line(e: &TaskUpdateEvent, local: bool) -> String {
    let pct = e.progress.map(|p| format!(" {:>3.0}%", p * 100.0)).unwrap_or_default();
    match e.event {
        TaskEventKind::Status => format!("[{}]{pct} {}", e.status, e.message),
        // A local engine lives in this process: the answer comes from stdin.
        TaskEventKind::InputRequested if local => format!("[WAITING] {} (type the answer, then Enter)", e.message),
        TaskEventKind::InputRequested => {
            format!("[WAITING] {} (answer with `coderclaw task respond {} <answer>`)", e.message, e.task_id)
        }
        other => format!("[{}]{pct} {}: {}", e.status, other.as_str(), e.message),
    }
}

/// Prints a task's events on stderr as they come. Off a terminal (a CI
/// log), progress events are rate-limited: at most one a second, never the
/// same line twice, and the last one before the task ends; every other
/// event is printed.
struct ProgressPrinter {
    local: bool,
    tty: bool,
    last_progress: Option<(String, std::time::Instant)>,
    held: Option<String>,
}

/// Least time between two progress lines off a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl ProgressPrinter {
    fn new(local: bool) -> Self {
        Self { local, tty: std::io::stderr().is_terminal(), last_progress: None, held: None }
    }

    fn show(&mut self, e: &TaskUpdateEvent) {
        let dim = crate::settings::get().color;
        for line in self.lines(e, std::time::Instant::now()) {
            if dim { eprintln!("\x1b[2m{line}\x1b[0m") } else { eprintln!("{line}") }
        }
    }

    /// The lines `e` prints at `now`.
    fn lines(&mut self, e: &TaskUpdateEvent, now: std::time::Instant) -> Vec<String> {
        let line = progress_line(e, self.local);
        if self.tty {
            return vec![line];
        }
        if e.event != TaskEventKind::Progress {
            // A held progress line goes out first, so the log ends on the latest.
            return self.held.take().into_iter().chain([line]).collect();
        }
        let due = match &self.last_progress {
            Some((last, at)) => *last != line && now.duration_since(*at) >= PROGRESS_EVERY,
            None => true,
        };
        if !due {
            let repeated = self.last_progress.as_ref().is_some_and(|(last, _)| *last == line);
            self.held = if repeated { None } else { Some(line) };
            return Vec::new();
        }
        self.held = None;
        self.last_progress = Some((line.clone(), now));
        vec![line]
    }
}

/// Follows a remote run (see [`Transport::run_task`]) after its
/// acknowledgement to the final state.
async fn follow_run(updates: &mut coderclaw::tasks::RunStream<'_>, json: bool) -> Result<TaskState> {
    let mut printer = ProgressPrinter::new(false);
    while let Some(update) = updates.next().await {
        match update.map_err(rt_err)? {
            RunUpdate::Event(e) if !json => printer.show(&e),
            RunUpdate::Finished(state) => return Ok(state),
            RunUpdate::Event(_) | RunUpdate::Accepted(_) => {}
        }
    }
    bail!("the server ended the task's stream before its final state: see it with `coderclaw task status ID`")
}

/// Streams the task's updates to its end. With the local engine, an input
/// request is answered from a line of stdin (no other process can reach
/// this engine); over HTTP someone answers with `task respond`.
async fn follow(rt: &Runtime, id: &str, json: bool) -> Result<TaskState> {
    let local = matches!(rt, Runtime::Local(_));
    let mut printer = ProgressPrinter::new(local);
    let mut stream = call!(rt, stream_task_updates(id)).map_err(rt_err)?;
    while let Some(e) = stream.next().await {
        let e = e.map_err(rt_err)?;
        if !json {
            printer.show(&e);
        }
        if local && e.event == TaskEventKind::InputRequested {
            let answer = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await?
            .context("reading the answer from stdin")?;
            call!(rt, respond(id, answer.trim_end_matches(['\r', '\n']))).map_err(rt_err)?;
        }
    }
    call!(rt, get_task_state(id)).map_err(rt_err)?.with_context(|| format!("no task {id}"))
}

fn print_state(state: &TaskState, json: bool) -> Result<()> {
    if json {
        return print_json(state);
    }
    println!("{}  {}  {} {}", state.id, state.status, state.target.kind(), state.target.id());
    if let Some(p) = &state.prompt {
        println!("  waiting for: {p}");
    }
    if let Some(e) = &state.error {
        println!("  error: [{}] {}", e.code, e.message);
        for hint in crate::hints::for_failure(e.code)
            .into_iter()
            .chain(e.reasons.iter().filter_map(|r| crate::hints::for_reason(r)))
        {
            println!("  hint: {hint}");
        }
    }
    if let Some(o) = &state.output {
        println!("{}", serde_json::to_string_pretty(o)?);
    }
    Ok(())
}

pub(crate) fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let input: serde_json::Value = serde_json::from_str(&crate::input::resolve(args.input.as_deref())?)?;
    let mut req = match (&args.skill, &args.agent) {
        (Some(s), _) => TaskSubmitRequest::skill(s, input),
        (None, Some(a)) => TaskSubmitRequest::agent(a, input),
        (None, None) => bail!("say what to run: --skill ID or --agent ID"),
    };
    req.description = args.description.clone();
    for m in &args.metadata {
        let (k, v) = m.split_once('=').with_context(|| format!("--meta {m}: expected KEY=VALUE"))?;
        req.metadata.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
    }
    if args.workspace_upload || args.server_workspace.is_some() {
        let (_, c) = resolve(&args.target)?;
        if c.remote_url.is_none() {
            let flag = if args.workspace_upload { "--workspace-upload" } else { "--server-workspace" };
            bail!("{flag} needs --remote (or CODERCLAW_REMOTE): a local task runs in --workspace DIR itself");
        }
    }
    with_runtime(&args.target, true, async |rt| {
        if args.detach && matches!(rt, Runtime::Local(_)) {
            bail!("--detach needs --remote: a task of the in-process engine ends with this command");
        }
        if let Some(name) = &args.server_workspace {
            req.workspace = Some(WorkspaceRef::Name(name.clone()));
        }
        if let (true, Runtime::Remote(remote)) = (args.workspace_upload, &rt) {
            let dir = home::workspace(args.target.workspace.as_deref())?;
            let digest = upload_snapshot(remote, &dir, args.target.json).await?;
            req.workspace = Some(WorkspaceRef::Upload(digest));
        }
        // Listening before submitting: a signal from now on is seen, not fatal.
        let interrupted = crate::signals::interrupted()?;
        if let (true, Runtime::Remote(remote)) = (args.wait, &rt) {
            // One call where the transport can (gRPC): submit and follow.
            let mut updates = remote.run_task(req);
            // The acknowledgement whatever the signals: it names the task
            // to give up.
            let task = match updates.next().await {
                Some(Ok(RunUpdate::Accepted(task))) => task,
                Some(Err(e)) => return Err(rt_err(e)),
                _ => bail!("the server did not acknowledge the submission: see `coderclaw task list`"),
            };
            if !args.target.json {
                eprintln!("task {} submitted", task.id);
            }
            let done = tokio::select! {
                done = follow_run(&mut updates, args.target.json) => done?,
                signal = interrupted => return give_up(&rt, &task.id, signal, args.detach).await,
            };
            print_state(&done, args.target.json)?;
            return Ok(exit_for(&done));
        }
        let task = call!(&rt, submit_task(req)).map_err(rt_err)?;
        // A local engine lives only as long as this command: it follows the
        // task to its end even without --wait.
        if !args.wait && matches!(rt, Runtime::Remote(_)) {
            print_state(&task, args.target.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        if !args.target.json {
            eprintln!("task {} submitted", task.id);
        }
        let done = tokio::select! {
            done = follow(&rt, &task.id, args.target.json) => done?,
            signal = interrupted => return give_up(&rt, &task.id, signal, args.detach).await,
        };
        print_state(&done, args.target.json)?;
        Ok(exit_for(&done))
    })
}

/// Sends a snapshot of `dir` to the server; its digest.
async fn upload_snapshot(rt: &CoderClawRuntime<Arc<dyn Transport>>, dir: &Path, quiet: bool) -> Result<String> {
    let owned = dir.to_path_buf();
    let snapshot = tokio::task::spawn_blocking(move || coderclaw::snapshot::snapshot(&owned, MAX_SNAPSHOT_BYTES))
        .await
        .context("building the snapshot")??;
    if !quiet {
        let size = coderclaw_core::units::format_size(snapshot.tar.len() as u64);
        eprintln!("uploading {}: {} files, {size} (.gitignore honoured)", dir.display(), snapshot.files);
        if !snapshot.skipped.is_empty() {
            let shown: Vec<String> = snapshot.skipped.iter().take(5).map(|p| p.display().to_string()).collect();
            let more = snapshot.skipped.len().saturating_sub(shown.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            eprintln!("left out (symbolic links and special files): {}{more}", shown.join(", "));
        }
    }
    let info = rt.upload_workspace(snapshot.tar.into()).await.map_err(rt_err)?;
    if !quiet {
        eprintln!("uploaded {}", info.digest);
    }
    Ok(info.digest)
}

/// The waiting command was interrupted by `signal`: gives the task up
/// unless `detach`; exits as a shell reports the signal (130, 143).
async fn give_up(rt: &Runtime, id: &str, signal: &str, detach: bool) -> Result<ExitCode> {
    let code = ExitCode::from(if signal == "SIGINT" { 130 } else { 143 });
    if detach {
        eprintln!("{signal}: detached; task {id} keeps running (follow it with `coderclaw task watch {id}`)");
        return Ok(code);
    }
    let reason = format!("the submitting command was interrupted ({signal})");
    match call!(rt, abandon_task(id, &reason)) {
        Ok(true) => eprintln!("{signal}: task {id} cancelled"),
        Ok(false) => eprintln!("{signal}: task {id} had already finished"),
        Err(e) => eprintln!(
            "{signal}: task {id} could not be cancelled ({e}): it may still run; `coderclaw task cancel {id}` stops it"
        ),
    }
    Ok(code)
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Submit(args) => submit(args),
        Command::Status { id, target } => with_runtime(&target, false, async |rt| {
            let state = call!(&rt, get_task_state(&id)).map_err(rt_err)?;
            let state = state.with_context(|| format!("no task {id} (or not one of your session's)"))?;
            print_state(&state, target.json)?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Watch { id, target } => with_runtime(&target, true, async |rt| {
            let done = follow(&rt, &id, target.json).await?;
            print_state(&done, target.json)?;
            Ok(exit_for(&done))
        }),
        Command::Cancel { id, target } => with_runtime(&target, false, async |rt| {
            let cancelled = call!(&rt, cancel_task(&id)).map_err(rt_err)?;
            if cancelled {
                if target.json {
                    print_json(&serde_json::json!({ "id": id, "cancelled": true }))?;
                } else {
                    println!("cancelled {id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            // Nothing was cancelled: say how it ended, and do not exit 0.
            let ended = call!(&rt, get_task_state(&id)).ok().flatten().map(|t| t.status);
            if target.json {
                print_json(&serde_json::json!({ "id": id, "cancelled": false, "status": ended }))?;
            }
            let how = ended.map(|s| format!(" ({s})")).unwrap_or_default();
            eprintln!("error: task {id} had already finished{how}: nothing was cancelled");
            Ok(ExitCode::FAILURE)
        }),
        Command::List { status, of_session, limit, target } => {
            let status = status.map(|s| TaskStatus::parse(&s)).transpose().map_err(anyhow::Error::msg)?;
            let filter = TaskFilter { status, session: of_session, limit };
            with_runtime(&target, false, async |rt| {
                let tasks = call!(&rt, list_tasks(filter)).map_err(rt_err)?;
                if target.json {
                    print_json(&tasks)?;
                } else {
                    for t in &tasks {
                        println!(
                            "{}  {:<9}  {:<5} {}  {}",
                            t.id,
                            t.status,
                            t.target.kind(),
                            t.target.id(),
                            t.description
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Events { id, target } => with_runtime(&target, false, async |rt| {
            // Page by page, printed as they come: a long history is never
            // held whole (--json still prints one JSON array).
            let mut after = 0;
            let mut first = true;
            loop {
                let page = call!(&rt, get_task_events(&id, after, MAX_EVENTS_PAGE)).map_err(rt_err)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    if target.json {
                        println!("{}{}", if first { "[" } else { "," }, serde_json::to_string(e)?);
                    } else {
                        println!(
                            "{:>4} {}  {}",
                            e.seq,
                            coderclaw_core::units::format_utc(e.timestamp_ms),
                            progress_line(e, false)
                        );
                    }
                    first = false;
                }
            }
            if target.json {
                println!("{}", if first { "[]" } else { "]" });
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Respond { id, answer, target } => {
            // A waiting task's question lives in the process that runs it; an
            // engine opened here would only find it interrupted.
            if resolve(&target)?.1.remote_url.is_none() {
                bail!(
                    "task {id} waits in the process that runs it: answer at the prompt of the `coderclaw task \
                     submit` that started it, or over HTTP with --remote <url> (or CODERCLAW_REMOTE) when \
                     `coderclaw serve` runs it"
                );
            }
            with_runtime(&target, true, async |rt| {
                let state = call!(&rt, respond(&id, &answer)).map_err(rt_err)?;
                print_state(&state, target.json)?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

pub(crate) fn status(args: StatusArgs) -> Result<ExitCode> {
    with_runtime(&args.target, false, async |rt| {
        let s = call!(&rt, get_status()).map_err(rt_err)?;
        if args.target.json {
            print_json(&s)?;
        } else {
            println!("coderclaw {} ({}), up {}s, healthy: {}", s.version, s.mode.as_str(), s.uptime_secs, s.healthy);
            println!(
                "tasks: {} active, {} queued, {} total; {} at once",
                s.active_tasks, s.queued_tasks, s.total_tasks, s.max_concurrent_tasks
            );
            for missing in &s.missing_required_skills {
                println!("missing required skill: {missing} (organizationPolicy.requiredSkills)");
            }
            for warning in &s.policy_warnings {
                println!("warning: {warning}");
            }
        }
        Ok(if s.healthy && s.missing_required_skills.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: TaskEventKind, progress: Option<f32>, message: &str) -> TaskUpdateEvent {
        TaskUpdateEvent {
            task_id: "t".into(),
            seq: 1,
            timestamp_ms: 0,
            event: kind,
            status: TaskStatus::Running,
            progress,
            message: message.into(),
            data: None,
        }
    }

    #[test]
    fn off_a_terminal_progress_is_printed_at_most_once_a_second_and_the_latest_before_the_end() {
        let mut p = ProgressPrinter { local: false, tty: false, last_progress: None, held: None };
        let t0 = std::time::Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let progress = |pct: f32| event(TaskEventKind::Progress, Some(pct), "scanning");
        assert_eq!(p.lines(&progress(0.1), at(0)).len(), 1, "the first is printed");
        for i in 1..100u64 {
            assert!(p.lines(&progress(0.1 + i as f32 * 0.001), at(i * 5)).is_empty(), "{i}: within the second");
        }
        assert_eq!(p.lines(&progress(0.5), at(1500)), vec!["[RUNNING]  50% progress: scanning"]);
        assert!(p.lines(&progress(0.5), at(2600)).is_empty(), "the same line is not printed again");
        assert_eq!(p.lines(&progress(0.9), at(2650)).len(), 1, "a new line a second later is");
        assert!(p.lines(&progress(0.95), at(2700)).is_empty());
        let log = p.lines(&event(TaskEventKind::Log, None, "found 2"), at(2800));
        assert_eq!(log, vec!["[RUNNING]  95% progress: scanning", "[RUNNING] log: found 2"], "the held one first");
        let mut tty = ProgressPrinter { tty: true, ..p };
        assert_eq!(tty.lines(&progress(0.91), at(3201)).len(), 1, "a terminal shows every event");
    }
}
