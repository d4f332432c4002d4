//! trellisd's CA in file mode, end to end: the `trellisd` binary with a static token file,
//! called over real TLS on its secure port with tonic's client (the workload's own
//! `CaClient`, and the raw generated client for requests a workload would not send).
//!
//! The identity is the token's, whatever the CSR names; callers without a valid token are
//! UNAUTHENTICATED and bad requests INVALID_ARGUMENT, with messages that say what is wrong; the
//! chain is leaf first and root last, the root the one written to --root-cert-file; a client
//! that trusts another root fails the handshake, and silent or broken connections hold nothing
//! up; a plugged-in intermediate (--ca-dir) signs, and a change of its files is picked up (a
//! bad one is refused naming the file, the last good CA staying); the token file is followed
//! the same way; and bad start-up input stops trellisd with the flag, file and line.

mod ca_support;

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use ca_support::{
    DEADLINE, Trellisd, create, csr, eventually, leaf, start_fails, write_atomically, write_cacerts,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use trellis_identity::SpiffeId;
use trellis_identity::ca::CaMaterial;
use trellis_identity::client::{CaClient, tls_channel};

const TOKENS: &str = "\
token-a-x,system:serviceaccount:a:x,uid-1,\"system:serviceaccounts,system:serviceaccounts:a\"
token-shop-web,system:serviceaccount:shop:web,uid-2
token-alice,alice,uid-3,\"system:masters\"
";

/// A token file and a root file in a fresh directory, and trellisd using them (plus `extra`).
fn start_with_tokens(extra: &[&OsStr]) -> (Trellisd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.csv"), TOKENS).unwrap();
    let mut args: Vec<OsString> = vec![
        "--token-auth-file".into(),
        dir.path().join("tokens.csv").into(),
        "--root-cert-file".into(),
        dir.path().join("root.pem").into(),
    ];
    args.extend(extra.iter().map(|a| a.to_os_string()));
    (Trellisd::start(&args), dir)
}

fn root_file(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("root.pem")).unwrap()
}

#[tokio::test]
async fn a_token_gets_its_own_identity_whatever_the_csr_says() {
    let (trellisd, dir) = start_with_tokens(&[]);
    let root = root_file(dir.path());
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");

    // The workload's own client, asking for someone else's identity.
    let client = CaClient::new(tls_channel(&trellisd.secure.to_string(), &root, None).unwrap());
    let claimed = SpiffeId::parse("spiffe://cluster.local/ns/kube-system/sa/admin").unwrap();
    let cert = client.certify(&claimed, "token-a-x", Duration::from_secs(3600)).await.unwrap();
    assert_eq!(cert.leaf.id.to_string(), "spiffe://cluster.local/ns/a/sa/x");
    let lifetime = cert.lifetime();
    assert!(
        lifetime >= Duration::from_secs(3600) && lifetime <= Duration::from_secs(3600 + 130),
        "{lifetime:?}"
    );
    // Leaf first, root last, and the root is the one published.
    assert_eq!(cert.chain_pem.len(), 2);
    assert_eq!(cert.chain_pem[1], root);
    assert_eq!(cert.root_pem, root);

    // No lifetime asked: the default, 24 h.
    let bearer = Some("Bearer token-shop-web");
    let chain = create(trellisd.secure, &root, bearer, csr("spiffe://evil/ns/x/sa/y"), 0).await.unwrap();
    let leaf = leaf(&chain);
    assert_eq!(leaf.id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    let lifetime = leaf.not_after.duration_since(leaf.not_before).unwrap();
    assert!(
        lifetime >= Duration::from_secs(86400) && lifetime <= Duration::from_secs(86400 + 130),
        "{lifetime:?}"
    );

    assert_eq!(trellisd.metric("citadel_server_csr_count_total").await, 2.0);
    assert_eq!(trellisd.metric("citadel_server_success_cert_issuance_count_total").await, 2.0);
    assert_eq!(trellisd.metric("citadel_server_authentication_failure_count_total").await, 0.0);
}

#[tokio::test]
async fn the_trust_domain_comes_from_the_flag_or_else_the_mesh_config() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "trustDomain: corp.example\n").unwrap();
    let flag: [&OsStr; 2] = ["--trust-domain".as_ref(), "other@example".as_ref()];
    for (extra, expected) in
        [(&[][..], "spiffe://corp.example/ns/a/sa/x"), (&flag[..], "spiffe://other.example/ns/a/sa/x")]
    {
        let mut args: Vec<&OsStr> = vec!["--mesh-config".as_ref(), mesh.as_os_str()];
        args.extend(extra);
        let (trellisd, dir) = start_with_tokens(&args);
        let root = root_file(dir.path());
        let chain = create(trellisd.secure, &root, Some("Bearer token-a-x"), csr("spiffe://x/ns/a/sa/x"), 60)
            .await
            .unwrap();
        assert_eq!(leaf(&chain).id.to_string(), expected);
    }
}

#[tokio::test]
async fn callers_without_a_valid_token_are_unauthenticated() {
    let (trellisd, dir) = start_with_tokens(&[]);
    let root = root_file(dir.path());
    let long = format!("Bearer {}", "x".repeat(17 * 1024));
    for (authorization, says) in [
        (
            None,
            "authentication failed: no authorization metadata: send `authorization: Bearer <service-account token>`",
        ),
        (Some("Bearer not-a-token"), "authentication failed: unknown token"),
        (Some("Bearer %%%garbage%%% ~~"), "authentication failed: unknown token"),
        (Some("Bearer"), "authentication failed: empty bearer token"),
        (
            Some("Basic dXNlcjpwYXNz"),
            "authentication failed: the authorization value is not `Bearer <token>`",
        ),
        (Some(long.as_str()), "authentication failed: bearer token of 17408 bytes, more than 16384"),
        (
            Some("Bearer token-alice"),
            "authentication failed: user \"alice\" is not a service account (system:serviceaccount:<namespace>:<name>)",
        ),
    ] {
        // A garbage CSR too: who is asking is settled first.
        for csr in [csr("spiffe://cluster.local/ns/a/sa/x"), "garbage".to_owned()] {
            let status = create(trellisd.secure, &root, authorization, csr, 0).await.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{authorization:?}: {status:?}");
            assert_eq!(status.message(), says, "{authorization:?}");
        }
    }
    assert_eq!(trellisd.metric("citadel_server_authentication_failure_count_total").await, 14.0);
    assert_eq!(trellisd.metric("citadel_server_success_cert_issuance_count_total").await, 0.0);
    // Nothing broke: a good caller is served.
    let chain =
        create(trellisd.secure, &root, Some("Bearer token-a-x"), csr("spiffe://x/ns/a/sa/x"), 0).await;
    assert_eq!(leaf(&chain.unwrap()).id.to_string(), "spiffe://cluster.local/ns/a/sa/x");
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments_naming_the_field() {
    let (trellisd, dir) = start_with_tokens(&[]);
    let root = root_file(dir.path());
    let bearer = Some("Bearer token-a-x");
    let good = || csr("spiffe://cluster.local/ns/a/sa/x");
    let not_a_csr = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    for (csr, validity, says) in [
        ("hello".to_owned(), 0, "csr: "),
        (not_a_csr.to_owned(), 0, "csr: "),
        (String::new(), 0, "csr: empty; send a PEM CERTIFICATE REQUEST"),
        ("A".repeat(100 * 1024), 0, "csr: 102400 bytes, more than 65536"),
        (good(), 91 * 86400, "validity_duration: 7862400s is more than the most this CA issues, 7776000s"),
    ] {
        let status = create(trellisd.secure, &root, bearer, csr, validity).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(says), "{says:?}: {status:?}");
    }
    // Larger than any request is allowed to be: refused before it is read.
    let status = create(trellisd.secure, &root, bearer, "A".repeat(1 << 20), 0).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("the limit is: 131072 bytes"), "{status:?}");

    assert_eq!(trellisd.metric("citadel_server_csr_parsing_err_count_total").await, 5.0);
    // 90 days exactly is allowed; and nothing broke.
    let chain = create(trellisd.secure, &root, bearer, good(), 90 * 86400).await.unwrap();
    assert_eq!(leaf(&chain).id.to_string(), "spiffe://cluster.local/ns/a/sa/x");
}

#[tokio::test]
async fn the_tls_port_serves_ads_too_and_refuses_clients_that_trust_another_root() {
    use tokio_stream::StreamExt;
    use trellis_xds::discovery::DeltaDiscoveryRequest;
    use trellis_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use trellis_xds::types::{ProxyNode, ResourceType};

    let (trellisd, dir) = start_with_tokens(&[]);
    let root = root_file(dir.path());
    let secure = trellisd.secure.to_string();

    // Connections that never finish a handshake, held open throughout: a silent one, one that
    // speaks plaintext HTTP/2, one that sends garbage.
    let silent = tokio::net::TcpStream::connect(trellisd.secure).await.unwrap();
    let mut plaintext = tokio::net::TcpStream::connect(trellisd.secure).await.unwrap();
    plaintext.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(trellisd.secure).await.unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0]).await.unwrap();

    // Another root: the handshake fails, and the call says it never reached the service.
    let other = CaMaterial::generate_root("cluster.local").unwrap().root_cert;
    let status = create(trellisd.secure, &other, Some("Bearer token-a-x"), csr("spiffe://x/ns/a/sa/x"), 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // A name the serving certificate does not carry fails the same way; one it carries works.
    let wrong_name = CaClient::new(tls_channel(&secure, &root, Some("other.example")).unwrap());
    let requested = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/x").unwrap();
    let err = wrong_name.certify(&requested, "token-a-x", Duration::from_secs(60)).await.unwrap_err();
    assert!(err.to_string().contains("Unavailable"), "{err}");
    let right_name = CaClient::new(tls_channel(&secure, &root, Some("trellisd.istio-system.svc")).unwrap());
    right_name.certify(&requested, "token-a-x", Duration::from_secs(60)).await.unwrap();

    // ADS over the same TLS port, with a token of the node's namespace: the first response
    // arrives.
    let mut ads = AggregatedDiscoveryServiceClient::new(tls_channel(&secure, &root, None).unwrap());
    let first = DeltaDiscoveryRequest {
        node: Some(
            ProxyNode {
                id: "sidecar~10.0.0.1~x-1.a~a.svc.cluster.local".into(),
                namespace: "a".into(),
                ..Default::default()
            }
            .to_node(),
        ),
        type_url: ResourceType::Settings.type_url().into(),
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![first]).chain(tokio_stream::pending());
    let mut call = tonic::Request::new(stream);
    call.metadata_mut().insert("authorization", "Bearer token-a-x".parse().unwrap());
    let mut responses = tokio::time::timeout(DEADLINE, ads.delta_aggregated_resources(call))
        .await
        .expect("ADS answered in time")
        .unwrap()
        .into_inner();
    let settings = tokio::time::timeout(DEADLINE, responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(settings.type_url, ResourceType::Settings.type_url());

    // The broken connections were closed (the garbage at once, the silent one by the deadline
    // the server gives handshakes, at most 10 s); the port kept serving meanwhile.
    for (name, mut stream) in [("plaintext", plaintext), ("garbage", garbage), ("silent", silent)] {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(DEADLINE, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the {name} connection was not closed");
    }
}

/// An intermediate CA signed by `root`, laid out as Istio's cacerts.
fn intermediate(root: &CaMaterial, name: &str) -> CaMaterial {
    let issuer = Issuer::from_ca_cert_pem(&root.ca_cert, KeyPair::from_pem(&root.ca_key).unwrap()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &issuer).unwrap();
    CaMaterial {
        ca_cert: cert.pem(),
        ca_key: key.serialize_pem(),
        root_cert: root.root_cert.clone(),
        cert_chain: format!("{}{}", cert.pem(), root.root_cert),
    }
}

#[tokio::test]
async fn a_plugged_in_intermediate_signs_and_a_change_of_its_files_is_picked_up() {
    let cacerts = tempfile::tempdir().unwrap();
    let first_root = CaMaterial::generate_root("cluster.local").unwrap();
    let first = intermediate(&first_root, "first intermediate");
    write_cacerts(cacerts.path(), &first);
    let (trellisd, dir) = start_with_tokens(&["--ca-dir".as_ref(), cacerts.path().as_os_str()]);
    assert_eq!(root_file(dir.path()), first_root.root_cert);

    let request = async |root: &str| {
        create(trellisd.secure, root, Some("Bearer token-a-x"), csr("spiffe://cluster.local/ns/a/sa/x"), 0)
            .await
    };
    let chain = request(&first_root.root_cert).await.unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1], first.ca_cert);
    assert_eq!(chain[2], first_root.root_cert);

    // Another intermediate under the same root: picked up without a restart.
    let second = intermediate(&first_root, "second intermediate");
    write_cacerts(cacerts.path(), &second);
    eventually("the second intermediate signing", async || {
        request(&first_root.root_cert).await.is_ok_and(|chain| chain[1] == second.ca_cert)
    })
    .await;

    // A key that is not the certificate's: refused naming the file, the last good CA stays.
    let stray = CaMaterial::generate_root("cluster.local").unwrap();
    write_atomically(&cacerts.path().join("ca-key.pem"), &stray.ca_key);
    let key_file = cacerts.path().join("ca-key.pem").display().to_string();
    let series = format!("trellisd_ca_reload_errors_total{{source=\"{key_file}\"}}");
    eventually("the bad key reported", async || trellisd.metric(&series).await == 1.0).await;
    assert!(
        trellisd.logs().contains(&format!("{key_file}: does not belong to the certificate in ca-cert.pem")),
        "{}",
        trellisd.logs()
    );
    let chain = request(&first_root.root_cert).await.unwrap();
    assert_eq!(chain[1], second.ca_cert, "still the last good intermediate");

    // A new root altogether: the root file follows, and trellisd's own certificate with it (a
    // client that trusts only the new root can talk to it).
    let new_root = CaMaterial::generate_root("cluster.local").unwrap();
    let third = intermediate(&new_root, "third intermediate");
    write_cacerts(cacerts.path(), &third);
    eventually("the new root published", async || root_file(dir.path()) == new_root.root_cert).await;
    eventually("the new root served", async || request(&new_root.root_cert).await.is_ok()).await;
    let chain = request(&new_root.root_cert).await.unwrap();
    assert_eq!((&chain[1], &chain[2]), (&third.ca_cert, &new_root.root_cert));
    assert_eq!(trellisd.metric(&series).await, 1.0, "the bad state was reported once");
}

#[tokio::test]
async fn the_token_file_is_followed_and_a_bad_edit_keeps_the_last_good_one() {
    let (trellisd, dir) = start_with_tokens(&[]);
    let root = root_file(dir.path());
    let tokens = dir.path().join("tokens.csv");
    let call = async |token: &str| {
        let bearer = format!("Bearer {token}");
        create(trellisd.secure, &root, Some(&bearer), csr("spiffe://cluster.local/ns/a/sa/x"), 0).await
    };
    assert_eq!(call("token-new").await.unwrap_err().code(), Code::Unauthenticated);

    write_atomically(&tokens, &format!("{TOKENS}token-new,system:serviceaccount:b:y,uid-4\n"));
    eventually("the new token accepted", async || call("token-new").await.is_ok()).await;
    assert_eq!(leaf(&call("token-new").await.unwrap()).id.to_string(), "spiffe://cluster.local/ns/b/sa/y");

    // An edit with a broken line: refused naming the line, and every token still works.
    write_atomically(&tokens, &format!("{TOKENS}token-new,system:serviceaccount:b:y\n"));
    let series = format!("trellisd_ca_reload_errors_total{{source=\"{}\"}}", tokens.display());
    eventually("the bad edit reported", async || trellisd.metric(&series).await == 1.0).await;
    let said = format!("{}: line 4: 2 columns", tokens.display());
    assert!(trellisd.logs().contains(&said), "{}", trellisd.logs());
    assert!(call("token-new").await.is_ok());
    assert!(call("token-a-x").await.is_ok());

    // Removing a token takes it away.
    write_atomically(&tokens, "token-a-x,system:serviceaccount:a:x,uid-1\n");
    eventually("the removed token refused", async || call("token-new").await.is_err()).await;
    assert!(call("token-a-x").await.is_ok());
}

#[test]
fn bad_start_up_input_stops_trellisd_naming_the_flag_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "token-1,system:serviceaccount:a:x,uid\ntoken-1,system:serviceaccount:a:y,uid\n")
        .unwrap();
    let logs = start_fails(&["--token-auth-file".as_ref(), tokens.as_os_str()]);
    let said =
        format!("trellisd: CA: --token-auth-file {}: line 2: the same token as line 1", tokens.display());
    assert!(logs.contains(&said), "{logs}");

    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).unwrap();
    let material = CaMaterial::generate_root("cluster.local").unwrap();
    std::fs::write(cacerts.join("ca-cert.pem"), &material.ca_cert).unwrap();
    std::fs::write(cacerts.join("root-cert.pem"), &material.root_cert).unwrap();
    let logs = start_fails(&["--ca-dir".as_ref(), cacerts.as_os_str()]);
    assert!(logs.contains(&format!("{}", cacerts.join("ca-key.pem").display())), "{logs}");
    assert!(logs.contains("No such file or directory"), "{logs}");

    for (flag, value, says) in [
        (
            "--max-workload-cert-ttl",
            "2161h",
            "--max-workload-cert-ttl 7779600s: between 1s and 2160h (90 days",
        ),
        ("--workload-cert-ttl", "0", "--workload-cert-ttl 0ns: between 1s and --max-workload-cert-ttl"),
        ("--workload-cert-ttl", "3d", "invalid duration \"3d\""),
        ("--trust-domain", "Bad Domain", "--trust-domain \"Bad Domain\": not a trust domain"),
        ("--root-cert-file", "/nonexistent/dir/root.pem", "--root-cert-file /nonexistent/dir/root.pem: "),
    ] {
        let logs = start_fails(&[flag.as_ref(), value.as_ref()]);
        assert!(logs.contains(says), "{flag} {value}: {logs}");
    }
}
