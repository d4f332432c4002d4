//! A thin stand-in for the Kubernetes API server (a real one cannot run here): list and watch
//! over a fixed set of collections, the way kube-rs's watcher uses them.
//!
//! - `GET <collection>` answers a list with the current `metadata.resourceVersion`.
//! - `GET <collection>?watch=true&resourceVersion=N` first replays the events after `N` (so
//!   nothing the test pushed between the client's list and its watch is lost, as with the real
//!   server), then a BOOKMARK, then streams new events as newline-delimited JSON and holds the
//!   connection open.
//! - Any other path is a 404, as for a CRD that is not installed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
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
}

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
        let state = Arc::new(Mutex::new(Server { resource_version: 1, collections }));
        let app = Router::new().fallback(list_or_watch).with_state(state.clone());
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

async fn list_or_watch(State(state): State<Arc<Mutex<Server>>>, uri: Uri) -> Response {
    let query: BTreeMap<&str, &str> =
        uri.query().unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')).collect();
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
    let items: Vec<Value> = collection.objects.values().cloned().collect();
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
