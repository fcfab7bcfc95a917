//! Role-based access control: the permissions and built-in roles of the
//! product text, and custom roles from configuration.
//!
//! ```yaml
//! roles:
//!   custom-developer:
//!     inherits: developer            # one role or a list
//!     additionalPermissions: [config:write]
//! ```
//!
//! Roles resolve once into their effective permission sets; unknown
//! permissions, unknown or cyclic inheritance and redefined built-in roles
//! are configuration errors that name the role.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use thiserror::Error;

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Permission {
    /// `task:submit`: submit new tasks.
    TaskSubmit,
    /// `task:read`: view task status.
    TaskRead,
    /// `task:cancel`: cancel tasks.
    TaskCancel,
    /// `agent:invoke`: invoke agents.
    AgentInvoke,
    /// `skill:execute`: execute skills.
    SkillExecute,
    /// `config:read`: read configuration.
    ConfigRead,
    /// `config:write`: modify configuration.
    ConfigWrite,
    /// `admin:all`: every permission.
    AdminAll,
}

impl Permission {
    /// Every permission, in the product text's order.
    pub const ALL: [Permission; 8] = [
        Self::TaskSubmit,
        Self::TaskRead,
        Self::TaskCancel,
        Self::AgentInvoke,
        Self::SkillExecute,
        Self::ConfigRead,
        Self::ConfigWrite,
        Self::AdminAll,
    ];

    /// The written form, e.g. `task:submit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskSubmit => "task:submit",
            Self::TaskRead => "task:read",
            Self::TaskCancel => "task:cancel",
            Self::AgentInvoke => "agent:invoke",
            Self::SkillExecute => "skill:execute",
            Self::ConfigRead => "config:read",
            Self::ConfigWrite => "config:write",
            Self::AdminAll => "admin:all",
        }
    }

    /// Parses the written form.
    pub fn parse(s: &str) -> Result<Self, RbacError> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| RbacError::UnknownPermission(s.to_owned()))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Permission {
    type Error = RbacError;
    fn try_from(s: String) -> Result<Self, RbacError> {
        Self::parse(&s)
    }
}

impl From<Permission> for String {
    fn from(p: Permission) -> String {
        p.as_str().to_owned()
    }
}

/// A role configuration problem, naming the role.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RbacError {
    /// Not one of the eight permissions.
    #[error(
        "unknown permission {0:?}: use task:submit, task:read, task:cancel, agent:invoke, skill:execute, config:read, config:write or admin:all"
    )]
    UnknownPermission(String),
    /// A role inherits from a role that does not exist.
    #[error("role `{role}` inherits from `{parent}`, which is not defined")]
    UnknownParent {
        /// The role.
        role: String,
        /// The missing parent.
        parent: String,
    },
    /// Inheritance loops back on itself.
    #[error("roles inherit in a cycle: {0}")]
    Cycle(String),
    /// A custom role reuses a built-in role's name.
    #[error("role `{0}` is built in and cannot be redefined: choose another name and inherit from it")]
    BuiltinRedefined(String),
    /// A role name that is asked for but does not exist.
    #[error("unknown role `{0}`")]
    UnknownRole(String),
}

/// A custom role as written in configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleDef {
    /// Roles whose permissions this one starts from.
    #[serde(default, deserialize_with = "one_or_many")]
    pub inherits: Vec<String>,
    /// Permissions added on top.
    #[serde(default)]
    pub additional_permissions: Vec<Permission>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The built-in roles, exactly as the product text lists them.
pub fn builtin_roles() -> BTreeMap<&'static str, BTreeSet<Permission>> {
    use Permission::*;
    BTreeMap::from([
        ("admin", BTreeSet::from([AdminAll])),
        ("developer", BTreeSet::from([TaskSubmit, TaskRead, TaskCancel, AgentInvoke, SkillExecute])),
        ("readonly", BTreeSet::from([TaskRead, ConfigRead])),
        ("ci", BTreeSet::from([TaskSubmit, TaskRead, AgentInvoke])),
    ])
}

/// Every role (built-in and custom) resolved to its effective permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    resolved: BTreeMap<String, BTreeSet<Permission>>,
}

impl Roles {
    /// The built-in roles plus `custom`, resolved. Fails on the first
    /// problem, naming the role.
    pub fn resolve(custom: &BTreeMap<String, RoleDef>) -> Result<Roles, RbacError> {
        let builtins = builtin_roles();
        if let Some(name) = custom.keys().find(|n| builtins.contains_key(n.as_str())) {
            return Err(RbacError::BuiltinRedefined(name.clone()));
        }
        let mut resolved: BTreeMap<String, BTreeSet<Permission>> =
            builtins.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for name in custom.keys() {
            let mut path = Vec::new();
            resolve_one(name, custom, &mut resolved, &mut path)?;
        }
        Ok(Roles { resolved })
    }

    /// The effective permissions of `role`.
    pub fn permissions(&self, role: &str) -> Result<&BTreeSet<Permission>, RbacError> {
        self.resolved.get(role).ok_or_else(|| RbacError::UnknownRole(role.to_owned()))
    }

    /// Whether any of `roles` grants `permission` (`admin:all` grants all).
    /// Unknown role names grant nothing.
    pub fn allows(&self, roles: &[String], permission: Permission) -> bool {
        roles
            .iter()
            .filter_map(|r| self.resolved.get(r))
            .any(|perms| perms.contains(&Permission::AdminAll) || perms.contains(&permission))
    }

    /// Every role name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.resolved.keys().map(String::as_str)
    }
}

fn resolve_one(
    name: &str,
    custom: &BTreeMap<String, RoleDef>,
    resolved: &mut BTreeMap<String, BTreeSet<Permission>>,
    path: &mut Vec<String>,
) -> Result<BTreeSet<Permission>, RbacError> {
    if let Some(done) = resolved.get(name) {
        return Ok(done.clone());
    }
    if let Some(i) = path.iter().position(|p| p == name) {
        let mut cycle = path[i..].to_vec();
        cycle.push(name.to_owned());
        return Err(RbacError::Cycle(cycle.join(" -> ")));
    }
    let def = custom.get(name).ok_or_else(|| RbacError::UnknownRole(name.to_owned()))?;
    path.push(name.to_owned());
    let mut perms: BTreeSet<Permission> = def.additional_permissions.iter().copied().collect();
    for parent in &def.inherits {
        if !resolved.contains_key(parent) && !custom.contains_key(parent) {
            return Err(RbacError::UnknownParent { role: name.to_owned(), parent: parent.clone() });
        }
        perms.extend(resolve_one(parent, custom, resolved, path)?);
    }
    path.pop();
    resolved.insert(name.to_owned(), perms.clone());
    Ok(perms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    fn roles(yaml_like: &[(&str, &[&str], &[&str])]) -> Result<Roles, RbacError> {
        let custom = yaml_like
            .iter()
            .map(|(name, inherits, extra)| {
                let def = RoleDef {
                    inherits: inherits.iter().map(|s| s.to_string()).collect(),
                    additional_permissions: extra.iter().map(|p| Permission::parse(p)).collect::<Result<_, _>>()?,
                };
                Ok((name.to_string(), def))
            })
            .collect::<Result<BTreeMap<_, _>, RbacError>>()?;
        Roles::resolve(&custom)
    }

    fn has(r: &Roles, role: &str, p: Permission) -> bool {
        r.allows(&[role.to_owned()], p)
    }

    #[test]
    fn builtin_roles_match_the_product_text() {
        let r = Roles::resolve(&BTreeMap::new()).unwrap();
        let table = [
            ("developer", [true, true, true, true, true, false, false]),
            ("readonly", [false, true, false, false, false, true, false]),
            ("ci", [true, true, false, true, false, false, false]),
            ("admin", [true; 7]),
        ];
        let perms = [TaskSubmit, TaskRead, TaskCancel, AgentInvoke, SkillExecute, ConfigRead, ConfigWrite];
        for (role, expected) in table {
            for (p, want) in perms.iter().zip(expected) {
                assert_eq!(has(&r, role, *p), want, "{role} {p}");
            }
        }
        assert!(!has(&r, "ci", TaskCancel), "ci cannot cancel");
        assert!(!has(&r, "readonly", TaskSubmit), "readonly cannot submit");
        assert!(!r.allows(&["nobody".into()], TaskRead), "unknown roles grant nothing");
    }

    #[test]
    fn custom_roles_inherit_and_add() {
        let r = roles(&[
            ("custom-developer", &["developer"], &["config:write"]),
            ("lead", &["custom-developer", "readonly"], &[]),
        ])
        .unwrap();
        assert!(has(&r, "custom-developer", ConfigWrite) && has(&r, "custom-developer", SkillExecute));
        assert!(!has(&r, "custom-developer", ConfigRead));
        assert!(has(&r, "lead", ConfigRead) && has(&r, "lead", ConfigWrite) && has(&r, "lead", TaskCancel));
        assert!(!has(&r, "lead", AdminAll));
    }

    #[test]
    fn configuration_errors_name_the_role() {
        assert_eq!(
            roles(&[("a", &["b"], &[]), ("b", &["c"], &[]), ("c", &["a"], &[])]).unwrap_err(),
            RbacError::Cycle("a -> b -> c -> a".into())
        );
        assert_eq!(roles(&[("self", &["self"], &[])]).unwrap_err(), RbacError::Cycle("self -> self".into()));
        assert_eq!(
            roles(&[("x", &["ghost"], &[])]).unwrap_err(),
            RbacError::UnknownParent { role: "x".into(), parent: "ghost".into() }
        );
        assert_eq!(
            roles(&[("x", &[], &["task:destroy"])]).unwrap_err(),
            RbacError::UnknownPermission("task:destroy".into())
        );
        assert_eq!(roles(&[("admin", &[], &[])]).unwrap_err(), RbacError::BuiltinRedefined("admin".into()));
    }

    #[test]
    fn role_definitions_deserialise_strictly() {
        let def: RoleDef =
            serde_json::from_str(r#"{"inherits": "developer", "additionalPermissions": ["config:write"]}"#).unwrap();
        assert_eq!(def.inherits, ["developer"]);
        assert_eq!(def.additional_permissions, [ConfigWrite]);
        let many: RoleDef = serde_json::from_str(r#"{"inherits": ["ci", "readonly"]}"#).unwrap();
        assert_eq!(many.inherits, ["ci", "readonly"]);
        let e = serde_json::from_str::<RoleDef>(r#"{"inherit": "ci"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `inherit`"), "{e}");
        let e = serde_json::from_str::<RoleDef>(r#"{"additionalPermissions": ["root"]}"#).unwrap_err().to_string();
        assert!(e.contains("unknown permission \"root\""), "{e}");
    }

    proptest::proptest! {
        /// Inheriting never loses a parent's permission; adding never removes one.
        #[test]
        fn inheritance_is_monotonic(parent in 0usize..4, extra in proptest::collection::vec(0usize..8, 0..4)) {
            let parent = ["admin", "developer", "readonly", "ci"][parent];
            let extra: Vec<&str> = extra.iter().map(|i| Permission::ALL[*i].as_str()).collect();
            let r = roles(&[("child", &[parent], &extra)]).unwrap();
            for p in Permission::ALL {
                if has(&r, parent, p) {
                    proptest::prop_assert!(has(&r, "child", p));
                }
            }
            for p in &extra {
                proptest::prop_assert!(has(&r, "child", Permission::parse(p).unwrap()));
            }
        }
    }
}
