//! The next command to run. The libraries say what happened; this module
//! adds, for a person at a terminal, which `coderclaw` command fixes it.

use coderclaw::home::HomeError;
use coderclaw::identity::IdentityError;
use coderclaw::security::{InstallGate, SecurityError};
use coderclaw::tasks::http_server::ServerError;
use coderclaw::tasks::{EngineError, ErrorCode, RuntimeError, StoreError};
use coderclaw_core::keys::KeyError;
use coderclaw_core::package::PackageError;
use coderclaw_core::task::FailureCode;
use coderclaw_registry::install::InstallError;

/// A hint for the first error in `e`'s chain this module knows.
pub(crate) fn for_error(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<SecurityError>() {
            security(e)
        } else if let Some(e) = cause.downcast_ref::<HomeError>() {
            home(e)
        } else if let Some(e) = cause.downcast_ref::<IdentityError>() {
            identity(e)
        } else if let Some(e) = cause.downcast_ref::<PackageError>() {
            package(e)
        } else if let Some(e) = cause.downcast_ref::<KeyError>() {
            key(e)
        } else if let Some(e) = cause.downcast_ref::<coderclaw::Error>() {
            sandbox(e)
        } else if let Some(e) = cause.downcast_ref::<InstallError>() {
            install(e)
        } else if let Some(ServerError::LocalOnlyBeyondLoopback(_)) = cause.downcast_ref::<ServerError>() {
            Some("listen on 127.0.0.1, or use --mode remote-enabled".into())
        } else if let Some(e) = cause.downcast_ref::<StoreError>() {
            store(e)
        } else if let Some(coderclaw::OpenError::Engine(EngineError::Store(e))) = cause.downcast_ref() {
            store(e)
        } else if let Some(e) = cause.downcast_ref::<RuntimeError>() {
            (e.code == ErrorCode::Unauthenticated).then(login)
        } else if let Some(crate::task::CallError(e)) = cause.downcast_ref::<crate::task::CallError>() {
            (e.code == ErrorCode::Unauthenticated).then(login)
        } else {
            None
        }
    })
}

fn store(e: &StoreError) -> Option<String> {
    match e {
        StoreError::NodeTaken { .. } => {
            Some("pass --node NAME (or set cluster.node in runtime.yaml, or CODERCLAW_NODE)".into())
        }
        StoreError::Postgres { message, .. } if message.contains("no node has used this database yet") => {
            Some("start a node on it: `coderclaw serve --mode distributed-cluster --node NAME`".into())
        }
        StoreError::SchemaTooNew { .. } => Some("every node of a cluster runs the same coderclaw version".into()),
        _ => None,
    }
}

/// A hint for a task's failure code.
pub(crate) fn for_failure(code: FailureCode) -> Option<&'static str> {
    Some(match code {
        FailureCode::Unauthenticated => "log in with `coderclaw login` and pass --session or CODERCLAW_SESSION",
        FailureCode::NotInstalled => "see `coderclaw skill list`; install it with `coderclaw skill install`",
        FailureCode::NodeLost => {
            "its cluster node was lost while it ran; submit it again (a skill safe to re-run from the start can say \
             `resumable = true` in its manifest, and is then re-run on another node by itself)"
        }
        _ => return None,
    })
}

/// A hint for a decision's reason code.
pub(crate) fn for_reason(code: &str) -> Option<&'static str> {
    Some(match code {
        "device-trust" => {
            "an admin can raise this device's trust: `coderclaw device trust <device-id> <level>` (`coderclaw device list` shows ids)"
        }
        "auth-required" => "log in with `coderclaw login` and pass --session or CODERCLAW_SESSION",
        "session-revoked" | "session-expired" => "log in again with `coderclaw login`",
        _ => return None,
    })
}

/// `message`, with `hint` after it in parentheses when there is one.
pub(crate) fn with_hint(message: String, hint: Option<String>) -> String {
    match hint {
        Some(h) => format!("{message} ({h})"),
        None => message,
    }
}

fn login() -> String {
    "log in with `coderclaw login` and pass --session or CODERCLAW_SESSION".into()
}

pub(crate) fn security(e: &SecurityError) -> Option<String> {
    match e {
        SecurityError::Unauthenticated(_) => Some(login()),
        SecurityError::Home(e) => home(e),
        SecurityError::Identity(e) => identity(e),
        SecurityError::Key(e) => key(e),
        SecurityError::CachedPolicy { registry, .. } => {
            Some(format!("fetch it again with `coderclaw registry sync --registry {registry}`"))
        }
        SecurityError::InstallRefused { gate: InstallGate::Rollback, .. } => {
            Some("pass --allow-downgrade to do it on purpose".into())
        }
        SecurityError::InstallRefused { gate: InstallGate::CapabilityIncrease, .. } => {
            Some("review the change and pass --accept-capabilities to accept it".into())
        }
        _ => None,
    }
}

pub(crate) fn home(e: &HomeError) -> Option<String> {
    match e {
        HomeError::Key(e) => key(e),
        HomeError::Package(e) => package(e),
        HomeError::NoSuchKey(name) => Some(format!("create it with `coderclaw key generate --name {name}`")),
        HomeError::UnknownKey(_) => Some("see `coderclaw trust list`".into()),
        HomeError::NotInstalled(_) => Some("see `coderclaw skill list`".into()),
        _ => None,
    }
}

fn identity(e: &IdentityError) -> Option<String> {
    Some(
        match e {
            IdentityError::UnknownSession => "log in again with `coderclaw login`",
            IdentityError::NoSuchUser(_) => "see `coderclaw user list`",
            IdentityError::NoSuchDevice(_) => "see `coderclaw device list`",
            IdentityError::NoSuchSession(_) => "see `coderclaw session list`",
            _ => return None,
        }
        .into(),
    )
}

fn package(e: &PackageError) -> Option<String> {
    match e {
        PackageError::BadMagic => Some("make a package with `coderclaw skill sign`".into()),
        PackageError::UnknownSigner { namespace, .. } => {
            Some(format!("add the publisher's key with `coderclaw trust add {namespace} <public-key>`"))
        }
        _ => None,
    }
}

fn key(e: &KeyError) -> Option<String> {
    match e {
        KeyError::BadPublicKey(_) => Some("a public key is what `coderclaw key export-public` prints".into()),
        KeyError::BadKeyId(_) => Some("see `coderclaw key list` or `coderclaw trust list`".into()),
        _ => None,
    }
}

pub(crate) fn sandbox(e: &coderclaw::Error) -> Option<String> {
    match e {
        coderclaw::Error::UnsignedRefused { .. } => Some(
            "sign and install it (`coderclaw skill sign`, `coderclaw skill install`), or pass --dangerous-allow-unsigned"
                .into(),
        ),
        coderclaw::Error::NotWasm { .. } | coderclaw::Error::NotAComponent { .. } => {
            Some("build the skill with `coderclaw skill build`".into())
        }
        coderclaw::Error::InputRefused { name, problems, .. } if !problems.is_empty() => {
            Some(format!("`coderclaw skill info {name}` shows the input schema it takes"))
        }
        _ => None,
    }
}

fn install(e: &InstallError) -> Option<String> {
    match e {
        InstallError::LockedRollback { .. } => Some("pass --allow-downgrade to do it on purpose".into()),
        InstallError::Verification { reason, .. } => package(reason),
        InstallError::Target(e) => e.downcast_ref::<SecurityError>().and_then(security),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_get_the_command_that_fixes_them_wherever_they_are_in_the_chain() {
        let unauth = anyhow::Error::new(RuntimeError::new(ErrorCode::Unauthenticated, "no session"));
        assert!(for_error(&unauth).unwrap().contains("coderclaw login"));
        let not_installed = anyhow::Error::new(SecurityError::Home(HomeError::NotInstalled("team/x".into())));
        assert!(for_error(&not_installed.context("running team/x")).unwrap().contains("coderclaw skill list"));
        let unknown = PackageError::UnknownSigner { signers: "abc".into(), namespace: "team".into() };
        let install =
            InstallError::Verification { id: "team/x".into(), version: "1.0.0".parse().unwrap(), reason: unknown };
        assert!(for_error(&anyhow::Error::new(install)).unwrap().contains("coderclaw trust add team"));
        let gate = SecurityError::InstallRefused { gate: InstallGate::Rollback, reason: "older".into() };
        let boxed = InstallError::Target(Box::new(gate));
        assert!(for_error(&anyhow::Error::new(boxed)).unwrap().contains("--allow-downgrade"));
        assert_eq!(for_error(&anyhow::anyhow!("something else")), None);
        assert!(for_failure(FailureCode::NotInstalled).is_some() && for_failure(FailureCode::Trap).is_none());
    }
}
