//! xDS on the TLS port (15012), as pods in Kubernetes reach trellisd: the proxy verifies
//! trellisd against the mesh root and sends its token; trellisd serves a stream only when the
//! token proves a service account of the namespace the node claims.

mod ca_support;

use std::net::SocketAddr;
use std::path::Path;

use ca_support::{Trellisd, eventually};
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_proxy::xds::{SecureXds, XdsOptions};
use trellis_xds::types::ProxyNode;

fn start_proxy(trellisd: &Trellisd, root: &str, token_file: &Path) -> trellis_proxy::Running {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let options = trellis_proxy::Options {
        outbound: vec![local],
        inbound: vec![local],
        admin: vec![local],
        readiness: vec![local],
        stats: vec![local],
        config_file: None,
        xds: Some(XdsOptions {
            address: format!("http://{}", trellisd.secure),
            node: ProxyNode {
                id: "sidecar~127.0.0.1~web-1.shop~shop.svc.cluster.local".into(),
                namespace: "shop".into(),
                workload: "web".into(),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            },
            secure: Some(SecureXds {
                authority: trellisd.secure.to_string(),
                root_pem: root.to_owned(),
                server_name: None,
                token_file: token_file.to_owned(),
                channel: None,
            }),
        }),
        explicit_inbound: false,
        identity: None,
    };
    trellis_proxy::start(
        options,
        Metrics::new(Workload { name: "web".into(), namespace: "shop".into() }),
        None,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_served_only_to_a_token_of_the_nodes_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "web-token,system:serviceaccount:shop:web,u1\nother-token,system:serviceaccount:other:web,u2\n",
    )
    .unwrap();
    let root_path = dir.path().join("root-cert.pem");
    let trellisd = Trellisd::start(&[
        "--token-auth-file".as_ref(),
        tokens.as_os_str(),
        "--root-cert-file".as_ref(),
        root_path.as_os_str(),
    ]);
    eventually("trellisd writes its root", async || root_path.exists()).await;
    let root = std::fs::read_to_string(&root_path).unwrap();

    let token = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = start_proxy(&trellisd, &root, &token("good", "web-token\n"));
    eventually("the proxy with its namespace's token gets its config", async || good.proxy.is_ready()).await;

    let foreign = start_proxy(&trellisd, &root, &token("foreign", "other-token\n"));
    let unknown = start_proxy(&trellisd, &root, &token("unknown", "no-such-token\n"));
    eventually("trellisd refuses both streams, saying why", async || {
        let logs = trellisd.logs();
        logs.contains("xDS stream refused: namespace mismatch")
            && logs.contains("xDS stream refused: authentication failed: unknown token")
    })
    .await;
    assert!(!foreign.proxy.is_ready() && !unknown.proxy.is_ready(), "no config without a matching token");
}
