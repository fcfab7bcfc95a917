//! `coderclaw audit`: read and check the tamper-evident audit log.

use crate::home;
use crate::output::print_json;
use anyhow::Context as _;
use anyhow::{Result, bail};
use clap::Subcommand;
use coderclaw::audit::{AuditError, AuditFilter, AuditResult, Signers, VerifyReport, read_witness_file};
use coderclaw_core::audit_head::SignedHead;
use coderclaw_core::rbac::Permission;
use coderclaw_core::units::parse_duration;
use std::process::ExitCode;

/// Read and check the audit log: every key, trust, install and verification
/// decision, hash-chained so that any edited or deleted record is detected.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List records, oldest first.
    Query {
        /// Only records of this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this action (e.g. skill.install, trust.revoke, skill.verify).
        #[arg(long)]
        action: Option<String>,
        /// Only records since: a duration ago (24h, 30m), a date (2026-11-01) or Unix seconds.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only this result: allowed, denied or error.
        #[arg(long, value_parser = parse_result)]
        result: Option<AuditResult>,
        /// At most this many (the newest).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        log: LogArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the log: the hash chain, every signed checkpoint, and the heads
    /// witnessed outside it (audit.witnessFile in config.yaml, and the
    /// registry's with --registry or audit.witnessRegistry). Exits 1 naming
    /// the first tampered record, or saying where the log was cut short.
    Verify {
        #[command(flatten)]
        witness: WitnessArgs,
        #[command(flatten)]
        log: LogArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a signed checkpoint of the log now and have the team registry
    /// witness it (append-only: it refuses a head that does not extend the
    /// last one it saw for this device).
    Witness {
        #[command(flatten)]
        witness: WitnessArgs,
        #[command(flatten)]
        log: LogArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which log: the state directory's, or a cluster's.
#[derive(clap::Args, Debug)]
pub(crate) struct LogArgs {
    /// The log of the cluster whose PostgreSQL database is URL: one hash
    /// chain every node appends to, each signing checkpoints with its own
    /// device key. Default: the cluster this machine is a node of (mode
    /// distributed-cluster in runtime.yaml), else the state directory's log.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

/// Which registry witnesses this device's audit heads.
#[derive(clap::Args, Debug)]
pub(crate) struct WitnessArgs {
    #[command(flatten)]
    registry: crate::install::RegistryArgs,
    /// The namespace whose token witnesses (default: the registry's only
    /// namespace under `namespace-keys`).
    #[arg(long)]
    namespace: Option<String>,
}

impl WitnessArgs {
    /// The registry and namespace, if one is named here or in config.yaml.
    fn open(&self, configured: Option<&str>) -> Result<Option<(coderclaw::registry::registries::Registry, String)>> {
        let mut args = self.registry.clone();
        if args.registry.is_none() {
            args.registry = configured.map(str::to_owned);
        }
        if args.registry.is_none() {
            return Ok(None);
        }
        let reg = args.open(None)?;
        let namespace = match (&self.namespace, &reg.entry) {
            (Some(ns), _) => ns.clone(),
            (None, Some(e)) if e.namespace_keys.len() == 1 => {
                e.namespace_keys.keys().next().cloned().unwrap_or_default()
            }
            _ => bail!("say which namespace's token witnesses the audit log: pass --namespace"),
        };
        Ok(Some((reg, namespace)))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_since(s: &str) -> Result<i64> {
    if let Ok(d) = parse_duration(s) {
        let now = coderclaw_core::clock::now_ms() as i64;
        return Ok(now - d.as_millis() as i64);
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1000);
    }
    let parts: Vec<&str> = s.split('-').collect();
    if let [y, m, d] = parts.as_slice()
        && let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<i64>(), d.parse::<i64>())
        && (1..=12).contains(&m)
        && (1..=31).contains(&d)
    {
        return Ok(days_from_civil(y, m, d) * 86_400_000);
    }
    bail!("--since {s:?}: write a duration (24h, 30m), a date (2026-11-01) or Unix seconds")
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    let security = home::open_checked(Permission::ConfigRead, "audit.read", ("audit", "*"))?;
    let home = security.home();
    let database = match &cmd {
        Command::Query { log, .. } | Command::Verify { log, .. } | Command::Witness { log, .. } => log.database.clone(),
    };
    if let Some(url) = database {
        home.audit().use_store(coderclaw::tasks::store::PgSharedState::open(&url)?);
    }
    // A cluster's log is signed by every node's key: this machine's or one
    // of cluster.nodeKeys.
    let device = security.local_device().id;
    let nodes = security.cluster_signers()?;
    let expected = if home.audit().is_shared() { Signers::OneOf(&nodes) } else { Signers::Device(&device) };
    match cmd {
        Command::Query { user, action, since, result, limit, json, .. } => {
            let since_ms = since.as_deref().map(parse_since).transpose()?;
            let records = home.audit().query(&AuditFilter { user, action, since_ms, result, limit })?;
            if json {
                print_json(&records)?;
            } else {
                for r in records {
                    println!(
                        "{:>6}  {}  {:<8} {:<14} {}:{}  user={}  {}",
                        r.seq,
                        coderclaw_core::units::format_utc(r.timestamp_ms.max(0) as u64),
                        r.result,
                        r.action,
                        r.resource_type,
                        r.resource_id,
                        r.user.as_deref().unwrap_or("-"),
                        r.reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { witness, json, .. } => {
            let registry = witness.open(security.policy()?.config.audit.witness_registry.as_deref())?;
            let heads = witnessed_heads(&security, registry.as_ref().map(|(r, ns)| (r, ns.as_str())), &device)?;
            report_verify(home.audit().verify_against(&heads, expected), &home.audit().store_name(), json)
        }
        Command::Witness { witness, json, .. } => {
            let Some((reg, ns)) = witness.open(security.policy()?.config.audit.witness_registry.as_deref())? else {
                bail!("name the registry that witnesses: pass --registry or set audit.witnessRegistry in config.yaml");
            };
            // A log that no longer matches what was witnessed is not
            // witnessed again: that would bless the rewrite.
            let heads = witnessed_heads(&security, Some((&reg, &ns)), &device)?;
            if let Err(e) = home.audit().verify_against(&heads, expected) {
                report_verify(Err(e), &home.audit().store_name(), json)?;
                bail!("the audit log does not verify: it was not witnessed (see `coderclaw audit verify`)");
            }
            let head =
                home.audit().checkpoint()?.context("no checkpoint could be signed: the device key is missing")?;
            crate::runtime()?
                .block_on(reg.client.put_audit_head(&ns, &head))
                .with_context(|| format!("registry {} did not witness record {}", reg.name, head.seq))?;
            if json {
                print_json(&serde_json::json!({ "witnessed": head.seq, "hash": head.hash, "registry": reg.name }))?;
            } else {
                println!("registry {} witnessed record {} ({})", reg.name, head.seq, &head.hash[..16]);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The heads of this device's log witnessed outside it: the witness file's
/// and every one the registry holds (not only its newest).
fn witnessed_heads(
    security: &coderclaw::security::Security,
    registry: Option<(&coderclaw::registry::registries::Registry, &str)>,
    device: &str,
) -> Result<Vec<(String, SignedHead)>> {
    let mut heads = Vec::new();
    if let Some(file) = &security.policy()?.config.audit.witness_file {
        match read_witness_file(file) {
            Ok(found) => heads.extend(found.into_iter().map(|h| (format!("witness file {}", file.display()), h))),
            Err(problem) if file.exists() => bail!("{problem}"),
            Err(_) => {}
        }
    }
    heads.retain(|(_, h)| h.device == device);
    if let Some((reg, ns)) = registry {
        let history = crate::runtime()?
            .block_on(reg.client.audit_head_history(ns, device))
            .with_context(|| format!("cannot read the heads registry {} witnessed", reg.name))?;
        heads.extend(history.into_iter().map(|h| (format!("registry {}", reg.name), h)));
    }
    Ok(heads)
}

fn report_verify(result: Result<VerifyReport, AuditError>, log: &str, json: bool) -> Result<ExitCode> {
    match result {
        Ok(r) => {
            if json {
                print_json(&serde_json::json!({ "ok": true, "log": log, "report": r, "records": r.records }))?;
            } else {
                println!(
                    "OK: {log}: {} records, hash chain intact, {} signed checkpoints{}",
                    r.records,
                    r.checkpoints,
                    r.last_checkpoint.map(|s| format!(" (newest signs record {s})")).unwrap_or_default()
                );
                if r.signers.len() > 1 {
                    println!("   checkpoints signed by {} device keys: {}", r.signers.len(), r.signers.join(", "));
                }
                for (witness, seq) in &r.witnessed {
                    println!("   matches {witness} at record {seq}");
                }
                if r.checkpoints == 0 && r.records > 0 {
                    println!(
                        "   warning: no signed checkpoint: records written before checkpoints existed, or a log \
                         rewritten whole without them; only a witnessed head tells these apart"
                    );
                }
                if r.witnessed.is_empty() {
                    println!(
                        "   no witnessed head was checked: a log rewritten whole, or cut short, is only caught \
                         against one (audit.witnessFile, audit witness --registry)"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(AuditError::Broken { seq, problem }) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "record": seq, "problem": problem}));
            } else {
                eprintln!("error: audit record {seq} has been tampered with: {problem}");
            }
            Ok(ExitCode::FAILURE)
        }
        Err(AuditError::Truncated { witness, witnessed, last }) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "truncated": true, "record": witnessed, "last": last, "witness": witness})
                );
            } else {
                eprintln!(
                    "error: the audit log was cut short: {witness} saw record {witnessed}, the log ends at record {last}"
                );
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_result(s: &str) -> Result<AuditResult, String> {
    AuditResult::parse(s).ok_or_else(|| format!("{s:?}: write allowed, denied or error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_to_epoch_milliseconds() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_since("2026-11-23").unwrap(), days_from_civil(2026, 11, 23) * 86_400_000);
        assert_eq!(parse_since("1700000000").unwrap(), 1_700_000_000_000);
        assert!(parse_since("yesterday").is_err());
    }
}
