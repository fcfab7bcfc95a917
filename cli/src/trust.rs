//! `coderclaw trust`: which keys may sign skills of which namespace.

use crate::home;
use crate::output::print_json;
use anyhow::Result;
use clap::Subcommand;
use coderclaw_core::keys::PublicKey;
use coderclaw_core::rbac::Permission;
use std::process::ExitCode;

/// Manage the trust store: which public keys may sign skills of which
/// namespace (team). Packages are verified against it on install and again
/// on every run, so a revoked key stops its skills at once.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Trust a public key to sign skills of NAMESPACE.
    Add {
        /// The namespace, e.g. `team` for skills `team/...`.
        namespace: String,
        /// The one-line public key (`ed25519:...`, from `coderclaw key export-public`).
        public_key: String,
    },
    /// List trusted and revoked keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: everything it signed is refused from now on.
    Revoke {
        /// The key id (16 hex digits, see `coderclaw trust list`).
        key_id: String,
    },
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    let (permission, action, resource) = match &cmd {
        Command::Add { namespace, .. } => (Permission::ConfigWrite, "trust.add", namespace.as_str()),
        Command::List { .. } => (Permission::ConfigRead, "trust.list", "*"),
        Command::Revoke { key_id } => (Permission::ConfigWrite, "trust.revoke", key_id.as_str()),
    };
    let security = home::open_checked(permission, action, ("key", resource))?;
    let home = security.home();
    match cmd {
        Command::Add { namespace, public_key } => {
            let key = PublicKey::parse(&public_key)?;
            let entry = home.trust_add(&namespace, &key)?;
            println!("key {} may now sign skills of: {}", entry.key_id, entry.namespaces.join(", "));
            if entry.revoked_at.is_some() {
                println!("warning: this key is revoked; its signatures are still refused");
            }
        }
        Command::List { json } => {
            let entries = home.trust_list()?;
            if json {
                print_json(&entries)?;
            } else if entries.is_empty() {
                println!(
                    "the trust store is empty: add a publisher with `coderclaw trust add <namespace> <public-key>`"
                );
            } else {
                for e in entries {
                    let state = if e.revoked_at.is_some() { "REVOKED" } else { "trusted" };
                    println!("{}  {state:<8} {:<24} {}", e.key_id, e.namespaces.join(","), e.public_key);
                }
            }
        }
        Command::Revoke { key_id } => {
            let entry = home.trust_revoke(&key_id)?;
            println!("key {} revoked: packages it signed will no longer install or run", entry.key_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
