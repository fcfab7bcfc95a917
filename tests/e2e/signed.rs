//! Signed packages end to end: sign every example skill with a committed
//! test key, install it into a real state directory (SQLite index,
//! content-addressed files), load it verified and run it. Tampered and
//! untrusted packages are refused with nothing installed; revoking a key
//! stops packages that are already installed.

use crate::workspace;
use coderclaw::home::{Home, HomeError};
use coderclaw::{Access, Error, Grant, Host, SkillError};
use coderclaw_core::keys::SecretKey;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::{Package, PackageError};
use coderclaw_e2e::{LoopbackServer, guest};
use serde_json::{Value, json};
use std::path::Path;

/// Test-only signing keys (fixed seeds, so they are part of the source).
fn team_key() -> SecretKey {
    SecretKey::from_seed(*b"coderclaw test key: team--------")
}
fn stranger_key() -> SecretKey {
    SecretKey::from_seed(*b"coderclaw test key: stranger----")
}

fn manifest(skill: &str) -> Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../skills").join(skill).join("skill.toml");
    Manifest::from_toml(&std::fs::read_to_string(&path).unwrap(), &path.display().to_string()).unwrap()
}

pub(crate) fn package(skill: &str, key: &SecretKey) -> Vec<u8> {
    Package::sign(&manifest(skill), std::fs::read(guest(skill)).unwrap(), key, 1_763_000_000).to_bytes()
}

fn trusted_home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    home.trust_add("team", &team_key().public()).unwrap();
    (dir, home)
}

fn signed_host(home: &Home) -> Host {
    Host::builder().compiled_cache(home.compiled_cache_dir()).build().unwrap()
}

async fn run(host: &Host, home: &Home, id: &str, input: Value, grant: &Grant) -> Result<Value, Error> {
    let skill = host.load_verified(&home.load_installed(id).unwrap())?;
    assert_eq!(skill.name(), id);
    Ok(serde_json::from_str(&host.run(&skill, &input.to_string(), grant).await?).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_skill_signs_installs_and_runs() {
    let (_dir, home) = trusted_home();
    let host = signed_host(&home);
    for skill in ["echo", "word-count", "shell-exec", "http-fetch", "security-scanner", "code-reviewer"] {
        let installed = home.dangerous_install_ungated(&package(skill, &team_key())).unwrap();
        assert_eq!(installed.id, format!("team/{skill}"));
        assert_eq!(installed.signer, team_key().public().id());
        assert_eq!(installed.manifest, manifest(skill), "the index keeps the manifest as signed");
    }
    assert_eq!(home.installed().unwrap().len(), 6);

    let ws = workspace();
    let read = Grant::builder().dir(ws.path(), ".", Access::Read);
    let out = run(&host, &home, "team/echo", json!(5), &Grant::deny_all()).await.unwrap();
    assert_eq!(out, json!({"echo": 5}));
    let out = run(&host, &home, "team/word-count", json!({}), &read.clone().build().unwrap()).await.unwrap();
    assert_eq!(out["files"], 3);
    let out = run(&host, &home, "team/security-scanner", json!({}), &read.clone().build().unwrap()).await.unwrap();
    assert_eq!(out["findings"][0]["rule"], "aws-access-key-id");
    let out =
        run(&host, &home, "team/shell-exec", json!({"program": "ls"}), &read.clone().shell("ls").build().unwrap())
            .await
            .unwrap();
    assert_eq!(out["stdout"], "README.md\ndeploy.env\nsrc\n");
    let server = LoopbackServer::start("signed fetch").await.unwrap();
    let http = Grant::builder().http(&server.url()).unwrap().build().unwrap();
    let out = run(&host, &home, "team/http-fetch", json!({"url": server.url()}), &http).await.unwrap();
    assert_eq!(out["body"], "signed fetch");

    for id in ["team/security-scanner", "team/word-count"] {
        let skill = host.load_verified(&home.load_installed(id).unwrap()).unwrap();
        host.register(id, skill, read.clone().build().unwrap());
    }
    let agent = read.skill("team/security-scanner").skill("team/word-count").build().unwrap();
    let out = run(&host, &home, "team/code-reviewer", json!({}), &agent).await.unwrap();
    assert_eq!(out["verdict"], "fail");

    // Removing a skill deletes its stored package and nothing else.
    let packages = || std::fs::read_dir(home.root().join("packages")).unwrap().count();
    assert_eq!(packages(), 6);
    let echo = home.remove("team/echo").unwrap();
    assert_eq!(packages(), 5);
    assert!(!home.root().join("packages").join(format!("{}.ccpkg", echo.digest)).exists());
    assert!(matches!(home.info("team/echo"), Err(HomeError::NotInstalled(_))));
    assert_eq!(home.installed().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifests_requests_reach_the_guest_only_through_the_grant_given_to_run() {
    let (_dir, home) = trusted_home();
    home.dangerous_install_ungated(&package("http-fetch", &team_key())).unwrap();
    let info = home.info("team/http-fetch").unwrap();
    let asked: Vec<String> = info.manifest.capabilities.http.iter().map(ToString::to_string).collect();
    assert_eq!(asked, ["https://api.github.com:443"], "exactly the requested set is recorded");

    // The manifest asks for api.github.com; the host runs with the grant it
    // is given (here none), never with what the manifest asks. Had the
    // request leaked through, the call would fail on the network instead.
    let host = signed_host(&home);
    let err = run(&host, &home, "team/http-fetch", json!({"url": "https://api.github.com/zen"}), &Grant::deny_all())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Skill { error: SkillError::Denied(_), .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_code_is_refused_unless_explicitly_allowed() {
    let host = Host::builder().build().unwrap();
    let err = host.load_file(guest("echo")).unwrap_err();
    assert_eq!(err.code(), "unsigned-refused");
    assert!(err.to_string().contains("dangerous_allow_unsigned"), "{err}");
    assert_eq!(host.stats().compiled, 0, "nothing was compiled");
    // Refused before the file is read: a missing file gets the same answer.
    let err = host.load_file("/definitely/not/here.wasm").unwrap_err();
    assert_eq!(err.code(), "unsigned-refused", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_packages_install_nothing() {
    let (dir, home) = trusted_home();
    let good = package("echo", &team_key());
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let other_ns = Package::sign(
        &Manifest { id: coderclaw_core::manifest::SkillId::parse("other/echo").unwrap(), ..manifest("echo") },
        std::fs::read(guest("echo")).unwrap(),
        &team_key(),
        1,
    )
    .to_bytes();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (flipped, "does not match the package's contents"),
        (good[..good.len() - 10].to_vec(), "truncated"),
        (package("echo", &stranger_key()), "no signature is by a trusted key"),
        (other_ns, "not for namespace `other`"),
        (b"\0asm\x0d\0\x01\0".to_vec(), "not a coderclaw package"),
    ];
    for (bytes, reason) in cases {
        let err = home.dangerous_install_ungated(&bytes).unwrap_err();
        assert!(err.to_string().contains(reason), "want {reason:?}: {err}");
    }
    assert!(home.installed().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("packages")).unwrap().count(), 0, "no package file was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_key_stops_installed_packages_and_their_cached_code() {
    let (_dir, home) = trusted_home();
    home.dangerous_install_ungated(&package("echo", &team_key())).unwrap();
    let host = signed_host(&home);
    run(&host, &home, "team/echo", json!(1), &Grant::deny_all()).await.unwrap();
    let cached = coderclaw_e2e::cached_files(&home.compiled_cache_dir());
    assert_eq!(cached.len(), 1, "the first run left compiled code on disk");

    home.trust_revoke(&team_key().public().id().to_string()).unwrap();
    let err = home.load_installed("team/echo").unwrap_err();
    assert!(matches!(err, HomeError::Package(PackageError::Revoked { .. })), "{err}");
    // The compiled code is still on disk, but the only way to it is a
    // `VerifiedPackage`, which the revoked key can no longer produce.
    assert_eq!(coderclaw_e2e::cached_files(&home.compiled_cache_dir()), cached);
    // A new install of the same package is refused too.
    assert!(home.dangerous_install_ungated(&package("echo", &team_key())).unwrap_err().to_string().contains("revoked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_package_swapped_into_the_store_is_refused() {
    let (dir, home) = trusted_home();
    let echo = home.dangerous_install_ungated(&package("echo", &team_key())).unwrap();
    let other = home.dangerous_install_ungated(&package("word-count", &team_key())).unwrap();
    // Both are validly signed by a trusted key; put word-count's bytes in echo's file.
    let file = |digest: &coderclaw_core::Digest| dir.path().join("packages").join(format!("{digest}.ccpkg"));
    std::fs::copy(file(&other.digest), file(&echo.digest)).unwrap();
    let err = home.load_installed("team/echo").unwrap_err();
    assert!(matches!(err, HomeError::StoredPackageMismatch { .. }), "{err}");
    assert!(err.to_string().contains("now holds team/word-count"), "{err}");
    let refused = home.audit().query(&Default::default()).unwrap().into_iter().last().unwrap();
    assert_eq!((refused.action.as_str(), refused.result.as_str()), ("skill.verify", "denied"));
    // As the error says: reinstalling repairs the stored file.
    home.dangerous_install_ungated(&package("echo", &team_key())).unwrap();
    assert_eq!(home.load_installed("team/echo").unwrap().manifest().id.as_str(), "team/echo");
}
