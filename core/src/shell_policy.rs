//! What a `shell.exec` child may be asked to do beyond naming an allowed
//! program: the argument policy, and how strictly the kernel must confine it.
//!
//! Three layers decide an argument list, all of which must agree:
//! 1. built-in refusals for programs that can run other programs or read
//!    configuration that does (git's `-c`, `find -exec`, `tar
//!    --to-command`, `rsync -e`, launchers such as `env` and `xargs`);
//!    nothing lifts these;
//! 2. the skill's manifest (`[capabilities.shell-rules.<program>]`);
//! 3. the policy files (`skillPolicies[].shellRules`).
//!
//! The argument policy is the first line only: every child also runs under
//! kernel confinement (see the sandbox's `confine` module), which is what
//! holds when a program finds a way to run code this list did not foresee.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// A restriction on one program's arguments, from a manifest or a policy.
///
/// ```toml
/// [capabilities.shell-rules.git]
/// subcommands = ["status", "log", "diff"]   # the first non-option argument
/// args = ["--*", "[a-zA-Z0-9_]*"]           # every argument matches one pattern
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramRule {
    /// Allowed first non-option arguments (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcommands: Option<BTreeSet<String>>,
    /// Glob patterns (`*` any run, `?` one character); each argument must
    /// match at least one (absent: any argument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
}

/// How strictly `shell.exec` children must be confined by the kernel
/// (`config.yaml`: `shell: { confinement: required }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confinement {
    /// A child runs only when every layer (Landlock filesystem, network and
    /// scope rules; user, PID and network namespaces; rlimits) is in force.
    #[default]
    Required,
    /// A layer the kernel lacks is skipped, logged and audited; the run goes on.
    BestEffort,
}

/// Programs whose purpose is to run another program: refused outright,
/// since their arguments are a command line.
const LAUNCHERS: &[&str] = &[
    "env",
    "xargs",
    "nohup",
    "nice",
    "ionice",
    "timeout",
    "setsid",
    "stdbuf",
    "chroot",
    "unshare",
    "nsenter",
    "sudo",
    "su",
    "doas",
    "runuser",
    "busybox",
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "csh",
    "tcsh",
    "fish",
    "watch",
    "strace",
    "ltrace",
    "flock",
    "taskset",
    "chrt",
    "script",
    "systemd-run",
    "parallel",
    "expect",
];

/// Git subcommands that run a program named in their arguments or build
/// one: refused whatever the rules say.
const GIT_RUNNERS: &[&str] = &[
    "filter-branch",
    "bisect",
    "submodule",
    "difftool",
    "mergetool",
    "instaweb",
    "daemon",
    "web--browse",
    "send-email",
    "svn",
    "p4",
    "cvsimport",
    "cvsserver",
    "archimport",
    "shell",
    "upload-pack",
    "receive-pack",
    "upload-archive",
    "credential",
    "help",
];

/// Git's built-in subcommands a child may name. Anything else is an alias,
/// which the repository's own config can define as `!command`.
const GIT_BUILTINS: &[&str] = &[
    "add",
    "am",
    "apply",
    "archive",
    "blame",
    "branch",
    "cat-file",
    "check-ignore",
    "checkout",
    "cherry-pick",
    "clean",
    "clone",
    "commit",
    "commit-tree",
    "count-objects",
    "describe",
    "diff",
    "diff-files",
    "diff-index",
    "diff-tree",
    "fetch",
    "for-each-ref",
    "format-patch",
    "fsck",
    "gc",
    "grep",
    "hash-object",
    "init",
    "log",
    "ls-files",
    "ls-remote",
    "ls-tree",
    "merge",
    "merge-base",
    "mv",
    "name-rev",
    "notes",
    "pull",
    "push",
    "read-tree",
    "rebase",
    "reflog",
    "remote",
    "reset",
    "restore",
    "rev-list",
    "rev-parse",
    "revert",
    "rm",
    "shortlog",
    "show",
    "show-ref",
    "stash",
    "status",
    "switch",
    "symbolic-ref",
    "tag",
    "update-index",
    "update-ref",
    "version",
    "whatchanged",
    "worktree",
    "write-tree",
];

/// Environment variables that make a child load or run other code: a grant
/// that would pass one to a `shell.exec` child is refused at the call.
pub fn dangerous_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("LD_")
        || upper.starts_with("GIT_")
        || matches!(
            upper.as_str(),
            "BASH_ENV"
                | "ENV"
                | "PAGER"
                | "EDITOR"
                | "VISUAL"
                | "SSH_ASKPASS"
                | "PERL5OPT"
                | "PYTHONSTARTUP"
                | "NODE_OPTIONS"
                | "RSYNC_RSH"
                | "TAR_OPTIONS"
                | "PROMPT_COMMAND"
        )
}

/// The environment every git child gets from the host, overriding the
/// repository's own `.git/config` (environment config has command-line
/// precedence): no system or global config, no hooks, no fsmonitor, no
/// pager, editor, ssh command, credential helper or `ext::` transport.
pub fn git_protected_env() -> Vec<(String, String)> {
    let config = [
        ("core.fsmonitor", "false"),
        ("core.hooksPath", "/dev/null"),
        ("core.sshCommand", "false"),
        ("core.pager", "cat"),
        ("core.editor", "false"),
        ("sequence.editor", "false"),
        ("core.askPass", ""),
        ("credential.helper", ""),
        ("diff.external", ""),
        ("core.gitProxy", ""),
        ("protocol.ext.allow", "never"),
        // Local and ssh transports run `remote.<name>.uploadpack` from the
        // repository's config; http(s) runs nothing.
        ("protocol.file.allow", "never"),
        ("uploadpack.packObjectsHook", ""),
        ("gpg.program", "false"),
        ("gpg.ssh.program", "false"),
        ("gpg.x509.program", "false"),
        ("commit.gpgSign", "false"),
        ("tag.gpgSign", "false"),
        ("log.showSignature", "false"),
        ("core.alternateRefsCommand", ""),
    ];
    let mut env = vec![
        ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
        ("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".to_owned()),
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
        ("GIT_CONFIG_COUNT".to_owned(), config.len().to_string()),
    ];
    for (i, (key, value)) in config.iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), (*key).to_owned()));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), (*value).to_owned()));
    }
    env
}

/// The name a program is known by (`/usr/bin/git` is `git`).
pub fn program_name(program: &str) -> &str {
    Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program)
}

/// Checks one call: the built-in refusals first, then every rule given for
/// this program (all must pass). The error says which argument and why.
pub fn check_args<'a>(
    program: &str,
    args: &[String],
    rules: impl IntoIterator<Item = &'a ProgramRule>,
) -> Result<(), String> {
    builtin(program_name(program), args)?;
    for rule in rules {
        rule.check(program, args)?;
    }
    Ok(())
}

impl ProgramRule {
    fn check(&self, program: &str, args: &[String]) -> Result<(), String> {
        if let Some(allowed) = &self.subcommands {
            let sub = args.iter().find(|a| !a.starts_with('-'));
            match sub {
                Some(s) if allowed.contains(s) => {}
                _ => {
                    let list: Vec<&str> = allowed.iter().map(String::as_str).collect();
                    return Err(format!(
                        "`{program}` may run only the subcommands [{}] under its shell rules; got {}",
                        list.join(", "),
                        sub.map_or_else(|| "none".to_owned(), |s| format!("`{s}`"))
                    ));
                }
            }
        }
        if let Some(patterns) = &self.args
            && let Some(bad) = args.iter().find(|a| !patterns.iter().any(|p| glob(p, a)))
        {
            return Err(format!("argument `{bad}` of `{program}` matches none of its shell rules' patterns"));
        }
        Ok(())
    }
}

fn builtin(name: &str, args: &[String]) -> Result<(), String> {
    if LAUNCHERS.contains(&name) || name.starts_with("ld-linux") || name.starts_with("ld.so") {
        return Err(format!("`{name}` runs other programs, so it is never run by shell.exec"));
    }
    if name.starts_with("git-") {
        return Err(format!("`{name}` is a part of git: run it as `git` with a subcommand, under git's checks"));
    }
    let refuse = |arg: &str, why: &str| Err(format!("`{name} {arg}` is refused: {why}"));
    match name {
        "git" => git(args),
        "find" => match args.iter().find(|a| {
            matches!(
                a.as_str(),
                "-exec" | "-execdir" | "-ok" | "-okdir" | "-delete" | "-fprint" | "-fprint0" | "-fprintf" | "-fls"
            )
        }) {
            Some(a) => refuse(a, "it runs programs or writes files named in the arguments"),
            None => Ok(()),
        },
        "tar" => {
            let long = [
                "--to-command",
                "--use-compress-program",
                "--checkpoint-action",
                "--info-script",
                "--new-volume-script",
                "--rsh-command",
                "--rmt-command",
                "--index-file",
            ];
            let old_style = args.first().filter(|a| !a.starts_with('-')).map(String::as_str);
            match args.iter().map(String::as_str).find(|a| {
                long.iter().any(|l| names_long_option(a, l))
                    || short_cluster_has(a, &['I', 'F'])
                    || old_style == Some(a) && a.contains(['I', 'F'])
            }) {
                Some(a) => refuse(a, "it runs a program named in the arguments"),
                None => Ok(()),
            }
        }
        "rsync" => match args.iter().map(String::as_str).find(|a| {
            ["--rsh", "--rsync-path", "--config"].iter().any(|l| names_long_option(a, l))
                || short_cluster_has(a, &['e'])
        }) {
            Some(a) => refuse(a, "it runs a program named in the arguments"),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Global options git may be given before its subcommand: none of them
/// takes a separate value (which could be mistaken for the subcommand) or
/// points git at other configuration, programs or repositories.
const GIT_GLOBALS: &[&str] = &[
    "--no-pager",
    "-P",
    "--paginate",
    "-p",
    "--no-replace-objects",
    "--literal-pathspecs",
    "--glob-pathspecs",
    "--noglob-pathspecs",
    "--icase-pathspecs",
    "--no-optional-locks",
    "--no-advice",
    "--version",
];

/// Long options that name a program for git to run, or configuration or
/// templates that can: refused in full, with `=value`, or abbreviated (git
/// accepts any unique prefix).
const GIT_FORBIDDEN_LONG: &[&str] = &["--upload-pack", "--receive-pack", "--exec", "--config", "--template"];

/// Whether `arg` is `long`, `long=…`, or an abbreviation of it that git or
/// GNU tar could expand to it (at least two letters after `--`).
fn names_long_option(arg: &str, long: &str) -> bool {
    let name = arg.split_once('=').map_or(arg, |(n, _)| n);
    name.starts_with("--") && name.len() >= 4 && long.starts_with(name)
}

/// git: only allowlisted global options; a built-in subcommand; no option
/// that names a program to run, abbreviated or not.
fn git(args: &[String]) -> Result<(), String> {
    let refuse = |arg: &str, why: &str| Err(format!("`git {arg}` is refused: {why}"));
    let mut sub = None;
    for (i, arg) in args.iter().enumerate() {
        let a = arg.as_str();
        if sub.is_none() {
            if !a.starts_with('-') {
                sub = Some((i, a));
                continue;
            }
            if !GIT_GLOBALS.contains(&a) {
                return refuse(
                    a,
                    "before the subcommand only options that point git at nothing else are allowed \
                     (configuration, other programs, repositories or namespaces are refused)",
                );
            }
            continue;
        }
        if let Some(long) = GIT_FORBIDDEN_LONG.iter().find(|l| names_long_option(a, l)) {
            return refuse(a, &format!("{long} names a program for git to run, or configuration or hooks that can"));
        }
        if a.contains("ext::") || a.contains("fd::") {
            return refuse(a, "the ext:: and fd:: transports run programs");
        }
    }
    let Some((at, sub)) = sub else { return Ok(()) };
    if GIT_RUNNERS.contains(&sub) {
        return refuse(sub, "this subcommand runs programs named in its arguments or configuration");
    }
    if !GIT_BUILTINS.contains(&sub) {
        return refuse(sub, "not a git subcommand shell.exec runs (aliases from a repository's config are never run)");
    }
    let rest = &args[at + 1..];
    let short = |flags: &[char]| rest.iter().find(|a| short_cluster_has(a, flags)).map(String::as_str);
    // Short options with their value attached (`-ucmd`) or in a cluster.
    if sub == "rebase"
        && let Some(a) = short(&['x'])
    {
        return refuse(a, "rebase -x runs a command after each commit");
    }
    if matches!(sub, "clone" | "fetch" | "pull" | "ls-remote")
        && let Some(a) = short(&['u', 'c'])
    {
        return refuse(a, "-u names a program to run on the remote side and -c sets configuration");
    }
    if sub == "archive" && rest.iter().any(|a| names_long_option(a, "--remote")) {
        return refuse("archive --remote", "it runs a program on the remote side");
    }
    Ok(())
}

/// Whether `arg` is a short-option cluster (`-xzf`) holding one of `flags`.
fn short_cluster_has(arg: &str, flags: &[char]) -> bool {
    arg.starts_with('-') && !arg.starts_with("--") && arg[1..].chars().any(|c| flags.contains(&c))
}

/// `*` matches any run of characters, `?` exactly one; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    fn refused(program: &str, a: &[&str]) -> String {
        check_args(program, &args(a), []).expect_err(&format!("{program} {a:?} was allowed"))
    }

    #[test]
    fn programs_that_run_programs_are_refused_with_their_option() {
        assert!(refused("git", &["-c", "alias.x=!touch /tmp/m", "x"]).contains("-c"));
        assert!(refused("git", &["-calias.x=!id", "x"]).contains("-calias"));
        assert!(refused("git", &["--config-env=core.sshCommand=X", "fetch"]).contains("--config-env"));
        assert!(refused("/usr/bin/git", &["--exec-path=/tmp", "status"]).contains("--exec-path"));
        assert!(refused("git", &["-C", "/root", "status"]).contains("-C"));
        // A global option's separate value is not taken for the subcommand.
        assert!(refused("git", &["--namespace", "status", "clone", "-u", "id", "/r", "o"]).contains("--namespace"));
        assert!(refused("git", &["--attr-source", "status", "log"]).contains("--attr-source"));
        // Abbreviated and stuck forms.
        assert!(refused("git", &["clone", "--upload-p=touch /tmp/m", "x"]).contains("--upload-p"));
        assert!(refused("git", &["push", "--receive=id", "x"]).contains("--receive"));
        assert!(refused("git", &["ls-remote", "--exe=id", "x"]).contains("--exe"));
        assert!(refused("git", &["init", "--templ=/tmp/t"]).contains("--templ"));
        assert!(refused("git", &["clone", "-ucmd", "x"]).contains("-ucmd"));
        assert!(refused("git", &["clone", "-qu", "cmd", "x"]).contains("-qu"));
        assert!(refused("git", &["config", "core.pager", "id"]).contains("config"));
        assert!(refused("/usr/lib/git-core/git-clone", &["-u", "id", "x"]).contains("part of git"));
        assert!(refused("/lib64/ld-linux-x86-64.so.2", &["/ws/x"]).contains("runs other programs"));
        assert!(refused("tar", &["-cf", "/dev/null", "--to-com=id", "."]).contains("--to-com"));
        assert!(refused("tar", &["-cf", "/dev/null", "--checkpoint-a=exec=id", "."]).contains("--checkpoint-a"));
        assert!(refused("git", &["clone", "--upload-pack=touch /tmp/m", "x"]).contains("--upload-pack"));
        assert!(refused("git", &["clone", "-u", "touch /tmp/m", "x"]).contains("-u"));
        assert!(refused("git", &["clone", "-c", "core.sshCommand=id", "x"]).contains("-c"));
        assert!(refused("git", &["clone", "ext::sh -c touch% /tmp/m", "x"]).contains("ext::"));
        assert!(refused("git", &["st"]).contains("aliases"));
        assert!(refused("git", &["submodule", "foreach", "id"]).contains("submodule"));
        assert!(refused("git", &["rebase", "-x", "id", "HEAD~1"]).contains("rebase"));
        assert!(refused("find", &[".", "-exec", "touch", "/tmp/m", ";"]).contains("-exec"));
        assert!(refused("tar", &["-cf", "/dev/null", "--to-command=id", "."]).contains("--to-command"));
        assert!(refused("tar", &["-xIsh", "x.tar"]).contains("-xIsh"));
        assert!(refused("tar", &["xIf", "sh", "x.tar"]).contains("xIf"));
        assert!(refused("rsync", &["-avze", "sh -c id", "a", "b:"]).contains("-avze"));
        assert!(refused("rsync", &["--rsh=id", "a", "b:"]).contains("--rsh"));
        assert!(refused("env", &["touch", "/tmp/m"]).contains("runs other programs"));
        assert!(refused("xargs", &["touch"]).contains("runs other programs"));
    }

    #[test]
    fn ordinary_calls_pass() {
        for (p, a) in [
            ("git", &["status"][..]),
            ("git", &["log", "--oneline", "-n", "5"]),
            ("git", &["--no-pager", "diff", "--cached"]),
            ("git", &["log", "--exclude=x", "--all"]),
            ("git", &["fetch", "--update-shallow"]),
            ("git", &["clean", "-xdn"]),
            ("git", &["grep", "-c", "fn"]),
            ("find", &[".", "-name", "*.rs"]),
            ("tar", &["-czf", "out.tgz", "src"]),
            ("ls", &["-la", "/root"]),
        ] {
            check_args(p, &args(a), []).unwrap_or_else(|e| panic!("{p} {a:?}: {e}"));
        }
    }

    #[test]
    fn rules_only_restrict() {
        let rule = ProgramRule {
            subcommands: Some(["status".to_owned(), "log".to_owned()].into()),
            args: Some(vec!["--*".to_owned(), "status".to_owned(), "log".to_owned()]),
        };
        check_args("git", &args(&["status", "--short"]), [&rule]).unwrap();
        assert!(check_args("git", &args(&["push"]), [&rule]).unwrap_err().contains("[log, status]"));
        assert!(check_args("git", &args(&["log", "-p"]), [&rule]).unwrap_err().contains("`-p`"));
        // A rule cannot lift a built-in refusal.
        let any = ProgramRule { subcommands: None, args: Some(vec!["*".to_owned()]) };
        assert!(check_args("git", &args(&["-c", "a=b", "status"]), [&any]).is_err());
    }

    #[test]
    fn globs_match_whole_arguments() {
        assert!(glob("--*", "--short"));
        assert!(glob("*.rs", "src/main.rs"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(!glob("--*", "-p"));
        assert!(glob("*", ""));
    }

    #[test]
    fn dangerous_environment_is_named() {
        for v in ["LD_PRELOAD", "GIT_SSH_COMMAND", "git_config_parameters", "BASH_ENV", "PAGER"] {
            assert!(dangerous_env(v), "{v}");
        }
        assert!(!dangerous_env("GITHUB_TOKEN"));
        let env = git_protected_env();
        assert!(env.iter().any(|(k, v)| k == "GIT_CONFIG_GLOBAL" && v == "/dev/null"));
        let count: usize = env.iter().find(|(k, _)| k == "GIT_CONFIG_COUNT").unwrap().1.parse().unwrap();
        assert_eq!(env.iter().filter(|(k, _)| k.starts_with("GIT_CONFIG_KEY_")).count(), count);
    }
}
