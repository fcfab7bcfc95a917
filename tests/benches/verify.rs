//! Package verification and install cost: prints figures, asserts nothing.
//!
//! `cargo bench -p coderclaw-e2e --bench verify`

use coderclaw::home::Home;
use coderclaw_core::keys::SecretKey;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::{KeyLookup, Package, TrustedKey};
use coderclaw_core::{Digest, keys::KeyId};
use coderclaw_e2e::print_latency as stats;
use std::time::Instant;

struct OneKey(TrustedKey);

impl KeyLookup for OneKey {
    fn lookup(&self, id: &KeyId) -> Option<TrustedKey> {
        (self.0.key.id() == *id).then(|| self.0.clone())
    }
}

fn main() {
    let key = SecretKey::from_seed([9; 32]);
    let manifest = Manifest::from_toml(
        "id = \"team/bench\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"bench\"\n",
        "bench",
    )
    .unwrap();
    let trust = OneKey(TrustedKey { key: key.public(), namespaces: vec!["team".into()], revoked: false });

    for (label, size, n) in [("100 KB", 100 * 1024, 500), ("5 MB", 5 * 1024 * 1024, 50)] {
        let mut component = vec![0u8; size];
        for (i, b) in component.iter_mut().enumerate() {
            *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        let bytes = Package::sign(&manifest, component.clone(), &key, 1).to_bytes();

        stats(
            &format!("sha-256 of the component, {label}"),
            (0..n)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(Digest::of(&component));
                    t.elapsed()
                })
                .collect(),
        );
        stats(
            &format!("parse + verify package, {label}"),
            (0..n)
                .map(|_| {
                    let t = Instant::now();
                    Package::parse(&bytes).unwrap().verify(&trust).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).unwrap();
        home.trust_add("team", &key.public()).unwrap();
        stats(
            &format!("install (verify, store, index, fsynced audit record), {label}"),
            (0..n.min(50))
                .map(|i| {
                    // A new version each time so every install writes its file.
                    let m = Manifest { version: semver::Version::new(1, 0, i as u64), ..manifest.clone() };
                    let pkg = Package::sign(&m, component.clone(), &key, 1).to_bytes();
                    let t = Instant::now();
                    home.dangerous_install_ungated(&pkg).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
    }
}
