//! Which registry a command talks to, and the organisation policies it
//! publishes.
//!
//! A registry is named by the user (a name from `registries:` in
//! config.yaml, or a URL) or by a lockfile. A lockfile comes with the
//! repository, so it may only name a registry this user configured:
//! otherwise a cloned repository could send the registry token to a server
//! of its choosing.

use crate::RegistryClient;
use crate::cache::{CacheError, ClientCache};
use crate::client::RegistryClientError;
use coderclaw_core::policy::{OrgPolicy, RegistryEntry};
use coderclaw_core::signed_policy::SignedPolicyError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A registry resolved from a name or URL.
pub struct Registry {
    /// As the user wrote it (the name recorded in lockfiles and caches).
    pub name: String,
    /// Its configuration, when it came from config.yaml.
    pub entry: Option<RegistryEntry>,
    /// The client.
    pub client: RegistryClient,
}

/// Why no registry could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    /// Neither the user nor a lockfile named one.
    #[error("no registry was named")]
    NoneNamed,
    /// A lockfile names a registry URL the user did not configure.
    #[error("the lockfile names the registry {url}, which is not in your configuration")]
    LockfileUrlNotConfigured {
        /// The URL in the lockfile.
        url: String,
    },
    /// A name that is not in the configuration.
    #[error("unknown registry `{name}` (configured: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    Unknown {
        /// The name asked for.
        name: String,
        /// The configured names.
        known: Vec<String>,
    },
    /// The client could not be built (URL, CA file, insecure token use).
    #[error(transparent)]
    Client(#[from] RegistryClientError),
}

impl Registry {
    /// The registry `chosen` by the user, else the one `from_lockfile`
    /// names, resolved against the user's `configured` registries.
    pub fn choose(
        chosen: Option<&str>,
        from_lockfile: Option<&str>,
        configured: &BTreeMap<String, RegistryEntry>,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Registry, ChooseError> {
        let name = match (chosen, from_lockfile) {
            (Some(chosen), _) => chosen.to_owned(),
            (None, Some(locked)) if is_url(locked) => configured
                .iter()
                .find(|(_, e)| e.url.trim_end_matches('/') == locked.trim_end_matches('/'))
                .map(|(name, _)| name.clone())
                .ok_or_else(|| ChooseError::LockfileUrlNotConfigured { url: locked.to_owned() })?,
            (None, Some(locked)) => locked.to_owned(),
            (None, None) => return Err(ChooseError::NoneNamed),
        };
        let (url, entry) = if is_url(&name) {
            (name.clone(), None)
        } else {
            let entry = configured.get(&name).cloned().ok_or_else(|| ChooseError::Unknown {
                name: name.clone(),
                known: configured.keys().cloned().collect(),
            })?;
            (entry.url.clone(), Some(entry))
        };
        let client = RegistryClient::new(&url, token, ca)?;
        Ok(Registry { name, entry, client })
    }
}

/// Whether `s` names a registry by URL rather than by a configured name.
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// What syncing one namespace's organisation policy did.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySync {
    /// The namespace.
    pub namespace: String,
    /// `verified`, `none published`, or why it was not fetched.
    pub status: String,
    /// The verified policy's serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// The verified policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<OrgPolicy>,
    /// Set when the registry could not answer and the cached policy stays
    /// in force.
    #[serde(skip)]
    pub kept_cached: Option<String>,
}

/// Why a policy sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum PolicySyncError {
    /// The registry served a policy that does not verify.
    #[error(
        "registry {registry} served an organisation policy for `{namespace}` that is refused: {reason}; the cached policy stays in force"
    )]
    Refused {
        /// The registry.
        registry: String,
        /// The namespace.
        namespace: String,
        /// Why it does not verify.
        reason: SignedPolicyError,
    },
    /// The registry failed in a way that is not "down".
    #[error(transparent)]
    Client(#[from] RegistryClientError),
    /// The cache refused it (older than seen) or failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Fetches, verifies and caches the organisation policy of every namespace
/// the registry's configuration lists admin keys for. An unreachable
/// registry leaves the cached policies in force; a policy that fails
/// verification or is older than the cached one is refused.
pub async fn sync_policies(reg: &Registry, cache: &ClientCache) -> Result<Vec<PolicySync>, PolicySyncError> {
    let mut report = Vec::new();
    let Some(entry) = &reg.entry else { return Ok(report) };
    for (namespace, keys) in entry.admin_keys() {
        let status = |status: String| PolicySync {
            namespace: namespace.to_owned(),
            status,
            serial: None,
            policy: None,
            kept_cached: None,
        };
        let doc = match reg.client.org_policy(namespace).await {
            Ok(Some(doc)) => doc,
            Ok(None) => {
                report.push(status("none published".into()));
                continue;
            }
            Err(e @ (RegistryClientError::Unreachable(_) | RegistryClientError::Api(_))) => {
                // Like a registry that is down: the cached policy (if any)
                // stays in force; nothing is loosened.
                let mut s = status(format!("not fetched ({e}); cached policy kept"));
                s.kept_cached = Some(format!(
                    "the organisation policy of `{namespace}` could not be fetched from {} ({e}): the cached one stays in force",
                    reg.name
                ));
                report.push(s);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        doc.verify(namespace, &keys).map_err(|reason| PolicySyncError::Refused {
            registry: reg.name.clone(),
            namespace: namespace.to_owned(),
            reason,
        })?;
        cache.accept_policy(&reg.name, &doc)?;
        report.push(PolicySync {
            serial: Some(doc.serial),
            policy: Some(doc.policy.clone()),
            ..status("verified".into())
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> BTreeMap<String, RegistryEntry> {
        let entry: RegistryEntry =
            serde_json::from_value(serde_json::json!({"url": "http://127.0.0.1:7421/"})).unwrap();
        BTreeMap::from([("team".to_owned(), entry)])
    }

    #[test]
    fn a_lockfile_may_only_name_a_registry_the_user_configured() {
        let all = configured();
        let err = Registry::choose(None, Some("http://evil.example:80"), &all, Some("t".into()), None).err().unwrap();
        assert!(matches!(err, ChooseError::LockfileUrlNotConfigured { .. }), "{err}");
        let reg = Registry::choose(None, Some("http://127.0.0.1:7421"), &all, None, None).unwrap();
        assert_eq!(reg.name, "team", "a configured URL resolves to its name");
    }

    #[test]
    fn an_unknown_name_lists_the_configured_ones() {
        let err = Registry::choose(Some("other"), None, &configured(), None, None).err().unwrap();
        assert_eq!(err.to_string(), "unknown registry `other` (configured: team)");
        assert!(matches!(Registry::choose(None, None, &configured(), None, None), Err(ChooseError::NoneNamed)));
    }
}
