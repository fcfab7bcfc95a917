//! `coderclaw registry`: run a team registry and administer it (on the
//! machine that holds its data directory), and client commands that talk
//! to one (`search`, `agents`, `sync`, `policy publish`).

use crate::grant_args::parse_duration_arg;
use crate::home;
use crate::install::{RegistryArgs, refresh_policies};
use crate::output::print_json;
use anyhow::{Context, Result, anyhow, bail};
use coderclaw_core::keys::PublicKey;
use coderclaw_core::manifest::Kind;
use coderclaw_core::policy::OrgPolicy;
use coderclaw_core::rbac::Permission;
use coderclaw_core::signed_policy::SignedOrgPolicy;
use coderclaw_registry::api::SearchHit;
use coderclaw_registry_server::server::RegistryConfig;
use coderclaw_registry_server::{RegistryStore, Scope};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable naming the registry data directory.
pub(crate) const ENV_REGISTRY_DATA: &str = "CODERCLAW_REGISTRY_DATA";

/// The registry's data directory.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DataArgs {
    /// The registry data directory (registry.db and blobs/).
    #[arg(long, value_name = "DIR", env = ENV_REGISTRY_DATA, hide_env_values = true)]
    pub data: PathBuf,
}

impl DataArgs {
    fn open(&self) -> Result<RegistryStore> {
        Ok(RegistryStore::open(&self.data)?)
    }
}

/// `coderclaw registry …` (its help text is on the variant in main.rs).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    Add(crate::registries::AddArgs),
    List(crate::registries::ListArgs),
    Remove(crate::registries::RemoveArgs),
    Serve(ServeArgs),
    /// Namespaces (teams).
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Keys a namespace accepts signatures from.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Scoped tokens (publish, read, yank).
    #[command(subcommand)]
    Token(TokenCommand),
    /// A namespace's signed organisation policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    Sync(SyncArgs),
    Search(SearchArgs),
    Agents(AgentsArgs),
}

/// Serve a registry over HTTP (the API in docs/registry-api.md).
///
/// Storage: package files by SHA-256 in DIR/blobs, the index, keys and
/// tokens in DIR/registry.db. Runs until interrupted (Ctrl-C).
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7421")]
    pub listen: SocketAddr,
    /// Largest package accepted (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::grant_args::parse_size_arg)]
    pub max_upload: u64,
    /// PEM certificate chain: serve https (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// What the admin listings take: a namespace, the data directory, --json.
#[derive(clap::Args, Debug)]
pub(crate) struct NamespaceListArgs {
    /// The namespace.
    pub namespace: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum NamespaceCommand {
    /// Create a namespace.
    Create {
        /// Its name (lowercase letters, digits, `-`).
        name: String,
        /// An owner (repeatable).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Reads need a token of the namespace (default: anyone may read).
        #[arg(long)]
        private: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List namespaces.
    List {
        #[command(flatten)]
        data: DataArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum KeyCommand {
    /// Authorise a public key (`ed25519:<hex>`, from `coderclaw key export-public`)
    /// to sign the namespace's packages.
    Add {
        /// The namespace.
        namespace: String,
        /// The public key.
        public_key: String,
        /// It may also sign the namespace's organisation policy.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List a namespace's keys.
    List(NamespaceListArgs),
    /// Revoke a key: the registry accepts nothing new signed by it.
    Revoke {
        /// The namespace.
        namespace: String,
        /// Key id.
        key_id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Create a token (printed once; only its hash is stored).
    Create {
        /// The namespace it acts in.
        namespace: String,
        /// publish, read or yank.
        #[arg(long, value_parser = Scope::parse)]
        scope: Scope,
        /// Lifetime (e.g. 30d); default: no expiry.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        expires: Option<Duration>,
        #[command(flatten)]
        data: DataArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a namespace's tokens (ids and scopes, never the tokens).
    List(NamespaceListArgs),
    /// Revoke a token by id.
    Revoke {
        /// Token id (from `token list`).
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Sign an organisation policy file (`organizationPolicy:` YAML) with an
    /// admin key and publish it (needs a `publish` token of the namespace).
    Publish {
        /// The namespace.
        namespace: String,
        /// The policy file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The signing key's name (see `coderclaw key list`); the registry
        /// must list it as an admin key of the namespace.
        #[arg(long)]
        key: String,
        /// The policy's serial (default: one above the registry's current
        /// one). Clients refuse a serial below one they have seen, so after
        /// restoring a registry from a backup, give one above the last.
        #[arg(long)]
        serial: Option<u64>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Show the organisation policies in force from registries.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Fetch and verify the organisation policies of a registry's namespaces.
///
/// For every namespace under `registries.<name>.namespace-keys` in
/// config.yaml: downloads the signed policy, verifies it against those
/// admin keys, refuses one older than the cached one, and caches it; the
/// host enforces cached policies on every run and install.
#[derive(clap::Args, Debug)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Search a registry's skills and agents, with what each asks for.
///
/// Each result shows the capabilities its newest version requests (and
/// whether it is dangerous); `coderclaw skill info ID --registry NAME`
/// shows its input schema and whether you trust its signer.
#[derive(clap::Args, Debug)]
pub(crate) struct SearchArgs {
    /// Text in the id or description (default: everything).
    #[arg(default_value = "")]
    pub query: String,
    /// Only skills or only agents.
    #[arg(long, value_parser = str::parse::<Kind>)]
    pub kind: Option<Kind>,
    /// Only this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// List a namespace's shared agents.
#[derive(clap::Args, Debug)]
pub(crate) struct AgentsArgs {
    /// The namespace.
    pub namespace: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn when(t: Option<u64>) -> String {
    t.map_or("never".to_owned(), |t| coderclaw_core::units::format_utc(t.saturating_mul(1000)))
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Add(args) => crate::registries::add(args),
        Command::List(args) => crate::registries::list(args),
        Command::Remove(args) => crate::registries::remove(args),
        Command::Serve(args) => serve(args),
        Command::Namespace(NamespaceCommand::Create { name, owners, private, data }) => {
            let ns = data.open()?.create_namespace(&name, &owners, !private)?;
            println!("created namespace {} ({})", ns.name, if ns.public { "public reads" } else { "private" });
            println!("next: coderclaw registry key add {name} <public-key> --data {}", data.data.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Namespace(NamespaceCommand::List { data, json }) => {
            let all = data.open()?.namespaces()?;
            if json {
                print_json(&all)?;
            } else {
                for n in all {
                    let vis = if n.public { "public" } else { "private" };
                    println!("{:<24} {vis:<8} owners: {}", n.name, n.owners.join(", "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(cmd) => keys(cmd),
        Command::Token(cmd) => tokens(cmd),
        Command::Policy(PolicyCommand::Publish { namespace, file, key, serial, registry }) => {
            policy_publish(&namespace, &file, &key, serial, &registry)
        }
        Command::Policy(PolicyCommand::Show { json }) => {
            let security = home::open_checked(Permission::ConfigRead, "policy.show", ("policy", "organisation"))?;
            let org = &security.policy()?.org;
            if json {
                print_json(&serde_json::json!({ "policy": org, "sources": security.policy()?.sources }))?;
            } else {
                println!("organisation policy in force (local org-policy.yaml and registry policies merged):");
                println!("  enforceTrust:      {}", org.enforce_trust.unwrap_or(false));
                println!("  minimumTrustLevel: {}", org.minimum_trust_level.map_or("none".into(), |t| t.to_string()));
                println!("  requiredSkills:    {}", org.required_skills.join(", "));
                println!("  deniedSkills:      {}", org.denied_skills.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync(args) => {
            let reg = args.registry.open(None)?;
            if reg.entry.as_ref().is_none_or(|e| e.namespace_keys.is_empty()) {
                bail!(
                    "registry {} has no `namespace-keys` in config.yaml: list the admin keys whose policies you accept",
                    reg.name
                );
            }
            let report = refresh_policies(&crate::runtime()?, &reg)?;
            if args.json {
                print_json(&report)?;
            } else {
                for r in report {
                    println!("{}: {}", r.namespace, r.status);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Search(args) => search(args),
        Command::Agents(args) => {
            let reg = args.registry.open(None)?;
            let hits = crate::runtime()?.block_on(reg.client.agents(&args.namespace))?;
            print_hits(&hits, args.json)
        }
    }
}

/// `registry key add|list|revoke`.
fn keys(cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::Add { namespace, public_key, admin, data } => {
            let key = PublicKey::parse(&public_key)?;
            let k = data.open()?.add_key(&namespace, &key, admin)?;
            let role = if admin { "packages and the organisation policy" } else { "packages" };
            println!("key {} may sign {role} of `{namespace}`", k.key_id);
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::List(NamespaceListArgs { namespace, data, json }) => {
            let keys = data.open()?.keys(&namespace)?;
            if json {
                print_json(&keys)?;
            } else {
                for k in keys {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else if k.admin {
                        "admin"
                    } else {
                        "signer"
                    };
                    println!("{}  {state:<8} {}", k.key_id, k.public_key);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Revoke { namespace, key_id, data } => {
            let k = data.open()?.revoke_key(&namespace, &key_id)?;
            println!("revoked key {} of `{namespace}`", k.key_id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `registry token create|list|revoke`.
fn tokens(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create { namespace, scope, expires, data, json } => {
            let (token, info) = data.open()?.create_token(&namespace, scope, expires)?;
            if json {
                print_json(&serde_json::json!({ "token": token, "info": info }))?;
            } else {
                println!("{token}");
                eprintln!(
                    "token {} ({} in `{namespace}`, expires {}): shown once, store it now",
                    info.id,
                    scope.as_str(),
                    when(info.expires_at)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List(NamespaceListArgs { namespace, data, json }) => {
            let tokens = data.open()?.tokens(&namespace)?;
            if json {
                print_json(&tokens)?;
            } else {
                for t in tokens {
                    let state = if t.revoked_at.is_some() {
                        "revoked".to_owned()
                    } else {
                        format!("expires {}", when(t.expires_at))
                    };
                    println!("{}  {:<8} {state}", t.id, t.scope.as_str());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, data } => {
            let t = data.open()?.revoke_token(&id)?;
            println!("revoked token {} ({} in `{}`)", t.id, t.scope.as_str(), t.namespace);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `registry search` and `skill search`.
pub(crate) fn search(args: SearchArgs) -> Result<ExitCode> {
    let reg = args.registry.open(None)?;
    let hits = crate::runtime()?.block_on(reg.client.search(&args.query, args.kind, args.namespace.as_deref()))?;
    print_hits(&hits, args.json)
}

/// What a manifest asks for, in one line.
pub(crate) fn requests(c: &coderclaw_core::manifest::Capabilities) -> String {
    let mut parts = Vec::new();
    if !c.fs.is_empty() {
        let dirs: Vec<String> =
            c.fs.iter()
                .map(|d| {
                    let access = if d.access == coderclaw_core::grant::Access::Read { "read" } else { "read-write" };
                    format!("{} ({access})", d.path)
                })
                .collect();
        parts.push(format!("fs {}", dirs.join(", ")));
    }
    let mut list = |what: &str, items: Vec<String>| {
        if !items.is_empty() {
            parts.push(format!("{what} {}", items.join(", ")));
        }
    };
    list("http", c.http.iter().map(ToString::to_string).collect());
    list("env", c.env.iter().map(|e| crate::output::shown(e, 128)).collect());
    list("shell", c.shell.iter().map(|p| crate::output::shown(p, 256)).collect());
    list("skills", c.skills.iter().map(ToString::to_string).collect());
    if c.session_memory {
        parts.push("session memory".into());
    }
    if parts.is_empty() { "nothing (pure computation)".to_owned() } else { parts.join("; ") }
}

fn print_hits(hits: &[SearchHit], json: bool) -> Result<ExitCode> {
    if json {
        print_json(&hits)?;
    } else if hits.is_empty() {
        println!("nothing found");
    } else {
        for h in hits {
            let latest = h.latest.as_ref().map_or("(all yanked)".to_owned(), ToString::to_string);
            let (id, about) = (crate::output::shown(&h.id, 128), crate::output::shown(&h.description, 200));
            println!("{id:<32} {latest:<10} {:<6} {about}", h.kind.as_str());
            if let Some(c) = &h.capabilities {
                let dangerous = if h.dangerous { "  DANGEROUS" } else { "" };
                println!("    requests: {}{dangerous}", requests(c));
            }
        }
        println!(
            "capabilities as the registry lists them: `coderclaw skill info ID` verifies the signature and shows the input schema"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_publish(
    namespace: &str,
    file: &PathBuf,
    key: &str,
    serial: Option<u64>,
    registry: &RegistryArgs,
) -> Result<ExitCode> {
    let security = home::open_checked(Permission::ConfigRead, "key.use", ("key", key))?;
    let secret = security.home().secret_key(key)?;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let policy = OrgPolicy::from_yaml(&text, &file.display().to_string())?;
    let reg = registry.open(None)?;
    if registry.token.is_none() {
        bail!("publishing a policy needs a `publish` token of `{namespace}`: pass --token");
    }
    let rt = crate::runtime()?;
    let serial = match serial {
        Some(s) => s,
        None => rt.block_on(reg.client.org_policy(namespace))?.map_or(0, |d| d.serial) + 1,
    };
    let now = coderclaw_core::clock::now_secs();
    let doc = SignedOrgPolicy::sign(namespace, serial, now, policy, &secret);
    rt.block_on(reg.client.put_org_policy(&doc)).map_err(|e| anyhow!("the policy was not published: {e}"))?;
    println!("published the organisation policy of `{namespace}` (serial {}, signed by {})", doc.serial, doc.key_id);
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    let store = Arc::new(args.data.open()?);
    let config = RegistryConfig {
        listen: args.listen,
        max_upload_bytes: usize::try_from(args.max_upload).unwrap_or(usize::MAX),
        tls: args.tls_cert.zip(args.tls_key),
    };
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let server = coderclaw_registry_server::server::serve(store, config).await.map_err(|e| anyhow!(e))?;
        println!("registry serving {} (data {})", server.url(), args.data.data.display());
        let mut signals = crate::signals::Signals::new()?;
        tokio::select! {
            _ = signals.next() => {}
            _ = server.stopped() => {}
        }
        server.shutdown();
        Ok(ExitCode::SUCCESS)
    })
}
