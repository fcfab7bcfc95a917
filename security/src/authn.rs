//! Authentication: who is calling. A session token, a local password or
//! API token, or an OIDC ID token becomes a [`Subject`]; a stored task's
//! [`Principal`] is checked again when it runs.

use crate::audit::{AuditEvent, AuditResult};
use crate::identity::{IdentityError, Session};
use crate::security::{LocalSecret, REMOTE_DEVICE, RemoteLogin, Security, SecurityError};
use coderclaw_core::TrustLevel;
use coderclaw_core::clock::now_ms;
use coderclaw_core::decision::Subject;
use coderclaw_core::policy::Provider;
use coderclaw_core::principal::{Origin, Principal, SessionKey};
use serde_json::json;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

impl Security {
    /// Who is acting: the holder of `session_token`, or (without one and
    /// unless `requireAuth` is on) the local OS user with `defaultRoles`.
    /// Unknown, expired and revoked sessions are refused and audited.
    pub fn subject(&self, session_token: Option<&str>) -> Result<Subject, SecurityError> {
        self.subject_with(session_token, &mut |e| self.audit(e))
    }

    /// [`Security::subject`] for a token presented over the network by
    /// `peer`. Failures are throttled per peer: after
    /// [`FailureThrottle::LIMIT`](coderclaw_net::throttle::FailureThrottle::LIMIT)
    /// in a minute the peer is refused ([`SecurityError::RateLimited`])
    /// without its token being looked at. The audit log gets the first few
    /// failures one by one, then one record when the limit is reached and
    /// one with the count refused while limited, not one per attempt.
    pub fn subject_from_peer(&self, session_token: Option<&str>, peer: IpAddr) -> Result<Subject, SecurityError> {
        self.throttle_check(peer)?;
        let mut held = None;
        let result = self.subject_with(session_token, &mut |e| {
            held = Some(e);
            Ok(())
        });
        let Err(e) = result else { return result };
        self.throttle_failed(peer, held.map(|event| event.metadata(json!({ "peer": peer.to_string() }))))?;
        Err(e)
    }

    /// Refuses `peer` while it is rate-limited for failed authentications
    /// (auditing the end of a limited window once, with its count).
    fn throttle_check(&self, peer: IpAddr) -> Result<(), SecurityError> {
        let (allowed, finished) = self.throttle.check(peer);
        if let Some(f) = finished {
            self.audit(
                AuditEvent::new("auth.throttle", AuditResult::Denied, "peer", &f.peer)
                    .device(REMOTE_DEVICE)
                    .reason(format!("{} authentication attempts were refused unchecked while rate-limited", f.refused))
                    .metadata(json!({ "refused": f.refused })),
            )?;
        }
        allowed.map_err(|t| SecurityError::RateLimited { retry_after_secs: t.retry_after.as_secs().max(1) })
    }

    /// Counts a failed authentication by `peer`: its record (`held`, if the
    /// failure has one not yet written) while under the limit, one record
    /// when the limit is reached, nothing after.
    fn throttle_failed(&self, peer: IpAddr, held: Option<AuditEvent>) -> Result<(), SecurityError> {
        use coderclaw_net::throttle::Failure;
        match self.throttle.failed(peer) {
            Failure::Record => match held {
                Some(event) => self.audit(event),
                None => Ok(()),
            },
            Failure::LimitReached { failures, retry_after } => self.audit(
                AuditEvent::new("auth.throttle", AuditResult::Denied, "peer", &peer.to_string())
                    .device(REMOTE_DEVICE)
                    .reason(format!(
                        "{failures} failed authentications within a minute; further attempts are refused for {} s",
                        retry_after.as_secs().max(1)
                    ))
                    .metadata(json!({ "failures": failures })),
            ),
            Failure::Counted => Ok(()),
        }
    }

    /// Logs in for a client at `peer` on the network (`POST /v1/sessions`):
    /// [`Security::login_local`] or [`Security::login_oidc`] without a
    /// scope, throttled per peer like bearer tokens (each attempt under the
    /// limit is audited by the login itself).
    pub async fn login_from_peer(
        &self,
        peer: IpAddr,
        login: RemoteLogin<'_>,
        roles: Option<&[String]>,
        ttl: Option<Duration>,
    ) -> Result<(Session, String), SecurityError> {
        self.throttle_check(peer)?;
        // A client may ask for a shorter session, never a longer one.
        let configured = Duration::from_millis(self.policy()?.config.identity.session_ttl.0);
        let ttl = Some(ttl.map_or(configured, |t| t.min(configured)));
        let result = match login {
            RemoteLogin::Local { user, secret } => self.login_local(user, secret, roles, None, ttl),
            RemoteLogin::Oidc { id_token } => self.login_oidc(id_token, roles, None, ttl).await,
        };
        // Only a refused credential counts: an issuer that cannot be reached
        // says nothing about the caller.
        if let Err(e) = &result
            && !matches!(e, SecurityError::Oidc(crate::oidc::OidcError::Fetch { .. }))
        {
            self.throttle_failed(peer, None)?;
        }
        result
    }

    /// [`Security::subject`], handing the audit record of a refusal to
    /// `audit` (which may write it, hold it or drop it).
    fn subject_with(
        &self,
        session_token: Option<&str>,
        audit: &mut dyn FnMut(AuditEvent) -> Result<(), SecurityError>,
    ) -> Result<Subject, SecurityError> {
        let Some(token) = session_token else {
            // One look at the policy files for the whole answer.
            let policy = self.policy()?;
            if policy.config.security.require_auth {
                let reason = "security.requireAuth is on and no session token was given";
                audit(
                    AuditEvent::new("auth.session", AuditResult::Denied, "session", "-")
                        .user(&self.actor)
                        .device(&self.local_device.id)
                        .reason(reason),
                )?;
                return Err(SecurityError::Unauthenticated(reason.to_owned()));
            }
            return Ok(Subject {
                user: self.actor.clone(),
                roles: policy.config.security.default_roles.clone(),
                device: self.local_device.id.clone(),
                device_trust: crate::security::trust_under(&policy, &self.local_device),
                session: None,
                origin: Origin::Local,
                client: None,
            });
        };
        let session = match self.identity.session_by_token(token) {
            Ok(s) => s,
            Err(e) => {
                audit(
                    AuditEvent::new("auth.session", AuditResult::Denied, "session", "-")
                        .device(&self.local_device.id)
                        .reason(format!("unknown or forged session token: {e}")),
                )?;
                return Err(e.into());
            }
        };
        self.session_subject(session)
    }

    /// Who a task submitted by `subject` acts for: its session (or the
    /// session-less local user) and where it came from.
    pub fn principal(subject: &Subject) -> Principal {
        let key = match &subject.session {
            Some(s) => SessionKey::Session(s.id.clone()),
            None => SessionKey::Local(subject.user.clone()),
        };
        Principal { key, origin: subject.origin }
    }

    /// `subject` acting from another machine over the network: the device
    /// it uses is unknown (a session token proves the user, not the
    /// machine), so it counts as an `untrusted` device, whatever device the
    /// session was created on and whatever `autoTrustLocal` says.
    pub fn as_remote(mut subject: Subject) -> Subject {
        subject.origin = Origin::Remote;
        subject.device = REMOTE_DEVICE.to_owned();
        subject.device_trust = TrustLevel::Untrusted;
        subject
    }

    /// Who acts for a task now: the subject behind `principal`, checked
    /// again (a session revoked or expired since submission is refused and
    /// audited; a local principal needs `requireAuth` off and the same local
    /// user), and [`Security::as_remote`] when the task came from another
    /// machine.
    pub fn revalidate(&self, principal: &Principal) -> Result<Subject, SecurityError> {
        let subject = match &principal.key {
            SessionKey::Local(user) => {
                let subject = self.subject(None)?;
                if &subject.user != user {
                    return Err(SecurityError::Denied(format!(
                        "the task was submitted by local user {user}, not {}",
                        subject.user
                    )));
                }
                subject
            }
            SessionKey::Session(id) => self.session_subject(self.identity.session(id)?)?,
        };
        Ok(if principal.is_remote() { Self::as_remote(subject) } else { subject })
    }

    pub(crate) fn session_subject(&self, session: Session) -> Result<Subject, SecurityError> {
        let problem = match session.state(now_ms()) {
            "revoked" => Some("the session was revoked"),
            "expired" => Some("the session has expired"),
            _ => None,
        };
        if let Some(problem) = problem {
            self.audit(
                AuditEvent::new("auth.session", AuditResult::Denied, "session", &session.id)
                    .user(&session.user)
                    .device(&session.device)
                    .session(&session.id)
                    .reason(problem),
            )?;
            return Err(SecurityError::Unauthenticated(problem.to_owned()));
        }
        let device = self.identity.device(&session.device)?;
        Ok(Subject {
            user: session.user.clone(),
            roles: session.roles.clone(),
            device: device.id.clone(),
            device_trust: self.effective_trust(&device),
            session: Some(session.facts()),
            origin: Origin::Local,
            client: None,
        })
    }

    // --- authentication ---

    pub(crate) fn provider_enabled(&self, p: Provider) -> Result<(), SecurityError> {
        if self.policy()?.config.identity.providers.contains(&p) {
            Ok(())
        } else {
            Err(SecurityError::Denied(format!(
                "identity provider `{}` is not enabled (identity.providers in config.yaml)",
                p.as_str()
            )))
        }
    }

    /// Logs in with a password or an API token and creates a session on
    /// this machine's device. `roles` narrows the session to some of the
    /// user's roles (default: all of them). Audited, success or not.
    pub fn login_local(
        &self,
        user: &str,
        secret: LocalSecret<'_>,
        roles: Option<&[String]>,
        scope: Option<&Path>,
        ttl: Option<Duration>,
    ) -> Result<(Session, String), SecurityError> {
        let method = match secret {
            LocalSecret::Password(_) => "password",
            LocalSecret::Token(_) => "token",
        };
        let outcome = self.provider_enabled(Provider::Local).and_then(|()| {
            Ok(match secret {
                LocalSecret::Password(p) => (self.identity.verify_password(user, p)?, None),
                LocalSecret::Token(t) => self.identity.verify_token_until(user, t)?,
            })
        });
        let (user_record, token_expiry) = match outcome {
            Ok(u) => u,
            Err(e) => {
                self.audit_login(user, method, AuditResult::Denied, &e.to_string(), None)?;
                return Err(e);
            }
        };
        // A session from an API token does not outlive the token.
        let expiry = self.session_expiry(ttl)?.min(token_expiry.unwrap_or(u64::MAX));
        self.start_session(&user_record.name, &user_record.roles, roles, scope, expiry, method)
    }

    /// When a session started now with `ttl` (or the configured TTL) ends.
    pub(crate) fn session_expiry(&self, ttl: Option<Duration>) -> Result<u64, SecurityError> {
        let ttl = match ttl {
            Some(t) => u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
            None => self.policy()?.config.identity.session_ttl.0,
        };
        Ok(now_ms().saturating_add(ttl))
    }

    pub(crate) fn start_session(
        &self,
        user: &str,
        held: &[String],
        wanted: Option<&[String]>,
        scope: Option<&Path>,
        expires_at_ms: u64,
        method: &str,
    ) -> Result<(Session, String), SecurityError> {
        let roles = match wanted {
            None => held.to_vec(),
            Some(w) => {
                if let Some(r) = w.iter().find(|r| !held.contains(r)) {
                    let e = IdentityError::RoleNotHeld { user: user.into(), role: r.clone(), held: held.join(", ") };
                    self.audit_login(user, method, AuditResult::Denied, &e.to_string(), None)?;
                    return Err(e.into());
                }
                w.to_vec()
            }
        };
        let (session, token) =
            self.identity.create_session(user, &self.local_device.id, &roles, scope, method, expires_at_ms)?;
        self.audit_login(user, method, AuditResult::Allowed, "session created", Some(&session))?;
        Ok((session, token))
    }

    pub(crate) fn audit_login(
        &self,
        user: &str,
        method: &str,
        result: AuditResult,
        reason: &str,
        session: Option<&Session>,
    ) -> Result<(), SecurityError> {
        let mut e = AuditEvent::new("auth.login", result, "session", session.map_or("-", |s| s.id.as_str()))
            .user(user)
            .device(&self.local_device.id)
            .reason(reason)
            .metadata(json!({
                "method": method,
                "roles": session.map(|s| &s.roles),
                "expires_at_ms": session.map(|s| s.expires_at_ms),
                "scope": session.and_then(|s| s.scope.as_ref()),
            }));
        if let Some(s) = session {
            e = e.session(&s.id);
        }
        self.audit(e)
    }

    /// Logs in with an OIDC ID token from a configured issuer.
    pub async fn login_oidc(
        &self,
        id_token: &str,
        roles: Option<&[String]>,
        scope: Option<&Path>,
        ttl: Option<Duration>,
    ) -> Result<(Session, String), SecurityError> {
        // Under the configuration in force now: an issuer or the provider
        // removed since start no longer logs anyone in.
        let oidc = self.oidc()?;
        let (who, issuer) = match oidc.verify(id_token).await {
            Ok(v) => v,
            Err(e) => {
                self.audit_login("-", "oidc", AuditResult::Denied, &e.to_string(), None)?;
                return Err(e.into());
            }
        };
        // Any repository's workflow can get a GitHub token for any audience:
        // only rules on its claims (repository, ref, ...) say whose it is.
        if issuer.provider == coderclaw_core::policy::Provider::Github && issuer.role_rules.is_empty() {
            let e = SecurityError::Denied(format!(
                "OIDC issuer `{}` is GitHub Actions without roleRules: every repository's workflows get such tokens, \
                 so identity.oidc must map their claims (repository, ref, ...) to roles with roleRules",
                issuer.name
            ));
            self.audit_login(&who.user, &format!("oidc:{}", who.issuer), AuditResult::Denied, &e.to_string(), None)?;
            return Err(e);
        }
        let held = match (issuer.roles_by_claims(&who.claims), &issuer.roles) {
            (Some(by_claims), _) if by_claims.is_empty() => {
                let e = SecurityError::Denied(format!(
                    "no roleRules of OIDC issuer `{}` match this token ({}): it holds no role here",
                    issuer.name,
                    rule_claims(&issuer, &who.claims)
                ));
                self.audit_login(
                    &who.user,
                    &format!("oidc:{}", who.issuer),
                    AuditResult::Denied,
                    &e.to_string(),
                    None,
                )?;
                return Err(e);
            }
            (Some(by_claims), _) => by_claims,
            (None, Some(r)) => r.clone(),
            (None, None) => self.policy()?.config.security.default_roles.clone(),
        };
        // A session never outlives the token it was made from.
        let expires_at_ms = self.session_expiry(ttl)?.min(who.expires_at_ms);
        self.start_session(&who.user, &held, roles, scope, expires_at_ms, &format!("oidc:{}", who.issuer))
    }
}

/// The token's values of the claims `issuer`'s rules look at, for a refusal
/// that says what the token carried (`repository=org/x, ref=refs/heads/dev`).
fn rule_claims(
    issuer: &coderclaw_core::policy::OidcIssuer,
    claims: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut names: Vec<&String> = issuer.role_rules.iter().flat_map(|r| r.claims.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| format!("{n}={}", claims.get(n).map_or("(none)", String::as_str)))
        .collect::<Vec<_>>()
        .join(", ")
}
