//! `coderclaw key`: signing keys for publishing skills.

use crate::home;
use crate::output::print_json;
use anyhow::Result;
use clap::Subcommand;
use coderclaw_core::rbac::Permission;
use serde_json::json;
use std::process::ExitCode;

/// Manage the Ed25519 keys you sign skills with.
///
/// Secret keys live in $CODERCLAW_HOME/keys/NAME.key (mode 0600) and are
/// never printed. Share the public key (`export-public`) with whoever should
/// trust your skills: they run `coderclaw trust add <namespace> <public-key>`.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create a new signing key; prints its public key and key id.
    Generate {
        /// A name for the key (letters, digits, `-`, `_`).
        #[arg(long)]
        name: String,
    },
    /// List signing keys with their key ids and public keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one key's public key, one line, for `coderclaw trust add`.
    ExportPublic {
        /// The key's name.
        name: String,
    },
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    let (permission, action, name) = match &cmd {
        Command::Generate { name } => (Permission::ConfigWrite, "key.generate", name.as_str()),
        Command::List { .. } => (Permission::ConfigRead, "key.list", "*"),
        Command::ExportPublic { name } => (Permission::ConfigRead, "key.export", name.as_str()),
    };
    let security = home::open_checked(permission, action, ("key", name))?;
    let home = security.home();
    match cmd {
        Command::Generate { name } => {
            let public = home.generate_key(&name)?;
            println!("created signing key {name:?} (key id {})", public.id());
            println!("public key: {public}");
            println!("next: coderclaw skill sign <skill-dir> --key {name}");
        }
        Command::List { json } => {
            let keys = home.keys()?;
            if json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|(name, k)| match k {
                        Ok(k) => json!({"name": name, "key_id": k.id().to_string(), "public_key": k.to_string()}),
                        Err(e) => json!({"name": name, "error": e.to_string()}),
                    })
                    .collect();
                print_json(&list)?;
            } else if keys.is_empty() {
                println!("no signing keys: create one with `coderclaw key generate --name NAME`");
            } else {
                for (name, k) in keys {
                    match k {
                        Ok(k) => println!("{name:<20} {}  {k}", k.id()),
                        Err(e) => println!("{name:<20} unusable: {e}"),
                    }
                }
            }
        }
        Command::ExportPublic { name } => println!("{}", home.secret_key(&name)?.public()),
    }
    Ok(ExitCode::SUCCESS)
}
