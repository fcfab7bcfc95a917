//! The cluster's identities: users, API tokens, devices and sessions in
//! the database, so a session opened on one node is valid on every node
//! and revoked on all of them at once. Nothing is cached: each lookup is
//! one round trip, so a revocation holds on the next request anywhere.

use super::PgSharedState;
use coderclaw_core::TrustLevel;
use coderclaw_security::audit::{AuditError, AuditStore};
use coderclaw_security::identity::{ApiToken, Device, IdentityBackend, IdentityError, Session, User};
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use tokio_postgres::Row;

/// The schema's identity tables (migration 5).
pub(super) const MIGRATION: &str = "
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    roles TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT
);
CREATE INDEX api_tokens_by_hash ON api_tokens (secret_hash);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    trust TEXT NOT NULL,
    local BOOLEAN NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_name TEXT NOT NULL,
    device TEXT NOT NULL,
    roles TEXT NOT NULL,
    scope TEXT,
    method TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
";

const USER_COLUMNS: &str = "name, roles, password_hash IS NOT NULL, created_at_ms";
const DEVICE_COLUMNS: &str = "id, name, public_key, trust, local, created_at_ms";
const SESSION_COLUMNS: &str =
    "id, user_name, device, roles, scope, method, created_at_ms, expires_at_ms, revoked_at_ms";

fn roles(json: String) -> Vec<String> {
    serde_json::from_str(&json).unwrap_or_default()
}

fn user_row(r: &Row) -> User {
    User { name: r.get(0), roles: roles(r.get(1)), has_password: r.get(2), created_at_ms: r.get::<_, i64>(3) as u64 }
}

fn device_row(r: &Row) -> Device {
    Device {
        id: r.get(0),
        name: r.get(1),
        public_key: r.get(2),
        // A value edited into something unknown counts as the lowest level.
        trust: TrustLevel::parse(&r.get::<_, String>(3)).unwrap_or(TrustLevel::Untrusted),
        local: r.get(4),
        created_at_ms: r.get::<_, i64>(5) as u64,
    }
}

fn session_row(r: &Row) -> Session {
    Session {
        id: r.get(0),
        user: r.get(1),
        device: r.get(2),
        roles: roles(r.get(3)),
        scope: r.get::<_, Option<String>>(4).map(PathBuf::from),
        method: r.get(5),
        created_at_ms: r.get::<_, i64>(6) as u64,
        expires_at_ms: r.get::<_, i64>(7) as u64,
        revoked_at_ms: r.get::<_, Option<i64>>(8).map(|v| v as u64),
    }
}

/// A failure of the shared connection, as an identity error.
fn identity_error(state: &PgSharedState, e: AuditError) -> IdentityError {
    match e {
        AuditError::Store { store, message } => IdentityError::Store { store, message },
        other => IdentityError::Store { store: AuditStore::name(state), message: other.to_string() },
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgSharedState {
    /// Runs `f` on the shared connection, its failure an identity error.
    fn identities<T: Send + 'static>(
        &self,
        f: impl for<'a> Fn(&'a mut super::Conn) -> BoxFuture<'a, Result<T, tokio_postgres::Error>> + Send + Sync + 'static,
    ) -> Result<T, IdentityError> {
        self.run(f).map_err(|e| identity_error(self, e))
    }

    /// The rows `sql` (with one argument, or none) reads, each through
    /// `read`; on the reader connection, pipelined.
    fn rows<T: Send + 'static>(
        &self,
        sql: String,
        arg: Option<String>,
        read: fn(&Row) -> T,
    ) -> Result<Vec<T>, IdentityError> {
        let answer = self.read(move |c| {
            let (sql, arg) = (sql.clone(), arg.clone());
            Box::pin(async move {
                let rows = match &arg {
                    Some(a) => c.query(&sql, &[a]).await?,
                    None => c.query(&sql, &[]).await?,
                };
                Ok(rows.iter().map(read).collect())
            })
        });
        answer.map_err(|e| identity_error(self, e))
    }
}

impl IdentityBackend for PgSharedState {
    fn name(&self) -> String {
        AuditStore::name(self)
    }

    fn shared(&self) -> bool {
        true
    }

    fn insert_user(&self, user: &User, password_hash: Option<&str>) -> Result<bool, IdentityError> {
        let (user, hash) = (user.clone(), password_hash.map(str::to_owned));
        let roles = serde_json::to_string(&user.roles).unwrap_or_else(|_| "[]".into());
        self.identities(move |c| {
            let (user, hash, roles) = (user.clone(), hash.clone(), roles.clone());
            Box::pin(async move {
                let n = c
                    .execute(
                        "INSERT INTO users (name, password_hash, roles, created_at_ms) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (name) DO NOTHING",
                        &[&user.name, &hash, &roles, &ms(user.created_at_ms)],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
    }

    fn user(&self, name: &str) -> Result<Option<User>, IdentityError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1");
        Ok(self.rows(sql, Some(name.to_owned()), user_row)?.pop())
    }

    fn users(&self) -> Result<Vec<User>, IdentityError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY name");
        self.rows(sql, None, user_row)
    }

    fn delete_user(&self, name: &str, at_ms: u64) -> Result<bool, IdentityError> {
        let name = name.to_owned();
        self.identities(move |c| {
            let name = name.clone();
            Box::pin(async move {
                let tx = c.client.transaction().await?;
                tx.execute(
                    "UPDATE sessions SET revoked_at_ms = $2 WHERE user_name = $1 AND revoked_at_ms IS NULL",
                    &[&name, &ms(at_ms)],
                )
                .await?;
                // Its tokens go with it (ON DELETE CASCADE).
                let deleted = tx.execute("DELETE FROM users WHERE name = $1", &[&name]).await?;
                tx.commit().await?;
                Ok(deleted == 1)
            })
        })
    }

    fn update_user(
        &self,
        name: &str,
        roles: Option<&[String]>,
        password_hash: Option<Option<&str>>,
        at_ms: u64,
    ) -> Result<bool, IdentityError> {
        let name = name.to_owned();
        let roles = roles.map(|r| serde_json::to_string(r).unwrap_or_else(|_| "[]".into()));
        let hash = password_hash.map(|h| h.map(str::to_owned));
        self.identities(move |c| {
            let (name, roles, hash) = (name.clone(), roles.clone(), hash.clone());
            Box::pin(async move {
                let tx = c.client.transaction().await?;
                let mut found = tx.execute("SELECT 1 FROM users WHERE name = $1 FOR UPDATE", &[&name]).await? == 1;
                if let Some(roles) = &roles {
                    found &= tx.execute("UPDATE users SET roles = $2 WHERE name = $1", &[&name, roles]).await? == 1;
                }
                if let Some(hash) = &hash {
                    found &=
                        tx.execute("UPDATE users SET password_hash = $2 WHERE name = $1", &[&name, hash]).await? == 1;
                }
                tx.execute(
                    "UPDATE sessions SET revoked_at_ms = $2 WHERE user_name = $1 AND revoked_at_ms IS NULL",
                    &[&name, &ms(at_ms)],
                )
                .await?;
                tx.commit().await?;
                Ok(found)
            })
        })
    }

    fn password_hash(&self, name: &str) -> Result<Option<String>, IdentityError> {
        let hashes =
            self.rows("SELECT password_hash FROM users WHERE name = $1".into(), Some(name.to_owned()), |r| {
                r.get::<_, Option<String>>(0)
            })?;
        Ok(hashes.into_iter().next().flatten())
    }

    fn insert_token(&self, token: &ApiToken, secret_hash: &str) -> Result<(), IdentityError> {
        let (t, hash) = (token.clone(), secret_hash.to_owned());
        self.identities(move |c| {
            let (t, hash) = (t.clone(), hash.clone());
            Box::pin(async move {
                c.execute(
                    "INSERT INTO api_tokens (id, user_name, secret_hash, created_at_ms, expires_at_ms)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                    &[&t.id, &t.user, &hash, &ms(t.created_at_ms), &t.expires_at_ms.map(ms)],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn token_by_hash(&self, secret_hash: &str) -> Result<Option<ApiToken>, IdentityError> {
        let tokens = self.rows(
            "SELECT id, user_name, created_at_ms, expires_at_ms, revoked_at_ms FROM api_tokens WHERE secret_hash = $1"
                .into(),
            Some(secret_hash.to_owned()),
            |r| ApiToken {
                id: r.get(0),
                user: r.get(1),
                created_at_ms: r.get::<_, i64>(2) as u64,
                expires_at_ms: r.get::<_, Option<i64>>(3).map(|v| v as u64),
                revoked_at_ms: r.get::<_, Option<i64>>(4).map(|v| v as u64),
            },
        )?;
        Ok(tokens.into_iter().next())
    }

    fn revoke_token(&self, id: &str, at_ms: u64) -> Result<bool, IdentityError> {
        let id = id.to_owned();
        self.identities(move |c| {
            let id = id.clone();
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE api_tokens SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
                        &[&id, &ms(at_ms)],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
    }

    fn insert_device(&self, device: &Device) -> Result<(), IdentityError> {
        let d = device.clone();
        self.identities(move |c| {
            let d = d.clone();
            Box::pin(async move {
                c.execute(
                    "INSERT INTO devices (id, name, public_key, trust, local, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    &[&d.id, &d.name, &d.public_key, &d.trust.as_str(), &d.local, &ms(d.created_at_ms)],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn device(&self, id: &str) -> Result<Option<Device>, IdentityError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        Ok(self.rows(sql, Some(id.to_owned()), device_row)?.pop())
    }

    fn devices(&self) -> Result<Vec<Device>, IdentityError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id");
        self.rows(sql, None, device_row)
    }

    fn set_device_trust(&self, id: &str, level: TrustLevel) -> Result<(), IdentityError> {
        let id = id.to_owned();
        self.identities(move |c| {
            let id = id.clone();
            Box::pin(async move {
                c.execute("UPDATE devices SET trust = $2 WHERE id = $1", &[&id, &level.as_str()]).await?;
                Ok(())
            })
        })
    }

    fn insert_session(&self, session: &Session, token_hash: &str) -> Result<(), IdentityError> {
        let (s, hash) = (session.clone(), token_hash.to_owned());
        let roles = serde_json::to_string(&s.roles).unwrap_or_else(|_| "[]".into());
        let scope = s.scope.as_ref().map(|p| p.to_string_lossy().into_owned());
        self.identities(move |c| {
            let (s, hash, roles, scope) = (s.clone(), hash.clone(), roles.clone(), scope.clone());
            Box::pin(async move {
                c.execute(
                    "INSERT INTO sessions (id, token_hash, user_name, device, roles, scope, method, created_at_ms,
                        expires_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                    &[
                        &s.id,
                        &hash,
                        &s.user,
                        &s.device,
                        &roles,
                        &scope,
                        &s.method,
                        &ms(s.created_at_ms),
                        &ms(s.expires_at_ms),
                    ],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn session_by_token_hash(&self, hash: &str) -> Result<Option<Session>, IdentityError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1");
        Ok(self.rows(sql, Some(hash.to_owned()), session_row)?.pop())
    }

    fn session(&self, id: &str) -> Result<Option<Session>, IdentityError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        Ok(self.rows(sql, Some(id.to_owned()), session_row)?.pop())
    }

    fn sessions(&self) -> Result<Vec<Session>, IdentityError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at_ms DESC, id");
        self.rows(sql, None, session_row)
    }

    fn revoke_session(&self, id: &str, at_ms: u64) -> Result<(), IdentityError> {
        let id = id.to_owned();
        self.identities(move |c| {
            let id = id.clone();
            Box::pin(async move {
                c.execute(
                    "UPDATE sessions SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
                    &[&id, &ms(at_ms)],
                )
                .await?;
                Ok(())
            })
        })
    }
}
