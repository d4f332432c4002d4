//! What the checks conclude from what they read: pure functions of objects, certificates and
//! the control plane's sync report, no I/O.

use k8s_openapi::api::admissionregistration::v1::WebhookClientConfig;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use x509_parser::pem::Pem;

use crate::proxy_status::model::Syncz;

/// The oldest Kubernetes Trellis supports: native sidecars (the injector's default) are on by
/// default from 1.29.
pub const MIN_KUBERNETES: (u32, u32) = (1, 29);

/// `major` and `minor` as `/version` gives them (`"33+"` on some providers).
pub fn kubernetes_version(major: &str, minor: &str) -> Result<(u32, u32), String> {
    let number = |text: &str| {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().map_err(|_| format!("the API server reports version {major:?}.{minor:?}"))
    };
    Ok((number(major)?, number(minor)?))
}

/// How an installed CRD differs from the one this `trellis` generates (empty when it is
/// current): names, scope, and each version's serving, storage and schema.
pub fn crd_drift(installed: &Value, generated: &CustomResourceDefinition) -> Vec<String> {
    let mut drift = Vec::new();
    let want = match serde_json::to_value(&generated.spec) {
        Ok(spec) => spec,
        Err(e) => return vec![format!("cannot read the generated CRD: {e}")],
    };
    let have = &installed["spec"];
    for field in ["group", "scope"] {
        if have[field] != want[field] {
            drift.push(format!("spec.{field} is {} (expected {})", have[field], want[field]));
        }
    }
    for field in ["kind", "plural", "singular", "shortNames"] {
        if have["names"][field] != want["names"][field] {
            drift.push(format!(
                "spec.names.{field} is {} (expected {})",
                have["names"][field], want["names"][field]
            ));
        }
    }
    let versions = |spec: &Value| spec["versions"].as_array().cloned().unwrap_or_default();
    let installed_versions = versions(have);
    for expected in versions(&want) {
        let name = expected["name"].as_str().unwrap_or_default();
        let Some(actual) = installed_versions.iter().find(|v| v["name"] == expected["name"]) else {
            drift.push(format!("version {name} is missing"));
            continue;
        };
        for field in ["served", "storage"] {
            if actual[field] != expected[field] {
                drift.push(format!(
                    "version {name}: {field} is {} (expected {})",
                    actual[field], expected[field]
                ));
            }
        }
        if actual["schema"] != expected["schema"] {
            drift.push(format!("version {name}: the schema differs from this trellis's"));
        }
    }
    drift
}

/// One certificate of a PEM bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub subject: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// `not_after` for people.
    pub expires: String,
}

/// Every certificate of a PEM bundle; an error when there is none or one does not parse.
pub fn certificates(pem: &[u8]) -> Result<Vec<Certificate>, String> {
    let mut out = Vec::new();
    for (i, block) in Pem::iter_from_buffer(pem).enumerate() {
        let block = block.map_err(|e| format!("PEM block {} does not parse: {e}", i + 1))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("PEM block {} is a {:?}, not a CERTIFICATE", i + 1, block.label));
        }
        let cert = block.parse_x509().map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
        let validity = cert.validity();
        out.push(Certificate {
            subject: cert.subject().to_string(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            expires: validity.not_after.to_string(),
        });
    }
    if out.is_empty() {
        return Err("no PEM certificate in it".to_owned());
    }
    Ok(out)
}

/// Days from `now` to `when`, rounded down.
pub fn days_left(when: i64, now: i64) -> i64 {
    (when - now).div_euclid(86_400)
}

/// Certificates that are expired or not yet valid at `now`, as sentences.
pub fn invalid_now(certs: &[Certificate], now: i64) -> Vec<String> {
    certs
        .iter()
        .filter_map(|c| {
            if c.not_after <= now {
                Some(format!("{} expired on {}", c.subject, c.expires))
            } else if c.not_before > now {
                Some(format!("{} is not valid yet", c.subject))
            } else {
                None
            }
        })
        .collect()
}

/// The webhooks' client configs: for each webhook, what is wrong with where it sends pods and
/// with its caBundle (empty when fine), or its CA certificates.
pub fn webhook_targets(config: &Value, namespace: &str, service: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let webhooks = config["webhooks"].as_array().map(Vec::as_slice).unwrap_or_default();
    if webhooks.is_empty() {
        return vec!["it has no webhooks".to_owned()];
    }
    for webhook in webhooks {
        let name = webhook["name"].as_str().unwrap_or("(unnamed)");
        let target = &webhook["clientConfig"]["service"];
        if target.is_null() {
            problems.push(format!("webhook {name} calls a URL, not the Service {namespace}/{service}"));
        } else if target["namespace"] != namespace || target["name"] != service {
            problems.push(format!(
                "webhook {name} calls the Service {}/{}, not {namespace}/{service}",
                target["namespace"].as_str().unwrap_or("?"),
                target["name"].as_str().unwrap_or("?")
            ));
        }
    }
    problems
}

/// Each webhook's caBundle as certificates; the error names the webhook.
pub fn webhook_ca_bundles(config: &Value) -> Result<Vec<(String, Vec<Certificate>)>, String> {
    let webhooks = config["webhooks"].as_array().map(Vec::as_slice).unwrap_or_default();
    if webhooks.is_empty() {
        return Err("it has no webhooks".to_owned());
    }
    let mut out = Vec::new();
    for webhook in webhooks {
        let name = webhook["name"].as_str().unwrap_or("(unnamed)").to_owned();
        let client: WebhookClientConfig = serde_json::from_value(webhook["clientConfig"].clone())
            .map_err(|e| format!("webhook {name}: clientConfig does not parse: {e}"))?;
        let bundle = client.ca_bundle.map(|b| b.0).unwrap_or_default();
        if bundle.is_empty() {
            return Err(format!("webhook {name} has no caBundle"));
        }
        let certs = certificates(&bundle).map_err(|e| format!("webhook {name}: caBundle: {e}"))?;
        out.push((name, certs));
    }
    Ok(out)
}

/// Ready endpoints of a Service across its EndpointSlices.
pub fn ready_endpoints(slices: &[Value]) -> usize {
    slices
        .iter()
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|endpoint| endpoint["conditions"]["ready"] != Value::Bool(false))
        .count()
}

pub const PROXY_CONTAINER: &str = "istio-proxy";

/// Whether a pod has the sidecar, as a container or a native sidecar (init container).
pub fn has_sidecar(pod: &Value) -> bool {
    let spec = &pod["spec"];
    ["containers", "initContainers"]
        .iter()
        .flat_map(|key| spec[*key].as_array().cloned().unwrap_or_default())
        .any(|c| c["name"] == PROXY_CONTAINER)
}

/// Pods of an injection-enabled namespace that should have the sidecar and do not, as
/// `namespace/name`: running or pending pods that did not opt out and are not on the host
/// network (never injected).
pub fn uninjected(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .filter(|pod| {
            let opted_out = pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
                || pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false";
            let finished = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            let host_network = pod["spec"]["hostNetwork"] == true;
            !opted_out && !finished && !host_network && !has_sidecar(pod)
        })
        .map(|pod| {
            format!(
                "{}/{}",
                pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                pod["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// The tag of an image reference (`hub/proxy:0.1.0` → `0.1.0`); `None` for a digest or no tag.
pub fn image_tag(image: &str) -> Option<&str> {
    if image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map(|(_, tag)| tag)
}

/// The sidecar's image of a pod.
pub fn sidecar_image(pod: &Value) -> Option<&str> {
    let spec = &pod["spec"];
    ["containers", "initContainers"]
        .iter()
        .filter_map(|key| spec[*key].as_array())
        .flatten()
        .find(|c| c["name"] == PROXY_CONTAINER)
        .and_then(|c| c["image"].as_str())
}

/// Injected pods whose sidecar's tag is not `wanted`, as `namespace/name (tag)`.
pub fn other_versions(pods: &[Value], wanted: &str) -> Vec<String> {
    pods.iter()
        .filter_map(|pod| {
            let tag = image_tag(sidecar_image(pod)?)?;
            (tag != wanted).then(|| {
                format!(
                    "{}/{} ({tag})",
                    pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                    pod["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
        })
        .collect()
}

/// Proxies that are not synced, as `name.namespace: STATE`.
pub fn unsynced(syncz: &Syncz) -> Vec<String> {
    syncz
        .proxies
        .iter()
        .filter(|p| !p.state().is_synced())
        .map(|p| format!("{}.{}: {}", p.name(), p.namespace, p.state()))
        .collect()
}

/// At most `n` items, then how many more.
pub fn some_of(items: &[String], n: usize) -> String {
    let mut shown = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        shown.push_str(&format!(" and {} more", items.len() - n));
    }
    shown
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};
    use serde_json::json;

    use super::*;

    fn pem(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> String {
        let mut params = CertificateParams::new(vec!["root".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn versions() {
        assert_eq!(kubernetes_version("1", "33").unwrap(), (1, 33));
        assert_eq!(kubernetes_version("1", "30+").unwrap(), (1, 30));
        assert!(kubernetes_version("1", "").unwrap_err().contains("\"1\".\"\""));
        assert!((1, 28) < MIN_KUBERNETES && (1, 29) >= MIN_KUBERNETES && (2, 0) > MIN_KUBERNETES);
    }

    #[test]
    fn crds_are_compared_with_the_generated_ones() {
        let generated = trellis_api::crds::all().remove(0);
        let installed = serde_json::to_value(&generated).unwrap();
        assert!(crd_drift(&installed, &generated).is_empty());
        let mut old = installed.clone();
        old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
            json!({"type": "object"});
        old["spec"]["versions"].as_array_mut().unwrap().pop();
        let drift = crd_drift(&old, &generated);
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert!(drift[0].contains("the schema differs"), "{drift:?}");
        assert_eq!(drift[1], "version v1 is missing");
    }

    #[test]
    fn certificates_and_expiry() {
        let text = format!("{}{}", pem((2020, 1, 1), (2030, 1, 1)), pem((2020, 1, 1), (2021, 1, 1)));
        let certs = certificates(text.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].subject, "CN=rcgen self signed cert");
        let now = 1_700_000_000; // 2023-11-14
        let invalid = invalid_now(&certs, now);
        assert_eq!(invalid.len(), 1);
        assert!(invalid[0].contains("expired on Jan  1 00:00:00 2021"), "{invalid:?}");
        assert_eq!(days_left(certs[0].not_after, now), 2239);
        assert_eq!(days_left(now - 1, now), -1);

        assert_eq!(certificates(b"").unwrap_err(), "no PEM certificate in it");
        assert!(
            certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err()
                .contains("certificate 1 does not parse")
        );
        let key = KeyPair::generate().unwrap().serialize_pem();
        assert!(certificates(key.as_bytes()).unwrap_err().contains("not a CERTIFICATE"));
    }

    #[test]
    fn webhooks() {
        let bundle = |b: &str| {
            json!({"webhooks": [{"name": "a.trellis.io", "clientConfig": {"caBundle": b,
                "service": {"name": "trellis-injector", "namespace": "trellis-system"}}}]})
        };
        let ca = pem((2020, 1, 1), (2040, 1, 1));
        let encoded = k8s_openapi::ByteString(ca.into_bytes());
        let encoded = serde_json::to_value(&encoded).unwrap();
        let config = bundle(encoded.as_str().unwrap());
        let certs = webhook_ca_bundles(&config).unwrap();
        assert_eq!(certs[0].0, "a.trellis.io");
        assert!(webhook_targets(&config, "trellis-system", "trellis-injector").is_empty());
        assert_eq!(
            webhook_targets(&config, "mesh", "trellis-injector"),
            [
                "webhook a.trellis.io calls the Service trellis-system/trellis-injector, not mesh/trellis-injector"
            ]
        );
        assert_eq!(webhook_ca_bundles(&bundle("")).unwrap_err(), "webhook a.trellis.io has no caBundle");
        assert!(
            webhook_ca_bundles(&bundle("!!!"))
                .unwrap_err()
                .contains("webhook a.trellis.io: clientConfig does not parse")
        );
        // Base64 of something that is not PEM.
        assert!(
            webhook_ca_bundles(&bundle("aGVsbG8=")).unwrap_err().contains("caBundle: no PEM certificate")
        );
        assert_eq!(webhook_ca_bundles(&json!({})).unwrap_err(), "it has no webhooks");
    }

    #[test]
    fn pods_without_sidecars() {
        let pod = |name: &str, extra: Value| {
            let mut pod = json!({"metadata": {"namespace": "shop", "name": name}, "spec": {"containers": [{"name": "app"}]},
                "status": {"phase": "Running"}});
            merge(&mut pod, &extra);
            pod
        };
        let pods = [
            pod("plain", json!({})),
            pod(
                "injected",
                json!({"spec": {"containers": [{"name": "app"}, {"name": "istio-proxy", "image": "hub/proxy:0.1.0"}]}}),
            ),
            pod(
                "native",
                json!({"spec": {"initContainers": [{"name": "istio-proxy", "image": "hub/proxy:0.0.9"}]}}),
            ),
            pod("opted-out", json!({"metadata": {"labels": {"sidecar.istio.io/inject": "false"}}})),
            pod(
                "opted-out-annotation",
                json!({"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}}),
            ),
            pod("job", json!({"status": {"phase": "Succeeded"}})),
            pod("host", json!({"spec": {"hostNetwork": true}})),
        ];
        assert_eq!(uninjected(&pods), ["shop/plain"]);
        assert_eq!(other_versions(&pods, "0.1.0"), ["shop/native (0.0.9)"]);
        assert_eq!(image_tag("registry:5000/hub/proxy:1.2"), Some("1.2"));
        assert_eq!(image_tag("registry:5000/hub/proxy"), None);
        assert_eq!(image_tag("hub/proxy@sha256:abc"), None);
        let items: Vec<String> = (1..=7).map(|i| i.to_string()).collect();
        assert_eq!(some_of(&items, 5), "1, 2, 3, 4, 5 and 2 more");
    }

    fn merge(into: &mut Value, from: &Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b.clone(),
        }
    }

    #[test]
    fn endpoints_and_sync() {
        let slices = [
            json!({"endpoints": [{"conditions": {"ready": true}}, {"conditions": {"ready": false}}]}),
            json!({"endpoints": [{"conditions": {}}]}),
            json!({}),
        ];
        assert_eq!(ready_endpoints(&slices), 2);
        let syncz: Syncz = serde_json::from_value(json!({"proxies": [
            {"id": "sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local", "namespace": "shop", "status": "SYNCED"},
            {"id": "sidecar~10.0.0.2~api-1.shop~shop.svc.cluster.local", "namespace": "shop", "status": "STALE"},
        ]}))
        .unwrap();
        assert_eq!(unsynced(&syncz), ["api-1.shop: STALE"]);
    }
}
