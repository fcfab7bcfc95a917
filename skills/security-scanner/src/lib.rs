//! Scans the granted workspace for committed secrets by pattern and reports
//! each finding as JSON, with the secret itself redacted. The example team
//! skill of the product text (`team/security-scanner`).
//!
//! Input (all optional): `{"path": ".", "max_file_bytes": 1048576,
//! "fail_on_findings": true, "format": "json"}`.
//!
//! With findings and `fail_on_findings` (the default), the output carries
//! the failure verdict (`"failed": true`, see `wit/skill.wit`): the task
//! ends FAILED `skill-verdict` and the CLI exits 5, so a CI job fails.
//! `"format": "sarif"` adds the findings as a SARIF 2.1.0 log under
//! `sarif`, for code-scanning upload.

use coderclaw_sdk::{SkillError, log, progress, skill};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_max_file_bytes")]
    max_file_bytes: u64,
    #[serde(default = "default_fail_on_findings")]
    fail_on_findings: bool,
    #[serde(default)]
    format: Format,
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Sarif,
}

fn default_path() -> String {
    ".".into()
}

fn default_max_file_bytes() -> u64 {
    1 << 20
}

fn default_fail_on_findings() -> bool {
    true
}

#[derive(Serialize)]
struct Finding {
    rule: &'static str,
    file: String,
    line: usize,
    /// The matched text with all but its first four characters masked.
    redacted: String,
}

#[derive(Serialize)]
struct Report {
    /// The failure verdict: findings were made and the caller asked to fail on them.
    failed: bool,
    summary: String,
    files_scanned: usize,
    files_skipped: usize,
    findings: Vec<Finding>,
    /// The findings as a SARIF 2.1.0 log, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    sarif: Option<Value>,
}

/// (rule id, pattern). Patterns follow the public token formats of each
/// provider; they aim for few false positives rather than full recall.
const RULES: &[(&str, &str)] = &[
    ("aws-access-key-id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("github-token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),
    ("github-fine-grained-token", r"\bgithub_pat_[A-Za-z0-9_]{82}\b"),
    ("slack-token", r"\bxox[abposr]-[A-Za-z0-9-]{10,72}\b"),
    ("private-key", r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----"),
    ("stripe-secret-key", r"\b[sr]k_live_[A-Za-z0-9]{24,99}\b"),
    ("google-api-key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    (
        "generic-secret-assignment",
        r#"(?i)\b(?:password|passwd|secret|api_?key|access_?token)\s*[:=]\s*["'][^"'\s]{12,}["']"#,
    ),
];

#[skill]
fn run(input: Input) -> Result<Report, SkillError> {
    let rules: Vec<(&str, Regex)> = RULES
        .iter()
        .map(|(id, re)| Regex::new(re).map(|r| (*id, r)))
        .collect::<Result<_, _>>()
        .map_err(|e| SkillError::failed(format!("built-in pattern does not compile: {e}")))?;

    let mut files = Vec::new();
    collect(Path::new(&input.path), &mut files)?;
    log::info(&format!("scanning {} files under {}", files.len(), input.path));

    let mut report = Report {
        failed: false,
        summary: String::new(),
        files_scanned: 0,
        files_skipped: 0,
        findings: Vec::new(),
        sarif: None,
    };
    let n = files.len().max(1);
    for (i, file) in files.iter().enumerate() {
        if i % 64 == 0 {
            progress(i as f32 / n as f32, &format!("scanned {i} of {n} files"));
        }
        if fs::metadata(file).map_err(|e| SkillError::io(file, e))?.len() > input.max_file_bytes {
            report.files_skipped += 1;
            continue;
        }
        let bytes = fs::read(file).map_err(|e| SkillError::io(file, e))?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            report.files_skipped += 1;
            continue;
        };
        report.files_scanned += 1;
        for (lineno, line) in text.lines().enumerate() {
            for (rule, re) in &rules {
                for m in re.find_iter(line) {
                    report.findings.push(Finding {
                        rule,
                        file: file.display().to_string(),
                        line: lineno + 1,
                        redacted: redact(m.as_str()),
                    });
                }
            }
        }
    }
    progress(1.0, "done");
    let found = report.findings.len();
    report.summary = format!("{found} possible secret(s) in {} file(s) scanned", report.files_scanned);
    if found > 0 {
        log::warn(&report.summary);
    }
    report.failed = found > 0 && input.fail_on_findings;
    if input.format == Format::Sarif {
        report.sarif = Some(sarif(&report.findings));
    }
    Ok(report)
}

/// `github-token` as `GithubToken`: SARIF wants a rule's name readable and
/// different from its id.
fn pascal_case(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// `path` as a URI reference (RFC 3986): unreserved characters and `/`
/// kept, everything else percent-encoded, as SARIF's `uri` requires.
fn uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The findings as a SARIF 2.1.0 log: one run, one rule per pattern, one
/// result per finding (file relative to the scanned workspace, 1-based line).
fn sarif(findings: &[Finding]) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|(id, _)| {
            json!({
                "id": id,
                "name": pascal_case(id),
                "shortDescription": { "text": format!("Possible committed secret ({id})") },
                "defaultConfiguration": { "level": "error" },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let index = RULES.iter().position(|(id, _)| *id == f.rule).unwrap_or(0);
            json!({
                "ruleId": f.rule,
                "ruleIndex": index,
                "level": "error",
                "message": { "text": format!("Possible {} committed: {}", f.rule, f.redacted) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri(f.file.trim_start_matches("./")) },
                        "region": { "startLine": f.line },
                    }
                }],
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "coderclaw security-scanner",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

fn redact(secret: &str) -> String {
    let keep: String = secret.chars().take(4).collect();
    let masked = secret.chars().count().saturating_sub(4);
    format!("{keep}{}", "*".repeat(masked))
}

/// Regular files under `path`, symlinks not followed, `.git` and `target` skipped.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), SkillError> {
    let meta = fs::symlink_metadata(path).map_err(|e| SkillError::io(path, e))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
    } else if meta.is_dir() {
        let mut entries: Vec<_> =
            fs::read_dir(path).and_then(|d| d.collect::<Result<_, _>>()).map_err(|e| SkillError::io(path, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_name() != ".git" && entry.file_name() != "target" {
                collect(&entry.path(), out)?;
            }
        }
    }
    Ok(())
}
