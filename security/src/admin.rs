//! Administration of users, API tokens, sessions and devices: each command
//! is ONE call that checks the caller's permission, acts and writes the
//! audit record, so no caller can do one without the others.

use crate::audit::AuditResult;
use crate::identity::{ApiToken, Device, Session, User};
use crate::security::{Security, SecurityError};
use coderclaw_core::TrustLevel;
use coderclaw_core::decision::Subject;
use coderclaw_core::rbac::Permission;
use serde_json::json;
use std::time::Duration;

impl Security {
    /// Adds a local user with `roles` (admin); with a password they can log in.
    pub fn add_user(
        &self,
        by: &Subject,
        name: &str,
        roles: &[String],
        password: Option<&str>,
    ) -> Result<User, SecurityError> {
        self.require_admin(by, "user.add", ("user", name))?;
        // A role no configuration defines would be a user no check can
        // reason about: refused before anything is stored.
        for role in roles {
            self.policy()?.roles.permissions(role)?;
        }
        let user = self.identity.add_user(name, roles, password)?;
        self.audit_done(by, "user.add", ("user", name), &format!("roles [{}]", roles.join(", ")))?;
        Ok(user)
    }

    /// Removes a user (admin): their API tokens are deleted and their
    /// sessions revoked. Not the caller's own user: an admin cannot lock
    /// everyone out by removing themselves.
    pub fn remove_user(&self, by: &Subject, name: &str) -> Result<(), SecurityError> {
        self.require_admin(by, "user.remove", ("user", name))?;
        self.refuse_own(by, "user.remove", name, "remove")?;
        self.identity.remove_user(name)?;
        self.audit_done(by, "user.remove", ("user", name), "removed; their tokens deleted and sessions revoked")
    }

    /// Gives a user these roles (admin); their sessions are revoked. Not
    /// the caller's own user.
    pub fn set_user_roles(&self, by: &Subject, name: &str, roles: &[String]) -> Result<User, SecurityError> {
        self.require_admin(by, "user.set-roles", ("user", name))?;
        self.refuse_own(by, "user.set-roles", name, "change the roles of")?;
        for role in roles {
            self.policy()?.roles.permissions(role)?;
        }
        let before = self.identity.user(name)?.roles;
        let user = self.identity.set_roles(name, roles)?;
        let reason = format!("roles [{}] (were [{}]); their sessions revoked", roles.join(", "), before.join(", "));
        self.audit_done(by, "user.set-roles", ("user", name), &reason)?;
        Ok(user)
    }

    /// Sets (or, with None, clears) a user's password (admin, or the user
    /// themselves); their sessions are revoked.
    pub fn set_password(&self, by: &Subject, name: &str, password: Option<&str>) -> Result<User, SecurityError> {
        if by.user != name {
            self.require_admin(by, "user.passwd", ("user", name))?;
        }
        let user = self.identity.set_password(name, password)?;
        let reason = if password.is_some() { "password set" } else { "password cleared" };
        self.audit_done(by, "user.passwd", ("user", name), &format!("{reason}; their sessions revoked"))?;
        Ok(user)
    }

    /// Refuses `action` on the caller's own user (audited).
    fn refuse_own(&self, by: &Subject, action: &str, name: &str, what: &str) -> Result<(), SecurityError> {
        if by.user != name {
            return Ok(());
        }
        let reason = format!("you cannot {what} your own user: ask another admin");
        self.audit_refused(by, action, ("user", name), &reason)?;
        Err(SecurityError::Denied(reason))
    }

    /// The local users (admin).
    pub fn users(&self, by: &Subject) -> Result<Vec<User>, SecurityError> {
        self.require_admin(by, "user.list", ("user", "*"))?;
        Ok(self.identity.users()?)
    }

    /// Issues an API token for `user` (admin): the record, and the token,
    /// which is shown once (only its hash is kept).
    pub fn create_token(
        &self,
        by: &Subject,
        user: &str,
        ttl: Option<Duration>,
    ) -> Result<(ApiToken, String), SecurityError> {
        self.require_admin(by, "user.token.create", ("user", user))?;
        let (record, token) = self.identity.create_token(user, ttl)?;
        self.audit_done(by, "user.token.create", ("user", user), &format!("token {}", record.id))?;
        Ok((record, token))
    }

    /// Revokes an API token by id (admin).
    pub fn revoke_token(&self, by: &Subject, id: &str) -> Result<(), SecurityError> {
        self.require_admin(by, "user.token.revoke", ("token", id))?;
        self.identity.revoke_token(id)?;
        self.audit_done(by, "user.token.revoke", ("token", id), "revoked")
    }

    /// Every session (admin).
    pub fn sessions(&self, by: &Subject) -> Result<Vec<Session>, SecurityError> {
        self.require_admin(by, "session.list", ("session", "*"))?;
        Ok(self.identity.sessions()?)
    }

    /// Ends the session of `token`, which `by` authenticated with.
    pub fn logout(&self, by: &Subject, token: &str) -> Result<Session, SecurityError> {
        let id = self.identity.session_by_token(token)?.id;
        self.revoke_session(by, &id)
    }

    /// Revokes a session (admin, or the session's own user).
    pub fn revoke_session(&self, by: &Subject, id: &str) -> Result<Session, SecurityError> {
        let target = self.identity.session(id)?;
        let own = by.session.is_some() && target.user == by.user;
        if !own {
            self.require_admin(by, "session.revoke", ("session", id))?;
        }
        let s = self.identity.revoke_session(id)?;
        self.audit(self.event("session.revoke", AuditResult::Allowed, by, "session", id).reason("revoked"))?;
        Ok(s)
    }

    /// Sets a device's trust level (admin). Audited with the old and new level.
    pub fn set_device_trust(&self, by: &Subject, id: &str, level: TrustLevel) -> Result<Device, SecurityError> {
        self.require_admin(by, "device.trust", ("device", id))?;
        let before = match self.identity.set_device_trust(id, level) {
            Ok(b) => b,
            Err(e) => {
                let ev = self.event("device.trust", AuditResult::Error, by, "device", id).reason(e.to_string());
                self.audit(ev)?;
                return Err(e.into());
            }
        };
        self.audit(
            self.event("device.trust", AuditResult::Allowed, by, "device", id)
                .reason(format!("{before} -> {level}"))
                .metadata(json!({ "from": before, "to": level })),
        )?;
        Ok(self.identity.device(id)?)
    }

    /// The registered devices (the local owner, or `config:read`).
    pub fn devices(&self, by: &Subject) -> Result<Vec<Device>, SecurityError> {
        self.require_owner_or(by, Permission::ConfigRead, "device.list", ("device", "*"))?;
        Ok(self.identity.devices()?)
    }

    /// Registers another machine's device by its public key (admin); it
    /// starts untrusted. Returns the device (its id is the key's id).
    pub fn register_device(&self, by: &Subject, name: &str, public_key: &str) -> Result<Device, SecurityError> {
        let key = coderclaw_core::keys::PublicKey::parse(public_key)?;
        let id = key.id().to_string();
        self.require_admin(by, "device.register", ("device", &id))?;
        let device = self.identity.register_device(&id, name, &key.to_string(), false)?;
        self.audit_done(by, "device.register", ("device", &id), &format!("{name}, {}", device.trust))?;
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use crate::home::Home;
    use crate::security::{Security, SecurityError};
    use std::sync::Arc;

    #[test]
    fn a_user_with_a_role_no_configuration_defines_is_refused_and_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let security = Security::open(Arc::new(Home::open(dir.path()).unwrap()), None).unwrap();
        let owner = security.subject(None).unwrap();
        let err = security.add_user(&owner, "mallory", &["wizard".to_owned()], None).unwrap_err();
        assert!(matches!(err, SecurityError::Role(_)), "{err}");
        assert!(err.to_string().contains("unknown role `wizard`"), "{err}");
        assert!(security.users(&owner).unwrap().is_empty(), "nothing was stored");
        let added = security.add_user(&owner, "dana", &["developer".to_owned()], None).unwrap();
        assert_eq!(added.roles, ["developer"]);
    }
}
