//! `--input`: a task's or a run's input JSON, given inline, as `@FILE`, or
//! as `-` (standard input).

use anyhow::{Context, Result, bail};
use coderclaw_core::fsutil::{FinalLink, read_text_bounded};
use std::io::Read as _;
use std::path::Path;

/// Largest input read from a file or stdin.
const MAX_INPUT: u64 = 16 << 20;

/// The input JSON `value` stands for: inline JSON, `@FILE` (the file's
/// contents) or `-` (all of stdin); `{}` when absent. JSON never starts
/// with `@`, and `-` alone is not JSON, so neither is ambiguous.
pub(crate) fn resolve(value: Option<&str>) -> Result<String> {
    let (text, from) = match value {
        None => return Ok("{}".to_owned()),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .take(MAX_INPUT + 1)
                .read_to_string(&mut text)
                .context("cannot read the input from stdin")?;
            if text.len() as u64 > MAX_INPUT {
                bail!("the input on stdin is larger than {} MiB", MAX_INPUT >> 20);
            }
            (text, "stdin".to_owned())
        }
        Some(v) if v.starts_with('@') => {
            let path = Path::new(&v[1..]);
            let text = read_text_bounded(path, MAX_INPUT, FinalLink::Follow)
                .with_context(|| format!("--input {v}: cannot read {}", path.display()))?;
            (text, path.display().to_string())
        }
        Some(v) => (v.to_owned(), "--input".to_owned()),
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        bail!(
            "the input from {from} is not valid JSON ({e}): pass a JSON value (--input '{{\"path\": \".\"}}'), \
             @FILE or - (stdin)"
        );
    }
    Ok(text)
}
