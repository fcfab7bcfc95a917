//! Shared helpers for coderclaw's end-to-end tests: the paths of the guest
//! components built from source by `build.rs`, the files of a compiled-code
//! cache, and a real HTTP server on loopback.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod postgres;

/// The compiled-code files (`*.cwasm`) in a compiled-code cache directory
/// (one level of engine-hash subdirectories).
pub fn cached_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap() {
        let sub = sub.unwrap().path();
        if sub.is_dir() {
            out.extend(
                std::fs::read_dir(&sub)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "cwasm")),
            );
        }
    }
    out
}

/// Path of a guest component by crate name (e.g. `"word-count"`).
pub fn guest(name: &str) -> PathBuf {
    let path = match name {
        "echo" => env!("CODERCLAW_GUEST_ECHO"),
        "word-count" => env!("CODERCLAW_GUEST_WORD_COUNT"),
        "shell-exec" => env!("CODERCLAW_GUEST_SHELL_EXEC"),
        "http-fetch" => env!("CODERCLAW_GUEST_HTTP_FETCH"),
        "security-scanner" => env!("CODERCLAW_GUEST_SECURITY_SCANNER"),
        "code-reviewer" => env!("CODERCLAW_GUEST_CODE_REVIEWER"),
        "infinite-loop" => env!("CODERCLAW_GUEST_INFINITE_LOOP"),
        "memory-bomb" => env!("CODERCLAW_GUEST_MEMORY_BOMB"),
        "deep-recursion" => env!("CODERCLAW_GUEST_DEEP_RECURSION"),
        "fs-escape" => env!("CODERCLAW_GUEST_FS_ESCAPE"),
        "shell-without-grant" => env!("CODERCLAW_GUEST_SHELL_WITHOUT_GRANT"),
        "panicker" => env!("CODERCLAW_GUEST_PANICKER"),
        "asker" => env!("CODERCLAW_GUEST_ASKER"),
        other => panic!("no guest component named {other}"),
    };
    PathBuf::from(path)
}

/// A hyper HTTP/1 server on 127.0.0.1 answering every request with a fixed
/// body, counting the requests it served. Stops when dropped.
pub struct LoopbackServer {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopbackServer {
    /// Starts the server on an ephemeral port, answering every request
    /// with `body`.
    pub async fn start(body: &'static str) -> std::io::Result<Self> {
        Self::start_with(move |_path| Some(body.to_owned())).await
    }

    /// Starts the server on an ephemeral port; `route(path)` gives the body
    /// of a 200 answer, or `None` for a 404.
    pub async fn start_with(route: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let route = Arc::new(route);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (counter, route) = (counter.clone(), route.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let answer = route(req.uri().path());
                        async move {
                            let (status, body) = match answer {
                                Some(b) => (200, b),
                                None => (404, "not found".to_owned()),
                            };
                            let json = body.starts_with(['{', '[']);
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", if json { "application/json" } else { "text/plain" })
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("static response"),
                            )
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Self { addr, hits, task })
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A team registry on loopback for tests and benchmarks: namespace `team`
/// with one signing (and admin) key and one token of each scope.
pub struct RegistryFixture {
    /// The data directory.
    pub data: tempfile::TempDir,
    /// Its store.
    pub store: Arc<coderclaw_registry_server::RegistryStore>,
    /// The running server.
    pub server: coderclaw_net::RunningServer,
    /// The namespace's signing key.
    pub key: coderclaw_core::keys::SecretKey,
    /// A `publish` token of `team`.
    pub publish: String,
    /// A `read` token of `team`.
    pub read: String,
    /// A `yank` token of `team`.
    pub yank: String,
}

impl RegistryFixture {
    /// Starts a registry with `config` (its `listen` is replaced by a free
    /// loopback port).
    pub async fn start(mut config: coderclaw_registry_server::server::RegistryConfig, public: bool) -> Self {
        use coderclaw_registry_server::Scope;
        let data = tempfile::tempdir().unwrap();
        let store = Arc::new(coderclaw_registry_server::RegistryStore::open(data.path()).unwrap());
        let key = coderclaw_core::keys::SecretKey::from_seed(*b"coderclaw test key: registry----");
        store.create_namespace("team", &["alice".into()], public).unwrap();
        store.add_key("team", &key.public(), true).unwrap();
        let token = |scope| store.create_token("team", scope, None).unwrap().0;
        let (publish, read, yank) = (token(Scope::Publish), token(Scope::Read), token(Scope::Yank));
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = coderclaw_registry_server::server::serve(store.clone(), config).await.unwrap();
        Self { data, store, server, key, publish, read, yank }
    }

    /// A client acting with `token`.
    pub fn client(&self, token: Option<&str>) -> coderclaw_registry::RegistryClient {
        coderclaw_registry::RegistryClient::new(&self.server.url(), token.map(str::to_owned), None).unwrap()
    }

    /// A package of `team/<name>` `version` around `component`, signed by
    /// the namespace key; `description` makes otherwise equal packages differ.
    pub fn package(&self, name: &str, version: &str, description: &str, component: Vec<u8>) -> Vec<u8> {
        let toml = format!(
            "id = \"team/{name}\"\nversion = \"{version}\"\nkind = \"skill\"\ndescription = \"{description}\"\n"
        );
        let manifest = coderclaw_core::manifest::Manifest::from_toml(&toml, "skill.toml").unwrap();
        coderclaw_core::package::Package::sign(&manifest, component, &self.key, 1_763_000_000).to_bytes()
    }
}

/// Prints `label` with the p50 and p99 of `samples` (for the bench binaries).
pub fn print_latency(label: &str, mut samples: Vec<std::time::Duration>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!("{label:<44} p50 {:>10.2?}  p99 {:>10.2?}  (n={})", p(0.5), p(0.99), samples.len());
}

/// Sends one request for every operation an OpenAPI document lists (path
/// parameters filled with sample values, an empty JSON body) to the server
/// at `base_url`, and returns the operations it answered with "no route":
/// documented but not served.
pub async fn unrouted_operations(base_url: &str, token: Option<&str>, doc: &serde_json::Value) -> Vec<String> {
    let client = coderclaw_net::HttpClient::new(base_url, None).unwrap();
    let mut missing = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{namespace}", "team")
            .replace("{name}", "x")
            .replace("{version}", "1.0.0")
            .replace("{id}", "00000000-0000-4000-8000-000000000000");
        for method in ops.as_object().expect("operations").keys() {
            let method: http::Method = method.to_uppercase().parse().expect("an HTTP method");
            let builder = coderclaw_net::HttpClient::bearer(client.request(method.clone(), &concrete), token)
                .header(http::header::CONTENT_TYPE, "application/json");
            let request = builder.body(http_body_util::Full::new(Bytes::from_static(b"{}"))).unwrap();
            let (_, body) = client.fetch(request, 1 << 20).await.unwrap();
            if String::from_utf8_lossy(&body).contains("no route") {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    missing
}

/// A task service in state directory `dir` with the signed `echo` skill
/// installed and a session allowed to submit a million unfinished tasks:
/// the benches' engine.
pub fn echo_service(dir: &std::path::Path) -> Arc<coderclaw::tasks::TaskService> {
    use coderclaw_core::keys::SecretKey;
    use coderclaw_core::manifest::Manifest;
    use coderclaw_core::package::Package;
    let key = SecretKey::from_seed(*b"coderclaw test key: team--------");
    let home = Arc::new(coderclaw::home::Home::open(dir).unwrap());
    home.trust_add("team", &key.public()).unwrap();
    let manifest =
        Manifest::from_toml("id = \"team/echo\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"e\"\n", "echo")
            .unwrap();
    home.dangerous_install_ungated(
        &Package::sign(&manifest, std::fs::read(guest("echo")).unwrap(), &key, 1).to_bytes(),
    )
    .unwrap();
    let host = coderclaw::Host::builder().compiled_cache(home.compiled_cache_dir()).max_instances(256).build().unwrap();
    // One session submits every task at once: its quota of unfinished tasks
    // (1000 by default) is raised to the whole run.
    let config = coderclaw::tasks::EngineConfig {
        max_concurrent_tasks: 64,
        max_unfinished_per_session: 1_000_000,
        ..Default::default()
    };
    coderclaw::LocalRuntime::builder(home).config(config).host(host).open().unwrap().service().clone()
}

/// A developer's session token on `service`.
pub fn developer_token(service: &coderclaw::tasks::TaskService) -> String {
    let security = service.security();
    security.dangerous_identity_store().add_user("bench", &["developer".to_owned()], Some("bench password")).unwrap();
    let secret = coderclaw::security::LocalSecret::Password("bench password");
    security.login_local("bench", secret, None, None, None).unwrap().1
}
