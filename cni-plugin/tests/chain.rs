//! A real chain, as root, run the way a container runtime runs it: the Debian `loopback`,
//! `bridge` and `host-local` plugins, then `trellis-cni`, each executed from the CNI_PATH with
//! the CNI environment and its configuration on stdin, the previous result threaded through.
//! Everything happens inside namespaces the test makes: a "node" (the bridge, the stand-in API
//! server, a server at the gateway address) and one namespace per pod.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{FakeApi, PLUGIN, Run, meshed_pod, pod, run_plugin};
use serde_json::{Value, json};
use trellis_proxy_init::apply::{self, Backend, in_namespace};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::Settings;
use trellis_proxy_init::testing::{
    accepted, connect_as, in_scratch_namespace, ip, listen, netns_path, our_rules, output_in,
};

const GATEWAY: &str = "10.78.0.1";

/// The runtime's side: the network list and how to find and run its plugins.
struct Runtime {
    node: String,
    cni_path: String,
    network: Value,
    _dir: tempfile::TempDir,
}

impl Runtime {
    fn find(&self, plugin_type: &str) -> PathBuf {
        self.cni_path
            .split(':')
            .map(|dir| Path::new(dir).join(plugin_type))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{plugin_type} is not in {}", self.cni_path))
    }

    /// Runs one plugin inside the node namespace, as the runtime does.
    fn exec(&self, conf: &Value, command: &str, netns: &Path, ifname: &str, pod: &str) -> Run {
        let program = self.find(conf["type"].as_str().unwrap());
        let netns = netns.display().to_string();
        let cni_args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod}");
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", pod),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", cni_args.as_str()),
            ("CNI_PATH", self.cni_path.as_str()),
            ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        ];
        let stdin = conf.to_string();
        in_namespace(Some(&netns_path(&self.node)), || run_plugin(&program, &env, stdin.as_bytes())).unwrap()
    }

    /// ADD: loopback on `lo`, then the list on `eth0`, each plugin getting the previous result.
    /// Returns every plugin's result, in order.
    fn add(&self, netns: &Path, pod: &str) -> Vec<Value> {
        let lo = json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"});
        let run = self.exec(&lo, "ADD", netns, "lo", pod);
        assert_eq!(run.code, Some(0), "loopback: {run:?}");
        let mut results: Vec<Value> = Vec::new();
        for plugin in self.network["plugins"].as_array().unwrap() {
            let mut conf = plugin.clone();
            conf["name"] = self.network["name"].clone();
            conf["cniVersion"] = self.network["cniVersion"].clone();
            if let Some(prev) = results.last() {
                conf["prevResult"] = prev.clone();
            }
            let run = self.exec(&conf, "ADD", netns, "eth0", pod);
            assert_eq!(run.code, Some(0), "{}: {run:?}", conf["type"]);
            results.push(run.json());
        }
        results
    }

    /// DEL: the list in reverse; every plugin must succeed.
    fn del(&self, netns: &Path, pod: &str) {
        for plugin in self.network["plugins"].as_array().unwrap().iter().rev() {
            let mut conf = plugin.clone();
            conf["name"] = self.network["name"].clone();
            conf["cniVersion"] = self.network["cniVersion"].clone();
            let run = self.exec(&conf, "DEL", netns, "eth0", pod);
            assert_eq!((run.code, run.stdout.as_str()), (Some(0), ""), "DEL {}: {run:?}", conf["type"]);
        }
    }
}

fn runtime(node: &str, kubeconfig: &Path, dir: tempfile::TempDir) -> Runtime {
    runtime_with_ranges(node, kubeconfig, dir, json!([[{"subnet": "10.78.0.0/24", "gateway": GATEWAY}]]))
}

/// The same network with the IPAM ranges given (one list per address family).
fn runtime_with_ranges(node: &str, kubeconfig: &Path, dir: tempfile::TempDir, ranges: Value) -> Runtime {
    // CNI_PATH as a node has it: the distribution's plugins, and ours installed next to them.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(PLUGIN, bin.join("trellis-cni")).unwrap();
    let network = json!({
        "cniVersion": "1.0.0",
        "name": "trellis-test",
        "plugins": [
            {"type": "bridge", "bridge": "trbr0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": ranges,
                      "dataDir": dir.path().join("ipam")}},
            {"type": "trellis-cni", "log_level": "debug", "log_file": dir.path().join("trellis-cni.log"),
             "kubernetes": {"kubeconfig": kubeconfig, "exclude_namespaces": ["kube-system"]}}
        ]
    });
    Runtime { node: node.to_owned(), cni_path: format!("/usr/lib/cni:{}", bin.display()), network, _dir: dir }
}

fn pod_address(result: &Value) -> String {
    let address = result["ips"][0]["address"].as_str().unwrap();
    address.split('/').next().unwrap().to_owned()
}

/// The nft table the plugin wrote, as proxy-init writes it for the same settings in a fresh
/// namespace.
fn expected_table(settings: &Settings) -> String {
    let mut expected = String::new();
    in_scratch_namespace(|ns| {
        apply::apply(&build(settings), Backend::Nft, Some(&netns_path(ns))).unwrap();
        expected = output_in(ns, &["nft", "list", "table", "inet", "trellis"]);
    });
    expected
}

#[test]
fn a_real_chain_redirects_meshed_pods_and_leaves_the_others_alone() {
    in_scratch_namespace(|node| {
        assert!(
            Path::new("/usr/lib/cni/bridge").exists(),
            "the Debian CNI plugins are missing: apt-get install containernetworking-plugins"
        );
        let dir = tempfile::tempdir().unwrap();
        let listener =
            in_namespace(Some(&netns_path(node)), || TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
        let api = FakeApi::start(listener);
        api.add_pod(meshed_pod(
            "shop",
            "web-0",
            json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}),
        ));
        api.add_pod(pod("shop", "plain-0", json!({})));
        let kubeconfig = api.kubeconfig(dir.path());
        let runtime = runtime(node, &kubeconfig, dir);

        in_scratch_namespace(|meshed| {
            let netns = netns_path(meshed);
            let results = runtime.add(&netns, "web-0");
            let (bridge, ours) = (&results[0], &results[1]);
            assert_eq!(ours, bridge, "trellis-cni must return the bridge's result unchanged");
            assert_eq!(ours["cniVersion"], "1.0.0");

            // The same rules proxy-init writes for these settings.
            let settings = Settings { exclude_outbound_ports: vec![5432], ..Settings::default() };
            assert_eq!(
                output_in(meshed, &["nft", "list", "table", "inet", "trellis"]),
                expected_table(&settings)
            );

            // And they capture: the app's call goes to 15001, the proxy's goes out, an excluded
            // port goes out, inbound goes to 15006.
            let pod_ip = pod_address(ours);
            let outbound = listen(meshed, "0.0.0.0:15001");
            let inbound = listen(meshed, "0.0.0.0:15006");
            let server = listen(node, &format!("{GATEWAY}:8080"));
            let database = listen(node, &format!("{GATEWAY}:5432"));
            let all = [&outbound, &inbound, &server, &database];
            connect_as(meshed, 1000, &format!("{GATEWAY}:8080"));
            assert_eq!(accepted(&all), (0, format!("{GATEWAY}:8080").parse().unwrap()), "app outbound");
            connect_as(meshed, 1337, &format!("{GATEWAY}:8080"));
            assert_eq!(accepted(&all).0, 2, "the proxy's own call");
            connect_as(meshed, 1000, &format!("{GATEWAY}:5432"));
            assert_eq!(accepted(&all).0, 3, "an excluded port");
            connect_as(node, 1000, &format!("{pod_ip}:8080"));
            assert_eq!(accepted(&all), (1, format!("{pod_ip}:8080").parse().unwrap()), "inbound");

            // DEL after the pod's namespace is gone succeeds, for every plugin.
            ip(&["netns", "del", meshed]);
            runtime.del(&netns, "web-0");
        });

        in_scratch_namespace(|plain| {
            let netns = netns_path(plain);
            let results = runtime.add(&netns, "plain-0");
            assert_eq!(results[1], results[0]);
            assert_eq!(our_rules(plain), "", "an unmeshed pod gets no rules");
            let server = listen(node, &format!("{GATEWAY}:8080"));
            connect_as(plain, 1000, &format!("{GATEWAY}:8080"));
            assert_eq!(accepted(&[&server]).0, 0, "the unmeshed pod's network works");
            runtime.del(&netns, "plain-0");
        });
        assert_eq!(api.requests(), 2, "one pod lookup per ADD");
    });
}

/// A dual-stack pod (documentation IPv4 and ULA IPv6 ranges): the plugin sees the IPv6
/// address in the bridge's result and redirects IPv6 too, both ways, with the rules
/// proxy-init writes for `--ipv6`. (The proxy's side, listening on IPv6 in such a pod
/// without being told, is proxy/tests/dual_stack.rs.)
#[test]
fn a_real_dual_stack_chain_redirects_ipv6_too() {
    const GATEWAY_V4: &str = "198.51.100.1";
    const GATEWAY_V6: &str = "fd00:7e11:cb::1";
    in_scratch_namespace(|node| {
        let dir = tempfile::tempdir().unwrap();
        let listener =
            in_namespace(Some(&netns_path(node)), || TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
        let api = FakeApi::start(listener);
        api.add_pod(meshed_pod("shop", "web-0", json!({})));
        let kubeconfig = api.kubeconfig(dir.path());
        let ranges = json!([
            [{"subnet": "198.51.100.0/24", "gateway": GATEWAY_V4}],
            [{"subnet": "fd00:7e11:cb::/64", "gateway": GATEWAY_V6}]
        ]);
        let runtime = runtime_with_ranges(node, &kubeconfig, dir, ranges);

        in_scratch_namespace(|meshed| {
            let netns = netns_path(meshed);
            let results = runtime.add(&netns, "web-0");
            let ours = &results[1];
            assert_eq!(ours, &results[0], "trellis-cni must return the bridge's result unchanged");
            let pod_v6 = ours["ips"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|ip| ip["address"].as_str()?.split('/').next())
                .find(|a| a.contains(':'))
                .expect("an IPv6 address in the result")
                .to_owned();
            let settings = Settings { ipv6: true, ..Settings::default() };
            assert_eq!(
                output_in(meshed, &["nft", "list", "table", "inet", "trellis"]),
                expected_table(&settings)
            );

            // IPv6 is captured both ways: the app's call to 15001, a peer's call to 15006,
            // each keeping its original destination.
            // The bridge's gateway address is usable once duplicate address detection is over.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while [node, meshed]
                .iter()
                .any(|ns| !output_in(ns, &["ip", "-6", "addr", "show", "tentative"]).is_empty())
            {
                assert!(std::time::Instant::now() < deadline, "IPv6 addresses stayed tentative");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let outbound = listen(meshed, "[::]:15001");
            let inbound = listen(meshed, "[::]:15006");
            let server = listen(node, &format!("[{GATEWAY_V6}]:8080"));
            let all = [&outbound, &inbound, &server];
            let upstream = format!("[{GATEWAY_V6}]:8080");
            connect_as(meshed, 1000, &upstream);
            assert_eq!(accepted(&all), (0, upstream.parse().unwrap()), "app outbound over IPv6");
            connect_as(meshed, 1337, &upstream);
            assert_eq!(accepted(&all).0, 2, "the proxy's own IPv6 call goes out");
            let target = format!("[{pod_v6}]:8080");
            connect_as(node, 1000, &target);
            assert_eq!(accepted(&all), (1, target.parse().unwrap()), "inbound over IPv6");

            runtime.del(&netns, "web-0");
        });
    });
}
