//! The checks themselves: each reads what it needs from the cluster and concludes with
//! `evaluate`. A check that cannot read (forbidden, timed out) fails and says so; checks that
//! depend on something missing (the API server, the namespace) are skipped with the reason.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, ListParams, PostParams};
use serde_json::Value;
use tokio::time::Instant;

use super::Args;
use super::evaluate::{self, some_of};
use super::report::Check;
use crate::install::cluster::{self, ApiError, Cluster, api, known_kind, within};
use crate::install::plan::ObjectRef;
use crate::install::readiness;
use crate::proxy_status::fetch;

const API: &str = "kubernetes-api";
const PRE: &str = "pre-install";
const CRDS: &str = "trellis-crds";
const CONTROL_PLANE: &str = "trellis-control-plane";
const WEBHOOK: &str = "trellis-webhook";
const IDENTITY: &str = "trellis-identity";
const CNI: &str = "trellis-cni";
const DATA_PLANE: &str = "trellis-data-plane";

const TRELLISD: &str = "trellisd";
const INJECTOR: &str = "trellis-injector";
const WEBHOOK_CONFIG: &str = "trellis-sidecar-injector";
const CNI_DAEMON_SET: &str = "trellis-cni-node";
const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";
const ROOT_KEY: &str = "root-cert.pem";
const MONITORING_PORT: u16 = 15014;
/// How long trellisd's sync report may take, within the overall deadline.
const SYNCZ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The root's remaining life below which `check` warns.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// What every check needs.
struct Context {
    cluster: Cluster,
    namespace: String,
    deadline: Instant,
    now: i64,
}

impl Context {
    async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let info = known(api_version, kind)?;
        let object = within(self.deadline, api(&self.cluster, &info, Some(namespace)).get_opt(name)).await?;
        Ok(object.map(|o| serde_json::to_value(o).unwrap_or(Value::Null)))
    }

    async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Vec<Value>, ApiError> {
        let info = known(api_version, kind)?;
        let params = match labels {
            Some(selector) => ListParams::default().labels(selector),
            None => ListParams::default(),
        };
        let list = within(self.deadline, api(&self.cluster, &info, namespace).list(&params)).await?;
        Ok(list.items.iter().map(|o| serde_json::to_value(o).unwrap_or(Value::Null)).collect())
    }
}

fn known(api_version: &str, kind: &str) -> Result<cluster::KindInfo, ApiError> {
    known_kind(api_version, kind)
        .ok_or_else(|| ApiError::Transport(format!("{kind} in {api_version} is not a known kind")))
}

/// A failure to read, as the detail of a failed check.
fn unreadable(what: &str, e: &ApiError) -> String {
    format!("cannot read {what}: {e}")
}

pub async fn run(args: &Args) -> Vec<Check> {
    let deadline = Instant::now() + args.timeout;
    let mut checks = Vec::new();
    let cluster = match cluster::connect(&args.kube, args.timeout).await {
        Ok(cluster) => {
            checks.push(Check::passed(API, "can initialize the client", cluster.server.clone()));
            cluster
        }
        Err(e) => {
            checks.push(Check::failed(
                API,
                "can initialize the client",
                e,
                "point KUBECONFIG or --kubeconfig at the cluster's kubeconfig (and --context)",
            ));
            return checks;
        }
    };
    let version = match within(deadline, cluster.client.apiserver_version()).await {
        Ok(info) => {
            checks.push(Check::passed(API, "can query the Kubernetes API", info.git_version.clone()));
            info
        }
        Err(e) => {
            let detail = match e {
                ApiError::TimedOut => format!("no answer from {} within the --timeout", cluster.server),
                e => format!("{}: {e}", cluster.server),
            };
            checks.push(Check::failed(
                API,
                "can query the Kubernetes API",
                detail,
                "is the API server up and reachable from here? (`kubectl version` tries the same)",
            ));
            return checks;
        }
    };
    checks.push(kubernetes_version(&version.major, &version.minor));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let context = Context { cluster, namespace: args.namespace.clone(), deadline, now };
    if args.pre {
        pre_install(&context, &mut checks).await;
    } else {
        installed(&context, &mut checks).await;
    }
    checks
}

fn kubernetes_version(major: &str, minor: &str) -> Check {
    const WHAT: &str = "is running a supported Kubernetes version";
    match evaluate::kubernetes_version(major, minor) {
        Ok(v) if v >= evaluate::MIN_KUBERNETES => Check::passed(API, WHAT, format!("{}.{}", v.0, v.1)),
        Ok(v) => Check::failed(
            API,
            WHAT,
            format!(
                "Kubernetes {}.{} is older than {}.{}",
                v.0,
                v.1,
                evaluate::MIN_KUBERNETES.0,
                evaluate::MIN_KUBERNETES.1
            ),
            "Trellis injects native sidecars, on by default from Kubernetes 1.29; upgrade the cluster",
        ),
        Err(e) => Check::warning(API, WHAT, e, "cannot tell; Trellis needs Kubernetes 1.29 or newer"),
    }
}

// ---- before install ----

async fn pre_install(cx: &Context, checks: &mut Vec<Check>) {
    match cx.get("v1", "Namespace", "", &cx.namespace).await {
        Ok(None) => checks.push(Check::passed(
            PRE,
            "the control plane namespace does not exist yet",
            cx.namespace.clone(),
        )),
        Ok(Some(_)) => checks.push(Check::warning(
            PRE,
            "the control plane namespace does not exist yet",
            format!("the namespace {} exists", cx.namespace),
            "install uses it as it is; uninstall --purge will not delete a namespace install did not create",
        )),
        Err(e) => checks.push(Check::failed(
            PRE,
            "the control plane namespace does not exist yet",
            unreadable("namespaces", &e),
            "",
        )),
    }

    let webhooks =
        cx.list("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None, None).await;
    match &webhooks {
        Ok(list) => {
            let trellis = list.iter().find(|w| w["metadata"]["name"] == WEBHOOK_CONFIG);
            match trellis {
                None => checks.push(Check::passed(PRE, "Trellis is not installed yet", "")),
                Some(w) => {
                    let ns = w["webhooks"][0]["clientConfig"]["service"]["namespace"].as_str().unwrap_or("?");
                    checks.push(Check::failed(
                        PRE,
                        "Trellis is not installed yet",
                        format!("Trellis is installed: MutatingWebhookConfiguration {WEBHOOK_CONFIG} calls the injector in {ns}"),
                        format!("`trellis check -n {ns}` checks it; `trellis install -n {ns}` upgrades it"),
                    ));
                }
            }
            let istio: Vec<String> = list
                .iter()
                .filter_map(|w| w["metadata"]["name"].as_str())
                .filter(|name| {
                    name.starts_with("istio-sidecar-injector") || name.starts_with("istio-revision-tag")
                })
                .map(|name| format!("MutatingWebhookConfiguration {name}"))
                .collect();
            let istiod = match cx.list("apps/v1", "Deployment", None, Some("app=istiod")).await {
                Ok(list) => list.iter().map(|d| format!("Deployment {}", reference(d))).collect(),
                Err(_) => Vec::new(),
            };
            let found: Vec<String> = istio.into_iter().chain(istiod).collect();
            if found.is_empty() {
                checks.push(Check::passed(PRE, "no Istio control plane is installed", ""));
            } else {
                checks.push(Check::failed(
                    PRE,
                    "no Istio control plane is installed",
                    format!("found {}", some_of(&found, 5)),
                    "two injectors would both act on istio-injection=enabled namespaces; uninstall Istio first (istioctl uninstall --purge)",
                ));
            }
        }
        Err(e) => {
            let detail = unreadable("MutatingWebhookConfigurations", e);
            checks.push(Check::failed(PRE, "Trellis is not installed yet", detail.clone(), ""));
            checks.push(Check::failed(PRE, "no Istio control plane is installed", detail, ""));
        }
    }
    permissions(cx, checks).await;
}

/// One check per kind the chart renders: may the user create and patch it (server-side apply
/// needs both)?
async fn permissions(cx: &Context, checks: &mut Vec<Check>) {
    let plan = match crate::install::render_plan(&cx.namespace, "trellis", &[], &[]) {
        Ok(plan) => plan,
        Err(e) => {
            checks.push(Check::failed(PRE, "can render the chart", e, ""));
            return;
        }
    };
    let mut seen = BTreeSet::new();
    let reviews: Api<SelfSubjectAccessReview> = Api::all(cx.cluster.client.clone());
    for desired in plan.all() {
        let reference = &desired.reference;
        let Some(info) = known_kind(&reference.api_version, &reference.kind) else { continue };
        let namespace = if info.namespaced { Some(reference.namespace.clone()) } else { None };
        if !seen.insert((info.resource.group.clone(), info.resource.plural.clone(), namespace.clone())) {
            continue;
        }
        let description = format!("can create {}s", reference.kind);
        let mut denied = Vec::new();
        let mut error = None;
        for verb in ["create", "patch"] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.to_owned()),
                        group: Some(info.resource.group.clone()),
                        resource: Some(info.resource.plural.clone()),
                        namespace: namespace.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            match within(cx.deadline, reviews.create(&PostParams::default(), &review)).await {
                Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
                Ok(_) => denied.push(verb),
                Err(e) => error = Some(e),
            }
        }
        let scope = match &namespace {
            Some(ns) => format!("in the namespace {ns}"),
            None => "cluster-wide".to_owned(),
        };
        let group =
            if info.resource.group.is_empty() { "core".to_owned() } else { info.resource.group.clone() };
        checks.push(match (error, denied.is_empty()) {
            (Some(e), _) => Check::failed(PRE, &description, format!("cannot ask the API server (SelfSubjectAccessReview): {e}"), ""),
            (None, true) => Check::passed(PRE, &description, scope),
            (None, false) => Check::failed(
                PRE,
                &description,
                format!("not allowed to {} {} ({group} API group) {scope}", denied.join(" or "), info.resource.plural),
                "install as a cluster administrator, or grant these verbs (kubectl auth can-i shows the same)",
            ),
        });
    }
}

/// `pod` or `pods`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 { word.to_owned() } else { format!("{word}s") }
}

fn reference(object: &Value) -> String {
    match ObjectRef::of(object) {
        Ok(r) if r.namespace.is_empty() => r.name,
        Ok(r) => format!("{}/{}", r.namespace, r.name),
        Err(_) => "(unnamed)".to_owned(),
    }
}

// ---- an installed control plane ----

async fn installed(cx: &Context, checks: &mut Vec<Check>) {
    crds(cx, checks).await;
    let namespace_exists = control_plane(cx, checks).await;
    webhook(cx, checks, namespace_exists).await;
    if namespace_exists {
        identity(cx, checks).await;
        cni(cx, checks).await;
        proxies_synced(cx, checks).await;
    } else {
        let reason = format!("the namespace {} does not exist", cx.namespace);
        for (category, what) in [
            (IDENTITY, "the CA's root certificate is published"),
            (CNI, "the CNI agent is ready on every node"),
            (DATA_PLANE, "every connected proxy is synced"),
        ] {
            checks.push(Check::skipped(category, what, reason.clone()));
        }
    }
    data_plane_pods(cx, checks).await;
}

async fn crds(cx: &Context, checks: &mut Vec<Check>) {
    let mut missing = Vec::new();
    let mut drifted = Vec::new();
    let mut errors = Vec::new();
    for generated in trellis_api::crds::all() {
        let name = generated.metadata.name.clone().unwrap_or_default();
        match cx.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", &name).await {
            Ok(None) => missing.push(name),
            Ok(Some(installed)) => {
                let drift = evaluate::crd_drift(&installed, &generated);
                if !drift.is_empty() {
                    drifted.push(format!("{name}: {}", drift.join("; ")));
                }
            }
            Err(e) => errors.push(unreadable(&format!("CRD {name}"), &e)),
        }
    }
    const PRESENT: &str = "the Istio CRDs are installed";
    const CURRENT: &str = "the Istio CRDs are current";
    if !errors.is_empty() {
        checks.push(Check::failed(CRDS, PRESENT, errors.join("\n"), ""));
        return;
    }
    let total = trellis_api::crds::all().len();
    if missing.is_empty() {
        checks.push(Check::passed(CRDS, PRESENT, format!("{total} CRDs")));
    } else {
        checks.push(Check::failed(
            CRDS,
            PRESENT,
            format!("missing: {}", missing.join(", ")),
            "`trellis install` installs them",
        ));
    }
    if drifted.is_empty() {
        checks.push(Check::passed(CRDS, CURRENT, ""));
    } else {
        checks.push(Check::failed(
            CRDS,
            CURRENT,
            drifted.join("\n"),
            "they differ from this trellis version's; `trellis install` (an upgrade) updates them",
        ));
    }
}

/// The namespace and the two Deployments; false when the namespace is missing.
async fn control_plane(cx: &Context, checks: &mut Vec<Check>) -> bool {
    const NAMESPACE: &str = "the control plane namespace exists";
    match cx.get("v1", "Namespace", "", &cx.namespace).await {
        Ok(Some(_)) => checks.push(Check::passed(CONTROL_PLANE, NAMESPACE, cx.namespace.clone())),
        Ok(None) => {
            checks.push(Check::failed(
                CONTROL_PLANE,
                NAMESPACE,
                format!("no namespace {}", cx.namespace),
                "is Trellis installed? `trellis install -n NAMESPACE`; or pass the namespace it is in with -n",
            ));
            for what in ["trellisd is ready", "the sidecar injector is ready"] {
                checks.push(Check::skipped(
                    CONTROL_PLANE,
                    what,
                    format!("the namespace {} does not exist", cx.namespace),
                ));
            }
            return false;
        }
        Err(e) => checks.push(Check::failed(CONTROL_PLANE, NAMESPACE, unreadable("namespaces", &e), "")),
    }
    checks.push(deployment(cx, TRELLISD, "trellisd is ready").await);
    checks.push(deployment(cx, INJECTOR, "the sidecar injector is ready").await);
    true
}

async fn deployment(cx: &Context, name: &str, description: &str) -> Check {
    let ns = &cx.namespace;
    let object = match cx.get("apps/v1", "Deployment", ns, name).await {
        Ok(Some(object)) => object,
        Ok(None) => {
            return Check::failed(
                CONTROL_PLANE,
                description,
                format!("no Deployment {ns}/{name}"),
                "`trellis install` creates it",
            );
        }
        Err(e) => {
            return Check::failed(
                CONTROL_PLANE,
                description,
                unreadable(&format!("Deployment {ns}/{name}"), &e),
                "",
            );
        }
    };
    match readiness::deployment(&object) {
        Ok(detail) => Check::passed(CONTROL_PLANE, description, detail),
        Err(why) => {
            let mut detail = format!("Deployment {ns}/{name}: {why}");
            if let Some(selector) = readiness::pod_selector(&object) {
                match cx.list("v1", "Pod", Some(ns), Some(&selector)).await {
                    Ok(pods) if pods.is_empty() => detail.push_str("\nno pod yet"),
                    Ok(pods) => {
                        for problem in readiness::pod_problems(&pods) {
                            detail.push_str(&format!("\npod {problem}"));
                        }
                    }
                    Err(e) => detail.push_str(&format!("\n{}", unreadable("its pods", &e))),
                }
            }
            Check::failed(
                CONTROL_PLANE,
                description,
                detail,
                format!(
                    "`kubectl -n {ns} describe deployment {name}` and `kubectl -n {ns} logs deploy/{name}` say more"
                ),
            )
        }
    }
}

async fn webhook(cx: &Context, checks: &mut Vec<Check>, namespace_exists: bool) {
    const CONFIGURED: &str = "the injection webhook is configured";
    const CA_BUNDLE: &str = "the webhook has a valid caBundle";
    const ENDPOINTS: &str = "the injector Service has ready endpoints";
    let config = match cx
        .get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", WEBHOOK_CONFIG)
        .await
    {
        Ok(Some(config)) => Some(config),
        Ok(None) => {
            checks.push(Check::failed(
                WEBHOOK,
                CONFIGURED,
                format!("no MutatingWebhookConfiguration {WEBHOOK_CONFIG}"),
                "`trellis install` creates it; without it no pod is injected",
            ));
            checks.push(Check::skipped(
                WEBHOOK,
                CA_BUNDLE,
                format!("no MutatingWebhookConfiguration {WEBHOOK_CONFIG}"),
            ));
            None
        }
        Err(e) => {
            checks.push(Check::failed(
                WEBHOOK,
                CONFIGURED,
                unreadable("MutatingWebhookConfigurations", &e),
                "",
            ));
            None
        }
    };
    if let Some(config) = config {
        let problems = evaluate::webhook_targets(&config, &cx.namespace, INJECTOR);
        if problems.is_empty() {
            checks.push(Check::passed(WEBHOOK, CONFIGURED, format!("calls {}/{INJECTOR}", cx.namespace)));
        } else {
            checks.push(Check::failed(
                WEBHOOK,
                CONFIGURED,
                problems.join("\n"),
                "is the control plane in another namespace? pass it with -n; else `trellis install` puts the webhook right",
            ));
        }
        checks.push(match evaluate::webhook_ca_bundles(&config) {
            Err(e) => Check::failed(
                WEBHOOK,
                CA_BUNDLE,
                e,
                format!("the injector writes the caBundle when it starts (self-managed certificate); see `kubectl -n {} logs deploy/{INJECTOR}`", cx.namespace),
            ),
            Ok(bundles) => {
                let certs: Vec<_> = bundles.iter().flat_map(|(_, c)| c.clone()).collect();
                let invalid = evaluate::invalid_now(&certs, cx.now);
                match certs.iter().min_by_key(|c| c.not_after) {
                    Some(first) if invalid.is_empty() => {
                        Check::passed(WEBHOOK, CA_BUNDLE, format!("{}, expires {}", first.subject, first.expires))
                    }
                    _ => Check::failed(
                        WEBHOOK,
                        CA_BUNDLE,
                        invalid.join("\n"),
                        "the API server cannot verify the injector with it; restart the injector so that it writes a new one",
                    ),
                }
            }
        });
    }
    if !namespace_exists {
        checks.push(Check::skipped(
            WEBHOOK,
            ENDPOINTS,
            format!("the namespace {} does not exist", cx.namespace),
        ));
        return;
    }
    let selector = format!("kubernetes.io/service-name={INJECTOR}");
    let service = cx.get("v1", "Service", &cx.namespace, INJECTOR).await;
    let slices = cx.list("discovery.k8s.io/v1", "EndpointSlice", Some(&cx.namespace), Some(&selector)).await;
    checks.push(match (service, slices) {
        (Err(e), _) | (_, Err(e)) => Check::failed(WEBHOOK, ENDPOINTS, unreadable("the injector's Service", &e), ""),
        (Ok(None), _) => Check::failed(
            WEBHOOK,
            ENDPOINTS,
            format!("no Service {}/{INJECTOR}", cx.namespace),
            "`trellis install` creates it; the API server calls the webhook through it",
        ),
        (Ok(Some(_)), Ok(slices)) => match evaluate::ready_endpoints(&slices) {
            0 => Check::failed(
                WEBHOOK,
                ENDPOINTS,
                format!("the Service {}/{INJECTOR} has no ready endpoint: the API server cannot reach the webhook", cx.namespace),
                "pods of injection-enabled namespaces cannot be created meanwhile (failurePolicy Fail); see why the injector is not ready above",
            ),
            n => Check::passed(WEBHOOK, ENDPOINTS, format!("{n} ready")),
        },
    });
}

async fn identity(cx: &Context, checks: &mut Vec<Check>) {
    const PUBLISHED: &str = "the CA's root certificate is published";
    const EXPIRY: &str = "the root certificate is not about to expire";
    let ns = &cx.namespace;
    let config_map = match cx.get("v1", "ConfigMap", ns, ROOT_CONFIG_MAP).await {
        Ok(Some(map)) => map,
        Ok(None) => {
            checks.push(Check::failed(
                IDENTITY,
                PUBLISHED,
                format!("no ConfigMap {ns}/{ROOT_CONFIG_MAP}"),
                format!(
                    "trellisd publishes it once its CA is up; see `kubectl -n {ns} logs deploy/{TRELLISD}`"
                ),
            ));
            checks.push(Check::skipped(IDENTITY, EXPIRY, "no root certificate to read"));
            return;
        }
        Err(e) => {
            checks.push(Check::failed(
                IDENTITY,
                PUBLISHED,
                unreadable(&format!("ConfigMap {ns}/{ROOT_CONFIG_MAP}"), &e),
                "",
            ));
            return;
        }
    };
    let Some(pem) = config_map["data"][ROOT_KEY].as_str() else {
        checks.push(Check::failed(
            IDENTITY,
            PUBLISHED,
            format!("the ConfigMap {ns}/{ROOT_CONFIG_MAP} has no key {ROOT_KEY}"),
            "trellisd rewrites it; was it edited by hand?",
        ));
        return;
    };
    let certs = match evaluate::certificates(pem.as_bytes()) {
        Ok(certs) => certs,
        Err(e) => {
            checks.push(Check::failed(IDENTITY, PUBLISHED, format!("{ROOT_CONFIG_MAP} {ROOT_KEY}: {e}"), ""));
            return;
        }
    };
    let roots: Vec<&str> = certs.iter().map(|c| c.subject.as_str()).collect();
    checks.push(Check::passed(IDENTITY, PUBLISHED, roots.join(", ")));
    let Some(first) = certs.iter().min_by_key(|c| c.not_after) else { return };
    let days = evaluate::days_left(first.not_after, cx.now);
    let renew =
        "plug in a new root (the cacerts Secret) before it expires: proxies stop trusting each other then";
    checks.push(if first.not_after <= cx.now {
        Check::failed(IDENTITY, EXPIRY, format!("{} expired on {}", first.subject, first.expires), renew)
    } else if days < EXPIRY_WARNING_DAYS {
        Check::warning(
            IDENTITY,
            EXPIRY,
            format!("{} expires in {days} days ({})", first.subject, first.expires),
            renew,
        )
    } else {
        Check::passed(IDENTITY, EXPIRY, format!("expires in {days} days, {}", first.expires))
    });
}

async fn cni(cx: &Context, checks: &mut Vec<Check>) {
    const READY: &str = "the CNI agent is ready on every node";
    let ns = &cx.namespace;
    let daemon_set = match cx.get("apps/v1", "DaemonSet", ns, CNI_DAEMON_SET).await {
        Ok(Some(ds)) => ds,
        Ok(None) => {
            checks.push(Check::skipped(
                CNI,
                READY,
                format!("CNI mode is off: no DaemonSet {ns}/{CNI_DAEMON_SET}"),
            ));
            return;
        }
        Err(e) => {
            checks.push(Check::failed(
                CNI,
                READY,
                unreadable(&format!("DaemonSet {ns}/{CNI_DAEMON_SET}"), &e),
                "",
            ));
            return;
        }
    };
    let hint = format!(
        "injected pods on a node without a ready agent get no redirect and stop; `kubectl -n {ns} describe daemonset {CNI_DAEMON_SET}`"
    );
    match readiness::daemon_set(&daemon_set) {
        Err(why) => {
            checks.push(Check::failed(CNI, READY, format!("DaemonSet {ns}/{CNI_DAEMON_SET}: {why}"), hint))
        }
        Ok(detail) => {
            let desired = daemon_set["status"]["desiredNumberScheduled"].as_i64().unwrap_or(0);
            let nodes =
                cx.list("v1", "Node", None, Some("kubernetes.io/os=linux")).await.map(|n| n.len() as i64);
            match nodes {
                Ok(nodes) if nodes > desired => checks.push(Check::warning(
                    CNI,
                    READY,
                    format!("runs on {desired} of {nodes} Linux nodes"),
                    format!("{hint}; check the nodes' taints against cni.tolerations"),
                )),
                _ => checks.push(Check::passed(CNI, READY, detail)),
            }
        }
    }
}

/// Both of the control plane's views: rejected config and proxies' sync, read from trellisd's
/// /debug/syncz through the API server's service proxy (no port-forward needed).
async fn proxies_synced(cx: &Context, checks: &mut Vec<Check>) {
    const ACCEPTED: &str = "the control plane accepts every Istio resource";
    const SYNCED: &str = "every connected proxy is synced";
    let ns = &cx.namespace;
    let path = format!("/api/v1/namespaces/{ns}/services/{TRELLISD}:{MONITORING_PORT}/proxy/debug/syncz");
    let request = match http::Request::get(&path).header("accept", "application/json").body(Vec::new()) {
        Ok(request) => request,
        Err(e) => {
            checks.push(Check::skipped(DATA_PLANE, SYNCED, format!("cannot build the request: {e}")));
            return;
        }
    };
    let deadline = cx.deadline.min(Instant::now() + SYNCZ_TIMEOUT);
    let answer = match cx.cluster.without_retries() {
        Ok(client) => within(deadline, client.request_text(request)).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let syncz = match answer.and_then(|body| fetch::parse(body.as_bytes())) {
        Ok(syncz) => syncz,
        Err(e) => {
            let reason = format!(
                "cannot read trellisd's /debug/syncz through the API server's service proxy: {e}; `kubectl -n {ns} port-forward deploy/{TRELLISD} {MONITORING_PORT}` then `trellis proxy-status` shows it"
            );
            checks.push(Check::skipped(DATA_PLANE, ACCEPTED, reason.clone()));
            checks.push(Check::skipped(DATA_PLANE, SYNCED, reason));
            return;
        }
    };
    checks.push(if syncz.rejected_config.is_empty() {
        Check::passed(DATA_PLANE, ACCEPTED, "")
    } else {
        Check::failed(
            DATA_PLANE,
            ACCEPTED,
            format!("rejected: {}", some_of(&syncz.rejected_config, 5)),
            "the last good version of each is in force; `trellis validate` the resources named",
        )
    });
    let unsynced = evaluate::unsynced(&syncz);
    let total = syncz.proxies.len();
    checks.push(if unsynced.is_empty() {
        Check::passed(DATA_PLANE, SYNCED, format!("{total} connected"))
    } else {
        Check::failed(
            DATA_PLANE,
            SYNCED,
            format!("{} of {total} not synced: {}", unsynced.len(), some_of(&unsynced, 5)),
            "STALE is normal for a moment after a change; NACKED means the proxy rejected its config: `trellis proxy-status PROXY` says why",
        )
    });
}

/// Sidecar versions, and pods of injection-enabled namespaces without a sidecar.
async fn data_plane_pods(cx: &Context, checks: &mut Vec<Check>) {
    const VERSIONS: &str = "proxies run the control plane's version";
    const INJECTED: &str = "pods of injection-enabled namespaces have a sidecar";
    let pods = match cx.list("v1", "Pod", None, None).await {
        Ok(pods) => pods,
        Err(e) => {
            checks.push(Check::failed(DATA_PLANE, INJECTED, unreadable("pods", &e), ""));
            return;
        }
    };
    let trellisd_tag = match cx.get("apps/v1", "Deployment", &cx.namespace, TRELLISD).await {
        Ok(Some(d)) => d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .and_then(evaluate::image_tag)
            .map(str::to_owned),
        _ => None,
    };
    let injected = pods.iter().filter(|p| evaluate::has_sidecar(p)).count();
    checks.push(match trellisd_tag {
        None => Check::skipped(
            DATA_PLANE,
            VERSIONS,
            "the version of trellisd is unknown (no Deployment, or its image has no tag)",
        ),
        Some(_) if injected == 0 => Check::skipped(DATA_PLANE, VERSIONS, "no injected pod"),
        Some(tag) => {
            let others = evaluate::other_versions(&pods, &tag);
            if others.is_empty() {
                Check::passed(
                    DATA_PLANE,
                    VERSIONS,
                    format!("{injected} injected {} on {tag}", plural(injected, "pod")),
                )
            } else {
                Check::warning(
                    DATA_PLANE,
                    VERSIONS,
                    format!(
                        "{} of {injected} sidecars are not on {tag}: {}",
                        others.len(),
                        some_of(&others, 5)
                    ),
                    "restart them to get the injector's current proxy (kubectl rollout restart)",
                )
            }
        }
    });
    let namespaces = match cx.list("v1", "Namespace", None, Some("istio-injection=enabled")).await {
        Ok(list) => list,
        Err(e) => {
            checks.push(Check::failed(DATA_PLANE, INJECTED, unreadable("namespaces", &e), ""));
            return;
        }
    };
    let names: Vec<&str> = namespaces.iter().filter_map(|n| n["metadata"]["name"].as_str()).collect();
    let in_mesh: Vec<Value> = pods
        .into_iter()
        .filter(|p| p["metadata"]["namespace"].as_str().is_some_and(|ns| names.contains(&ns)))
        .collect();
    let missing = evaluate::uninjected(&in_mesh);
    checks.push(if missing.is_empty() {
        let namespaces = plural(names.len(), "namespace");
        Check::passed(DATA_PLANE, INJECTED, format!("{} {namespaces} labelled istio-injection=enabled", names.len()))
    } else {
        let namespaces: BTreeSet<&str> = missing.iter().filter_map(|p| p.split('/').next()).collect();
        let restart: Vec<String> =
            namespaces.iter().map(|ns| format!("kubectl -n {ns} rollout restart deployment")).collect();
        Check::failed(
            DATA_PLANE,
            INJECTED,
            format!(
                "{} {} without the {} container: {}",
                missing.len(),
                plural(missing.len(), "pod"),
                evaluate::PROXY_CONTAINER,
                some_of(&missing, 5)
            ),
            format!("they started before injection was enabled (or while the injector was down); restart them: {}", restart.join("; ")),
        )
    });
}
