//! `shell.exec`: the dangerous capability.
//!
//! Checked before anything runs: the program is on the grant's allowlist by
//! exact name (a bare name is looked up only in absolute `PATH` directories
//! outside every granted directory), its arguments pass the argument policy
//! (`coderclaw_core::shell_policy`), and the working directory lies inside a
//! granted directory (after canonicalisation, so symlinks cannot point it
//! elsewhere). The child is started directly (no shell, arguments verbatim),
//! confined by the kernel (`crate::confine`: Landlock, namespaces, rlimits),
//! with no stdin, only `PATH`, the grant's environment and git's protected
//! config, stdout/stderr capped, and is killed at the timeout; its PID
//! namespace takes every descendant with it.

use crate::bindings::coderclaw::skill::shell::{Command, Host, Output, ShellError};
use crate::caps::wasi::ResolvedDir;
use crate::confine;
use crate::state::{RunContext, RunState};
use coderclaw_core::shell_policy;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

impl Host for RunState {
    async fn exec(&mut self, cmd: Command) -> Result<Output, ShellError> {
        let ctx = self.ctx.clone();
        let target = std::iter::once(cmd.program.as_str())
            .chain(cmd.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let timeout = shell_timeout(&ctx, cmd.timeout_ms);
        let prepared = authorize(&ctx, &cmd).and_then(|(program, cwd)| {
            let mut command = command(&ctx, &cmd, &program, &cwd);
            let dirs = ctx.grant.dirs().iter().map(|d| (d.host.as_path(), d.access)).collect();
            let request = confine::Request {
                dirs,
                program: &program,
                network: ctx.grant.shell_network(&cmd.program),
                mode: ctx.grant.confinement(),
                cpu_seconds: timeout.as_secs() + 1,
            };
            let confined = confine::confine(&mut command, &request)?;
            Ok((command, program, confined))
        });
        let (command, program, confined) = match prepared {
            Ok(ok) => ok,
            Err(reason) => {
                ctx.capability("shell", target, false, reason.clone());
                return Err(ShellError::Denied(reason));
            }
        };
        let result = run(&ctx, command, &program, timeout).await;
        let detail = match &result {
            Ok(o) => match o.exit_code {
                Some(code) => format!("exit code {code}; {confined}"),
                None => format!("killed by a signal; {confined}"),
            },
            Err(ShellError::TimedOut(m) | ShellError::Failed(m) | ShellError::Denied(m)) => format!("{m}; {confined}"),
        };
        ctx.capability("shell", target, true, detail);
        result
    }
}

/// The grant's decision: the program's path and the working directory, or
/// why not. Runs nothing.
fn authorize(ctx: &RunContext, cmd: &Command) -> Result<(PathBuf, PathBuf), String> {
    if !ctx.grant.allows_program(&cmd.program) {
        let allowed: Vec<&str> = ctx.grant.shell().iter().map(String::as_str).collect();
        return Err(if allowed.is_empty() {
            format!("program `{}` is not allowed: this skill has no shell grant", cmd.program)
        } else {
            format!("program `{}` is not in this skill's shell grant ({})", cmd.program, allowed.join(", "))
        });
    }
    shell_policy::check_args(&cmd.program, &cmd.args, ctx.grant.shell_rules(&cmd.program))?;
    if let Some(name) = ctx.grant.env().keys().find(|n| shell_policy::dangerous_env(n)) {
        return Err(format!(
            "environment variable {name} of this grant can make a program run other code, so shell.exec \
             does not pass it to a child: remove it from the skill's env capability"
        ));
    }
    let cwd = working_dir(&ctx.dirs, cmd.cwd.as_deref())?;
    let granted: Vec<&Path> = ctx.grant.dirs().iter().map(|d| d.host.as_path()).collect();
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let program = find_program(&cmd.program, &path_var, &granted).ok_or_else(|| {
        format!(
            "program `{}` is allowed but was not found on the host's PATH (granted directories are not searched)",
            cmd.program
        )
    })?;
    Ok((program, cwd))
}

/// Maps a guest working directory onto the host, refusing anything outside
/// the granted directories.
fn working_dir(dirs: &[ResolvedDir], guest: Option<&str>) -> Result<PathBuf, String> {
    let Some(first) = dirs.first() else {
        return Err("no directory is granted, so there is no allowed working directory".into());
    };
    let Some(guest) = guest else {
        return Ok(first.host.clone());
    };
    let outside = || format!("working directory `{guest}` is not inside a granted directory");
    let (dir, rel) = dirs.iter().find_map(|d| relative_to(&d.guest, guest).map(|rel| (d, rel))).ok_or_else(outside)?;
    if Path::new(rel).components().any(|c| c == Component::ParentDir) {
        return Err(format!("working directory `{guest}` climbs out with `..`"));
    }
    let host = std::fs::canonicalize(dir.host.join(rel)).map_err(|e| format!("working directory `{guest}`: {e}"))?;
    if !host.starts_with(&dir.host) {
        return Err(outside());
    }
    Ok(host)
}

/// The part of `path` below guest directory `base`, if it is below it. A
/// base of `.` holds every relative path.
fn relative_to<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let base = base.trim_end_matches('/');
    if base == "." {
        return (!path.starts_with('/')).then(|| path.trim_start_matches("./"));
    }
    if path == base {
        return Some("");
    }
    path.strip_prefix(base)?.strip_prefix('/')
}

/// Finds `program` on `path_var`. Only absolute PATH entries are searched,
/// and none inside a granted directory (`granted`, canonical), whatever its
/// access: otherwise a skill, an agent calling it with write access, or an
/// earlier run could plant its own `git` and have the host run it.
fn find_program(program: &str, path_var: &std::ffi::OsStr, granted: &[&Path]) -> Option<PathBuf> {
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if Path::new(program).is_absolute() {
        return executable(Path::new(program)).then(|| PathBuf::from(program));
    }
    std::env::split_paths(path_var)
        .filter(|dir| dir.is_absolute())
        .filter(|dir| {
            let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            !granted.iter().any(|g| real.starts_with(g))
        })
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

fn shell_timeout(ctx: &RunContext, asked_ms: Option<u64>) -> Duration {
    let mut t = ctx.grant.limits().shell_timeout;
    if let Some(ms) = asked_ms {
        t = t.min(Duration::from_millis(ms));
    }
    t.min(ctx.deadline.saturating_duration_since(Instant::now()))
}

/// The child's command: arguments verbatim, no shell, no stdin, only
/// `PATH`, the grant's environment and, for git, the protected config.
fn command(ctx: &RunContext, cmd: &Command, program: &Path, cwd: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .args(&cmd.args)
        .current_dir(cwd)
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| (std::ffi::OsString::from("PATH"), p)))
        .envs(ctx.grant.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if shell_policy::program_name(&cmd.program) == "git" {
        command.envs(shell_policy::git_protected_env());
    }
    command
}

async fn run(
    ctx: &RunContext,
    mut command: tokio::process::Command,
    program: &Path,
    timeout: Duration,
) -> Result<Output, ShellError> {
    let mut child =
        command.spawn().map_err(|e| ShellError::Failed(format!("cannot start {}: {e}", program.display())))?;
    let pid = child.id();
    // If the run is cancelled (its future dropped) while the program runs,
    // the whole process group goes with it, not just the direct child.
    let group = GroupKill(pid.and_then(|p| i32::try_from(p).ok()));
    let cap = ctx.grant.limits().shell_output_bytes;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = tokio::time::timeout(timeout, async {
        tokio::join!(read_capped(stdout, cap), read_capped(stderr, cap), child.wait())
    })
    .await;
    match finished {
        Ok(((stdout, out_cut), (stderr, err_cut), status)) => {
            // Reaped: its pid may be reused now, so never signal it.
            group.disarm();
            let status = status.map_err(|e| ShellError::Failed(format!("waiting for the program failed: {e}")))?;
            Ok(Output { exit_code: status.code(), stdout, stderr, truncated: out_cut || err_cut })
        }
        Err(_) => {
            drop(group);
            let _ = child.kill().await;
            Err(ShellError::TimedOut(format!("killed after {timeout:?}")))
        }
    }
}

/// Kills the child's process group when dropped (timeout, or the run's
/// future dropped by a cancel). The child leads its own group, so this also
/// ends what it started. Disarmed once the child is reaped, because its pid
/// may then belong to someone else.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Reads a pipe to its end, keeping at most `cap` bytes (the rest is drained
/// so the child never blocks on a full pipe). Returns the bytes and whether
/// anything was cut.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: u64) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else { return (Vec::new(), false) };
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    (kept, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_map_only_below_their_base() {
        assert_eq!(relative_to(".", "src"), Some("src"));
        assert_eq!(relative_to(".", "./src"), Some("src"));
        assert_eq!(relative_to(".", "/etc"), None);
        assert_eq!(relative_to("/workspace", "/workspace/a"), Some("a"));
        assert_eq!(relative_to("/workspace", "/workspace"), Some(""));
        assert_eq!(relative_to("/workspace", "/workspacex"), None);
        assert_eq!(relative_to("/workspace/", "/workspace/a"), Some("a"));
    }

    #[test]
    fn programs_are_never_found_in_granted_or_relative_path_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (bin, planted) = (root.join("bin"), root.join("ws/node_modules/.bin"));
        for dir in [&bin, &planted] {
            std::fs::create_dir_all(dir).unwrap();
            let tool = dir.join("tool");
            std::fs::write(&tool, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = std::env::join_paths([&planted, &bin]).unwrap();
        // A granted workspace (read-only or not): the planted copy is
        // skipped, the real one found.
        let ws = root.join("ws");
        assert_eq!(find_program("tool", &path, &[ws.as_path()]), Some(bin.join("tool")));
        // Outside every granted directory the first PATH entry wins, as usual.
        assert_eq!(find_program("tool", &path, &[]), Some(planted.join("tool")));
        // Relative entries are never searched.
        assert_eq!(find_program("tool", std::ffi::OsStr::new("."), &[]), None);
        assert_eq!(find_program("missing", &path, &[]), None);
    }

    #[test]
    fn working_dir_refuses_escapes() {
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let dirs = [ResolvedDir { guest: ".".into(), host: tmp.clone() }];
        assert_eq!(working_dir(&dirs, None).unwrap(), tmp);
        assert!(working_dir(&dirs, Some("..")).unwrap_err().contains(".."));
        assert!(working_dir(&dirs, Some("/")).unwrap_err().contains("not inside"));
        assert!(working_dir(&[], Some(".")).unwrap_err().contains("no directory"));
    }
}
