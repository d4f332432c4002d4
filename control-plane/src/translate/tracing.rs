//! The mesh config's tracing → the proxy's `TracingConfig`: whether tracing is on
//! (`enableTracing`, or a tracing provider in `defaultProviders`), the sampling percentage
//! (`defaultConfig.tracing.sampling`, Istio's 1 % when unset), custom tags, the `http.url`
//! limit, and the provider spans go to — the first of `defaultProviders.tracing` (a zipkin or
//! opentelemetry extension provider), else the legacy `defaultConfig.tracing.zipkin.address`;
//! without either, tracing is off (Istio would send to `zipkin.istio-system:9411` regardless).
//! A provider's service is resolved to its endpoints through the registry; a service the
//! registry does not know is left for the proxy to resolve by name.

use std::net::{IpAddr, SocketAddr};

use tracing::warn;
use trellis_api::mesh::{CustomTag, ExtensionProvider};
use trellis_xds::config as pb;

use super::names::resolve_host;
use super::services;
use crate::model::Model;

/// The tracing settings of a proxy in `namespace`, or `None` when tracing is off.
pub fn config(model: &Model, namespace: &str) -> Option<pb::TracingConfig> {
    let mesh = &model.mesh;
    let default_provider = mesh.default_tracing_provider();
    if !mesh.enable_tracing() && default_provider.is_none() {
        return None;
    }
    let proxy = mesh.proxy_config();
    let tracing = proxy.tracing.as_ref();
    // Out-of-range values are reported by validation; the proxy would refuse them whole.
    let sampling = proxy.tracing_sampling();
    let sampling_percent = if sampling.is_finite() { sampling.clamp(0.0, 100.0) } else { 1.0 };
    // No provider, no tracing: a proxy that made itself the parent of spans it never exported
    // would leave holes in the apps' own traces.
    let provider = match default_provider {
        Some(p) => resolve_provider(model, p),
        None => tracing.and_then(|t| t.zipkin.as_ref()).and_then(|z| z.address.as_deref()).map(legacy_zipkin),
    }?;
    Some(pb::TracingConfig {
        sampling_percent,
        provider: Some(provider),
        custom_tags: tracing.map(|t| custom_tags(&t.custom_tags)).unwrap_or_default(),
        max_path_tag_length: tracing.and_then(|t| t.max_path_tag_length).unwrap_or(0),
        node: Some(pb::TracingNode {
            namespace: namespace.to_owned(),
            // Istio's mesh id defaults to the trust domain.
            mesh_id: mesh.trust_domain().to_owned(),
            ..Default::default()
        }),
    })
}

/// `customTags`, sorted by tag name (the map's order); a tag setting none or several kinds is
/// left out (validation names it).
pub fn custom_tags(tags: &std::collections::BTreeMap<String, CustomTag>) -> Vec<pb::TracingCustomTag> {
    use pb::tracing_custom_tag::Kind;
    tags.iter()
        .filter_map(|(name, tag)| {
            let kind = match (&tag.literal, &tag.environment, &tag.header) {
                (Some(l), None, None) => Kind::Literal(l.value.clone()),
                (None, Some(e), None) if !e.name.is_empty() => Kind::Environment(pb::TracingValueFrom {
                    name: e.name.clone(),
                    default_value: e.default_value.clone(),
                }),
                (None, None, Some(h)) if http::HeaderName::from_bytes(h.name.as_bytes()).is_ok() => {
                    Kind::Header(pb::TracingValueFrom { name: h.name.clone(), default_value: h.default_value.clone() })
                }
                _ => {
                    warn!(tag = %name, "defaultConfig.tracing.customTags: not one valid literal, environment or header; left out");
                    return None;
                }
            };
            Some(pb::TracingCustomTag { tag: name.clone(), kind: Some(kind) })
        })
        .collect()
}

fn legacy_zipkin(address: &str) -> pb::TracingProvider {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    pb::TracingProvider {
        name: "zipkin".to_owned(),
        addresses: vec![address.to_owned()],
        authority: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        kind: Some(pb::tracing_provider::Kind::Zipkin(pb::TracingZipkin::default())),
        ..Default::default()
    }
}

pub(super) fn resolve_provider(model: &Model, provider: &ExtensionProvider) -> Option<pb::TracingProvider> {
    let problems = provider.problems();
    if !problems.is_empty() {
        warn!(provider = %provider.name, "invalid in the mesh config: {}; spans are not exported", problems.join("; "));
        return None;
    }
    let (service, port, max_tag_length, kind, timeout) = if let Some(z) = &provider.zipkin {
        let kind = pb::tracing_provider::Kind::Zipkin(pb::TracingZipkin {
            path: z.path.clone().unwrap_or_default(),
        });
        (&z.service, z.port, z.max_tag_length, kind, None)
    } else if let Some(o) = &provider.opentelemetry {
        match &o.http {
            Some(h) => {
                let kind = pb::tracing_provider::Kind::OtlpHttp(pb::TracingOtlpHttp {
                    path: h.path.clone(),
                    headers: h.headers.clone().into_iter().collect(),
                });
                (&o.service, o.port, o.max_tag_length, kind, h.timeout.as_ref())
            }
            None => {
                let grpc = o.grpc.clone().unwrap_or_default();
                let kind = pb::tracing_provider::Kind::OtlpGrpc(pb::TracingOtlpGrpc {
                    initial_metadata: grpc.initial_metadata.into_iter().collect(),
                });
                (&o.service, o.port, o.max_tag_length, kind, o.grpc.as_ref().and_then(|g| g.timeout.as_ref()))
            }
        }
    } else {
        return None;
    };
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let (namespace, host) = match service.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, service.as_str()),
    };
    let hostname = resolve_host(host, namespace.unwrap_or(model.mesh.root_namespace()));
    let registry = services::discover(model);
    let endpoints: Vec<String> = registry
        .iter()
        .find(|s| s.hostname == hostname && namespace.is_none_or(|ns| s.namespace == ns))
        .and_then(|s| s.port(port))
        .map(|p| {
            p.endpoints
                .iter()
                .filter_map(|e| {
                    let ip: IpAddr = e.address.parse().ok()?;
                    let target = u16::try_from(e.port).ok().filter(|p| *p != 0).unwrap_or(port);
                    Some(SocketAddr::new(ip, target).to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    // Not in the registry (or no ready endpoint): the proxy resolves the name itself.
    let addresses = if endpoints.is_empty() { vec![format!("{host}:{port}")] } else { endpoints };
    Some(pb::TracingProvider {
        name: provider.name.clone(),
        addresses,
        authority: hostname,
        max_tag_length: max_tag_length.unwrap_or(256),
        timeout: timeout.and_then(|t| t.to_std().ok()).map(Into::into),
        kind: Some(kind),
    })
}

#[cfg(test)]
mod tests {
    use super::config;
    use super::*;
    use crate::translate::test_support::*;

    fn with_mesh(mesh_yaml: &str, yaml: &str) -> Model {
        let mut m = model(yaml);
        m.mesh = std::sync::Arc::new(trellis_api::mesh::MeshConfig::from_yaml(mesh_yaml).unwrap().0);
        m
    }

    const ZIPKIN_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: zipkin, namespace: istio-system }
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  ports: [{ number: 9411, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints: [{ address: 10.0.0.9 }]
"#;

    #[test]
    fn off_when_disabled_and_no_default_provider() {
        let m = with_mesh("enableTracing: false", "");
        assert_eq!(config(&m, "shop"), None);
    }

    #[test]
    fn default_provider_resolves_through_the_registry() {
        let mesh = r#"
extensionProviders:
- name: zipkin
  zipkin: { service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 100 }
defaultProviders: { tracing: [zipkin] }
defaultConfig:
  tracing:
    sampling: 25
    maxPathTagLength: 99
    customTags:
      env: { literal: { value: prod } }
      user: { header: { name: x-user, defaultValue: anon } }
      pod: { environment: { name: POD_NAME } }
      broken: {}
"#;
        let m = with_mesh(mesh, ZIPKIN_SERVICE);
        let c = config(&m, "shop").unwrap();
        assert_eq!(c.sampling_percent, 25.0);
        assert_eq!(c.max_path_tag_length, 99);
        let p = c.provider.unwrap();
        assert_eq!(p.addresses, ["10.0.0.9:9411"]);
        assert_eq!(p.authority, "zipkin.istio-system.svc.cluster.local");
        assert_eq!(p.max_tag_length, 100);
        assert!(matches!(p.kind, Some(pb::tracing_provider::Kind::Zipkin(_))));
        let tags: Vec<&str> = c.custom_tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(tags, ["env", "pod", "user"], "the invalid one is left out");
        let node = c.node.unwrap();
        assert_eq!((node.namespace.as_str(), node.mesh_id.as_str()), ("shop", "cluster.local"));
    }

    #[test]
    fn opentelemetry_over_http_and_grpc_and_an_unknown_service_by_name() {
        let mesh = r#"
extensionProviders:
- name: otel
  opentelemetry: { service: otel.observability.svc.cluster.local, port: 4318, http: { path: /v1/traces, timeout: 2s, headers: { x-key: v } } }
- name: otel-grpc
  opentelemetry: { service: otel.observability.svc.cluster.local, port: 4317 }
defaultProviders: { tracing: [otel] }
"#;
        let m = with_mesh(mesh, "");
        let p = config(&m, "shop").unwrap().provider.unwrap();
        assert_eq!(p.addresses, ["otel.observability.svc.cluster.local:4318"]);
        let Some(pb::tracing_provider::Kind::OtlpHttp(http)) = &p.kind else { panic!("{p:?}") };
        assert_eq!(http.headers.get("x-key").map(String::as_str), Some("v"));
        assert_eq!(p.timeout.map(|t| t.seconds), Some(2));
        let m = with_mesh(&mesh.replace("tracing: [otel]", "tracing: [otel-grpc]"), "");
        let p = config(&m, "shop").unwrap().provider.unwrap();
        assert!(matches!(p.kind, Some(pb::tracing_provider::Kind::OtlpGrpc(_))));
    }

    #[test]
    fn legacy_zipkin_address_and_the_default_sampling() {
        let m =
            with_mesh("defaultConfig: { tracing: { zipkin: { address: 'zipkin.istio-system:9411' } } }", "");
        let c = config(&m, "shop").unwrap();
        assert_eq!(c.sampling_percent, 1.0, "Istio's default");
        let p = c.provider.unwrap();
        assert_eq!((p.name.as_str(), p.authority.as_str()), ("zipkin", "zipkin.istio-system"));
        // Tracing on without a provider (Istio's implicit zipkin.istio-system:9411): off.
        let m = with_mesh("", "");
        assert_eq!(config(&m, "shop"), None);
    }
}
