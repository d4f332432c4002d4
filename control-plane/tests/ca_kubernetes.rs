//! trellisd's CA in Kubernetes mode, through kube-rs's real client against the stand-in API
//! server (tests/fake_api; a real API server cannot run here).
//!
//! TokenReviews decide who the caller is (audience `istio-ca`; a token for another audience,
//! an expired or unknown one, or a user that is not a service account is refused, and an API
//! server that cannot be reached is UNAVAILABLE, not the caller's fault); a generated root is
//! kept in the Secret `istio-ca-secret` and shared by replicas starting at once and by restarts;
//! the `cacerts` Secret wins when present and is followed; and the `trellisd` binary, in
//! Kubernetes mode, signs for reviewed tokens and keeps the ConfigMap `istio-ca-root-cert` in
//! every namespace, recreating and correcting it.

mod ca_support;
mod fake_api;

use std::collections::BTreeMap;
use std::ffi::OsString;

use base64::Engine;
use ca_support::{Trellisd, create, csr, eventually, leaf};
use fake_api::{FakeApi, Token};
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::MetadataMap;
use trellis_control_plane::ca::authenticate::{AuthError, Authenticator, Caller, TokenReviewer};
use trellis_control_plane::ca::material::{self, CurrentCa, MaterialSource};
use trellis_control_plane::ca::metrics::{CaMetrics, SourceLabel};
use trellis_identity::ca::CaMaterial;

const NAMESPACES: &str = "/api/v1/namespaces";
const SECRETS: &str = "/api/v1/secrets";
const CONFIG_MAPS: &str = "/api/v1/configmaps";

/// What the fake serves: the Secrets and ConfigMaps the CA uses, and every kind trellisd's
/// Kubernetes source watches.
fn collections() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut all = vec![(SECRETS, "v1", "Secret"), (CONFIG_MAPS, "v1", "ConfigMap")];
    all.extend_from_slice(fake_api::WATCHED);
    all
}

fn token(user: &str, audiences: &[&str], expired: bool) -> Token {
    Token { user: user.into(), audiences: audiences.iter().map(|a| (*a).to_owned()).collect(), expired }
}

fn tokens() -> Vec<(&'static str, Token)> {
    vec![
        ("sa-token", token("system:serviceaccount:a:x", &["istio-ca"], false)),
        ("api-token", token("system:serviceaccount:a:x", &["https://kubernetes.default.svc"], false)),
        ("expired-token", token("system:serviceaccount:a:x", &["istio-ca"], true)),
        ("user-token", token("alice", &["istio-ca"], false)),
    ]
}

fn client(api: &FakeApi) -> kube::Client {
    kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap()
}

fn bearer(token: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    metadata
}

fn refused(result: Result<Caller, AuthError>) -> String {
    match result {
        Err(AuthError::Unauthenticated(message)) => message,
        other => panic!("not refused as unauthenticated: {other:?}"),
    }
}

#[tokio::test]
async fn token_reviews_decide_who_the_caller_is() {
    let api = FakeApi::start(&collections()).await;
    api.set_tokens(&tokens());
    let authenticator = Authenticator::Kubernetes(Box::new(TokenReviewer::new(client(&api), "istio-ca")));

    let caller = authenticator.authenticate(&bearer("sa-token")).await.unwrap();
    assert_eq!(caller, Caller { namespace: "a".into(), service_account: "x".into() });
    let reviews = api.reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["spec"], json!({"token": "sa-token", "audiences": ["istio-ca"]}));

    for (token, says) in [
        (
            "api-token",
            "token review: not authenticated: invalid bearer token, token audiences \
             [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"istio-ca\"]",
        ),
        ("expired-token", "token review: not authenticated: invalid bearer token, token has expired"),
        ("unknown-token", "token review: not authenticated: invalid bearer token"),
        ("user-token", "user \"alice\" is not a service account (system:serviceaccount:<namespace>:<name>)"),
    ] {
        assert_eq!(refused(authenticator.authenticate(&bearer(token)).await), says, "{token}");
    }
    // No token, no review.
    let message = refused(authenticator.authenticate(&MetadataMap::new()).await);
    assert!(message.starts_with("no authorization metadata"), "{message}");
    assert_eq!(api.reviews().len(), 5);

    // An API server that cannot be reached: the token could not be checked, which is worth a
    // retry, not a verdict on the caller.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let nowhere =
        kube::Client::try_from(kube::Config::new(format!("http://{closed}").parse().unwrap())).unwrap();
    let authenticator = Authenticator::Kubernetes(Box::new(TokenReviewer::new(nowhere, "istio-ca")));
    match authenticator.authenticate(&bearer("sa-token")).await {
        Err(AuthError::Unavailable(message)) => assert!(message.starts_with("token review: "), "{message}"),
        other => panic!("{other:?}"),
    }
}

async fn start_ca(api: &FakeApi, metrics: CaMetrics) -> Result<CurrentCa, String> {
    let source = MaterialSource::Kubernetes { client: client(api), namespace: "istio-system".into() };
    material::start(source, "cluster.local", metrics).await
}

fn decoded(secret: &Value, key: &str) -> String {
    let text = secret["data"][key].as_str().unwrap_or_else(|| panic!("no {key} in {secret}"));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text).unwrap()).unwrap()
}

#[tokio::test]
async fn a_generated_root_is_kept_in_istio_ca_secret_and_shared() {
    let api = FakeApi::start(&collections()).await;
    // Two replicas starting at once: one create wins, and both sign with its root.
    let (first, second) =
        tokio::join!(start_ca(&api, CaMetrics::default()), start_ca(&api, CaMetrics::default()));
    let (first, second) = (first.unwrap(), second.unwrap());
    let root = first.borrow().root_pem().to_owned();
    assert_eq!(second.borrow().root_pem(), root);
    let secret = api.get(SECRETS, "istio-system", "istio-ca-secret").expect("the Secret");
    assert_eq!(secret["type"], "istio.io/ca-root");
    assert_eq!(decoded(&secret, "root-cert.pem"), root);
    assert_eq!(decoded(&secret, "ca-cert.pem"), root);
    assert!(decoded(&secret, "ca-key.pem").contains("PRIVATE KEY"));
    assert_eq!(decoded(&secret, "cert-chain.pem"), "");

    // A restart: the same root again.
    let again = start_ca(&api, CaMetrics::default()).await.unwrap();
    assert_eq!(again.borrow().root_pem(), root);
    assert_eq!(again.borrow().origin, "Secret istio-system/istio-ca-secret");

    // A kept Secret that cannot be used stops the start, naming the Secret and the key.
    let mut broken = secret.clone();
    broken["data"]["ca-key.pem"] = json!(base64::engine::general_purpose::STANDARD.encode("junk"));
    api.apply(SECRETS, broken);
    let err = start_ca(&api, CaMetrics::default()).await.unwrap_err();
    assert!(err.starts_with("Secret istio-system/istio-ca-secret: key ca-key.pem: "), "{err}");
}

fn cacerts(material: &CaMaterial) -> Value {
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    json!({"apiVersion": "v1", "kind": "Secret",
    "metadata": {"name": "cacerts", "namespace": "istio-system"},
    "data": {
        "ca-cert.pem": encode(&material.ca_cert), "ca-key.pem": encode(&material.ca_key),
        "root-cert.pem": encode(&material.root_cert), "cert-chain.pem": encode(&material.cert_chain),
    }})
}

#[tokio::test]
async fn the_cacerts_secret_wins_and_is_followed() {
    let api = FakeApi::start(&collections()).await;
    let plugged = CaMaterial::generate_root("cluster.local").unwrap();
    api.apply(SECRETS, cacerts(&plugged));
    let metrics = CaMetrics::default();
    let current = start_ca(&api, metrics.clone()).await.unwrap();
    assert_eq!(current.borrow().root_pem(), plugged.root_cert);
    assert_eq!(current.borrow().origin, "Secret istio-system/cacerts");
    assert!(api.get(SECRETS, "istio-system", "istio-ca-secret").is_none(), "no root generated");

    // A change that cannot be used is counted, and the CA stays.
    let stray = CaMaterial::generate_root("cluster.local").unwrap();
    api.apply(SECRETS, cacerts(&CaMaterial { ca_key: stray.ca_key.clone(), ..plugged.clone() }));
    // Read afresh each time: a held guard would lock the family against the CA's own update.
    let label = SourceLabel { source: "Secret istio-system/cacerts".into() };
    let errors = || metrics.reload_errors.get_or_create(&label).get();
    eventually("the bad cacerts reported", async || errors() == 1).await;
    assert_eq!(current.borrow().root_pem(), plugged.root_cert);

    // A usable change is taken.
    let next = CaMaterial::generate_root("cluster.local").unwrap();
    api.apply(SECRETS, cacerts(&next));
    eventually("the new cacerts in force", async || current.borrow().root_pem() == next.root_cert).await;
    assert_eq!(errors(), 1);
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// The `root-cert.pem` of each namespace's `istio-ca-root-cert`.
fn published(api: &FakeApi, namespaces: &[&str]) -> BTreeMap<String, Option<String>> {
    namespaces
        .iter()
        .map(|ns| {
            let map = api.get(CONFIG_MAPS, ns, "istio-ca-root-cert");
            let root = map.and_then(|m| m["data"]["root-cert.pem"].as_str().map(str::to_owned));
            ((*ns).to_owned(), root)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellisd_signs_for_reviewed_tokens_and_publishes_its_root_in_every_namespace() {
    let api = FakeApi::start(&collections()).await;
    for ns in ["istio-system", "a", "shop"] {
        api.apply(NAMESPACES, namespace(ns));
    }
    api.set_tokens(&tokens());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            api.url
        ),
    )
    .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let start = move || {
        let kubeconfig = kubeconfig.clone();
        // Blocking (it reads trellisd's first line): off the runtime that serves the fake.
        tokio::task::spawn_blocking(move || {
            let env = [("KUBECONFIG", kubeconfig.as_str()), ("POD_NAMESPACE", "istio-system")];
            Trellisd::start_with(&[OsString::from("--kubernetes")], &env)
        })
    };
    let trellisd = start().await.unwrap();

    // The generated root is kept in the Secret and published in every namespace.
    let secret = api.get(SECRETS, "istio-system", "istio-ca-secret").expect("the Secret");
    let root = decoded(&secret, "root-cert.pem");
    let all = ["istio-system", "a", "shop"];
    let expected: BTreeMap<_, _> = all.iter().map(|ns| ((*ns).to_owned(), Some(root.clone()))).collect();
    eventually("the root in every namespace", async || published(&api, &all) == expected).await;
    let map = api.get(CONFIG_MAPS, "a", "istio-ca-root-cert").unwrap();
    assert_eq!(map["metadata"]["labels"]["istio.io/config"], "true");

    // A reviewed service-account token gets its identity; a token for another audience none.
    let secure = trellisd.secure;
    let signed =
        create(secure, &root, Some("Bearer sa-token"), csr("spiffe://cluster.local/ns/x/sa/y"), 0).await;
    let chain = signed.unwrap();
    assert_eq!(leaf(&chain).id.to_string(), "spiffe://cluster.local/ns/a/sa/x");
    assert_eq!(chain.last(), Some(&root));
    let status = create(secure, &root, Some("Bearer api-token"), csr("spiffe://cluster.local/ns/a/sa/x"), 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("is invalid for the target audiences [\"istio-ca\"]"), "{status:?}");
    assert!(api.reviews().iter().all(|r| r["spec"]["audiences"] == json!(["istio-ca"])));

    // Deleted: recreated. Edited: corrected. A new namespace: given one.
    api.delete(CONFIG_MAPS, "shop", "istio-ca-root-cert");
    let mut stale = map.clone();
    stale["data"]["root-cert.pem"] = json!("stale");
    api.apply(CONFIG_MAPS, stale);
    api.apply(NAMESPACES, namespace("new"));
    let all = ["istio-system", "a", "shop", "new"];
    let expected: BTreeMap<_, _> = all.iter().map(|ns| ((*ns).to_owned(), Some(root.clone()))).collect();
    eventually("the ConfigMaps repaired", async || published(&api, &all) == expected).await;

    // A restart signs with the same root, read back from the Secret.
    drop(trellisd);
    let trellisd = start().await.unwrap();
    let chain =
        create(trellisd.secure, &root, Some("Bearer sa-token"), csr("spiffe://cluster.local/ns/a/sa/x"), 0)
            .await
            .unwrap();
    assert_eq!(chain.last(), Some(&root));
    assert!(
        trellisd.logs().contains("using the self-signed root kept in Secret istio-system/istio-ca-secret")
    );
}
