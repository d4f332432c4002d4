//! Writes the status of the Kubernetes Gateway API objects Trellis controls (GatewayClass
//! Accepted; Gateway Accepted and Programmed with each listener's conditions and attached
//! routes; HTTPRoute and GRPCRoute `parents[]` Accepted and ResolvedRefs), through the status
//! subresource.
//!
//! The status comes from the same analysis that builds the gateways' config
//! ([`crate::translate::gateway_api::analyze`]). It is written only when it differs from what
//! the API server shows (ignoring `lastTransitionTime`, kept while a condition's status stays),
//! so a write, which comes back through the watch, leads to no other write.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use trellis_api::gateway_api::{GROUP, ParentRef};

use crate::model::{Model, ModelHandle};
use crate::translate::gateway_api::{self, Condition, GatewayStatus, RouteStatus};

/// How soon a failed write is tried again when nothing else changes.
const RETRY: Duration = Duration::from_secs(5);

/// Keeps the status of Gateway API objects in step with the model, forever.
pub async fn run(client: Client, model: ModelHandle) {
    let mut changes = model.subscribe();
    loop {
        let failed = write_all(&client, &model.snapshot()).await;
        let wait = async {
            if failed {
                let _ = tokio::time::timeout(RETRY, changes.changed()).await;
                Ok(())
            } else {
                changes.changed().await
            }
        };
        if wait.await.is_err() {
            return;
        }
    }
}

/// One pass: every status that differs is written. True when a write failed.
async fn write_all(client: &Client, model: &Model) -> bool {
    let analysis = gateway_api::analyze(model);
    let mut failed = false;
    for (name, (generation, conditions)) in &analysis.classes {
        let Some(current) = model.gateway_classes.get(&(String::new(), name.clone())) else { continue };
        let desired = json!({"conditions": render(conditions, *generation, &current.status["conditions"])});
        failed |= !patch(client, "gatewayclasses", "GatewayClass", "", name, &current.status, desired).await;
    }
    for ((namespace, name), status) in &analysis.gateways {
        let Some(current) = model.k8s_gateways.get(&(namespace.clone(), name.clone())) else { continue };
        let desired = gateway_status(status, &current.status);
        failed |= !patch(client, "gateways", "Gateway", namespace, name, &current.status, desired).await;
    }
    for ((namespace, name), status) in &analysis.routes {
        let Some(current) = model.http_routes.get(&(namespace.clone(), name.clone())) else { continue };
        let desired = route_status(status, &current.status);
        failed |= !patch(client, "httproutes", "HTTPRoute", namespace, name, &current.status, desired).await;
    }
    for ((namespace, name), status) in &analysis.grpc_routes {
        let Some(current) = model.grpc_routes.get(&(namespace.clone(), name.clone())) else { continue };
        let desired = route_status(status, &current.status);
        failed |= !patch(client, "grpcroutes", "GRPCRoute", namespace, name, &current.status, desired).await;
    }
    failed
}

/// Writes `desired` unless `current` already says it. False when the write failed.
async fn patch(
    client: &Client,
    plural: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    current: &Value,
    desired: Value,
) -> bool {
    if without_times(current) == without_times(&desired) {
        return true;
    }
    let resource = kube::api::ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = if namespace.is_empty() {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), namespace, &resource)
    };
    // A merge patch replaces lists whole: `desired` holds the complete lists.
    let body = json!({"status": desired});
    match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(kind, namespace, name, error = %e, "writing the status failed; trying again");
            false
        }
    }
}

fn gateway_status(status: &GatewayStatus, current: &Value) -> Value {
    let listeners: Vec<Value> = status
        .listeners
        .iter()
        .map(|l| {
            let before = current["listeners"]
                .as_array()
                .and_then(|ls| ls.iter().find(|c| c["name"] == l.name.as_str()))
                .map_or(Value::Null, |c| c["conditions"].clone());
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": GROUP, "kind": k})).collect::<Vec<_>>(),
                "conditions": render(&l.conditions, status.generation, &before),
            })
        })
        .collect();
    json!({
        "conditions": render(&status.conditions, status.generation, &current["conditions"]),
        "listeners": listeners,
    })
}

/// Ours replace ours; other controllers' entries stay as they are.
fn route_status(status: &RouteStatus, current: &Value) -> Value {
    let ours: Vec<&str> = status.parents.iter().map(|p| p.controller.as_str()).collect();
    let mut parents: Vec<Value> = current["parents"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    !p["controllerName"]
                        .as_str()
                        .is_some_and(|c| gateway_api::CONTROLLERS.contains(&c) || ours.contains(&c))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for p in &status.parents {
        let parent_ref = parent_ref(&p.parent);
        let before = current["parents"]
            .as_array()
            .and_then(|ps| ps.iter().find(|c| c["parentRef"] == parent_ref))
            .map_or(Value::Null, |c| c["conditions"].clone());
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": p.controller,
            "conditions": render(&p.conditions, status.generation, &before),
        }));
    }
    json!({"parents": parents})
}

/// The parent reference as the route wrote it, with the API's defaults filled in.
fn parent_ref(p: &ParentRef) -> Value {
    let mut out = json!({
        "group": p.group.clone().unwrap_or_else(|| GROUP.into()),
        "kind": p.kind.clone().unwrap_or_else(|| "Gateway".into()),
        "name": p.name,
    });
    if let Some(ns) = &p.namespace {
        out["namespace"] = json!(ns);
    }
    if let Some(section) = &p.section_name {
        out["sectionName"] = json!(section);
    }
    if let Some(port) = p.port {
        out["port"] = json!(port);
    }
    out
}

/// Conditions as the API shows them; `before` gives the transition times to keep.
fn render(conditions: &[Condition], generation: i64, before: &Value) -> Vec<Value> {
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null);
    conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let kept = before
                .as_array()
                .and_then(|cs| cs.iter().find(|b| b["type"] == c.kind && b["status"] == status))
                .map(|b| b["lastTransitionTime"].clone())
                .filter(|t| !t.is_null());
            json!({
                "type": c.kind,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": kept.unwrap_or_else(|| now.clone()),
            })
        })
        .collect()
}

/// A status with every `lastTransitionTime` removed, for comparing.
fn without_times(status: &Value) -> Value {
    match status {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_are_kept_while_the_status_stays() {
        let before =
            json!([{"type": "Accepted", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]);
        let same = render(
            &[Condition { kind: "Accepted", status: true, reason: "Accepted", message: String::new() }],
            2,
            &before,
        );
        assert_eq!(same[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(same[0]["observedGeneration"], 2);
        let flipped = render(
            &[Condition { kind: "Accepted", status: false, reason: "X", message: String::new() }],
            2,
            &before,
        );
        assert_ne!(flipped[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(
            without_times(&json!({"conditions": same})),
            without_times(
                &json!({"conditions": render(&[Condition { kind: "Accepted", status: true, reason: "Accepted", message: String::new() }], 2, &Value::Null)})
            )
        );
    }

    #[test]
    fn other_controllers_parents_stay() {
        let current = json!({"parents": [
            {"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []},
            {"parentRef": {"name": "old"}, "controllerName": "trellis.io/gateway-controller", "conditions": []}]});
        let status = RouteStatus { generation: 1, parents: Vec::new() };
        let out = route_status(&status, &current);
        let names: Vec<_> =
            out["parents"].as_array().unwrap().iter().map(|p| p["parentRef"]["name"].clone()).collect();
        assert_eq!(names, [json!("theirs")]);
    }
}
