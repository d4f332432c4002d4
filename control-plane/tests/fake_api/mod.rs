//! A thin stand-in for the Kubernetes API server (a real one cannot run here): the calls that
//! kube-rs's client, watcher and `trellis install`/`check` make, over a set of collections the
//! test names.
//!
//! - `GET <collection>` answers a list with the current `metadata.resourceVersion`
//!   (`fieldSelector=metadata.name=N` filters by name; `labelSelector` by labels: `k=v`, `k==v`,
//!   `k!=v`, `k`, `!k`, comma-separated; set-based selectors are refused with 400).
//!   `…/namespaces/<ns>/<plural>` lists one namespace.
//! - `GET <collection>?watch=true&resourceVersion=N` first replays the events after `N` (so
//!   nothing the test pushed between the client's list and its watch is lost, as with the real
//!   server), then a BOOKMARK, then streams new events as newline-delimited JSON and holds the
//!   connection open.
//! - One object, namespaced (`…/namespaces/<ns>/<plural>/<name>`) or cluster-scoped
//!   (`<collection>/<name>`): `GET`; `POST` create on the collection (409 AlreadyExists when it
//!   exists); `PUT` replace (409 Conflict on a stale resourceVersion); `PATCH` with server-side
//!   apply (`application/apply-patch+yaml`, see below); `DELETE`.
//! - The status subresource (`…/<name>/status`): `GET`, and `PATCH` as a JSON merge patch
//!   (`application/merge-patch+json`) of `status` only, without a generation bump.
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` answers from the test's token table
//!   (see [`FakeApi::set_tokens`]) as the real server would, audiences included.
//! - `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` allows everything but what
//!   the test denied ([`FakeApi::deny_access`]).
//! - `GET /version` answers the version the test set ([`FakeApi::set_version`], 1.33 by default).
//! - A path given a canned answer ([`FakeApi::serve_raw`], e.g. a service proxy path) answers it.
//! - Any other path is a 404, as for a CRD that is not installed.
//!
//! Departures from a real API server, to stay thin:
//!
//! - No authentication (but TokenReviews), no admission, no validation, no defaulting (a
//!   Deployment gets no default strategy), no `managedFields` and no field ownership.
//! - Server-side apply merges the applied object into the stored one: maps key by key, lists
//!   whose items all have a `name` item by item (as Kubernetes' `listType: map` lists keyed by
//!   name), other lists replaced whole. A field that the manager applied before and no longer
//!   applies is kept, where the real server removes it. `force` and `fieldManager` are accepted
//!   and ignored (there are no conflicts). An apply that changes nothing keeps the
//!   resourceVersion, as the real server does; one that changes anything but `metadata` and
//!   `status` bumps `metadata.generation`.
//! - Nothing runs in the cluster: no controller sets a Deployment's status, no pod is made, no
//!   garbage collection (deleting a Deployment leaves its pods). The tests play the controllers
//!   with [`FakeApi::update`].
//! - A CRD is Established as soon as it is stored, and each version it serves becomes a separate
//!   collection (an object created at `v1` is not seen at `v1beta1`); deleting the CRD deletes
//!   its collections and their objects at once. Deleting a namespace deletes the objects in it at
//!   once (no Terminating phase, no finalizers).
//! - No discovery endpoints (`/api`, `/apis`): clients must know the paths.
//! - Watches are cluster-wide only, without selectors.
//! - Faults are the test's to set: 500 on lists ([`FakeApi::fail_lists`]), any status on one
//!   path ([`FakeApi::fail_requests`], e.g. 403), no answer at all ([`FakeApi::hang`]). An API
//!   server that is down is a port nothing listens on ([`FakeApi::stop`]).

// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

pub struct FakeApi {
    pub url: String,
    state: Arc<Mutex<Server>>,
    server: tokio::task::JoinHandle<()>,
}

struct Server {
    /// One counter for every collection, as in etcd.
    resource_version: u64,
    collections: BTreeMap<String, Collection>,
    tokens: BTreeMap<String, Token>,
    /// Every TokenReview received, as sent.
    reviews: Vec<Value>,
    /// `(verb, group, resource)` that SelfSubjectAccessReviews deny.
    denied: BTreeSet<(String, String, String)>,
    /// `(method or "" for any, path)` answered with `(code, reason)`.
    faults: BTreeMap<(String, String), (u16, String)>,
    /// Canned answers by path: `(code, JSON body)`.
    raw: BTreeMap<String, (u16, Value)>,
    version: (String, String),
    /// Every request received, as `"<METHOD> <path>"`.
    requests: Vec<String>,
    /// When set, requests are never answered.
    hanging: bool,
    /// Collections that stored CRDs serve, by CRD name.
    crd_collections: BTreeMap<String, Vec<String>>,
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
const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
pub const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
pub const NAMESPACES: &str = "/api/v1/namespaces";

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

impl Collection {
    fn new(api_version: &str, kind: &str) -> Collection {
        Collection {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            objects: BTreeMap::new(),
            history: Vec::new(),
            feed: broadcast::channel(256).0,
            unavailable: 0,
        }
    }
}

impl FakeApi {
    /// Serves `collections` (`(path, apiVersion, kind of the items)`) on 127.0.0.1, from the
    /// current runtime.
    pub async fn start(collections: &[(&str, &str, &str)]) -> FakeApi {
        let collections = collections
            .iter()
            .map(|(path, api_version, kind)| ((*path).to_owned(), Collection::new(api_version, kind)))
            .collect();
        let state = Arc::new(Mutex::new(Server {
            resource_version: 1,
            collections,
            tokens: BTreeMap::new(),
            reviews: Vec::new(),
            denied: BTreeSet::new(),
            faults: BTreeMap::new(),
            raw: BTreeMap::new(),
            version: ("1".to_owned(), "33".to_owned()),
            requests: Vec::new(),
            hanging: false,
            crd_collections: BTreeMap::new(),
        }));
        let app = Router::new().fallback(route).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi { url, state, server }
    }

    /// Creates or replaces an object (ADDED or MODIFIED), giving it the next resourceVersion.
    pub fn apply(&self, path: &str, mut object: Value) {
        let mut server = self.state.lock().unwrap();
        server.resource_version += 1;
        let rv = server.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        server.store(path, object);
    }

    /// Changes an object in place, atomically (as a controller's status update): the next
    /// resourceVersion and a MODIFIED event when `change` changed anything. False when there is
    /// no such object.
    pub fn update(&self, path: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) -> bool {
        let mut server = self.state.lock().unwrap();
        let id = (namespace.to_owned(), name.to_owned());
        let Some(current) = server.collections.get(path).and_then(|c| c.objects.get(&id)) else {
            return false;
        };
        let mut object = current.clone();
        change(&mut object);
        if object != *current {
            server.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(server.resource_version.to_string());
            server.store(path, object);
        }
        true
    }

    /// Deletes an object (DELETED, carrying its last state).
    pub fn delete(&self, path: &str, namespace: &str, name: &str) {
        self.state.lock().unwrap().remove(path, namespace, name).unwrap();
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

    /// Every object of a collection (empty when it is not served), by namespace and name.
    pub fn list(&self, path: &str) -> Vec<Value> {
        let server = self.state.lock().unwrap();
        server.collections.get(path).map(|c| c.objects.values().cloned().collect()).unwrap_or_default()
    }

    /// The paths of the collections served now (those of stored CRDs included).
    pub fn collections(&self) -> Vec<String> {
        self.state.lock().unwrap().collections.keys().cloned().collect()
    }

    /// Answers the next `count` list requests of `path` with 500.
    pub fn fail_lists(&self, path: &str, count: usize) {
        self.state.lock().unwrap().collections.get_mut(path).unwrap().unavailable = count;
    }

    /// Answers every later request for `path` (exactly, without the query) with `code` — with
    /// `method` only, or any method when it is `None`. 403 gets a message like the real
    /// server's Forbidden.
    pub fn fail_requests(&self, method: Option<&str>, path: &str, code: u16, reason: &str) {
        let method = method.unwrap_or_default().to_owned();
        self.state.lock().unwrap().faults.insert((method, path.to_owned()), (code, reason.to_owned()));
    }

    /// SelfSubjectAccessReviews for `verb` on `resource` of `group` ("" for the core group) are
    /// answered "not allowed".
    pub fn deny_access(&self, verb: &str, group: &str, resource: &str) {
        let denied = (verb.to_owned(), group.to_owned(), resource.to_owned());
        self.state.lock().unwrap().denied.insert(denied);
    }

    /// What `GET /version` answers.
    pub fn set_version(&self, major: &str, minor: &str) {
        self.state.lock().unwrap().version = (major.to_owned(), minor.to_owned());
    }

    /// Answers `GET <path>` with `code` and `body`, as a proxied service would.
    pub fn serve_raw(&self, path: &str, code: u16, body: Value) {
        self.state.lock().unwrap().raw.insert(path.to_owned(), (code, body));
    }

    /// Every request received so far, as `"<METHOD> <path>"`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// From now on, requests are accepted and never answered: an API server that hangs.
    pub fn hang(&self) {
        self.state.lock().unwrap().hanging = true;
    }

    /// Stops listening: new connections are refused, as by an API server that is down.
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Server {
    /// Stores an object whose resourceVersion is set, publishing ADDED or MODIFIED.
    fn store(&mut self, path: &str, mut object: Value) {
        let rv = self.resource_version;
        if path == CRDS {
            self.serve_crd(&mut object);
        }
        let collection = self.collections.get_mut(path).unwrap();
        let previous = collection.objects.insert(key(&object), object.clone());
        let kind = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        collection.publish(rv, json!({"type": kind, "object": object}));
    }

    /// Removes an object, publishing DELETED; with it, a CRD's collections or a namespace's
    /// objects.
    fn remove(&mut self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut object =
            self.collections.get_mut(path)?.objects.remove(&(namespace.to_owned(), name.to_owned()))?;
        self.resource_version += 1;
        let rv = self.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if let Some(collection) = self.collections.get_mut(path) {
            collection.publish(rv, json!({"type": "DELETED", "object": object.clone()}));
        }
        if path == CRDS {
            for served in self.crd_collections.remove(name).unwrap_or_default() {
                self.collections.remove(&served);
            }
        }
        if path == NAMESPACES {
            let inside: Vec<(String, String)> = self
                .collections
                .iter()
                .flat_map(|(path, c)| {
                    c.objects.keys().filter(|(ns, _)| ns == name).map(|(_, n)| (path.clone(), n.clone()))
                })
                .collect();
            for (path, object_name) in inside {
                self.remove(&path, name, &object_name);
            }
        }
        Some(object)
    }

    /// Establishes a CRD and serves each of its served versions as a collection.
    fn serve_crd(&mut self, crd: &mut Value) {
        crd["status"]["conditions"] = json!([
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
        ]);
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) =
            (spec["group"].as_str(), spec["names"]["plural"].as_str(), spec["names"]["kind"].as_str())
        else {
            return;
        };
        let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let mut served = Vec::new();
        for version in spec["versions"].as_array().into_iter().flatten() {
            let Some(version_name) = version["name"].as_str() else { continue };
            if version["served"] == json!(false) {
                continue;
            }
            let path = format!("/apis/{group}/{version_name}/{plural}");
            self.collections
                .entry(path.clone())
                .or_insert_with(|| Collection::new(&format!("{group}/{version_name}"), kind));
            served.push(path);
        }
        self.crd_collections.insert(name, served);
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

fn answer(code: u16, reason: &str, message: &str) -> Response {
    let code_status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code_status, axum::Json(status(code, reason, message))).into_response()
}

fn bad_request(message: &str) -> Response {
    answer(400, "BadRequest", message)
}

/// Which object or collection a path names.
struct Target {
    collection: String,
    /// Empty for a cluster-wide request or a cluster-scoped object.
    namespace: String,
    name: Option<String>,
}

async fn route(
    State(state): State<Arc<Mutex<Server>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let hanging = {
        let mut server = state.lock().unwrap();
        server.requests.push(format!("{method} {path}"));
        server.hanging
    };
    if hanging {
        std::future::pending::<()>().await;
    }
    if let Some(fault) = fault(&state, &method, path) {
        return fault;
    }
    if method == Method::POST && path == TOKEN_REVIEWS {
        return token_review(&state, &body);
    }
    if method == Method::POST && path == ACCESS_REVIEWS {
        return access_review(&state, &body);
    }
    if method == Method::GET && path == "/version" {
        let (major, minor) = state.lock().unwrap().version.clone();
        return axum::Json(json!({"major": major, "minor": minor,
            "gitVersion": format!("v{major}.{minor}.0"), "platform": "linux/amd64"}))
        .into_response();
    }
    if method == Method::GET
        && let Some((code, body)) = state.lock().unwrap().raw.get(path).cloned()
    {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, axum::Json(body)).into_response();
    }
    // The status subresource of one object: `GET`, and `PATCH` as a JSON merge patch that
    // changes only `status` (no generation bump, as the real server).
    let status_target = path.strip_suffix("/status").and_then(|p| {
        let server = state.lock().unwrap();
        target(&server, p)
    });
    if let Some(Target { collection, namespace, name: Some(name) }) = status_target {
        return match method {
            Method::GET => get_one(&state, &collection, &namespace, &name),
            Method::PATCH => {
                let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
                if content_type != Some("application/merge-patch+json") {
                    let message =
                        format!("the fake serves only merge patches of status, not {content_type:?}");
                    return answer(415, "UnsupportedMediaType", &message);
                }
                patch_status(&state, &collection, &namespace, &name, &body)
            }
            method => answer(405, "MethodNotAllowed", &format!("{method} {path} is not served by the fake")),
        };
    }
    let Some(target) = target(&state.lock().unwrap(), path) else {
        let message = format!("the server could not find the requested resource ({path})");
        return answer(404, "NotFound", &message);
    };
    let Target { collection, namespace, name } = target;
    match (method, name) {
        (Method::GET, None) => list_or_watch(&state, &collection, &namespace, &uri),
        (Method::GET, Some(name)) => get_one(&state, &collection, &namespace, &name),
        (Method::POST, None) => create(&state, &collection, &namespace, &body),
        (Method::PUT, Some(name)) => replace(&state, &collection, &namespace, &name, &body),
        (Method::PATCH, Some(name)) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            if content_type != Some("application/apply-patch+yaml") {
                let message = format!("the fake serves only server-side apply, not {content_type:?}");
                return answer(415, "UnsupportedMediaType", &message);
            }
            server_side_apply(&state, &collection, &namespace, &name, &body)
        }
        (Method::DELETE, Some(name)) => delete(&state, &collection, &namespace, &name),
        (method, _) => answer(405, "MethodNotAllowed", &format!("{method} {path} is not served by the fake")),
    }
}

/// A served collection, `<prefix>/namespaces/<ns>/<plural>[/<name>]`, or
/// `<collection>/<name>` of a cluster-scoped object.
fn target(server: &Server, path: &str) -> Option<Target> {
    if server.collections.contains_key(path) {
        return Some(Target { collection: path.to_owned(), namespace: String::new(), name: None });
    }
    if let Some((prefix, rest)) = path.split_once("/namespaces/") {
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, plural, name) = match parts[..] {
            [namespace, plural] => (namespace, plural, None),
            [namespace, plural, name] => (namespace, plural, Some(name.to_owned())),
            _ => ("", "", None),
        };
        let collection = format!("{prefix}/{plural}");
        if !plural.is_empty() && server.collections.contains_key(&collection) {
            return Some(Target { collection, namespace: namespace.to_owned(), name });
        }
    }
    let (parent, name) = path.rsplit_once('/')?;
    server.collections.contains_key(parent).then(|| Target {
        collection: parent.to_owned(),
        namespace: String::new(),
        name: Some(name.to_owned()),
    })
}

fn fault(state: &Mutex<Server>, method: &Method, path: &str) -> Option<Response> {
    let server = state.lock().unwrap();
    let (code, reason) = server
        .faults
        .get(&(method.as_str().to_owned(), path.to_owned()))
        .or_else(|| server.faults.get(&(String::new(), path.to_owned())))?
        .clone();
    let message = if code == 403 {
        forbidden_message(method, path)
    } else {
        format!("{method} {path}: {reason} (a fault the test set)")
    };
    Some(answer(code, &reason, &message))
}

/// Like the real server's: `configmaps "x" is forbidden: User "u" cannot patch resource
/// "configmaps" in API group "" in the namespace "ns"`.
fn forbidden_message(method: &Method, path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => ("", &parts[..0]),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [resource, name, ..] => (*resource, Some(*name)),
        [resource] => (*resource, None),
        _ => ("", None),
    };
    let verb = match *method {
        Method::GET if name.is_some() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "access",
    };
    let subject = match name {
        Some(name) => format!("{resource} \"{name}\""),
        None => resource.to_owned(),
    };
    let scope = match namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_owned(),
    };
    format!(
        "{subject} is forbidden: User \"system:serviceaccount:ci:installer\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{scope}"
    )
}

fn not_found(what: &str) -> Response {
    answer(404, "NotFound", &format!("{what} not found"))
}

fn get_one(state: &Mutex<Server>, collection: &str, namespace: &str, name: &str) -> Response {
    let server = state.lock().unwrap();
    match server.collections[collection].objects.get(&(namespace.to_owned(), name.to_owned())) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => not_found(&format!("{collection} {namespace}/{name}")),
    }
}

/// Sets what the server sets on a new object.
fn created(object: &mut Value, namespace: &str, rv: u64) {
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object["metadata"]["uid"] = json!(format!("uid-{rv}"));
    object["metadata"]["generation"] = json!(1);
    object["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
}

fn create(state: &Mutex<Server>, collection: &str, namespace: &str, body: &[u8]) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return bad_request("not JSON");
    };
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    let mut server = state.lock().unwrap();
    if server.collections[collection].objects.contains_key(&key(&object)) {
        let message = format!("{collection} {namespace}/{} already exists", key(&object).1);
        return answer(409, "AlreadyExists", &message);
    }
    server.resource_version += 1;
    let rv = server.resource_version;
    created(&mut object, namespace, rv);
    server.store(collection, object.clone());
    let stored = server.collections[collection].objects.get(&key(&object)).cloned().unwrap_or(object);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

fn replace(state: &Mutex<Server>, collection: &str, namespace: &str, name: &str, body: &[u8]) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return bad_request("not JSON");
    };
    let mut server = state.lock().unwrap();
    let id = (namespace.to_owned(), name.to_owned());
    let Some(current) = server.collections[collection].objects.get(&id) else {
        return not_found(&format!("{collection} {namespace}/{name}"));
    };
    let sent = &object["metadata"]["resourceVersion"];
    if !sent.is_null() && *sent != current["metadata"]["resourceVersion"] {
        let message = "the object has been modified; please apply your changes to the latest version";
        return answer(409, "Conflict", message);
    }
    server.resource_version += 1;
    let rv = server.resource_version;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    server.store(collection, object.clone());
    axum::Json(object).into_response()
}

/// Server-side apply, as a merge (see the module's notes): creates the object when it does not
/// exist; keeps the resourceVersion when nothing changes.
fn server_side_apply(
    state: &Mutex<Server>,
    collection: &str,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> Response {
    // The body is YAML by content type; kube-rs sends JSON, which is YAML.
    let Ok(mut applied) = serde_json::from_slice::<Value>(body) else {
        return bad_request("the fake reads only JSON apply bodies");
    };
    if applied["metadata"]["name"].as_str() != Some(name) {
        return bad_request(&format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            applied["metadata"]["name"]
        ));
    }
    if let Some(metadata) = applied["metadata"].as_object_mut() {
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
    }
    let mut server = state.lock().unwrap();
    let id = (namespace.to_owned(), name.to_owned());
    let current = server.collections[collection].objects.get(&id).cloned();
    let Some(current) = current else {
        server.resource_version += 1;
        let rv = server.resource_version;
        created(&mut applied, namespace, rv);
        server.store(collection, applied.clone());
        let stored = server.collections[collection].objects.get(&id).cloned().unwrap_or(applied);
        return (StatusCode::CREATED, axum::Json(stored)).into_response();
    };
    let mut merged = current.clone();
    merge(&mut merged, &applied);
    if merged == current {
        return axum::Json(current).into_response();
    }
    let content = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    if content(&merged) != content(&current) {
        let generation = current["metadata"]["generation"].as_u64().unwrap_or(0);
        merged["metadata"]["generation"] = json!(generation + 1);
    }
    server.resource_version += 1;
    merged["metadata"]["resourceVersion"] = json!(server.resource_version.to_string());
    server.store(collection, merged);
    let stored = server.collections[collection].objects.get(&id).cloned().unwrap_or_default();
    axum::Json(stored).into_response()
}

/// A JSON merge patch (RFC 7386) of an object's `status`; the rest of the patch is ignored.
/// A patch that changes nothing keeps the resourceVersion.
fn patch_status(
    state: &Mutex<Server>,
    collection: &str,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return bad_request("not a JSON merge patch");
    };
    let mut server = state.lock().unwrap();
    let id = (namespace.to_owned(), name.to_owned());
    let Some(current) = server.collections[collection].objects.get(&id).cloned() else {
        return not_found(&format!("{collection} {namespace}/{name}"));
    };
    let mut patched = current.clone();
    merge_patch(&mut patched["status"], &patch["status"]);
    if patched == current {
        return axum::Json(current).into_response();
    }
    server.resource_version += 1;
    patched["metadata"]["resourceVersion"] = json!(server.resource_version.to_string());
    server.store(collection, patched.clone());
    axum::Json(patched).into_response()
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
fn merge_patch(into: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *into = patch.clone();
        return;
    };
    if !into.is_object() {
        *into = json!({});
    }
    if let Value::Object(map) = into {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Merges `applied` into `into`: maps key by key, lists of named items by name, anything else
/// replaced.
fn merge(into: &mut Value, applied: &Value) {
    match (into, applied) {
        (Value::Object(into), Value::Object(applied)) => {
            for (key, value) in applied {
                match into.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(into), Value::Array(applied))
            if named(into) && named(applied) && !applied.is_empty() =>
        {
            for item in applied {
                match into.iter_mut().find(|existing| existing["name"] == item["name"]) {
                    Some(existing) => merge(existing, item),
                    None => into.push(item.clone()),
                }
            }
        }
        (into, applied) => *into = applied.clone(),
    }
}

fn named(items: &[Value]) -> bool {
    items.iter().all(|item| item["name"].is_string())
}

fn delete(state: &Mutex<Server>, collection: &str, namespace: &str, name: &str) -> Response {
    match state.lock().unwrap().remove(collection, namespace, name) {
        Some(object) => axum::Json(object).into_response(),
        None => not_found(&format!("{collection} {namespace}/{name}")),
    }
}

/// As the real server: a token it does not know, or an expired one, is not authenticated; one
/// issued for none of the requested audiences neither; otherwise the user, and the audiences
/// both share (the token's own when the review names none).
fn token_review(state: &Mutex<Server>, body: &[u8]) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return bad_request("not JSON");
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

/// Allowed unless the test denied the verb on the resource.
fn access_review(state: &Mutex<Server>, body: &[u8]) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return bad_request("not JSON");
    };
    let attributes = &review["spec"]["resourceAttributes"];
    let text = |field: &str| attributes[field].as_str().unwrap_or_default().to_owned();
    let asked = (text("verb"), text("group"), text("resource"));
    let allowed = !state.lock().unwrap().denied.contains(&asked);
    let status = if allowed {
        json!({"allowed": true})
    } else {
        json!({"allowed": false, "reason": "denied by the test"})
    };
    let answer = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "metadata": {}, "spec": review["spec"], "status": status});
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

/// One requirement of an equality-based label selector.
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

fn label_selector(text: &str) -> Result<Vec<Requirement>, String> {
    let mut requirements = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains(" in ") || part.contains(" notin ") || part.contains('(') {
            return Err(format!("the fake does not serve set-based label selectors ({part:?})"));
        }
        let requirement = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::Absent(k.trim().to_owned())
        } else {
            Requirement::Exists(part.to_owned())
        };
        requirements.push(requirement);
    }
    Ok(requirements)
}

fn selected(object: &Value, requirements: &[Requirement]) -> bool {
    let labels = &object["metadata"]["labels"];
    requirements.iter().all(|r| match r {
        Requirement::Equals(k, v) => labels[k].as_str() == Some(v),
        Requirement::NotEquals(k, v) => labels[k].as_str() != Some(v),
        Requirement::Exists(k) => labels.get(k).is_some(),
        Requirement::Absent(k) => labels.get(k).is_none(),
    })
}

fn list_or_watch(state: &Mutex<Server>, path: &str, namespace: &str, uri: &Uri) -> Response {
    let query: BTreeMap<&str, &str> =
        uri.query().unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')).collect();
    let name_selector = query
        .get("fieldSelector")
        .map(|s| unescape(s))
        .and_then(|s| s.strip_prefix("metadata.name=").map(str::to_owned));
    let requirements =
        match label_selector(&query.get("labelSelector").map(|s| unescape(s)).unwrap_or_default()) {
            Ok(requirements) => requirements,
            Err(message) => return bad_request(&message),
        };
    let mut server = state.lock().unwrap();
    let current = server.resource_version;
    let Some(collection) = server.collections.get_mut(path) else {
        let message = format!("the server could not find the requested resource ({path})");
        return answer(404, "NotFound", &message);
    };
    if matches!(query.get("watch"), Some(&"true" | &"1")) {
        let since = query.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok()).unwrap_or(0);
        return watch(collection, since, current);
    }
    if collection.unavailable > 0 {
        collection.unavailable -= 1;
        return answer(500, "InternalError", "etcdserver: request timed out");
    }
    let items: Vec<Value> = collection
        .objects
        .iter()
        .filter(|((ns, name), _)| {
            name_selector.as_ref().is_none_or(|wanted| wanted == name)
                && (namespace.is_empty() || namespace == ns)
        })
        .filter(|(_, object)| selected(object, &requirements))
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
    ("/api/v1/nodes", "v1", "Node"),
    ("/api/v1/namespaces", "v1", "Namespace"),
    ("/apis/networking.istio.io/v1/virtualservices", "networking.istio.io/v1", "VirtualService"),
    ("/apis/networking.istio.io/v1/destinationrules", "networking.istio.io/v1", "DestinationRule"),
    ("/apis/networking.istio.io/v1/serviceentries", "networking.istio.io/v1", "ServiceEntry"),
    ("/apis/networking.istio.io/v1/workloadentries", "networking.istio.io/v1", "WorkloadEntry"),
    ("/apis/networking.istio.io/v1/sidecars", "networking.istio.io/v1", "Sidecar"),
    ("/apis/security.istio.io/v1/peerauthentications", "security.istio.io/v1", "PeerAuthentication"),
    ("/apis/security.istio.io/v1/authorizationpolicies", "security.istio.io/v1", "AuthorizationPolicy"),
    ("/apis/security.istio.io/v1/requestauthentications", "security.istio.io/v1", "RequestAuthentication"),
    ("/apis/telemetry.istio.io/v1/telemetries", "telemetry.istio.io/v1", "Telemetry"),
];

/// The built-in kinds of a cluster that `trellis install` and `trellis check` use, as
/// `(collection path, apiVersion, kind)`; Istio's kinds come with their CRDs.
pub const CLUSTER: &[(&str, &str, &str)] = &[
    ("/api/v1/namespaces", "v1", "Namespace"),
    ("/api/v1/nodes", "v1", "Node"),
    ("/api/v1/pods", "v1", "Pod"),
    ("/api/v1/services", "v1", "Service"),
    ("/api/v1/serviceaccounts", "v1", "ServiceAccount"),
    ("/api/v1/configmaps", "v1", "ConfigMap"),
    ("/api/v1/secrets", "v1", "Secret"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
    ("/apis/apps/v1/deployments", "apps/v1", "Deployment"),
    ("/apis/apps/v1/daemonsets", "apps/v1", "DaemonSet"),
    ("/apis/policy/v1/poddisruptionbudgets", "policy/v1", "PodDisruptionBudget"),
    ("/apis/rbac.authorization.k8s.io/v1/clusterroles", "rbac.authorization.k8s.io/v1", "ClusterRole"),
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
    ),
    ("/apis/rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1", "Role"),
    ("/apis/rbac.authorization.k8s.io/v1/rolebindings", "rbac.authorization.k8s.io/v1", "RoleBinding"),
    (
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
    ),
    (
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ),
    (CRDS, "apiextensions.k8s.io/v1", "CustomResourceDefinition"),
];
