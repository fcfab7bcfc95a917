//! `coderclaw man`: the manual pages (roff), one per command and
//! subcommand, from the same definitions as `--help`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Every page of `root` and its subcommands (not `help`), as (file name,
/// roff), the root's first: `coderclaw.1`, `coderclaw-skill.1`,
/// `coderclaw-skill-run.1`, ...
pub(crate) fn pages(mut root: clap::Command) -> Result<Vec<(String, Vec<u8>)>> {
    root.build();
    let mut out = Vec::new();
    collect(&root, root.get_name().to_owned(), &mut out)?;
    Ok(out)
}

fn collect(command: &clap::Command, name: String, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let mut roff = Vec::new();
    // The page's title is its full command name (`coderclaw-skill-run`).
    // clap keeps names as `&'static str`: a hundred short strings, leaked
    // once by a process that exits right after.
    let page = command.clone().name(&*Box::leak(name.clone().into_boxed_str()));
    clap_mangen::Man::new(page).render(&mut roff).with_context(|| format!("cannot render the page of {name}"))?;
    out.push((format!("{name}.1"), roff));
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        collect(sub, format!("{name}-{}", sub.get_name()), out)?;
    }
    Ok(())
}

/// Writes every page into `dir` (created if missing); returns the files.
pub(crate) fn write(root: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    pages(root)?
        .into_iter()
        .map(|(file, roff)| {
            let path = dir.join(file);
            std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}
