//! `coderclaw skill run`: decide a run with the security model, then run
//! the component under exactly the decided grant.

use crate::grant_args::{GrantArgs, WorkspaceArgs};
use crate::home;
use crate::output::event_line;
use crate::output::print_json;
use anyhow::{Result, bail};
use coderclaw::home::Home;
use coderclaw::security::Security;
use coderclaw::{CollectEvents, Error, EventSink, Host, NestedCaller, Planner, RunEvent, Skill};
use coderclaw_core::decision::{Action, Decision, Offer, Reason, Subject, Target, grant_json};
use coderclaw_core::manifest::{Kind, Manifest, SkillId};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Run a skill and print its JSON output.
///
/// SKILL is an installed skill id (`team/word-count`): its package is
/// verified against the trust store again before anything is compiled. A raw
/// .wasm file runs only with --dangerous-allow-unsigned.
///
/// Every run is decided by the security model: the session's roles, this
/// device's trust, the host configuration, the organisation policy and the
/// workspace's `.coderClaw/security.yaml` (see `coderclaw policy check`).
/// A signed skill gets what its manifest requests and policy allows: its
/// logical directory `workspace` is --workspace (default: the current
/// directory), read-only unless --workspace-write. An unsigned build gets exactly the --allow-* flags. Agents
/// can invoke the installed skills their manifest lists; each invocation
/// is decided again. Decisions are recorded in the audit log.
///
/// Logs, progress and capability decisions go to stderr; the output JSON
/// goes to stdout.
///
/// Exit codes: 0 success; 1 the component could not be loaded or a value is
/// invalid; 2 the command line could not be parsed; 3 the skill returned an
/// error or policy refused the run; 4 the run was stopped (timeout, memory
/// limit, stack overflow, crash).
///
/// Example:
///   coderclaw skill run team/word-count --input '{"path": "."}' --workspace ./repo
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// An installed skill id, or a .wasm file (with --dangerous-allow-unsigned).
    pub skill: String,
    /// Input JSON (default `{}`), `@FILE` to read it from a file, or `-`
    /// to read it from stdin.
    #[arg(long, value_name = "JSON|@FILE|-", conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input JSON from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
    #[command(flatten)]
    pub grant: GrantArgs,
    /// For agents: make skill ID invocable through skills.invoke: an
    /// installed id, or ID=PATH for a .wasm file (with
    /// --dangerous-allow-unsigned). Installed skills the agent's manifest
    /// lists are available without this.
    #[arg(long = "with-skill", value_name = "ID[=PATH]")]
    pub with_skill: Vec<String>,
    /// DANGEROUS: allow running unsigned .wasm files, skipping the check of
    /// who wrote them. For developing skills; logged as a warning.
    #[arg(long)]
    pub dangerous_allow_unsigned: bool,
    /// Print one JSON object (output, events, timing, errors) instead of
    /// the bare output; errors are then on stdout too.
    #[arg(long)]
    pub json: bool,
    /// Do not read or write the compiled-code cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// A loaded component and the manifest its run is decided on. An unsigned
/// build also carries its offer (exactly its --allow-* flags).
struct Loaded {
    component: Component,
    manifest: Manifest,
    unsigned_offer: Option<Offer>,
}

/// A component ready to compile: an installed package (verified, compiled
/// only once policy allows it) or an unsigned build (compiled on load, so
/// the host's refusal of unsigned code comes first).
enum Component {
    Compiled(Skill),
    Verified(std::sync::Arc<coderclaw::VerifiedPackage>),
}

impl Loaded {
    /// What the decision judges: unsigned code as such, whatever kind its
    /// flags made it.
    fn target(&self) -> Target<'_> {
        match self.unsigned_offer {
            Some(_) => Target::unsigned(&self.manifest),
            None => Target::from_manifest(&self.manifest),
        }
    }

    fn compile(self, host: &Host) -> Result<Skill, Error> {
        match self.component {
            Component::Compiled(skill) => Ok(skill),
            Component::Verified(package) => host.load_verified(&package),
        }
    }
}

pub(crate) fn main(args: Args) -> Result<ExitCode> {
    let input = read_input(&args)?;
    let workspace = args.workspace.dir()?;
    let security = home::open_security(Some(&workspace))?;
    for warning in security.policy_warnings() {
        eprintln!("warning: {warning}");
    }
    let subject = match security.subject(home::session()) {
        Ok(s) => s,
        Err(e) => {
            let message = crate::hints::with_hint(e.to_string(), crate::hints::security(&e));
            return Ok(report_denied(&args, &message, &[]));
        }
    };
    let host = host(&args, &security)?;
    let started = Instant::now();
    let with_skill: Vec<(&str, Option<&str>)> = args
        .with_skill
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((id, path)) => (id, Some(path)),
            None => (spec.as_str(), None),
        })
        .collect();
    let nested_ids: Vec<String> = with_skill.iter().map(|(id, _)| id.to_string()).collect();
    let main = match load(&host, security.home(), &args.skill, None, &args.grant, &nested_ids) {
        Ok(l) => l,
        Err(e) => return Ok(report_error(&args, &e, None, &[])),
    };
    let offer = offer(&args, &main, &workspace)?;
    let decision = security.decide(&subject, main.target(), Action::Run, Some(&workspace), &offer)?;
    if !decision.allowed {
        return Ok(report_denied(&args, &format!("policy refuses {}", main.manifest.id), &decision.reasons));
    }
    for note in &decision.narrowed {
        tracing::info!("not granted: {note}");
    }
    let main_manifest = main.manifest.clone();
    // Nested invocations are decided like a task's, for this caller.
    let planner = Planner::new(security.clone(), host.clone(), workspace.clone(), offer.clone());
    let skill = match main.compile(&host) {
        Ok(s) => s,
        Err(e) => return Ok(report_error(&args, &e, None, &[])),
    };

    if let Err(e) = register_nested(&args, &host, &security, &planner, &subject, &main_manifest, &with_skill)? {
        return Ok(report_error(&args, &e, None, &[]));
    }
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;

    let auditor = (security.clone(), subject.user.clone());
    run_and_print(&args, &host, &skill, &input, &decision, load_ms, auditor)
}

/// The host for this run: the compiled-code cache unless --no-cache, and
/// unsigned code only with --dangerous-allow-unsigned.
fn host(args: &Args, security: &Security) -> Result<Host> {
    let mut builder = Host::builder();
    if !args.no_cache {
        builder = builder.compiled_cache(security.home().compiled_cache_dir());
    }
    if args.dangerous_allow_unsigned {
        tracing::warn!("--dangerous-allow-unsigned: unsigned components may run");
        builder = builder.dangerous_allow_unsigned();
    }
    Ok(builder.build()?)
}

/// What this caller offers the run: an unsigned build's --allow-* flags, or
/// for a signed skill the workspace (its manifest asks for the rest).
fn offer(args: &Args, main: &Loaded, workspace: &Path) -> Result<Offer> {
    Ok(match &main.unsigned_offer {
        Some(offer) => offer.clone(),
        None if args.grant.any_capability() => bail!(
            "{} is a signed skill: it gets what its manifest requests and policy allows, not --allow-read/\
             --allow-write/--allow-http/--allow-shell (see `coderclaw policy check --skill {}`); use \
             --workspace for its directory",
            args.skill,
            args.skill
        ),
        None => args.workspace.offer(workspace, args.grant.env_values()?, args.grant.ceiling()),
    })
}

/// Registers the nested skills: those given with --with-skill, then the
/// installed ones the agent's manifest lists. Each invocation is decided
/// again, for this caller. The inner error is a load failure to report.
fn register_nested(
    args: &Args,
    host: &Host,
    security: &Security,
    planner: &Planner,
    subject: &Subject,
    main_manifest: &Manifest,
    with_skill: &[(&str, Option<&str>)],
) -> Result<Result<(), Error>> {
    let mut nested: Vec<(String, Option<&str>)> = with_skill.iter().map(|(id, path)| (id.to_string(), *path)).collect();
    for id in &main_manifest.capabilities.skills {
        if !nested.iter().any(|(n, _)| n == id.as_str()) && security.home().info(id.as_str()).is_ok() {
            nested.push((id.to_string(), None));
        }
    }
    for (id, path) in nested {
        SkillId::parse(&id).map_err(|e| anyhow::anyhow!("--with-skill: {e}"))?;
        let child = match load(host, security.home(), &id, path, &args.grant, &[]) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let manifest = child.manifest.clone();
        let unsigned = child.unsigned_offer.is_some();
        let compiled = match child.compile(host) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        planner.register_compiled(&id, compiled, manifest, unsigned, NestedCaller::Fixed(subject.clone()));
    }
    Ok(Ok(()))
}

/// Runs the skill under `grant`, streaming its events to stderr (or
/// collecting them for --json), and prints the output.
fn run_and_print(
    args: &Args,
    host: &Host,
    skill: &Skill,
    input: &str,
    decision: &Decision,
    load_ms: f64,
    (security, user): (Arc<Security>, String),
) -> Result<ExitCode> {
    let (grant, narrowed) = (&decision.grant, &decision.narrowed);
    let collected = Arc::new(CollectEvents::default());
    let sink: Arc<dyn EventSink> =
        if args.json { collected.clone() } else { Arc::new(|e: RunEvent| eprintln!("{}", event_line(&e))) };
    let sink = coderclaw::denial_audit::audit_denials(sink, security, None, user);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let run_started = Instant::now();
    let result = runtime.block_on(host.run_with_events(skill, input, grant, sink));
    let run_ms = run_started.elapsed().as_secs_f64() * 1000.0;
    let events = collected.events();
    let output = match result {
        Ok(o) => o,
        Err(e) => return Ok(report_error(args, &e, Some(skill), &events)),
    };
    let parsed: Value = serde_json::from_str(&output).unwrap_or(Value::String(output));
    // A failure verdict: the output is printed all the same (it is the
    // findings), and the exit code says the skill judged the run failed.
    let verdict = coderclaw_core::task::skill_verdict(&parsed);
    if args.json {
        let report = json!({
            "ok": verdict.is_none(),
            "verdict": verdict.as_ref().map(|v| json!({ "code": v.code, "message": v.message })),
            "skill": skill.name(),
            "digest": skill.digest().to_hex(),
            "load": skill.source(),
            "load_ms": load_ms,
            "run_ms": run_ms,
            "grant": grant_json(grant),
            "narrowed": narrowed,
            "output": parsed,
            "events": events,
            "events_dropped": collected.dropped(),
        });
        print_json(&report)?;
    } else {
        // The skill's output exactly as it returned it.
        println!("{}", serde_json::to_string_pretty(&parsed)?);
        if let Some(v) = &verdict {
            eprintln!("error: {}", v.message);
        }
    }
    Ok(if verdict.is_some() { ExitCode::from(VERDICT_EXIT) } else { ExitCode::SUCCESS })
}

/// The exit code of a run whose skill returned a failure verdict.
pub(crate) const VERDICT_EXIT: u8 = 5;

/// Loads `skill` as an installed id (verified now, compiled later) or, when
/// it names a file (or `path` is given), as an unsigned component the host
/// may refuse, described by a manifest built from the --allow-* flags.
fn load(
    host: &Host,
    home: &Home,
    skill: &str,
    path: Option<&str>,
    flags: &GrantArgs,
    nested: &[String],
) -> Result<Loaded, Error> {
    let file = path.map(PathBuf::from).or_else(|| {
        let p = PathBuf::from(skill);
        (p.exists() || skill.ends_with(".wasm")).then_some(p)
    });
    match file {
        Some(p) => {
            // Unsigned code never takes a signed skill's id (and so its
            // policy): `--with-skill team/x=PATH` is decided as `local/x`,
            // a file run directly as `local/<file stem>`.
            let id = match path {
                Some(_) => format!("local/{}", skill.rsplit('/').next().unwrap_or_default()),
                None => unsigned_id(&p),
            };
            let skill = host.load_file(&p)?;
            let kind = if nested.is_empty() { Kind::Skill } else { Kind::Agent };
            let (manifest, offer) = flags
                .as_request(&id, kind, nested)
                .map_err(|e| Error::Package { name: p.display().to_string(), message: format!("{e:#}") })?;
            Ok(Loaded { component: Component::Compiled(skill), manifest, unsigned_offer: Some(offer) })
        }
        None => match home.load_installed(skill) {
            Ok(package) => {
                let manifest = package.manifest().clone();
                Ok(Loaded { component: Component::Verified(package), manifest, unsigned_offer: None })
            }
            Err(e) => {
                let message = crate::hints::with_hint(e.to_string(), crate::hints::home(&e));
                Err(Error::Package { name: skill.to_owned(), message })
            }
        },
    }
}

/// `local/<file stem>`, so policies can name development builds too
/// (`skillId: shell-exec` matches `local/shell-exec`).
fn unsigned_id(path: &std::path::Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let id = format!("local/{}", name.trim_matches('-'));
    if SkillId::parse(&id).is_ok() { id } else { "local/unsigned".to_owned() }
}

fn report_denied(args: &Args, message: &str, reasons: &[Reason]) -> ExitCode {
    if args.json {
        let report = json!({
            "ok": false,
            "error": { "code": "denied", "message": message },
            "reasons": reasons,
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        eprintln!("error: {message}");
        for r in reasons {
            eprintln!("  - [{}] {}", r.code, r.message);
            if let Some(hint) = crate::hints::for_reason(r.code) {
                eprintln!("    hint: {hint}");
            }
        }
    }
    ExitCode::from(3)
}

fn read_input(args: &Args) -> Result<String> {
    match (&args.input, &args.input_file) {
        (None, Some(p)) if p.as_os_str() == "-" => crate::input::resolve(Some("-")),
        (None, Some(p)) => crate::input::resolve(Some(&format!("@{}", p.display()))),
        (input, _) => crate::input::resolve(input.as_deref()),
    }
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Skill { .. } | Error::InputRefused { .. } => 3,
        Error::Timeout { .. } | Error::MemoryLimit { .. } | Error::StackOverflow { .. } | Error::Trap { .. } => 4,
        _ => 1,
    }
}

/// Where and why an input failed the skill's schema (empty otherwise).
fn input_problems(e: &Error) -> &[coderclaw_core::input_schema::Mismatch] {
    match e {
        Error::InputRefused { problems, .. } => problems,
        _ => &[],
    }
}

fn report_error(args: &Args, e: &Error, skill: Option<&Skill>, events: &[RunEvent]) -> ExitCode {
    if args.json {
        let report = json!({
            "ok": false,
            "skill": skill.map(Skill::name),
            "error": { "code": e.code(), "message": e.to_string(), "problems": input_problems(e) },
            "events": events,
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        eprintln!("error: {e}");
        if let Some(hint) = crate::hints::sandbox(e) {
            eprintln!("hint: {hint}");
        }
    }
    ExitCode::from(exit_code(e))
}
