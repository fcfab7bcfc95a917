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
    /// Copy a secret key file (as another machine's keys/NAME.key; only its
    /// owner may read it) into this state directory under NAME.
    Import {
        /// The name to keep it under.
        name: String,
        /// The secret key file.
        #[arg(long, value_name = "FILE")]
        file: std::path::PathBuf,
    },
    /// Delete a signing key. Skills signed with it still verify wherever its
    /// public key is trusted: if it leaked, also `coderclaw trust revoke`.
    Delete {
        /// The key's name.
        name: String,
        /// Yes, delete it: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Replace a signing key with a new one. The old key is kept as
    /// NAME-<old key id> and the namespaces this trust store trusts it for
    /// trust the new key too, so both verify until you re-sign your skills
    /// and revoke the old key.
    Rotate {
        /// The key's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    let (permission, action, name) = match &cmd {
        Command::Generate { name } => (Permission::ConfigWrite, "key.generate", name.as_str()),
        Command::List { .. } => (Permission::ConfigRead, "key.list", "*"),
        Command::ExportPublic { name } => (Permission::ConfigRead, "key.export", name.as_str()),
        Command::Import { name, .. } => (Permission::ConfigWrite, "key.import", name.as_str()),
        Command::Delete { name, .. } => (Permission::ConfigWrite, "key.delete", name.as_str()),
        Command::Rotate { name, .. } => (Permission::ConfigWrite, "key.rotate", name.as_str()),
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
        Command::Import { name, file } => {
            let public = home.import_key(&name, &file)?;
            println!("imported signing key {name:?} (key id {})", public.id());
            println!("public key: {public}");
        }
        Command::Delete { name, yes } => {
            if !yes {
                anyhow::bail!("deleting signing key {name:?} cannot be undone: pass --yes to delete it");
            }
            let public = home.delete_key(&name)?;
            println!("deleted signing key {name:?} (key id {})", public.id());
            if home.trust_list()?.iter().any(|e| e.key_id == public.id().as_str() && e.revoked_at.is_none()) {
                eprintln!(
                    "note: this trust store still trusts it; if it leaked: coderclaw trust revoke {}",
                    public.id()
                );
            }
        }
        Command::Rotate { name, json } => {
            let (old, new, namespaces) = home.rotate_key(&name)?;
            if json {
                print_json(&json!({
                    "name": name, "key_id": new.id().to_string(), "public_key": new.to_string(),
                    "previous": { "name": format!("{name}-{}", old.id()), "key_id": old.id().to_string() },
                    "trusted_for": namespaces,
                }))?;
            } else {
                println!("signing key {name:?} is now key id {} (public key {new})", new.id());
                println!("the previous key {} is kept as {name}-{}", old.id(), old.id());
                if namespaces.is_empty() {
                    println!(
                        "this trust store does not trust the previous key: share the new public key with whoever trusts it"
                    );
                } else {
                    println!("trusted here for {} as well, until you revoke the previous key", namespaces.join(", "));
                }
                println!("next: re-sign your skills (coderclaw skill sign … --key {name}), publish them, then");
                println!("      coderclaw trust revoke {} on every machine that trusts it", old.id());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
