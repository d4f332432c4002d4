//! The Kubernetes source through kube-rs's real client against a stand-in API server (the only
//! fake: a real API server cannot run here). Services, EndpointSlices, Pods, Nodes and VirtualServices
//! are added, updated and deleted, and the model follows; invalid VirtualServices are rejected
//! with a message naming the field while the last good version stays; an API server that fails
//! at first, a CRD that is not installed and watches that expire (with a deletion missed in
//! between) are all recovered from.

mod fake_api;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_api::FakeApi;
use serde_json::{Value, json};
use tokio::time::Instant;
use trellis_api::resource::{Kind, Resource};
use trellis_control_plane::model::{
    KubeEndpoint, KubeEndpointSlice, KubePod, KubeService, KubeServicePort, Model, ModelHandle, ObjectKey,
};
use trellis_control_plane::sources::kube::{SourceStatus, run};

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const NODES: &str = "/api/v1/nodes";
const NAMESPACES: &str = "/api/v1/namespaces";
const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_model_follows_the_cluster() {
    // Current-thread runtime: the source's tasks run on this thread, so this subscriber sees
    // their logs.
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let api = FakeApi::start(fake_api::WATCHED).await;
    api.apply(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "shop", "labels": {"istio-injection": "enabled"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
        }}),
    );
    // The first list of Services fails: the watcher backs off and lists again.
    api.fail_lists(SERVICES, 1);
    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let model = ModelHandle::default();
    let status = SourceStatus::new();
    let source = tokio::spawn(run(client, model.clone(), status.clone()));

    // Synced: every kind listed, the missing Gateway CRD included.
    if tokio::time::timeout(DEADLINE, status.wait_synced()).await.is_err() {
        panic!("not synced after {DEADLINE:?}: {:?} still listing\n{}", status.unsynced(), logs.text());
    }
    let namespace = model.snapshot().resources.get(&ObjectKey::new(Kind::Namespace, "", "shop")).cloned();
    let Some(Resource::Namespace(ns)) = namespace.as_deref() else { panic!("no namespace: {namespace:?}") };
    assert_eq!(ns.metadata.labels.as_ref().and_then(|l| l.get("istio-injection")).unwrap(), "enabled");
    assert_eq!(ns.metadata.managed_fields, None, "managed fields are not kept");
    assert!(logs.text().contains("does not serve Gateway"), "{}", logs.text());
    assert!(logs.text().contains("watching Service failed; retrying"), "{}", logs.text());

    // Service: added, then updated.
    let reviews = || key("shop", "reviews");
    api.apply(SERVICES, service(json!({}), 8080));
    let mut expected = KubeService {
        namespace: "shop".into(),
        name: "reviews".into(),
        addresses: vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
        ports: vec![
            KubeServicePort {
                name: "http".into(),
                port: 9080,
                app_protocol: Some("http".into()),
                target_port: Some(8080),
            },
            KubeServicePort { name: "grpc".into(), port: 9090, app_protocol: None, target_port: None },
        ],
        labels: BTreeMap::from([("app".into(), "reviews".into())]),
        export_to: vec![],
    };
    wait_until(&model, "the Service", |m| m.services.get(&reviews()).is_some_and(|s| **s == expected)).await;
    api.apply(SERVICES, service(json!({"networking.istio.io/exportTo": ".,istio-system"}), 8081));
    expected.ports[0].target_port = Some(8081);
    expected.export_to = vec![".".into(), "istio-system".into()];
    wait_until(&model, "the updated Service", |m| {
        m.services.get(&reviews()).is_some_and(|s| **s == expected)
    })
    .await;

    // EndpointSlice: added, then one endpoint turns unready.
    let slice_key = || key("shop", "reviews-x7k2p");
    api.apply(SLICES, endpoint_slice(json!({})));
    let mut expected = KubeEndpointSlice {
        namespace: "shop".into(),
        name: "reviews-x7k2p".into(),
        service: "reviews".into(),
        ports: BTreeMap::from([("http".into(), 8080)]),
        endpoints: vec![
            KubeEndpoint {
                addresses: vec!["10.1.0.5".parse().unwrap()],
                ready: true,
                pod: Some("reviews-v1-abc".into()),
                node_name: Some("node-a".into()),
            },
            // No conditions: ready, as the API says.
            KubeEndpoint {
                addresses: vec!["10.1.0.6".parse().unwrap()],
                ready: true,
                pod: Some("reviews-v2-def".into()),
                node_name: None,
            },
        ],
    };
    wait_until(&model, "the EndpointSlice", |m| {
        m.endpoint_slices.get(&slice_key()).is_some_and(|s| **s == expected)
    })
    .await;
    api.apply(SLICES, endpoint_slice(json!({"ready": false})));
    expected.endpoints[1].ready = false;
    wait_until(&model, "the updated EndpointSlice", |m| {
        m.endpoint_slices.get(&slice_key()).is_some_and(|s| **s == expected)
    })
    .await;

    // Pods: a host-network pod is not part of the model. It is sent first, so once the next
    // pod has arrived it has been handled.
    api.apply(PODS, pod("monitoring", "node-exporter", json!({"hostNetwork": true}), "192.168.0.4"));
    // A Deployment's pod: its workload is the Deployment, named from its ReplicaSet.
    let mut reviews_pod = pod(
        "shop",
        "reviews-v1-abc",
        json!({"serviceAccountName": "bookinfo-reviews", "nodeName": "node-a"}),
        "10.1.0.5",
    );
    reviews_pod["metadata"]["labels"]["pod-template-hash"] = json!("7d9f8c6b5");
    reviews_pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "reviews-v1-7d9f8c6b5", "uid": "rs-1", "controller": true}]);
    api.apply(PODS, reviews_pod);
    let expected = KubePod {
        namespace: "shop".into(),
        name: "reviews-v1-abc".into(),
        labels: BTreeMap::from([
            ("app".into(), "reviews".into()),
            ("pod-template-hash".into(), "7d9f8c6b5".into()),
            ("version".into(), "v1".into()),
        ]),
        ips: vec!["10.1.0.5".parse().unwrap()],
        service_account: "bookinfo-reviews".into(),
        node_name: "node-a".into(),
        workload_name: "reviews-v1".into(),
    };
    wait_until(&model, "the pod", |m| {
        m.pods.get(&key("shop", "reviews-v1-abc")).is_some_and(|p| **p == expected)
    })
    .await;
    assert!(!model.snapshot().pods.contains_key(&key("monitoring", "node-exporter")));
    // The workload table names it as Istio would (no sidecar label: not a mesh caller).
    let table = trellis_control_plane::translate::workloads::table(&model.snapshot());
    let entry = table.iter().find(|w| w.uid == "shop/reviews-v1-abc").expect("the pod's entry");
    assert_eq!((entry.workload.as_str(), entry.namespace.as_str()), ("reviews-v1", "shop"));
    assert_eq!((entry.app.as_str(), entry.version.as_str()), ("reviews", "v1"));
    assert_eq!((entry.canonical_service.as_str(), entry.canonical_revision.as_str()), ("reviews", "v1"));
    assert_eq!(entry.principal, "spiffe://cluster.local/ns/shop/sa/bookinfo-reviews");
    assert_eq!((entry.addresses.as_slice(), entry.sidecar), (&["10.1.0.5".to_owned()][..], false));

    // Nodes: their topology labels, as a locality; a status change is no change of the model.
    api.apply(NODES, node("node-a", json!({"topology.kubernetes.io/region": "us-east-1"})));
    let locality = |m: &Model| m.nodes.get("node-a").map(|l| l.to_string());
    wait_until(&model, "the node", |m| locality(m).as_deref() == Some("us-east-1")).await;
    api.update(NODES, "", "node-a", |n| {
        n["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("us-east-1a");
    });
    wait_until(&model, "the node's zone", |m| locality(m).as_deref() == Some("us-east-1/us-east-1a")).await;
    let generation = *model.subscribe().borrow();
    api.update(NODES, "", "node-a", |n| {
        n["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]})
    });
    api.apply(NODES, node("node-b", json!({})));
    wait_until(&model, "the second node", |m| m.nodes.contains_key("node-b")).await;
    assert_eq!(*model.subscribe().borrow(), generation + 1, "only the new node changed the model");

    // VirtualService: added, then updated.
    api.apply(
        VIRTUAL_SERVICES,
        virtual_service("reviews", json!([{"destination": {"host": "reviews", "subset": "v1"}}])),
    );
    wait_until(&model, "the VirtualService", |m| subsets(m, "reviews") == ["v1"]).await;
    api.apply(
        VIRTUAL_SERVICES,
        virtual_service("reviews", json!([{"destination": {"host": "reviews", "subset": "v2"}}])),
    );
    wait_until(&model, "the updated VirtualService", |m| subsets(m, "reviews") == ["v2"]).await;

    // An invalid update is rejected and the last good version stays. The VirtualService sent
    // after it shows that it has been handled (one watcher handles its events in order).
    let split = json!([
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 0},
        {"destination": {"host": "reviews", "subset": "v3"}, "weight": 0}
    ]);
    api.apply(VIRTUAL_SERVICES, virtual_service("reviews", split.clone()));
    api.apply(VIRTUAL_SERVICES, virtual_service("ratings", json!([{"destination": {"host": "ratings"}}])));
    wait_until(&model, "the ratings VirtualService", |m| subsets(m, "ratings") == [""]).await;
    assert_eq!(subsets(&model.snapshot(), "reviews"), ["v2"], "the last good version stays");
    assert_eq!(status.config_errors(Kind::VirtualService), 1);
    let rejected = "rejected VirtualService shop/reviews: spec.http[0].route: weights sum to 0; with several destinations, at least one needs a weight";
    assert!(logs.text().contains(rejected), "{}", logs.text());

    // One that does not even decode is rejected alone: the watch goes on.
    let undecodable = json!([{"destination": {"host": "reviews"}, "weight": "ten"}]);
    api.apply(VIRTUAL_SERVICES, virtual_service("reviews", undecodable));
    api.delete(VIRTUAL_SERVICES, "shop", "ratings");
    wait_until(&model, "ratings deleted", |m| subsets(m, "ratings").is_empty()).await;
    assert_eq!(subsets(&model.snapshot(), "reviews"), ["v2"], "the last good version stays");
    assert_eq!(status.config_errors(Kind::VirtualService), 2);
    assert_eq!(status.config_errors_total(), 2);
    assert!(
        logs.text()
            .contains("rejected VirtualService shop/reviews: spec.http[0].route[0].weight: invalid type"),
        "{}",
        logs.text()
    );

    // A fixed version is accepted again.
    api.apply(
        VIRTUAL_SERVICES,
        virtual_service("reviews", json!([{"destination": {"host": "reviews", "subset": "v3"}}])),
    );
    wait_until(&model, "the fixed VirtualService", |m| subsets(m, "reviews") == ["v3"]).await;

    // Security policies: a RequestAuthentication, and an AuthorizationPolicy without `spec`
    // (Istio's allow-nothing policy: it reads as an empty spec).
    api.apply(
        "/apis/security.istio.io/v1/requestauthentications",
        json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
               "metadata": {"namespace": "shop", "name": "jwt", "resourceVersion": "1"},
               "spec": {"jwtRules": [{"issuer": "https://issuer.example.com", "jwksUri": "https://issuer.example.com/jwks"}]}}),
    );
    api.apply(
        "/apis/security.istio.io/v1/authorizationpolicies",
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"namespace": "shop", "name": "allow-nothing", "resourceVersion": "1"}}),
    );
    wait_until(&model, "the security policies", |m| {
        let ra = m.resources.get(&ObjectKey::new(Kind::RequestAuthentication, "shop", "jwt"));
        let ap = m.resources.get(&ObjectKey::new(Kind::AuthorizationPolicy, "shop", "allow-nothing"));
        matches!(ra.map(|r| &**r), Some(Resource::RequestAuthentication(ra)) if ra.spec.jwt_rules.len() == 1)
            && matches!(ap.map(|r| &**r), Some(Resource::AuthorizationPolicy(ap)) if ap.spec.rules.is_empty())
    })
    .await;

    // Telemetry (telemetry.istio.io): read like Istio's other kinds.
    api.apply(
        "/apis/telemetry.istio.io/v1/telemetries",
        json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
               "metadata": {"name": "quiet", "namespace": "shop"},
               "spec": {"accessLogging": [{"disabled": true}]}}),
    );
    wait_until(&model, "the Telemetry", |m| {
        m.resources.get(&ObjectKey::new(Kind::Telemetry, "shop", "quiet")).is_some_and(
            |r| matches!(&**r, Resource::Telemetry(t) if t.spec.access_logging[0].disabled == Some(true)),
        )
    })
    .await;

    // Deletes.
    api.delete(VIRTUAL_SERVICES, "shop", "reviews");
    api.delete(SERVICES, "shop", "reviews");
    api.delete(SLICES, "shop", "reviews-x7k2p");
    wait_until(&model, "the deletions", |m| {
        subsets(m, "reviews").is_empty()
            && !m.services.contains_key(&reviews())
            && !m.endpoint_slices.contains_key(&slice_key())
    })
    .await;

    // Watches expire while deletions went unseen: the relist removes what vanished, and a
    // rejected resource that is still there is neither accepted nor counted twice.
    api.apply(VIRTUAL_SERVICES, virtual_service("broken", split));
    api.apply(VIRTUAL_SERVICES, virtual_service("marker", json!([{"destination": {"host": "marker"}}])));
    wait_until(&model, "the marker VirtualService", |m| !subsets(m, "marker").is_empty()).await;
    assert_eq!(status.config_errors(Kind::VirtualService), 3);
    api.vanish(PODS, "shop", "reviews-v1-abc");
    api.vanish(VIRTUAL_SERVICES, "shop", "marker");
    api.expire_watches();
    wait_until(&model, "the relist", |m| {
        !m.pods.contains_key(&key("shop", "reviews-v1-abc")) && subsets(m, "marker").is_empty()
    })
    .await;
    assert!(subsets(&model.snapshot(), "broken").is_empty());
    assert_eq!(status.config_errors(Kind::VirtualService), 3);
    assert!(model.snapshot().resources.contains_key(&ObjectKey::new(Kind::Namespace, "", "shop")));

    source.abort();
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

/// Waits, up to [`DEADLINE`], for the model to satisfy `condition`.
#[tokio::test]
async fn without_the_right_to_read_nodes_the_source_still_syncs() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let api = FakeApi::start(fake_api::WATCHED).await;
    // A chart from before nodes were read: RBAC refuses the list.
    api.fail_requests(Some("GET"), NODES, 403, "Forbidden");
    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let (model, status) = (ModelHandle::default(), SourceStatus::new());
    let source = tokio::spawn(run(client, model.clone(), status.clone()));
    if tokio::time::timeout(DEADLINE, status.wait_synced()).await.is_err() {
        panic!("not synced after {DEADLINE:?}: {:?} still listing\n{}", status.unsynced(), logs.text());
    }
    assert!(logs.text().contains("not allowed to list Nodes"), "{}", logs.text());
    assert!(model.snapshot().nodes.is_empty());
    source.abort();
}

async fn wait_until(model: &ModelHandle, what: &str, condition: impl Fn(&Model) -> bool) {
    // Subscribed before the first check, so that no change slips between check and wait.
    let mut changes = model.subscribe();
    let deadline = Instant::now() + DEADLINE;
    while !condition(&model.snapshot()) {
        if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            panic!("timed out waiting for {what}; the model is\n{:#?}", model.snapshot());
        }
    }
}

/// The subsets the VirtualService `shop/name` routes to; empty when it is not in the model.
fn subsets(model: &Model, name: &str) -> Vec<String> {
    match model.resources.get(&ObjectKey::new(Kind::VirtualService, "shop", name)).map(|r| &**r) {
        Some(Resource::VirtualService(vs)) => {
            vs.spec.http.iter().flat_map(|h| &h.route).map(|r| r.destination.subset.clone()).collect()
        }
        _ => Vec::new(),
    }
}

fn service(annotations: Value, target_port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "reviews", "labels": {"app": "reviews"},
            "annotations": annotations},
        "spec": {
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
            "selector": {"app": "reviews"},
            "ports": [
                {"name": "http", "port": 9080, "targetPort": target_port, "appProtocol": "http"},
                {"name": "grpc", "port": 9090, "targetPort": "grpc"}
            ]
        }
    })
}

fn endpoint_slice(second_conditions: Value) -> Value {
    let mut second = json!({"addresses": ["10.1.0.6"], "targetRef": {"kind": "Pod", "namespace": "shop", "name": "reviews-v2-def"}});
    if second_conditions != json!({}) {
        second["conditions"] = second_conditions;
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": "reviews-x7k2p",
            "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "nodeName": "node-a",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "reviews-v1-abc"}},
            second
        ]
    })
}

fn pod(namespace: &str, name: &str, mut spec: Value, ip: &str) -> Value {
    spec["containers"] = json!([{"name": "app", "image": "app"}]);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": "reviews", "version": "v1"}},
        "spec": spec,
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn node(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"images": [{"names": ["registry/large-image:1"], "sizeBytes": 1}]}
    })
}

fn virtual_service(name: &str, route: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"namespace": "shop", "name": name},
        "spec": {"hosts": [name], "http": [{"route": route}]}
    })
}

/// Everything the source logged, for asserting on its messages.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
