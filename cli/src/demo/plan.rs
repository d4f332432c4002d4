//! From the demo's files to what to run, before anything runs: each pod injected by the
//! injector's own code, its address (from the WorkloadEntry of the same name), the redirect's
//! flags and the proxy's environment taken from the injected pod, the app's command line, the
//! control plane's address (the mesh config's `discoveryAddress`) and its CA's (port 15012 of
//! the same host), each pod's service account and SPIFFE ID, where the load goes in, which pod
//! a plaintext client outside the mesh tries, which call from inside the mesh an
//! AuthorizationPolicy denies, and the canary edit made halfway. Pure: every problem is found
//! here, named by file and field.
//!
//! Two modes. With network namespaces (root), a pod lives at its WorkloadEntry's address
//! (10.77.0.x) behind a bridge whose address is the control plane's. In explicit mode (no root)
//! every pod gets the loopback address with the same last three bytes (127.77.0.x): its proxy
//! and app listen there, the app calls its proxy directly, and the WorkloadEntries given to the
//! control plane point at each pod's proxy (inbound port) instead of its app.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use trellis_api::check::{UnknownFields, check_text};
use trellis_api::load::split_documents;
use trellis_api::mesh::MeshConfig;
use trellis_api::networking::{DestinationRule, ServiceEntry, VirtualService, WorkloadEntry};
use trellis_api::resource::Resource;
use trellis_api::security::{AuthorizationAction, AuthorizationPolicy, DRY_RUN_ANNOTATION};
use trellis_injector::config::{InjectorConfig, PROXY_CONTAINER, REDIRECT_INIT_CONTAINER};

use super::example::Example;
use super::kubelet::{self, PodFacts};
use super::yaml_edit::{edit_documents, identity};

/// The proxy's ports (Istio's numbers; the injected pods use the defaults).
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const READINESS_PORT: u16 = 15021;
pub const ADMIN_PORT: u16 = 15000;
/// The CA: trellisd's TLS port, on the control plane's host.
pub const CA_PORT: u16 = 15012;
pub const STATS_PORT: u16 = 15090;
/// The demo network's size: the control plane's address and the pods share a /24.
pub const PREFIX_LEN: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Root: network namespaces, the redirect, the proxy as UID 1337.
    Namespaces,
    /// No root: one loopback address per pod; apps call their proxy directly.
    Explicit,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    /// The control plane's address and, with namespaces, the bridge: the pods' gateway.
    pub hub: Ipv4Addr,
    pub xds: SocketAddr,
    /// trellisd's TLS port: its CA (Istio's CreateCertificate) and xDS over TLS.
    pub ca: SocketAddr,
    pub monitoring: SocketAddr,
    pub mesh: String,
    /// The Istio files as the control plane reads them (file name, text).
    pub config: Vec<(String, String)>,
    pub pods: Vec<PodPlan>,
    pub entry: Entry,
    /// Where a plaintext client from outside the mesh knocks (a pod other than the entry).
    pub probe: Option<Probe>,
    /// A call from a pod of the mesh that an ALLOW AuthorizationPolicy leaves out.
    pub denied_call: Option<DeniedCall>,
    pub services: Vec<Service>,
    pub canary: Option<Canary>,
    /// The demo's Zipkin collector, where the mesh config's default tracing provider points.
    pub collector: Option<CollectorPlan>,
    /// What the mesh config asks of the proxies' telemetry, for the summary.
    pub telemetry: Telemetry,
}

/// Where the demo runs its Zipkin collector: the address of the ServiceEntry that the mesh
/// config's default tracing provider names, which must be the demo network's gateway (the
/// control plane's host; loopback in explicit mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorPlan {
    /// The extension provider's name.
    pub provider: String,
    /// Its service (`zipkin.istio-system.svc.cluster.local`).
    pub service: String,
    pub listen: SocketAddr,
    /// The file with the ServiceEntry.
    pub file: String,
}

/// The mesh config's access log and sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    /// `accessLogFile` (`None`: no access logs).
    pub access_log_file: Option<String>,
    /// `TEXT` or `JSON`.
    pub access_log_encoding: String,
    /// `accessLogFormat`, when one is given.
    pub access_log_format: Option<String>,
    /// `defaultConfig.tracing.sampling`, in percent.
    pub sampling_percent: f64,
}

#[derive(Clone, Debug)]
pub struct PodPlan {
    pub name: String,
    pub namespace: String,
    /// The injected pod's labels: the proxy reads them (downward-API file).
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (`default` without one): whom the pod's token names.
    pub service_account: String,
    /// The identity its certificate carries: `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
    pub spiffe_id: String,
    pub ip: Ipv4Addr,
    pub app_port: u16,
    /// The redirect init container's arguments (istio-iptables' flags).
    pub redirect_args: Vec<String>,
    pub proxy_env: Vec<(String, String)>,
    /// Flags beyond what the pod says (explicit mode's listening address and control plane).
    pub proxy_args: Vec<String>,
    /// `trellis demo-app` arguments: the container's, then where to listen and find services.
    pub app_args: Vec<String>,
    pub app_env: Vec<(String, String)>,
}

impl PodPlan {
    pub fn stats(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, STATS_PORT))
    }

    pub fn readiness(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, READINESS_PORT))
    }

    /// The proxy's admin port (`/certs`): on localhost inside the pod, or on the pod's loopback
    /// address in explicit mode.
    pub fn admin(&self, mode: Mode) -> SocketAddr {
        let ip = match mode {
            Mode::Namespaces => Ipv4Addr::LOCALHOST,
            Mode::Explicit => self.ip,
        };
        SocketAddr::V4(SocketAddrV4::new(ip, ADMIN_PORT))
    }

    pub fn app(&self, mode: Mode) -> SocketAddr {
        let ip = match mode {
            // The app listens on every address of its pod; from inside the pod, on localhost,
            // the redirect leaves the connection alone.
            Mode::Namespaces => Ipv4Addr::LOCALHOST,
            Mode::Explicit => self.ip,
        };
        SocketAddr::V4(SocketAddrV4::new(ip, self.app_port))
    }
}

/// Where the demo's load goes in.
#[derive(Clone, Debug)]
pub struct Entry {
    pub pod: String,
    /// The pod's app port (captured inbound), or its proxy's inbound port in explicit mode.
    pub target: SocketAddr,
    /// The Host the load sends: the service's name and port.
    pub authority: String,
}

/// A plaintext client from outside the mesh, calling a pod's inbound port directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub pod: String,
    /// The pod's app port (captured inbound), or its proxy's inbound port in explicit mode.
    pub target: SocketAddr,
    /// The Host it sends: the service's name and port.
    pub authority: String,
    /// For people: `inventory:8080`.
    pub shown: String,
}

/// A call from inside the mesh that an ALLOW AuthorizationPolicy should deny: from a pod whose
/// identity no rule of the policy names, to the service whose pods the policy selects, made
/// through the caller's own proxy as its app would make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeniedCall {
    /// The calling pod.
    pub from: String,
    /// Its identity in Istio's principal form (`cluster.local/ns/shop/sa/inventory`).
    pub principal: String,
    /// The service called (`catalog`).
    pub to: String,
    /// Its pods, whose proxies decide (and count the decision).
    pub to_pods: Vec<String>,
    /// The URL the caller asks for (its host the service's).
    pub url: String,
    /// Where the caller connects: the service's virtual IP and port, from inside its pod
    /// (captured by its proxy); in explicit mode its proxy's outbound port.
    pub via: SocketAddr,
    /// The policy, `namespace/name`, and the file it is in.
    pub policy: String,
    pub file: String,
    /// The policy's namespace and selector (`trellis authz check -n … -l …`).
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    /// The principals its rules allow.
    pub allowed: Vec<String>,
}

impl DeniedCall {
    /// The request's authority: the service's host and port.
    pub fn authority(&self) -> String {
        self.url.parse::<http::Uri>().ok().and_then(|u| Some(u.authority()?.to_string())).unwrap_or_default()
    }

    /// The request's path, as the caller sends it.
    pub fn path(&self) -> String {
        self.url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.path_and_query().map(|p| p.as_str().to_owned()))
            .unwrap_or_else(|| "/".to_owned())
    }
}

/// A service and the pods behind it, for the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub host: String,
    /// The first label of the host (`catalog`).
    pub short: String,
    /// The virtual IP (the ServiceEntry's first IPv4 address) and the first port.
    pub vip: Option<Ipv4Addr>,
    pub port: u16,
    pub pods: Vec<String>,
    pub subsets: Vec<Subset>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub pods: Vec<String>,
}

/// The edit made halfway: a VirtualService's weighted split, evened out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    pub file: String,
    /// `namespace/name`.
    pub virtual_service: String,
    pub service: String,
    pub subsets: Vec<String>,
    pub before: Vec<u32>,
    pub after: Vec<u32>,
    /// The file's text with the new weights.
    pub edited: String,
}

/// The Istio resources, with the file each came from.
#[derive(Default)]
struct Resources {
    service_entries: Vec<(String, ServiceEntry)>,
    workload_entries: Vec<(String, WorkloadEntry)>,
    destination_rules: Vec<DestinationRule>,
    virtual_services: Vec<(String, VirtualService)>,
    authorization_policies: Vec<(String, AuthorizationPolicy)>,
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or("default")
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{}/{}", namespace_of(meta), meta.name.as_deref().unwrap_or_default())
}

/// Whether `labels` has every label of `selector` (an empty selector selects nothing here).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn build(example: &Example, mode: Mode) -> Result<Plan, String> {
    let (mesh, hub_address) = read_mesh(&example.mesh)?;
    let resources = read_istio(&example.istio)?;
    let place = |ip: Ipv4Addr| match mode {
        Mode::Namespaces => ip,
        Mode::Explicit => {
            let [_, b, c, d] = ip.octets();
            Ipv4Addr::new(127, b, c, d)
        }
    };
    let hub = place(*hub_address.ip());
    let xds = SocketAddr::V4(SocketAddrV4::new(hub, hub_address.port()));
    let ca = SocketAddr::V4(SocketAddrV4::new(hub, CA_PORT));
    let monitoring = SocketAddr::V4(SocketAddrV4::new(hub, 15014));
    // Every SPIFFE ID's first part.
    let trust_domain = mesh.trust_domain().to_owned();

    let pods = inject(&example.pods, &mesh)?;
    let mut plans = Vec::new();
    for pod in &pods {
        let plan = plan_pod(pod, &resources, *hub_address.ip(), mode, &place, xds, &trust_domain)?;
        if let Some(other) = plans.iter().find(|p: &&PodPlan| p.ip == plan.ip) {
            return Err(format!("pods {} and {} have the same address {}", other.name, plan.name, plan.ip));
        }
        plans.push(plan);
    }
    let services = services(&resources, &plans);
    let entry = entry(&plans, &resources, mode)?;
    let probe = probe(&plans, &services, &entry, mode);
    let denied_call = denied_call(&plans, &services, &resources, mode, &trust_domain);
    let mut config = example.istio.iter().map(|(f, t)| (format!("istio/{f}"), t.clone())).collect::<Vec<_>>();
    if mode == Mode::Explicit {
        for (file, text) in &mut config {
            *text = point_workload_entries_at_proxies(text, &plans, &resources)
                .map_err(|e| format!("{file}: {e}"))?;
        }
    }
    let collector = collector(&mesh, &resources, *hub_address.ip(), hub)?;
    if mode == Mode::Explicit
        && let Some(c) = &collector
    {
        for (file, text) in config.iter_mut().filter(|(f, _)| *f == c.file) {
            *text = point_collector_at(text, &resources, c).map_err(|e| format!("{file}: {e}"))?;
        }
    }
    // The collector is the demo's, not a service of the shop.
    let services: Vec<Service> = services
        .into_iter()
        .filter(|s| collector.as_ref().is_none_or(|c| !c.service.eq_ignore_ascii_case(&s.host)))
        .collect();
    let telemetry = Telemetry {
        access_log_file: mesh.access_log_file().map(str::to_owned),
        access_log_encoding: match mesh.access_log_encoding() {
            trellis_api::mesh::AccessLogEncoding::Text => "TEXT".to_owned(),
            trellis_api::mesh::AccessLogEncoding::Json => "JSON".to_owned(),
        },
        access_log_format: mesh.access_log_format.clone().filter(|f| !f.is_empty()),
        sampling_percent: mesh.proxy_config().tracing_sampling(),
    };
    let canary = canary(&resources, &config)?;
    Ok(Plan {
        mode,
        hub,
        xds,
        ca,
        monitoring,
        mesh: example.mesh.clone(),
        config,
        pods: plans,
        entry,
        probe,
        denied_call,
        services,
        canary,
        collector,
        telemetry,
    })
}

/// The mesh config's default tracing provider, when it is one the demo can stand in for: a
/// Zipkin provider (the demo's collector speaks Zipkin's v2 JSON) whose service is a
/// ServiceEntry of `istio/` with one endpoint on the demo network's gateway.
fn collector(
    mesh: &MeshConfig,
    resources: &Resources,
    gateway: Ipv4Addr,
    placed_gateway: Ipv4Addr,
) -> Result<Option<CollectorPlan>, String> {
    if !mesh.enable_tracing() {
        return Ok(None);
    }
    let Some(provider) = mesh.default_tracing_provider() else { return Ok(None) };
    let index = mesh.extension_providers.iter().position(|p| p.name == provider.name).unwrap_or(0);
    let field = format!("mesh.yaml: extensionProviders[{index}]");
    let Some(zipkin) = &provider.zipkin else {
        return Err(format!(
            "{field} ({:?}): the demo runs a Zipkin collector for the default tracing provider; make it a zipkin \
             provider",
            provider.name
        ));
    };
    if zipkin.path.as_deref().is_some_and(|p| !p.is_empty() && p != super::collector::SPANS_PATH) {
        return Err(format!(
            "{field}.zipkin.path: the demo's collector takes spans at {}",
            super::collector::SPANS_PATH
        ));
    }
    let host = zipkin.service.rsplit('/').next().unwrap_or_default();
    let found = resources
        .service_entries
        .iter()
        .find(|(_, se)| se.spec.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)));
    let Some((file, se)) = found else {
        return Err(format!(
            "{field}.zipkin.service: {:?}: no ServiceEntry in istio/ has this host; the demo runs its collector at \
             the address the ServiceEntry's endpoint gives (the demo network's gateway, {gateway})",
            zipkin.service
        ));
    };
    let what = format!("{file}: ServiceEntry {}", name_of(&se.metadata));
    let port = se.spec.ports.iter().find(|p| p.number == zipkin.port).ok_or_else(|| {
        format!("{what}: ports: no port {} (the provider's, {field}.zipkin.port)", zipkin.port)
    })?;
    let [endpoint] = se.spec.endpoints.as_slice() else {
        return Err(format!(
            "{what}: endpoints: the demo's collector is one endpoint, on the demo network's gateway {gateway}; found {}",
            se.spec.endpoints.len()
        ));
    };
    if endpoint.address.parse::<Ipv4Addr>().ok() != Some(gateway) {
        return Err(format!(
            "{what}: endpoints[0].address: {:?} is not the demo network's gateway {gateway}, where the demo runs its \
             collector",
            endpoint.address
        ));
    }
    let target = endpoint.ports.get(&port.name).copied().filter(|p| *p != 0).unwrap_or(port.number);
    let target = u16::try_from(target)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what}: endpoints[0].ports: {target} is not a port"))?;
    Ok(Some(CollectorPlan {
        provider: provider.name.clone(),
        service: host.to_owned(),
        listen: SocketAddr::V4(SocketAddrV4::new(placed_gateway, target)),
        file: file.clone(),
    }))
}

/// Explicit mode: the collector's ServiceEntry endpoint moves to loopback with the gateway.
fn point_collector_at(
    text: &str,
    resources: &Resources,
    collector: &CollectorPlan,
) -> Result<String, String> {
    let Some((_, se)) = resources.service_entries.iter().find(|(f, se)| {
        *f == collector.file && se.spec.hosts.iter().any(|h| h.eq_ignore_ascii_case(&collector.service))
    }) else {
        return Ok(text.to_owned());
    };
    let wanted = (
        "ServiceEntry".to_owned(),
        namespace_of(&se.metadata).to_owned(),
        se.metadata.name.clone().unwrap_or_default(),
    );
    let (text, _) = edit_documents(text, |doc| {
        if identity(doc) != wanted {
            return Ok(false);
        }
        match doc.pointer_mut("/spec/endpoints/0/address") {
            Some(address) => {
                *address = collector.listen.ip().to_string().into();
                Ok(true)
            }
            None => Ok(false),
        }
    })?;
    Ok(text)
}

fn read_mesh(text: &str) -> Result<(MeshConfig, SocketAddrV4), String> {
    let (mesh, _unknown) = MeshConfig::from_yaml(text).map_err(|e| format!("mesh.yaml: {e}"))?;
    let problems = mesh.validate();
    if !problems.is_empty() {
        return Err(format!("mesh.yaml: {}", problems.join("; ")));
    }
    let address = mesh.proxy_config().discovery_address();
    let hub: SocketAddrV4 = address.parse().map_err(|_| {
        format!(
            "mesh.yaml: defaultConfig.discoveryAddress: {address:?} is not an IPv4 address and port; the demo runs \
             trellisd there, on its network's gateway (e.g. 10.77.0.1:15010)"
        )
    })?;
    let last = hub.ip().octets()[3];
    if last == 0 || last == 255 || hub.ip().is_loopback() || hub.ip().is_unspecified() {
        return Err(format!(
            "mesh.yaml: defaultConfig.discoveryAddress: {} cannot be the demo network's gateway (a host address of \
             a private /24, e.g. 10.77.0.1)",
            hub.ip()
        ));
    }
    Ok((mesh, hub))
}

fn read_istio(files: &[(String, String)]) -> Result<Resources, String> {
    let mut resources = Resources::default();
    let mut problems = Vec::new();
    for (file, text) in files {
        let checked = check_text(text, UnknownFields::Warn);
        problems.extend(
            checked
                .problems
                .iter()
                .filter(|p| p.severity == trellis_api::validate::Severity::Error)
                .map(|p| format!("istio/{file}: {p}")),
        );
        for doc in checked.accepted {
            let file = format!("istio/{file}");
            match doc.resource {
                Resource::ServiceEntry(r) => resources.service_entries.push((file, *r)),
                Resource::WorkloadEntry(r) => resources.workload_entries.push((file, *r)),
                Resource::DestinationRule(r) => resources.destination_rules.push(*r),
                Resource::VirtualService(r) => resources.virtual_services.push((file, *r)),
                Resource::AuthorizationPolicy(r) => resources.authorization_policies.push((file, *r)),
                _ => {}
            }
        }
    }
    if problems.is_empty() { Ok(resources) } else { Err(problems.join("\n")) }
}

/// The pods, injected exactly as `trellis inject` would.
fn inject(pods_text: &str, mesh: &MeshConfig) -> Result<Vec<Pod>, String> {
    let templates = trellis_injector::template::Templates::embedded().map_err(|e| e.to_string())?;
    let config = InjectorConfig { mesh: mesh.clone(), ..InjectorConfig::default() };
    let injected = trellis_injector::manual::inject_manifests(pods_text, &config, &templates)
        .map_err(|e| format!("pods.yaml: {e}"))?;
    let mut pods = Vec::new();
    for doc in split_documents(&injected) {
        let value: Value = serde_saphyr::from_str(doc.text)
            .map_err(|e| format!("pods.yaml: doc {}: {}", doc.index, e.without_snippet()))?;
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
        if kind != "Pod" {
            return Err(format!("pods.yaml: doc {}: the demo runs Pods; this is {kind:?}", doc.index));
        }
        let pod: Pod =
            serde_json::from_value(value).map_err(|e| format!("pods.yaml: doc {}: {e}", doc.index))?;
        if pod.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(format!("pods.yaml: doc {}: metadata.name: required", doc.index));
        }
        pods.push(pod);
    }
    if pods.is_empty() {
        return Err("pods.yaml: no pods".to_owned());
    }
    Ok(pods)
}

fn plan_pod(
    pod: &Pod,
    resources: &Resources,
    hub: Ipv4Addr,
    mode: Mode,
    place: &dyn Fn(Ipv4Addr) -> Ipv4Addr,
    xds: SocketAddr,
    trust_domain: &str,
) -> Result<PodPlan, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = namespace_of(&pod.metadata).to_owned();
    let what = format!("pods.yaml: Pod {namespace}/{name}");
    let (file, entry) = resources
        .workload_entries
        .iter()
        .find(|(_, we)| {
            we.metadata.name.as_deref() == Some(name.as_str()) && namespace_of(&we.metadata) == namespace
        })
        .ok_or_else(|| {
            format!("{what}: no WorkloadEntry {namespace}/{name} in istio/ gives the pod its address")
        })?;
    let we = format!("{file}: WorkloadEntry {namespace}/{name}: spec.address");
    let address: Ipv4Addr = entry
        .spec
        .address
        .parse()
        .map_err(|_| format!("{we}: {:?} is not an IPv4 address", entry.spec.address))?;
    let [h0, h1, h2, _] = hub.octets();
    let [a0, a1, a2, last] = address.octets();
    if [a0, a1, a2] != [h0, h1, h2] || last == 0 || last == 255 || address == hub {
        return Err(format!(
            "{we}: {address} is not a pod address of the demo network {h0}.{h1}.{h2}.0/{PREFIX_LEN} (whose gateway \
             {hub} is mesh.yaml's defaultConfig.discoveryAddress)"
        ));
    }
    let ip = place(address);

    let spec = pod.spec.as_ref().ok_or_else(|| format!("{what}: no spec"))?;
    let service_account = spec
        .service_account_name
        .clone()
        .or_else(|| spec.service_account.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    // Callers' proxies expect the certificate of the WorkloadEntry's service account; the pod's
    // token gets one of its own.
    let entry_account = &entry.spec.service_account;
    if !entry_account.is_empty() && *entry_account != service_account {
        return Err(format!(
            "{file}: WorkloadEntry {namespace}/{name}: spec.serviceAccount: {entry_account:?} is not the pod's \
             serviceAccountName {service_account:?}; callers would refuse the pod's certificate"
        ));
    }
    let spiffe_id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
    let apps: Vec<&Container> = spec.containers.iter().filter(|c| c.name != PROXY_CONTAINER).collect();
    let [app] = apps.as_slice() else {
        return Err(format!("{what}: the demo runs one app container per pod; found {}", apps.len()));
    };
    let app_port = app
        .ports
        .iter()
        .flatten()
        .find_map(|p| u16::try_from(p.container_port).ok().filter(|p| *p > 0))
        .ok_or_else(|| {
            format!("{what}: container {}: ports: the demo needs the port the app listens on", app.name)
        })?;
    let init = spec.init_containers.iter().flatten();
    let redirect = init.clone().find(|c| c.name == REDIRECT_INIT_CONTAINER).ok_or_else(|| {
        format!(
            "{what}: the injected pod has no {REDIRECT_INIT_CONTAINER} container (not injected, or interception \
             mode NONE?); the demo programs the pod's redirect with it"
        )
    })?;
    let proxy = init
        .chain(spec.containers.iter())
        .find(|c| c.name == PROXY_CONTAINER)
        .ok_or_else(|| format!("{what}: the injected pod has no {PROXY_CONTAINER} container"))?;
    let facts = PodFacts { pod, namespace: &namespace, ip: ip.to_string(), host_ip: place(hub).to_string() };
    let proxy_env = kubelet::environment(proxy, &facts).map_err(|e| format!("{what}: {e}"))?;
    let app_env = kubelet::environment(app, &facts).map_err(|e| format!("{what}: {e}"))?;

    let mut app_args = app.args.clone().unwrap_or_default();
    let (proxy_args, listen) = match mode {
        Mode::Namespaces => {
            for (name, vip) in resolutions(&app_args, resources) {
                app_args.extend(["--resolve".to_owned(), format!("{name}={vip}")]);
            }
            (Vec::new(), SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, app_port)))
        }
        Mode::Explicit => {
            app_args.extend(["--via".to_owned(), SocketAddrV4::new(ip, OUTBOUND_PORT).to_string()]);
            let proxy_args =
                ["--listen-address", &ip.to_string(), "--explicit-inbound", "--discovery-address"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([xds.to_string()])
                    .collect();
            (proxy_args, SocketAddr::V4(SocketAddrV4::new(ip, app_port)))
        }
    };
    app_args.extend(["--listen".to_owned(), listen.to_string()]);
    Ok(PodPlan {
        name,
        namespace,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        service_account,
        spiffe_id,
        ip,
        app_port,
        redirect_args: redirect.args.clone().unwrap_or_default(),
        proxy_env,
        proxy_args,
        app_args,
        app_env,
    })
}

/// The hosts an app's `--calls` URLs name, with the virtual IP of the ServiceEntry that has
/// each host (the demo's DNS: ServiceEntry hosts are exact names, as in Istio).
fn resolutions(app_args: &[String], resources: &Resources) -> Vec<(String, Ipv4Addr)> {
    let called: Vec<String> = app_args
        .iter()
        .zip(app_args.iter().skip(1))
        .filter(|(flag, _)| *flag == "--calls")
        .map(|(_, url)| url.clone())
        .chain(app_args.iter().filter_map(|a| a.strip_prefix("--calls=").map(str::to_owned)))
        .filter_map(|url| url.parse::<http::Uri>().ok()?.host().map(str::to_ascii_lowercase))
        .collect();
    let mut out = Vec::new();
    for (_, se) in &resources.service_entries {
        let Some(vip) = se.spec.addresses.iter().find_map(|a| a.parse::<Ipv4Addr>().ok()) else { continue };
        for host in se.spec.hosts.iter().map(|h| h.to_ascii_lowercase()) {
            if called.contains(&host) && !out.iter().any(|(h, _)| *h == host) {
                out.push((host, vip));
            }
        }
    }
    out
}

fn services(resources: &Resources, pods: &[PodPlan]) -> Vec<Service> {
    let selected = |selector: &BTreeMap<String, String>| -> Vec<String> {
        pods.iter().filter(|p| selects(selector, &p.labels)).map(|p| p.name.clone()).collect()
    };
    resources
        .service_entries
        .iter()
        .filter_map(|(_, se)| {
            let host = se.spec.hosts.first()?.to_ascii_lowercase();
            let selector = se.spec.workload_selector.as_ref().map(|s| s.labels.clone()).unwrap_or_default();
            let subsets = resources
                .destination_rules
                .iter()
                .filter(|dr| dr.spec.host.eq_ignore_ascii_case(&host))
                .flat_map(|dr| &dr.spec.subsets)
                .map(|subset| {
                    let mut labels = selector.clone();
                    labels.extend(subset.labels.clone());
                    Subset { name: subset.name.clone(), pods: selected(&labels) }
                })
                .collect();
            Some(Service {
                short: host.split('.').next().unwrap_or_default().to_owned(),
                vip: se.spec.addresses.iter().find_map(|a| a.parse().ok()),
                port: se.spec.ports.first().and_then(|p| u16::try_from(p.number).ok()).unwrap_or(80),
                pods: selected(&selector),
                host,
                subsets,
            })
        })
        .collect()
}

/// The first pod takes the load, addressed as the service that selects it.
fn entry(pods: &[PodPlan], resources: &Resources, mode: Mode) -> Result<Entry, String> {
    let pod = pods.first().ok_or("pods.yaml: no pods")?;
    let (host, port) = resources
        .service_entries
        .iter()
        .find_map(|(_, se)| {
            let selector = se.spec.workload_selector.as_ref()?;
            let port = se.spec.ports.first()?.number;
            selects(&selector.labels, &pod.labels).then(|| (se.spec.hosts.first().cloned(), port))
        })
        .and_then(|(host, port)| Some((host?, port)))
        .ok_or_else(|| {
            format!(
                "pods.yaml: Pod {} (the first, where the load goes in): no ServiceEntry selects it",
                pod.name
            )
        })?;
    let target = match mode {
        Mode::Namespaces => SocketAddrV4::new(pod.ip, pod.app_port),
        Mode::Explicit => SocketAddrV4::new(pod.ip, INBOUND_PORT),
    };
    Ok(Entry { pod: pod.name.clone(), target: SocketAddr::V4(target), authority: format!("{host}:{port}") })
}

/// The plaintext client's target: the last pod, other than the entry, behind a service (the
/// deepest callee of the example).
fn probe(pods: &[PodPlan], services: &[Service], entry: &Entry, mode: Mode) -> Option<Probe> {
    pods.iter().rev().filter(|p| p.name != entry.pod).find_map(|pod| {
        let service = services.iter().find(|s| s.pods.contains(&pod.name))?;
        let target = match mode {
            Mode::Namespaces => SocketAddrV4::new(pod.ip, pod.app_port),
            Mode::Explicit => SocketAddrV4::new(pod.ip, INBOUND_PORT),
        };
        Some(Probe {
            pod: pod.name.clone(),
            target: SocketAddr::V4(target),
            authority: format!("{}:{}", service.host, service.port),
            shown: format!("{}:{}", service.short, pod.app_port),
        })
    })
}

/// Whether an AuthorizationPolicy principal (`*` at either end a wildcard, as in Istio) names
/// `principal`.
fn principal_matches(pattern: &str, principal: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(suffix), _) => principal.ends_with(suffix),
        (_, Some(prefix)) => principal.starts_with(prefix),
        _ => pattern == principal,
    }
}

/// The call an ALLOW policy denies: the first enforced ALLOW policy with a selector whose rules
/// name their callers by principal only (so who is left out is plain), the service all of whose
/// pods it selects, and the last pod (the deepest callee) that it neither selects nor allows.
/// The caller asks for what the service's callers ask for (`--calls`), or `/`.
fn denied_call(
    pods: &[PodPlan],
    services: &[Service],
    resources: &Resources,
    mode: Mode,
    trust_domain: &str,
) -> Option<DeniedCall> {
    resources.authorization_policies.iter().find_map(|(file, policy)| {
        let spec = &policy.spec;
        let dry_run = policy.metadata.annotations.as_ref().and_then(|a| a.get(DRY_RUN_ANNOTATION));
        if spec.action != AuthorizationAction::Allow || dry_run.is_some_and(|v| v == "true") {
            return None;
        }
        let selector = spec.selector.as_ref()?.match_labels.clone();
        let namespace = namespace_of(&policy.metadata).to_owned();
        let selected = |p: &PodPlan| p.namespace == namespace && selects(&selector, &p.labels);
        // Every rule names its callers, by principal and nothing else.
        let mut allowed = Vec::new();
        for rule in &spec.rules {
            if rule.from.is_empty() {
                return None;
            }
            for from in &rule.from {
                let source = from.source.as_ref()?;
                let only_principals = trellis_api::security::Source {
                    principals: source.principals.clone(),
                    ..Default::default()
                };
                if source.principals.is_empty() || *source != only_principals {
                    return None;
                }
                allowed.extend(source.principals.iter().cloned());
            }
        }
        let service = services.iter().find(|s| {
            !s.pods.is_empty()
                && s.pods.iter().all(|name| pods.iter().any(|p| p.name == *name && selected(p)))
        })?;
        let principal_of =
            |p: &PodPlan| p.spiffe_id.strip_prefix("spiffe://").unwrap_or(&p.spiffe_id).to_owned();
        let caller = pods.iter().rev().find(|p| {
            !selected(p)
                && p.spiffe_id.starts_with(&format!("spiffe://{trust_domain}/"))
                && !allowed.iter().any(|a| principal_matches(a, &principal_of(p)))
        })?;
        let via = match mode {
            Mode::Namespaces => SocketAddr::V4(SocketAddrV4::new(service.vip?, service.port)),
            Mode::Explicit => SocketAddr::V4(SocketAddrV4::new(caller.ip, OUTBOUND_PORT)),
        };
        // What the service's callers ask for.
        let path = pods
            .iter()
            .flat_map(|p| p.app_args.iter().zip(p.app_args.iter().skip(1)))
            .filter(|(flag, _)| *flag == "--calls")
            .filter_map(|(_, url)| url.parse::<http::Uri>().ok())
            .find(|uri| uri.host().is_some_and(|h| h.eq_ignore_ascii_case(&service.host)))
            .and_then(|uri| uri.path_and_query().map(|p| p.as_str().to_owned()))
            .unwrap_or_else(|| "/".to_owned());
        Some(DeniedCall {
            from: caller.name.clone(),
            principal: principal_of(caller),
            to: service.short.clone(),
            to_pods: service.pods.clone(),
            url: format!("http://{}:{}{path}", service.host, service.port),
            via,
            policy: name_of(&policy.metadata),
            file: file.clone(),
            namespace,
            selector,
            allowed,
        })
    })
}

/// Explicit mode: each pod's WorkloadEntry points at its proxy's inbound port on the pod's
/// loopback address, so calls pass through the destination's proxy too. That proxy delivers to
/// the port the request's authority names, so a service port must be the app's port.
fn point_workload_entries_at_proxies(
    text: &str,
    pods: &[PodPlan],
    resources: &Resources,
) -> Result<String, String> {
    let (text, _) = edit_documents(text, |doc| {
        let (kind, namespace, name) = identity(doc);
        let Some(pod) =
            pods.iter().find(|p| kind == "WorkloadEntry" && p.namespace == namespace && p.name == name)
        else {
            return Ok(false);
        };
        for (file, se) in &resources.service_entries {
            let selector = se.spec.workload_selector.as_ref().map(|s| s.labels.clone()).unwrap_or_default();
            if !selects(&selector, &pod.labels) {
                continue;
            }
            if let Some(port) = se.spec.ports.iter().find(|p| p.number != u32::from(pod.app_port)) {
                return Err(format!(
                    "{file}: ServiceEntry {}: ports: {} is not the port of pod {} ({}); explicit mode (without \
                     root) needs them equal",
                    name_of(&se.metadata),
                    port.number,
                    pod.name,
                    pod.app_port
                ));
            }
        }
        doc["spec"]["address"] = pod.ip.to_string().into();
        if let Some(ports) = doc.pointer_mut("/spec/ports").and_then(Value::as_object_mut) {
            ports.values_mut().for_each(|p| *p = INBOUND_PORT.into());
        }
        Ok(true)
    })?;
    Ok(text)
}

/// The first VirtualService route split over subsets by weight, and the same split evened out.
fn canary(resources: &Resources, config: &[(String, String)]) -> Result<Option<Canary>, String> {
    for (file, vs) in &resources.virtual_services {
        for (index, route) in vs.spec.http.iter().enumerate() {
            let weighted = route.route.len() >= 2
                && route.route.iter().all(|d| d.weight > 0 && !d.destination.subset.is_empty());
            if !weighted {
                continue;
            }
            let before: Vec<u32> = route.route.iter().map(|d| d.weight.unsigned_abs()).collect();
            let after = even(before.len());
            if before == after {
                continue;
            }
            let (namespace, name) =
                (namespace_of(&vs.metadata).to_owned(), vs.metadata.name.clone().unwrap_or_default());
            let text = config.iter().find(|(f, _)| f == file).map(|(_, t)| t.as_str()).unwrap_or_default();
            let (edited, changed) = edit_documents(text, |doc| {
                if identity(doc) != ("VirtualService".to_owned(), namespace.clone(), name.clone()) {
                    return Ok(false);
                }
                let Some(destinations) =
                    doc.pointer_mut(&format!("/spec/http/{index}/route")).and_then(Value::as_array_mut)
                else {
                    return Ok(false);
                };
                for (destination, weight) in destinations.iter_mut().zip(&after) {
                    destination["weight"] = (*weight).into();
                }
                Ok(true)
            })
            .map_err(|e| format!("{file}: {e}"))?;
            if changed != 1 {
                continue;
            }
            let host = &route.route[0].destination.host;
            return Ok(Some(Canary {
                file: file.clone(),
                virtual_service: format!("{namespace}/{name}"),
                service: host.split('.').next().unwrap_or_default().to_owned(),
                subsets: route.route.iter().map(|d| d.destination.subset.clone()).collect(),
                before,
                after,
                edited,
            }));
        }
    }
    Ok(None)
}

/// `n` weights summing to 100, as even as whole numbers allow.
fn even(n: usize) -> Vec<u32> {
    let n32 = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    (0..n32).map(|i| 100 / n32 + u32::from(i < 100 % n32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Example {
        Example::built_in()
    }

    fn replace(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from:?} not in the example");
        text.replacen(from, to, 1)
    }

    fn istio<'a>(example: &'a mut Example, file: &str) -> &'a mut String {
        &mut example.istio.iter_mut().find(|(f, _)| f == file).unwrap().1
    }

    #[test]
    fn the_example_with_namespaces() {
        let plan = build(&example(), Mode::Namespaces).unwrap();
        assert_eq!(plan.hub.to_string(), "10.77.0.1");
        assert_eq!(plan.xds.to_string(), "10.77.0.1:15010");
        let names: Vec<(&str, String)> =
            plan.pods.iter().map(|p| (p.name.as_str(), p.ip.to_string())).collect();
        assert_eq!(
            names,
            [
                ("frontend", "10.77.0.10".to_owned()),
                ("catalog-v1", "10.77.0.11".to_owned()),
                ("catalog-v2", "10.77.0.12".to_owned()),
                ("inventory-2", "10.77.0.14".to_owned()),
                ("inventory", "10.77.0.13".to_owned())
            ]
        );
        let frontend = &plan.pods[0];
        // The injector's redirect flags and proxy environment, as the pod would get them.
        assert_eq!(frontend.redirect_args[..4], ["-p", "15001", "-z", "15006"]);
        let env: BTreeMap<&str, &str> =
            frontend.proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env["POD_NAME"], "frontend");
        assert_eq!(env["POD_NAMESPACE"], "shop");
        assert_eq!(env["INSTANCE_IP"], "10.77.0.10");
        assert_eq!(env["ISTIO_META_WORKLOAD_NAME"], "frontend");
        assert!(
            env["PROXY_CONFIG"].contains("\"discoveryAddress\":\"10.77.0.1:15010\""),
            "{}",
            env["PROXY_CONFIG"]
        );
        assert!(frontend.proxy_args.is_empty());
        assert_eq!(frontend.labels.get("security.istio.io/tlsMode").map(String::as_str), Some("istio"));
        // Identities: the proxy asks trellisd's CA (15012 of the control plane's host) as its
        // pod's service account.
        assert_eq!(plan.ca.to_string(), "10.77.0.1:15012");
        assert_eq!(env["SERVICE_ACCOUNT"], "frontend");
        assert_eq!(env["TRUST_DOMAIN"], "cluster.local");
        let ids: Vec<(&str, &str)> =
            plan.pods.iter().map(|p| (p.service_account.as_str(), p.spiffe_id.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("frontend", "spiffe://cluster.local/ns/shop/sa/frontend"),
                ("catalog", "spiffe://cluster.local/ns/shop/sa/catalog"),
                ("catalog", "spiffe://cluster.local/ns/shop/sa/catalog"),
                ("inventory", "spiffe://cluster.local/ns/shop/sa/inventory"),
                ("inventory", "spiffe://cluster.local/ns/shop/sa/inventory")
            ]
        );
        assert_eq!(plan.pods[3].admin(Mode::Namespaces).to_string(), "127.0.0.1:15000");
        // Every workload is marked as having a sidecar, so callers open mutual TLS to it.
        let services = &plan.config.iter().find(|(f, _)| f == "istio/services.yaml").unwrap().1;
        let entries: Vec<Value> = split_documents(services)
            .iter()
            .map(|d| serde_saphyr::from_str::<Value>(d.text).unwrap())
            .filter(|d| d["kind"] == "WorkloadEntry")
            .collect();
        assert_eq!(entries.len(), 5);
        for entry in &entries {
            assert_eq!(entry["spec"]["labels"]["security.istio.io/tlsMode"], "istio", "{entry}");
        }
        // The plaintext client knocks on inventory, captured inbound like any caller.
        let probe = plan.probe.clone().unwrap();
        assert_eq!((probe.pod.as_str(), probe.shown.as_str()), ("inventory", "inventory:8080"));
        assert_eq!(probe.target.to_string(), "10.77.0.13:8080");
        assert_eq!(probe.authority, "inventory.shop.svc.cluster.local:8080");
        // The denied call: inventory, which catalog's ALLOW policy leaves out, calls catalog as
        // its app would, to the service's virtual IP (captured by inventory's proxy).
        let denied = plan.denied_call.clone().unwrap();
        assert_eq!(
            (denied.from.as_str(), denied.to.as_str(), denied.policy.as_str()),
            ("inventory", "catalog", "shop/catalog-callers")
        );
        assert_eq!(denied.file, "istio/authorization.yaml");
        assert_eq!(denied.principal, "cluster.local/ns/shop/sa/inventory");
        assert_eq!(denied.allowed, ["cluster.local/ns/shop/sa/frontend"]);
        assert_eq!(denied.to_pods, ["catalog-v1", "catalog-v2"]);
        assert_eq!(denied.url, "http://catalog.shop.svc.cluster.local:8080/items");
        assert_eq!(denied.path(), "/items");
        assert_eq!(denied.authority(), "catalog.shop.svc.cluster.local:8080");
        assert_eq!(denied.via.to_string(), "10.96.0.20:8080");
        assert_eq!(denied.selector, BTreeMap::from([("app".to_owned(), "catalog".to_owned())]));
        // STRICT for the shop, PERMISSIVE for the pod the load (from outside the mesh) enters.
        let security = &plan.config.iter().find(|(f, _)| f == "istio/security.yaml").unwrap().1;
        let policies: Vec<Value> = split_documents(security)
            .iter()
            .map(|d| serde_saphyr::from_str::<Value>(d.text).unwrap())
            .collect();
        assert_eq!(policies.len(), 2);
        assert_eq!(policies[0]["kind"], "PeerAuthentication");
        assert_eq!(policies[0]["metadata"]["namespace"], "shop");
        assert_eq!(policies[0]["spec"], serde_json::json!({"mtls": {"mode": "STRICT"}}));
        assert_eq!(policies[1]["spec"]["selector"]["matchLabels"]["app"], "frontend");
        assert_eq!(policies[1]["spec"]["mtls"]["mode"], "PERMISSIVE");
        assert_eq!(
            frontend.app_args.join(" "),
            "--name frontend --version v1 --calls http://catalog.shop.svc.cluster.local:8080/items --resolve \
             catalog.shop.svc.cluster.local=10.96.0.20 --listen 0.0.0.0:8080"
        );
        assert_eq!(frontend.app_env, [("POD_NAME".to_owned(), "frontend".to_owned())]);
        assert_eq!(plan.entry.target.to_string(), "10.77.0.10:8080");
        assert_eq!(plan.entry.authority, "frontend.shop.svc.cluster.local:8080");
        assert_eq!(
            plan.config,
            example().istio.iter().map(|(f, t)| (format!("istio/{f}"), t.clone())).collect::<Vec<_>>()
        );

        let catalog = plan.services.iter().find(|s| s.short == "catalog").unwrap();
        assert_eq!(catalog.pods, ["catalog-v1", "catalog-v2"]);
        assert_eq!((catalog.vip, catalog.port), (Some(Ipv4Addr::new(10, 96, 0, 20)), 8080));
        assert_eq!(
            catalog.subsets,
            [
                Subset { name: "v1".into(), pods: vec!["catalog-v1".into()] },
                Subset { name: "v2".into(), pods: vec!["catalog-v2".into()] }
            ]
        );
        let canary = plan.canary.unwrap();
        assert_eq!((canary.virtual_service.as_str(), canary.service.as_str()), ("shop/catalog", "catalog"));
        assert_eq!((canary.before, canary.after), (vec![90, 10], vec![50, 50]));
        assert_eq!(canary.file, "istio/catalog.yaml");
        // The edited file still holds both documents, the weights changed.
        let docs = split_documents(&canary.edited);
        assert_eq!(docs.len(), 2);
        let vs: Value = serde_saphyr::from_str(docs[1].text).unwrap();
        assert_eq!(vs["spec"]["http"][0]["route"][1]["weight"], 50);
        assert_eq!(vs["spec"]["http"][0]["timeout"], "2s");
    }

    #[test]
    fn the_example_in_explicit_mode() {
        let plan = build(&example(), Mode::Explicit).unwrap();
        assert_eq!(plan.xds.to_string(), "127.77.0.1:15010");
        let catalog = &plan.pods[1];
        assert_eq!(catalog.ip.to_string(), "127.77.0.11");
        assert_eq!(
            catalog.proxy_args.join(" "),
            "--listen-address 127.77.0.11 --explicit-inbound --discovery-address 127.77.0.1:15010"
        );
        assert!(catalog.app_args.join(" ").ends_with("--via 127.77.0.11:15001 --listen 127.77.0.11:8080"));
        assert_eq!(plan.entry.target.to_string(), "127.77.0.10:15006");
        assert_eq!(plan.ca.to_string(), "127.77.0.1:15012");
        assert_eq!(catalog.admin(Mode::Explicit).to_string(), "127.77.0.11:15000");
        // Straight to inventory's proxy: there is no redirect to capture the app port.
        assert_eq!(plan.probe.unwrap().target.to_string(), "127.77.0.13:15006");
        // And the denied call goes to inventory's proxy's outbound port, as inventory's app does.
        assert_eq!(plan.denied_call.unwrap().via.to_string(), "127.77.0.13:15001");
        let services = &plan.config.iter().find(|(f, _)| f == "istio/services.yaml").unwrap().1;
        let entries: Vec<Value> = split_documents(services)
            .iter()
            .map(|d| serde_saphyr::from_str::<Value>(d.text).unwrap())
            .filter(|d| d["kind"] == "WorkloadEntry")
            .collect();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1]["spec"]["address"], "127.77.0.11");
        assert_eq!(entries[1]["spec"]["ports"]["http"], 15006);
        assert_eq!(entries[1]["spec"]["labels"]["version"], "v1");
        let canary = plan.canary.unwrap();
        assert!(canary.edited.contains("weight: 50"));
    }

    #[test]
    fn every_problem_names_its_file_and_field() {
        type Break = Box<dyn Fn(&mut Example)>;
        let cases: Vec<(Break, &str)> = vec![
            (
                Box::new(|e| e.mesh = replace(&e.mesh, "10.77.0.1:15010", "trellisd.istio-system:15010")),
                "mesh.yaml: defaultConfig.discoveryAddress: \"trellisd.istio-system:15010\" is not an IPv4 address",
            ),
            (
                Box::new(|e| e.mesh = replace(&e.mesh, "10.77.0.1:15010", "10.77.0.0:15010")),
                "10.77.0.0 cannot be",
            ),
            (Box::new(|e| e.mesh = "defaultConfig: [".to_owned()), "mesh.yaml: "),
            (
                Box::new(|e| {
                    let t = istio(e, "services.yaml");
                    *t = replace(t, "address: 10.77.0.12", "address: 10.78.0.12");
                }),
                "istio/services.yaml: WorkloadEntry shop/catalog-v2: spec.address: 10.78.0.12 is not a pod address of the demo network 10.77.0.0/24",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "services.yaml");
                    *t = replace(t, "address: 10.77.0.12", "address: catalog.example");
                }),
                "WorkloadEntry shop/catalog-v2: spec.address: \"catalog.example\" is not an IPv4 address",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "services.yaml");
                    *t = replace(t, "address: 10.77.0.12", "address: 10.77.0.11");
                }),
                "pods catalog-v1 and catalog-v2 have the same address 10.77.0.11",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "services.yaml");
                    *t = replace(
                        t,
                        "name: inventory, namespace: shop}\nspec:\n  address",
                        "name: stock, namespace: shop}\nspec:\n  address",
                    );
                }),
                "pods.yaml: Pod shop/inventory: no WorkloadEntry shop/inventory in istio/",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "catalog.yaml");
                    *t = replace(t, "weight: 90", "weight: -90");
                }),
                "istio/catalog.yaml: doc 2: VirtualService shop/catalog: spec.http[0].route[0].weight",
            ),
            (
                Box::new(|e| {
                    e.pods = replace(&e.pods, "    ports: [{name: http, containerPort: 8080}]\n", "")
                }),
                "pods.yaml: Pod shop/frontend: container frontend: ports: the demo needs the port",
            ),
            (Box::new(|e| e.pods = replace(&e.pods, "kind: Pod", "kind: Deployment")), "pods.yaml: doc 1:"),
            (
                Box::new(|e| e.pods.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\n")),
                "the demo runs Pods; this is \"Service\"",
            ),
            (
                Box::new(|e| {
                    e.pods = replace(
                        &e.pods,
                        "  labels: {app: frontend, version: v1}\n",
                        "  labels: {app: frontend, version: v1}\n  annotations: {sidecar.istio.io/interceptionMode: NONE}\n",
                    )
                }),
                "Pod shop/frontend: the injected pod has no trellis-init container",
            ),
            (
                Box::new(|e| {
                    e.pods = replace(
                        &e.pods,
                        "      valueFrom: {fieldRef: {fieldPath: metadata.name}}\n",
                        "      valueFrom: {secretKeyRef: {name: s, key: k}}\n",
                    )
                }),
                "pods.yaml: Pod shop/frontend: container frontend env POD_NAME: only fieldRef",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "services.yaml");
                    *t = replace(t, "serviceAccount: inventory", "serviceAccount: stock");
                }),
                "istio/services.yaml: WorkloadEntry shop/inventory-2: spec.serviceAccount: \"stock\" is not the pod's \
                 serviceAccountName \"inventory\"; callers would refuse the pod's certificate",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "services.yaml");
                    *t = replace(
                        t,
                        "workloadSelector: {labels: {app: frontend}}",
                        "workloadSelector: {labels: {app: web}}",
                    );
                }),
                "Pod frontend (the first, where the load goes in): no ServiceEntry selects it",
            ),
        ];
        for (break_it, expected) in cases {
            let mut broken = example();
            break_it(&mut broken);
            let err = build(&broken, Mode::Namespaces).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        }
        // Explicit mode cannot remap ports: the proxy delivers to the authority's port.
        let mut broken = example();
        let t = istio(&mut broken, "services.yaml");
        *t = t.replace("ports: [{number: 8080, name: http, protocol: HTTP}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  workloadSelector: {labels: {app: inventory}}", "ports: [{number: 80, name: http, protocol: HTTP}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  workloadSelector: {labels: {app: inventory}}");
        assert!(build(&broken, Mode::Namespaces).is_ok(), "with namespaces a service port may differ");
        let err = build(&broken, Mode::Explicit).unwrap_err();
        assert!(
            err.contains("istio/services.yaml: ServiceEntry shop/inventory: ports: 80 is not the port of pod inventory-2 (8080)"),
            "{err}"
        );
    }

    /// The collector: where the default tracing provider's ServiceEntry points (the gateway),
    /// moved to loopback in explicit mode; not one of the shop's services. What it cannot be is
    /// named by file and field.
    #[test]
    fn the_collector_is_where_the_tracing_providers_service_entry_points() {
        let plan = build(&example(), Mode::Namespaces).unwrap();
        let collector = plan.collector.clone().unwrap();
        assert_eq!(collector.listen.to_string(), "10.77.0.1:9411");
        assert_eq!(
            (collector.provider.as_str(), collector.file.as_str()),
            ("zipkin", "istio/telemetry.yaml")
        );
        assert!(plan.services.iter().all(|s| s.short != "zipkin"));
        assert_eq!(plan.telemetry.access_log_file.as_deref(), Some("/dev/stdout"));
        assert_eq!(
            (plan.telemetry.access_log_encoding.as_str(), plan.telemetry.sampling_percent),
            ("TEXT", 1.0)
        );
        let explicit = build(&example(), Mode::Explicit).unwrap();
        assert_eq!(explicit.collector.unwrap().listen.to_string(), "127.77.0.1:9411");
        let text = &explicit.config.iter().find(|(f, _)| f == "istio/telemetry.yaml").unwrap().1;
        let se: Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(se["spec"]["endpoints"][0]["address"], "127.77.0.1");
        // Without a tracing provider, no collector.
        let mut e = example();
        e.mesh = replace(&e.mesh, "  tracing: [zipkin]\n", "  tracing: []\n");
        assert_eq!(build(&e, Mode::Namespaces).unwrap().collector, None);

        type Break = Box<dyn Fn(&mut Example)>;
        let cases: Vec<(Break, &str)> = vec![
            (
                Box::new(|e| {
                    e.mesh = replace(
                        &e.mesh,
                        "zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}",
                        "opentelemetry: {service: zipkin.istio-system.svc.cluster.local, port: 9411}",
                    )
                }),
                "mesh.yaml: extensionProviders[0] (\"zipkin\"): the demo runs a Zipkin collector",
            ),
            (
                Box::new(|e| e.mesh = replace(&e.mesh, "port: 9411}", "port: 9411, path: /spans}")),
                "mesh.yaml: extensionProviders[0].zipkin.path: the demo's collector takes spans at /api/v2/spans",
            ),
            (
                Box::new(|e| {
                    e.mesh = replace(&e.mesh, "service: zipkin.istio-system", "service: jaeger.istio-system")
                }),
                "mesh.yaml: extensionProviders[0].zipkin.service: \"jaeger.istio-system.svc.cluster.local\": no ServiceEntry",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "telemetry.yaml");
                    *t = replace(t, "address: 10.77.0.1}", "address: 10.77.0.9}");
                }),
                "istio/telemetry.yaml: ServiceEntry istio-system/zipkin: endpoints[0].address: \"10.77.0.9\" is not the \
                 demo network's gateway 10.77.0.1",
            ),
            (
                Box::new(|e| {
                    let t = istio(e, "telemetry.yaml");
                    *t = replace(t, "number: 9411", "number: 9412");
                }),
                "istio/telemetry.yaml: ServiceEntry istio-system/zipkin: ports: no port 9411",
            ),
        ];
        for (break_it, expected) in cases {
            let mut broken = example();
            break_it(&mut broken);
            let err = build(&broken, Mode::Namespaces).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn weights_even_out() {
        assert_eq!(even(2), [50, 50]);
        assert_eq!(even(3), [34, 33, 33]);
        assert_eq!(even(1), [100]);
    }

    #[test]
    fn service_accounts_default_and_the_trust_domain_is_the_mesh_configs() {
        let mut e = example();
        e.pods = replace(&e.pods, "  serviceAccountName: inventory\n", "");
        let t = istio(&mut e, "services.yaml");
        *t = replace(t, "  serviceAccount: inventory\n", "");
        let plan = build(&e, Mode::Namespaces).unwrap();
        assert_eq!(plan.pods[3].spiffe_id, "spiffe://cluster.local/ns/shop/sa/default");
        // The trust domain is the mesh config's.
        let mut e = example();
        e.mesh = replace(&e.mesh, "trustDomain: cluster.local", "trustDomain: shop.example");
        assert_eq!(
            build(&e, Mode::Explicit).unwrap().pods[0].spiffe_id,
            "spiffe://shop.example/ns/shop/sa/frontend"
        );
    }

    #[test]
    fn a_denied_call_only_when_an_allow_policy_plainly_leaves_a_pod_out() {
        let denied = |edit: &dyn Fn(&str) -> String| {
            let mut e = example();
            let t = istio(&mut e, "authorization.yaml");
            *t = edit(t);
            build(&e, Mode::Namespaces).unwrap().denied_call
        };
        assert!(denied(&|t| t.to_owned()).is_some());
        // Allowing inventory too (by a wildcard) leaves no pod out.
        let everyone =
            |t: &str| replace(t, "[cluster.local/ns/shop/sa/frontend]", "[\"cluster.local/ns/shop/*\"]");
        assert_eq!(denied(&everyone), None);
        // A rule without `from` allows any caller; a DENY policy or a dry run is not this case.
        let anyone = |t: &str| {
            replace(t, "  - from:\n    - source: {principals: [cluster.local/ns/shop/sa/frontend]}", "  - {}")
        };
        assert_eq!(denied(&anyone), None);
        assert_eq!(denied(&|t| replace(t, "action: ALLOW", "action: DENY")), None);
        let dry_run = |t: &str| {
            replace(
                t,
                "{name: catalog-callers, namespace: shop}",
                "{name: catalog-callers, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}",
            )
        };
        assert_eq!(denied(&dry_run), None);
        // Callers named by namespace: who is left out is not plain.
        let by_namespace =
            |t: &str| replace(t, "{principals: [cluster.local/ns/shop/sa/frontend]}", "{namespaces: [shop]}");
        assert_eq!(denied(&by_namespace), None);
        // Selecting inventory instead: the caller is then the deepest pod left, catalog-v2.
        let call = denied(&|t| replace(t, "app: catalog", "app: inventory")).unwrap();
        assert_eq!((call.from.as_str(), call.to.as_str()), ("catalog-v2", "inventory"));
        assert_eq!(call.url, "http://inventory.shop.svc.cluster.local:8080/stock");
        assert!(principal_matches("*/sa/frontend", "cluster.local/ns/shop/sa/frontend"));
        assert!(!principal_matches("cluster.local/ns/shop/sa/front", "cluster.local/ns/shop/sa/frontend"));
    }

    #[test]
    fn no_weighted_split_no_canary() {
        let mut e = example();
        let t = istio(&mut e, "catalog.yaml");
        *t = t.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50");
        assert_eq!(build(&e, Mode::Namespaces).unwrap().canary, None);
    }
}
