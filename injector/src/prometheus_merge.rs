//! Metrics merging, as Istio's injector does it: the pod's `prometheus.io/scrape|port|path`
//! annotations are pointed at the proxy's status port (`/stats/prometheus`), added when absent,
//! and the app's originals go to the proxy in `ISTIO_PROMETHEUS_ANNOTATIONS`, so that the proxy
//! scrapes the app and serves both. One scrape config (the annotations) then covers every pod.
//!
//! Prometheus reads `prometheus.io/scrape`, `prometheus.io.scrape` and `prometheus-io/scrape`
//! alike (it turns every character outside `[a-zA-Z0-9_]` into `_`), so every spelling is read
//! and cleared, not only the canonical one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use serde::{Deserialize, Serialize};
use trellis_api::annotations::names::annotation as ann;

/// The proxy's environment variable with the app's original annotations (Istio's name).
pub const SCRAPE_CONFIG_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
const MERGED_PATH: &str = "/stats/prometheus";

const SCRAPE: &str = "prometheus_io_scrape";
const PORT: &str = "prometheus_io_port";
const PATH: &str = "prometheus_io_path";

/// The app's own scrape settings, as the pod's annotations gave them (empty when absent);
/// serialised with Istio's keys and in its order.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Eq)]
#[serde(default)]
pub struct AppScrape {
    pub scrape: String,
    pub path: String,
    pub port: String,
}

/// Whether this pod's metrics are merged: the pod's `prometheus.istio.io/merge-metrics` when it
/// parses as a boolean (the injector has already refused one that does not), else the mesh's
/// `enablePrometheusMerge`.
pub fn enabled(annotations: &BTreeMap<String, String>, mesh_default: bool) -> bool {
    annotations
        .get(ann::PROMETHEUS_MERGE_METRICS)
        .and_then(|v| trellis_api::annotations::parse_bool(ann::PROMETHEUS_MERGE_METRICS, v).ok())
        .unwrap_or(mesh_default)
}

/// Rewrites `annotations` to point at `status_port` and returns the environment variable the
/// proxy needs, when there are originals to hand over. Does nothing for a pod that opted out
/// of scraping (`prometheus.io/scrape: "false"`), or one already pointed at the status port
/// (re-injected, or a user who wants exactly that).
pub fn apply(annotations: &mut BTreeMap<String, String>, status_port: u16) -> Option<EnvVar> {
    if !wants_scraping(annotations) {
        return None;
    }
    let target = status_port.to_string();
    if first_value(annotations, PORT).is_some_and(|port| port == target) {
        return None;
    }
    let original = AppScrape {
        scrape: first_value(annotations, SCRAPE).unwrap_or_default(),
        path: first_value(annotations, PATH).unwrap_or_default(),
        port: first_value(annotations, PORT).unwrap_or_default(),
    };
    // Any other spelling left behind would give Prometheus two values to pick from at random.
    annotations.retain(|key, _| ![SCRAPE, PORT, PATH].contains(&prometheus_name(key).as_str()));
    annotations.insert(ann::PROMETHEUS_PORT.to_owned(), target);
    annotations.insert(ann::PROMETHEUS_PATH.to_owned(), MERGED_PATH.to_owned());
    annotations.insert(ann::PROMETHEUS_SCRAPE.to_owned(), "true".to_owned());
    (original != AppScrape::default()).then(|| EnvVar {
        name: SCRAPE_CONFIG_ENV.to_owned(),
        value: serde_json::to_string(&original).ok(),
        value_from: None,
    })
}

/// Undoes [`apply`] before a re-injection (ours or Istio's), from the old proxy's environment:
/// the app's own annotations come back, so that injecting twice gives the pod injecting once
/// did. Without the variable, annotations that are exactly what an injection adds to a pod that
/// had none were added by it, and go.
pub fn restore(annotations: &mut BTreeMap<String, String>, old_proxy: &Container) {
    let Some(original) = old_proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == SCRAPE_CONFIG_ENV)
        .and_then(|e| e.value.as_deref())
        .and_then(|v| serde_json::from_str::<AppScrape>(v).ok())
    else {
        let added =
            annotations.iter().filter(|(k, _)| [SCRAPE, PORT, PATH].contains(&prometheus_name(k).as_str()));
        let added: Vec<(&String, &String)> = added.collect();
        let ours = added.len() == 3
            && first_value(annotations, SCRAPE).as_deref() == Some("true")
            && first_value(annotations, PATH).as_deref() == Some(MERGED_PATH);
        if ours {
            annotations.retain(|key, _| ![SCRAPE, PORT, PATH].contains(&prometheus_name(key).as_str()));
        }
        return;
    };
    annotations.retain(|key, _| ![SCRAPE, PORT, PATH].contains(&prometheus_name(key).as_str()));
    for (name, value) in [
        (ann::PROMETHEUS_SCRAPE, original.scrape),
        (ann::PROMETHEUS_PATH, original.path),
        (ann::PROMETHEUS_PORT, original.port),
    ] {
        if !value.is_empty() {
            annotations.insert(name.to_owned(), value);
        }
    }
}

/// `prometheus.io/scrape: "false"` (in any spelling) means the pod is not scraped at all, so
/// there is nothing to merge. Absent, or not a boolean, it is scraped.
fn wants_scraping(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .iter()
        .filter(|(key, _)| prometheus_name(key) == SCRAPE)
        .find_map(|(_, value)| go_bool(value))
        .unwrap_or(true)
}

fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn first_value(annotations: &BTreeMap<String, String>, name: &str) -> Option<String> {
    annotations.iter().find(|(key, _)| prometheus_name(key) == name).map(|(_, v)| v.clone())
}

/// The label name Prometheus makes of an annotation key.
fn prometheus_name(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn env_value(env: Option<EnvVar>) -> serde_json::Value {
        serde_json::from_str(&env.unwrap().value.unwrap()).unwrap()
    }

    #[test]
    fn the_apps_annotations_move_to_the_proxy_and_point_at_the_status_port() {
        let mut a = map(&[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9090"),
            ("prometheus.io/path", "/custom"),
            ("team", "x"),
        ]);
        let env = apply(&mut a, 15020);
        assert_eq!(env_value(env), serde_json::json!({"scrape": "true", "path": "/custom", "port": "9090"}));
        assert_eq!(
            a,
            map(&[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "15020"),
                ("prometheus.io/path", "/stats/prometheus"),
                ("team", "x"),
            ])
        );
    }

    #[test]
    fn the_env_keeps_istios_key_order() {
        let mut a = map(&[("prometheus.io/port", "8080")]);
        let env = apply(&mut a, 15020).unwrap();
        assert_eq!(env.value.unwrap(), r#"{"scrape":"","path":"","port":"8080"}"#);
    }

    #[test]
    fn annotations_are_added_when_absent_and_no_env_is_needed() {
        let mut a = BTreeMap::new();
        assert!(apply(&mut a, 15020).is_none());
        assert_eq!(
            a,
            map(&[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "15020"),
                ("prometheus.io/path", "/stats/prometheus"),
            ])
        );
    }

    #[test]
    fn scrape_false_leaves_the_pod_alone() {
        for value in ["false", "0", "F"] {
            let before = map(&[("prometheus.io/scrape", value), ("prometheus.io/port", "9090")]);
            let mut a = before.clone();
            assert!(apply(&mut a, 15020).is_none());
            assert_eq!(a, before, "{value}");
        }
        // Not a boolean: Istio treats it as scraped.
        let mut a = map(&[("prometheus.io/scrape", "maybe")]);
        assert_eq!(env_value(apply(&mut a, 15020))["scrape"], "maybe");
        assert_eq!(a["prometheus.io/scrape"], "true");
    }

    #[test]
    fn other_spellings_are_read_and_cleared() {
        let mut a = map(&[("prometheus.io.port", "9100"), ("prometheus-io/path", "/m")]);
        let env = apply(&mut a, 15020);
        assert_eq!(env_value(env), serde_json::json!({"scrape": "", "path": "/m", "port": "9100"}));
        assert!(!a.contains_key("prometheus.io.port") && !a.contains_key("prometheus-io/path"), "{a:?}");
        assert_eq!(a["prometheus.io/port"], "15020");
    }

    #[test]
    fn a_pod_already_pointing_at_the_status_port_is_left_alone() {
        let before = map(&[("prometheus.io/port", "15020"), ("prometheus.io/path", "/mine")]);
        let mut a = before.clone();
        assert!(apply(&mut a, 15020).is_none());
        assert_eq!(a, before);
        // Another status port: rewritten.
        let mut a = before.clone();
        assert!(apply(&mut a, 15030).is_some());
        assert_eq!(a["prometheus.io/port"], "15030");
    }

    #[test]
    fn merge_switch_annotation_wins_over_the_mesh() {
        assert!(enabled(&BTreeMap::new(), true));
        assert!(!enabled(&BTreeMap::new(), false));
        assert!(!enabled(&map(&[("prometheus.istio.io/merge-metrics", "false")]), true));
        assert!(enabled(&map(&[("prometheus.istio.io/merge-metrics", "true")]), false));
    }

    #[test]
    fn restore_removes_what_an_injection_added_to_a_pod_without_annotations() {
        let proxy = Container { name: "istio-proxy".into(), ..Container::default() };
        // Istio's output for a pod with its status port moved: Istio still points at 15020.
        let mut a = map(&[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "15020"),
            ("prometheus.io/path", "/stats/prometheus"),
            ("x", "y"),
        ]);
        restore(&mut a, &proxy);
        assert_eq!(a, map(&[("x", "y")]));
        assert!(apply(&mut a, 123).is_none(), "nothing of the app's to hand over");
        assert_eq!(a["prometheus.io/port"], "123");
        // The user's own (another path) stay.
        let mine = map(&[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9090"),
            ("prometheus.io/path", "/m"),
        ]);
        let mut a = mine.clone();
        restore(&mut a, &proxy);
        assert_eq!(a, mine);
    }

    #[test]
    fn restore_gives_back_the_originals() {
        let original = map(&[("prometheus.io/port", "9090"), ("prometheus.io/path", "/custom"), ("x", "y")]);
        let mut a = original.clone();
        let env = apply(&mut a, 15020).unwrap();
        let proxy = Container { name: "istio-proxy".into(), env: Some(vec![env]), ..Container::default() };
        restore(&mut a, &proxy);
        assert_eq!(a, original);
    }
}
