//! The cluster, as `trellis install`, `uninstall` and `check` reach it: a kube-rs client from the
//! user's kubeconfig (or the pod's service account), every call bounded in time, API errors
//! turned into sentences, and the REST path of each kind the chart renders, from a fixed table
//! (no discovery round trips; discovery only for a kind the table does not know).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::discovery::Scope;
use tokio::time::Instant;

/// Where the cluster is: the flags every cluster command shares.
#[derive(clap::Args, Clone, Debug)]
pub struct KubeArgs {
    /// The kubeconfig file. Default: $KUBECONFIG, then ~/.kube/config, then the pod's service
    /// account when run in a cluster.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of the current one.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// A client and the address it talks to, for messages.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub server: String,
    /// What the client was built from, for a client of different settings.
    pub config: Config,
}

/// How long one request may take at most, whatever the overall deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads the configuration and builds the client; contacts nothing yet.
pub async fn connect(args: &KubeArgs, timeout: Duration) -> Result<Cluster, String> {
    let options = KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {}", path.display(), chain(&e)))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("the kubeconfig {}: {}", path.display(), chain(&e)))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("the kubeconfig ($KUBECONFIG or ~/.kube/config): {}", chain(&e)))?,
        None => Config::infer().await.map_err(|e| {
            format!(
                "no Kubernetes configuration: {} (set KUBECONFIG or --kubeconfig, or run in a pod)",
                chain(&e)
            )
        })?,
    };
    // A request's own timeouts end after the caller's deadline when that is short, so that the
    // caller's "no answer within <timeout>" is what the user reads.
    let request_timeout = (timeout + Duration::from_secs(1)).min(REQUEST_TIMEOUT);
    config.connect_timeout = Some(request_timeout.min(CONNECT_TIMEOUT));
    config.read_timeout = Some(request_timeout);
    config.write_timeout = Some(request_timeout);
    let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
    let client = Client::try_from(config.clone())
        .map_err(|e| format!("cannot build a client for {server}: {}", describe(&e)))?;
    Ok(Cluster { client, server, config })
}

impl Cluster {
    /// A client that does not retry 429, 503 and 504 itself: for a call whose 503 is an answer
    /// (a service proxy with no endpoint), not the API server being busy.
    pub fn without_retries(&self) -> Result<Client, String> {
        let mut config = self.config.clone();
        config.default_retry = false;
        Client::try_from(config)
            .map_err(|e| format!("cannot build a client for {}: {}", self.server, describe(&e)))
    }
}

/// Runs one call to the API server, bounded by `deadline`.
pub async fn within<T>(
    deadline: Instant,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(_) => Err(ApiError::TimedOut),
    }
}

/// What went wrong with one call, kept apart so that callers can tell "not found" and
/// "forbidden" from the rest.
#[derive(Debug)]
pub enum ApiError {
    /// The API server answered with an error status.
    Status { code: u16, reason: String, message: String },
    /// No answer: connection refused, TLS, DNS, a read timeout...
    Transport(String),
    /// The overall deadline passed first.
    TimedOut,
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { code: 404, .. })
    }

    pub fn is_forbidden(&self) -> bool {
        matches!(self, ApiError::Status { code: 403, .. })
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> ApiError {
        match e {
            kube::Error::Api(status) => ApiError::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            other => ApiError::Transport(describe(&other)),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status { code, reason, message } if message.is_empty() => write!(f, "{code} {reason}"),
            ApiError::Status { code, reason, message } => write!(f, "{message} ({code} {reason})"),
            ApiError::Transport(message) => f.write_str(message),
            ApiError::TimedOut => f.write_str("no answer before the deadline"),
        }
    }
}

/// A kube error as one line: its message and the causes it wraps, without repeats.
pub fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(status) = e {
        return format!("{} ({} {})", status.message, status.code, status.reason);
    }
    chain(e)
}

/// An error and its sources, `a: b: c`, leaving out a source already quoted by the one before.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// A kind as the API server serves it.
#[derive(Clone, Debug)]
pub struct KindInfo {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// The built-in kinds a chart may render or `check` reads: `(apiVersion, kind, plural,
/// namespaced)`.
const BUILT_IN: &[(&str, &str, &str, bool)] = &[
    ("v1", "Namespace", "namespaces", false),
    ("v1", "Node", "nodes", false),
    ("v1", "Pod", "pods", true),
    ("v1", "Service", "services", true),
    ("v1", "ServiceAccount", "serviceaccounts", true),
    ("v1", "ConfigMap", "configmaps", true),
    ("v1", "Secret", "secrets", true),
    ("v1", "Endpoints", "endpoints", true),
    ("v1", "ResourceQuota", "resourcequotas", true),
    ("v1", "LimitRange", "limitranges", true),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
    ("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", true),
    ("apps/v1", "Deployment", "deployments", true),
    ("apps/v1", "DaemonSet", "daemonsets", true),
    ("apps/v1", "StatefulSet", "statefulsets", true),
    ("apps/v1", "ReplicaSet", "replicasets", true),
    ("batch/v1", "Job", "jobs", true),
    ("batch/v1", "CronJob", "cronjobs", true),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", true),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", true),
    ("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", false),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", false),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", false),
    ("rbac.authorization.k8s.io/v1", "Role", "roles", true),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", true),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    ),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", false),
];

/// `group/version` (or `version` for the core group) as (group, version).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// The kind from the fixed table, or from the Istio CRDs Trellis generates.
pub fn known_kind(api_version: &str, kind: &str) -> Option<KindInfo> {
    let (group, version) = split_api_version(api_version);
    let gvk = GroupVersionKind::gvk(group, version, kind);
    if let Some((_, _, plural, namespaced)) =
        BUILT_IN.iter().find(|(av, k, _, _)| *k == kind && split_api_version(av).0 == group)
    {
        return Some(KindInfo {
            resource: ApiResource::from_gvk_with_plural(&gvk, plural),
            namespaced: *namespaced,
        });
    }
    trellis_api::crds::all().into_iter().find_map(|crd| {
        let spec = crd.spec;
        (spec.group == group && spec.names.kind == kind && spec.versions.iter().any(|v| v.name == version))
            .then(|| KindInfo {
                resource: ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural),
                namespaced: spec.scope == "Namespaced",
            })
    })
}

/// Every kind of the fixed table and of the Istio CRDs (at their storage version): where
/// objects an install made may be.
pub fn all_known_kinds() -> Vec<KindInfo> {
    let mut kinds: Vec<KindInfo> =
        BUILT_IN.iter().filter_map(|(api_version, kind, _, _)| known_kind(api_version, kind)).collect();
    for crd in trellis_api::crds::all() {
        if let Some(version) = crd.spec.versions.iter().find(|v| v.storage) {
            let api_version = format!("{}/{}", crd.spec.group, version.name);
            kinds.extend(known_kind(&api_version, &crd.spec.names.kind));
        }
    }
    kinds
}

/// The kind from the table, else from the API server's discovery.
pub async fn resolve_kind(
    cluster: &Cluster,
    api_version: &str,
    kind: &str,
    deadline: Instant,
) -> Result<KindInfo, String> {
    if let Some(info) = known_kind(api_version, kind) {
        return Ok(info);
    }
    let (group, version) = split_api_version(api_version);
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = within(deadline, kube::discovery::pinned_kind(&cluster.client, &gvk))
        .await
        .map_err(|e| format!("the API server does not serve {kind} in {api_version}: {e}"))?;
    Ok(KindInfo { resource, namespaced: capabilities.scope == Scope::Namespaced })
}

/// The API of one kind: in `namespace` for a namespaced kind (every namespace when `None`).
pub fn api(cluster: &Cluster, kind: &KindInfo, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) if kind.namespaced => Api::namespaced_with(cluster.client.clone(), ns, &kind.resource),
        _ => Api::all_with(cluster.client.clone(), &kind.resource),
    }
}

/// A duration as the user writes it: `90s`, `5m`, `1h30m`, `2m30s`, or plain seconds (`300`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let input = text.trim();
    let bad = || format!("{text:?} is not a duration (e.g. 90s, 5m, 1h30m)");
    if input.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = input.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in input.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let value: u64 = number.parse().map_err(|_| bad())?;
        total = value.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration for messages: `5m`, `1m30s`, `45s`, `1.5s`.
pub fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 && secs < 60 {
        return format!("{}s", d.as_secs_f64());
    }
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, secs) in
            [("300", 300), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("2m30s", 150), ("0s", 0)]
        {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
        for bad in ["", "5x", "m", "5m3", "-1s", "1.5m", "99999999999999999999h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert_eq!(show_duration(Duration::from_secs(300)), "5m");
        assert_eq!(show_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn kinds_from_the_table_and_the_crds() {
        let deployment = known_kind("apps/v1", "Deployment").unwrap();
        assert_eq!((deployment.resource.plural.as_str(), deployment.namespaced), ("deployments", true));
        let webhook = known_kind("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration").unwrap();
        assert!(!webhook.namespaced);
        let vs = known_kind("networking.istio.io/v1beta1", "VirtualService").unwrap();
        assert_eq!((vs.resource.plural.as_str(), vs.namespaced), ("virtualservices", true));
        assert_eq!(vs.resource.api_version, "networking.istio.io/v1beta1");
        assert!(known_kind("example.com/v1", "Widget").is_none());
        assert!(known_kind("networking.istio.io/v9", "VirtualService").is_none());
        assert!(all_known_kinds().iter().any(|k| k.resource.kind == "PeerAuthentication"));
    }
}
