//! What a proxy may see: the `exportTo` of services and configs, and the egress hosts of the
//! Sidecar resource that applies to it.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;
use trellis_api::mesh::MeshConfig;
use trellis_api::networking::SidecarSpec;

use super::Scope;
use super::hosts;
use super::objects::{self, Object, selects};
use super::services::Service;
use crate::model::Model;

/// Whether an object of `owner` namespace is exported to `viewer`. An empty list takes the mesh
/// default for the kind: `*` all, `.` the owner's namespace, `~` none, else namespace names.
pub fn exported(export_to: &[String], default: &[&str], owner: &str, viewer: &str) -> bool {
    let allows = |entry: &str| match entry {
        "*" => true,
        "." => owner == viewer,
        "~" => false,
        namespace => namespace == viewer,
    };
    if export_to.is_empty() { default.iter().any(|e| allows(e)) } else { export_to.iter().any(|e| allows(e)) }
}

/// The Sidecar that applies to a workload, as `namespace/name`: in its namespace the first (by
/// name) whose `workloadSelector` matches its labels, else the first without a selector, else
/// the first selector-less Sidecar of the root namespace. Istio takes the oldest; names are
/// what every config source has.
pub fn select_sidecar(
    model: &Model,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<String> {
    let in_namespace = |ns: &str| objects::sidecars(model).filter(|s| s.namespace == ns).collect::<Vec<_>>();
    let local = in_namespace(namespace);
    let chosen = local
        .iter()
        .find(|s| selector_of(s).is_some_and(|sel| selects(sel, labels)))
        .or_else(|| local.iter().find(|s| selector_of(s).is_none()))
        .copied()
        .or_else(|| in_namespace(root_namespace).into_iter().find(|s| selector_of(s).is_none()))?;
    Some(format!("{}/{}", chosen.namespace, chosen.name))
}

/// A Sidecar's workload selector; an empty one selects every workload, like none.
fn selector_of<'a>(sidecar: &Object<'a, SidecarSpec>) -> Option<&'a BTreeMap<String, String>> {
    sidecar.spec.workload_selector.as_ref().map(|w| &w.labels).filter(|l| !l.is_empty())
}

/// What one proxy scope sees.
pub struct View<'a> {
    pub namespace: &'a str,
    pub root_namespace: &'a str,
    pub mesh: &'a MeshConfig,
    pub sidecar: Option<Object<'a, SidecarSpec>>,
    /// `None`: no Sidecar limits egress, every exported service is visible.
    egress: Option<Vec<EgressHost>>,
}

/// One `namespace/dnsName` of a Sidecar's egress, with `.` already read as the proxy's namespace.
struct EgressHost {
    /// `None` for `*`.
    namespace: Option<String>,
    dns: String,
}

impl<'a> View<'a> {
    pub fn new(model: &'a Model, scope: &'a Scope) -> View<'a> {
        let sidecar = scope.sidecar.as_deref().and_then(|id| {
            let found = sidecar_by_id(model, id);
            if found.is_none() {
                warn!(sidecar = id, namespace = %scope.namespace, "the scope's Sidecar is gone; translating without it");
            }
            found
        });
        View {
            namespace: &scope.namespace,
            root_namespace: model.mesh.root_namespace(),
            mesh: &model.mesh,
            sidecar,
            egress: sidecar.and_then(|s| egress_hosts(s, &scope.namespace)),
        }
    }

    /// Whether the Sidecar's egress admits a host of `namespace`.
    pub fn admits(&self, namespace: &str, host: &str) -> bool {
        let Some(egress) = &self.egress else { return true };
        egress
            .iter()
            .any(|e| e.namespace.as_deref().is_none_or(|ns| ns == namespace) && hosts::matches(&e.dns, host))
    }

    /// Like [`View::admits`], for configs whose hosts may be wildcards.
    pub fn admits_any(&self, namespace: &str, patterns: &[String]) -> bool {
        let Some(egress) = &self.egress else { return true };
        egress.iter().any(|e| {
            e.namespace.as_deref().is_none_or(|ns| ns == namespace)
                && patterns.iter().any(|p| hosts::overlap(&e.dns, p))
        })
    }

    pub fn sees_exported(&self, export_to: &[String], default: &[&str], owner: &str) -> bool {
        exported(export_to, default, owner, self.namespace)
    }

    /// The services this scope sees, by host name: exported to its namespace and admitted by
    /// its Sidecar, or routed to by a VirtualService it sees (`routed_to`), as Istio does.
    /// When several declare one host, the one in the proxy's namespace wins, then Kubernetes
    /// over ServiceEntry, then (namespace, name) order.
    pub fn services(&self, catalog: Vec<Service>, routed_to: &BTreeSet<String>) -> BTreeMap<String, Service> {
        let default = self.mesh.default_service_export_to();
        let mut visible: BTreeMap<String, Service> = BTreeMap::new();
        for service in catalog {
            let exported = self.sees_exported(&service.export_to, &default, &service.namespace);
            let admitted =
                self.admits(&service.namespace, &service.hostname) || routed_to.contains(&service.hostname);
            if !(exported && admitted) {
                continue;
            }
            let outranked = |existing: &Service| {
                service.namespace != self.namespace || existing.namespace == self.namespace
            };
            if !visible.get(&service.hostname).is_some_and(outranked) {
                visible.insert(service.hostname.clone(), service);
            }
        }
        visible
    }
}

fn sidecar_by_id<'a>(model: &'a Model, id: &str) -> Option<Object<'a, SidecarSpec>> {
    let (namespace, name) = id.split_once('/')?;
    objects::sidecars(model).find(|s| s.namespace == namespace && s.name == name)
}

/// The egress hosts of a Sidecar; `None` when it has no egress listener (Istio then imports
/// everything).
fn egress_hosts(sidecar: Object<'_, SidecarSpec>, proxy_namespace: &str) -> Option<Vec<EgressHost>> {
    if sidecar.spec.egress.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (i, listener) in sidecar.spec.egress.iter().enumerate() {
        for (j, host) in listener.hosts.iter().enumerate() {
            let Some((namespace, dns)) = host.split_once('/') else {
                warn!(resource = %sidecar, field = %format!("spec.egress[{i}].hosts[{j}]"), host, "not namespace/host, skipped");
                continue;
            };
            let namespace = match namespace {
                "*" => None,
                // The root namespace's Sidecar is a template: `.` is the proxy's namespace.
                "." => Some(proxy_namespace.to_owned()),
                "~" => continue,
                ns => Some(ns.to_owned()),
            };
            out.push(EgressHost { namespace, dns: dns.to_ascii_lowercase() });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use trellis_xds::config as pb;

    use super::super::{ProxyIdentity, scope_of};
    use super::*;

    #[test]
    fn export_to_reads_like_istio() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (export_to, default, want_in_own, want_elsewhere) in [
            (list(&[]), vec!["*"], true, true),
            (list(&[]), vec!["."], true, false),
            (list(&["."]), vec!["*"], true, false),
            (list(&["*"]), vec!["."], true, true),
            (list(&["~"]), vec!["*"], false, false),
            (list(&["web"]), vec!["*"], false, true),
            (list(&[".", "web"]), vec!["*"], true, true),
        ] {
            assert_eq!(
                exported(&export_to, &default, "shop", "shop"),
                want_in_own,
                "{export_to:?} {default:?}"
            );
            assert_eq!(
                exported(&export_to, &default, "shop", "web"),
                want_elsewhere,
                "{export_to:?} {default:?}"
            );
        }
    }

    #[test]
    fn export_to_hides_services_and_virtual_services_from_other_namespaces() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: private, namespace: shop }
spec:
  hosts: [private.shop.internal]
  exportTo: ["."]
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
  endpoints: [{ address: 10.4.0.1 }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  exportTo: ["."]
  http: [{ name: shop-only, route: [{ destination: { host: ratings } }] }]
"#;
        let mut m = bookinfo(yaml);
        add_kube_service(&mut m, "shop", "secret", "10.96.1.1", &[("http", 80, None)]);
        let mut secret = (*m.services[&("shop".to_owned(), "secret".to_owned())]).clone();
        secret.export_to = vec!["shop".into()];
        m.services.insert(("shop".into(), "secret".into()), std::sync::Arc::new(secret));

        let shop = config(&m, "shop");
        assert!(service_names(&shop).contains(&"private.shop.internal"));
        assert!(service_names(&shop).contains(&"secret.shop.svc.cluster.local"));
        assert_eq!(routes(&shop, REVIEWS_VH)[0].name, "shop-only");

        let web = config(&m, "web");
        assert!(!service_names(&web).contains(&"private.shop.internal"));
        assert!(!service_names(&web).contains(&"secret.shop.svc.cluster.local"));
        assert_eq!(routes(&web, REVIEWS_VH)[0].name, "default", "the VirtualService is not exported to web");

        let hidden_by_default = with_mesh(m, "defaultServiceExportTo: [\".\"]");
        let web = config(&hidden_by_default, "web");
        assert_eq!(service_names(&web), Vec::<&str>::new(), "the mesh default keeps services home");
    }

    const SIDECARS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: default, namespace: istio-system }
spec:
  egress: [{ hosts: ["./*", "istio-system/*"] }]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: default, namespace: web }
spec:
  egress: [{ hosts: ["shop/ratings.shop.svc.cluster.local"] }]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: frontend, namespace: web }
spec:
  workloadSelector: { labels: { app: frontend } }
  egress: [{ hosts: ["*/productpage.shop.svc.cluster.local", "shop/*.example.com"] }]
  outboundTrafficPolicy: { mode: REGISTRY_ONLY }
"#;

    #[test]
    fn the_sidecar_that_applies_is_chosen_by_labels_then_namespace_then_root() {
        let m = model(SIDECARS);
        let scope = |ns: &str, labels: &[(&str, &str)]| {
            scope_of(
                &m,
                &ProxyIdentity { namespace: ns.into(), labels: labels_of(labels), ..Default::default() },
            )
            .sidecar
        };
        assert_eq!(scope("web", &[("app", "frontend"), ("v", "1")]).as_deref(), Some("web/frontend"));
        assert_eq!(scope("web", &[("app", "backend")]).as_deref(), Some("web/default"));
        assert_eq!(scope("shop", &[("app", "frontend")]).as_deref(), Some("istio-system/default"));
        let without_root = model(&SIDECARS.replacen("namespace: istio-system", "namespace: elsewhere", 1));
        let unscoped =
            scope_of(&without_root, &ProxyIdentity { namespace: "shop".into(), ..Default::default() });
        assert_eq!(unscoped.sidecar, None);
    }

    #[test]
    fn sidecar_egress_limits_what_a_proxy_sees() {
        let m = bookinfo(SIDECARS);
        let web = config(&m, "web");
        assert_eq!(service_names(&web), ["ratings.shop.svc.cluster.local"], "one of four services");
        assert_eq!(web.outbound_policy(), pb::OutboundPolicy::AllowAny);

        let frontend = config_for(&m, "web", &[("app", "frontend")]);
        assert_eq!(service_names(&frontend), ["productpage.shop.svc.cluster.local"]);
        assert_eq!(frontend.outbound_policy(), pb::OutboundPolicy::RegistryOnly, "the Sidecar's own policy");

        // The root namespace's Sidecar: `.` is the proxy's namespace, so shop sees shop.
        let shop = config(&m, "shop");
        assert_eq!(service_names(&shop).len(), 4);
    }

    #[test]
    fn services_a_visible_virtual_service_routes_to_stay_visible() {
        let yaml = format!(
            "{SIDECARS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: ratings, namespace: shop }}
spec:
  hosts: [ratings]
  http: [{{ route: [{{ destination: {{ host: details }} }}] }}]
"
        );
        let web = config(&bookinfo(&yaml), "web");
        assert_eq!(service_names(&web), ["details.shop.svc.cluster.local", "ratings.shop.svc.cluster.local"]);
        let route = &routes(&web, "ratings.shop.svc.cluster.local:9080")[0];
        assert_eq!(forwards(route), [("outbound|9080||details.shop.svc.cluster.local", 0)]);
    }

    #[test]
    fn one_host_declared_twice_resolves_to_one_service() {
        let entry = |ns: &str, address: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: reviews, namespace: {ns} }}
spec:
  hosts: [{REVIEWS}]
  resolution: STATIC
  ports: [{{ number: 9080, name: http, protocol: HTTP }}]
  endpoints: [{{ address: {address} }}]
---
"
            )
        };
        let m = bookinfo(&[entry("web", "10.5.0.1"), entry("shop", "10.5.0.2")].concat());
        let addresses = |ns: &str| -> Vec<String> {
            let config = config(&m, ns);
            endpoints(&config, REVIEWS_VH).iter().map(|e| e.address.clone()).collect()
        };
        assert_eq!(addresses("web"), ["10.5.0.1"], "the proxy's own namespace first");
        assert_eq!(addresses("other"), ["10.1.3.1", "10.1.3.2", "10.1.3.3"], "then Kubernetes");
    }
}
