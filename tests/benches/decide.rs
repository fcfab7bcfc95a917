//! Decision-function throughput: prints figures; asserts only that its setup is what the figures claim.
//!
//! A repository policy with 100 skill entries and 20 agent entries, a
//! configuration with 20 roles (16 custom, inheriting), and subjects that
//! cycle through roles and trust levels so allowed and denied decisions mix.
//!
//! `cargo bench -p coderclaw-e2e --bench decide`

use coderclaw::Access;
use coderclaw_core::TrustLevel;
use coderclaw_core::decision::{Action, DecisionInput, Offer, OfferedDir, Policies, Subject, Target, decide};
use coderclaw_core::manifest::{Capabilities, FsRequest, Kind, RequestedLimits};
use coderclaw_core::policy::{OrgPolicy, RepoPolicy, SecurityConfig};
use coderclaw_core::principal::Origin;
use std::fmt::Write as _;
use std::time::Instant;

fn main() {
    let mut config = String::from("roles:\n");
    for i in 0..16 {
        let parent = if i == 0 { "developer".to_owned() } else { format!("role-{}", i - 1) };
        writeln!(config, "  role-{i}:\n    inherits: {parent}\n    additionalPermissions: [config:read]").unwrap();
    }
    let (config, roles) = SecurityConfig::from_yaml(&config, "config.yaml").unwrap();
    let role_names: Vec<String> = roles.names().map(str::to_owned).collect();
    assert_eq!(role_names.len(), 20);

    let mut repo =
        String::from("enforceTrust: true\nminimumTrustLevel: verified\ndeniedUsers: [mallory]\nskillPolicies:\n");
    for i in 0..100 {
        writeln!(
            repo,
            "  - skillId: skill-{i}\n    dangerous: {}\n    requiredPermissions: [skill:execute]\n    allowedRoles: [{}, {}]\n    trustLevel: verified",
            i % 3 == 0,
            role_names[i % 20],
            role_names[(i * 7) % 20]
        )
        .unwrap();
    }
    repo.push_str("agentPolicies:\n");
    for (i, role) in role_names.iter().enumerate() {
        writeln!(repo, "  - agentId: agent-{i}\n    allowedRoles: [{role}]\n    deniedRoles: [readonly]").unwrap();
    }
    let repo = RepoPolicy::from_yaml(&repo, "security.yaml", &roles).unwrap();
    let org = OrgPolicy::default();
    let policies = Policies { config: &config, roles: &roles, repo: &repo, org: &org };

    let mut caps = Capabilities::default();
    caps.fs.insert(FsRequest { path: "workspace".into(), access: Access::Read });
    caps.shell.insert("git".into());
    let limits = RequestedLimits::default();
    // 110 skills (100 with policy entries) and 20 agents (every one with an entry).
    let targets: Vec<(String, Kind)> = (0..130)
        .map(|i| match i {
            0..110 => (format!("team/skill-{i}"), Kind::Skill),
            _ => (format!("team/agent-{}", i - 110), Kind::Agent),
        })
        .collect();
    let workspace = std::path::Path::new("/repo");
    let mut offer = Offer::default();
    offer
        .dirs
        .insert("workspace".into(), OfferedDir { host: "/repo".into(), guest: ".".into(), access: Access::ReadWrite });
    let subjects: Vec<Subject> = (0..60)
        .map(|i| Subject {
            user: if i % 29 == 0 { "mallory".into() } else { format!("user-{i}") },
            roles: vec![role_names[i % 20].clone()],
            device: "d".into(),
            device_trust: [TrustLevel::Untrusted, TrustLevel::Verified, TrustLevel::Trusted][i % 3],
            session: None,
            origin: Origin::Local,
            client: None,
        })
        .collect();

    for round in 0..3 {
        let n = 200_000;
        let mut allowed = 0usize;
        let started = Instant::now();
        for i in 0..n {
            let (id, kind) = &targets[i % targets.len()];
            let target =
                Target { id, kind: *kind, dangerous: false, capabilities: &caps, limits: &limits, unsigned: false };
            let d = decide(&DecisionInput {
                subject: &subjects[i % subjects.len()],
                target,
                action: Action::Run,
                workspace: Some(workspace),
                policies,
                offer: &offer,
                now_ms: 0,
            });
            allowed += d.allowed as usize;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "round {round}: {n} decisions in {secs:.3} s = {:.0} decisions/s ({:.2} µs each; {:.0}% allowed)",
            n as f64 / secs,
            secs * 1e6 / n as f64,
            100.0 * allowed as f64 / n as f64
        );
    }
}
