//! A thin stand-in for the Kubernetes API server (a real one cannot run here): list and watch
//! over a fixed set of collections, the way kube-rs's watcher uses them.
//!
//! - `GET <collection>` answers a list with the current `metadata.resourceVersion`
//!   (`fieldSelector=metadata.name=N` filters by name).
//! - `GET <collection>?watch=true&resourceVersion=N` first replays the events after `N` (so
//!   nothing the test pushed between the client's list and its watch is lost, as with the real
//!   server), then a BOOKMARK, then streams new events as newline-delimited JSON and holds the
//!   connection open.
//! - A namespaced object of a served collection (`…/namespaces/<ns>/<plural>[/<name>]`): `GET`
//!   one object, `POST` create (409 AlreadyExists when it exists), `PUT` replace (409 Conflict
//!   on a stale resourceVersion).
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` answers from the test's token table
//!   (see [`FakeApi::set_tokens`]) as the real server would, audiences included.
//! - Any other path is a 404, as for a CRD that is not installed.

// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

pub struct FakeApi {
    pub url: String,
    state: Arc<Mutex<Server>>,
}

struct Server {
    /// One counter for every collection, as in etcd.
    resource_version: u64,
    collections: BTreeMap<String, Collection>,
    tokens: BTreeMap<String, Token>,
    /// Every TokenReview received, as sent.
    reviews: Vec<Value>,
}

/// What the API server knows of a token, for TokenReviews.
#[derive(Clone, Debug)]
pub struct Token {
    /// `system:serviceaccount:<ns>:<name>` for a service account's token.
    pub user: String,
    /// The audiences it was issued for.
    pub audiences: Vec<String>,
    pub expired: bool,
}

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

struct Collection {
    api_version: String,
    kind: String,
    objects: BTreeMap<(String, String), Value>,
    /// Every event with its resourceVersion, for watches that start from an older version.
    history: Vec<(u64, Value)>,
    feed: broadcast::Sender<Feed>,
    /// List requests still to be answered with 500, as by an API server in trouble. (Not 503:
    /// kube-rs's client retries that itself, and the watcher's own recovery would go untested.)
    unavailable: usize,
}

#[derive(Clone)]
enum Feed {
    Event(Value),
    /// The watch's resourceVersion is too old: a 410 ERROR event, then the stream ends.
    Expire,
}

impl FakeApi {
    /// Serves `collections` (`(path, apiVersion, kind of the items)`) on 127.0.0.1, from the
    /// current runtime.
    pub async fn start(collections: &[(&str, &str, &str)]) -> FakeApi {
        let collections = collections
            .iter()
            .map(|(path, api_version, kind)| {
                let collection = Collection {
                    api_version: (*api_version).to_owned(),
                    kind: (*kind).to_owned(),
                    objects: BTreeMap::new(),
                    history: Vec::new(),
                    feed: broadcast::channel(256).0,
                    unavailable: 0,
                };
                ((*path).to_owned(), collection)
            })
            .collect();
        let state = Arc::new(Mutex::new(Server {
            resource_version: 1,
            collections,
            tokens: BTreeMap::new(),
            reviews: Vec::new(),
        }));
        let app = Router::new().fallback(route).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi { url, state }
    }

    /// Creates or replaces an object (ADDED or MODIFIED), giving it the next resourceVersion.
    pub fn apply(&self, path: &str, mut object: Value) {
        let mut server = self.state.lock().unwrap();
        server.resource_version += 1;
        let rv = server.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let collection = server.collections.get_mut(path).unwrap();
        let previous = collection.objects.insert(key(&object), object.clone());
        let kind = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        collection.publish(rv, json!({"type": kind, "object": object}));
    }

    /// Deletes an object (DELETED, carrying its last state).
    pub fn delete(&self, path: &str, namespace: &str, name: &str) {
        let mut server = self.state.lock().unwrap();
        server.resource_version += 1;
        let rv = server.resource_version;
        let collection = server.collections.get_mut(path).unwrap();
        let mut object = collection.objects.remove(&(namespace.to_owned(), name.to_owned())).unwrap();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        collection.publish(rv, json!({"type": "DELETED", "object": object}));
    }

    /// Removes an object without telling open watches: a deletion the client missed, which
    /// only a relist can reveal.
    pub fn vanish(&self, path: &str, namespace: &str, name: &str) {
        let mut server = self.state.lock().unwrap();
        server.resource_version += 1;
        let collection = server.collections.get_mut(path).unwrap();
        collection.objects.remove(&(namespace.to_owned(), name.to_owned())).unwrap();
    }

    /// Ends every open watch with `410 Gone`, so that clients relist.
    pub fn expire_watches(&self) {
        for collection in self.state.lock().unwrap().collections.values() {
            let _ = collection.feed.send(Feed::Expire);
        }
    }

    /// The tokens TokenReviews know, replacing any before.
    pub fn set_tokens(&self, tokens: &[(&str, Token)]) {
        self.state.lock().unwrap().tokens =
            tokens.iter().map(|(token, info)| ((*token).to_owned(), info.clone())).collect();
    }

    /// The TokenReviews received so far, as sent.
    pub fn reviews(&self) -> Vec<Value> {
        self.state.lock().unwrap().reviews.clone()
    }

    /// One object, as stored.
    pub fn get(&self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        let server = self.state.lock().unwrap();
        server.collections.get(path)?.objects.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Answers the next `count` list requests of `path` with 500.
    pub fn fail_lists(&self, path: &str, count: usize) {
        self.state.lock().unwrap().collections.get_mut(path).unwrap().unavailable = count;
    }
}

impl Collection {
    fn publish(&mut self, rv: u64, event: Value) {
        self.history.push((rv, event.clone()));
        let _ = self.feed.send(Feed::Event(event));
    }
}

fn key(object: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&object["metadata"]["namespace"]), text(&object["metadata"]["name"]))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

async fn route(State(state): State<Arc<Mutex<Server>>>, method: Method, uri: Uri, body: Bytes) -> Response {
    if method == Method::POST && uri.path() == TOKEN_REVIEWS {
        return token_review(&state, &body);
    }
    if let Some((collection, namespace, name)) = namespaced(uri.path())
        && state.lock().unwrap().collections.contains_key(&collection)
    {
        return match (method, name) {
            (Method::GET, Some(name)) => get_one(&state, &collection, &namespace, &name),
            (Method::POST, None) => create(&state, &collection, &namespace, &body),
            (Method::PUT, Some(name)) => replace(&state, &collection, &namespace, &name, &body),
            (method, _) => {
                let message = format!("{method} {} is not served by the fake", uri.path());
                (StatusCode::METHOD_NOT_ALLOWED, axum::Json(status(405, "MethodNotAllowed", &message)))
                    .into_response()
            }
        };
    }
    list_or_watch(&state, &uri)
}

/// `<prefix>/namespaces/<ns>/<plural>[/<name>]` as (`<prefix>/<plural>`, ns, name).
fn namespaced(path: &str) -> Option<(String, String, Option<String>)> {
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts[..] {
        [namespace, plural] => Some((format!("{prefix}/{plural}"), namespace.to_owned(), None)),
        [namespace, plural, name] => {
            Some((format!("{prefix}/{plural}"), namespace.to_owned(), Some(name.to_owned())))
        }
        _ => None,
    }
}

fn not_found(what: &str) -> Response {
    let message = format!("{what} not found");
    (StatusCode::NOT_FOUND, axum::Json(status(404, "NotFound", &message))).into_response()
}

fn get_one(state: &Mutex<Server>, collection: &str, namespace: &str, name: &str) -> Response {
    let server = state.lock().unwrap();
    match server.collections[collection].objects.get(&(namespace.to_owned(), name.to_owned())) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => not_found(&format!("{collection} {namespace}/{name}")),
    }
}

fn create(state: &Mutex<Server>, collection: &str, namespace: &str, body: &[u8]) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(status(400, "BadRequest", "not JSON"))).into_response();
    };
    object["metadata"]["namespace"] = json!(namespace);
    let mut server = state.lock().unwrap();
    if server.collections[collection].objects.contains_key(&key(&object)) {
        let message = format!("{collection} {namespace}/{} already exists", key(&object).1);
        return (StatusCode::CONFLICT, axum::Json(status(409, "AlreadyExists", &message))).into_response();
    }
    server.resource_version += 1;
    let rv = server.resource_version;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object["metadata"]["uid"] = json!(format!("uid-{rv}"));
    let collection = server.collections.get_mut(collection).unwrap();
    collection.objects.insert(key(&object), object.clone());
    collection.publish(rv, json!({"type": "ADDED", "object": object}));
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

fn replace(state: &Mutex<Server>, collection: &str, namespace: &str, name: &str, body: &[u8]) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(status(400, "BadRequest", "not JSON"))).into_response();
    };
    let mut server = state.lock().unwrap();
    let id = (namespace.to_owned(), name.to_owned());
    let Some(current) = server.collections[collection].objects.get(&id) else {
        return not_found(&format!("{collection} {namespace}/{name}"));
    };
    let sent = &object["metadata"]["resourceVersion"];
    if !sent.is_null() && *sent != current["metadata"]["resourceVersion"] {
        let message = "the object has been modified; please apply your changes to the latest version";
        return (StatusCode::CONFLICT, axum::Json(status(409, "Conflict", message))).into_response();
    }
    server.resource_version += 1;
    let rv = server.resource_version;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let collection = server.collections.get_mut(collection).unwrap();
    collection.objects.insert(id, object.clone());
    collection.publish(rv, json!({"type": "MODIFIED", "object": object}));
    axum::Json(object).into_response()
}

/// As the real server: a token it does not know, or an expired one, is not authenticated; one
/// issued for none of the requested audiences neither; otherwise the user, and the audiences
/// both share (the token's own when the review names none).
fn token_review(state: &Mutex<Server>, body: &[u8]) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(status(400, "BadRequest", "not JSON"))).into_response();
    };
    let mut server = state.lock().unwrap();
    server.reviews.push(review.clone());
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let answer = match server.tokens.get(token) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(info) if info.expired => {
            json!({"authenticated": false, "error": "invalid bearer token, token has expired"})
        }
        Some(info) => {
            let shared: Vec<&String> = if wanted.is_empty() {
                info.audiences.iter().collect()
            } else {
                wanted.iter().filter(|a| info.audiences.contains(a)).collect()
            };
            if shared.is_empty() {
                let error = format!(
                    "invalid bearer token, token audiences {:?} is invalid for the target audiences {wanted:?}",
                    info.audiences
                );
                json!({"authenticated": false, "error": error})
            } else {
                let namespace = info.user.split(':').nth(2).unwrap_or_default();
                json!({"authenticated": true, "audiences": shared, "user": {
                    "username": info.user, "uid": "uid",
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"),
                        "system:authenticated"]
                }})
            }
        }
    };
    let answer = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "metadata": {}, "spec": review["spec"], "status": answer});
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// `%XX` and `+` in a query value.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list_or_watch(state: &Mutex<Server>, uri: &Uri) -> Response {
    let query: BTreeMap<&str, &str> =
        uri.query().unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')).collect();
    let name_selector = query
        .get("fieldSelector")
        .map(|s| unescape(s))
        .and_then(|s| s.strip_prefix("metadata.name=").map(str::to_owned));
    let mut server = state.lock().unwrap();
    let current = server.resource_version;
    let Some(collection) = server.collections.get_mut(uri.path()) else {
        let message = format!("the server could not find the requested resource ({})", uri.path());
        return (StatusCode::NOT_FOUND, axum::Json(status(404, "NotFound", &message))).into_response();
    };
    if matches!(query.get("watch"), Some(&"true" | &"1")) {
        let since = query.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok()).unwrap_or(0);
        return watch(collection, since, current);
    }
    if collection.unavailable > 0 {
        collection.unavailable -= 1;
        let body = status(500, "InternalError", "etcdserver: request timed out");
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    }
    let items: Vec<Value> = collection
        .objects
        .iter()
        .filter(|((_, name), _)| name_selector.as_ref().is_none_or(|wanted| wanted == name))
        .map(|(_, object)| object.clone())
        .collect();
    axum::Json(json!({
        "kind": format!("{}List", collection.kind), "apiVersion": collection.api_version,
        "metadata": {"resourceVersion": current.to_string()}, "items": items
    }))
    .into_response()
}

fn watch(collection: &Collection, since: u64, current: u64) -> Response {
    let replay: Vec<Value> =
        collection.history.iter().filter(|(rv, _)| *rv > since).map(|(_, event)| event.clone()).collect();
    let bookmark = json!({"type": "BOOKMARK", "object": {
        "apiVersion": collection.api_version, "kind": collection.kind,
        "metadata": {"resourceVersion": current.to_string()}
    }});
    // Subscribed under the same lock the replay was read under: no event falls in between.
    let mut feed = collection.feed.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        for event in replay.into_iter().chain([bookmark]) {
            if tx.send(Ok(line(&event))).await.is_err() {
                return;
            }
        }
        loop {
            let event = match feed.recv().await {
                Ok(Feed::Event(event)) => event,
                Ok(Feed::Expire) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let gone = status(410, "Expired", "too old resource version");
                    let _ = tx.send(Ok(line(&json!({"type": "ERROR", "object": gone})))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(line(&event))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(ReceiverStream(rx)))
        .unwrap()
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// A channel as a body stream, without pulling in a streams crate.
struct ReceiverStream<T>(mpsc::Receiver<T>);

impl<T> futures_util::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Every kind trellisd's Kubernetes source watches, as `(collection path, apiVersion, kind)`,
/// except Gateways, whose CRD is "not installed" (the source must become ready anyway).
pub const WATCHED: &[(&str, &str, &str)] = &[
    ("/api/v1/services", "v1", "Service"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
    ("/api/v1/pods", "v1", "Pod"),
    ("/api/v1/namespaces", "v1", "Namespace"),
    ("/apis/networking.istio.io/v1/virtualservices", "networking.istio.io/v1", "VirtualService"),
    ("/apis/networking.istio.io/v1/destinationrules", "networking.istio.io/v1", "DestinationRule"),
    ("/apis/networking.istio.io/v1/serviceentries", "networking.istio.io/v1", "ServiceEntry"),
    ("/apis/networking.istio.io/v1/workloadentries", "networking.istio.io/v1", "WorkloadEntry"),
    ("/apis/networking.istio.io/v1/sidecars", "networking.istio.io/v1", "Sidecar"),
    ("/apis/security.istio.io/v1/peerauthentications", "security.istio.io/v1", "PeerAuthentication"),
    ("/apis/security.istio.io/v1/authorizationpolicies", "security.istio.io/v1", "AuthorizationPolicy"),
    ("/apis/security.istio.io/v1/requestauthentications", "security.istio.io/v1", "RequestAuthentication"),
];
