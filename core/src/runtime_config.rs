//! The runtime configuration (`runtime.yaml`, section 7 of the product
//! text), resolved once from its layers: command-line flag > environment
//! variable > project `.coderClaw/runtime.yaml` > user `<state dir>/runtime.yaml`
//! > default. Unknown keys are errors naming file, line and key.
//!
//! ```yaml
//! mode: remote-enabled
//! transport: { type: http, enabled: true, listen: "0.0.0.0:7420" }
//! security: { enforceTrust: true, requireAuth: true, defaultRoles: [developer] }
//! deployment: { mode: remote-enabled, allowRemoteSessions: true, maxConcurrentTasks: 10, taskTimeout: 10m }
//! ```
//!
//! `security` here must agree with the security configuration
//! (`config.yaml`), which is what the host enforces: a runtime file cannot
//! quietly weaken it, and a disagreement is reported instead of ignored.

use crate::manifest::Millis;
use crate::policy::{PolicyError, parse_yaml};
use crate::task::RuntimeMode;
use serde::Deserialize;

/// `mode` (local-only | remote-enabled).
pub const ENV_MODE: &str = "CODERCLAW_MODE";
/// `transport.listen`: the address `coderclaw serve` binds.
pub const ENV_LISTEN: &str = "CODERCLAW_LISTEN";
/// `deployment.maxConcurrentTasks`.
pub const ENV_MAX_CONCURRENT_TASKS: &str = "CODERCLAW_MAX_CONCURRENT_TASKS";
/// `transport.url`: the server the task commands talk to.
pub const ENV_REMOTE: &str = "CODERCLAW_REMOTE";
/// `cluster.database`: the PostgreSQL URL a distributed-cluster node uses.
pub const ENV_CLUSTER_DATABASE: &str = "CODERCLAW_CLUSTER_DATABASE";
/// `cluster.node`: this node's name in the cluster.
pub const ENV_CLUSTER_NODE: &str = "CODERCLAW_NODE";

/// One `runtime.yaml` file; every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeFile {
    /// local-only or remote-enabled.
    pub mode: Option<String>,
    /// How clients reach the runtime.
    pub transport: Option<TransportSection>,
    /// Must agree with `config.yaml`.
    pub security: Option<SecuritySection>,
    /// Capacity and deployment.
    pub deployment: Option<DeploymentSection>,
    /// The distributed-cluster mode's database and node.
    pub cluster: Option<ClusterSection>,
}

/// `cluster:` (mode distributed-cluster).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSection {
    /// The PostgreSQL URL all nodes share.
    pub database: Option<String>,
    /// This node's name (default: the host name).
    pub node: Option<String>,
    /// How long a node's heartbeat keeps its tasks (default 10 s).
    pub lease: Option<Millis>,
}

/// Shortest and longest `cluster.lease`.
const LEASE_RANGE_MS: std::ops::RangeInclusive<u64> = 1_000..=600_000;

/// `transport:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransportSection {
    /// `local` (in-process) or `http`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Whether the HTTP server may be started.
    pub enabled: Option<bool>,
    /// Address `coderclaw serve` binds.
    pub listen: Option<String>,
    /// Server URL the task commands use.
    pub url: Option<String>,
}

/// `security:` (checked against `config.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecuritySection {
    /// See `config.yaml`.
    pub enforce_trust: Option<bool>,
    /// See `config.yaml`.
    pub require_auth: Option<bool>,
    /// See `config.yaml`.
    pub default_roles: Option<Vec<String>>,
}

/// `deployment:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSection {
    /// Same as the top-level `mode` (which wins when both are set).
    pub mode: Option<String>,
    /// false keeps a server to loopback peers even in remote-enabled mode.
    pub allow_remote_sessions: Option<bool>,
    /// Tasks running at once (1..=1024).
    pub max_concurrent_tasks: Option<u32>,
    /// A task running longer is FAILED.
    pub task_timeout: Option<Millis>,
    /// How long `coderclaw serve`, told to stop, lets running tasks finish.
    pub shutdown_grace: Option<Millis>,
}

/// Longest `deployment.shutdownGrace`.
const MAX_SHUTDOWN_GRACE_MS: u64 = 3_600_000;

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Default local-only.
    pub mode: RuntimeMode,
    /// Default 127.0.0.1:7420.
    pub listen: String,
    /// Default none: the task commands run in-process.
    pub remote_url: Option<String>,
    /// Default true; false refuses non-loopback peers.
    pub allow_remote_sessions: bool,
    /// Default 10.
    pub max_concurrent_tasks: u32,
    /// Default 10 minutes.
    pub task_timeout_ms: u64,
    /// Default 30 seconds.
    pub shutdown_grace_ms: u64,
    /// Whether `coderclaw serve` may start (transport.enabled, default true).
    pub http_enabled: bool,
    /// The security section, to be checked against `config.yaml`.
    pub security: SecuritySection,
    /// `cluster.database` (secret: it may hold a password).
    pub cluster_database: Option<String>,
    /// `cluster.node`.
    pub cluster_node: Option<String>,
    /// `cluster.lease`, default 10 s.
    pub cluster_lease_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            mode: RuntimeMode::LocalOnly,
            listen: "127.0.0.1:7420".into(),
            remote_url: None,
            allow_remote_sessions: true,
            max_concurrent_tasks: 10,
            task_timeout_ms: 600_000,
            shutdown_grace_ms: 30_000,
            http_enabled: true,
            security: SecuritySection::default(),
            cluster_database: None,
            cluster_node: None,
            cluster_lease_ms: 10_000,
        }
    }
}

/// Values given on the command line (highest layer).
#[derive(Debug, Clone, Default)]
pub struct RuntimeFlags {
    /// --mode.
    pub mode: Option<String>,
    /// --listen.
    pub listen: Option<String>,
    /// --remote.
    pub remote: Option<String>,
    /// --max-concurrent-tasks.
    pub max_concurrent_tasks: Option<u32>,
    /// --node.
    pub node: Option<String>,
}

impl RuntimeFile {
    /// Refuses what a repository's `.coderClaw/runtime.yaml` may not set:
    /// where the session token goes (`transport.url`) and how this
    /// machine's server is exposed (`mode`, `transport.listen`,
    /// `deployment.allowRemoteSessions`), nor the cluster section (which
    /// database this machine's tasks and credentials-bearing URL go to). A
    /// cloned repository is not trusted with either; they belong in the
    /// user's own runtime.yaml, the environment or a flag.
    pub fn check_project_layer(&self, file: &str) -> Result<(), PolicyError> {
        let t = self.transport.as_ref();
        let d = self.deployment.as_ref();
        let set = [
            ("cluster", self.cluster.is_some()),
            ("mode", self.mode.is_some()),
            ("deployment.mode", d.is_some_and(|d| d.mode.is_some())),
            ("deployment.allowRemoteSessions", d.is_some_and(|d| d.allow_remote_sessions.is_some())),
            ("transport.url", t.is_some_and(|t| t.url.is_some())),
            ("transport.listen", t.is_some_and(|t| t.listen.is_some())),
        ];
        match set.iter().find(|(_, present)| *present) {
            Some((key, _)) => Err(bad(
                file,
                key,
                "a repository's runtime.yaml may not set this (it decides where your session token goes or how \
                 your server is exposed): set it in $CODERCLAW_HOME/runtime.yaml, the environment or a flag"
                    .into(),
            )),
            None => Ok(()),
        }
    }

    /// Parses one file; `name` is used in errors.
    pub fn from_yaml(text: &str, name: &str) -> Result<Self, PolicyError> {
        parse_yaml(text, name)
    }
}

fn bad(file: &str, key: &str, message: String) -> PolicyError {
    PolicyError::Invalid { file: file.to_owned(), key: key.to_owned(), message }
}

impl RuntimeConfig {
    /// Resolves: `flags` > `env` > files (highest first, each `(name, file)`) > default.
    pub fn resolve(
        flags: &RuntimeFlags,
        env: &dyn Fn(&str) -> Option<String>,
        files: &[(String, RuntimeFile)],
    ) -> Result<RuntimeConfig, PolicyError> {
        let mut c = RuntimeConfig::default();
        // Lowest first, so higher layers overwrite.
        for (name, f) in files.iter().rev() {
            let mode = f.mode.as_ref().or(f.deployment.as_ref().and_then(|d| d.mode.as_ref()));
            if let Some(m) = mode {
                c.mode = RuntimeMode::parse(m).map_err(|e| bad(name, "mode", e))?;
            }
            if let Some(t) = &f.transport {
                if let Some(kind) = &t.kind
                    && !["local", "http"].contains(&kind.as_str())
                {
                    return Err(bad(name, "transport.type", format!("`{kind}`: expected local or http")));
                }
                if let Some(l) = &t.listen {
                    c.listen = l.clone();
                }
                if let Some(u) = &t.url {
                    c.remote_url = Some(u.clone());
                }
                if let Some(e) = t.enabled {
                    c.http_enabled = e;
                }
            }
            if let Some(d) = &f.deployment {
                if let Some(n) = d.max_concurrent_tasks {
                    if !(1..=1024).contains(&n) {
                        return Err(bad(name, "deployment.maxConcurrentTasks", format!("{n}: expected 1 to 1024")));
                    }
                    c.max_concurrent_tasks = n;
                }
                if let Some(a) = d.allow_remote_sessions {
                    c.allow_remote_sessions = a;
                }
                if let Some(t) = d.task_timeout {
                    c.task_timeout_ms = t.0;
                }
                if let Some(g) = d.shutdown_grace {
                    if g.0 > MAX_SHUTDOWN_GRACE_MS {
                        let hint =
                            format!("{} s: at most 1 hour (a supervisor kills a server that takes longer)", g.0 / 1000);
                        return Err(bad(name, "deployment.shutdownGrace", hint));
                    }
                    c.shutdown_grace_ms = g.0;
                }
            }
            if let Some(s) = &f.security {
                c.security = s.clone();
            }
            if let Some(k) = &f.cluster {
                if let Some(db) = &k.database {
                    c.cluster_database = Some(db.clone());
                }
                if let Some(n) = &k.node {
                    c.cluster_node = Some(n.clone());
                }
                if let Some(l) = k.lease {
                    if !LEASE_RANGE_MS.contains(&l.0) {
                        let hint = format!("{} ms: expected 1s to 10m", l.0);
                        return Err(bad(name, "cluster.lease", hint));
                    }
                    c.cluster_lease_ms = l.0;
                }
            }
        }
        fn layer<'a>(
            flag: &Option<String>,
            env: &dyn Fn(&str) -> Option<String>,
            var: &'a str,
        ) -> Option<(String, &'a str)> {
            flag.clone().map(|v| (v, "flag")).or_else(|| env(var).map(|v| (v, var)))
        }
        if let Some((m, from)) = layer(&flags.mode, env, ENV_MODE) {
            c.mode = RuntimeMode::parse(&m).map_err(|e| bad(from, "mode", e))?;
        }
        if let Some((l, _)) = layer(&flags.listen, env, ENV_LISTEN) {
            c.listen = l;
        }
        if let Some((u, _)) = layer(&flags.remote, env, ENV_REMOTE) {
            c.remote_url = Some(u);
        }
        if let Some(db) = env(ENV_CLUSTER_DATABASE) {
            c.cluster_database = Some(db);
        }
        if let Some((n, _)) = layer(&flags.node, env, ENV_CLUSTER_NODE) {
            c.cluster_node = Some(n);
        }
        if let Some(n) = &c.cluster_node
            && (n.is_empty() || n.len() > 64 || !n.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)))
        {
            return Err(bad(
                "cluster.node",
                "node",
                format!("`{n}`: a node name is 1 to 64 letters, digits, `-`, `_` or `.`"),
            ));
        }
        let max = flags.max_concurrent_tasks.map(|n| n.to_string()).map(|v| (v, "flag"));
        if let Some((n, from)) = max.or_else(|| env(ENV_MAX_CONCURRENT_TASKS).map(|v| (v, ENV_MAX_CONCURRENT_TASKS))) {
            c.max_concurrent_tasks =
                n.parse().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| {
                    bad(from, "maxConcurrentTasks", format!("`{n}`: expected a number from 1 to 1024"))
                })?;
        }
        if c.mode == RuntimeMode::DistributedCluster && c.cluster_database.is_none() {
            return Err(bad(
                "runtime.yaml",
                "cluster.database",
                format!(
                    "mode distributed-cluster needs the PostgreSQL database the nodes share: set cluster.database \
                     in $CODERCLAW_HOME/runtime.yaml or {ENV_CLUSTER_DATABASE} (e.g. \
                     postgres://coderclaw@db.internal/coderclaw)"
                ),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> RuntimeFile {
        RuntimeFile::from_yaml(text, "runtime.yaml").unwrap()
    }

    #[test]
    fn layers_resolve_flag_over_env_over_project_over_user_over_default() {
        let user =
            file("deployment:\n  maxConcurrentTasks: 3\n  taskTimeout: 1m\ntransport:\n  listen: 127.0.0.1:9000\n");
        let project = file("mode: remote-enabled\ndeployment:\n  maxConcurrentTasks: 5\n");
        let files = [("project".to_owned(), project), ("user".to_owned(), user)];
        let none = |_: &str| None;
        let c = RuntimeConfig::resolve(&RuntimeFlags::default(), &none, &files).unwrap();
        assert_eq!((c.mode, c.max_concurrent_tasks, c.task_timeout_ms), (RuntimeMode::RemoteEnabled, 5, 60_000));
        assert_eq!(c.listen, "127.0.0.1:9000");
        let env = |k: &str| (k == ENV_MAX_CONCURRENT_TASKS).then(|| "7".to_owned());
        assert_eq!(RuntimeConfig::resolve(&RuntimeFlags::default(), &env, &files).unwrap().max_concurrent_tasks, 7);
        let flags =
            RuntimeFlags { max_concurrent_tasks: Some(9), mode: Some("local-only".into()), ..Default::default() };
        let c = RuntimeConfig::resolve(&flags, &env, &files).unwrap();
        assert_eq!((c.mode, c.max_concurrent_tasks), (RuntimeMode::LocalOnly, 9));
        assert_eq!(RuntimeConfig::resolve(&RuntimeFlags::default(), &none, &[]).unwrap(), RuntimeConfig::default());
    }

    #[test]
    fn the_shutdown_grace_defaults_to_30_s_and_is_at_most_an_hour() {
        let none = |_: &str| None;
        let resolve = |text: &str| RuntimeConfig::resolve(&RuntimeFlags::default(), &none, &[("u".into(), file(text))]);
        assert_eq!(resolve("mode: local-only\n").unwrap().shutdown_grace_ms, 30_000);
        assert_eq!(resolve("deployment:\n  shutdownGrace: 2m\n").unwrap().shutdown_grace_ms, 120_000);
        let e = resolve("deployment:\n  shutdownGrace: 2h\n").unwrap_err().to_string();
        assert!(e.contains("deployment.shutdownGrace") && e.contains("at most 1 hour"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_key() {
        // A repository may tune capacity, never where tokens go or how the server is exposed.
        file("deployment:\n  maxConcurrentTasks: 3\n").check_project_layer("p").unwrap();
        for text in [
            "transport:\n  url: http://evil.example\n",
            "mode: remote-enabled\n",
            "transport:\n  listen: 0.0.0.0:7420\n",
        ] {
            let e = file(text).check_project_layer("p/.coderClaw/runtime.yaml").unwrap_err().to_string();
            assert!(e.contains("may not set this"), "{e}");
        }
        let e = RuntimeFile::from_yaml("deployment:\n  maxConcurentTasks: 3\n", "p/runtime.yaml").unwrap_err();
        assert!(e.to_string().contains("p/runtime.yaml:2") && e.to_string().contains("maxConcurentTasks"), "{e}");
        let files = [("p/runtime.yaml".to_owned(), file("mode: cluster\n"))];
        let e = RuntimeConfig::resolve(&RuntimeFlags::default(), &|_| None, &files).unwrap_err();
        assert!(e.to_string().contains("p/runtime.yaml") && e.to_string().contains("unknown mode `cluster`"), "{e}");
        let files = [("r".to_owned(), file("deployment:\n  maxConcurrentTasks: 0\n"))];
        assert!(RuntimeConfig::resolve(&RuntimeFlags::default(), &|_| None, &files).is_err());
    }

    #[test]
    fn the_cluster_settings_come_from_the_machine_never_a_repository() {
        let e = file("cluster:\n  database: postgres://attacker@evil.example/db\n")
            .check_project_layer("p/.coderClaw/runtime.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster") && e.contains("may not set this"), "{e}");
        let none = |_: &str| None;
        let resolve = |text: &str, env: &dyn Fn(&str) -> Option<String>| {
            RuntimeConfig::resolve(&RuntimeFlags::default(), env, &[("u".into(), file(text))])
        };
        let e = resolve("mode: distributed-cluster\n", &none).unwrap_err().to_string();
        assert!(e.contains("needs the PostgreSQL database") && e.contains(ENV_CLUSTER_DATABASE), "{e}");
        let env = |k: &str| match k {
            ENV_CLUSTER_DATABASE => Some("postgres://db/cc".to_owned()),
            ENV_CLUSTER_NODE => Some("n-2".to_owned()),
            _ => None,
        };
        let c = resolve("mode: distributed-cluster\ncluster:\n  node: n1\n  lease: 5s\n", &env).unwrap();
        assert_eq!(c.mode, RuntimeMode::DistributedCluster);
        assert_eq!((c.cluster_database.as_deref(), c.cluster_node.as_deref()), (Some("postgres://db/cc"), Some("n-2")));
        assert_eq!(c.cluster_lease_ms, 5_000);
        let e = resolve("cluster:\n  lease: 100ms\n", &none).unwrap_err().to_string();
        assert!(e.contains("cluster.lease") && e.contains("1s to 10m"), "{e}");
        let e = resolve("cluster:\n  node: \"a b\"\n", &none).unwrap_err().to_string();
        assert!(e.contains("a node name is 1 to 64 letters"), "{e}");
    }
}
