//! The little of the kubelet the demo needs: a container's environment with its downward-API
//! references filled in (`fieldRef`, `resourceFieldRef`), and the pod's labels file as the
//! downward-API volume writes it. What the demo cannot provide (ConfigMaps, Secrets) is an error
//! naming the variable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use trellis_api::annotations::Quantity;

/// What the kubelet knows about a running pod.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub namespace: &'a str,
    pub ip: String,
    pub host_ip: String,
}

/// The container's environment, in order, every value resolved.
pub fn environment(container: &Container, facts: &PodFacts<'_>) -> Result<Vec<(String, String)>, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = value_of(var, container, facts)
                .map_err(|e| format!("container {} env {}: {e}", container.name, var.name))?;
            Ok((var.name.clone(), value))
        })
        .collect()
}

fn value_of(var: &EnvVar, container: &Container, facts: &PodFacts<'_>) -> Result<String, String> {
    let Some(from) = &var.value_from else { return Ok(var.value.clone().unwrap_or_default()) };
    if let Some(field) = &from.field_ref {
        return field_value(&field.field_path, facts);
    }
    if let Some(resource) = &from.resource_field_ref {
        if resource.container_name.as_deref().is_some_and(|c| c != container.name) {
            return Err("resourceFieldRef of another container is not supported by the demo".to_owned());
        }
        return resource_value(&resource.resource, container);
    }
    Err("only fieldRef and resourceFieldRef are supported by the demo (no ConfigMaps or Secrets)".to_owned())
}

fn field_value(path: &str, facts: &PodFacts<'_>) -> Result<String, String> {
    let meta = &facts.pod.metadata;
    let spec = facts.pod.spec.as_ref();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(value) = keyed("metadata.labels['", &meta.labels) {
        return Ok(value);
    }
    if let Some(value) = keyed("metadata.annotations['", &meta.annotations) {
        return Ok(value);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => facts.namespace.to_owned(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "spec.serviceAccountName" => {
            spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".to_owned())
        }
        "spec.nodeName" => {
            spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| "trellis-demo".to_owned())
        }
        other => return Err(format!("fieldRef {other:?} is not supported by the demo")),
    })
}

/// `limits.cpu` and friends, as the kubelet gives them with the default divisor: whole cores
/// rounded up, bytes. Without a limit the kubelet gives the node's capacity; the demo, this
/// machine's CPUs.
fn resource_value(resource: &str, container: &Container) -> Result<String, String> {
    let resources = container.resources.as_ref();
    let (which, name) =
        resource.split_once('.').ok_or_else(|| format!("resourceFieldRef {resource:?} is not valid"))?;
    let quantities = match which {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("resourceFieldRef {resource:?} is not valid")),
    };
    let quantity = quantities.and_then(|q| q.get(name)).map(|q| q.0.as_str());
    match name {
        "cpu" => match quantity {
            Some(q) => cpu_cores(q).map(|c| c.to_string()),
            None => Ok(std::thread::available_parallelism().map(usize::from).unwrap_or(1).to_string()),
        },
        "memory" | "ephemeral-storage" => match quantity {
            Some(q) => bytes(q).map(|b| b.to_string()),
            None => Ok("0".to_owned()),
        },
        _ => Err(format!("resourceFieldRef {resource:?} is not supported by the demo")),
    }
}

/// Whole cores, rounded up and at least one, as the downward API reports a CPU limit.
fn cpu_cores(quantity: &str) -> Result<u128, String> {
    let millis = Quantity::parse(quantity)?.to_millis();
    let millis = millis.ok_or_else(|| format!("CPU quantity {quantity:?} is negative or too large"))?;
    Ok(millis.div_ceil(1000).max(1))
}

fn bytes(quantity: &str) -> Result<u128, String> {
    Quantity::parse(quantity)?
        .to_units()
        .ok_or_else(|| format!("memory quantity {quantity:?} is negative or too large"))
}

/// The downward API's `labels` file: `key="value"` per line, sorted, values quoted as Go does.
pub fn labels_file(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "catalog-v1", "labels": {"app": "catalog"}, "annotations": {"a": "b"}},
            "spec": {"serviceAccountName": "catalog", "containers": [{
                "name": "istio-proxy",
                "resources": {"limits": {"cpu": "1500m", "memory": "512Mi"}},
                "env": [
                    {"name": "PLAIN", "value": "x"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['none']"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "0"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}
                ]
            }]}
        }))
        .unwrap()
    }

    fn facts(pod: &Pod) -> PodFacts<'_> {
        PodFacts { pod, namespace: "shop", ip: "10.77.0.11".into(), host_ip: "10.77.0.1".into() }
    }

    #[test]
    fn the_downward_api_is_filled_in() {
        let pod = pod();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let env = environment(container, &facts(&pod)).unwrap();
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("PLAIN", "x"),
                ("POD_NAME", "catalog-v1"),
                ("POD_NAMESPACE", "shop"),
                ("INSTANCE_IP", "10.77.0.11"),
                ("HOST_IP", "10.77.0.1"),
                ("SA", "catalog"),
                ("APP", "catalog"),
                ("NONE", ""),
                ("CPU", "2"),
                ("MEM", "536870912"),
            ]
        );
    }

    #[test]
    fn what_the_demo_cannot_provide_names_the_variable() {
        let mut pod = pod();
        let container = &mut pod.spec.as_mut().unwrap().containers[0];
        container.env = Some(vec![
            serde_json::from_value(serde_json::json!(
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ))
            .unwrap(),
        ]);
        let container = container.clone();
        let err = environment(&container, &facts(&pod)).unwrap_err();
        assert!(err.starts_with("container istio-proxy env TOKEN: only fieldRef"), "{err}");
        let mut bad = container.clone();
        bad.env = Some(vec![
            serde_json::from_value(serde_json::json!(
                {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}
            ))
            .unwrap(),
        ]);
        assert!(environment(&bad, &facts(&pod)).unwrap_err().contains("X: fieldRef \"status.phase\""));
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_cores("2"), Ok(2));
        assert_eq!(cpu_cores("100m"), Ok(1));
        assert_eq!(cpu_cores("2001m"), Ok(3));
        assert!(cpu_cores("lots").unwrap_err().contains("\"lots\""));
        assert_eq!(bytes("1Ki"), Ok(1024));
        assert_eq!(bytes("1M"), Ok(1_000_000));
        assert_eq!(bytes("300"), Ok(300));
        assert!(bytes("-1Gi").is_err());
        assert_eq!(cpu_cores("1500m"), Ok(2));
        assert_eq!(cpu_cores("2e0"), Ok(2));
        assert_eq!(bytes("1.5Ki"), Ok(1536));
    }

    #[test]
    fn labels_are_written_as_the_downward_api_does() {
        let labels =
            BTreeMap::from([("app".to_owned(), "catalog".to_owned()), ("q".to_owned(), "a\"b".to_owned())]);
        assert_eq!(labels_file(&labels), "app=\"catalog\"\nq=\"a\\\"b\"\n");
    }
}
