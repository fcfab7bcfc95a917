//! `coderclaw skill run`: run one component under an explicit grant.

use crate::grant_args::GrantArgs;
use crate::home;
use crate::output::event_line;
use anyhow::{Context, Result, bail};
use coderclaw_core::manifest::SkillId;
use coderclaw_host::home::Home;
use coderclaw_host::{CollectEvents, Error, EventSink, Host, RunEvent, Skill};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Run a skill and print its JSON output.
///
/// SKILL is an installed skill id (`team/word-count`): its package is
/// verified against the trust store again before anything is compiled. A raw
/// .wasm file runs only with --dangerous-allow-unsigned.
///
/// Everything is denied unless granted with an --allow-* flag. Logs, progress
/// and capability decisions go to stderr; the output JSON goes to stdout.
///
/// Exit codes: 0 success; 1 the component could not be loaded or a value is
/// invalid; 2 the command line could not be parsed; 3 the skill returned an
/// error (invalid input, denied, failed); 4 the run was stopped (timeout,
/// memory limit, stack overflow, crash).
///
/// Example:
///   coderclaw skill run team/word-count --input '{"path": "."}' --allow-read .
#[derive(clap::Args, Debug)]
pub struct Args {
    /// An installed skill id, or a .wasm file (with --dangerous-allow-unsigned).
    pub skill: String,
    /// Input JSON (default `{}`).
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input JSON from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    #[command(flatten)]
    pub grant: GrantArgs,
    /// For agents: make skill ID invocable through skills.invoke: an
    /// installed id, or ID=PATH for a .wasm file (with
    /// --dangerous-allow-unsigned). It runs under this run's grant, never wider.
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

pub fn main(args: Args) -> Result<ExitCode> {
    let input = read_input(&args)?;
    let home = home::open()?;
    let mut builder = Host::builder();
    if !args.no_cache {
        builder = builder.compiled_cache(home.compiled_cache_dir());
    }
    if args.dangerous_allow_unsigned {
        tracing::warn!("--dangerous-allow-unsigned: unsigned components may run");
        builder = builder.dangerous_allow_unsigned();
    }
    let host = builder.build()?;
    let started = Instant::now();
    let skill = match load(&host, &home, &args.skill, None) {
        Ok(s) => s,
        Err(e) => return Ok(report_error(&args, &e, None, &[])),
    };
    let base = args.grant.builder()?;
    // Nested skills run under the agent's own grant; the host narrows it again.
    let nested_grant = base.clone().build()?;
    let mut grant = base;
    for spec in &args.with_skill {
        let (id, path) = match spec.split_once('=') {
            Some((id, path)) => (id, Some(path)),
            None => (spec.as_str(), None),
        };
        SkillId::parse(id).map_err(|e| anyhow::anyhow!("--with-skill: {e}"))?;
        let nested = match load(&host, &home, id, path) {
            Ok(s) => s,
            Err(e) => return Ok(report_error(&args, &e, None, &[])),
        };
        grant = grant.skill(id);
        host.register(id, nested, nested_grant.clone());
    }
    let grant = grant.build()?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;

    let collected = Arc::new(CollectEvents::default());
    let sink: Arc<dyn EventSink> =
        if args.json { collected.clone() } else { Arc::new(|e: RunEvent| eprintln!("{}", event_line(&e))) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let run_started = Instant::now();
    let result = runtime.block_on(host.run_with_events(&skill, &input, &grant, sink));
    let run_ms = run_started.elapsed().as_secs_f64() * 1000.0;
    let events = collected.events();
    let output = match result {
        Ok(o) => o,
        Err(e) => return Ok(report_error(&args, &e, Some(&skill), &events)),
    };
    let parsed: Value = serde_json::from_str(&output).unwrap_or(Value::String(output));
    if args.json {
        let report = json!({
            "ok": true,
            "skill": skill.name(),
            "digest": skill.digest().to_hex(),
            "load": skill.source(),
            "load_ms": load_ms,
            "run_ms": run_ms,
            "output": parsed,
            "events": events,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&parsed)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads `skill` as an installed id (verified now) or, when it names a file
/// (or `path` is given), as an unsigned component the host may refuse.
fn load(host: &Host, home: &Home, skill: &str, path: Option<&str>) -> Result<Skill, Error> {
    let file = path.map(PathBuf::from).or_else(|| {
        let p = PathBuf::from(skill);
        (p.exists() || skill.ends_with(".wasm")).then_some(p)
    });
    match file {
        Some(p) => host.load_file(p),
        None => match home.load_installed(skill) {
            Ok(package) => host.load_verified(&package),
            Err(e) => Err(Error::Package { name: skill.to_owned(), message: e.to_string() }),
        },
    }
}

fn read_input(args: &Args) -> Result<String> {
    let text = match (&args.input, &args.input_file) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
        }
        (None, Some(p)) => std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        (None, None) => "{}".to_owned(),
    };
    if let Err(e) = serde_json::from_str::<Value>(&text) {
        bail!("the input is not valid JSON ({e}): pass a JSON value, e.g. --input '{{\"path\": \".\"}}'");
    }
    Ok(text)
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Skill { .. } => 3,
        Error::Timeout { .. } | Error::MemoryLimit { .. } | Error::StackOverflow { .. } | Error::Trap { .. } => 4,
        _ => 1,
    }
}

fn report_error(args: &Args, e: &Error, skill: Option<&Skill>, events: &[RunEvent]) -> ExitCode {
    if args.json {
        let report = json!({
            "ok": false,
            "skill": skill.map(Skill::name),
            "error": { "code": e.code(), "message": e.to_string() },
            "events": events,
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        eprintln!("error: {e}");
    }
    ExitCode::from(exit_code(e))
}
