//! Whether an object the control plane needs is ready, read from its status the way `kubectl
//! rollout status` reads it: pure functions of the object, shared by `install` (which waits) and
//! `check` (which reports).

use serde_json::Value;

/// Ready, with what shows it; or not, with why.
pub type Readiness = Result<String, String>;

fn count(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

/// The controller has seen the latest spec (or the object has no generation, as in a stand-in).
fn observed(object: &Value) -> Result<(), String> {
    let generation = object["metadata"]["generation"].as_i64();
    let observed = object["status"]["observedGeneration"].as_i64();
    match (generation, observed) {
        (Some(g), Some(o)) if o < g => {
            Err(format!("the controller has not yet seen generation {g} (at {o})"))
        }
        (Some(g), None) if g > 1 || !object["status"].is_object() => Err("no status yet".to_owned()),
        _ => Ok(()),
    }
}

/// A Deployment is ready when its latest spec is rolled out and every replica is available.
pub fn deployment(object: &Value) -> Readiness {
    observed(object)?;
    let wanted = object["spec"]["replicas"].as_i64().unwrap_or(1);
    let status = &object["status"];
    let (updated, total, available) =
        (count(&status["updatedReplicas"]), count(&status["replicas"]), count(&status["availableReplicas"]));
    if updated < wanted {
        return Err(format!("{updated} of {wanted} replicas updated, {available} available"));
    }
    if total > updated {
        return Err(format!("{} old replicas are pending termination", total - updated));
    }
    if available < updated {
        return Err(format!("{available} of {wanted} replicas available"));
    }
    Ok(format!("{available} of {wanted} replicas available"))
}

/// A DaemonSet is ready when a pod is scheduled, updated and ready on every node it wants.
pub fn daemon_set(object: &Value) -> Readiness {
    observed(object)?;
    let status = &object["status"];
    let desired = count(&status["desiredNumberScheduled"]);
    let updated = count(&status["updatedNumberScheduled"]);
    let ready = count(&status["numberReady"]);
    if desired == 0 {
        return Err("no node to run on yet (0 pods scheduled)".to_owned());
    }
    if updated < desired {
        return Err(format!("{updated} of {desired} nodes updated, {ready} ready"));
    }
    if ready < desired {
        return Err(format!("ready on {ready} of {desired} nodes"));
    }
    Ok(format!("ready on {ready} of {desired} nodes"))
}

/// A webhook configuration is ready when each of its webhooks has a caBundle (the injector writes
/// it when it starts, in the chart's default mode).
pub fn webhook_ca_bundle(object: &Value) -> Readiness {
    let webhooks = object["webhooks"].as_array().map(Vec::as_slice).unwrap_or_default();
    if webhooks.is_empty() {
        return Err("it has no webhooks".to_owned());
    }
    let missing: Vec<&str> = webhooks
        .iter()
        .filter(|w| w["clientConfig"]["caBundle"].as_str().is_none_or(|b| b.trim().is_empty()))
        .map(|w| w["name"].as_str().unwrap_or("(unnamed)"))
        .collect();
    if missing.is_empty() {
        Ok(format!("{} webhook(s) have a caBundle", webhooks.len()))
    } else {
        Err(format!("no caBundle yet on {} (the injector sets it when it starts)", missing.join(", ")))
    }
}

/// A CRD can be used once the API server has Established it.
pub fn crd_established(object: &Value) -> Readiness {
    let conditions = object["status"]["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
    let condition = |kind: &str| conditions.iter().find(|c| c["type"] == kind);
    match condition("Established") {
        Some(c) if c["status"] == "True" => Ok("established".to_owned()),
        _ => match condition("NamesAccepted") {
            Some(c) if c["status"] == "False" => {
                Err(format!("names not accepted: {}", c["message"].as_str().unwrap_or_default()))
            }
            _ => Err("not established yet".to_owned()),
        },
    }
}

/// Whether a pod is Ready (its Ready condition).
pub fn pod_ready(pod: &Value) -> bool {
    let conditions = pod["status"]["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
    conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Why each pod that is not ready is not: its phase, and what its containers wait on or died
/// of (`trellis-injector-7f9c: container injector waiting: CrashLoopBackOff (back-off 5m0s)`).
pub fn pod_problems(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .filter(|pod| !pod_ready(pod))
        .map(|pod| {
            let name = pod["metadata"]["name"].as_str().unwrap_or("(unnamed)");
            let status = &pod["status"];
            let mut reasons = Vec::new();
            let statuses = ["initContainerStatuses", "containerStatuses"]
                .iter()
                .flat_map(|key| status[*key].as_array().cloned().unwrap_or_default());
            for container in statuses {
                let cname = container["name"].as_str().unwrap_or("?");
                let state = &container["state"];
                let (what, detail) = if state["waiting"].is_object() {
                    ("waiting", &state["waiting"])
                } else if state["terminated"].is_object() && state["terminated"]["reason"] != "Completed" {
                    ("terminated", &state["terminated"])
                } else {
                    continue;
                };
                let reason = detail["reason"].as_str().unwrap_or("unknown reason");
                let message =
                    detail["message"].as_str().map(|m| format!(" ({})", m.trim())).unwrap_or_default();
                reasons.push(format!("container {cname} {what}: {reason}{message}"));
            }
            if reasons.is_empty() {
                let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
                if let Some(c) =
                    conditions.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                {
                    let reason = c["reason"].as_str().unwrap_or("Unschedulable");
                    let message = c["message"].as_str().unwrap_or_default();
                    reasons.push(format!("not scheduled: {reason} {message}").trim().to_owned());
                }
            }
            if reasons.is_empty() {
                let phase = status["phase"].as_str().unwrap_or("Pending");
                reasons.push(format!("{phase}, not ready"));
            }
            format!("{name}: {}", reasons.join("; "))
        })
        .collect()
}

/// The label selector of a workload's pods (`spec.selector.matchLabels`), as `k=v,k=v`.
pub fn pod_selector(workload: &Value) -> Option<String> {
    let labels = workload["spec"]["selector"]["matchLabels"].as_object()?;
    let parts: Vec<String> =
        labels.iter().filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}"))).collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn deployments() {
        let d = |spec: Value, status: Value| json!({"metadata": {"generation": 2}, "spec": spec, "status": status});
        let ready = d(
            json!({"replicas": 2}),
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(deployment(&ready).unwrap(), "2 of 2 replicas available");
        let cases = [
            (d(json!({"replicas": 2}), json!({})), "no status yet"),
            (
                d(json!({}), json!({"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1})),
                "not yet seen generation 2",
            ),
            (
                d(
                    json!({"replicas": 2}),
                    json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}),
                ),
                "1 of 2 replicas updated",
            ),
            (
                d(
                    json!({"replicas": 2}),
                    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
                ),
                "1 old replicas",
            ),
            (
                d(
                    json!({"replicas": 2}),
                    json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 0}),
                ),
                "0 of 2 replicas available",
            ),
        ];
        for (object, why) in cases {
            let err = deployment(&object).unwrap_err();
            assert!(err.contains(why), "{object}: {err}");
        }
        // No generation at all (nothing but the spec): the status decides.
        assert!(
            deployment(&json!({"spec": {}, "status": {"updatedReplicas": 1, "availableReplicas": 1}}))
                .is_ok()
        );
        assert!(deployment(&json!({"spec": {}})).is_err());
    }

    #[test]
    fn daemon_sets() {
        let ds = |status: Value| json!({"metadata": {"generation": 1}, "status": status});
        assert!(
            daemon_set(&ds(
                json!({"desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 3})
            ))
            .is_ok()
        );
        let err = daemon_set(&ds(
            json!({"desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 2}),
        ))
        .unwrap_err();
        assert_eq!(err, "ready on 2 of 3 nodes");
        assert!(daemon_set(&ds(json!({"desiredNumberScheduled": 0}))).unwrap_err().contains("no node"));
    }

    #[test]
    fn webhooks_and_crds() {
        let hook = |bundle: Value| json!({"webhooks": [{"name": "a.trellis.io", "clientConfig": {"caBundle": bundle}}]});
        assert!(webhook_ca_bundle(&hook(json!("LS0t"))).is_ok());
        assert!(webhook_ca_bundle(&hook(json!(""))).unwrap_err().contains("no caBundle yet on a.trellis.io"));
        assert!(webhook_ca_bundle(&hook(Value::Null)).is_err());
        assert!(webhook_ca_bundle(&json!({})).unwrap_err().contains("no webhooks"));

        let crd = |conditions: Value| json!({"status": {"conditions": conditions}});
        assert!(crd_established(&crd(json!([{"type": "Established", "status": "True"}]))).is_ok());
        assert!(crd_established(&json!({})).is_err());
        let err =
            crd_established(&crd(json!([{"type": "NamesAccepted", "status": "False", "message": "taken"}])))
                .unwrap_err();
        assert_eq!(err, "names not accepted: taken");
    }

    #[test]
    fn why_pods_are_not_ready() {
        let pods = [
            json!({"metadata": {"name": "ok"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            json!({"metadata": {"name": "crash"}, "status": {"phase": "Running", "containerStatuses": [
                {"name": "injector", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s "}}}]}}),
            json!({"metadata": {"name": "pull"}, "status": {"initContainerStatuses": [
                {"name": "init", "state": {"terminated": {"reason": "Completed"}}}],
                "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}),
            json!({"metadata": {"name": "nowhere"}, "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}}),
            json!({"metadata": {"name": "quiet"}, "status": {"phase": "Running"}}),
        ];
        assert_eq!(
            pod_problems(&pods),
            [
                "crash: container injector waiting: CrashLoopBackOff (back-off 5m0s)",
                "pull: container c waiting: ImagePullBackOff",
                "nowhere: not scheduled: Unschedulable 0/3 nodes are available",
                "quiet: Running, not ready",
            ]
        );
        let workload = json!({"spec": {"selector": {"matchLabels": {"app": "trellisd", "x": "y"}}}});
        assert_eq!(pod_selector(&workload).unwrap(), "app=trellisd,x=y");
        assert_eq!(pod_selector(&json!({})), None);
    }
}
