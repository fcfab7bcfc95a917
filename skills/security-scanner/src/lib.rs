//! Scans the granted workspace for committed secrets by pattern and reports
//! each finding as JSON, with the secret itself redacted. The example team
//! skill of the product text (`team/security-scanner`).
//!
//! Input: `{"path": ".", "max_file_bytes": 1048576}` (all optional).

use coderclaw_sdk::{SkillError, log, progress, skill};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_max_file_bytes")]
    max_file_bytes: u64,
}

fn default_path() -> String {
    ".".into()
}

fn default_max_file_bytes() -> u64 {
    1 << 20
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
    files_scanned: usize,
    files_skipped: usize,
    findings: Vec<Finding>,
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

    let mut report = Report { files_scanned: 0, files_skipped: 0, findings: Vec::new() };
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
    if !report.findings.is_empty() {
        log::warn(&format!("{} possible secret(s) found", report.findings.len()));
    }
    Ok(report)
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
