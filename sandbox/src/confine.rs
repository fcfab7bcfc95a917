//! Kernel confinement of `shell.exec` children (Linux).
//!
//! The argument policy (`coderclaw_core::shell_policy`) refuses the calls
//! known to run other programs; this module is what holds when a program
//! finds a way nobody listed. Every child gets, before it executes:
//!
//! - **Landlock** (ABI 6): the filesystem is the run's granted directories
//!   (read-only where the grant is; never executable) plus read/execute of
//!   the system's program and library directories, a few `/etc` files and
//!   the `/dev` null/zero/random nodes; nothing else can be read, written or
//!   executed. TCP bind and connect are denied unless the host configuration
//!   gives the program network. Signals and abstract unix sockets reach
//!   nothing outside the child's own domain.
//! - **Namespaces**: a new user, PID and IPC namespace (and network
//!   namespace, unless the program has network). The program is PID 1 of its
//!   PID namespace, so when it exits, is killed at the timeout or by a
//!   cancel, the kernel kills every descendant, `setsid` or not.
//! - **seccomp** (x86_64): no unix-socket `socket()` (Landlock ABI 6 scopes
//!   only abstract sockets; a pathname socket such as the session bus or
//!   docker.sock would reach outside), no `io_uring`, no new namespaces.
//! - **rlimits**: processes, file size, CPU time; no core files.
//! - `no_new_privs`: set-user-id programs gain nothing.
//!
//! Under [`Confinement::Required`] (the default) a kernel lacking a layer
//! means the call is refused, naming what is missing; under
//! [`Confinement::BestEffort`] the layer is skipped and the capability
//! record says so.

// The one place the sandbox forks: `pre_exec` and `fork` are unsafe, and the
// code they run must be async-signal-safe (see `in_child`).
#![allow(unsafe_code)]

use coderclaw_core::{Access, Confinement};
use landlock::{
    ABI, Access as _, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope,
};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, Signal, kill, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, getpid};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The Landlock ABI every layer above needs (scoped signals and sockets).
const LANDLOCK_ABI: i32 = 6;
/// Processes (and threads) one child's user namespace may hold at once.
pub const MAX_PROCESSES: u64 = 256;
/// Largest file a child may write.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// System directories a child may read and execute from.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];
/// `/etc` entries programs need to start and to name users; nothing else
/// in `/etc` (keys, shadow files, other tools' configuration) is readable.
const ETC_ENTRIES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
    "/etc/locale.alias",
];
/// `/etc` entries added for a program with network.
const NETWORK_ETC: &[&str] = &["/etc/resolv.conf", "/etc/hosts", "/etc/ssl", "/etc/ca-certificates", "/etc/gai.conf"];
const DEV_WRITABLE: &[&str] = &["/dev/null"];
const DEV_READABLE: &[&str] = &["/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// What this machine's kernel offers `shell.exec` children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    /// The kernel's Landlock ABI (0: none).
    pub landlock_abi: i32,
    /// Whether an unprivileged process may create user, PID, IPC and
    /// network namespaces (probed by starting `true` in them), or why not.
    pub namespaces: Result<(), String>,
}

impl Support {
    /// The layers this kernel lacks, in words; empty when every layer works.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.landlock_abi < LANDLOCK_ABI {
            out.push(if self.landlock_abi == 0 {
                "Landlock (not enabled in this kernel)".to_owned()
            } else {
                format!(
                    "Landlock ABI {LANDLOCK_ABI} (this kernel has ABI {}: no scoped signals and sockets{})",
                    self.landlock_abi,
                    if self.landlock_abi < 4 { ", no TCP rules" } else { "" }
                )
            });
        }
        if let Err(why) = &self.namespaces {
            out.push(format!("user and PID namespaces ({why})"));
        }
        out
    }
}

/// Probes the kernel once per process.
pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(|| Support { landlock_abi: landlock_abi(), namespaces: probe_namespaces() })
}

fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and size 0 this call only returns the
    // ABI version (or an error); it touches no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(abi).unwrap_or(0).max(0)
}

fn probe_namespaces() -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let program = std::env::split_paths(&path)
        .map(|d| d.join("true"))
        .find(|p| p.is_file())
        .ok_or("no `true` program on PATH to probe with")?;
    let mut cmd = std::process::Command::new(program);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let plan = ChildPlan::new(None, true, true, [0; 3]);
    // SAFETY: `in_child` only makes async-signal-safe system calls (see there).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || plan.in_child());
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("a probe in new namespaces ended with {s}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One call's confinement, decided in the parent.
pub(crate) struct Request<'a> {
    /// Granted directories (canonical) and their access.
    pub dirs: Vec<(&'a Path, Access)>,
    /// The program's path.
    pub program: &'a Path,
    /// Whether the host configuration gives this program network.
    pub network: bool,
    pub mode: Confinement,
    /// CPU seconds the child may use.
    pub cpu_seconds: u64,
}

/// Installs the confinement on `cmd`; returns a summary for the capability
/// record, or why the call is refused.
pub(crate) fn confine(cmd: &mut tokio::process::Command, req: &Request<'_>) -> Result<String, String> {
    let support = support();
    let missing = support.missing();
    if !missing.is_empty() && req.mode == Confinement::Required {
        return Err(format!(
            "this kernel cannot confine shell.exec children: missing {}; the host configuration can set \
             `shell: {{ confinement: best-effort }}` to run them without",
            missing.join(" and ")
        ));
    }
    // A git child runs what the repository's config and attributes name
    // (filters, textconv): only the kernel confines those.
    if !missing.is_empty() && coderclaw_core::shell_policy::program_name(&req.program.to_string_lossy()) == "git" {
        return Err(format!(
            "git is run only fully confined (a repository can make it run programs); this kernel lacks {}",
            missing.join(" and ")
        ));
    }
    let namespaces = support.namespaces.is_ok();
    let level = if req.mode == Confinement::Required { CompatLevel::HardRequirement } else { CompatLevel::BestEffort };
    let ruleset = if support.landlock_abi > 0 {
        Some(ruleset(req, level).map_err(|e| format!("cannot build the Landlock rules: {e}"))?)
    } else {
        None
    };
    let mut plan =
        ChildPlan::new(ruleset.flatten(), namespaces, !req.network, [MAX_PROCESSES, MAX_FILE_BYTES, req.cpu_seconds]);
    plan.seccomp = seccomp_filter();
    // SAFETY: `in_child` only makes async-signal-safe system calls (see there).
    unsafe {
        cmd.pre_exec(move || plan.in_child());
    }
    let mut summary = vec![if support.landlock_abi >= LANDLOCK_ABI {
        "Landlock".to_owned()
    } else {
        format!("Landlock ABI {} only", support.landlock_abi)
    }];
    if namespaces {
        summary.push(if req.network { "user/PID namespaces" } else { "user/PID/network namespaces" }.to_owned());
    }
    summary.push("rlimits".to_owned());
    if req.network {
        summary.push("network granted by the host configuration".to_owned());
    }
    if !missing.is_empty() {
        tracing::warn!(missing = %missing.join(", "), "shell.exec child confined best-effort");
        summary.push(format!("best-effort: without {}", missing.join(", ")));
    }
    Ok(format!("confined: {}", summary.join(", ")))
}

fn ruleset(req: &Request<'_>, level: CompatLevel) -> Result<Option<OwnedFd>, landlock::RulesetError> {
    let abi = ABI::V6;
    let mut rules = Ruleset::default().set_compatibility(level).handle_access(AccessFs::from_all(abi))?;
    if !req.network {
        rules = rules.handle_access(AccessNet::from_all(abi))?;
    }
    let mut created = rules.scope(Scope::from_all(abi))?.create()?;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let exec = read | AccessFs::Execute;
    let write = read
        | AccessFs::WriteFile
        | AccessFs::Truncate
        | AccessFs::RemoveFile
        | AccessFs::RemoveDir
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::MakeSym
        | AccessFs::Refer;
    let mut paths: Vec<(PathBuf, BitFlags<AccessFs>)> = Vec::new();
    paths.extend(SYSTEM_DIRS.iter().map(|p| (PathBuf::from(p), exec)));
    paths.extend(ETC_ENTRIES.iter().map(|p| (PathBuf::from(p), read)));
    if req.network {
        paths.extend(NETWORK_ETC.iter().map(|p| (PathBuf::from(p), read)));
    }
    paths.extend(
        DEV_WRITABLE.iter().map(|p| (PathBuf::from(p), AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate)),
    );
    paths.extend(DEV_READABLE.iter().map(|p| (PathBuf::from(p), BitFlags::from(AccessFs::ReadFile))));
    // A program outside the system directories: that one file, no more.
    paths.push((req.program.to_path_buf(), AccessFs::ReadFile | AccessFs::Execute));
    paths.extend(req.dirs.iter().map(|(p, a)| (p.to_path_buf(), if *a == Access::Read { read } else { write })));
    for (path, access) in paths {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        // Directory rights on a file are an error: keep what a file can have.
        let access = if meta.is_dir() { access } else { access & AccessFs::from_file(abi) };
        let Ok(fd) = PathFd::new(&path) else { continue };
        created = created.add_rule(PathBeneath::new(fd, access))?;
    }
    Ok(created.into())
}

/// Everything the child needs, prepared in the parent so that the child
/// allocates nothing between `fork` and `exec`.
struct ChildPlan {
    ruleset: Option<OwnedFd>,
    namespaces: bool,
    new_net: bool,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    /// Processes, file bytes, CPU seconds (0: leave as is).
    limits: [u64; 3],
    /// The seccomp program, if this architecture has one.
    seccomp: Option<Vec<libc::sock_filter>>,
}

impl ChildPlan {
    fn new(ruleset: Option<OwnedFd>, namespaces: bool, new_net: bool, limits: [u64; 3]) -> Self {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        Self {
            ruleset,
            namespaces,
            new_net,
            // The same ids inside as outside: files the child creates are
            // owned as usual, and git's ownership checks agree.
            uid_map: format!("{uid} {uid} 1").into_bytes(),
            gid_map: format!("{gid} {gid} 1").into_bytes(),
            limits,
            seccomp: None,
        }
    }

    /// Runs in the forked child before `exec`. Only async-signal-safe
    /// system calls: no allocation, no locks (the parent is multi-threaded).
    fn in_child(&self) -> std::io::Result<()> {
        if self.namespaces {
            let mut flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC;
            if self.new_net {
                flags |= CloneFlags::CLONE_NEWNET;
            }
            unshare(flags)?;
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_file(c"/proc/self/uid_map", &self.uid_map)?;
            write_file(c"/proc/self/gid_map", &self.gid_map)?;
        }
        // After `unshare`: the process count is then the new namespace's.
        let [processes, file_bytes, cpu] = self.limits;
        for (resource, value) in
            [(Resource::RLIMIT_NPROC, processes), (Resource::RLIMIT_FSIZE, file_bytes), (Resource::RLIMIT_CPU, cpu)]
        {
            if value > 0 {
                setrlimit(resource, value, value.saturating_add(1))?;
            }
        }
        setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
        nix::sys::prctl::set_no_new_privs()?;
        if let Some(fd) = &self.ruleset {
            // SAFETY: a plain system call on a ruleset descriptor we own.
            if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(filter) = &self.seccomp {
            let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
            // SAFETY: `prog` points at a valid filter that outlives the call.
            if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) }
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        if self.namespaces { become_init() } else { Ok(()) }
    }
}

/// Forks once more so the program is PID 1 of the new PID namespace; the
/// process in between waits for it and exits as it did.
fn become_init() -> std::io::Result<()> {
    // SAFETY: the child is single-threaded here (a fresh fork), and both
    // sides only make async-signal-safe calls until `exec` or `_exit`.
    match unsafe { fork() }? {
        ForkResult::Child => {
            // The process in between dies only when killed (timeout,
            // cancel): then the program and, with it, its namespace go too.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            Ok(())
        }
        ForkResult::Parent { child } => {
            // Holding no descriptor lets the host see end-of-output and a
            // successful exec from the program alone.
            // SAFETY: closes this process's descriptors; nothing uses them after.
            unsafe {
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                let _ = signal(Signal::SIGCHLD, SigHandler::SigDfl);
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => _exit(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        // SAFETY: restoring the default action to die by it.
                        unsafe {
                            let _ = signal(sig, SigHandler::SigDfl);
                        }
                        let _ = kill(getpid(), sig);
                        _exit(128 + sig as i32)
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => _exit(127),
                }
            }
        }
    }
}

/// The seccomp program: refuse `socket(AF_UNIX, …)` (EACCES), `io_uring`
/// and `unshare` (EPERM), `clone` with namespace flags (EPERM), `clone3`
/// (ENOSYS, so libc falls back to `clone`), the x32 ABI; allow the rest.
#[cfg(target_arch = "x86_64")]
fn seccomp_filter() -> Option<Vec<libc::sock_filter>> {
    const LD_ABS: u16 = 0x20;
    const JEQ: u16 = 0x05 | 0x10;
    const JGE: u16 = 0x05 | 0x30;
    const JSET: u16 = 0x05 | 0x40;
    const RET: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const KILL: u32 = 0x8000_0000;
    const ALLOW: u32 = 0x7fff_0000;
    let errno = |e: i32| 0x0005_0000 | (e as u32 & 0xffff);
    let stmt = |code, k| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    let ns_flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP) as u32;
    let nr = |n: libc::c_long| n as u32;
    Some(vec![
        stmt(LD_ABS, 4),                               // 0: arch
        jump(JEQ, AUDIT_ARCH_X86_64, 1, 0),            // 1
        stmt(RET, KILL),                               // 2
        stmt(LD_ABS, 0),                               // 3: syscall number
        jump(JGE, 0x4000_0000, 0, 1),                  // 4: x32
        stmt(RET, errno(libc::ENOSYS)),                // 5
        jump(JEQ, nr(libc::SYS_io_uring_setup), 1, 0), // 6 -> 8 / 7
        jump(JEQ, nr(libc::SYS_unshare), 0, 1),        // 7 -> 8 / 9
        stmt(RET, errno(libc::EPERM)),                 // 8
        jump(JEQ, nr(libc::SYS_clone3), 0, 1),         // 9 -> 10 / 11
        stmt(RET, errno(libc::ENOSYS)),                // 10
        jump(JEQ, nr(libc::SYS_clone), 0, 3),          // 11 -> 12 / 15
        stmt(LD_ABS, 16),                              // 12: flags (low half)
        jump(JSET, ns_flags, 0, 5),                    // 13 -> 14 / 19
        stmt(RET, errno(libc::EPERM)),                 // 14
        jump(JEQ, nr(libc::SYS_socket), 0, 3),         // 15 -> 16 / 19
        stmt(LD_ABS, 16),                              // 16: domain
        jump(JEQ, libc::AF_UNIX as u32, 0, 1),         // 17 -> 18 / 19
        stmt(RET, errno(libc::EACCES)),                // 18
        stmt(RET, ALLOW),                              // 19
    ])
}

#[cfg(not(target_arch = "x86_64"))]
fn seccomp_filter() -> Option<Vec<libc::sock_filter>> {
    None
}

fn _exit(code: i32) -> ! {
    // SAFETY: ends this process at once, running nothing of the parent's.
    unsafe { libc::_exit(code) }
}

fn write_file(path: &CStr, bytes: &[u8]) -> std::io::Result<()> {
    use nix::fcntl::{OFlag, open};
    let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    nix::unistd::write(&fd, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_layers_are_named() {
        let full = Support { landlock_abi: 7, namespaces: Ok(()) };
        assert!(full.missing().is_empty());
        let old = Support { landlock_abi: 3, namespaces: Err("EPERM".into()) };
        let missing = old.missing().join("; ");
        assert!(
            missing.contains("ABI 6") && missing.contains("no TCP rules") && missing.contains("EPERM"),
            "{missing}"
        );
        assert!(Support { landlock_abi: 0, namespaces: Ok(()) }.missing()[0].contains("not enabled"));
    }
}
