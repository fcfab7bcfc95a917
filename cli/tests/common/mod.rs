//! Helpers shared by the CLI test binaries: the real `coderclaw` binary in
//! a fresh state directory, sample workspaces, signing.
#![allow(dead_code)] // each test binary uses a different subset

pub(crate) use coderclaw_e2e::guest;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub(crate) struct Cli {
    pub home: tempfile::TempDir,
}

impl Cli {
    pub(crate) fn new() -> Self {
        Self { home: tempfile::tempdir().unwrap() }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_coderclaw"))
            .args(args)
            .env("CODERCLAW_HOME", self.home.path())
            .env_remove("CODERCLAW_LOG")
            .output()
            .expect("coderclaw runs")
    }

    /// Runs with `stdin` as standard input.
    pub(crate) fn run_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
            .args(args)
            .env("CODERCLAW_HOME", self.home.path())
            .env_remove("CODERCLAW_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("coderclaw runs");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `skill run <raw component> --dangerous-allow-unsigned ... --json`
    /// and returns (exit code, report).
    pub(crate) fn run_json(&self, component: &str, extra: &[&str]) -> (i32, Value) {
        let path = guest(component);
        let mut args = vec!["skill", "run", path.to_str().unwrap(), "--dangerous-allow-unsigned", "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("--json output is JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code().unwrap(), report)
    }
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one two three\nfour\n").unwrap();
    std::fs::write(dir.path().join("creds.env"), "TOKEN=ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\n").unwrap();
    dir
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A repository policy naming shell-exec, so the dangerous skill may run
/// for developers (a dangerous skill no policy names is refused).
pub(crate) fn allow_shell_exec(ws: &Path) {
    std::fs::create_dir_all(ws.join(".coderClaw")).unwrap();
    std::fs::write(
        ws.join(".coderClaw/security.yaml"),
        "skillPolicies:\n  - skillId: shell-exec\n    requiredPermissions: [skill:execute]\n    allowedRoles: [developer]\n",
    )
    .unwrap();
}

pub(crate) fn manifest_path(skill: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../skills").join(skill).join("skill.toml")
}

/// Generates key `name`, trusts it for `namespace`; returns the key id.
pub(crate) fn trusted_key(cli: &Cli, name: &str, namespace: &str) -> String {
    let out = cli.run(&["key", "generate", "--name", name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("coderclaw-secret-key"), "the secret is never printed");
    let public = cli.run(&["key", "export-public", name]);
    let public = text(&public.stdout).trim().to_owned();
    assert!(public.starts_with("ed25519:"), "{public}");
    let out = cli.run(&["trust", "add", namespace, &public]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&cli.run(&["key", "list", "--json"]).stdout).unwrap();
    let entry = list.as_array().unwrap().iter().find(|k| k["name"] == name).unwrap().clone();
    assert_eq!(entry["public_key"], public);
    entry["key_id"].as_str().unwrap().to_owned()
}

/// Signs a guest component with its example manifest; returns the package path.
pub(crate) fn sign(cli: &Cli, skill: &str, key: &str, dir: &Path) -> std::path::PathBuf {
    sign_with(cli, skill, key, &manifest_path(skill), dir)
}

/// Signs a guest component with `manifest`; returns the package path.
pub(crate) fn sign_with(cli: &Cli, skill: &str, key: &str, manifest: &Path, dir: &Path) -> std::path::PathBuf {
    let out_path = dir.join(format!("{skill}.ccpkg"));
    let out =
        cli.run(&["skill", "sign", p(&guest(skill)), "--key", key, "--manifest", p(manifest), "--out", p(&out_path)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("sha256:"));
    out_path
}

/// A `coderclaw serve` child process, killed when dropped; its base URL.
pub(crate) struct Server(pub Child, pub String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `coderclaw serve` on `port` in workspace `ws`, once it listens.
pub(crate) fn start_server(cli: &Cli, ws: &str, port: u16) -> Server {
    start_server_with(cli, ws, port, &[])
}

/// [`start_server`] with more flags for `serve`.
pub(crate) fn start_server_with(cli: &Cli, ws: &str, port: u16, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--workspace", ws])
        .args(extra)
        .env("CODERCLAW_HOME", cli.home.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Warnings (e.g. about the state directory's mode) may come first.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        seen.push_str(&line);
        if line.contains("serving http://127.0.0.1") || line.is_empty() {
            break;
        }
    }
    assert!(seen.contains("serving http://127.0.0.1"), "{seen}");
    Server(child, format!("http://127.0.0.1:{port}"))
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A developer session token (the HTTP API answers nobody without one).
pub(crate) fn login(cli: &Cli) -> String {
    let added = cli.run_stdin(&["user", "add", "dev", "--role", "developer", "--password-stdin"], "dev password\n");
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let out = cli.run_stdin(&["login", "--user", "dev", "--password-stdin", "--json"], "dev password");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let session: Value = serde_json::from_slice(&out.stdout).unwrap();
    session["token"].as_str().unwrap().to_owned()
}

/// A Python virtual environment under the target directory named `name`
/// with `packages` from PyPI, made once and reused by later runs (and by
/// one test at a time); its interpreter.
/// The official SARIF 2.1.0 JSON schema, as Microsoft's SARIF Multitool
/// ships it (npm `@microsoft/sarif-multitool-linux`), fetched once into
/// the target directory.
pub(crate) fn sarif_schema() -> std::path::PathBuf {
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sarif-schema");
    let schema = dir.join("package/sarif-2.1.0.json");
    if schema.is_file() {
        return schema;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let package = "@microsoft/sarif-multitool-linux@5.7.0";
    let out = Command::new("npm")
        .args(["pack", package, "--silent", "--pack-destination"])
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("npm cannot run ({e}): this test needs npm (apt install npm)"));
    assert!(out.status.success(), "npm pack {package}: {}", text(&out.stderr));
    let tarball = dir.join(text(&out.stdout).trim());
    let out = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dir)
        .arg("package/sarif-2.1.0.json")
        .output()
        .unwrap();
    assert!(out.status.success(), "unpacking the schema: {}", text(&out.stderr));
    let _ = std::fs::remove_file(&tarball);
    schema
}

pub(crate) fn python_venv(name: &str, packages: &[&str]) -> std::path::PathBuf {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let ready = venv.join(format!("installed-{}", packages.join(",")));
    if ready.exists() {
        return python;
    }
    let run = |program: &Path, args: &[&str]| {
        let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
            panic!("{} cannot run ({e}): this test needs python3 with venv and pip", program.display())
        });
        assert!(out.status.success(), "{} {args:?}: {}", program.display(), text(&out.stderr));
    };
    run(Path::new("python3"), &["-m", "venv", venv.to_str().unwrap()]);
    let mut install = vec!["-m", "pip", "install", "--quiet"];
    install.extend(packages);
    run(&python, &install);
    std::fs::write(&ready, "").unwrap();
    python
}
