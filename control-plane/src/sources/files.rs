//! The file source: a directory of Istio YAML, polled for changes. Every readable document
//! becomes a model resource; an invalid one is logged and counted, and the last good version
//! of that resource (same kind, namespace and name) stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::resource::{Kind, Resource};

use crate::model::{ModelHandle, ObjectKey};

/// How often the directory is looked at. Edits show up within this plus the push debounce.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Files larger than this are refused whole (a config directory is not a data store).
const MAX_FILE_BYTES: u64 = 8 << 20;
/// Namespace of documents that name none, as `kubectl apply` would use.
const DEFAULT_NAMESPACE: &str = "default";

/// A rejected document: where, which resource, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub file: PathBuf,
    /// The resource's kind, when it could be read (for counting by kind).
    pub kind: String,
    pub message: String,
}

/// What one reading of the directory produced.
#[derive(Debug, Default)]
pub struct Reading {
    pub resources: BTreeMap<ObjectKey, Arc<Resource>>,
    /// Resources whose newest text is invalid: the model keeps their previous version.
    pub keep_previous: BTreeSet<ObjectKey>,
    pub rejections: Vec<Rejection>,
}

/// Reads every `.yaml`, `.yml` and `.json` file under `dir` (sorted, recursively).
pub fn read_dir(dir: &Path) -> Reading {
    let mut reading = Reading::default();
    for file in config_files(dir, &mut reading) {
        let text = match read_bounded(&file) {
            Ok(text) => text,
            Err(message) => {
                reading.rejections.push(Rejection { file, kind: String::new(), message });
                continue;
            }
        };
        let checked = check_text(&text, UnknownFields::Warn);
        // What is read but not enforced (a Telemetry's reportingInterval, ...) is said once per
        // change of the directory, with the field, as the Kubernetes source says it.
        for problem in
            checked.problems.iter().filter(|p| p.severity == trellis_api::validate::Severity::Warning)
        {
            let resource = problem.resource.as_ref().map(ToString::to_string).unwrap_or_default();
            tracing::warn!(file = %file.display(), %resource, field = %problem.field, "{}", problem.message);
        }
        for doc in checked.accepted {
            let key = key_of(&doc.resource);
            if reading.resources.insert(key.clone(), Arc::new(doc.resource)).is_some() {
                reading.rejections.push(Rejection {
                    file: file.clone(),
                    kind: key.kind.name().to_owned(),
                    message: format!(
                        "{} {}/{} is defined twice; the later one wins",
                        key.kind, key.namespace, key.name
                    ),
                });
            }
        }
        for problem in
            checked.problems.iter().filter(|p| p.severity == trellis_api::validate::Severity::Error)
        {
            if let Some(id) = &problem.resource
                && let Some(kind) = Kind::from_name(&id.kind)
                && !id.name.is_empty()
            {
                let namespace = id.namespace.clone().unwrap_or_else(|| default_namespace(kind));
                reading.keep_previous.insert(ObjectKey::new(kind, namespace, id.name.clone()));
            }
            reading.rejections.push(Rejection {
                file: file.clone(),
                kind: problem.resource.as_ref().map(|r| r.kind.clone()).unwrap_or_default(),
                message: problem.to_string(),
            });
        }
    }
    reading
}

fn config_files(dir: &Path, reading: &mut Reading) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) => {
                reading.rejections.push(Rejection { file: d, kind: String::new(), message: e.to_string() });
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue; // editors' swap files, Kubernetes ConfigMap mounts' ..data links
            }
            if path.is_dir() {
                pending.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read_bounded(file: &Path) -> Result<String, String> {
    let len = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes, at most {MAX_FILE_BYTES} are read"));
    }
    std::fs::read_to_string(file).map_err(|e| e.to_string())
}

fn default_namespace(kind: Kind) -> String {
    if kind == Kind::Namespace { String::new() } else { DEFAULT_NAMESPACE.to_owned() }
}

fn key_of(resource: &Resource) -> ObjectKey {
    let meta = resource.metadata();
    let kind = resource.kind();
    ObjectKey::new(
        kind,
        meta.namespace.clone().unwrap_or_else(|| default_namespace(kind)),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Files, sizes and modification times: when this changes, the directory is read again.
fn signature(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut ignored = Reading::default();
    config_files(dir, &mut ignored)
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (f, len, modified)
        })
        .collect()
}

/// Applies a reading to the model: the resources this source owns become exactly the ones
/// read, except that an invalid resource keeps its previous version. Returns the keys owned
/// now.
pub fn apply(model: &ModelHandle, reading: &Reading, owned: &BTreeSet<ObjectKey>) -> BTreeSet<ObjectKey> {
    let mut now_owned = BTreeSet::new();
    model.update(|m| {
        let mut changed = false;
        for key in owned {
            let kept = reading.keep_previous.contains(key) && !reading.resources.contains_key(key);
            if kept {
                now_owned.insert(key.clone());
            } else if !reading.resources.contains_key(key) {
                changed |= m.resources.remove(key).is_some();
            }
        }
        for (key, resource) in &reading.resources {
            now_owned.insert(key.clone());
            let same = m.resources.get(key).is_some_and(|old| old == resource);
            if !same {
                m.resources.insert(key.clone(), resource.clone());
                changed = true;
            }
        }
        changed
    });
    now_owned
}

/// Watches a directory: each [`DirWatcher::poll`] reads it again if any file changed.
pub struct DirWatcher {
    dir: PathBuf,
    owned: BTreeSet<ObjectKey>,
    last_signature: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

impl DirWatcher {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, owned: BTreeSet::new(), last_signature: None }
    }

    /// Reads the directory into the model if it changed since the last poll; returns the
    /// rejections of that reading, or `None` when nothing changed.
    pub fn poll(&mut self, model: &ModelHandle) -> Option<Vec<Rejection>> {
        let sig = signature(&self.dir);
        if self.last_signature.as_ref() == Some(&sig) {
            return None;
        }
        let reading = read_dir(&self.dir);
        self.owned = apply(model, &reading, &self.owned);
        self.last_signature = Some(sig);
        Some(reading.rejections)
    }

    /// Polls every [`POLL_INTERVAL`] until the task is dropped, passing the rejections of each
    /// new reading to `on_reading` (for logs, counters and the debug page).
    pub async fn run(mut self, model: ModelHandle, on_reading: impl Fn(&[Rejection]) + Send + 'static) {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let (watcher, rejections) = {
                let model = model.clone();
                match tokio::task::spawn_blocking(move || {
                    let rejections = self.poll(&model);
                    (self, rejections)
                })
                .await
                {
                    Ok(done) => done,
                    Err(_) => return, // the runtime is shutting down
                }
            };
            self = watcher;
            if let Some(rejections) = rejections {
                on_reading(&rejections);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web]
  http:
    - route:
        - destination: { host: web, subset: v1 }
          weight: WEIGHT
        - destination: { host: web, subset: v2 }
          weight: OTHER
";

    fn vs(weight: i32) -> String {
        VS.replace("WEIGHT", &weight.to_string()).replace("OTHER", &(100 - weight).to_string())
    }

    fn weights(model: &ModelHandle) -> Vec<i64> {
        let snapshot = model.snapshot();
        let key = ObjectKey::new(Kind::VirtualService, "shop", "web");
        let Some(resource) = snapshot.resources.get(&key) else { return Vec::new() };
        let json = serde_json::to_value(resource.as_ref()).unwrap();
        json["spec"]["http"][0]["route"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["weight"].as_i64().unwrap_or(0))
            .collect()
    }

    #[test]
    fn edits_apply_invalid_edits_keep_the_last_good_version_and_removal_removes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        let model = ModelHandle::default();

        std::fs::write(&file, vs(90)).unwrap();
        let owned = apply(&model, &read_dir(dir.path()), &BTreeSet::new());
        assert_eq!(weights(&model), [90, 10]);

        // Weights that add up to nothing: rejected, naming the resource and field.
        std::fs::write(&file, vs(90).replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"))
            .unwrap();
        let reading = read_dir(dir.path());
        assert_eq!(reading.rejections.len(), 1, "{:?}", reading.rejections);
        let message = &reading.rejections[0].message;
        assert!(
            message.contains("VirtualService shop/web") && message.contains("spec.http[0].route"),
            "{message}"
        );
        let owned = apply(&model, &reading, &owned);
        assert_eq!(weights(&model), [90, 10], "the last good version stays");

        std::fs::write(&file, vs(50)).unwrap();
        let owned = apply(&model, &read_dir(dir.path()), &owned);
        assert_eq!(weights(&model), [50, 50]);

        std::fs::remove_file(&file).unwrap();
        let owned = apply(&model, &read_dir(dir.path()), &owned);
        assert!(weights(&model).is_empty() && owned.is_empty());
    }

    #[test]
    fn unreadable_oversized_and_broken_files_are_rejected_without_stopping_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "kind: [unclosed").unwrap();
        std::fs::write(dir.path().join("b.yaml"), vs(90)).unwrap();
        std::fs::write(dir.path().join(".swap.yaml"), "not: read").unwrap();
        let big = std::fs::File::create(dir.path().join("c.yaml")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        let reading = read_dir(dir.path());
        assert_eq!(reading.resources.len(), 1);
        let files: Vec<String> = reading
            .rejections
            .iter()
            .map(|r| r.file.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["a.yaml", "c.yaml"], "{:?}", reading.rejections);
        assert!(reading.rejections[1].message.contains("bytes, at most"));
    }
}
