//! `coderclaw login | logout | session | user | device`: identities,
//! sessions and device trust. Every change and every authentication
//! attempt is recorded in the audit log.

use crate::grant_args::parse_duration_arg;
use crate::home;
use crate::output::print_json;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use coderclaw::security::{LocalSecret, Security};
use coderclaw_core::TrustLevel;
use serde_json::json;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn read_secret(what: &str) -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).with_context(|| format!("cannot read the {what} from stdin"))?;
    let s = s.trim_end_matches(['\n', '\r']).to_owned();
    if s.is_empty() {
        bail!("the {what} on stdin is empty");
    }
    Ok(s)
}

/// Log in and print a session token (on stdout; details on stderr).
///
/// The session is bound to this machine's device and expires after
/// identity.sessionTtl (default 12h) or --ttl. Pass the token to other
/// commands with --session or CODERCLAW_SESSION. Credentials are read from
/// stdin, never from the command line.
///
/// Examples:
///   printf '%s' "$PASSWORD" | coderclaw login --user alice --password-stdin
///   printf '%s' "$API_TOKEN" | coderclaw login --user ci-bot --token-stdin --role ci
///   printf '%s' "$ID_TOKEN" | coderclaw login --oidc-stdin
#[derive(clap::Args, Debug)]
pub(crate) struct LoginArgs {
    /// The local user (not needed with --oidc-stdin or --github-actions: the
    /// token names them).
    #[arg(long, required_unless_present_any = ["oidc_stdin", "github_actions"])]
    pub user: Option<String>,
    /// Read the password from stdin.
    #[arg(long, conflicts_with_all = ["token_stdin", "oidc_stdin"])]
    pub password_stdin: bool,
    /// Read a locally issued API token (`coderclaw user token create`) from stdin.
    #[arg(long, conflicts_with = "oidc_stdin")]
    pub token_stdin: bool,
    /// Read an OIDC ID token from stdin (issuers: identity.oidc in config.yaml).
    #[arg(long)]
    pub oidc_stdin: bool,
    /// Keyless CI login, inside a GitHub Actions job whose workflow grants
    /// `permissions: id-token: write`: asks the runner for the workflow's
    /// OIDC ID token (ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN) and logs in with
    /// it, so the job stores no secret. The issuer (provider: github in
    /// identity.oidc) maps the token's claims to roles with roleRules, e.g.
    /// only refs/heads/main of org/repo gets `ci`.
    #[arg(long, conflicts_with_all = ["password_stdin", "token_stdin", "oidc_stdin", "user"])]
    pub github_actions: bool,
    /// The audience asked of the runner (the issuer's `audience`).
    #[arg(long, requires = "github_actions", default_value = "coderclaw")]
    pub audience: String,
    /// Hold only these of the user's roles in the session (repeatable).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Limit the session to this directory tree.
    #[arg(long, value_name = "DIR")]
    pub scope: Option<PathBuf>,
    /// Session lifetime (e.g. 1h); never longer than an OIDC token's.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub ttl: Option<Duration>,
    /// Print the session as JSON (with the token) instead of the bare token.
    #[arg(long)]
    pub json: bool,
    /// Log in at the `coderclaw serve` at URL (https, or http on this
    /// machine) instead of in this state directory: the token is the
    /// server's, for `--remote` calls (no shell on the server needed).
    #[arg(long, value_name = "URL", conflicts_with = "scope")]
    pub remote: Option<String>,
    /// Trust this CA certificate (PEM) for an https --remote.
    #[arg(long, value_name = "FILE", requires = "remote")]
    pub ca: Option<PathBuf>,
}

pub(crate) fn login(args: LoginArgs) -> Result<ExitCode> {
    if !(args.password_stdin || args.token_stdin || args.oidc_stdin || args.github_actions) {
        bail!("say how to authenticate: --password-stdin, --token-stdin, --oidc-stdin or --github-actions");
    }
    let secret = if args.github_actions {
        github_actions_token(&args.audience)?
    } else {
        read_secret(if args.password_stdin { "password" } else { "token" })?
    };
    let oidc = args.oidc_stdin || args.github_actions;
    if let Some(url) = &args.remote {
        return login_remote(&args, url, secret, oidc);
    }
    let security = home::open_security(None)?;
    let scope = args.scope.as_deref().map(|s| home::workspace(Some(s))).transpose()?;
    let roles = (!args.roles.is_empty()).then_some(args.roles.as_slice());
    let result = if oidc {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(security.login_oidc(&secret, roles, scope.as_deref(), args.ttl))
    } else {
        let user = args.user.as_deref().unwrap_or_default();
        let secret = if args.password_stdin { LocalSecret::Password(&secret) } else { LocalSecret::Token(&secret) };
        security.login_local(user, secret, roles, scope.as_deref(), args.ttl)
    };
    let (session, token) = result?;
    if args.json {
        print_json(&json!({ "token": token, "session": session }))?;
    } else {
        eprintln!(
            "session {} for {} with roles [{}] on device {}, expires in {}",
            session.id,
            session.user,
            session.roles.join(", "),
            session.device,
            human_ms(session.expires_at_ms.saturating_sub(session.created_at_ms))
        );
        println!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The workflow's OIDC ID token from the GitHub Actions runner.
fn github_actions_token(audience: &str) -> Result<String> {
    use coderclaw::oidc::{GITHUB_ACTIONS_REQUEST_TOKEN, GITHUB_ACTIONS_REQUEST_URL};
    let var = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).with_context(|| {
            format!(
                "{name} is not set: --github-actions works inside a GitHub Actions job whose workflow grants \
                 `permissions: id-token: write`"
            )
        })
    };
    let (url, token) = (var(GITHUB_ACTIONS_REQUEST_URL)?, var(GITHUB_ACTIONS_REQUEST_TOKEN)?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(coderclaw::oidc::github_actions_id_token(&url, &token, audience))?)
}

/// `login --remote`: `POST /v1/sessions` on the server.
fn login_remote(args: &LoginArgs, url: &str, secret: String, oidc: bool) -> Result<ExitCode> {
    let mut request = coderclaw::tasks::LoginRequest {
        roles: args.roles.clone(),
        ttl_secs: args.ttl.map(|t| t.as_secs().max(1)),
        ..Default::default()
    };
    if oidc {
        request.id_token = Some(secret);
    } else {
        request.user = args.user.clone();
        if args.password_stdin {
            request.password = Some(secret);
        } else {
            request.api_token = Some(secret);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reply = rt
        .block_on(coderclaw::tasks::login_remote(url, args.ca.as_deref(), &request))
        .map_err(crate::task::CallError)?;
    if args.json {
        print_json(&json!({ "token": reply.token, "session": reply.session }))?;
    } else {
        let s = &reply.session;
        let roles: Vec<&str> = s["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
        let left = s["expires_at_ms"].as_u64().unwrap_or(0).saturating_sub(s["created_at_ms"].as_u64().unwrap_or(0));
        eprintln!(
            "session {} for {} with roles [{}] at {url}, expires in {}",
            s["id"].as_str().unwrap_or("?"),
            s["user"].as_str().unwrap_or("?"),
            roles.join(", "),
            human_ms(left)
        );
        println!("{}", reply.token);
    }
    Ok(ExitCode::SUCCESS)
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, (s % 3600) / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

/// End the session given with --session / CODERCLAW_SESSION.
#[derive(clap::Args, Debug)]
pub(crate) struct LogoutArgs {}

pub(crate) fn logout(_: LogoutArgs) -> Result<ExitCode> {
    let Some(token) = home::session() else {
        bail!("no session to end: pass --session TOKEN or set CODERCLAW_SESSION");
    };
    let security = home::open_security(None)?;
    let subject = security.subject(Some(token))?;
    let id = security.logout(&subject, token)?.id;
    eprintln!("session {id} ended");
    Ok(ExitCode::SUCCESS)
}

/// List and revoke sessions.
#[derive(Subcommand, Debug)]
pub(crate) enum SessionCommand {
    /// List sessions (admin): id, user, device, roles, expiry, state.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a session by id (admin, or the session's own user): its
    /// token is refused from now on, everywhere.
    Revoke {
        /// Session id (`ses_...`, from `session list`).
        id: String,
    },
}

pub(crate) fn session(cmd: SessionCommand) -> Result<ExitCode> {
    let security = home::open_security(None)?;
    match cmd {
        SessionCommand::List { json } => {
            let by = security.subject(home::session())?;
            let sessions = security.sessions(&by)?;
            let now = coderclaw_core::clock::now_ms();
            if json {
                let rows: Vec<_> = sessions.iter().map(|s| json!({ "session": s, "state": s.state(now) })).collect();
                print_json(&rows)?;
            } else {
                for s in &sessions {
                    println!(
                        "{}  {:<8} {:<16} [{}] {} {}",
                        s.id,
                        s.state(now),
                        s.user,
                        s.roles.join(","),
                        &s.device[..s.device.len().min(12)],
                        s.scope.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                    );
                }
            }
        }
        SessionCommand::Revoke { id } => {
            let by = security.subject(home::session())?;
            security.revoke_session(&by, &id)?;
            eprintln!("session {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Manage local users and their API tokens (admin).
#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Add a user with roles; with --password-stdin they can log in with a password.
    Add {
        /// User name.
        name: String,
        /// A role (repeatable; default: security.defaultRoles).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Read the user's password from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users and their roles.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Issue an API token for a user (printed once; only its hash is kept).
    Token {
        /// User name.
        name: String,
        /// Token lifetime (e.g. 30d); default: no expiry.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        expires: Option<Duration>,
    },
    /// Revoke an API token by id (`cct_...`).
    RevokeToken {
        /// Token id.
        id: String,
    },
    /// Remove a user: their API tokens are deleted and their sessions
    /// revoked (audited). Not your own user.
    Remove {
        /// User name.
        name: String,
    },
    /// Replace a user's roles; their sessions, which hold the old roles, are
    /// revoked, so they log in again (audited). Not your own user.
    SetRoles {
        /// User name.
        name: String,
        /// A role (repeatable, at least one).
        #[arg(long = "role", value_name = "ROLE", required = true)]
        roles: Vec<String>,
    },
    /// Set a user's password from stdin, or clear it with --clear (they can
    /// then only use tokens or OIDC); their sessions are revoked (audited).
    /// Admins set anyone's; a user may set their own.
    Passwd {
        /// User name.
        name: String,
        /// Read the new password from stdin.
        #[arg(long, conflicts_with = "clear", required_unless_present = "clear")]
        password_stdin: bool,
        /// Remove the password instead.
        #[arg(long)]
        clear: bool,
    },
}

pub(crate) fn user(cmd: UserCommand) -> Result<ExitCode> {
    let security = home::open_security(None)?;
    match cmd {
        UserCommand::Add { name, roles, password_stdin } => {
            let by = security.subject(home::session())?;
            let roles = if roles.is_empty() { security.policy()?.config.security.default_roles.clone() } else { roles };
            // Also checked by add_user; first here so a doomed command never asks for a password.
            home::check_roles(&security, &roles)?;
            let password = password_stdin.then(|| read_secret("password")).transpose()?;
            let u = security.add_user(&by, &name, &roles, password.as_deref())?;
            eprintln!("user {} added with roles [{}]", u.name, u.roles.join(", "));
        }
        UserCommand::Remove { name } => {
            let by = security.subject(home::session())?;
            security.remove_user(&by, &name)?;
            eprintln!("user {name} removed; their API tokens are deleted and their sessions revoked");
        }
        UserCommand::SetRoles { name, roles } => {
            let by = security.subject(home::session())?;
            home::check_roles(&security, &roles)?;
            let u = security.set_user_roles(&by, &name, &roles)?;
            eprintln!(
                "user {} now has roles [{}]; their sessions are revoked (they log in again)",
                u.name,
                u.roles.join(", ")
            );
        }
        UserCommand::Passwd { name, password_stdin, clear } => {
            let by = security.subject(home::session())?;
            let password = if clear { None } else { password_stdin.then(|| read_secret("password")).transpose()? };
            if password.as_deref() == Some("") {
                anyhow::bail!("the password read from stdin is empty: give one, or pass --clear to remove it");
            }
            security.set_password(&by, &name, password.as_deref())?;
            let what = if clear { "cleared" } else { "set" };
            eprintln!("password of {name} {what}; their sessions are revoked");
        }
        UserCommand::List { json } => {
            let by = security.subject(home::session())?;
            let users = security.users(&by)?;
            if json {
                print_json(&users)?;
            } else {
                for u in users {
                    println!(
                        "{:<20} [{}]{}",
                        u.name,
                        u.roles.join(", "),
                        if u.has_password { "" } else { " (no password)" }
                    );
                }
            }
        }
        UserCommand::Token { name, expires } => {
            let by = security.subject(home::session())?;
            let (record, token) = security.create_token(&by, &name, expires)?;
            eprintln!("token {} for {name} (shown once; store it as a secret)", record.id);
            println!("{token}");
        }
        UserCommand::RevokeToken { id } => {
            let by = security.subject(home::session())?;
            security.revoke_token(&by, &id)?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Devices and their trust levels (trusted | verified | untrusted).
#[derive(Subcommand, Debug)]
pub(crate) enum DeviceCommand {
    /// List known devices with their stored and effective trust.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show this machine's device (its id is what `device trust` takes).
    Show {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Register another device by its public key; it starts untrusted.
    Register {
        /// A name for people.
        name: String,
        /// Its Ed25519 public key (`coderclaw key export-public` form).
        #[arg(long, value_name = "KEY")]
        public_key: String,
    },
    /// Raise or lower a device's trust (admin). Example:
    ///   coderclaw device trust 3f2a9c... verified
    Trust {
        /// Device id (`device list`).
        id: String,
        /// trusted, verified or untrusted.
        level: TrustLevel,
    },
}

fn device_json(security: &Security, d: &coderclaw::identity::Device) -> serde_json::Value {
    json!({
        "id": d.id, "name": d.name, "public_key": d.public_key, "local": d.local,
        "trust": d.trust, "effective_trust": security.effective_trust(d),
    })
}

pub(crate) fn device(cmd: DeviceCommand) -> Result<ExitCode> {
    let security = home::open_security(None)?;
    match cmd {
        DeviceCommand::List { json } => {
            let by = security.subject(home::session())?;
            let devices = security.devices(&by)?;
            if json {
                print_json(&devices.iter().map(|d| device_json(&security, d)).collect::<Vec<_>>())?;
            } else {
                for d in &devices {
                    let effective = security.effective_trust(d);
                    let note = if effective != d.trust {
                        format!(" (effective {effective}: autoTrustLocal)")
                    } else {
                        String::new()
                    };
                    println!(
                        "{}  {:<10} {}{}{note}",
                        d.id,
                        d.trust,
                        d.name,
                        if d.local { " [this machine]" } else { "" }
                    );
                }
            }
        }
        // This machine's own id and public key: public facts a user needs
        // (before any session) to ask an admin to trust the device.
        DeviceCommand::Show { json } => {
            let d = security.local_device();
            if json {
                print_json(&device_json(&security, &d))?;
            } else {
                println!("{}", d.id);
                eprintln!("{} ({}), effective trust {}", d.name, d.public_key, d.trust);
            }
        }
        DeviceCommand::Register { name, public_key } => {
            let by = security.subject(home::session())?;
            let d = security.register_device(&by, &name, &public_key)?;
            let id = d.id.clone();
            eprintln!("device {name} registered as {id} ({})", d.trust);
            println!("{id}");
        }
        DeviceCommand::Trust { id, level } => {
            let by = security.subject(home::session())?;
            let d = security.set_device_trust(&by, &id, level)?;
            eprintln!("device {} ({}) is now {}", d.id, d.name, d.trust);
            if d.local && security.effective_trust(&d) != d.trust {
                eprintln!("note: deviceTrust.autoTrustLocal is on, so this machine still counts as trusted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
