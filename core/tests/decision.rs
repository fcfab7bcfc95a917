//! The decision function, from the product text's example, one test per
//! policy field, and properties over random policies and manifests.

use coderclaw_core::decision::{
    Action, Decision, DecisionInput, Offer, OfferedDir, Policies, SessionFacts, Subject, Target, check_permission,
    decide,
};
use coderclaw_core::manifest::{Capabilities, FsRequest, Kind, Millis, RequestedLimits, Size, SkillId};
use coderclaw_core::policy::{OrgPolicy, RepoPolicy, SecurityConfig};
use coderclaw_core::principal::Origin;
use coderclaw_core::rbac::{Permission, Roles};
use coderclaw_core::{Access, HostPattern, Limits, TrustLevel};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PRODUCT_REPO_POLICY: &str = include_str!("fixtures/product-repo-policy.yaml");

const NOW: u64 = 1_800_000_000_000;

struct World {
    config: SecurityConfig,
    roles: Roles,
    repo: RepoPolicy,
    org: OrgPolicy,
    offer: Offer,
}

impl World {
    fn new(config: &str, repo: &str, org: &str) -> World {
        let (config, roles) = SecurityConfig::from_yaml(config, "config.yaml").unwrap();
        let repo = RepoPolicy::from_yaml(repo, "security.yaml", &roles).unwrap();
        let org = OrgPolicy::from_yaml(org, "org.yaml").unwrap();
        let mut offer = Offer::default();
        offer.dirs.insert(
            "workspace".into(),
            OfferedDir { host: "/repo".into(), guest: ".".into(), access: Access::ReadWrite },
        );
        offer.env.insert("GITHUB_TOKEN".into(), "t0ken".into());
        World { config, roles, repo, org, offer }
    }

    fn product() -> World {
        World::new("", PRODUCT_REPO_POLICY, "")
    }

    fn policies(&self) -> Policies<'_> {
        Policies { config: &self.config, roles: &self.roles, repo: &self.repo, org: &self.org }
    }

    fn decide(&self, who: &Subject, target: &Skill) -> Decision {
        self.decide_as(who, target, Action::Run)
    }

    fn decide_as(&self, who: &Subject, target: &Skill, action: Action) -> Decision {
        decide(&DecisionInput {
            subject: who,
            target: target.target(),
            action,
            workspace: Some(Path::new("/repo")),
            policies: self.policies(),
            offer: &self.offer,
            now_ms: NOW,
        })
    }

    fn permits(&self, who: &Subject, p: Permission) -> bool {
        check_permission(who, p, Some(Path::new("/repo")), self.policies(), NOW).allowed
    }
}

#[derive(Debug, Clone)]
struct Skill {
    id: String,
    kind: Kind,
    dangerous: bool,
    caps: Capabilities,
    limits: RequestedLimits,
    unsigned: bool,
}

impl Skill {
    fn plain(id: &str) -> Skill {
        let mut caps = Capabilities::default();
        caps.fs.insert(FsRequest { path: "workspace".into(), access: Access::Read });
        Skill {
            id: id.into(),
            kind: Kind::Skill,
            dangerous: false,
            caps,
            limits: RequestedLimits::default(),
            unsigned: false,
        }
    }
    fn shell_exec() -> Skill {
        let mut s = Skill::plain("team/shell-exec");
        s.dangerous = true;
        s.caps.shell.insert("git".into());
        s
    }
    fn agent(id: &str) -> Skill {
        Skill { kind: Kind::Agent, ..Skill::plain(id) }
    }
    fn target(&self) -> Target<'_> {
        Target {
            id: &self.id,
            kind: self.kind,
            dangerous: self.dangerous,
            capabilities: &self.caps,
            limits: &self.limits,
            unsigned: self.unsigned,
        }
    }
}

fn who(user: &str, roles: &[&str], trust: TrustLevel) -> Subject {
    Subject {
        user: user.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        device: "dev-1".into(),
        device_trust: trust,
        session: None,
        origin: Origin::Local,
        client: None,
    }
}

fn codes(d: &Decision) -> Vec<&'static str> {
    d.reasons.iter().map(|r| r.code).collect()
}

use TrustLevel::{Trusted, Untrusted, Verified};

#[test]
fn product_text_example() {
    let w = World::product();
    let dev_verified = who("dana", &["developer"], Verified);
    let dev_untrusted = who("dana", &["developer"], Untrusted);
    let code_modifier = Skill::agent("team/code-modifier");
    let shell = Skill::shell_exec();

    struct Row<'a> {
        name: &'a str,
        subject: &'a Subject,
        check: Box<dyn Fn(&Subject) -> bool + 'a>,
        expected: bool,
    }
    let rows = [
        Row {
            name: "developer on a verified device invokes code-modifier",
            subject: &dev_verified,
            check: Box::new(|s| w.decide(s, &code_modifier).allowed),
            expected: true,
        },
        Row {
            name: "developer on a verified device runs shell-exec",
            subject: &dev_verified,
            check: Box::new(|s| w.decide(s, &shell).allowed),
            expected: true,
        },
        Row {
            name: "developer on an untrusted device runs shell-exec",
            subject: &dev_untrusted,
            check: Box::new(|s| w.decide(s, &shell).allowed),
            expected: false,
        },
        Row {
            name: "developer on an untrusted device invokes code-modifier",
            subject: &dev_untrusted,
            check: Box::new(|s| w.decide(s, &code_modifier).allowed),
            expected: false,
        },
        Row {
            name: "readonly submits a task",
            subject: &who("rita", &["readonly"], Trusted),
            check: Box::new(|s| w.permits(s, Permission::TaskSubmit)),
            expected: false,
        },
        Row {
            name: "readonly reads a task",
            subject: &who("rita", &["readonly"], Trusted),
            check: Box::new(|s| w.permits(s, Permission::TaskRead)),
            expected: false, // allowedRoles of the repository is [developer, admin]
        },
        Row {
            name: "ci cancels a task",
            subject: &who("bot", &["ci"], Trusted),
            check: Box::new(|s| w.permits(s, Permission::TaskCancel)),
            expected: false,
        },
        Row {
            name: "admin runs shell-exec (allowedRoles [developer] does not bind admin:all)",
            subject: &who("ada", &["admin"], Verified),
            check: Box::new(|s| w.decide(s, &shell).allowed),
            expected: true,
        },
        Row {
            name: "admin cancels, writes configuration, invokes code-modifier",
            subject: &who("ada", &["admin"], Verified),
            check: Box::new(|s| {
                w.permits(s, Permission::TaskCancel)
                    && w.permits(s, Permission::ConfigWrite)
                    && w.decide(s, &code_modifier).allowed
            }),
            expected: true,
        },
    ];
    for row in &rows {
        assert_eq!((row.check)(row.subject), row.expected, "{}", row.name);
    }

    // Outside a restrictive repository: readonly still cannot submit, ci cannot cancel.
    let open = World::new("", "", "");
    assert!(!open.permits(&who("rita", &["readonly"], Trusted), Permission::TaskSubmit));
    assert!(open.permits(&who("rita", &["readonly"], Trusted), Permission::TaskRead));
    assert!(!open.permits(&who("bot", &["ci"], Trusted), Permission::TaskCancel));
    assert!(open.permits(&who("bot", &["ci"], Trusted), Permission::TaskSubmit));

    // admin:all passes everything except a deniedUsers entry.
    let denied = World::new("", &format!("{PRODUCT_REPO_POLICY}deniedUsers: [ada]\n"), "");
    let ada = who("ada", &["admin"], Verified);
    let d = denied.decide(&ada, &shell);
    assert!(!d.allowed);
    assert_eq!(codes(&d), ["denied-user"]);
    assert!(!denied.permits(&ada, Permission::TaskRead));
}

#[test]
fn a_denied_decision_lists_every_reason() {
    let w = World::new("", &format!("{PRODUCT_REPO_POLICY}deniedUsers: [rita]\n"), "");
    let d = w.decide(&who("rita", &["readonly"], Untrusted), &Skill::shell_exec());
    assert!(!d.allowed);
    assert_eq!(d.grant, coderclaw_core::Grant::deny_all());
    let c = codes(&d);
    for expected in ["denied-user", "role-not-allowed", "missing-permission", "device-trust"] {
        assert!(c.contains(&expected), "{expected} missing from {c:?}");
    }
    // Every check that failed is there: repo roles, skill roles, two
    // permissions, skill requiredPermissions, enforced trust, dangerous trust.
    assert!(d.reasons.len() >= 7, "{:#?}", d.reasons);
}

/// Runs `decide` for one subject and skill under (config, repo, org)
/// written as YAML, returning the reason codes (empty = allowed).
fn outcome(config: &str, repo: &str, org: &str, s: &Subject, skill: &Skill) -> Vec<&'static str> {
    codes(&World::new(config, repo, org).decide(s, skill))
}

#[test]
fn every_repo_policy_field_changes_the_decision() {
    let dev = who("dana", &["developer"], Untrusted);
    let dev_verified = who("dana", &["developer"], Verified);
    let echo = Skill::plain("team/echo");
    let allowed: Vec<&str> = Vec::new();

    // enforceTrust / minimumTrustLevel
    assert_eq!(outcome("", "", "", &dev, &echo), allowed);
    assert_eq!(outcome("", "enforceTrust: true\n", "", &dev, &echo), ["device-trust"]);
    assert_eq!(outcome("", "enforceTrust: true\n", "", &dev_verified, &echo), allowed);
    assert_eq!(
        outcome("", "enforceTrust: true\nminimumTrustLevel: trusted\n", "", &dev_verified, &echo),
        ["device-trust"]
    );
    assert_eq!(outcome("", "minimumTrustLevel: trusted\n", "", &dev_verified, &echo), allowed, "only when enforced");
    // allowedRoles
    assert_eq!(outcome("", "allowedRoles: [admin]\n", "", &dev, &echo), ["role-not-allowed"]);
    assert_eq!(outcome("", "allowedRoles: [admin, developer]\n", "", &dev, &echo), allowed);
    // allowedUsers / deniedUsers
    assert_eq!(outcome("", "allowedUsers: [erin]\n", "", &dev, &echo), ["user-not-allowed"]);
    assert_eq!(outcome("", "allowedUsers: [dana]\n", "", &dev, &echo), allowed);
    assert_eq!(outcome("", "deniedUsers: [dana]\n", "", &dev, &echo), ["denied-user"]);
    assert_eq!(outcome("", "deniedUsers: [erin]\n", "", &dev, &echo), allowed);

    // agentPolicies: agentId, allowedRoles, deniedRoles, requireDeviceTrust
    let agent = Skill::agent("team/code-modifier");
    let ap = |body: &str| format!("agentPolicies:\n  - agentId: code-modifier\n{body}");
    assert_eq!(outcome("", &ap("    allowedRoles: [admin]\n"), "", &dev, &agent), ["role-not-allowed"]);
    assert_eq!(outcome("", &ap("    allowedRoles: [developer]\n"), "", &dev, &agent), allowed);
    assert_eq!(
        outcome("", &ap("    allowedRoles: [admin]\n"), "", &dev, &Skill::agent("team/other")),
        allowed,
        "agentId selects the agent"
    );
    assert_eq!(outcome("", &ap("    deniedRoles: [developer]\n"), "", &dev, &agent), ["role-denied"]);
    assert_eq!(
        outcome("", &ap("    allowedRoles: [developer]\n    deniedRoles: [developer]\n"), "", &dev, &agent),
        ["role-denied"],
        "deny beats allow"
    );
    assert_eq!(outcome("", &ap("    requireDeviceTrust: verified\n"), "", &dev, &agent), ["device-trust"]);
    assert_eq!(outcome("", &ap("    requireDeviceTrust: verified\n"), "", &dev_verified, &agent), allowed);

    // skillPolicies: skillId, dangerous, requiredPermissions, allowedRoles, trustLevel
    let sp = |body: &str| format!("skillPolicies:\n  - skillId: echo\n{body}");
    assert_eq!(outcome("", &sp("    allowedRoles: [admin]\n"), "", &dev, &echo), ["role-not-allowed"]);
    assert_eq!(outcome("", &sp("    allowedRoles: [admin]\n"), "", &dev, &Skill::plain("team/other")), allowed);
    assert_eq!(outcome("", &sp("    requiredPermissions: [config:write]\n"), "", &dev, &echo), ["missing-permission"]);
    assert_eq!(outcome("", &sp("    requiredPermissions: [skill:execute]\n"), "", &dev, &echo), allowed);
    assert_eq!(outcome("", &sp("    trustLevel: trusted\n"), "", &dev_verified, &echo), ["device-trust"]);
    assert_eq!(outcome("", &sp("    dangerous: true\n"), "", &dev, &echo), ["device-trust"]);
    assert_eq!(outcome("", &sp("    dangerous: false\n"), "", &dev, &echo), allowed);
    assert_eq!(outcome("", &sp("    dangerous: true\n"), "", &dev_verified, &echo), allowed);
}

#[test]
fn every_org_policy_field_changes_the_decision() {
    let dev = who("dana", &["developer"], Verified);
    let echo = Skill::plain("team/echo");
    let org = |body: &str| format!("organizationPolicy:\n{body}");
    assert_eq!(outcome("", "", &org("  deniedSkills: [echo]\n"), &dev, &echo), ["denied-skill"]);
    assert_eq!(outcome("", "", &org("  deniedSkills: [other/echo]\n"), &dev, &echo), Vec::<&str>::new());
    // An admin is not above the organisation's forbid.
    assert_eq!(
        outcome("", "", &org("  deniedSkills: [echo]\n"), &who("ada", &["admin"], Trusted), &echo),
        ["denied-skill"]
    );
    let untrusted = who("dana", &["developer"], Untrusted);
    assert_eq!(outcome("", "", &org("  enforceTrust: true\n"), &untrusted, &echo), ["device-trust"]);
    assert_eq!(
        outcome("", "", &org("  enforceTrust: true\n  minimumTrustLevel: trusted\n"), &dev, &echo),
        ["device-trust"]
    );
    // The repository cannot switch the organisation's enforcement off or lower it.
    assert_eq!(
        outcome(
            "",
            "enforceTrust: false\nminimumTrustLevel: untrusted\n",
            &org("  enforceTrust: true\n"),
            &untrusted,
            &echo
        ),
        ["device-trust"]
    );
}

#[test]
fn every_configuration_field_changes_the_decision() {
    let dev = who("dana", &["developer"], Untrusted);
    let echo = Skill::plain("team/echo");
    let allowed: Vec<&str> = Vec::new();
    assert_eq!(outcome("security:\n  enforceTrust: true\n", "", "", &dev, &echo), ["device-trust"]);
    assert_eq!(
        outcome("security:\n  enforceTrust: true\ndeviceTrust:\n  minimumLevel: untrusted\n", "", "", &dev, &echo),
        allowed
    );
    assert_eq!(outcome("security:\n  requireAuth: true\n", "", "", &dev, &echo), ["auth-required"]);
    // A dangerous skill no policy names: denied by default, allowed when configured.
    let mut danger = Skill::plain("team/rm-rf");
    danger.dangerous = true;
    let trusted = who("dana", &["developer"], Trusted);
    assert_eq!(outcome("", "", "", &trusted, &danger), ["dangerous-without-policy"]);
    assert_eq!(outcome("security:\n  dangerousSkillsWithoutPolicy: allow\n", "", "", &trusted, &danger), allowed);
    // A skill asking for shell is dangerous even if its manifest (plain:
    // dangerous = false) says it is not.
    let mut sneaky = Skill::plain("team/helper");
    sneaky.caps.shell.insert("bash".into());
    assert_eq!(outcome("", "", "", &trusted, &sneaky), ["dangerous-without-policy"]);
    assert_eq!(outcome("security:\n  dangerousSkillsWithoutPolicy: allow\n", "", "", &dev, &sneaky), ["device-trust"]);
    // deviceTrust.minimumLevel also governs dangerous skills.
    assert_eq!(outcome("security:\n  dangerousSkillsWithoutPolicy: allow\n", "", "", &dev, &danger), ["device-trust"]);
    // Custom roles with inherits.
    let custom = "roles:\n  custom-developer:\n    inherits: developer\n    additionalPermissions: [config:write]\n";
    let w = World::new(custom, "", "");
    let c = who("carl", &["custom-developer"], Verified);
    assert!(w.permits(&c, Permission::ConfigWrite));
    assert!(w.decide(&c, &echo).allowed, "inherits skill:execute from developer");
    assert!(!w.permits(&who("dana", &["developer"], Verified), Permission::ConfigWrite));
}

#[test]
fn ci_invokes_agents_but_not_skills_and_nested_skills_keep_their_rules() {
    let w = World::new("", "skillPolicies:\n  - skillId: word-count\n    allowedRoles: [developer]\n", "");
    let ci = who("bot", &["ci"], Verified);
    assert!(w.decide(&ci, &Skill::agent("team/code-reviewer")).allowed);
    assert_eq!(codes(&w.decide(&ci, &Skill::plain("team/echo"))), ["missing-permission"]);
    let nested = Action::Nested { parent: "team/code-reviewer".into() };
    assert!(w.decide_as(&ci, &Skill::plain("team/echo"), nested.clone()).allowed);
    assert_eq!(codes(&w.decide_as(&ci, &Skill::plain("team/word-count"), nested)), ["role-not-allowed"]);
}

#[test]
fn sessions_expired_revoked_or_out_of_scope_are_refused() {
    let w = World::new("", "", "");
    let echo = Skill::plain("team/echo");
    let mut s = who("dana", &["developer"], Verified);
    let session = SessionFacts { id: "s1".into(), expires_at_ms: NOW + 1, revoked: false, scope: None };
    s.session = Some(session.clone());
    assert!(w.decide(&s, &echo).allowed);
    s.session = Some(SessionFacts { expires_at_ms: NOW, ..session.clone() });
    assert_eq!(codes(&w.decide(&s, &echo)), ["session-expired"]);
    s.session = Some(SessionFacts { revoked: true, ..session.clone() });
    assert_eq!(codes(&w.decide(&s, &echo)), ["session-revoked"]);
    assert!(!check_permission(&s, Permission::TaskRead, Some(Path::new("/repo")), w.policies(), NOW).allowed);
    s.session = Some(SessionFacts { scope: Some("/repo".into()), ..session.clone() });
    assert!(w.decide(&s, &echo).allowed);
    // A scoped session holds its permissions inside its scope only, and
    // nowhere when there is no workspace.
    let read = |s: &Subject, ws: Option<&Path>| check_permission(s, Permission::TaskRead, ws, w.policies(), NOW);
    assert!(read(&s, Some(Path::new("/repo/sub"))).allowed);
    assert_eq!(codes(&read(&s, Some(Path::new("/other")))), ["out-of-scope"]);
    assert_eq!(codes(&read(&s, None)), ["out-of-scope"]);
    s.session = Some(SessionFacts { scope: Some("/elsewhere".into()), ..session });
    assert_eq!(codes(&w.decide(&s, &echo)), ["out-of-scope"]);
}

#[test]
fn the_grant_is_the_request_cut_to_the_offer() {
    let mut w = World::new("", "", "");
    w.offer.dirs.get_mut("workspace").unwrap().access = Access::Read;
    w.offer.ceiling = Limits { memory_bytes: 32 << 20, ..Limits::default() };
    let mut s = Skill::plain("team/fetch");
    s.caps.fs.insert(FsRequest { path: "workspace".into(), access: Access::ReadWrite });
    s.caps.fs.insert(FsRequest { path: "cache".into(), access: Access::Read });
    s.caps.env.insert("GITHUB_TOKEN".into());
    s.caps.env.insert("AWS_SECRET".into());
    s.caps.http.insert(HostPattern::parse("https://api.github.com").unwrap());
    s.limits = RequestedLimits { memory: Some(Size(128 << 20)), timeout: Some(Millis(5_000)) };
    let d = w.decide(&who("dana", &["developer"], Verified), &s);
    assert!(d.allowed);
    let g = &d.grant;
    assert_eq!(g.dirs().len(), 1);
    assert_eq!((g.dirs()[0].host.as_path(), g.dirs()[0].access), (Path::new("/repo"), Access::Read));
    assert_eq!(g.env().keys().collect::<Vec<_>>(), ["GITHUB_TOKEN"]);
    assert!(g.allows_http("https", "api.github.com", Some(443)));
    assert_eq!(g.http().len(), 1, "only the requested destination");
    assert_eq!(g.limits().memory_bytes, 32 << 20, "lowered to the ceiling");
    assert_eq!(g.limits().timeout, Duration::from_secs(5), "the request is lower than the ceiling");
    assert_eq!(d.narrowed.len(), 2, "{:?}", d.narrowed);
    let json = d.to_json().to_string();
    assert!(!json.contains("t0ken"), "environment values never leave in the decision: {json}");
}

// ---- properties --------------------------------------------------------

const ROLE_NAMES: [&str; 5] = ["admin", "developer", "readonly", "ci", "custom"];
const IDS: [&str; 3] = ["team/a", "team/b", "other/a"];

fn arb_subject() -> impl Strategy<Value = Subject> {
    (0usize..3, proptest::collection::vec(0usize..5, 0..3), 0usize..3).prop_map(|(u, roles, t)| Subject {
        user: ["dana", "erin", "ada"][u].into(),
        roles: roles.into_iter().map(|r| ROLE_NAMES[r].to_owned()).collect(),
        device: "d".into(),
        device_trust: [Untrusted, Verified, Trusted][t],
        session: None,
        origin: Origin::Local,
        client: None,
    })
}

fn arb_skill() -> impl Strategy<Value = Skill> {
    (
        0usize..3,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::btree_set((0usize..3, any::<bool>()), 0..3),
        proptest::collection::btree_set(0usize..3, 0..3),
        proptest::collection::btree_set(0usize..3, 0..3),
        proptest::option::of(1u64..512),
    )
        .prop_map(|(id, agent, dangerous, fs, env, shell, mem)| {
            let mut caps = Capabilities::default();
            for (d, rw) in fs {
                let access = if rw { Access::ReadWrite } else { Access::Read };
                caps.fs.insert(FsRequest { path: ["workspace", "cache", "home"][d].into(), access });
            }
            caps.env = env.into_iter().map(|e| ["A", "B", "C"][e].to_owned()).collect();
            caps.shell = shell.into_iter().map(|p| ["git", "ls", "make"][p].to_owned()).collect();
            caps.skills.insert(SkillId::parse("team/b").unwrap());
            Skill {
                id: IDS[id].into(),
                kind: if agent { Kind::Agent } else { Kind::Skill },
                dangerous,
                caps,
                limits: RequestedLimits { memory: mem.map(|m| Size(m << 20)), timeout: None },
                unsigned: false,
            }
        })
}

fn arb_repo() -> impl Strategy<Value = String> {
    let list = |n: usize| proptest::collection::vec(0usize..n, 0..3);
    (
        any::<bool>(),
        0usize..3,
        proptest::option::of(list(5)),
        list(3),
        0usize..3,
        proptest::option::of(list(5)),
        list(5),
        0usize..3,
    )
        .prop_map(|(enforce, min, allowed_roles, denied_users, id, skill_roles, denied_roles, trust)| {
            let roles = |v: &[usize]| v.iter().map(|i| ROLE_NAMES[*i]).collect::<Vec<_>>().join(", ");
            let users = denied_users.iter().map(|i| ["dana", "erin", "ada"][*i]).collect::<Vec<_>>().join(", ");
            let level = ["untrusted", "verified", "trusted"];
            let mut y = format!("enforceTrust: {enforce}\nminimumTrustLevel: {}\ndeniedUsers: [{users}]\n", level[min]);
            if let Some(r) = allowed_roles {
                y += &format!("allowedRoles: [{}]\n", roles(&r));
            }
            y += &format!("skillPolicies:\n  - skillId: {}\n    trustLevel: {}\n", IDS[id], level[trust]);
            if let Some(r) = skill_roles {
                y += &format!("    allowedRoles: [{}]\n", roles(&r));
            }
            y += &format!("agentPolicies:\n  - agentId: {}\n    deniedRoles: [{}]\n", IDS[id], roles(&denied_roles));
            y
        })
}

/// A forbid to add to a repository policy.
fn arb_forbid() -> impl Strategy<Value = String> {
    prop_oneof![
        (0usize..3).prop_map(|u| format!("deniedUsers: [{}]\n", ["dana", "erin", "ada"][u])),
        Just("enforceTrust: true\nminimumTrustLevel: trusted\n".to_owned()),
        (0usize..5).prop_map(|r| format!("allowedRoles: [{}]\n", ROLE_NAMES[r])),
        (0usize..3, 0usize..5).prop_map(|(i, r)| format!(
            "agentPolicies:\n  - agentId: {}\n    deniedRoles: [{}]\n",
            IDS[i], ROLE_NAMES[r]
        )),
        (0usize..3).prop_map(|i| format!("skillPolicies:\n  - skillId: {}\n    trustLevel: trusted\n", IDS[i])),
    ]
}

const CUSTOM_ROLE: &str = "roles:\n  custom:\n    inherits: readonly\n    additionalPermissions: [task:submit, skill:execute]\nsecurity:\n  dangerousSkillsWithoutPolicy: allow\n";

fn world(repo: &str) -> World {
    let mut w = World::new(CUSTOM_ROLE, repo, "");
    w.offer.dirs.insert(
        "cache".into(),
        OfferedDir { host: PathBuf::from("/cache"), guest: "/cache".into(), access: Access::Read },
    );
    w.offer.env = BTreeMap::from([("A".into(), "1".into()), ("C".into(), "3".into())]);
    w.offer.ceiling.memory_bytes = 256 << 20;
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_grant_never_exceeds_the_request_the_offer_or_the_roles(
        subject in arb_subject(), skill in arb_skill(), repo in arb_repo()
    ) {
        let w = world(&repo);
        let d = w.decide(&subject, &skill);
        if !d.allowed {
            prop_assert_eq!(&d.grant, &coderclaw_core::Grant::deny_all());
            prop_assert!(!d.reasons.is_empty());
            return Ok(());
        }
        let needed = if skill.kind == Kind::Agent { Permission::AgentInvoke } else { Permission::SkillExecute };
        prop_assert!(w.roles.allows(&subject.roles, needed) && w.roles.allows(&subject.roles, Permission::TaskSubmit));
        let g = &d.grant;
        for dir in g.dirs() {
            let (name, offered) = w.offer.dirs.iter().find(|(_, o)| o.host == dir.host).unwrap();
            let asked = skill.caps.fs.iter().filter(|f| &f.path == name).map(|f| f.access).max();
            prop_assert!(asked.is_some(), "granted directory {} was not requested", name);
            prop_assert!(Some(dir.access) <= asked && dir.access <= offered.access);
        }
        for name in g.env().keys() {
            prop_assert!(skill.caps.env.contains(name) && w.offer.env.contains_key(name));
        }
        prop_assert!(g.shell().is_subset(&skill.caps.shell));
        prop_assert!(g.skills().iter().all(|s| skill.caps.skills.iter().any(|r| r.as_str() == s)));
        prop_assert!(g.limits().memory_bytes <= w.offer.ceiling.memory_bytes);
        prop_assert!(g.limits().memory_bytes <= skill.limits.memory.map_or(Limits::DEFAULT_MEMORY_BYTES, |s| s.0));
    }

    #[test]
    fn adding_a_forbid_never_widens(
        subject in arb_subject(), skill in arb_skill(), repo in arb_repo(), forbid in arb_forbid()
    ) {
        let before = world(&repo).decide(&subject, &skill);
        // The forbid goes in a second document merged by appending list
        // entries / overriding scalars with stricter values: write it as
        // the whole policy plus the forbid's keys.
        let merged = merge(&repo, &forbid);
        let after = world(&merged).decide(&subject, &skill);
        if after.allowed {
            prop_assert!(before.allowed, "forbid {:?} turned a refusal into an allow", forbid);
            prop_assert_eq!(&after.grant, &before.grant);
        }
        prop_assert!(after.reasons.len() >= before.reasons.len());
    }
}

/// Adds `forbid`'s restriction to `repo`: scalar keys are replaced,
/// `deniedUsers` extended, `allowedRoles` intersected, policies appended.
fn merge(repo: &str, forbid: &str) -> String {
    let mut p: RepoPolicy = coderclaw_core::policy::parse_yaml(repo, "r").unwrap();
    let f: RepoPolicy = coderclaw_core::policy::parse_yaml(forbid, "f").unwrap();
    if f.enforce_trust == Some(true) {
        p.enforce_trust = Some(true);
        p.minimum_trust_level = p.minimum_trust_level.max(f.minimum_trust_level);
    }
    p.denied_users.extend(f.denied_users);
    if let Some(only) = f.allowed_roles {
        p.allowed_roles = Some(match p.allowed_roles {
            Some(mine) => mine.into_iter().filter(|r| only.contains(r)).collect(),
            None => only,
        });
    }
    p.agent_policies.extend(f.agent_policies);
    p.skill_policies.extend(f.skill_policies);
    serde_json::to_string(&p).unwrap() // JSON is YAML
}

#[test]
fn unsigned_code_is_decided_as_a_skill_whatever_its_flags_made_it_and_only_for_unsigned_roles() {
    let w = World::new("", "", "");
    let unsigned_skill = Skill { unsigned: true, ..Skill::plain("local/tool") };
    let unsigned_agent = Skill { kind: Kind::Agent, unsigned: true, ..Skill::plain("local/tool") };
    let ci = who("bot", &["ci"], Trusted);
    // The attack: `--with-skill` made the unsigned component an agent, so
    // a ci session (agent:invoke, no skill:execute) ran code it could not
    // run without the flag. As an agent it still needs skill:execute, and
    // ci is not among the unsigned roles.
    let d = w.decide(&ci, &unsigned_agent);
    assert!(!d.allowed);
    assert!(
        codes(&d).contains(&"missing-permission") && codes(&d).contains(&"unsigned-not-allowed"),
        "{:?}",
        codes(&d)
    );
    assert_eq!(codes(&w.decide(&ci, &unsigned_skill)), ["missing-permission", "unsigned-not-allowed"]);
    assert!(codes(&w.decide(&who("rita", &["readonly"], Trusted), &unsigned_skill)).contains(&"unsigned-not-allowed"));
    // Local development is unchanged: developer and admin run unsigned builds.
    assert!(w.decide(&who("dana", &["developer"], Trusted), &unsigned_skill).allowed);
    assert!(w.decide(&who("dana", &["developer"], Trusted), &unsigned_agent).allowed);
    assert!(w.decide(&who("ada", &["admin"], Trusted), &unsigned_agent).allowed);
    // The same component signed is decided by its kind alone.
    let signed_agent = Skill { unsigned: false, ..unsigned_agent.clone() };
    assert!(!codes(&w.decide(&ci, &signed_agent)).contains(&"unsigned-not-allowed"));
    // A host configuration can narrow the roles (an undefined role is refused when loading).
    let strict = World::new("security:\n  unsignedRoles: [admin]\n", "", "");
    assert!(!strict.decide(&who("dana", &["developer"], Trusted), &unsigned_skill).allowed);
    assert!(SecurityConfig::from_yaml("security:\n  unsignedRoles: [wizard]\n", "config.yaml").is_err());
}

#[test]
fn shell_rules_from_manifest_and_policy_both_apply_and_the_host_sets_confinement() {
    use coderclaw_core::{Confinement, ProgramRule};
    let repo = "skillPolicies:\n  - skillId: shell-exec\n    shellRules:\n      git: { subcommands: [status, log] }\n";
    let config = "shell:\n  confinement: best-effort\n  network: [git]\n";
    let w = World::new(config, repo, "");
    let mut skill = Skill::shell_exec();
    let manifest_rule = ProgramRule { subcommands: None, args: Some(vec!["*".into()]) };
    skill.caps.shell_rules.insert("git".into(), manifest_rule.clone());
    let d = w.decide(&who("dana", &["developer"], Verified), &skill);
    assert!(d.allowed, "{:?}", d.reasons);
    let rules = d.grant.shell_rules("git");
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules.contains(&&manifest_rule));
    assert!(rules.iter().any(|r| r.subcommands.as_ref().is_some_and(|s| s.contains("status") && s.len() == 2)));
    assert!(d.grant.shell_network("git"));
    assert_eq!(d.grant.confinement(), Confinement::BestEffort);

    // Without host configuration: required confinement, no network.
    let d = World::new("", repo, "").decide(&who("dana", &["developer"], Verified), &skill);
    assert_eq!(d.grant.confinement(), Confinement::Required);
    assert!(!d.grant.shell_network("git"));
    // A misspelt rule key is an error naming it, not a silently wider rule.
    let bad = "skillPolicies:\n  - skillId: shell-exec\n    shellRules:\n      git: { subcommand: [status] }\n";
    let (_, roles) = SecurityConfig::from_yaml("", "config.yaml").unwrap();
    let err = RepoPolicy::from_yaml(bad, "security.yaml", &roles).unwrap_err().to_string();
    assert!(err.contains("subcommand"), "{err}");
}
