//! The registry library over a real loopback server: concurrent publishers,
//! private namespaces, the upload limit, organisation policy serials and
//! the OpenAPI document. The CLI flows are in `cli/tests/registry.rs`.

use coderclaw_core::keys::SecretKey;
use coderclaw_core::policy::OrgPolicy;
use coderclaw_core::signed_policy::SignedOrgPolicy;
use coderclaw_e2e::{RegistryFixture, guest};
use coderclaw_registry::ErrorCode;
use coderclaw_registry_server::server::RegistryConfig;

fn echo() -> Vec<u8> {
    std::fs::read(guest("echo")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_publishers_of_one_version_have_exactly_one_winner() {
    let f = RegistryFixture::start(RegistryConfig::default(), true).await;
    let component = echo();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let pkg = f.package("echo", "1.0.0", &format!("build {i}"), component.clone());
        let client = f.client(Some(&f.publish));
        tasks.push(tokio::spawn(async move { (coderclaw_core::Digest::of(&pkg).to_hex(), client.publish(pkg).await) }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (sha, Ok(reply)) => {
                assert!(!reply.already_published);
                winners.push(sha);
            }
            (_, Err(e)) => assert_eq!(e.code(), Some(ErrorCode::VersionExists), "{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one publish succeeds");
    let info = f.client(None).package("team/echo").await.unwrap();
    assert_eq!(info.versions.len(), 1);
    assert_eq!(info.versions[0].sha256, winners[0], "the index names the winner's bytes");
    let blobs: Vec<_> = std::fs::read_dir(f.data.path().join("blobs")).unwrap().collect();
    assert_eq!(blobs.len(), 1, "the losers' uploads were not kept");
    let downloaded = f.client(None).download("team/echo", &"1.0.0".parse().unwrap()).await.unwrap();
    assert_eq!(coderclaw_core::Digest::of(&downloaded).to_hex(), winners[0]);
}

#[tokio::test]
async fn a_private_namespace_is_read_only_with_its_tokens() {
    let f = RegistryFixture::start(RegistryConfig::default(), false).await;
    f.client(Some(&f.publish)).publish(f.package("echo", "1.0.0", "d", echo())).await.unwrap();
    let anonymous = f.client(None);
    assert_eq!(anonymous.package("team/echo").await.unwrap_err().code(), Some(ErrorCode::NotFound));
    assert!(anonymous.search("", None, None).await.unwrap().is_empty());
    assert_eq!(
        anonymous.download("team/echo", &"1.0.0".parse().unwrap()).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );

    // A token of another namespace does not open this one.
    f.store.create_namespace("ops", &[], false).unwrap();
    let (ops, _) = f.store.create_token("ops", coderclaw_registry_server::Scope::Read, None).unwrap();
    assert_eq!(f.client(Some(&ops)).package("team/echo").await.unwrap_err().code(), Some(ErrorCode::NotFound));

    let reader = f.client(Some(&f.read));
    assert_eq!(reader.package("team/echo").await.unwrap().versions.len(), 1);
    assert_eq!(reader.search("echo", None, None).await.unwrap().len(), 1);
    // Reading is all a read token does.
    let refused = reader.publish(f.package("echo", "1.0.1", "d", echo())).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InsufficientScope));
    let refused = reader.yank("team/echo", &"1.0.0".parse().unwrap(), "x").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InsufficientScope));
}

#[tokio::test]
async fn uploads_over_the_limit_are_refused() {
    let config = RegistryConfig { max_upload_bytes: 4096, ..RegistryConfig::default() };
    let f = RegistryFixture::start(config, true).await;
    let e = f.client(Some(&f.publish)).publish(f.package("echo", "1.0.0", "d", echo())).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PayloadTooLarge), "{e}");
    let e = f.client(Some(&f.publish)).publish(b"not a package".to_vec()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadPackage), "{e}");
}

#[tokio::test]
async fn build_metadata_versions_and_re_adding_a_revoked_key_are_refused() {
    let f = RegistryFixture::start(RegistryConfig::default(), true).await;
    // `1.0.0+a` and `1.0.0+b` would both match `=1.0.0`: two byte strings for one version.
    let e = f.client(Some(&f.publish)).publish(f.package("echo", "1.0.0+a", "d", echo())).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadPackage), "{e}");
    assert!(e.to_string().contains("build metadata"), "{e}");

    f.store.revoke_key("team", f.key.public().id().as_str()).unwrap();
    let again = f.store.add_key("team", &f.key.public(), true).unwrap_err();
    assert!(again.message.contains("revocation is permanent"), "{again}");
    let e = f.client(Some(&f.publish)).publish(f.package("echo", "1.0.0", "d", echo())).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SignatureRejected), "{e}");
}

#[tokio::test]
async fn organisation_policies_need_an_admin_key_and_a_higher_serial() {
    let f = RegistryFixture::start(RegistryConfig::default(), true).await;
    let policy = OrgPolicy { denied_skills: vec!["dangerous-exec".into()], ..OrgPolicy::default() };
    let publisher = f.client(Some(&f.publish));
    assert!(publisher.org_policy("team").await.unwrap().is_none());
    // As documented: 200 with `null` when there is none (not an error).
    let http = coderclaw_net::HttpClient::new(&f.server.url(), None).unwrap();
    let request = http.request(http::Method::GET, "/v1/namespaces/team/policy").body(Default::default()).unwrap();
    let (parts, body) = http.fetch(request, 1 << 20).await.unwrap();
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"null"[..]));
    publisher.put_org_policy(&SignedOrgPolicy::sign("team", 2, 1, policy.clone(), &f.key)).await.unwrap();
    let stale =
        publisher.put_org_policy(&SignedOrgPolicy::sign("team", 2, 2, policy.clone(), &f.key)).await.unwrap_err();
    assert_eq!(stale.code(), Some(ErrorCode::StalePolicy));

    // A signing key that is not an admin key of the namespace.
    let signer = SecretKey::from_seed([9; 32]);
    f.store.add_key("team", &signer.public(), false).unwrap();
    let e = publisher.put_org_policy(&SignedOrgPolicy::sign("team", 3, 3, policy.clone(), &signer)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SignatureRejected));
    let e = f
        .client(Some(&f.read))
        .put_org_policy(&SignedOrgPolicy::sign("team", 3, 3, policy.clone(), &f.key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InsufficientScope));

    let served = f.client(None).org_policy("team").await.unwrap().unwrap();
    assert_eq!(served.serial, 2);
    assert_eq!(served.verify("team", &[f.key.public()]).unwrap(), &policy);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let f = RegistryFixture::start(RegistryConfig::default(), true).await;
    let client = coderclaw_net::HttpClient::new(&f.server.url(), None).unwrap();
    let request = client.request(http::Method::GET, "/v1/openapi.json").body(Default::default()).unwrap();
    let (parts, body) = client.fetch(request, 1 << 20).await.unwrap();
    assert!(parts.status.is_success());
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/search", "get"),
        ("/v1/agents", "get"),
        ("/v1/packages", "post"),
        ("/v1/packages/{namespace}/{name}", "get"),
        ("/v1/packages/{namespace}/{name}/{version}/download", "get"),
        ("/v1/packages/{namespace}/{name}/{version}/yank", "post"),
        ("/v1/namespaces/{namespace}/keys", "get"),
        ("/v1/namespaces/{namespace}/policy", "get"),
        ("/v1/namespaces/{namespace}/policy", "put"),
        ("/v1/namespaces/{namespace}/audit-heads", "post"),
        ("/v1/namespaces/{namespace}/audit-heads/{device}", "get"),
        ("/v1/namespaces/{namespace}/audit-heads/{device}/history", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is documented");
    }
    // And the other way: everything documented is served.
    assert_eq!(coderclaw_e2e::unrouted_operations(&f.server.url(), Some(&f.publish), &doc).await, Vec::<String>::new());
    let codes = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"].as_array().expect("error codes");
    let all: Vec<&str> = codes.iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(all.len(), 14, "every ErrorCode is documented: {all:?}");
    for code in all {
        let parsed: ErrorCode = serde_json::from_value(code.into()).unwrap_or_else(|_| panic!("{code} is a real code"));
        assert_eq!(parsed.as_str(), code);
    }
}

#[tokio::test]
async fn https_registries_are_reached_through_a_trusted_ca_only() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let config = RegistryConfig { tls: Some((cert_file.clone(), key_file)), ..RegistryConfig::default() };
    let f = RegistryFixture::start(config, true).await;
    assert!(f.server.url().starts_with("https://"));
    let url = format!("https://localhost:{}", f.server.addr.port());

    let trusting = coderclaw_registry::RegistryClient::new(&url, Some(f.publish.clone()), Some(&cert_file)).unwrap();
    trusting.publish(f.package("echo", "1.0.0", "d", echo())).await.unwrap();
    assert_eq!(trusting.package("team/echo").await.unwrap().versions.len(), 1);

    // The web PKI roots alone do not vouch for a self-signed registry: the
    // token is never sent to it.
    let untrusting = coderclaw_registry::RegistryClient::new(&url, Some(f.publish.clone()), None).unwrap();
    let e = untrusting.package("team/echo").await.unwrap_err();
    assert!(matches!(e, coderclaw_registry::client::RegistryClientError::Unreachable(_)), "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[test]
fn tokens_never_travel_over_plain_http_to_another_machine() {
    use coderclaw_registry::client::RegistryClientError;
    let e = coderclaw_registry::RegistryClient::new("http://registry.example:7421", Some("ccr_x".into()), None);
    assert!(matches!(e, Err(RegistryClientError::Insecure(_))), "refused before any connection");
    // Anonymous reads of a public registry may use http; loopback may carry a token.
    assert!(coderclaw_registry::RegistryClient::new("http://registry.example:7421", None, None).is_ok());
    assert!(coderclaw_registry::RegistryClient::new("http://127.0.0.1:7421", Some("ccr_x".into()), None).is_ok());
    // The task transport follows the same rule.
    let e = coderclaw::tasks::HttpTransport::new("http://coderclaw.example:7420", Some("cct_x".into()));
    assert!(e.is_err_and(|e| e.message.contains("never sent over plain http")));
    assert!(coderclaw::tasks::HttpTransport::new("https://coderclaw.example:7420", Some("cct_x".into())).is_ok());
}

#[tokio::test]
async fn writes_need_the_right_scope_and_namespace_and_private_reads_a_token() {
    let f = RegistryFixture::start(RegistryConfig::default(), false).await;
    f.client(Some(&f.publish)).publish(f.package("echo", "1.0.0", "d", echo())).await.unwrap();
    let v: semver::Version = "1.0.0".parse().unwrap();
    f.store.create_namespace("ops", &[], true).unwrap();
    let (ops_yank, _) = f.store.create_token("ops", coderclaw_registry_server::Scope::Yank, None).unwrap();
    let (ops_publish, _) = f.store.create_token("ops", coderclaw_registry_server::Scope::Publish, None).unwrap();

    // Yank: another namespace's yank token, and a publish token, are refused.
    let e = f.client(Some(&ops_yank)).yank("team/echo", &v, "x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::WrongNamespace), "{e}");
    let e = f.client(Some(&f.publish)).yank("team/echo", &v, "x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InsufficientScope), "{e}");
    f.client(Some(&f.yank)).yank("team/echo", &v, "broken").await.unwrap();
    assert!(f.client(Some(&f.read)).package("team/echo").await.unwrap().versions[0].yanked);

    // A policy for `team` with an `ops` publish token, even signed right.
    let doc = SignedOrgPolicy::sign("team", 1, 1, OrgPolicy::default(), &f.key);
    let e = f.client(Some(&ops_publish)).put_org_policy(&doc).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::WrongNamespace), "{e}");

    // Every read of a private namespace needs one of its tokens.
    let anonymous = f.client(None);
    assert_eq!(anonymous.keys("team").await.unwrap_err().code(), Some(ErrorCode::NotFound));
    assert_eq!(anonymous.org_policy("team").await.unwrap_err().code(), Some(ErrorCode::NotFound));
    assert_eq!(anonymous.agents("team").await.unwrap_err().code(), Some(ErrorCode::NotFound));
    assert_eq!(f.client(Some(&ops_yank)).keys("team").await.unwrap_err().code(), Some(ErrorCode::NotFound));
    assert_eq!(f.client(Some(&f.read)).keys("team").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_tokens_is_throttled_per_peer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = RegistryFixture::start(RegistryConfig::default(), true).await;
    let status = |token: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(f.server.addr).await.unwrap();
        let req = format!(
            "GET /v1/search?q=e HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.unwrap();
        (reply.split(' ').nth(1).unwrap().parse::<u16>().unwrap(), reply.to_ascii_lowercase().contains("retry-after:"))
    };
    for i in 0..10 {
        assert_eq!(status(format!("ccr_guess{i}")).await, (401, false), "guess {i}");
    }
    for i in 0..50 {
        assert_eq!(status(format!("ccr_more{i}")).await, (429, true), "guess {i} after the limit");
    }
    // Refused unchecked while limited: the real token waits too.
    assert_eq!(status(f.read.clone()).await.0, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_witnesses_audit_heads_append_only() {
    use coderclaw_core::audit_head::SignedHead;
    let f = RegistryFixture::start(RegistryConfig::default(), false).await;
    let key = SecretKey::from_seed([3; 32]);
    let device = key.public().id().as_str().to_owned();
    let head = |seq: u64, hash: &str| SignedHead::sign(&device, seq, hash, &key);
    let client = f.client(Some(&f.read));
    assert_eq!(client.audit_head("team", &device).await.unwrap(), None);
    client.put_audit_head("team", &head(100, &"a".repeat(64))).await.unwrap();
    client.put_audit_head("team", &head(100, &"a".repeat(64))).await.expect("the same head again is accepted");
    client.put_audit_head("team", &head(200, &"b".repeat(64))).await.unwrap();
    assert_eq!(client.audit_head("team", &device).await.unwrap(), Some(head(200, &"b".repeat(64))));

    // A head that does not extend the last one (a log cut short, or
    // rewritten at the same record), one by another key for this device,
    // one without a token: refused, and the witnessed head stays.
    let code = |e: coderclaw_registry::client::RegistryClientError| e.code();
    let stale = client.put_audit_head("team", &head(150, &"c".repeat(64))).await.unwrap_err();
    assert_eq!(code(stale), Some(ErrorCode::StalePolicy));
    let rewritten = client.put_audit_head("team", &head(200, &"c".repeat(64))).await.unwrap_err();
    assert_eq!(code(rewritten), Some(ErrorCode::StalePolicy));
    let other = SignedHead::sign(&device, 300, &"d".repeat(64), &SecretKey::from_seed([4; 32]));
    assert_eq!(code(client.put_audit_head("team", &other).await.unwrap_err()), Some(ErrorCode::SignatureRejected));
    let mut tampered = head(300, &"d".repeat(64));
    tampered.seq = 301;
    assert_eq!(code(client.put_audit_head("team", &tampered).await.unwrap_err()), Some(ErrorCode::SignatureRejected));
    let anonymous = f.client(None).put_audit_head("team", &head(400, &"e".repeat(64))).await.unwrap_err();
    assert_eq!(code(anonymous), Some(ErrorCode::Unauthenticated));
    assert_eq!(client.audit_head("team", &device).await.unwrap().unwrap().seq, 200);
    // The history keeps the older heads: a key holder who rewrote the log
    // and witnessed a new head is still contradicted by them.
    let history = client.audit_head_history("team", &device).await.unwrap();
    assert_eq!(history, vec![head(100, &"a".repeat(64)), head(200, &"b".repeat(64))]);
    assert_eq!(client.audit_head_history("team", "no-such-device").await.unwrap(), vec![]);
}
