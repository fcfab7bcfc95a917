//! Counts lines, words and bytes of the text files under a path in the
//! granted workspace (like `wc -lwc`, recursively).
//!
//! Input: `{"path": ".", "extensions": ["rs", "md"], "max_files": 10000}`
//! (all optional). Output: totals and one entry per file.

use coderclaw_sdk::{SkillError, log, progress, skill};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    extensions: Vec<String>,
    #[serde(default = "default_max_files")]
    max_files: usize,
}

fn default_path() -> String {
    ".".into()
}

fn default_max_files() -> usize {
    10_000
}

#[derive(Serialize, Default)]
struct Counts {
    lines: u64,
    words: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct FileCounts {
    path: String,
    #[serde(flatten)]
    counts: Counts,
}

#[derive(Serialize)]
struct Output {
    files: usize,
    skipped_binary: usize,
    truncated: bool,
    total: Counts,
    per_file: Vec<FileCounts>,
}

#[skill]
fn run(input: Input) -> Result<Output, SkillError> {
    let root = PathBuf::from(&input.path);
    let mut files = Vec::new();
    let truncated = collect(&root, &input.extensions, input.max_files, &mut files)?;
    log::info(&format!("counting {} files under {}", files.len(), input.path));

    let mut out = Output { files: 0, skipped_binary: 0, truncated, total: Counts::default(), per_file: Vec::new() };
    let n = files.len().max(1);
    for (i, file) in files.iter().enumerate() {
        let bytes = fs::read(file).map_err(|e| SkillError::io(file, e))?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            out.skipped_binary += 1;
            continue;
        };
        let counts = Counts {
            lines: text.lines().count() as u64,
            words: text.split_whitespace().count() as u64,
            bytes: bytes.len() as u64,
        };
        out.total.lines += counts.lines;
        out.total.words += counts.words;
        out.total.bytes += counts.bytes;
        out.files += 1;
        out.per_file.push(FileCounts { path: file.display().to_string(), counts });
        if i % 64 == 0 {
            progress(i as f32 / n as f32, &format!("counted {i} of {n} files"));
        }
    }
    progress(1.0, "done");
    Ok(out)
}

/// Depth-first walk collecting regular files; symlinks are not followed.
/// Returns true when `max` cut the walk short.
fn collect(path: &Path, exts: &[String], max: usize, out: &mut Vec<PathBuf>) -> Result<bool, SkillError> {
    let meta = fs::symlink_metadata(path).map_err(|e| SkillError::io(path, e))?;
    if meta.is_file() {
        if wanted(path, exts) {
            out.push(path.to_path_buf());
        }
        return Ok(out.len() >= max);
    }
    if !meta.is_dir() {
        return Ok(false);
    }
    let mut entries: Vec<_> =
        fs::read_dir(path).and_then(|d| d.collect::<Result<_, _>>()).map_err(|e| SkillError::io(path, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name() == ".git" || entry.file_name() == "target" {
            continue;
        }
        if out.len() >= max || collect(&entry.path(), exts, max, out)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn wanted(path: &Path, exts: &[String]) -> bool {
    exts.is_empty() || path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| x == e))
}
