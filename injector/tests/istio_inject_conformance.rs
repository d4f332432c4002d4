//! Istio's own kube-inject goldens (`shared/istio-conformance/inject/NAME/`): each case's
//! `input.yaml` goes through `trellis inject`'s code path (the case's `trellis.args` read by the
//! same flags, then `inject_manifests`) and the result is compared with Istio's
//! `istio.yaml.injected` by meaning, not text — images, container names and layout differ by
//! design. What is compared, per pod template:
//!
//! - injected or not; native sidecar or not; the proxy ahead of the user's init containers; the
//!   app held until the proxy is ready;
//! - the redirect: the proxy-init (istio-iptables) flags as sets — ports, CIDRs, uids/gids,
//!   interception mode, interfaces, DNS capture, dual stack;
//! - every probe and lifecycle hook of the app's containers and of the user's own native
//!   sidecars: rewritten to the status port where Istio rewrites them, untouched elsewhere; and
//!   the originals handed to the proxy in `ISTIO_KUBE_APP_PROBERS`;
//! - the proxy's resources and readiness probe where annotations set them; the proxy config,
//!   `proxyMetadata` environment, interception mode, workload and container facts; the labels and
//!   annotations Istio's tooling reads.
//!
//! A case Istio refuses (`istio.error`) must be refused, naming the annotation at fault.
//! Trellis's output injected again must come out unchanged. And
//! Istio's output injected again by Trellis (a mesh moving over) must mean what injecting the
//! input means, with none of Istio's containers or volumes left (aspects `re-injected from
//! Istio's output: ...`, where "istio" in a report is Trellis on the original input).
//! Any disagreement fails the test unless `istio_inject_differences.txt` lists it with its
//! reason; a listed difference that no longer occurs fails too, so the list stays true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::{Map, Value, json};
use trellis_api::annotations::Quantity;
use trellis_api::load::split_documents;
use trellis_injector::config::InjectionFlags;
use trellis_injector::manual::inject_manifests;

/// `trellis inject`'s injection flags, parsed as the command parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    injection: InjectionFlags,
}

fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("TRELLIS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("istio-conformance/inject");
    assert!(dir.is_dir(), "conformance corpus not found at {} (set TRELLIS_SHARED_DIR)", dir.display());
    dir
}

/// One point where Trellis and Istio disagree.
#[derive(Debug)]
struct Disagreement {
    case: String,
    /// Which pod template of the case (`doc 1`, `doc 1 items[0]`).
    place: String,
    aspect: String,
    ours: Value,
    istio: Value,
}

/// `case | aspect | reason` lines of the deliberate differences file.
fn deliberate_differences() -> BTreeMap<(String, String), String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio_inject_differences.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut listed = BTreeMap::new();
    for (number, line) in (1..).zip(text.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.splitn(3, " | ").map(str::trim).collect();
        let [case, aspect, reason] = parts[..] else {
            panic!("{}:{number}: expected `case | aspect | reason`, got {line:?}", path.display());
        };
        assert!(!reason.is_empty(), "{}:{number}: a difference needs its reason", path.display());
        listed.insert((case.to_owned(), aspect.to_owned()), reason.to_owned());
    }
    listed
}

#[test]
fn istio_kube_inject_goldens_mean_the_same_after_trellis_inject() {
    let dir = corpus_dir();
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 20, "expected Istio's kube-inject cases in {}", dir.display());
    let mut found = Vec::new();
    for case in &cases {
        found.extend(run_case(case));
    }

    let listed = deliberate_differences();
    let mut unexplained = Vec::new();
    let mut explained = BTreeSet::new();
    for d in &found {
        let key = (d.case.clone(), d.aspect.clone());
        if listed.contains_key(&key) {
            explained.insert(key);
        } else {
            unexplained.push(format!(
                "{} ({}): {}\n    trellis: {}\n    istio:   {}",
                d.case, d.place, d.aspect, d.ours, d.istio
            ));
        }
    }
    let stale: Vec<String> = listed
        .keys()
        .filter(|key| !explained.contains(*key))
        .map(|(case, aspect)| format!("{case} | {aspect}"))
        .collect();
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "{} cases checked.\nDisagreements not listed in istio_inject_differences.txt:\n{}\n\
         Listed differences that no longer occur (remove them):\n{}",
        cases.len(),
        unexplained.join("\n"),
        stale.join("\n")
    );
}

/// Runs one case and returns its disagreements.
fn run_case(case: &Path) -> Vec<Disagreement> {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let read = |file: &str| {
        let path = case.join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let input = read("input.yaml");
    let args = std::fs::read_to_string(case.join("trellis.args")).unwrap_or_default();
    let flags = Flags::try_parse_from(std::iter::once("trellis-inject").chain(args.split_whitespace()))
        .unwrap_or_else(|e| panic!("{name}: trellis.args: {e}"));
    let (config, templates) = flags.injection.load().unwrap_or_else(|e| panic!("{name}: {e}"));
    let result = inject_manifests(&input, &config, &templates);
    let mut found = Vec::new();
    let mut disagree = |place: &str, aspect: &str, ours: Value, istio: Value| {
        found.push(Disagreement {
            case: name.clone(),
            place: place.to_owned(),
            aspect: aspect.to_owned(),
            ours,
            istio,
        });
    };

    if let Ok(expected) = std::fs::read_to_string(case.join("istio.error")) {
        match &result {
            Ok(_) => disagree(
                "input",
                "outcome",
                json!("injected"),
                json!(format!("refused ({})", expected.trim())),
            ),
            Err(error) => {
                // Naming the annotation at fault is what makes the refusal useful.
                let error = error.to_string();
                for annotation in documents(&input).iter().flat_map(pod_templates).flat_map(|(_, pod)| {
                    pod.pointer("/metadata/annotations")
                        .and_then(Value::as_object)
                        .map(|a| a.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                }) {
                    if !error.contains(&annotation) {
                        disagree("input", "refusal names the annotation", json!(error), json!(annotation));
                    }
                }
            }
        }
        return found;
    }

    let ours = match result {
        Ok(text) => {
            // Injecting twice gives what injecting once did.
            match inject_manifests(&text, &config, &templates) {
                Ok(again) if again == text => {}
                Ok(again) => disagree("output", "injected again, unchanged", json!(again), json!(text)),
                Err(e) => disagree(
                    "output",
                    "injected again, unchanged",
                    json!(format!("refused: {e}")),
                    json!(text),
                ),
            }
            documents(&text)
        }
        Err(e) => {
            disagree("input", "outcome", json!(format!("refused: {e}")), json!("injected"));
            return found;
        }
    };
    let istio = documents(&read("istio.yaml.injected"));
    if ours.len() != istio.len() {
        disagree("input", "documents", json!(ours.len()), json!(istio.len()));
        return found;
    }
    let ours_pods: Vec<(String, Value)> = ours.iter().flat_map(pod_templates).collect();
    let istio_pods: Vec<(String, Value)> = istio.iter().flat_map(pod_templates).collect();
    if ours_pods.len() != istio_pods.len() {
        disagree("input", "pod templates", json!(ours_pods.len()), json!(istio_pods.len()));
        return found;
    }
    for ((place, our_pod), (_, istio_pod)) in ours_pods.iter().zip(&istio_pods) {
        let istio_meaning = meaning(istio_pod, Side::Istio, None);
        let our_meaning = meaning(our_pod, Side::Trellis, Some(&istio_meaning));
        if our_meaning.get("injected") != istio_meaning.get("injected") {
            // Nothing else can agree; one line says it.
            disagree(
                place,
                "injected",
                json!(our_meaning.get("injected")),
                json!(istio_meaning.get("injected")),
            );
            continue;
        }
        for aspect in istio_meaning.keys().chain(our_meaning.keys()).collect::<BTreeSet<_>>() {
            let (o, i) = (our_meaning.get(aspect), istio_meaning.get(aspect));
            if o != i {
                disagree(place, aspect, o.cloned().unwrap_or(Value::Null), i.cloned().unwrap_or(Value::Null));
            }
        }
        // Our own defaults are not Istio's, but they must be ones Kubernetes accepts.
        if let Some(problem) =
            request_above_limit(&container(our_pod, PROXY).and_then(|p| p.get("resources").cloned()))
        {
            disagree(place, "proxy resources are valid", json!(problem), json!("requests within limits"));
        }
    }

    // A workload Istio injected, injected again by Trellis (a mesh moving over): Trellis takes
    // Istio's sidecar out, gives back the probes and hooks Istio's ISTIO_KUBE_APP_PROBERS holds,
    // and must end where injecting the original gives, with nothing of Istio's left.
    const AGAIN: &str = "re-injected from Istio's output";
    let again = match inject_manifests(&read("istio.yaml.injected"), &config, &templates) {
        Ok(text) => documents(&text),
        Err(e) => {
            disagree("istio's output", AGAIN, json!(format!("refused: {e}")), json!("injected"));
            return found;
        }
    };
    let again_pods: Vec<(String, Value)> = again.iter().flat_map(pod_templates).collect();
    for ((place, from_istio), (_, from_input)) in again_pods.iter().zip(&ours_pods) {
        let (a, b) = (meaning(from_istio, Side::Trellis, None), meaning(from_input, Side::Trellis, None));
        for aspect in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            let (x, y) = (a.get(aspect), b.get(aspect));
            if x != y {
                let (x, y) = (x.cloned().unwrap_or(Value::Null), y.cloned().unwrap_or(Value::Null));
                disagree(place, &format!("{AGAIN}: {aspect}"), x, y);
            }
        }
        let names = |pod: &Value| -> BTreeSet<String> {
            let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten();
            containers(pod, "initContainers")
                .chain(containers(pod, "containers"))
                .chain(volumes)
                .map(|c| name_of(c).to_owned())
                .collect()
        };
        let leftovers: Vec<String> = names(from_istio).difference(&names(from_input)).cloned().collect();
        if !leftovers.is_empty() {
            disagree(
                place,
                &format!("{AGAIN}: Istio's containers and volumes removed"),
                json!(leftovers),
                json!([]),
            );
        }
    }
    found
}

fn documents(text: &str) -> Vec<Value> {
    split_documents(text)
        .into_iter()
        .map(|doc| serde_saphyr::from_str::<Value>(doc.text).unwrap_or_else(|e| panic!("{e}\n{}", doc.text)))
        .filter(|v| !v.is_null())
        .collect()
}

/// The pod templates of a document, with where they are: a Pod itself, a workload's template,
/// each item of a List.
fn pod_templates(doc: &Value) -> Vec<(String, Value)> {
    fn walk(doc: &Value, place: String, out: &mut Vec<(String, Value)>) {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        if kind.ends_with("List") {
            for (i, item) in doc.get("items").and_then(Value::as_array).into_iter().flatten().enumerate() {
                walk(item, format!("{place} items[{i}]"), out);
            }
            return;
        }
        let pointer = match kind {
            "Pod" => "",
            "CronJob" => "/spec/jobTemplate/spec/template",
            _ => "/spec/template",
        };
        if let Some(pod) = doc.pointer(pointer).filter(|p| p.get("spec").is_some()) {
            out.push((format!("{place} {kind}").trim().to_owned(), pod.clone()));
        }
    }
    let mut out = Vec::new();
    walk(doc, String::new(), &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// What a pod template means

const PROXY: &str = "istio-proxy";
/// Containers the injectors add, by either side's name; everything else is the user's.
const INJECTED: [&str; 5] =
    ["istio-proxy", "istio-init", "istio-validation", "trellis-init", "trellis-validation"];
const REDIRECT_CONTAINERS: [&str; 4] =
    ["istio-init", "istio-validation", "trellis-init", "trellis-validation"];

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Istio,
    Trellis,
}

fn containers<'a>(pod: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{field}")).and_then(Value::as_array).into_iter().flatten()
}

fn name_of(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or_default()
}

fn container(pod: &Value, name: &str) -> Option<Value> {
    containers(pod, "initContainers")
        .chain(containers(pod, "containers"))
        .find(|c| name_of(c) == name)
        .cloned()
}

fn env(c: &Value, name: &str) -> Option<String> {
    c.get("env")?
        .as_array()?
        .iter()
        .rev()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn annotation(pod: &Value, name: &str) -> Option<String> {
    pod.pointer("/metadata/annotations")?.get(name)?.as_str().map(str::to_owned)
}

/// Each compared aspect of a pod template as a normalized value. Trellis's side is read with
/// Istio's meaning at hand where only Istio's keys count (the proxy config).
fn meaning(pod: &Value, side: Side, istio: Option<&BTreeMap<String, Value>>) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    let proxy = container(pod, PROXY);
    m.insert("injected".to_owned(), json!(proxy.is_some()));
    let Some(proxy) = proxy else { return m };

    let inits: Vec<&Value> = containers(pod, "initContainers").collect();
    let native =
        inits.iter().any(|c| name_of(c) == PROXY && c.get("restartPolicy") == Some(&json!("Always")));
    m.insert("native sidecar".to_owned(), json!(native));
    if native {
        let position = |pred: &dyn Fn(&&Value) -> bool| inits.iter().position(pred);
        let proxy_at = position(&|c| name_of(c) == PROXY);
        let first_user = position(&|c| !INJECTED.contains(&name_of(c)));
        m.insert(
            "proxy starts before the user's init containers".to_owned(),
            json!(match (proxy_at, first_user) {
                (Some(p), Some(u)) => p < u,
                _ => true,
            }),
        );
    }
    let app_waits = if native {
        proxy.get("startupProbe").is_some()
    } else {
        containers(pod, "containers").next().is_some_and(|c| name_of(c) == PROXY)
            && proxy.pointer("/lifecycle/postStart").is_some()
    };
    m.insert("app starts once the proxy is ready".to_owned(), json!(app_waits));

    if let Some(redirect) = inits.iter().find(|c| REDIRECT_CONTAINERS.contains(&name_of(c))) {
        m.insert("redirect".to_owned(), redirect_meaning(redirect, side));
    } else {
        m.insert("redirect".to_owned(), Value::Null);
    }

    m.insert("probes and hooks".to_owned(), checks_meaning(pod));
    m.insert(
        "ISTIO_KUBE_APP_PROBERS".to_owned(),
        probers_meaning(env(&proxy, "ISTIO_KUBE_APP_PROBERS").as_deref()),
    );
    m.insert("ISTIO_META_INTERCEPTION_MODE".to_owned(), json!(env(&proxy, "ISTIO_META_INTERCEPTION_MODE")));

    // The proxy config Istio hands over: every key Istio's has, with its value. Trellis writes
    // some of its own (the status port) that Istio leaves to defaults.
    let config: Value = env(&proxy, "PROXY_CONFIG")
        .map(|text| serde_json::from_str(&text).unwrap_or_else(|e| panic!("PROXY_CONFIG: {e}: {text}")))
        .unwrap_or_else(|| json!({}));
    let config = match (side, istio.and_then(|i| i.get("PROXY_CONFIG"))) {
        (Side::Trellis, Some(Value::Object(istio_config))) => Value::Object(
            istio_config.keys().filter_map(|k| config.get(k).map(|v| (k.clone(), v.clone()))).collect(),
        ),
        _ => config,
    };
    let metadata: Vec<String> = config
        .get("proxyMetadata")
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    m.insert("PROXY_CONFIG".to_owned(), config);
    m.insert(
        "proxyMetadata in the proxy's environment".to_owned(),
        metadata.iter().map(|k| (k.clone(), json!(env(&proxy, k)))).collect::<Map<_, _>>().into(),
    );

    let annotated = |prefix: &str, names: &[&str]| {
        names.iter().any(|n| annotation(pod, &format!("{prefix}{n}")).is_some())
    };
    if annotated("sidecar.istio.io/", &["proxyCPU", "proxyMemory", "proxyCPULimit", "proxyMemoryLimit"]) {
        m.insert("proxy resources".to_owned(), resources_meaning(proxy.get("resources")));
    }
    let readiness = proxy.get("readinessProbe");
    m.insert("proxy readiness probe".to_owned(), json!(readiness.is_some()));
    if annotated(
        "readiness.status.sidecar.istio.io/",
        &["initialDelaySeconds", "periodSeconds", "failureThreshold"],
    ) {
        let field = |name: &str, default: i64| {
            readiness.and_then(|r| r.get(name)).and_then(Value::as_i64).unwrap_or(default)
        };
        m.insert(
            "proxy readiness timing".to_owned(),
            json!({
                "initialDelaySeconds": field("initialDelaySeconds", 0),
                "periodSeconds": field("periodSeconds", 10),
                "failureThreshold": field("failureThreshold", 3),
            }),
        );
    }

    // The labels and annotations Istio's own tooling reads from the pod.
    let labels = pod.pointer("/metadata/labels").cloned().unwrap_or_default();
    let labels: Map<String, Value> = [
        "security.istio.io/tlsMode",
        "service.istio.io/canonical-name",
        "service.istio.io/canonical-revision",
    ]
    .into_iter()
    .map(|label| (label.to_owned(), labels.get(label).cloned().unwrap_or(Value::Null)))
    .collect();
    m.insert("pod labels".to_owned(), Value::Object(labels));
    let annotations: Map<String, Value> = [
        "kubectl.kubernetes.io/default-container",
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), json!(annotation(pod, name))))
    .collect();
    m.insert("pod annotations".to_owned(), Value::Object(annotations));
    m.insert(
        "ISTIO_PROMETHEUS_ANNOTATIONS".to_owned(),
        env(&proxy, "ISTIO_PROMETHEUS_ANNOTATIONS")
            .map(|t| serde_json::from_str(&t).unwrap_or(json!(t)))
            .unwrap_or_default(),
    );
    m.insert("ISTIO_META_WORKLOAD_NAME".to_owned(), json!(env(&proxy, "ISTIO_META_WORKLOAD_NAME")));
    m.insert(
        "ISTIO_META_APP_CONTAINERS".to_owned(),
        json!(
            env(&proxy, "ISTIO_META_APP_CONTAINERS")
                .map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        ),
    );
    m.insert(
        "ISTIO_META_POD_PORTS".to_owned(),
        env(&proxy, "ISTIO_META_POD_PORTS")
            .map(|t| serde_json::from_str(&t).unwrap_or(json!(t)))
            .unwrap_or_default(),
    );
    m
}

/// The redirect's flags as sets, each tool's defaults filled in.
fn redirect_meaning(init: &Value, side: Side) -> Value {
    const TAKES_VALUE: [&str; 13] =
        ["-p", "-z", "-u", "-g", "-m", "-i", "-x", "-b", "-d", "-q", "-o", "-c", "-k"];
    let args: Vec<&str> =
        init.get("args").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let mut values: BTreeMap<&str, &str> = BTreeMap::new();
    let mut switches: BTreeSet<&str> = BTreeSet::new();
    let mut rest = args.iter().copied();
    while let Some(arg) = rest.next() {
        if TAKES_VALUE.contains(&arg) {
            values.insert(arg, rest.next().unwrap_or_default());
        } else if arg.starts_with("--") && !arg.contains('=') {
            switches.insert(arg);
        }
        // Anything else names the command (istio-iptables, validate) or sets logging.
    }
    let set = |text: &str| -> Value {
        let mut items: Vec<String> =
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        items.sort();
        items.dedup();
        json!(items)
    };
    let cidrs = |text: &str| -> Value {
        if text.trim() == "*" {
            return json!("*");
        }
        let mut nets: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .map(|n| n.trunc().to_string())
                    .unwrap_or_else(|_| format!("invalid {s}"))
            })
            .collect();
        nets.sort();
        nets.dedup();
        json!(nets)
    };
    let all_or_set = |text: &str| if text.trim() == "*" { json!("*") } else { set(text) };
    // istio-iptables' defaults are "" for the include lists (the template always passes them);
    // trellis-proxy-init's are "*".
    let include_default = if side == Side::Istio { "" } else { "*" };
    let get = |flag: &str, default: &'static str| -> String {
        values.get(flag).copied().unwrap_or(default).to_owned()
    };
    let uids = get("-u", "1337");
    let env_switch = |name: &str| {
        env(init, name).is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    };
    // istio-iptables reads these from its environment (the pod's proxyMetadata) unless flagged.
    let (dns, all_dns, dual_stack) = match side {
        Side::Istio => (
            switches.contains("--redirect-dns") || env_switch("ISTIO_META_DNS_CAPTURE"),
            switches.contains("--capture-all-dns") || env_switch("CAPTURE_ALL_DNS"),
            switches.contains("--dual-stack") || env_switch("ISTIO_AGENT_DUAL_STACK"),
        ),
        Side::Trellis => (
            switches.contains("--capture-dns"),
            switches.contains("--capture-all-dns"),
            switches.contains("--ipv6"),
        ),
    };
    json!({
        "outbound capture port": get("-p", "15001"),
        "inbound capture port": get("-z", "15006"),
        "proxy uids": set(&uids),
        "proxy gids": set(values.get("-g").copied().unwrap_or(&uids)),
        "interception mode": get("-m", "REDIRECT"),
        "outbound CIDRs captured": cidrs(&get("-i", include_default)),
        "outbound CIDRs excluded": cidrs(&get("-x", "")),
        "inbound ports captured": all_or_set(&get("-b", include_default)),
        "inbound ports excluded": set(&get("-d", "")),
        "outbound ports captured": set(&get("-q", "")),
        "outbound ports excluded": set(&get("-o", "")),
        "interfaces excluded": set(&get("-c", "")),
        "KubeVirt interfaces": set(&get("-k", "")),
        "DNS captured": dns,
        "all of port 53 captured": dns && all_dns,
        "IPv6 redirected": dual_stack,
    })
}

/// Every probe and hook of the user's containers and native sidecars: where the kubelet calls.
fn checks_meaning(pod: &Value) -> Value {
    let sidecars =
        containers(pod, "initContainers").filter(|c| c.get("restartPolicy") == Some(&json!("Always")));
    let mut out = Map::new();
    for c in sidecars.chain(containers(pod, "containers")).filter(|c| !INJECTED.contains(&name_of(c))) {
        for (kind, pointer) in [
            ("livenessProbe", "/livenessProbe"),
            ("readinessProbe", "/readinessProbe"),
            ("startupProbe", "/startupProbe"),
            ("postStart", "/lifecycle/postStart"),
            ("preStop", "/lifecycle/preStop"),
        ] {
            let Some(check) = c.pointer(pointer) else { continue };
            out.insert(format!("{}.{kind}", name_of(c)), check_meaning(check));
        }
    }
    Value::Object(out)
}

fn check_meaning(check: &Value) -> Value {
    if let Some(get) = check.get("httpGet")
        && let Some(path) = get.get("path").and_then(Value::as_str)
        && (path.starts_with("/app-health/") || path.starts_with("/app-lifecycle/"))
    {
        return json!({
            "status port": get.get("port"),
            "path": path,
            "scheme": get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP"),
        });
    }
    // Not rewritten: the action as written, without the probe's timing.
    let mut action = Map::new();
    for key in ["httpGet", "tcpSocket", "grpc", "exec", "sleep"] {
        if let Some(v) = check.get(key) {
            action.insert(key.to_owned(), v.clone());
        }
    }
    Value::Object(action)
}

/// `ISTIO_KUBE_APP_PROBERS` with Kubernetes's defaults written out: a probe's timeout is 1s, an
/// httpGet's scheme HTTP and path `/`; a hook has no timeout.
fn probers_meaning(text: Option<&str>) -> Value {
    let Some(text) = text else { return json!({}) };
    let parsed: Map<String, Value> =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("ISTIO_KUBE_APP_PROBERS: {e}: {text}"));
    let mut out = Map::new();
    for (path, mut prober) in parsed {
        if let Some(get) = prober.get_mut("httpGet").and_then(Value::as_object_mut) {
            get.entry("scheme").or_insert(json!("HTTP"));
            get.entry("path").or_insert(json!("/"));
        }
        if path.starts_with("/app-health/")
            && let Some(p) = prober.as_object_mut()
        {
            p.entry("timeoutSeconds").or_insert(json!(1));
        }
        out.insert(path, prober);
    }
    Value::Object(out)
}

/// Requests and limits by value (millicores, bytes), not by spelling.
fn resources_meaning(resources: Option<&Value>) -> Value {
    let mut out = Map::new();
    for part in ["requests", "limits"] {
        let Some(map) = resources.and_then(|r| r.get(part)).and_then(Value::as_object) else { continue };
        let values: Map<String, Value> = map
            .iter()
            .map(|(resource, q)| {
                let text = q.as_str().map(str::to_owned).unwrap_or_else(|| q.to_string());
                let value =
                    Quantity::parse(&text).ok().and_then(|q| q.to_millis()).map(|m| json!(m.to_string()));
                (resource.clone(), value.unwrap_or(json!(format!("invalid {text}"))))
            })
            .collect();
        if !values.is_empty() {
            out.insert(part.to_owned(), Value::Object(values));
        }
    }
    Value::Object(out)
}

/// A resource whose request is above its limit, which Kubernetes refuses.
fn request_above_limit(resources: &Option<Value>) -> Option<String> {
    let resources = resources.as_ref()?;
    let millis = |part: &str, name: &str| {
        resources
            .get(part)?
            .get(name)?
            .as_str()
            .and_then(|t| Quantity::parse(t).ok())
            .and_then(|q| q.to_millis())
    };
    ["cpu", "memory"].into_iter().find_map(|name| match (millis("requests", name), millis("limits", name)) {
        (Some(r), Some(l)) if r > l => Some(format!("{name} request above its limit: {resources}")),
        _ => None,
    })
}
