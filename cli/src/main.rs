//! `coderclaw`: build, run and manage sandboxed WebAssembly skills.

// Doc comments here are clap help text, read in a terminal: URLs stay bare.
#![allow(rustdoc::bare_urls)]

mod audit;
mod build;
mod cluster;
mod doctor;
mod grant_args;
mod hints;
mod home;
mod identity;
mod input;
mod install;
mod keys;
mod man;
mod mcp;
mod new;
mod output;
mod package;
mod policy;
mod quickstart;
mod registries;
mod registry;
mod reload;
mod run;
mod settings;
mod signals;
mod task;
mod trust;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// A server allocates on every worker thread for each task; at full load
// glibc's malloc and free took a fifth of the CPU (tasks bench profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run WebAssembly skills in a sandbox, with exactly the capabilities you grant.
///
/// Skills are WebAssembly components (wasm32-wasip2) built against coderclaw-sdk.
/// By default a skill can touch nothing: no files, no network, no environment,
/// no programs. A signed skill gets what its manifest requests and the
/// security policy allows: roles (RBAC), this device's trust, the host
/// configuration ($CODERCLAW_HOME/config.yaml), the organisation policy and
/// the repository's .coderClaw/security.yaml (`coderclaw policy check`).
///
/// Skills are signed packages: a skill runs only when its Ed25519 signature is
/// by a key your trust store trusts for the skill's namespace (`coderclaw trust`).
///
/// State (keys, trust store, installed skills, compiled-code cache) lives in
/// $CODERCLAW_HOME (default ~/.coderclaw).
/// Set CODERCLAW_LOG (e.g. CODERCLAW_LOG=debug) for diagnostic logs on stderr.
#[derive(Parser)]
#[command(name = "coderclaw", version, propagate_version = true)]
struct Cli {
    /// Act in this session (a token from `coderclaw login`). Without one you
    /// act as the local OS user with security.defaultRoles, unless
    /// security.requireAuth is on.
    #[arg(long, global = true, value_name = "TOKEN", env = "CODERCLAW_SESSION", hide_env_values = true)]
    session: Option<String>,
    /// Colours and other terminal escapes on stderr: auto (when stderr is a
    /// terminal and NO_COLOR is unset), always or never. Diagnostic logs
    /// (CODERCLAW_LOG) are plain text without them.
    #[arg(long, global = true, value_enum, default_value_t, env = "CODERCLAW_COLOR", value_name = "WHEN")]
    color: settings::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build, sign, install, run and scaffold skills.
    #[command(subcommand)]
    Skill(SkillCommand),
    #[command(subcommand)]
    Key(keys::Command),
    #[command(subcommand)]
    Trust(trust::Command),
    #[command(subcommand)]
    Audit(audit::Command),
    #[command(subcommand)]
    Policy(policy::Command),
    Login(identity::LoginArgs),
    Logout(identity::LogoutArgs),
    /// List and revoke sessions.
    #[command(subcommand)]
    Session(identity::SessionCommand),
    /// Manage local users and their API tokens.
    #[command(subcommand)]
    User(identity::UserCommand),
    /// Devices and their trust levels.
    #[command(subcommand)]
    Device(identity::DeviceCommand),
    Quickstart(quickstart::Args),
    /// Submit, follow, cancel and answer tasks.
    #[command(subcommand)]
    Task(task::Command),
    Serve(task::ServeArgs),
    /// Look at a distributed cluster's nodes and queue.
    #[command(subcommand)]
    Cluster(cluster::Command),
    Mcp(mcp::Args),
    Status(task::StatusArgs),
    /// Report what this machine can enforce: the kernel confinement of
    /// shell.exec children (Landlock, namespaces, rlimits) against
    /// `shell.confinement` in config.yaml.
    Doctor(doctor::Args),
    /// Use team registries, or run and administer one.
    ///
    /// Developers: `registry add NAME URL --default --trust NAMESPACE` once,
    /// then `coderclaw skill search` and `coderclaw skill install team/x`.
    /// A team runs one registry (`serve`); admins create namespaces (teams),
    /// authorise signing keys and hand out scoped tokens on that machine.
    #[command(subcommand)]
    Registry(registry::Command),
    /// Print a shell completion script on stdout.
    ///
    /// bash: `coderclaw completions bash > ~/.local/share/bash-completion/completions/coderclaw`;
    /// zsh: `coderclaw completions zsh > "${fpath[1]}/_coderclaw"`;
    /// fish: `coderclaw completions fish > ~/.config/fish/completions/coderclaw.fish`;
    /// PowerShell: `coderclaw completions powershell >> $PROFILE`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages: one per command and subcommand.
    ///
    /// With --dir, every page goes there (coderclaw.1, coderclaw-skill-run.1,
    /// ...): `coderclaw man --dir ~/.local/share/man/man1`, then
    /// `man coderclaw-skill-run`. Without, the main page is printed on stdout.
    Man {
        /// Where to write every page (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum SkillCommand {
    // Each command's help is the doc comment of its Args struct.
    Run(run::Args),
    Build(build::Args),
    New(new::Args),
    Sign(package::SignArgs),
    Verify(package::VerifyArgs),
    Install(install::InstallArgs),
    Update(install::UpdateArgs),
    Publish(install::PublishArgs),
    Yank(install::YankArgs),
    List(package::ListArgs),
    Info(package::InfoArgs),
    Search(registry::SearchArgs),
    Remove(package::RemoveArgs),
}

/// `coderclaw man`.
fn manual(dir: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    let command = <Cli as clap::CommandFactory>::command();
    match dir {
        Some(dir) => {
            let written = man::write(command, &dir)?;
            eprintln!("wrote {} manual pages to {}", written.len(), dir.display());
        }
        None => {
            use std::io::Write as _;
            let (_, main_page) = man::pages(command)?.remove(0);
            std::io::stdout().write_all(&main_page)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The tokio runtime a command's async work runs on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use std::io::IsTerminal as _;
    let settings =
        settings::Settings::resolve(cli.session, cli.color, std::io::stderr().is_terminal(), &|k| std::env::var_os(k));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CODERCLAW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(settings.color)
        .with_writer(std::io::stderr)
        .init();
    settings::install(settings);
    let result = match cli.command {
        Command::Skill(SkillCommand::Run(args)) => run::main(args),
        Command::Skill(SkillCommand::Build(args)) => build::main(args),
        Command::Skill(SkillCommand::New(args)) => new::main(args),
        Command::Skill(SkillCommand::Sign(args)) => package::sign(args),
        Command::Skill(SkillCommand::Verify(args)) => package::verify(args),
        Command::Skill(SkillCommand::Install(args)) => install::install(args),
        Command::Skill(SkillCommand::Search(args)) => registry::search(args),
        Command::Skill(SkillCommand::Update(args)) => install::update(args),
        Command::Skill(SkillCommand::Publish(args)) => install::publish(args),
        Command::Skill(SkillCommand::Yank(args)) => install::yank(args),
        Command::Skill(SkillCommand::List(args)) => package::list(args),
        Command::Skill(SkillCommand::Info(args)) => package::info(args),
        Command::Skill(SkillCommand::Remove(args)) => package::remove(args),
        Command::Key(cmd) => keys::main(cmd),
        Command::Trust(cmd) => trust::main(cmd),
        Command::Audit(cmd) => audit::main(cmd),
        Command::Policy(cmd) => policy::main(cmd),
        Command::Login(args) => identity::login(args),
        Command::Logout(args) => identity::logout(args),
        Command::Session(cmd) => identity::session(cmd),
        Command::User(cmd) => identity::user(cmd),
        Command::Device(cmd) => identity::device(cmd),
        Command::Quickstart(args) => quickstart::main(args),
        Command::Task(cmd) => task::main(cmd),
        Command::Serve(args) => task::serve_main(args),
        Command::Cluster(cmd) => cluster::main(cmd),
        Command::Mcp(args) => mcp::main(args),
        Command::Status(args) => task::status(args),
        Command::Doctor(args) => doctor::main(args),
        Command::Registry(cmd) => registry::main(cmd),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "coderclaw", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => manual(dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if let Some(hint) = hints::for_error(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, without a cause whose text
/// the ones before already say (an error that prints its source would
/// otherwise show it twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    /// An error that prints its source in its own message, as many do.
    #[derive(Debug)]
    struct Read(std::io::Error);

    impl std::fmt::Display for Read {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read /x: {}", self.0)
        }
    }

    impl std::error::Error for Read {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let e = anyhow::Error::new(Read(std::io::Error::other("denied"))).context("loading");
        assert_eq!(super::error_chain(&e), "loading: cannot read /x: denied");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_chain(&e), "outer: inner");
    }
}
