//! The security model through the real CLI: device trust, sessions,
//! policy files and `policy check`, each decision visible in the audit log.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;

/// The repository policy of the product text, section 3.
const PRODUCT_REPO_POLICY: &str = include_str!("../../core/tests/fixtures/product-repo-policy.yaml");

fn write_policy(ws: &Path, text: &str) {
    std::fs::create_dir_all(ws.join(".coderClaw")).unwrap();
    std::fs::write(ws.join(".coderClaw/security.yaml"), text).unwrap();
}

/// A CLI whose state directory does not auto-trust this machine, with
/// shell-exec signed and installed.
fn untrusted_machine_with_shell_exec() -> Cli {
    let cli = Cli::new();
    std::fs::write(cli.home.path().join("config.yaml"), "deviceTrust:\n  autoTrustLocal: false\n").unwrap();
    let pkgs = tempfile::tempdir().unwrap();
    trusted_key(&cli, "team-key", "team");
    let pkg = sign(&cli, "shell-exec", "team-key", pkgs.path());
    assert_eq!(cli.run(&["skill", "install", p(&pkg)]).status.code(), Some(0));
    cli
}

fn audit(cli: &Cli, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "query", "--json"];
    args.extend_from_slice(filter);
    let out = cli.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap()
}

#[test]
fn shell_exec_is_refused_on_an_untrusted_device_and_allowed_after_device_trust() {
    let cli = untrusted_machine_with_shell_exec();
    let ws = workspace();
    write_policy(ws.path(), PRODUCT_REPO_POLICY);
    let run = || {
        cli.run(&["skill", "run", "team/shell-exec", "--input", r#"{"program": "ls"}"#, "--workspace", p(ws.path())])
    };

    let refused = run();
    assert_eq!(code(&refused), 3, "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("[device-trust]") && stderr.contains("is untrusted"), "{stderr}");
    assert!(refused.stdout.is_empty());

    let device = text(&cli.run(&["device", "show"]).stdout).trim().to_owned();
    let listed = text(&cli.run(&["device", "list"]).stdout);
    assert!(listed.contains(&device) && listed.contains("untrusted"), "{listed}");
    let trusted = cli.run(&["device", "trust", &device, "verified"]);
    assert_eq!(code(&trusted), 0, "{}", text(&trusted.stderr));

    let allowed = run();
    assert_eq!(code(&allowed), 0, "{}", text(&allowed.stderr));
    let out: Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(out["stdout"], "a.txt\ncreds.env\n");

    // Both decisions and the trust change are in the audit log, in order.
    let decisions = audit(&cli, &["--action", "skill.execute"]);
    let results: Vec<&str> = decisions.iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["denied", "allowed"], "{decisions:#?}");
    assert!(decisions[0]["reason"].as_str().unwrap().contains("untrusted"));
    assert_eq!(decisions[0]["device"], device.as_str());
    assert_eq!(decisions[1]["resource_id"], "team/shell-exec");
    let denied = audit(&cli, &["--result", "denied"]);
    assert!(denied.iter().any(|r| r["action"] == "skill.execute"));
    let change = audit(&cli, &["--action", "device.trust"]);
    assert_eq!(change[0]["reason"], "untrusted -> verified");
    assert_eq!(code(&cli.run(&["audit", "verify"])), 0);

    // Lowering trust again refuses again.
    cli.run(&["device", "trust", &device, "untrusted"]);
    assert_eq!(code(&run()), 3);
}

#[test]
fn sessions_expired_revoked_forged_or_of_another_user_are_refused_and_audited() {
    let cli = Cli::new();
    std::fs::write(cli.home.path().join("config.yaml"), "security:\n  requireAuth: true\n").unwrap();
    let ws = workspace();
    let echo = coderclaw_e2e::guest("echo").display().to_string();
    let run_as = |token: Option<&str>| {
        let mut args =
            vec!["skill", "run", &echo, "--dangerous-allow-unsigned", "--input", "1", "--workspace", p(ws.path())];
        if let Some(t) = token {
            args.extend(["--session", t]);
        }
        cli.run(&args)
    };
    // requireAuth: nothing runs without a session. Bootstrapping users needs
    // an admin session too, so the first admin is added before requireAuth.
    let out = run_as(None);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("requireAuth"), "{}", text(&out.stderr));

    std::fs::write(cli.home.path().join("config.yaml"), "").unwrap();
    let added = cli.run_stdin(&["user", "add", "alice", "--role", "developer", "--password-stdin"], "s3cret pass\n");
    assert_eq!(code(&added), 0, "{}", text(&added.stderr));
    assert_eq!(code(&cli.run(&["user", "add", "bob", "--role", "ci"])), 0);
    let bob_token = text(&cli.run(&["user", "token", "bob", "--expires", "30d"]).stdout).trim().to_owned();
    std::fs::write(cli.home.path().join("config.yaml"), "security:\n  requireAuth: true\n").unwrap();

    let wrong = cli.run_stdin(&["login", "--user", "alice", "--password-stdin"], "wrong");
    assert_eq!(code(&wrong), 1);
    assert!(text(&wrong.stderr).contains("authentication failed"), "{}", text(&wrong.stderr));
    // Bob's API token does not log Alice in.
    let stolen = cli.run_stdin(&["login", "--user", "alice", "--token-stdin"], &bob_token);
    assert_eq!(code(&stolen), 1);
    let bob = cli.run_stdin(&["login", "--user", "bob", "--token-stdin"], &bob_token);
    assert_eq!(code(&bob), 0, "{}", text(&bob.stderr));

    let login = cli.run_stdin(&["login", "--user", "alice", "--password-stdin", "--json"], "s3cret pass");
    assert_eq!(code(&login), 0, "{}", text(&login.stderr));
    let session: Value = serde_json::from_slice(&login.stdout).unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    assert_eq!(session["session"]["roles"], serde_json::json!(["developer"]));
    let ok = run_as(Some(&token));
    assert_eq!(code(&ok), 0, "{}", text(&ok.stderr));

    let forged = run_as(Some("ccs_0000000000000000000000000000000000000000000000000000000000000000"));
    assert_eq!(code(&forged), 3, "{}", text(&forged.stderr));
    assert!(text(&forged.stderr).contains("not valid"), "{}", text(&forged.stderr));

    assert_eq!(code(&cli.run(&["logout", "--session", &token])), 0);
    let revoked = run_as(Some(&token));
    assert_eq!(code(&revoked), 3);
    assert!(text(&revoked.stderr).contains("revoked"), "{}", text(&revoked.stderr));

    let short = cli.run_stdin(&["login", "--user", "alice", "--password-stdin", "--ttl", "1ms"], "s3cret pass");
    let short = text(&short.stdout).trim().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let expired = run_as(Some(&short));
    assert_eq!(code(&expired), 3);
    assert!(text(&expired.stderr).contains("expired"), "{}", text(&expired.stderr));

    // Scope: a session limited to another directory cannot run here.
    let elsewhere = tempfile::tempdir().unwrap();
    let scoped =
        cli.run_stdin(&["login", "--user", "alice", "--password-stdin", "--scope", p(elsewhere.path())], "s3cret pass");
    let scoped = text(&scoped.stdout).trim().to_owned();
    let out = run_as(Some(&scoped));
    assert_eq!(code(&out), 3);
    assert!(text(&out.stderr).contains("out-of-scope"), "{}", text(&out.stderr));

    // A developer session cannot administer; every refusal is audited.
    let login = cli.run_stdin(&["login", "--user", "alice", "--password-stdin"], "s3cret pass");
    let dev = text(&login.stdout).trim().to_owned();
    let device = text(&cli.run(&["device", "show"]).stdout).trim().to_owned();
    let out = cli.run(&["device", "trust", &device, "trusted", "--session", &dev]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("admin:all"), "{}", text(&out.stderr));

    // Read the log as the state directory's owner (requireAuth off again).
    std::fs::write(cli.home.path().join("config.yaml"), "").unwrap();
    let logins = audit(&cli, &["--action", "auth.login"]);
    let denied: Vec<_> = logins.iter().filter(|r| r["result"] == "denied").collect();
    assert_eq!(denied.len(), 2, "wrong password and another user's token: {logins:#?}");
    let sessions = audit(&cli, &["--action", "auth.session", "--result", "denied"]);
    let reasons: Vec<&str> = sessions.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("requireAuth")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("forged")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("revoked")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("expired")), "{reasons:?}");
    let all = text(&cli.run(&["audit", "query", "--json"]).stdout);
    assert!(!all.contains("s3cret") && !all.contains(&token) && !all.contains(&bob_token), "no secret in the log");

    // With local authentication switched off, even the right password is refused.
    std::fs::write(cli.home.path().join("config.yaml"), "identity:\n  providers: [oidc]\n").unwrap();
    let off = cli.run_stdin(&["login", "--user", "alice", "--password-stdin"], "s3cret pass");
    assert_eq!(code(&off), 1);
    assert!(text(&off.stderr).contains("provider `local` is not enabled"), "{}", text(&off.stderr));
}

#[test]
fn a_bad_policy_file_names_file_line_and_key_and_the_last_good_one_is_kept() {
    let cli = Cli::new();
    let ws = workspace();
    let echo = coderclaw_e2e::guest("echo").display().to_string();
    let run =
        || cli.run(&["skill", "run", &echo, "--dangerous-allow-unsigned", "--input", "1", "--workspace", p(ws.path())]);

    // Broken with no earlier good version: nothing runs.
    write_policy(ws.path(), "enforceTrust: true\nminimumTrust: verified\n");
    let out = run();
    assert_eq!(code(&out), 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains(".coderClaw/security.yaml:2:") && stderr.contains("minimumTrust"), "{stderr}");
    assert!(stderr.contains("nothing runs"), "{stderr}");

    // A good version runs and is remembered; denying this user bites.
    write_policy(ws.path(), "");
    let echo_manifest = manifest_path("echo").display().to_string();
    let whoami = cli.run(&["policy", "check", "--skill", &echo_manifest, "--workspace", p(ws.path()), "--json"]);
    let whoami: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    let me = whoami["subject"]["user"].as_str().unwrap().to_owned();
    write_policy(ws.path(), &format!("deniedUsers: [\"{me}\"]\n"));
    let out = run();
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("denied-user"));

    // Broken again: the last good version (with the deny) stays in force.
    write_policy(ws.path(), "deniedUsers: [\n");
    let out = run();
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    let check = cli.run(&["policy", "check", "--skill", &echo_manifest, "--workspace", p(ws.path()), "--json"]);
    let report: Value = serde_json::from_slice(&check.stdout).unwrap();
    let repo = report["policy_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"].as_str().unwrap().ends_with("security.yaml"))
        .unwrap()
        .clone();
    assert_eq!(repo["status"], "kept-last-good", "{report:#}");
    let loads = audit(&cli, &["--action", "policy.load"]);
    assert!(
        loads.iter().any(|r| r["result"] == "error" && r["reason"].as_str().unwrap().contains("keeping")),
        "{loads:#?}"
    );

    // A bad configuration file stops every command that needs policy.
    std::fs::write(cli.home.path().join("config.yaml"), "security:\n  defaultRoles: [wizard]\n").unwrap();
    let out = run();
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("config.yaml: security.defaultRoles: unknown role `wizard`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn policy_check_prints_the_decision_grant_and_reasons() {
    let cli = untrusted_machine_with_shell_exec();
    let ws = workspace();
    write_policy(ws.path(), PRODUCT_REPO_POLICY);
    let check = |extra: &[&str]| {
        let mut args = vec!["policy", "check", "--skill", "team/shell-exec", "--workspace", p(ws.path()), "--json"];
        args.extend_from_slice(extra);
        let out = cli.run(&args);
        (code(&out), serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    let (c, r) = check(&["--device-trust", "verified"]);
    assert_eq!(c, 0, "{r:#}");
    // The first check loaded (and recorded) the new repository policy; the
    // checks themselves record nothing.
    let recorded = audit(&cli, &[]).len();
    assert_eq!(r["allowed"], true);
    assert_eq!(r["grant"]["shell"], serde_json::json!(["git", "ls"]));
    assert_eq!(r["grant"]["dirs"][0]["access"], "read");
    let (c, r) = check(&["--device-trust", "untrusted"]);
    assert_eq!(c, 3);
    let codes: Vec<&str> = r["reasons"].as_array().unwrap().iter().map(|x| x["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["device-trust", "device-trust"], "enforceTrust and the dangerous skill: {r:#}");
    let (c, r) = check(&["--device-trust", "trusted", "--role", "readonly", "--user", "rita"]);
    assert_eq!(c, 3);
    assert!(r["reasons"].as_array().unwrap().len() >= 3, "{r:#}");
    assert_eq!(r["subject"]["user"], "rita");
    let (c, _) = check(&["--device-trust", "trusted", "--role", "admin"]);
    assert_eq!(c, 0, "admin:all passes allowedRoles [developer]");
    assert_eq!(audit(&cli, &[]).len(), recorded, "a what-if is not recorded");

    // The workspace is offered read-only unless --workspace-write: a skill
    // asking to write it would otherwise be able to rewrite this policy.
    let writer = ws.path().join("writer.toml");
    std::fs::write(
        &writer,
        "id = \"team/writer\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"w\"\n\n[capabilities]\nfs = [{ path = \"workspace\", access = \"read-write\" }]\n",
    )
    .unwrap();
    let access = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "check",
            "--skill",
            p(&writer),
            "--workspace",
            p(ws.path()),
            "--device-trust",
            "verified",
            "--json",
        ];
        args.extend_from_slice(extra);
        let r: Value = serde_json::from_slice(&cli.run(&args).stdout).unwrap();
        r["grant"]["dirs"][0]["access"].as_str().unwrap().to_owned()
    };
    assert_eq!(access(&[]), "read");
    assert_eq!(access(&["--workspace-write"]), "read-write");

    // security.defaultRoles is who a session-less local user is.
    std::fs::write(cli.home.path().join("config.yaml"), "security:\n  defaultRoles: [readonly]\n").unwrap();
    let (c, r) = check(&["--device-trust", "trusted"]);
    assert_eq!(c, 3);
    assert_eq!(r["subject"]["roles"], serde_json::json!(["readonly"]), "{r:#}");
    std::fs::write(cli.home.path().join("config.yaml"), "deviceTrust:\n  autoTrustLocal: false\n").unwrap();

    let human = cli.run(&["policy", "check", "--skill", "team/shell-exec", "--workspace", p(ws.path())]);
    let out = text(&human.stdout);
    assert!(out.contains("team/shell-exec: DENIED") && out.contains("[device-trust]"), "{out}");
}

#[test]
fn organisation_policy_denies_skills_and_keeps_required_ones_installed() {
    let cli = untrusted_machine_with_shell_exec();
    std::fs::write(cli.home.path().join("config.yaml"), "").unwrap();
    let ws = workspace();
    write_policy(ws.path(), PRODUCT_REPO_POLICY);
    std::fs::write(
        cli.home.path().join("org-policy.yaml"),
        "organizationPolicy:\n  requiredSkills: [shell-exec, security-scanner]\n  deniedSkills: [shell-exec]\n",
    )
    .unwrap();
    let out =
        cli.run(&["skill", "run", "team/shell-exec", "--input", r#"{"program": "ls"}"#, "--workspace", p(ws.path())]);
    assert_eq!(code(&out), 3);
    assert!(text(&out.stderr).contains("deniedSkills"), "{}", text(&out.stderr));
    let out = cli.run(&["skill", "remove", "team/shell-exec"]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("requiredSkills"), "{}", text(&out.stderr));
    let check = cli.run(&["policy", "check", "--skill", "team/shell-exec", "--workspace", p(ws.path()), "--json"]);
    let r: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(r["missing_required_skills"], serde_json::json!(["security-scanner"]));
}

#[test]
fn with_require_auth_the_trust_store_and_installs_need_a_permitted_session() {
    let cli = Cli::new();
    for (user, role, password) in [("ada", "admin", "pw-admin"), ("dana", "developer", "pw-dev")] {
        let out = cli.run_stdin(&["user", "add", user, "--role", role, "--password-stdin"], password);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    assert_eq!(code(&cli.run(&["key", "generate", "--name", "team-key"])), 0);
    let public = text(&cli.run(&["key", "export-public", "team-key"]).stdout).trim().to_owned();
    std::fs::write(cli.home.path().join("config.yaml"), "security:\n  requireAuth: true\n").unwrap();
    let login = |user: &str, password: &str| {
        let out = cli.run_stdin(&["login", "--user", user, "--password-stdin"], password);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    let (ada, dana) = (login("ada", "pw-admin"), login("dana", "pw-dev"));

    // No session: nothing in the state directory can be read or changed.
    let no_session: [&[&str]; 7] = [
        &["trust", "add", "team", &public],
        &["skill", "list"],
        &["key", "list"],
        &["audit", "verify"],
        &["device", "list"],
        &["registry", "policy", "show"],
        &[
            "registry",
            "policy",
            "publish",
            "team",
            "--file",
            "x.yaml",
            "--key",
            "team-key",
            "--registry",
            "http://127.0.0.1:9",
            "--token",
            "t",
        ],
    ];
    for args in no_session {
        let out = cli.run(args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(text(&out.stderr).contains("requireAuth"), "{args:?}: {}", text(&out.stderr));
    }
    // A developer holds neither config:write nor config:read.
    let out = cli.run(&["trust", "add", "team", &public, "--session", &dana]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("config:write"), "{}", text(&out.stderr));
    assert_eq!(code(&cli.run(&["skill", "list", "--session", &dana])), 1);
    for args in [&["device", "list"][..], &["registry", "policy", "show"]] {
        let mut args = args.to_vec();
        args.extend(["--session", &dana]);
        let out = cli.run(&args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(text(&out.stderr).contains("config:read"), "{args:?}: {}", text(&out.stderr));
    }
    // An admin may.
    let out = cli.run(&["trust", "add", "team", &public, "--session", &ada]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(code(&cli.run(&["skill", "list", "--session", &ada])), 0);

    let refused = audit_as(&cli, &ada, &["--action", "trust.add", "--result", "denied"]);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["user"], "dana");
}

fn audit_as(cli: &Cli, session: &str, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["--session", session];
    args.extend_from_slice(filter);
    audit(cli, &args)
}

#[test]
fn a_ci_session_cannot_run_unsigned_code_not_even_by_making_it_an_agent() {
    // The attack: `--with-skill` made an unsigned component an agent, so it
    // was decided as agent:invoke (which ci has) instead of skill:execute
    // (which ci lacks). Unsigned code is now always a skill for the
    // decision, and runs only for security.unsignedRoles.
    let cli = Cli::new();
    let echo = coderclaw_e2e::guest("echo").display().to_string();
    let wc = coderclaw_e2e::guest("word-count").display().to_string();
    assert_eq!(code(&cli.run(&["user", "add", "bot", "--role", "ci"])), 0);
    let token = text(&cli.run(&["user", "token", "bot", "--expires", "1d"]).stdout).trim().to_owned();
    let login = cli.run_stdin(&["login", "--user", "bot", "--token-stdin", "--json"], &token);
    assert_eq!(code(&login), 0, "{}", text(&login.stderr));
    let session: Value = serde_json::from_slice(&login.stdout).unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    let with_skill = format!("team/word-count={wc}");
    for extra in [vec![], vec!["--with-skill", with_skill.as_str()]] {
        let mut args =
            vec!["skill", "run", echo.as_str(), "--dangerous-allow-unsigned", "--session", &session, "--json"];
        args.extend(extra.iter().copied());
        let out = cli.run(&args);
        assert_eq!(code(&out), 3, "{:?}: {}", extra, text(&out.stdout));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let reasons: Vec<&str> =
            report["reasons"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap()).collect();
        assert!(reasons.contains(&"unsigned-not-allowed"), "{extra:?}: {reasons:?}");
    }
    // The refusal is audited, and local development is unchanged.
    let denied = audit(&cli, &["--result", "denied", "--user", "bot"]);
    assert!(denied.iter().any(|r| r["reason"].as_str().unwrap_or("").contains("unsignedRoles")), "{denied:?}");
    assert_eq!(code(&cli.run(&["skill", "run", &echo, "--dangerous-allow-unsigned"])), 0);
}

#[test]
fn a_repository_policy_that_is_a_fifo_a_link_to_dev_zero_or_huge_is_refused_at_once_naming_it() {
    let cli = Cli::new();
    let echo = coderclaw_e2e::guest("echo").display().to_string();
    let outside = tempfile::tempdir().unwrap();
    let good = outside.path().join("policy.yaml");
    std::fs::write(&good, "enforceTrust: false\n").unwrap();
    type Make<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: [(&str, Make<'_>, &str); 4] = [
        (
            "fifo",
            Box::new(|f| assert!(std::process::Command::new("mkfifo").arg(f).status().unwrap().success())),
            "not a regular file",
        ),
        ("dev-zero", Box::new(|f| std::os::unix::fs::symlink("/dev/zero", f).unwrap()), "symbolic link"),
        // A link out of the repository, even to a harmless file, is refused.
        ("outside", Box::new(|f| std::os::unix::fs::symlink(&good, f).unwrap()), "symbolic link"),
        ("huge", Box::new(|f| std::fs::write(f, "#".repeat(2 << 20)).unwrap()), "more than the 1048576 bytes"),
    ];
    for (name, make, why) in cases {
        let ws = workspace();
        std::fs::create_dir_all(ws.path().join(".coderClaw")).unwrap();
        let file = ws.path().join(".coderClaw/security.yaml");
        make(&file);
        for runtime in [false, true] {
            let started = std::time::Instant::now();
            let out = if runtime {
                // The same file as the project's runtime.yaml.
                std::fs::rename(&file, ws.path().join(".coderClaw/runtime.yaml")).unwrap();
                cli.run(&["task", "list", "--workspace", p(ws.path())])
            } else {
                cli.run(&[
                    "skill",
                    "run",
                    &echo,
                    "--dangerous-allow-unsigned",
                    "--input",
                    "1",
                    "--workspace",
                    p(ws.path()),
                ])
            };
            let stderr = text(&out.stderr);
            assert_ne!(code(&out), 0, "{name}: {stderr}");
            let file = if runtime { "runtime.yaml" } else { "security.yaml" };
            assert!(stderr.contains(file) && stderr.contains(why), "{name}: {stderr}");
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{name}: took {:?}", started.elapsed());
        }
    }
}

#[test]
fn state_and_registry_directories_others_can_write_are_refused_and_data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let cli = Cli::new();
    let home = cli.home.path();

    // Others can write: refused, nothing created, the fix named.
    set(home, 0o777);
    let out = cli.run(&["key", "list"]);
    let stderr = text(&out.stderr);
    assert_ne!(code(&out), 0, "{stderr}");
    assert!(stderr.contains("writable by other users") && stderr.contains("chmod go-w"), "{stderr}");
    assert!(!home.join("state.db").exists(), "a database was created in a directory others can write");

    // A pre-existing 0755 directory works; what coderclaw creates in it is private.
    set(home, 0o755);
    let out = cli.run(&["key", "generate", "--name", "k"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    for f in ["state.db", "audit.db"] {
        assert_eq!(mode(&home.join(f)), 0o600, "{f}");
    }
    for d in ["keys", "packages", "cache"] {
        assert_eq!(mode(&home.join(d)), 0o700, "{d}");
    }

    // A registry data directory: created 0700 with a 0600 database; one
    // others can write is refused.
    let data = tempfile::tempdir().unwrap();
    let reg = data.path().join("reg");
    let out = cli.run(&["registry", "namespace", "create", "team", "--owner", "alice", "--data", p(&reg)]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(mode(&reg), 0o700);
    assert_eq!(mode(&reg.join("blobs")), 0o700);
    assert_eq!(mode(&reg.join("registry.db")), 0o600);
    set(&reg, 0o775);
    let out = cli.run(&["registry", "namespace", "create", "other", "--owner", "alice", "--data", p(&reg)]);
    assert_ne!(code(&out), 0);
    assert!(text(&out.stderr).contains("chmod go-w"), "{}", text(&out.stderr));
}

#[test]
fn capability_denials_inside_a_run_are_audited_and_bounded_per_run() {
    let cli = Cli::new();
    let ws = workspace();
    let hostile = coderclaw_e2e::guest("shell-without-grant").display().to_string();
    let input = r#"{"program": "touch", "args": ["/tmp/never"]}"#;
    let out = cli.run(&[
        "skill",
        "run",
        &hostile,
        "--dangerous-allow-unsigned",
        "--input",
        input,
        "--workspace",
        p(ws.path()),
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let denied = audit(&cli, &["--action", "capability.denied"]);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0]["resource_id"].as_str().unwrap().contains("shell_without_grant"), "{denied:?}");
    assert!(denied[0]["reason"].as_str().unwrap().contains("shell touch /tmp/never"), "{denied:?}");
}

#[test]
fn a_shell_child_given_the_hosts_network_is_audited_as_weakened() {
    let cli = Cli::new();
    std::fs::write(cli.home.path().join("config.yaml"), "shell:\n  network: [ls]\n").unwrap();
    let ws = workspace();
    write_policy(ws.path(), "skillPolicies:\n  - skillId: local/shell-exec\n    allowedRoles: [developer]\n");
    let shell = coderclaw_e2e::guest("shell-exec").display().to_string();
    let args = [
        "skill",
        "run",
        &shell,
        "--dangerous-allow-unsigned",
        "--allow-shell",
        "ls",
        "--allow-read",
        p(ws.path()),
        "--input",
        r#"{"program": "ls"}"#,
        "--workspace",
        p(ws.path()),
    ];
    let out = cli.run(&args);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let weakened = audit(&cli, &["--action", "capability.weakened"]);
    assert_eq!(weakened.len(), 1, "{weakened:?}");
    assert!(
        weakened[0]["reason"].as_str().unwrap().contains("network granted by the host configuration"),
        "{weakened:?}"
    );
}

/// The user lifecycle through the binary: `user set-roles` and `user
/// passwd` revoke the user's sessions (they hold the old roles or
/// password); `user remove` deletes their tokens too; each is audited; an
/// admin cannot remove or demote themselves; mistakes are named.
#[test]
fn user_lifecycle_commands_revoke_what_the_user_held_and_are_audited() {
    let cli = Cli::new();
    let added = cli.run_stdin(&["user", "add", "alice", "--role", "developer", "--password-stdin"], "old secret\n");
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let login = |password: &str| {
        let out = cli.run_stdin(&["login", "--user", "alice", "--password-stdin", "--json"], password);
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).ok())
    };
    let (code, session) = login("old secret");
    assert_eq!(code, Some(0));
    let token = session.unwrap()["token"].as_str().unwrap().to_owned();
    let works = |token: &str| cli.run(&["--session", token, "task", "list", "--json"]).status.code() == Some(0);
    assert!(works(&token));
    let api = cli.run(&["user", "token", "alice"]);
    assert_eq!(api.status.code(), Some(0), "{}", text(&api.stderr));

    // New roles: the old session (holding `developer`) is revoked.
    let out = cli.run(&["user", "set-roles", "alice", "--role", "readonly"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("now has roles [readonly]"), "{}", text(&out.stderr));
    assert!(!works(&token), "a session holding the old roles still works");
    let list: Value = serde_json::from_slice(&cli.run(&["user", "list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["roles"], json!(["readonly"]), "{list}");
    let out = cli.run(&["user", "set-roles", "alice", "--role", "wizard"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("wizard"), "{}", text(&out.stderr));

    // New password: the old one no longer logs in, the new one does.
    let (_, session) = login("old secret");
    let token = session.unwrap()["token"].as_str().unwrap().to_owned();
    let out = cli.run_stdin(&["user", "passwd", "alice", "--password-stdin"], "new secret\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!works(&token), "a session from before the password change still works");
    assert_eq!(login("old secret").0, Some(1));
    let (code, session) = login("new secret");
    assert_eq!(code, Some(0));
    // Her own password she may set; another user's, not (she is no admin).
    let own = session.unwrap()["token"].as_str().unwrap().to_owned();
    let carol = cli.run_stdin(&["user", "add", "carol", "--password-stdin"], "carol secret\n");
    assert_eq!(carol.status.code(), Some(0), "{}", text(&carol.stderr));
    let out = cli.run(&["--session", &own, "user", "passwd", "carol", "--clear"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("denied"), "{}", text(&out.stderr));
    let carol_logs_in = cli.run_stdin(&["login", "--user", "carol", "--password-stdin"], "carol secret");
    assert_eq!(carol_logs_in.status.code(), Some(0), "a non-admin cleared another user's password");
    let out = cli.run_stdin(&["--session", &own, "user", "passwd", "alice", "--password-stdin"], "newer secret\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(login("newer secret").0, Some(0));
    let out = cli.run_stdin(&["user", "passwd", "alice", "--password-stdin"], "\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
    let out = cli.run(&["user", "passwd", "alice", "--clear"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(login("newer secret").0, Some(1), "a cleared password still logs in");

    // An admin cannot remove or demote themselves.
    let boss = cli.run_stdin(&["user", "add", "boss", "--role", "admin", "--password-stdin"], "boss secret\n");
    assert_eq!(boss.status.code(), Some(0), "{}", text(&boss.stderr));
    let out = cli.run_stdin(&["login", "--user", "boss", "--password-stdin", "--json"], "boss secret");
    let boss_token = serde_json::from_slice::<Value>(&out.stdout).unwrap()["token"].as_str().unwrap().to_owned();
    let out = cli.run(&["--session", &boss_token, "user", "remove", "boss"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot remove your own user"), "{}", text(&out.stderr));

    // Removed: gone, and so are their API tokens.
    let out = cli.run(&["--session", &boss_token, "user", "remove", "alice"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&cli.run(&["user", "list", "--json"]).stdout).unwrap();
    assert!(!list.to_string().contains("alice"), "{list}");
    let out = cli.run(&["user", "remove", "alice"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no user named \"alice\""), "{}", text(&out.stderr));

    let audit: Vec<Value> = serde_json::from_slice(&cli.run(&["audit", "query", "--json"]).stdout).unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in ["user.set-roles", "user.passwd", "user.remove"] {
        assert!(actions.contains(&action), "{action} not audited: {actions:?}");
    }
    let refused = audit.iter().any(|r| r["action"] == "user.remove" && r["result"] == "denied");
    assert!(refused, "the refused self-removal is audited");
}

/// `key import`, `key rotate` and `key delete` through the binary, each
/// audited: a rotated key keeps the previous one (still trusted, for the
/// overlap) and the new one trusted for the same namespaces; an import
/// refuses a file others can read; a delete needs --yes.
#[test]
fn key_import_rotate_and_delete_are_audited_and_keep_what_they_should() {
    use std::os::unix::fs::PermissionsExt;
    let cli = Cli::new();
    let old_id = trusted_key(&cli, "team-key", "team");
    let out = cli.run(&["key", "rotate", "team-key", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_id = rotated["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(rotated["previous"]["key_id"], old_id.as_str());
    assert_eq!(rotated["trusted_for"], json!(["team"]));
    let keys: Value = serde_json::from_slice(&cli.run(&["key", "list", "--json"]).stdout).unwrap();
    let names: Vec<&str> = keys.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["team-key", &format!("team-key-{old_id}")], "{keys}");
    let trust: Value = serde_json::from_slice(&cli.run(&["trust", "list", "--json"]).stdout).unwrap();
    for id in [&old_id, &new_id] {
        assert!(trust.to_string().contains(id.as_str()), "{id} not trusted: {trust}");
    }

    // Import: a key file only its owner reads; another is refused, naming why.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ci.key");
    std::fs::copy(cli.home.path().join("keys/team-key.key"), &file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli.run(&["key", "import", "ci", "--file", p(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("644") || text(&out.stderr).contains("readable"), "{}", text(&out.stderr));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cli.run(&["key", "import", "ci", "--file", p(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&new_id), "{}", text(&out.stdout));
    std::fs::write(&file, "not a key").unwrap();
    let out = cli.run(&["key", "import", "other", "--file", p(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // Delete: only with --yes; the trust stays, and says so.
    let out = cli.run(&["key", "delete", "ci"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    let out = cli.run(&["key", "delete", "ci", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("coderclaw trust revoke {new_id}")), "{}", text(&out.stderr));
    assert!(!cli.home.path().join("keys/ci.key").exists());

    let audit: Vec<Value> = serde_json::from_slice(&cli.run(&["audit", "query", "--json"]).stdout).unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in ["key.rotate", "key.import", "key.delete"] {
        assert!(actions.contains(&action), "{action} not audited: {actions:?}");
    }
    let out = cli.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Human output says when as a date, not as Unix milliseconds.
    let human = text(&cli.run(&["audit", "query", "--limit", "3"]).stdout);
    let longest_number = human.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0);
    assert!(longest_number < 10, "a timestamp in human output: {human}");
    assert!(human.lines().all(|l| l.contains("Z ")), "{human}");
}

/// A broken policy file whose last good version is kept is said on every
/// run's stderr and by `status`; with `security.brokenPolicy: deny` nothing
/// runs until it is fixed (and the refusal is audited).
#[test]
fn a_kept_last_good_policy_is_said_on_every_run_and_brokenpolicy_deny_fails_closed() {
    let cli = Cli::new();
    let ws = workspace();
    let echo = coderclaw_e2e::guest("echo").display().to_string();
    let run =
        || cli.run(&["skill", "run", &echo, "--dangerous-allow-unsigned", "--input", "1", "--workspace", p(ws.path())]);
    write_policy(ws.path(), "allowedRoles: [developer]\n");
    assert_eq!(code(&run()), 0);
    write_policy(ws.path(), "allowedRoles: [\n");
    for _ in 0..2 {
        let out = run();
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        let said = text(&out.stderr);
        assert!(said.contains("warning: policy file") && said.contains("using its last good version"), "{said}");
    }
    let status = cli.run(&["status", "--workspace", p(ws.path())]);
    let shown = format!("{}{}", text(&status.stdout), text(&status.stderr));
    assert!(shown.contains("last good version"), "{shown}");

    std::fs::write(cli.home.path().join("config.yaml"), "security:\n  brokenPolicy: deny\n").unwrap();
    let out = run();
    assert_ne!(code(&out), 0);
    let said = text(&out.stderr);
    assert!(said.contains("security.brokenPolicy is deny") && said.contains("security.yaml"), "{said}");
    let loads = audit(&cli, &["--action", "policy.load"]);
    assert!(
        loads.iter().any(|r| r["reason"].as_str().unwrap_or_default().contains("brokenPolicy is deny")),
        "{loads:#?}"
    );
    write_policy(ws.path(), "allowedRoles: [developer]\n");
    assert_eq!(code(&run()), 0, "fixed: runs again");
}

/// `coderclaw doctor` goes through its checklist, each problem with its fix:
/// a signing key others can read fails (exit 3); a state directory others
/// can list, a broken policy file kept at its last good version and a
/// registry that does not answer warn; an OIDC issuer's clock is compared
/// with this one.
#[test]
fn doctor_reports_each_check_with_its_fix() {
    let cli = Cli::new();
    let ws = workspace();
    let doctor = || {
        let out = cli.run(&["doctor", "--json", "--workspace", p(ws.path())]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (code(&out), report)
    };
    let find = |report: &Value, name: &str| -> Vec<Value> {
        report["checks"].as_array().unwrap().iter().filter(|c| c["check"] == name).cloned().collect()
    };
    // A clean state directory, with an OIDC issuer on loopback answering.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let issuer = rt.block_on(coderclaw_e2e::LoopbackServer::start("{}")).unwrap();
    let config = format!(
        "identity:\n  providers: [local, oidc]\n  oidc:\n    - name: corp\n      issuer: {}\n      audience: coderclaw\n",
        issuer.url()
    );
    std::fs::write(cli.home.path().join("config.yaml"), &config).unwrap();
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
    };
    mode(cli.home.path(), 0o700);
    let (status, report) = doctor();
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(find(&report, "state directory")[0]["status"], "ok", "{report:#}");
    assert_eq!(find(&report, "registries")[0]["detail"], "none configured");
    let clock = &find(&report, "oidc clock")[0];
    assert_eq!(clock["status"], "ok", "{clock}");
    assert!(clock["detail"].as_str().unwrap().starts_with("corp: within"), "{clock}");
    for name in ["toolchain", "wasm target", "shell confinement", "signing keys"] {
        assert_eq!(find(&report, name).len(), 1, "{name}: {report:#}");
    }

    // Problems: each named, each with its fix.
    write_policy(ws.path(), "allowedRoles: [developer]\n");
    assert_eq!(doctor().0, 0);
    write_policy(ws.path(), "allowedRoles: [\n");
    let dead = format!("{config}registries:\n  gone:\n    url: http://127.0.0.1:1\n");
    std::fs::write(cli.home.path().join("config.yaml"), dead).unwrap();
    let (status, report) = doctor();
    assert_eq!(status, 0, "warnings only: {report:#}");
    let kept: Vec<Value> = find(&report, "policy file").into_iter().filter(|c| c["status"] == "warn").collect();
    assert!(kept[0]["detail"].as_str().unwrap().contains("last good version is in force"), "{report:#}");
    assert!(kept[0]["fix"].as_str().unwrap().contains("security.yaml"), "{report:#}");
    let registry = &find(&report, "registry")[0];
    assert_eq!(registry["status"], "warn", "{registry}");
    assert!(registry["fix"].as_str().unwrap().contains("coderclaw registry remove gone"), "{registry}");
    mode(cli.home.path(), 0o755);
    let state = &find(&doctor().1, "state directory")[0];
    assert_eq!(
        (state["status"].as_str(), state["fix"].clone()),
        (Some("warn"), json!(format!("chmod 700 {}", cli.home.path().display())))
    );
    // A signing key others can read fails the check (exit 3).
    assert_eq!(code(&cli.run(&["key", "generate", "--name", "k"])), 0);
    let key = cli.home.path().join("keys/k.key");
    mode(&key, 0o644);
    let (status, report) = doctor();
    assert_eq!(status, 3, "{report:#}");
    let keys = &find(&report, "signing keys")[0];
    assert_eq!(
        (keys["status"].as_str(), keys["fix"].clone()),
        (Some("fail"), json!(format!("chmod 600 {}", key.display())))
    );
    let human = cli.run(&["doctor", "--workspace", p(ws.path())]);
    let said = text(&human.stdout);
    assert!(said.contains("FAIL  signing keys") && said.contains("fix: chmod 600"), "{said}");
}
