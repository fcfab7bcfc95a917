//! The compiled-code cache: a second start of the same component loads
//! machine code from disk instead of compiling (asserted by counters, not
//! by timing), and a damaged or unsafe cache entry is never trusted.

use coderclaw::{Grant, Host, LoadSource};
use coderclaw_e2e::{cached_files, guest};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn fresh_host(cache: &Path) -> Host {
    Host::builder().compiled_cache(cache).dangerous_allow_unsigned().build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn second_start_loads_from_the_disk_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = fresh_host(cache.path());
    let skill = first.load_file(guest("echo")).unwrap();
    assert_eq!(skill.source(), LoadSource::Compiled);
    assert_eq!((first.stats().compiled, first.stats().disk_cache_hits), (1, 0));
    let again = first.load_file(guest("echo")).unwrap();
    assert_eq!(again.source(), LoadSource::Memory);
    assert_eq!(first.stats().memory_cache_hits, 1);

    let files = cached_files(cache.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with(&skill.digest().to_hex()), "keyed by digest");
    assert_eq!(std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);

    // A new host (as a new process would be) compiles nothing.
    let second = fresh_host(cache.path());
    let skill = second.load_file(guest("echo")).unwrap();
    assert_eq!(skill.source(), LoadSource::DiskCache);
    assert_eq!((second.stats().compiled, second.stats().disk_cache_hits), (0, 1));
    assert_eq!(second.run(&skill, "7", &Grant::deny_all()).await.unwrap(), r#"{"echo":7}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_cache_entry_is_discarded_and_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    fresh_host(cache.path()).load_file(guest("echo")).unwrap();
    let file = cached_files(cache.path()).remove(0);
    std::fs::write(&file, b"garbage that is not compiled code").unwrap();

    let host = fresh_host(cache.path());
    let skill = host.load_file(guest("echo")).unwrap();
    assert_eq!(skill.source(), LoadSource::Compiled);
    assert_eq!(host.stats().disk_cache_hits, 0);
    assert_eq!(host.run(&skill, "1", &Grant::deny_all()).await.unwrap(), r#"{"echo":1}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_entry_others_could_write_is_not_trusted() {
    let cache = tempfile::tempdir().unwrap();
    fresh_host(cache.path()).load_file(guest("echo")).unwrap();
    let file = cached_files(cache.path()).remove(0);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();

    let host = fresh_host(cache.path());
    assert_eq!(host.load_file(guest("echo")).unwrap().source(), LoadSource::Compiled);
    assert_eq!(host.stats().disk_cache_hits, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_different_component_never_matches_another_digest() {
    let cache = tempfile::tempdir().unwrap();
    let host = fresh_host(cache.path());
    let echo = host.load_file(guest("echo")).unwrap();
    let wc = host.load_file(guest("word-count")).unwrap();
    assert_ne!(echo.digest(), wc.digest());
    assert_eq!(host.stats().compiled, 2);
    assert_eq!(cached_files(cache.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_components_compiled_code_under_a_skills_name_is_recompiled_not_run() {
    // The attack: the cache file of `echo` replaced by the (valid, same
    // user, 0600) compiled code of another component. Trusted by name,
    // owner and mode alone, the other code would run as `echo`.
    let cache = tempfile::tempdir().unwrap();
    let host = fresh_host(cache.path());
    let echo = host.load_file(guest("echo")).unwrap();
    let other = host.load_file(guest("word-count")).unwrap();
    let path_of = |skill: &coderclaw::Skill| {
        cached_files(cache.path())
            .into_iter()
            .find(|f| f.file_name().unwrap().to_string_lossy().starts_with(&skill.digest().to_hex()))
            .unwrap()
    };
    std::fs::copy(path_of(&other), path_of(&echo)).unwrap();
    std::fs::set_permissions(path_of(&echo), std::fs::Permissions::from_mode(0o600)).unwrap();

    let host = fresh_host(cache.path());
    let skill = host.load_file(guest("echo")).unwrap();
    assert_eq!(skill.source(), LoadSource::Compiled, "a swapped entry is not loaded");
    assert_eq!(host.run(&skill, "5", &Grant::deny_all()).await.unwrap(), r#"{"echo":5}"#);
    // Recompiled and stored again, bound to echo: the next host loads it.
    assert_eq!(fresh_host(cache.path()).load_file(guest("echo")).unwrap().source(), LoadSource::DiskCache);
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_made_under_another_key_are_recompiled_and_a_key_others_can_read_is_refused() {
    // A cache restored from another machine (or whose key was replaced)
    // holds entries whose tags this key did not make.
    let cache = tempfile::tempdir().unwrap();
    fresh_host(cache.path()).load_file(guest("echo")).unwrap();
    let key = cache.path().join("mac.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let host = fresh_host(cache.path());
    assert_eq!(host.load_file(guest("echo")).unwrap().source(), LoadSource::Compiled);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Host::builder().compiled_cache(cache.path()).dangerous_allow_unsigned().build().err().unwrap();
    assert!(err.to_string().contains("mac.key") && err.to_string().contains("0600"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_starting_together_on_a_fresh_cache_share_one_complete_key() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_path_buf();
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || Host::builder().compiled_cache(dir).dangerous_allow_unsigned().build())
        })
        .collect();
    let hosts: Vec<Host> = starts.into_iter().map(|t| t.join().unwrap().expect("every host starts")).collect();
    assert_eq!(std::fs::read(dir.join("mac.key")).unwrap().len(), 32);
    hosts[0].load_file(guest("echo")).unwrap();
    // What one host stored, another (started at the same moment) trusts.
    assert_eq!(hosts[7].load_file(guest("echo")).unwrap().source(), LoadSource::DiskCache);
}
