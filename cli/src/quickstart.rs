//! `coderclaw quickstart`: build the example skills from this source tree and
//! run them end to end, in-process, on a small sample workspace.

use crate::build::{Artifact, build};
use crate::home;
use crate::output::print_json;
use anyhow::{Context, Result, bail};
use coderclaw::home::Home;
use coderclaw::{Access, CollectEvents, EventKind, Grant, Host, Skill};
use coderclaw_core::package::Package;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Build the example skills, sign and install them, and run them end to end
/// on a sample workspace.
///
/// Needs the coderclaw source tree (run it from a checkout) and the
/// wasm32-wasip2 Rust target. Uses its own state directory
/// ($CODERCLAW_HOME/quickstart), with its own signing key and trust store,
/// so your real trust store is never touched. Shows deny-by-default in
/// action: unsigned code refused, and the same skill refused without a grant
/// and allowed with one.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The coderclaw source tree (default: found from the current directory,
    /// else the tree this binary was built from).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Print the results as one JSON array.
    #[arg(long)]
    pub json: bool,
}

/// One step of the tour: what was run, under which grant, and what came out.
struct Step {
    title: &'static str,
    /// The output, or the error's code and message.
    outcome: Result<Value, (&'static str, String)>,
    /// The outcome the tour expects: success, or a refusal with one of
    /// these error codes (a crash or timeout is never "as expected").
    expect: Result<(), &'static [&'static str]>,
    denials: Vec<String>,
}

impl Step {
    fn as_expected(&self) -> bool {
        match (&self.outcome, self.expect) {
            (Ok(_), Ok(())) => true,
            (Err((code, _)), Err(codes)) => codes.contains(code),
            _ => false,
        }
    }
}

/// A refusal: the skill was denied a capability or failed for lack of one.
const REFUSED: Result<(), &[&str]> = Err(&["denied", "skill-failed"]);

fn source_tree(given: Option<&Path>) -> Result<PathBuf> {
    let is_tree = |d: &Path| d.join("skills/Cargo.toml").is_file() && d.join("wit/skill.wit").is_file();
    if let Some(d) = given {
        return if is_tree(d) { Ok(d.to_path_buf()) } else { bail!("{} is not a coderclaw source tree", d.display()) };
    }
    let cwd = std::env::current_dir()?;
    if let Some(d) = cwd.ancestors().find(|d| is_tree(d)) {
        return Ok(d.to_path_buf());
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if is_tree(&built_from) {
        return Ok(built_from);
    }
    bail!("cannot find the coderclaw source tree (skills/ and wit/): run quickstart from a checkout or pass --source")
}

/// A few files to work on, one with a planted (AWS's documented example) key.
fn sample_workspace() -> Result<PathBuf> {
    let dir = home::state_dir()?.join("quickstart").join("workspace");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot reset {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("README.md"), "# sample\n\nA tiny project for the coderclaw quickstart.\n")?;
    std::fs::write(dir.join("src/main.rs"), "fn main() {\n    println!(\"hello\");\n}\n")?;
    std::fs::write(dir.join("deploy.env"), "REGION=eu-west-1\nAWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n")?;
    Ok(dir)
}

pub(crate) fn main(args: Args) -> Result<ExitCode> {
    let tree = source_tree(args.source.as_deref())?;
    let writes = home::state_dir()?.join("quickstart");
    eprintln!(
        "quickstart writes only under {} (a key, trust store and installed skills in home/, a sample \
         workspace in workspace/); your own keys, trust and skills are not touched",
        writes.display()
    );
    eprintln!("building the example skills in {} (the first build takes a minute)…", tree.join("skills").display());
    let artifacts = build(&tree.join("skills"), true, args.json)?;
    let state = install_examples(&tree, &artifacts)?;
    let host = Host::builder().compiled_cache(state.compiled_cache_dir()).build()?;
    let workspace = sample_workspace()?;
    let steps = tour(&host, &state, &artifacts, &workspace)?;
    let surprises = print_steps(&steps, args.json)?;
    let stats = host.stats();
    if !args.json {
        println!(
            "\n{} steps, {} as expected. Components compiled: {}, loaded from the compiled-code cache: {} (run again to see the cache).",
            steps.len(),
            steps.len() - surprises,
            stats.compiled,
            stats.disk_cache_hits
        );
        println!("sample workspace: {}", workspace.display());
        println!("quickstart state (key, trust store, installed skills): {}", state.root().display());
    }
    Ok(if surprises == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn artifact<'a>(artifacts: &'a [Artifact], name: &str) -> Result<&'a Artifact> {
    artifacts.iter().find(|a| a.name == name).with_context(|| format!("the build produced no {name}.wasm"))
}

/// A private state directory (its own key, trust store and installs) with
/// the example skills signed and installed.
fn install_examples(tree: &Path, artifacts: &[Artifact]) -> Result<Home> {
    let state = Home::open(home::state_dir()?.join("quickstart").join("home"))?;
    let key = match state.secret_key("quickstart") {
        Ok(k) => k,
        Err(_) => {
            state.generate_key("quickstart")?;
            state.secret_key("quickstart")?
        }
    };
    state.trust_add("team", &key.public())?;
    let now = coderclaw_core::clock::now_secs();
    for crate_name in ["echo", "word-count", "shell-exec", "security-scanner", "code-reviewer"] {
        let manifest = crate::package::read_manifest(&tree.join("skills").join(crate_name).join("skill.toml"))?;
        let component = std::fs::read(&artifact(artifacts, &crate_name.replace('-', "_"))?.path)?;
        state.dangerous_install_ungated(&Package::sign(&manifest, component, &key, now).to_bytes())?;
    }
    Ok(state)
}

/// What one step produced, and the capabilities the host denied on the way.
type Outcome = (Result<Value, (&'static str, String)>, Vec<String>);

fn run(runtime: &tokio::runtime::Runtime, host: &Host, skill: &Skill, input: Value, grant: &Grant) -> Outcome {
    let events = Arc::new(CollectEvents::default());
    let result = runtime.block_on(host.run_with_events(skill, &input.to_string(), grant, events.clone()));
    let denials = events
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Capability { allowed: false, capability, detail, .. } => Some(format!("{capability}: {detail}")),
            _ => None,
        })
        .collect();
    let outcome = result.map(|o| serde_json::from_str(&o).unwrap_or(Value::String(o)));
    (outcome.map_err(|e| (e.code(), e.to_string())), denials)
}

/// The steps: unsigned code refused, each example skill without and with
/// the grant it needs, and the agent invoking two skills.
fn tour(host: &Host, state: &Home, artifacts: &[Artifact], workspace: &Path) -> Result<Vec<Step>> {
    let load = |id: &str| -> Result<Skill> { Ok(host.load_verified(&*state.load_installed(id)?)?) };
    let read = Grant::builder().dir(workspace, ".", Access::Read);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let run = |skill: &Skill, input: Value, grant: &Grant| run(&runtime, host, skill, input, grant);
    let mut steps = Vec::new();
    let mut step = |title, expect, (outcome, denials)| steps.push(Step { title, outcome, expect, denials });

    let unsigned =
        host.load_file(&artifact(artifacts, "echo")?.path).map(|_| Value::Null).map_err(|e| (e.code(), e.to_string()));
    step("an unsigned component is refused before it is compiled", Err(&["unsigned-refused"]), (unsigned, Vec::new()));

    let echo = load("team/echo")?;
    step(
        "team/echo, signed and installed: the smallest skill, no capabilities",
        Ok(()),
        run(&echo, json!({"hello": "world"}), &Grant::deny_all()),
    );

    let wc = load("team/word-count")?;
    step(
        "word-count without a filesystem grant (denied by default)",
        REFUSED,
        run(&wc, json!({"path": "."}), &Grant::deny_all()),
    );
    step(
        "word-count with --allow-read on the sample workspace",
        Ok(()),
        run(&wc, json!({"path": "."}), &read.clone().build()?),
    );

    let scanner = load("team/security-scanner")?;
    step("security-scanner finds the planted key", Ok(()), run(&scanner, json!({"path": "."}), &read.clone().build()?));

    let reviewer = load("team/code-reviewer")?;
    host.register("team/security-scanner", scanner.clone(), read.clone().build()?);
    host.register("team/word-count", wc.clone(), read.clone().build()?);
    let agent_grant = read.clone().skill("team/security-scanner").skill("team/word-count").build()?;
    step("code-reviewer agent invokes both skills", Ok(()), run(&reviewer, json!({"path": "."}), &agent_grant));

    let shell = load("team/shell-exec")?;
    let ls = json!({"program": "ls", "args": ["-1"]});
    step(
        "shell-exec `ls` without a shell grant (denied, nothing runs)",
        REFUSED,
        run(&shell, ls.clone(), &read.clone().build()?),
    );
    step("shell-exec `ls` with --allow-shell ls", Ok(()), run(&shell, ls, &read.clone().shell("ls").build()?));
    Ok(steps)
}

/// Prints the steps (as one JSON array with `json`); returns how many did
/// not go as expected.
fn print_steps(steps: &[Step], json: bool) -> Result<usize> {
    if json {
        let list: Vec<Value> = steps
            .iter()
            .map(|s| match &s.outcome {
                Ok(v) => json!({"step": s.title, "ok": true, "output": v, "denials": s.denials}),
                Err((code, e)) => {
                    json!({"step": s.title, "ok": false, "error": {"code": code, "message": e}, "denials": s.denials})
                }
            })
            .collect();
        print_json(&list)?;
    }
    let mut surprises = 0;
    for s in steps {
        let as_expected = s.as_expected();
        surprises += usize::from(!as_expected);
        if json {
            continue;
        }
        println!("\n{} {}", if as_expected { "✓" } else { "✗ UNEXPECTED:" }, s.title);
        match &s.outcome {
            Ok(v) => println!("{}", summarise(v)),
            Err((_, e)) => println!("  refused: {e}"),
        }
        for d in &s.denials {
            println!("  host denied {d}");
        }
    }
    Ok(surprises)
}

/// Pretty JSON, with long arrays cut so the tour stays readable.
fn summarise(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(obj) = v.as_object_mut() {
        for (_, field) in obj.iter_mut() {
            if let Some(items) = field.as_array_mut().filter(|a| a.len() > 3) {
                let more = items.len() - 3;
                items.truncate(3);
                items.push(Value::String(format!("… {more} more")));
            }
        }
    }
    serde_json::to_string_pretty(&v)
        .unwrap_or_default()
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
