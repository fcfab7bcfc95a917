//! This machine's device identity: an Ed25519 key in `<state>/device.key`
//! (0600), created on first use and registered in the identity store.

use crate::home::Home;
use crate::identity::{Device, IdentityStore};
use crate::security::SecurityError;
use coderclaw_core::keys::{KeyError, SecretKey};

/// This machine's device and its key (created on first use).
pub(crate) fn local_device(home: &Home, identity: &IdentityStore) -> Result<(Device, SecretKey), SecurityError> {
    let path = home.root().join("device.key");
    let key = match SecretKey::read(&path) {
        Ok(k) => k,
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let k = SecretKey::generate()?;
            k.write_new(&path)?;
            k
        }
        Err(e) => return Err(e.into()),
    };
    let public = key.public();
    // Known already on every command but the first: a read, no write lock.
    if let Ok(known) = identity.device(public.id().as_str()) {
        return Ok((known, key));
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    Ok((identity.register_device(public.id().as_str(), &name, &public.to_string(), true)?, key))
}
