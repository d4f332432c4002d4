//! The chart renders (issue 22): with its default values and with the values users change most
//! (hub and tag, CNI on, replicas, resources, and every other knob once), every object it
//! renders parses strictly as its Kubernetes type — a field the type does not know is an error —
//! and so does every CRD of crds/. The renderer is the one `trellis install` uses
//! (cli/src/chart, compiled into this test), so `trellis install --dry-run` prints these objects.
//!
//! `chart_matches_go_templates` renders the same value sets with a reference renderer built on
//! Go's own text/template, Sprig and go-yaml (scripts/chart-reference) and requires the same text
//! from every template and the same objects. It needs Go and Debian's Sprig
//! (scripts/chart-crosscheck.sh installs them and runs it); without them it says so and passes.

#[allow(dead_code)]
#[path = "../src/chart/mod.rs"]
mod chart;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use chart::{Manifest, RenderOptions};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const NAMESPACE: &str = "trellis-system";

/// A set of values, as a user gives them: `-f` files (their text) and `--set` arguments.
struct Case {
    name: &'static str,
    files: &'static [&'static str],
    set: &'static [&'static str],
}

/// What most users change: where the images come from, CNI, replicas and resources.
const COMMON: &str = r#"
injector:
  resources:
    requests: {cpu: 250m, memory: 128Mi}
    limits: {cpu: "1", memory: 512Mi}
controlPlane:
  replicaCount: 2
  resources:
    requests: {cpu: 500m, memory: 512Mi}
    limits: {memory: 2Gi}
cni:
  resources:
    limits: {cpu: 100m, memory: 128Mi}
"#;

/// Every other value, once, with the awkward inputs a template must survive (a raw PEM, list
/// entries with spaces and duplicates, a percentage, multi-line text, long lines).
const EVERYTHING: &str = r#"
global:
  imagePullSecrets: [regcred, mirror-credentials]
  imagePullPolicy: Always
injector:
  image:
    repository: registry.example.com/custom/injector
    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    pullPolicy: IfNotPresent
  listenAddress: "[::]"
  certificate: {mode: secret, secretName: injector-tls}
  caBundle: |
    -----BEGIN CERTIFICATE-----
    MIIBszCCAVmgAwIBAgIUTrellisTestCertificateOnly0123456789wCgYIKoZIzj0E
    -----END CERTIFICATE-----
  failurePolicy: Ignore
  timeoutSeconds: 5
  webhookAnnotations: {example.com/owner: platform-team}
  nativeSidecars: false
  neverInjectSelector: ["app=legacy", "tier in (db,cache)"]
  alwaysInjectSelector: ["inject=always"]
  templates:
    sidecar.yaml: |
      # A template override: multi-line text, with a line long enough that go-yaml folds it when it is written out again.
      spec:
        containers: []
  podLabels: {team: mesh, app: not-the-injector}
  podAnnotations:
    example.com/note: "hello: world"
    prometheus.io/port: "9999"
    # Scalars go-yaml quotes, or folds, when toYaml writes them out again.
    example.com/description: a long description of this pod, going on well past the eightieth column so that it folds
    example.com/yes: "yes"
    example.com/octal: "0755"
    example.com/float: "1e3"
    example.com/date: "2024-01-02"
    example.com/empty: ""
    example.com/tilde: "~"
    example.com/hash: "a #b"
    example.com/star: "*x"
    example.com/quotes: it's "quoted"
    example.com/unicode: "µs – ok ✓"
    example.com/tab: "a\tb"
    example.com/spaces: " padded "
    "on": "true"
  nodeSelector: {node-role.kubernetes.io/infra: "true"}
  tolerations:
    - {key: dedicated, operator: Equal, value: infra, effect: NoSchedule}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [a, b]}]
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector: {matchLabels: {app: trellis-injector}}
  extraEnv:
    - {name: RUST_LOG, value: debug}
    - name: NODE
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
  extraArgs: ["--verbose"]
  priorityClassName: system-cluster-critical
  podDisruptionBudget: {minAvailable: "50%"}
  metrics: {scrapeAnnotations: true}
proxy:
  image: {tag: "9.9.9"}
proxyInit:
  image: {repository: registry.example.com/init}
cni:
  enabled: true
  image: {tag: cni-dev, pullPolicy: Never}
  binDir: /home/kubernetes/bin
  excludeNamespaces: [kube-system, " monitoring ", kube-system, ""]
  logLevel: debug
  logFile: /var/log/trellis-cni.log
  apiServer: https://kubernetes.example.com:6443
  leaveOnExit: true
  priorityClassName: ""
  podAnnotations: {example.com/a: b}
meshConfig:
  trustDomain: example.org
  rootNamespace: istio-config
  accessLogFile: /dev/stdout
  enableAutoMtls: false
  defaultConfig:
    discoveryAddress: trellisd.other.svc:15012
    holdApplicationUntilProxyStarts: true
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
controlPlane:
  image: {tag: dev, pullPolicy: Always}
  listenAddress: "[::]"
  logLevel: info,trellis_control_plane::xds=debug
  ca: {workloadCertTTL: 12h, maxWorkloadCertTTL: 720h}
  podLabels: {team: mesh}
  podAnnotations: {example.com/x: "y"}
  metrics: {scrapeAnnotations: false}
  extraArgs: [--foo=bar]
  nodeSelector: {node-role.kubernetes.io/infra: "true"}
  tolerations: [{operator: Exists}]
  affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: trellisd}}}]}}
  priorityClassName: system-cluster-critical
"#;

const CASES: &[Case] = &[
    Case { name: "defaults", files: &[], set: &[] },
    Case {
        name: "hub, tag, CNI, replicas and resources",
        files: &[COMMON],
        set: &[
            "global.hub=registry.example.com/mirror/",
            "global.tag=1.2.3",
            "cni.enabled=true",
            "injector.replicaCount=3",
        ],
    },
    Case { name: "every other value", files: &[EVERYTHING], set: &[] },
    Case {
        name: "one replica, no control plane, CNI without the OS selector",
        files: &[],
        set: &[
            "injector.replicaCount=1",
            "controlPlane.enabled=false",
            "cni.enabled=true",
            r"cni.nodeSelector.kubernetes\.io/os=null",
            "cni.excludeNamespaces={}",
            "injector.podDisruptionBudget.enabled=false",
        ],
    },
];

/// The case's values as RenderOptions, its files written out under `dir`.
fn options(case: &Case, dir: &Path) -> RenderOptions {
    let value_files = case
        .files
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.join(format!("values-{i}.yaml"));
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .expect("write values");
            path
        })
        .collect();
    RenderOptions {
        release_name: "trellis".into(),
        namespace: NAMESPACE.into(),
        value_files,
        set: case.set.iter().map(|s| s.to_string()).collect(),
        include_crds: true,
    }
}

fn render(case: &Case) -> Vec<Manifest> {
    let dir = tempfile::tempdir().unwrap();
    chart::render(&options(case, dir.path())).unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

/// Deserializes `object` as `T`, then requires that serializing it gives the object back: a
/// field `T` does not know (k8s-openapi ignores those) or a value it reads differently fails.
fn strict<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: T =
        serde_path_to_error::deserialize(object).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    compare(object, &back, "", &mut problems);
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

fn compare(original: &Value, back: &Value, path: &str, problems: &mut Vec<String>) {
    match (original, back) {
        (Value::Null, _) => {}
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(read) => compare(value, read, &here, problems),
                    None if value.is_null() => {}
                    None if value.as_object().is_some_and(|m| m.is_empty())
                        || value.as_array().is_some_and(|a| a.is_empty()) => {}
                    None => problems.push(format!("{here}: unknown field")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (value, read)) in o.iter().zip(b).enumerate() {
                compare(value, read, &format!("{path}[{i}]"), problems);
            }
        }
        (Value::Object(o), _) if o.is_empty() => {}
        (Value::Array(o), _) if o.is_empty() => {}
        (o, b) if o == b => {}
        (o, b) => problems.push(format!("{path}: {o} reads back as {b}")),
    }
}

/// Parses a manifest strictly as the Kubernetes type its apiVersion and kind name.
fn parse_strictly(m: &Manifest) -> Result<(), String> {
    let api_version = m.object["apiVersion"].as_str().unwrap_or_default();
    let kind = m.object["kind"].as_str().unwrap_or_default();
    let o = &m.object;
    match (api_version, kind) {
        ("v1", "ServiceAccount") => strict::<ServiceAccount>(o),
        ("v1", "ConfigMap") => strict::<ConfigMap>(o),
        ("v1", "Service") => strict::<Service>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => strict::<ClusterRole>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => strict::<ClusterRoleBinding>(o),
        ("rbac.authorization.k8s.io/v1", "Role") => strict::<Role>(o),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => strict::<RoleBinding>(o),
        ("apps/v1", "Deployment") => strict::<Deployment>(o),
        ("apps/v1", "DaemonSet") => strict::<DaemonSet>(o),
        ("policy/v1", "PodDisruptionBudget") => strict::<PodDisruptionBudget>(o),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            strict::<MutatingWebhookConfiguration>(o)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => strict::<CustomResourceDefinition>(o),
        _ => Err(format!("{api_version} {kind}: no Kubernetes type known to this test")),
    }
}

fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> Option<&'a Value> {
    manifests.iter().map(|m| &m.object).find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Value {
    find(manifests, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn args(container: &Value) -> Vec<&str> {
    container["args"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

fn mesh_config(manifests: &[Manifest]) -> trellis_api::mesh::MeshConfig {
    let text = get(manifests, "ConfigMap", "trellis-mesh")["data"]["mesh"].as_str().expect("mesh key");
    let (config, unknown) = trellis_api::mesh::MeshConfig::from_yaml(text).expect("the mesh config parses");
    assert!(unknown.is_empty(), "fields Trellis does not know in the mesh config: {unknown:?}\n{text}");
    config
}

#[test]
fn every_object_parses_strictly_as_its_kubernetes_type() {
    for case in CASES {
        let manifests = render(case);
        let problems: Vec<String> = manifests
            .iter()
            .filter_map(|m| {
                parse_strictly(m).err().map(|e| {
                    format!("{} {} ({}): {e}", m.object["kind"], m.object["metadata"]["name"], m.source)
                })
            })
            .collect();
        assert!(problems.is_empty(), "{}:\n{}", case.name, problems.join("\n"));
        let crds = manifests.iter().filter(|m| m.source.starts_with("crds/")).count();
        assert!(crds >= 7, "{}: {crds} CRDs", case.name);
    }
}

#[test]
fn defaults_render_the_control_plane_in_install_order() {
    let manifests = render(&CASES[0]);
    let objects: Vec<(String, String)> = manifests
        .iter()
        .filter(|m| m.source.starts_with("templates/"))
        .map(|m| {
            (
                m.object["kind"].as_str().unwrap().to_owned(),
                m.object["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("PodDisruptionBudget", "trellis-injector"),
        ("ServiceAccount", "trellis-ingressgateway"),
        ("ServiceAccount", "trellis-injector"),
        ("ServiceAccount", "trellisd"),
        ("ConfigMap", "trellis-mesh"),
        ("ClusterRole", "trellis-injector"),
        ("ClusterRole", "trellisd"),
        ("ClusterRoleBinding", "trellis-injector"),
        ("ClusterRoleBinding", "trellisd"),
        ("Role", "trellis-injector"),
        ("Role", "trellisd"),
        ("RoleBinding", "trellis-injector"),
        ("RoleBinding", "trellisd"),
        ("Service", "trellis-ingressgateway"),
        ("Service", "trellis-injector"),
        ("Service", "trellisd"),
        ("Deployment", "trellis-ingressgateway"),
        ("Deployment", "trellis-injector"),
        ("Deployment", "trellisd"),
        ("MutatingWebhookConfiguration", "trellis-sidecar-injector"),
    ];
    let expected: Vec<(String, String)> =
        expected.iter().map(|(k, n)| (k.to_string(), n.to_string())).collect();
    assert_eq!(objects, expected);
    assert!(manifests.iter().take_while(|m| m.source.starts_with("crds/")).count() >= 7, "CRDs come first");

    let injector = get(&manifests, "Deployment", "trellis-injector");
    assert_eq!(injector["spec"]["replicas"], 2);
    let c = container(injector, "injector");
    assert_eq!(c["image"], "ghcr.io/trellis-mesh/injector:0.1.0");
    assert!(args(c).contains(&"--proxy-image=ghcr.io/trellis-mesh/proxy:0.1.0"));
    assert!(!args(c).contains(&"--cni-mode"));
    assert_eq!(
        container(get(&manifests, "Deployment", "trellisd"), "trellisd")["image"],
        "ghcr.io/trellis-mesh/trellisd:0.1.0"
    );
    assert!(find(&manifests, "DaemonSet", "trellis-cni-node").is_none());

    let mesh = mesh_config(&manifests);
    assert_eq!(mesh.root_namespace(), NAMESPACE);
    assert_eq!(mesh.proxy_config().discovery_address(), "trellisd.trellis-system.svc:15012");
    assert_eq!(mesh.trust_domain(), "cluster.local");
    // No caBundle in self-managed mode: the injector patches it, and helm upgrade never resets it.
    let webhook = get(&manifests, "MutatingWebhookConfiguration", "trellis-sidecar-injector");
    assert!(webhook["webhooks"][0]["clientConfig"].get("caBundle").is_none());
}

#[test]
fn hub_tag_cni_replicas_and_resources_take_effect() {
    let manifests = render(&CASES[1]);
    let images: Vec<&str> = manifests
        .iter()
        .filter(|m| matches!(m.object["kind"].as_str(), Some("Deployment" | "DaemonSet")))
        .flat_map(|m| m.object["spec"]["template"]["spec"]["containers"].as_array().unwrap())
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        [
            "registry.example.com/mirror/cni:1.2.3",
            "registry.example.com/mirror/proxy:1.2.3",
            "registry.example.com/mirror/injector:1.2.3",
            "registry.example.com/mirror/trellisd:1.2.3"
        ]
    );
    let injector = get(&manifests, "Deployment", "trellis-injector");
    let c = container(injector, "injector");
    let a = args(c);
    assert!(a.contains(&"--proxy-image=registry.example.com/mirror/proxy:1.2.3"), "{a:?}");
    assert!(a.contains(&"--proxy-init-image=registry.example.com/mirror/proxy-init:1.2.3"), "{a:?}");
    assert!(a.contains(&"--cni-mode"), "{a:?}");

    assert_eq!(injector["spec"]["replicas"], 3);
    assert_eq!(get(&manifests, "Deployment", "trellisd")["spec"]["replicas"], 2);
    assert!(find(&manifests, "PodDisruptionBudget", "trellis-injector").is_some());

    // A user's resources merge into the chart's, key by key.
    assert_eq!(
        c["resources"],
        serde_json::json!({"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert_eq!(
        container(get(&manifests, "Deployment", "trellisd"), "trellisd")["resources"],
        serde_json::json!({"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}})
    );
    let cni = get(&manifests, "DaemonSet", "trellis-cni-node");
    assert_eq!(
        container(cni, "install-cni")["resources"],
        serde_json::json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "128Mi"}})
    );
    assert_eq!(env(container(cni, "install-cni"), "EXCLUDE_NAMESPACES"), Some("kube-system,trellis-system"));
    assert_eq!(
        cni["spec"]["template"]["spec"]["nodeSelector"],
        serde_json::json!({"kubernetes.io/os": "linux"})
    );
    for (kind, name) in [
        ("ServiceAccount", "trellis-cni"),
        ("ClusterRole", "trellis-cni"),
        ("ClusterRoleBinding", "trellis-cni"),
    ] {
        assert!(find(&manifests, kind, name).is_some(), "{kind} {name}");
    }
}

#[test]
fn every_other_value_lands_where_it_should() {
    let manifests = render(&CASES[2]);
    let injector = get(&manifests, "Deployment", "trellis-injector");
    let pod = &injector["spec"]["template"];
    let c = container(injector, "injector");
    assert_eq!(
        c["image"],
        "registry.example.com/custom/injector@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let a = args(c);
    for expected in [
        "--listen=[::]:15017",
        "--native-sidecars=false",
        "--proxy-image=ghcr.io/trellis-mesh/proxy:9.9.9",
        "--proxy-init-image=registry.example.com/init:0.1.0",
        "--never-inject-selector=tier in (db,cache)",
        "--always-inject-selector=inject=always",
        "--templates=/etc/trellis/templates",
        "--verbose",
    ] {
        assert!(a.contains(&expected), "{expected} not in {a:?}");
    }
    assert!(!a.contains(&"--kubernetes"), "secret mode does not manage its certificate: {a:?}");
    // The chart's labels win over podLabels; podAnnotations win over the scrape annotations.
    assert_eq!(pod["metadata"]["labels"]["app"], "trellis-injector");
    assert_eq!(pod["metadata"]["labels"]["team"], "mesh");
    assert_eq!(pod["metadata"]["labels"]["sidecar.istio.io/inject"], "false");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "9999");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["example.com/note"], "hello: world");
    for checksum in ["checksum/mesh-config", "checksum/templates"] {
        let sum = annotations[checksum].as_str().unwrap_or_default();
        assert!(sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()), "{checksum}: {sum:?}");
    }
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}, {"name": "mirror-credentials"}])
    );
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(env(c, "RUST_LOG"), Some("debug"));
    assert_eq!(get(&manifests, "PodDisruptionBudget", "trellis-injector")["spec"]["minAvailable"], "50%");
    let templates = get(&manifests, "ConfigMap", "trellis-injector-templates");
    assert!(templates["data"]["sidecar.yaml"].as_str().unwrap().starts_with("# A template override"));

    let webhook = get(&manifests, "MutatingWebhookConfiguration", "trellis-sidecar-injector");
    assert_eq!(webhook["metadata"]["annotations"]["example.com/owner"], "platform-team");
    for hook in webhook["webhooks"].as_array().unwrap() {
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["timeoutSeconds"], 5);
        // A raw PEM is base64-encoded by the chart.
        let ca = hook["clientConfig"]["caBundle"].as_str().unwrap();
        assert!(ca.starts_with("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"), "{ca}");
    }
    let cni = container(get(&manifests, "DaemonSet", "trellis-cni-node"), "install-cni");
    assert_eq!(env(cni, "EXCLUDE_NAMESPACES"), Some("kube-system,monitoring,trellis-system"));
    assert_eq!(env(cni, "PLUGIN_LOG_FILE"), Some("/var/log/trellis-cni.log"));
    assert_eq!(env(cni, "API_SERVER"), Some("https://kubernetes.example.com:6443"));
    assert_eq!(env(cni, "LEAVE_ON_EXIT"), Some("true"));

    let trellisd = get(&manifests, "Deployment", "trellisd");
    let a = args(container(trellisd, "trellisd"));
    for expected in
        ["--trust-domain=example.org", "--workload-cert-ttl=12h", "--max-workload-cert-ttl=720h", "--foo=bar"]
    {
        assert!(a.contains(&expected), "{expected} not in {a:?}");
    }
    assert!(trellisd["spec"]["template"]["metadata"]["annotations"].get("prometheus.io/scrape").is_none());

    let mesh = mesh_config(&manifests);
    assert_eq!(mesh.trust_domain(), "example.org");
    assert_eq!(mesh.root_namespace(), "istio-config");
    assert_eq!(mesh.proxy_config().discovery_address(), "trellisd.other.svc:15012");
    assert!(!mesh.enable_auto_mtls());
}

#[test]
fn one_replica_and_no_control_plane() {
    let manifests = render(&CASES[3]);
    assert!(find(&manifests, "PodDisruptionBudget", "trellis-injector").is_none(), "no PDB for one replica");
    assert!(find(&manifests, "Deployment", "trellisd").is_none());
    assert!(find(&manifests, "Service", "trellisd").is_none());
    let cni = get(&manifests, "DaemonSet", "trellis-cni-node");
    assert!(cni["spec"]["template"]["spec"].get("nodeSelector").is_none(), "null deletes the default");
    assert_eq!(env(container(cni, "install-cni"), "EXCLUDE_NAMESPACES"), Some("trellis-system"));
}

#[test]
fn the_ingress_gateway_is_on_the_egress_gateway_off_and_both_configurable() {
    let manifests = render(&CASES[0]);
    let ingress = get(&manifests, "Deployment", "trellis-ingressgateway");
    let labels = &ingress["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        (labels["istio"].as_str(), labels["app"].as_str()),
        (Some("ingressgateway"), Some("istio-ingressgateway"))
    );
    assert_eq!(labels["sidecar.istio.io/inject"], "false", "a gateway is never injected");
    let proxy = container(ingress, "istio-proxy");
    assert_eq!(proxy["image"], "ghcr.io/trellis-mesh/proxy:0.1.0");
    assert_eq!(args(proxy), ["--role=gateway", "--discovery-address=trellisd.trellis-system.svc:15012"]);
    assert_eq!(env(proxy, "TRUST_DOMAIN"), Some("cluster.local"));
    let sysctls = &ingress["spec"]["template"]["spec"]["securityContext"]["sysctls"][0];
    assert_eq!(sysctls["name"], "net.ipv4.ip_unprivileged_port_start", "servers may listen on 80 and 443");
    let service = get(&manifests, "Service", "trellis-ingressgateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["selector"]["istio"], "ingressgateway");
    let ports: Vec<(i64, i64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_i64().unwrap(), p["targetPort"].as_i64().unwrap()))
        .collect();
    assert_eq!(ports, [(15021, 15021), (80, 80), (443, 443)]);
    assert!(service["spec"]["ports"][1].get("nodePort").is_none(), "Kubernetes picks node ports by default");
    assert!(
        find(&manifests, "Deployment", "trellis-egressgateway").is_none(),
        "no egress gateway by default"
    );

    let dir = tempfile::tempdir().unwrap();
    let case = Case {
        name: "gateways",
        files: &[r#"
gateways:
  ingress:
    service:
      type: NodePort
      ports: [{name: http2, port: 80, targetPort: 8080, nodePort: 30080}]
  egress:
    enabled: true
"#],
        set: &[],
    };
    let manifests = chart::render(&options(&case, dir.path())).unwrap();
    let service = get(&manifests, "Service", "trellis-ingressgateway");
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    let egress = get(&manifests, "Deployment", "trellis-egressgateway");
    assert_eq!(egress["spec"]["template"]["metadata"]["labels"]["istio"], "egressgateway");
    assert_eq!(get(&manifests, "Service", "trellis-egressgateway")["spec"]["type"], "ClusterIP");
    for m in &manifests {
        parse_strictly(m)
            .unwrap_or_else(|e| panic!("{} {}: {e}", m.object["kind"], m.object["metadata"]["name"]));
    }
}

#[test]
fn the_mesh_config_change_rolls_the_pods() {
    let annotation = |set: &'static [&'static str]| {
        let manifests = render(&Case { name: "checksum", files: &[], set });
        let value = |name: &str| {
            get(&manifests, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/mesh-config"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        (value("trellis-injector"), value("trellisd"))
    };
    let (before, before_cp) = annotation(&[]);
    let (after, after_cp) = annotation(&["meshConfig.trustDomain=example.org"]);
    assert_eq!(before, before_cp);
    assert_ne!(before, after);
    assert_ne!(before_cp, after_cp);
}

#[test]
fn the_chart_rejects_bad_values_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (set, expected) in [
        (
            "injector.replicaCount=abc",
            "--set injector.replicaCount=abc: templates/mutatingwebhook.yaml: in \"trellis.validate\": injector.replicaCount must be a whole number of replicas, got \"abc\"",
        ),
        (
            "controlPlane.replicaCount=-1",
            "--set controlPlane.replicaCount=-1: templates/mutatingwebhook.yaml: in \"trellis.validate\": controlPlane.replicaCount must be a whole number of replicas, got \"-1\"",
        ),
        (
            "injector.certificate.mode=manual",
            "injector.certificate.mode must be \"self-managed\" or \"secret\", got manual",
        ),
        ("injector.certificate.mode=secret", "injector.caBundle must be set"),
        ("controlPlane.ca.workloadCertTTL=1day", "controlPlane.ca.workloadCertTTL must be a duration"),
        ("cni.enabled=true,cni.binDir=opt/cni/bin", "cni.binDir must be an absolute path"),
        (
            "injector.templates.sidecar\\.yaml=3",
            "injector.templates.sidecar.yaml must be the template's text (a string), got a int64",
        ),
    ] {
        let case = Case { name: "bad", files: &[], set: &[] };
        let mut o = options(&case, dir.path());
        o.set = vec![set.to_owned()];
        let e = chart::render(&o).expect_err(set).to_string();
        assert!(e.contains(expected), "{set}: {e}");
        assert!(e.starts_with(&format!("--set {set}: ")), "{set}: not attributed: {e}");
    }
}

// --- the reference renderer: Go's text/template, Sprig and go-yaml

/// Builds scripts/chart-reference with Debian's Go and Sprig, or says why it cannot.
fn go_reference_renderer() -> Result<PathBuf, String> {
    let go = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("go")).find(|p| p.is_file()))
        .ok_or("Go is not installed (Debian: golang-go)")?;
    let gocode = Path::new("/usr/share/gocode/src");
    for (package, debian) in [
        ("github.com/Masterminds/sprig", "golang-github-masterminds-sprig-dev"),
        ("gopkg.in/yaml.v2", "golang-gopkg-yaml.v2-dev"),
    ] {
        if !gocode.join(package).is_dir() {
            return Err(format!("{package} is not installed (Debian: {debian})"));
        }
    }
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart-reference");
    // Debian installs Sprig v3 and semver v3 without their /v3 suffix: give GOPATH mode one.
    let gopath = target.join("gopath");
    for module in ["sprig", "semver"] {
        let link = gopath.join("src/github.com/Masterminds").join(module).join("v3");
        std::fs::create_dir_all(link.parent().unwrap()).map_err(|e| e.to_string())?;
        if !link.exists() {
            std::os::unix::fs::symlink(gocode.join("github.com/Masterminds").join(module), &link)
                .map_err(|e| format!("{}: {e}", link.display()))?;
        }
    }
    let binary = target.join("chart-reference");
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/chart-reference");
    let output = Command::new(go)
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", std::env::join_paths([gopath.as_path(), Path::new("/usr/share/gocode")]).unwrap())
        .env("GOCACHE", target.join("cache"))
        .env("GOFLAGS", "")
        .output()
        .map_err(|e| format!("go build: {e}"))?;
    if !output.status.success() {
        // Go and Sprig are there: a build failure is a real failure.
        panic!("go build scripts/chart-reference failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(binary)
}

#[test]
fn chart_matches_go_templates() {
    let reference = match go_reference_renderer() {
        Ok(binary) => binary,
        Err(why) => {
            let message =
                format!("chart_matches_go_templates skipped: {why}; scripts/chart-crosscheck.sh installs it");
            if std::env::var_os("TRELLIS_CHART_CROSSCHECK").is_some_and(|v| v == "require") {
                panic!("{message}");
            }
            eprintln!("{message}");
            return;
        }
    };
    let chart_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/trellis");
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let options = options(case, dir.path());
        let mut command = Command::new(&reference);
        command.arg("-chart").arg(&chart_dir).args(["-name", "trellis", "-namespace", NAMESPACE]);
        for file in &options.value_files {
            command.arg("-f").arg(file);
        }
        for set in &options.set {
            command.args(["-set", set]);
        }
        let output = command.output().expect("run chart-reference");
        assert!(output.status.success(), "{}: Go: {}", case.name, String::from_utf8_lossy(&output.stderr));
        let go: Value = serde_json::from_slice(&output.stdout).expect("chart-reference's JSON");

        // The same text from every template, byte for byte (NOTES.txt included).
        let ours = chart::render_texts(&options).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let go_texts: BTreeMap<String, String> = go["templates"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, text)| {
                (name.trim_start_matches("trellis/").to_owned(), text.as_str().unwrap().to_owned())
            })
            .collect();
        let our_texts: BTreeMap<String, String> = ours.into_iter().collect();
        assert_eq!(
            our_texts.keys().collect::<Vec<_>>(),
            go_texts.keys().collect::<Vec<_>>(),
            "{}",
            case.name
        );
        for (name, text) in &our_texts {
            let theirs = &go_texts[name];
            if text != theirs {
                let line = text.lines().zip(theirs.lines()).position(|(a, b)| a != b).unwrap_or(0);
                panic!(
                    "{}: {name} differs from Go's at line {}:\n  trellis: {:?}\n  Go:      {:?}",
                    case.name,
                    line + 1,
                    text.lines().nth(line),
                    theirs.lines().nth(line)
                );
            }
        }

        // The same objects, as go-yaml (YAML 1.1, as Kubernetes reads it) parses Go's text and
        // as trellis parses its own.
        let manifests = chart::render(&RenderOptions { include_crds: false, ..options.clone() }).unwrap();
        let mut go_objects: Vec<Value> = Vec::new();
        for (name, objects) in go["objects"].as_object().unwrap() {
            if name.ends_with("NOTES.txt") {
                continue;
            }
            go_objects.extend(objects.as_array().unwrap().iter().cloned());
        }
        let key = |o: &Value| format!("{} {}", o["kind"], o["metadata"]["name"]);
        go_objects.sort_by_key(key);
        let mut our_objects: Vec<Value> = manifests.into_iter().map(|m| m.object).collect();
        our_objects.sort_by_key(key);
        assert_eq!(our_objects.len(), go_objects.len(), "{}", case.name);
        for (ours, theirs) in our_objects.iter().zip(&go_objects) {
            assert_eq!(ours, theirs, "{}: {} differs from Go's", case.name, key(ours));
        }
        eprintln!(
            "{}: {} templates and {} objects identical to Go's",
            case.name,
            our_texts.len(),
            our_objects.len()
        );
    }
}

/// `trellis install --dry-run` prints the chart's objects, in the chart's order, for every value
/// set: the same objects `helm install` makes, but for what install adds on purpose — the
/// release namespace first (Helm's `--create-namespace` makes it outside the chart) and, on
/// every object, the labels by which `trellis uninstall` finds what install made
/// (`app.kubernetes.io/managed-by: trellis` in place of the chart's `Helm`, and
/// `install.trellis.io/release`).
#[test]
fn install_dry_run_prints_the_charts_objects() {
    let without_install_labels = |mut object: Value| {
        if let Some(labels) = object.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
            labels.remove("app.kubernetes.io/managed-by");
            labels.remove("install.trellis.io/release");
            if labels.is_empty() {
                object["metadata"].as_object_mut().map(|m| m.remove("labels"));
            }
        }
        object
    };
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let options = options(case, dir.path());
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
        command.args(["install", "--dry-run", "-n", NAMESPACE]);
        for file in &options.value_files {
            command.arg("-f").arg(file);
        }
        for set in &options.set {
            command.args(["--set", set]);
        }
        let output = command.env_remove("KUBECONFIG").output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}: {}", case.name, String::from_utf8_lossy(&output.stderr));
        let mut printed: Vec<Value> = trellis_api::load::split_documents(&stdout)
            .iter()
            .map(|doc| {
                serde_saphyr::from_str::<Value>(doc.text).unwrap_or_else(|e| panic!("{e}\n{}", doc.text))
            })
            .collect();
        assert_eq!(printed.first().and_then(|o| o["kind"].as_str()), Some("Namespace"), "{}", case.name);
        assert_eq!(printed[0]["metadata"]["name"], NAMESPACE);
        printed.remove(0);
        let printed: Vec<Value> = printed.into_iter().map(without_install_labels).collect();
        let chart: Vec<Value> = render(case).into_iter().map(|m| without_install_labels(m.object)).collect();
        assert_eq!(printed.len(), chart.len(), "{}: object count", case.name);
        for (printed, rendered) in printed.iter().zip(&chart) {
            assert_eq!(
                printed, rendered,
                "{}: {} {}",
                case.name, rendered["kind"], rendered["metadata"]["name"]
            );
        }
    }
}
