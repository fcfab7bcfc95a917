//! The one composition root: a state directory's security service, sandbox,
//! skill executor, audit hook, task engine and task service, assembled in one
//! place for the CLI, `coderclaw serve`, the tests, the benchmarks and any
//! embedder.

use crate::skill_executor::SkillExecutor;
use coderclaw_core::decision::Offer;
use coderclaw_sandbox::Host;
use coderclaw_security::home::Home;
use coderclaw_security::{Security, SecurityError};
use coderclaw_tasks::{EngineConfig, EngineError, TaskEngine, TaskService};
use coderclaw_transport::{CoderClawRuntime, LocalTransport};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why a [`LocalRuntime`] could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The security service (configuration, policy files, identity) failed.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The sandbox could not be built.
    #[error(transparent)]
    Sandbox(#[from] coderclaw_sandbox::Error),
    /// The task store could not be opened.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Another process already runs this state directory's task engine.
    #[error("another process runs the task engine of {}", .0.display())]
    Busy(PathBuf),
    /// The engine lock file could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A state directory's task runtime, running in this process.
pub struct LocalRuntime {
    service: Arc<TaskService>,
    security: Arc<Security>,
    _lock: Option<File>,
}

/// Sets up a [`LocalRuntime`]; see [`LocalRuntime::builder`].
#[must_use]
pub struct LocalRuntimeBuilder {
    home: Arc<Home>,
    security: Option<Arc<Security>>,
    workspace: Option<PathBuf>,
    offer: Offer,
    config: EngineConfig,
    host: Option<Host>,
    exclusive: bool,
    postgres: Option<String>,
    cluster: Option<(String, std::time::Duration)>,
}

impl LocalRuntime {
    /// A runtime over the state directory `home`. By default: no workspace,
    /// an empty offer, the default engine configuration, a sandbox using the
    /// state directory's compiled-code cache, and no process lock.
    pub fn builder(home: Arc<Home>) -> LocalRuntimeBuilder {
        LocalRuntimeBuilder {
            home,
            security: None,
            workspace: None,
            offer: Offer::default(),
            config: EngineConfig::default(),
            host: None,
            exclusive: false,
            postgres: None,
            cluster: None,
        }
    }

    /// A runtime over an already opened security service (its state
    /// directory and workspace), for a caller that checked it first.
    pub fn builder_for(security: Arc<Security>) -> LocalRuntimeBuilder {
        let mut builder = Self::builder(security.shared_home().clone());
        builder.security = Some(security);
        builder
    }

    /// The authorised door to the engine; every transport goes through it.
    pub fn service(&self) -> &Arc<TaskService> {
        &self.service
    }

    /// The security service the runtime decides with.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The runtime interface in-process, acting with the session `token`
    /// (None: the local user).
    pub fn runtime(&self, token: Option<String>) -> CoderClawRuntime<LocalTransport> {
        CoderClawRuntime::new(LocalTransport::new(self.service.clone(), token))
    }
}

impl LocalRuntimeBuilder {
    /// The repository tasks run in: its `.coderClaw/security.yaml` is in
    /// force. Ignored when the security service was given.
    pub fn workspace(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workspace = Some(dir.into());
        self
    }

    /// What the host can give the skills it runs (directories, environment,
    /// limit ceiling); a skill gets only what its manifest asks of this.
    pub fn offer(mut self, offer: Offer) -> Self {
        self.offer = offer;
        self
    }

    /// Queue, concurrency and timeout settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Runs skills with this sandbox instead of the default one.
    pub fn host(mut self, host: Host) -> Self {
        self.host = Some(host);
        self
    }

    /// Keeps tasks, events and session memory in the PostgreSQL database
    /// at `url` instead of the state directory's `tasks.db` (keys, trust,
    /// sessions and the audit log stay in the state directory). One
    /// engine per database: several at once would each run every task.
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.postgres = Some(url.into());
        self
    }

    /// Runs as node `node` of the cluster whose PostgreSQL database is
    /// `url`: tasks are claimed from the shared queue under a lease that
    /// heartbeats renew (`lease`), other nodes' tasks are reached through
    /// the database (see `coderclaw_tasks::store::ClusterStore`), and the
    /// audit log, trust, users and sessions and the installed skills are
    /// the cluster's, in that database (records appended to the state
    /// directory's log before stay there).
    pub fn cluster(mut self, url: impl Into<String>, node: impl Into<String>, lease: std::time::Duration) -> Self {
        self.postgres = Some(url.into());
        self.cluster = Some((node.into(), lease));
        self
    }

    /// Holds the state directory's engine lock for the runtime's lifetime,
    /// so that two processes never run the same tasks; opening fails with
    /// [`OpenError::Busy`] while another holds it.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Opens the runtime. With a running queue, tasks left PENDING by an
    /// earlier process start now and interrupted ones are recovered.
    pub fn open(self) -> Result<LocalRuntime, OpenError> {
        let security = match self.security {
            Some(s) => s,
            None => Arc::new(Security::open(self.home.clone(), self.workspace.as_deref())?),
        };
        let root = security.home().root().to_path_buf();
        let lock = if self.exclusive { Some(lock(&root)?) } else { None };
        let host = match self.host {
            Some(h) => h,
            None => Host::builder().compiled_cache(security.home().compiled_cache_dir()).build()?,
        };
        let workspace = security.workspace().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        let executor = SkillExecutor::new(security.clone(), host, workspace, self.offer);
        let audit_home = security.shared_home().clone();
        let audit = Arc::new(move |e| {
            let durable = audit_home.audit().append_durable(e);
            Box::pin(async move {
                durable.await.map(|_| ()).map_err(|err| {
                    tracing::error!(error = %err, "audit record lost");
                    err.to_string()
                })
            }) as coderclaw_core::task_link::BoxFuture<Result<(), String>>
        });
        let engine = match &self.postgres {
            Some(url) => {
                let cluster = self.cluster.clone();
                let home = security.shared_home().clone();
                if cluster.is_some() {
                    // The cluster's audit chain, identities, trust and
                    // installed skills, before any task runs.
                    let shared_all = home.audit().is_shared()
                        && home.shares_trust()
                        && security.shares_identities()
                        && home.shares_skills();
                    if !shared_all {
                        let shared =
                            coderclaw_tasks::store::PgSharedState::open_node(url).map_err(EngineError::from)?;
                        if !home.audit().is_shared() {
                            home.audit().use_store(shared.clone());
                        }
                        if !security.shares_identities() {
                            security.share_identities(shared.clone())?;
                        }
                        if !home.shares_trust() {
                            home.share_trust(shared.clone());
                        }
                        if !home.shares_skills() {
                            home.share_skills(shared);
                        }
                    }
                    let (trust, skills) = security.sync_cluster()?;
                    tracing::info!(trust, skills, "the cluster's trust and skill changes applied");
                    follow_cluster(&security)?;
                }
                let open_store = |on_commit| {
                    use coderclaw_tasks::store::PgTaskStore;
                    let store = match &cluster {
                        Some((node, lease)) => {
                            PgTaskStore::open_cluster(url, node, *lease, home.audit().signing(), on_commit)?
                        }
                        None => PgTaskStore::open(url, on_commit)?,
                    };
                    Ok(store as Arc<dyn coderclaw_tasks::TaskStore>)
                };
                TaskEngine::open_on(open_store, executor, self.config, Some(audit))?
            }
            None => TaskEngine::open(&root, executor, self.config, Some(audit))?,
        };
        Ok(LocalRuntime { service: TaskService::new(engine, security.clone()), security, _lock: lock })
    }
}

/// How often a node applies the cluster's trust and skill changes (a key
/// trusted or revoked, a skill installed or removed on another node) to
/// its own state directory.
const TRUST_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Applies the cluster's trust and skill changes to `security`'s state
/// directory every [`TRUST_SYNC_EVERY`] for as long as it is open.
fn follow_cluster(security: &Arc<Security>) -> Result<(), OpenError> {
    let security = Arc::downgrade(security);
    let follow = move || {
        loop {
            std::thread::sleep(TRUST_SYNC_EVERY);
            let Some(security) = security.upgrade() else { return };
            // Trust first, then the skills verified against it (a failed
            // trust sync skips the skills).
            match security.sync_cluster() {
                Ok((0, 0)) => {}
                Ok((trust, skills)) => tracing::info!(trust, skills, "the cluster's trust or skills changed"),
                Err(e) => tracing::warn!(error = %e, "the cluster's changes could not be applied; retrying"),
            }
        }
    };
    std::thread::Builder::new()
        .name("coderclaw-cluster-sync".into())
        .spawn(follow)
        .map_err(|e| EngineError::from(coderclaw_tasks::store::StoreError::Thread(e.to_string())))?;
    Ok(())
}

fn lock(root: &Path) -> Result<File, OpenError> {
    let path = root.join("tasks.lock");
    let file = File::create(&path).map_err(|source| OpenError::Lock { path: path.clone(), source })?;
    if file.try_lock().is_err() {
        return Err(OpenError::Busy(root.to_path_buf()));
    }
    Ok(file)
}
