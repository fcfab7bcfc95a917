//! Registry figures: install latency of a 1 MB package (uncached and from
//! the client's cache) and publish/download throughput with 50 concurrent
//! clients on loopback. Prints figures; asserts only that each step worked.
//!
//! `cargo bench -p coderclaw-e2e --bench registry`
//!
//! "Install" here is the library steps of `coderclaw skill install team/x
//! --registry …`: fetch the index (one request), take the package from the
//! cache or download it, check its SHA-256, verify the signature against
//! the trust store, cache a download, then store, index and audit (fsync)
//! the package. Not included: process start-up, policy loading and refresh,
//! the index-cache and lockfile writes, the CLI's capability and rollback
//! gates (the CLI's own `Installer` is not a library).

use coderclaw::home::Home;
use coderclaw_core::Digest;
use coderclaw_core::package::Package;
use coderclaw_e2e::{RegistryFixture, print_latency};
use coderclaw_registry::RegistryClient;
use coderclaw_registry::cache::ClientCache;
use coderclaw_registry_server::server::RegistryConfig;
use std::sync::Arc;
use std::time::Instant;

fn component(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
}

async fn install(client: &RegistryClient, cache: &ClientCache, home: &Home, id: &str, version: &str) {
    let info = client.package(id).await.unwrap();
    let v = info.exact(&version.parse().unwrap()).unwrap();
    let (bytes, fetched) = match cache.blob(&v.sha256) {
        Some(b) => (b, false),
        None => {
            let b = client.download(id, &v.version).await.unwrap();
            assert_eq!(Digest::of(&b).to_hex(), v.sha256);
            (b, true)
        }
    };
    let verified = Package::parse(&bytes).unwrap().verify(home).unwrap();
    if fetched {
        cache.put_blob(&bytes).unwrap();
    }
    home.install_verified(&verified, &bytes).unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let f = RegistryFixture::start(RegistryConfig::default(), true).await;
    let publisher = f.client(Some(&f.publish));

    // Install latency, 1 MB.
    let n = 30;
    for i in 0..n {
        publisher.publish(f.package("big", &format!("1.0.{i}"), "bench", component(1 << 20, i))).await.unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let home = Home::open(state.path()).unwrap();
    home.trust_add("team", &f.key.public()).unwrap();
    let cache = ClientCache::new(state.path());
    let client = f.client(None);
    let mut uncached = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        install(&client, &cache, &home, "team/big", &format!("1.0.{i}")).await;
        uncached.push(t.elapsed());
    }
    // Installed in a fresh state directory whose cache already holds them.
    let state2 = tempfile::tempdir().unwrap();
    let home2 = Home::open(state2.path()).unwrap();
    home2.trust_add("team", &f.key.public()).unwrap();
    let cache2 = ClientCache::new(state2.path());
    for i in 0..n {
        cache2.put_blob(&client.download("team/big", &format!("1.0.{i}").parse().unwrap()).await.unwrap()).unwrap();
    }
    let mut cached = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        install(&client, &cache2, &home2, "team/big", &format!("1.0.{i}")).await;
        cached.push(t.elapsed());
    }
    print_latency("install 1 MB, uncached (download)", uncached);
    print_latency("install 1 MB, from the client cache", cached);

    // Throughput with 50 concurrent clients, 100 KB packages.
    let clients = 50;
    let per_client = 10;
    let size = 100 * 1024;
    let packages: Vec<Vec<Vec<u8>>> = (0..clients)
        .map(|c| {
            (0..per_client)
                .map(|k| f.package(&format!("p{c}"), &format!("1.0.{k}"), "bench", component(size, c * 1000 + k)))
                .collect()
        })
        .collect();
    let f = Arc::new(f);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (c, pkgs) in packages.into_iter().enumerate() {
        let client = f.client(Some(&f.publish));
        tasks.push(tokio::spawn(async move {
            for p in pkgs {
                client.publish(p).await.unwrap();
            }
            c
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = t.elapsed();
    let total = clients * per_client;
    println!(
        "publish, {clients} clients, {total} x 100 KB: {:.0} packages/s, {:.1} MB/s ({elapsed:.2?})",
        total as f64 / elapsed.as_secs_f64(),
        (total * size) as f64 / elapsed.as_secs_f64() / 1e6
    );

    let rounds = 20;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = f.client(None);
        tasks.push(tokio::spawn(async move {
            for k in 0..rounds {
                let v = format!("1.0.{}", k % per_client).parse().unwrap();
                std::hint::black_box(client.download(&format!("team/p{c}"), &v).await.unwrap());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = t.elapsed();
    let total = clients * rounds;
    println!(
        "download, {clients} clients, {total} x 100 KB: {:.0} packages/s, {:.1} MB/s ({elapsed:.2?})",
        total as f64 / elapsed.as_secs_f64(),
        (total * size) as f64 / elapsed.as_secs_f64() / 1e6
    );
}
