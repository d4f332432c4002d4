//! Putting our plugin last in the primary network's configuration, and taking it out again.
//! Pure: file names and contents in, the file to write out. Runtimes (containerd, CRI-O) use
//! the first configuration file in name order, so that file is the one we join.

use serde_json::{Map, Value, json};

use crate::protocol::SUPPORTED_VERSIONS;

/// Our plugin's `type`, the name of the binary in the CNI bin directory.
pub const PLUGIN_TYPE: &str = "trellis-cni";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct MergeError {
    pub file: String,
    pub reason: String,
}

/// The file to write (atomically) after inserting our entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    pub file_name: String,
    pub content: String,
    /// A single plugin (`.conf`, `.json`) becomes a `.conflist`; the old file goes.
    pub replaces: Option<String>,
}

/// Whether a runtime would read this file as a network configuration. Our own temporary files
/// start with a dot and never are.
pub fn is_config_file(name: &str) -> bool {
    !name.starts_with('.') && [".conf", ".conflist", ".json"].iter().any(|ext| name.ends_with(ext))
}

/// The configuration the runtime uses: the first network configuration file in name order.
/// It may be unreadable (half-written by its owner, or broken): containerd then stops there too,
/// so the caller waits rather than joining the next file. `files` are (name, content) pairs in
/// any order.
pub fn primary(files: &[(String, String)]) -> Option<&(String, String)> {
    files.iter().filter(|(name, _)| is_config_file(name)).min_by(|a, b| a.0.cmp(&b.0))
}

/// The primary's file with `entry` as its last plugin; `None` when it is already exactly so.
/// An older entry of ours anywhere in the list is replaced, never duplicated; the primary's
/// `cniVersion`, name and plugins are kept.
pub fn insert(file_name: &str, content: &str, entry: &Value) -> Result<Option<Merged>, MergeError> {
    let config = parse(file_name, content)?;
    // Joining a chain whose version we do not speak would fail every pod on the node.
    let version = config.get("cniVersion").and_then(Value::as_str).unwrap_or("0.1.0");
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(MergeError {
            file: file_name.to_owned(),
            reason: format!(
                "cniVersion {version:?} is not one trellis-cni speaks ({})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        });
    }
    let (mut list, replaces) = match config.get("plugins") {
        Some(_) => (config.clone(), None),
        None => {
            // A single plugin: wrap it into a list that keeps its version and name.
            let mut list = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = config.get(key) {
                    list.insert(key.to_owned(), v.clone());
                }
            }
            list.insert("plugins".to_owned(), json!([Value::Object(config.clone())]));
            // Runtimes read `.conf` and `.json` files as single plugins: the list needs a
            // `.conflist` of its own.
            (list, Some(file_name.to_owned()))
        }
    };
    let plugins = plugins_mut(&mut list, file_name)?;
    let before = plugins.clone();
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry.clone());
    if replaces.is_none() && *plugins == before {
        return Ok(None);
    }
    let new_name = match &replaces {
        Some(_) => format!("{}.conflist", single_plugin_stem(file_name)),
        None => file_name.to_owned(),
    };
    Ok(Some(Merged { file_name: new_name, content: render(&list), replaces }))
}

/// The file without our entries; `None` when it has none (or is not a configuration).
pub fn remove(file_name: &str, content: &str) -> Option<String> {
    let mut config = parse(file_name, content).ok()?;
    let plugins = plugins_mut(&mut config, file_name).ok()?;
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    (plugins.len() != before).then(|| render(&config))
}

/// Whether the file lists our plugin.
pub fn contains_ours(file_name: &str, content: &str) -> bool {
    parse(file_name, content)
        .ok()
        .and_then(|c| c.get("plugins")?.as_array().map(|p| p.iter().any(is_ours)))
        .unwrap_or(false)
}

fn single_plugin_stem(file_name: &str) -> &str {
    file_name.strip_suffix(".conf").or_else(|| file_name.strip_suffix(".json")).unwrap_or(file_name)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn parse(file_name: &str, content: &str) -> Result<Map<String, Value>, MergeError> {
    let fail = |reason: String| MergeError { file: file_name.to_owned(), reason };
    let value: Value = serde_json::from_str(content).map_err(|e| fail(format!("not JSON: {e}")))?;
    let Value::Object(config) = value else { return Err(fail("not a JSON object".to_owned())) };
    if !config.contains_key("plugins") && !config.contains_key("type") {
        return Err(fail("neither a plugin list (plugins) nor a single plugin (type)".to_owned()));
    }
    Ok(config)
}

fn plugins_mut<'a>(
    config: &'a mut Map<String, Value>,
    file_name: &str,
) -> Result<&'a mut Vec<Value>, MergeError> {
    match config.get_mut("plugins") {
        Some(Value::Array(plugins)) => Ok(plugins),
        _ => Err(MergeError { file: file_name.to_owned(), reason: "plugins: not a list".to_owned() }),
    }
}

fn render(config: &Map<String, Value>) -> String {
    let mut text = serde_json::to_string_pretty(config).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        json!({"type": "trellis-cni", "kubernetes": {"kubeconfig": "/etc/cni/net.d/ZZZ-trellis-cni-kubeconfig"}})
    }

    fn types(content: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(content).unwrap();
        v["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap().to_owned()).collect()
    }

    const CALICO: &str = r#"{
      "name": "k8s-pod-network", "cniVersion": "0.3.1",
      "plugins": [
        {"type": "calico", "datastore_type": "kubernetes", "ipam": {"type": "calico-ipam"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
      ]
    }"#;

    #[test]
    fn joins_a_list_of_several_plugins_last_keeping_its_version() {
        let merged = insert("10-calico.conflist", CALICO, &ours()).unwrap().unwrap();
        assert_eq!(merged.file_name, "10-calico.conflist");
        assert_eq!(merged.replaces, None);
        assert_eq!(types(&merged.content), ["calico", "bandwidth", "portmap", "trellis-cni"]);
        let v: Value = serde_json::from_str(&merged.content).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["name"], "k8s-pod-network");
        let original: Value = serde_json::from_str(CALICO).unwrap();
        assert_eq!(v["plugins"][0], original["plugins"][0], "the primary's entries are untouched");
    }

    #[test]
    fn turns_a_single_conf_into_a_list() {
        let bridge = r#"{"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0",
                         "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;
        let merged = insert("10-bridge.conf", bridge, &ours()).unwrap().unwrap();
        assert_eq!(merged.file_name, "10-bridge.conflist");
        assert_eq!(merged.replaces.as_deref(), Some("10-bridge.conf"));
        assert_eq!(types(&merged.content), ["bridge", "trellis-cni"]);
        let v: Value = serde_json::from_str(&merged.content).unwrap();
        assert_eq!((v["cniVersion"].as_str(), v["name"].as_str()), (Some("1.0.0"), Some("bridge-net")));
        assert_eq!(v["plugins"][0]["ipam"]["subnet"], "10.22.0.0/16");
        let from_json = insert("10-bridge.json", bridge, &ours()).unwrap().unwrap();
        assert_eq!(from_json.file_name, "10-bridge.conflist");
        assert_eq!(from_json.replaces.as_deref(), Some("10-bridge.json"));
    }

    #[test]
    fn a_file_already_holding_our_entry_is_left_alone_or_updated_never_duplicated() {
        let merged = insert("10-calico.conflist", CALICO, &ours()).unwrap().unwrap();
        assert_eq!(insert("10-calico.conflist", &merged.content, &ours()).unwrap(), None);
        // An entry of ours in the middle (or an older one) moves to the end, once.
        let mut v: Value = serde_json::from_str(&merged.content).unwrap();
        let plugins = v["plugins"].as_array_mut().unwrap();
        plugins.insert(1, json!({"type": "trellis-cni", "log_level": "debug"}));
        let again = insert("10-calico.conflist", &v.to_string(), &ours()).unwrap().unwrap();
        assert_eq!(types(&again.content), ["calico", "bandwidth", "portmap", "trellis-cni"]);
        let v: Value = serde_json::from_str(&again.content).unwrap();
        assert_eq!(v["plugins"][3], ours());
    }

    #[test]
    fn an_overwritten_file_gets_our_entry_back() {
        let merged = insert("10-calico.conflist", CALICO, &ours()).unwrap().unwrap();
        assert!(contains_ours("10-calico.conflist", &merged.content));
        // The primary's agent rewrites its file without us.
        assert!(!contains_ours("10-calico.conflist", CALICO));
        let back = insert("10-calico.conflist", CALICO, &ours()).unwrap().unwrap();
        assert_eq!(back.content, merged.content);
    }

    #[test]
    fn the_first_file_in_name_order_has_priority() {
        let file = |name: &str, content: &str| (name.to_owned(), content.to_owned());
        let files = vec![
            file(
                "20-flannel.conflist",
                r#"{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel"}]}"#,
            ),
            file("ZZZ-trellis-cni-kubeconfig", "apiVersion: v1"),
            file(".trellis-cni.tmp", r#"{"type":"bridge"}"#),
            file("05-broken.conf", "{not json"),
            file("10-calico.conflist", CALICO),
            file("99-loopback.conf", r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#),
        ];
        // The broken 05 file comes first: the runtime stops there, so it is the primary (and
        // inserting into it fails, so the agent waits).
        assert_eq!(primary(&files).map(|(n, _)| n.as_str()), Some("05-broken.conf"));
        assert!(insert("05-broken.conf", "{not json", &ours()).is_err());
        let without_broken: Vec<_> = files.iter().filter(|(n, _)| n != "05-broken.conf").cloned().collect();
        assert_eq!(primary(&without_broken).map(|(n, _)| n.as_str()), Some("10-calico.conflist"));
        assert_eq!(primary(&files[..1]).map(|(n, _)| n.as_str()), Some("20-flannel.conflist"));
        assert_eq!(primary(&files[1..3]), None, "no configuration yet");
    }

    #[test]
    fn removing_takes_out_only_our_entries() {
        let merged = insert("10-calico.conflist", CALICO, &ours()).unwrap().unwrap();
        let removed = remove("10-calico.conflist", &merged.content).unwrap();
        assert_eq!(types(&removed), ["calico", "bandwidth", "portmap"]);
        assert_eq!(remove("10-calico.conflist", &removed), None);
        assert_eq!(remove("x.conflist", "{oops"), None);
    }

    #[test]
    fn a_chain_in_a_version_we_do_not_speak_is_refused() {
        let old = r#"{"cniVersion": "0.2.0", "name": "old", "plugins": [{"type": "bridge"}]}"#;
        let err = insert("10-old.conflist", old, &ours()).unwrap_err();
        assert!(err.reason.contains("\"0.2.0\" is not one trellis-cni speaks"), "{err}");
    }

    #[test]
    fn malformed_configurations_are_named() {
        for (content, reason) in [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"name": "x"}"#, "neither a plugin list"),
            (r#"{"cniVersion": "1.0.0", "plugins": {"type": "x"}}"#, "plugins: not a list"),
        ] {
            let err = insert("10-x.conflist", content, &ours()).unwrap_err();
            assert_eq!(err.file, "10-x.conflist");
            assert!(err.reason.contains(reason), "{content}: {err}");
        }
    }
}
