//! The service view's configuration part: which VirtualServices, DestinationRules and
//! security policies apply to one service, read with the api crate from the YAML directory the
//! mesh is configured from (`--config`, re-read on every request so an edit shows at once).
//!
//! Which policies apply is decided as trellisd scopes them: routing by host (a short host
//! only in the resource's own namespace), PeerAuthentication, AuthorizationPolicy and
//! RequestAuthentication by namespace (the service's, or the root namespace). A policy with a
//! workload selector is listed with its selector: the dashboard does not know the workloads'
//! labels, so the page says it applies "to the workloads its selector picks".

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use trellis_api::load::load_str;
use trellis_api::resource::Document;

/// Istio's default root namespace, where mesh-wide policies live.
const ROOT_NAMESPACE: &str = "istio-system";
/// Files read from the directory at most, and their size.
const MAX_FILES: usize = 1000;

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Why it applies (`hosts`, `namespace`, `root namespace`, `selector {...}`).
    pub scope: String,
    pub spec: Value,
}

/// One HTTP route's destinations with their weights: a canary's configured split.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    pub virtual_service: String,
    pub route: String,
    pub destinations: Vec<Destination>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    /// Percent; Istio's default is 100 for a single destination.
    pub weight: i64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    pub applied: Vec<Applied>,
    pub splits: Vec<Split>,
    /// Files or documents that could not be read, and why.
    pub errors: Vec<String>,
}

/// Reads the `.yaml`, `.yml` and `.json` files of the directory and its subdirectories (as
/// trellisd reads its `--config` directory).
pub fn load_dir(dir: &Path) -> (Vec<Document>, Vec<String>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = std::fs::read_dir(dir) {
        return (docs, vec![format!("--config {}: {e}", dir.display())]);
    }
    let mut files = Vec::new();
    find_files(dir, 0, &mut files);
    files.sort();
    if files.len() > MAX_FILES {
        errors.push(format!("--config {}: only the first {MAX_FILES} files are read", dir.display()));
        files.truncate(MAX_FILES);
    }
    for file in files {
        let text = match crate::input::read_input(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        for loaded in load_str(&text) {
            match loaded.outcome {
                Ok(doc) if loaded.unread.is_none() => docs.push(doc),
                Ok(_) => {}
                Err(e) => errors.push(format!("{} (document {}): {e}", file.display(), loaded.index)),
            }
        }
    }
    (docs, errors)
}

/// Subdirectories deeper than this are not searched (a link loop ends here too).
const MAX_DEPTH: usize = 8;

fn find_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if out.len() > MAX_FILES {
            return;
        }
        if path.is_dir() && depth < MAX_DEPTH {
            find_files(&path, depth + 1, out);
        } else if path.is_file() && path.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        {
            out.push(path);
        }
    }
}

/// What of `docs` applies to the service `namespace/name`.
pub fn for_service(docs: &[Document], namespace: &str, name: &str) -> ServiceConfig {
    let mut out = ServiceConfig::default();
    for doc in docs {
        let json = doc.to_json();
        let kind = doc.resource.kind().name().to_owned();
        let meta = doc.resource.metadata();
        let own_ns = meta.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let own_name = meta.name.clone().unwrap_or_default();
        let spec = json.get("spec").cloned().unwrap_or(Value::Null);
        let names_service = |host: &str| host_is(host, &own_ns, namespace, name);
        let scope = match kind.as_str() {
            "VirtualService" => spec
                .get("hosts")
                .and_then(Value::as_array)
                .is_some_and(|hosts| hosts.iter().filter_map(Value::as_str).any(names_service))
                .then(|| "hosts".to_owned()),
            "DestinationRule" => {
                spec.get("host").and_then(Value::as_str).is_some_and(names_service).then(|| "host".to_owned())
            }
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
                let by_namespace = if own_ns == namespace {
                    Some("namespace")
                } else if own_ns == ROOT_NAMESPACE {
                    Some("root namespace")
                } else {
                    None
                };
                by_namespace.map(|scope| match spec.get("selector") {
                    Some(selector) => format!("{scope}, the workloads of selector {selector}"),
                    None => scope.to_owned(),
                })
            }
            _ => None,
        };
        let Some(scope) = scope else { continue };
        if kind == "VirtualService" {
            out.splits.extend(splits(&format!("{own_ns}/{own_name}"), &spec));
        }
        out.applied.push(Applied { kind, namespace: own_ns, name: own_name, scope, spec });
    }
    out
}

/// Whether `host`, written in a resource of namespace `own_ns`, is the service.
fn host_is(host: &str, own_ns: &str, namespace: &str, name: &str) -> bool {
    let full = format!("{name}.{namespace}.svc.cluster.local");
    host == full
        || host == format!("{name}.{namespace}")
        || host == format!("{name}.{namespace}.svc")
        || (host == name && own_ns == namespace)
}

fn splits(virtual_service: &str, spec: &Value) -> Vec<Split> {
    let routes = spec.get("http").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let destinations: Vec<Value> =
                route.get("route").and_then(Value::as_array).cloned().unwrap_or_default();
            let single = destinations.len() == 1;
            Split {
                virtual_service: virtual_service.to_owned(),
                route: route
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("#{i}"), str::to_owned),
                destinations: destinations
                    .iter()
                    .map(|d| Destination {
                        host: d.pointer("/destination/host").and_then(Value::as_str).unwrap_or("").to_owned(),
                        subset: d.pointer("/destination/subset").and_then(Value::as_str).map(str::to_owned),
                        weight: d.get("weight").and_then(Value::as_i64).unwrap_or(if single {
                            100
                        } else {
                            0
                        }),
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: canary
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-elsewhere, namespace: other}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/shop/sa/web]}
";

    #[test]
    fn what_applies_to_a_service() {
        let docs: Vec<Document> = load_str(CONFIG).into_iter().filter_map(|d| d.outcome.ok()).collect();
        assert_eq!(docs.len(), 5);
        let config = for_service(&docs, "shop", "reviews");
        let names: Vec<String> = config.applied.iter().map(|a| format!("{} {}", a.kind, a.name)).collect();
        assert_eq!(
            names,
            [
                "VirtualService reviews",
                "DestinationRule reviews",
                "PeerAuthentication default",
                "AuthorizationPolicy reviews-callers"
            ]
        );
        assert!(config.applied[3].scope.contains("selector"), "{}", config.applied[3].scope);
        assert_eq!(config.splits.len(), 1);
        let weights: Vec<(Option<String>, i64)> =
            config.splits[0].destinations.iter().map(|d| (d.subset.clone(), d.weight)).collect();
        assert_eq!(weights, [(Some("v1".to_owned()), 80), (Some("v2".to_owned()), 20)]);
    }

    #[test]
    fn subdirectories_are_read_and_bad_documents_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("istio")).unwrap();
        std::fs::write(dir.path().join("istio/shop.yaml"), CONFIG).unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: VirtualService\nspec: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not config").unwrap();
        let (docs, errors) = load_dir(dir.path());
        assert_eq!(docs.len(), 5);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("broken.yaml (document 1)"), "{errors:?}");
    }

    #[test]
    fn an_unreadable_directory_is_an_error() {
        let (docs, errors) = load_dir(Path::new("/nonexistent/trellis-dashboard"));
        assert!(docs.is_empty());
        assert!(errors[0].starts_with("--config /nonexistent/trellis-dashboard:"), "{errors:?}");
    }
}
