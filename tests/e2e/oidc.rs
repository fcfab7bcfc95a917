//! OIDC ID tokens from a test issuer served on loopback (a real discovery
//! document and JWKS over HTTP), signed with real RS256, ES256 and EdDSA
//! keys; and OIDC login through the security model, audited.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use coderclaw::audit::AuditFilter;
use coderclaw::home::Home;
use coderclaw::oidc::{OidcError, OidcVerifier};
use coderclaw::security::Security;
use coderclaw_core::policy::{OidcIssuer, Provider};
use coderclaw_e2e::LoopbackServer;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use std::sync::Arc;

const AUDIENCE: &str = "coderclaw";

struct Issuer {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    /// Another EC key, not published: a token it signs must fail.
    stranger: EcdsaKeyPair,
    server: LoopbackServer,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_key(rng: &SystemRandom) -> EcdsaKeyPair {
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, rng).unwrap();
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), rng).unwrap()
}

impl Issuer {
    async fn start() -> Issuer {
        let rng = SystemRandom::new();
        let pem = include_str!("../fixtures/oidc-test-rsa.pem");
        let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let rsa = RsaKeyPair::from_pkcs8(&STANDARD.decode(der).unwrap()).unwrap();
        let ec = ec_key(&rng);
        let stranger = ec_key(&rng);
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let point = ec.public_key().as_ref();
        let rsa_public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let jwks = json!({ "keys": [
            { "kty": "RSA", "kid": "rs", "alg": "RS256", "use": "sig",
              "n": b64(&rsa_public.n), "e": b64(&rsa_public.e) },
            { "kty": "EC", "kid": "es", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]) },
            { "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(ed.public_key().as_ref()) },
        ]})
        .to_string();
        let base = Arc::new(std::sync::OnceLock::<String>::new());
        let base_for_routes = base.clone();
        let server = LoopbackServer::start_with(move |path| match path {
            "/.well-known/openid-configuration" => {
                let url = base_for_routes.get()?;
                Some(json!({ "issuer": url, "jwks_uri": format!("{url}/keys") }).to_string())
            }
            "/keys" => Some(jwks.clone()),
            _ => None,
        })
        .await
        .unwrap();
        base.set(server.url()).unwrap();
        Issuer { rsa, ec, ed, stranger, server }
    }

    fn config(&self) -> OidcIssuer {
        OidcIssuer {
            name: "corp".into(),
            provider: Provider::Oidc,
            issuer: Some(self.server.url()),
            audience: AUDIENCE.into(),
            jwks_uri: None,
            roles: Some(vec!["ci".into()]),
            role_rules: vec![],
        }
    }

    fn claims(&self) -> Value {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        json!({ "iss": self.server.url(), "sub": "build-42", "aud": AUDIENCE, "iat": now, "exp": now + 600,
                "email": "ci@example.com" })
    }

    /// A token with `alg`/`kid` over `claims`, signed by the key `alg` names
    /// (or by the unpublished key when `stranger`).
    fn token(&self, alg: &str, kid: &str, claims: &Value, stranger: bool) -> String {
        let rng = SystemRandom::new();
        let header = json!({ "alg": alg, "kid": kid, "typ": "JWT" });
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = match (alg, stranger) {
            ("RS256", _) => {
                let mut sig = vec![0; self.rsa.public().modulus_len()];
                self.rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut sig).unwrap();
                sig
            }
            ("ES256", false) => self.ec.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            ("ES256", true) => self.stranger.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            ("EdDSA", _) => self.ed.sign(signed.as_bytes()).as_ref().to_vec(),
            _ => b"not a signature".to_vec(),
        };
        format!("{signed}.{}", b64(&sig))
    }
}

#[tokio::test]
async fn id_tokens_are_checked_against_the_issuers_published_keys() {
    let issuer = Issuer::start().await;
    let verifier = OidcVerifier::new(vec![issuer.config()], vec![Provider::Oidc]);
    let claims = issuer.claims();

    for (alg, kid) in [("RS256", "rs"), ("ES256", "es"), ("EdDSA", "ed")] {
        let (who, _) = verifier.verify(&issuer.token(alg, kid, &claims, false)).await.unwrap();
        assert_eq!(who.user, "corp:build-42", "{alg}");
        assert_eq!(who.email.as_deref(), Some("ci@example.com"));
    }
    assert!(issuer.server.hits() >= 2, "discovery and JWKS were fetched over HTTP");

    let refused = |token: String| {
        let verifier = verifier.clone();
        async move { verifier.verify(&token).await.unwrap_err() }
    };
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!(["someone-else"]);
    assert!(matches!(refused(issuer.token("ES256", "es", &wrong_aud, false)).await, OidcError::Audience { .. }));
    let mut expired = claims.clone();
    expired["exp"] = json!(claims["iat"].as_u64().unwrap() - 3600);
    assert!(matches!(refused(issuer.token("ES256", "es", &expired, false)).await, OidcError::Expired));
    let mut early = claims.clone();
    early["nbf"] = json!(claims["iat"].as_u64().unwrap() + 3600);
    assert!(matches!(refused(issuer.token("EdDSA", "ed", &early, false)).await, OidcError::NotYetValid));
    assert!(matches!(refused(issuer.token("ES256", "es", &claims, true)).await, OidcError::BadSignature));
    // A valid signature over other claims: swap the claims part.
    let good = issuer.token("RS256", "rs", &claims, false);
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!("admin");
    let other = issuer.token("RS256", "rs", &forged_claims, false);
    let parts: Vec<&str> = good.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], other.split('.').nth(1).unwrap(), parts[2]);
    assert!(matches!(refused(swapped).await, OidcError::BadSignature));
    let hits = issuer.server.hits();
    assert!(matches!(refused(issuer.token("ES256", "rotated", &claims, false)).await, OidcError::UnknownKey(_)));
    assert_eq!(issuer.server.hits(), hits + 2, "an unknown kid refetches the keys once before refusing");
    // The key type must fit the algorithm: an EC key cannot verify RS256.
    assert!(matches!(refused(issuer.token("RS256", "es", &claims, false)).await, OidcError::KeyMismatch { .. }));
    assert!(matches!(refused(issuer.token("none", "es", &claims, false)).await, OidcError::Algorithm(_)));
    assert!(matches!(refused(issuer.token("HS256", "es", &claims, false)).await, OidcError::Algorithm(_)));
    let mut stranger_iss = claims.clone();
    stranger_iss["iss"] = json!("https://evil.example");
    assert!(matches!(refused(issuer.token("ES256", "es", &stranger_iss, false)).await, OidcError::UnknownIssuer(_)));
    assert!(matches!(refused("a.b".into()).await, OidcError::Malformed(_)));

    // Keys over plain http are fetched only from loopback.
    let mut remote = issuer.config();
    remote.issuer = Some("http://issuer.example".into());
    let mut remote_iss = claims.clone();
    remote_iss["iss"] = json!("http://issuer.example");
    let insecure = OidcVerifier::new(vec![remote], vec![Provider::Oidc]);
    let err = insecure.verify(&issuer.token("ES256", "es", &remote_iss, false)).await.unwrap_err();
    assert!(err.to_string().contains("https only"), "{err}");

    let disabled = OidcVerifier::new(vec![issuer.config()], vec![Provider::Local]);
    assert!(matches!(
        disabled.verify(&issuer.token("ES256", "es", &claims, false)).await.unwrap_err(),
        OidcError::ProviderDisabled(_)
    ));
}

#[tokio::test]
async fn oidc_login_creates_a_session_with_the_issuers_roles_and_is_audited() {
    let issuer = Issuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "identity:\n  providers: [local, oidc]\n  oidc:\n    - name: corp\n      issuer: {}\n      audience: {AUDIENCE}\n      roles: [ci]\n",
        issuer.server.url()
    );
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let home = Arc::new(Home::open(dir.path()).unwrap());
    let security = Security::open(home.clone(), None).unwrap();

    let token = issuer.token("ES256", "es", &issuer.claims(), false);
    let (session, bearer) = security.login_oidc(&token, None, None, None).await.unwrap();
    assert_eq!(session.user, "corp:build-42");
    assert_eq!(session.roles, ["ci"]);
    assert_eq!(session.method, "oidc:corp");
    assert!(session.expires_at_ms <= issuer.claims()["exp"].as_u64().unwrap() * 1000, "not beyond the token");
    let subject = security.subject(Some(&bearer)).unwrap();
    assert_eq!(subject.user, "corp:build-42");

    let mut wrong = issuer.claims();
    wrong["aud"] = json!("other");
    security.login_oidc(&issuer.token("ES256", "es", &wrong, false), None, None, None).await.unwrap_err();
    // Asking for a role the issuer does not give is refused.
    security.login_oidc(&token, Some(&["admin".to_owned()]), None, None).await.unwrap_err();

    let logins = home.audit().query(&AuditFilter { action: Some("auth.login".into()), ..Default::default() }).unwrap();
    let results: Vec<(&str, &str)> =
        logins.iter().map(|r| (r.result.as_str(), r.user.as_deref().unwrap_or(""))).collect();
    assert_eq!(results, [("allowed", "corp:build-42"), ("denied", "-"), ("denied", "corp:build-42")], "{logins:#?}");
    assert!(logins[1].reason.contains("audience"));
    assert!(!logins.iter().any(|r| r.metadata.contains(&token) || r.reason.contains(&token)));
    assert_eq!(home.audit().verify().unwrap(), home.audit().query(&AuditFilter::default()).unwrap().len() as u64);
}

/// GitHub's issuer: tokens name it; its keys here come from the loopback
/// JWKS through `jwksUri`.
const GITHUB: &str = "https://token.actions.githubusercontent.com";

/// A token shaped like a GitHub Actions workflow's (GitHub's claim set).
fn github_claims(repository: &str, git_ref: &str, audience: &str) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let owner = repository.split('/').next().unwrap();
    json!({
        "jti": "b1c2", "sub": format!("repo:{repository}:ref:{git_ref}"), "aud": audience,
        "ref": git_ref, "sha": "5e1f0c1", "repository": repository, "repository_owner": owner,
        "repository_id": "74", "repository_owner_id": "65", "repository_visibility": "private",
        "run_id": "9", "run_number": "3", "run_attempt": "1", "actor": "octocat", "actor_id": "1",
        "workflow": "CI", "workflow_ref": format!("{repository}/.github/workflows/ci.yml@{git_ref}"),
        "job_workflow_ref": format!("{repository}/.github/workflows/ci.yml@{git_ref}"),
        "head_ref": "", "base_ref": "", "event_name": "push", "ref_type": "branch", "ref_protected": "true",
        "runner_environment": "github-hosted", "iss": GITHUB, "nbf": now - 5, "iat": now, "exp": now + 300
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn github_actions_keyless_login_maps_the_workflows_claims_to_roles() {
    let issuer = Arc::new(Issuer::start().await);
    // The runner's token endpoint: it checks its request token and signs
    // for the audience asked, as the workflow in `workflow` would be.
    let workflow = Arc::new(std::sync::Mutex::new(("org/repo".to_owned(), "refs/heads/main".to_owned())));
    let (signer, state) = (issuer.clone(), workflow.clone());
    let runner = coderclaw_net::serve("127.0.0.1:0".parse().unwrap(), None, move |_, req| {
        let (signer, state) = (signer.clone(), state.clone());
        async move {
            let authorized = req.headers().get("authorization").is_some_and(|v| v == "Bearer runner-request-token");
            if !authorized {
                return coderclaw_net::server::json_response(http::StatusCode::UNAUTHORIZED, &json!({}));
            }
            let query = req.uri().query().unwrap_or_default();
            let audience = coderclaw_net::server::query_pairs(query)
                .into_iter()
                .find(|(k, _)| k == "audience")
                .map(|(_, v)| v)
                .unwrap_or_default();
            assert!(query.contains("api-version=2.0"), "the runner's own query is kept: {query}");
            let (repository, git_ref) = state.lock().unwrap().clone();
            let token = signer.token("RS256", "rs", &github_claims(&repository, &git_ref, &audience), false);
            coderclaw_net::server::json_response(http::StatusCode::OK, &json!({ "count": 1, "value": token }))
        }
    })
    .await
    .unwrap();
    let request_url = format!("{}/_apis/distributedtask/idtoken?api-version=2.0", runner.url());

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "identity:\n  providers: [local, github]\n  oidc:\n    - name: gh\n      provider: github\n      audience: coderclaw\n      \
         jwksUri: {}/keys\n      roleRules:\n        - claims: {{ repository: org/repo, ref: refs/heads/main }}\n          roles: [ci]\n",
        issuer.server.url()
    );
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let home = Arc::new(Home::open(dir.path()).unwrap());
    let security = Security::open(home.clone(), None).unwrap();
    let fetch = |audience: &'static str| {
        let url = request_url.clone();
        async move { coderclaw::oidc::github_actions_id_token(&url, "runner-request-token", audience).await }
    };

    let token = fetch("coderclaw").await.unwrap();
    let (session, _) = security.login_oidc(&token, None, None, None).await.unwrap();
    assert_eq!(session.user, "gh:repo:org/repo:ref:refs/heads/main");
    assert_eq!(session.roles, ["ci"]);
    assert_eq!(session.method, "oidc:gh");

    // Another branch, another repository, another audience: refused.
    for (repository, git_ref, says) in
        [("org/repo", "refs/heads/dev", "ref=refs/heads/dev"), ("evil/repo", "refs/heads/main", "repository=evil/repo")]
    {
        *workflow.lock().unwrap() = (repository.into(), git_ref.into());
        let token = fetch("coderclaw").await.unwrap();
        let e = security.login_oidc(&token, None, None, None).await.unwrap_err();
        assert!(e.to_string().contains("no roleRules") && e.to_string().contains(says), "{e}");
    }
    *workflow.lock().unwrap() = ("org/repo".into(), "refs/heads/main".into());
    let other_audience = fetch("someone-else").await.unwrap();
    let e = security.login_oidc(&other_audience, None, None, None).await.unwrap_err();
    assert!(e.to_string().contains("audience"), "{e}");
    // The runner refuses a wrong request token; nothing to log in with.
    let e = coderclaw::oidc::github_actions_id_token(&request_url, "guess", "coderclaw").await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    // The runner's request token never goes over plain http to another machine.
    let e = coderclaw::oidc::github_actions_id_token("http://runner.example/idtoken", "secret", "coderclaw")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("https only"), "{e}");

    let logins = home.audit().query(&AuditFilter { action: Some("auth.login".into()), ..Default::default() }).unwrap();
    let results: Vec<&str> = logins.iter().map(|r| r.result.as_str()).collect();
    assert_eq!(results, ["allowed", "denied", "denied", "denied"], "{logins:#?}");

    // A GitHub issuer without roleRules would let every repository in: refused.
    let open_dir = tempfile::tempdir().unwrap();
    let open = format!(
        "identity:\n  providers: [local, github]\n  oidc:\n    - name: gh\n      provider: github\n      audience: coderclaw\n      \
         jwksUri: {}/keys\n      roles: [ci]\n",
        issuer.server.url()
    );
    std::fs::write(open_dir.path().join("config.yaml"), open).unwrap();
    let open_security = Security::open(Arc::new(Home::open(open_dir.path()).unwrap()), None).unwrap();
    let e = open_security.login_oidc(&fetch("coderclaw").await.unwrap(), None, None, None).await.unwrap_err();
    assert!(e.to_string().contains("without roleRules"), "{e}");
    assert!(logins[1].reason.contains("refs/heads/dev"), "{:?}", logins[1]);
}
