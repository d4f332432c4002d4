//! PeerAuthentication → the mutual TLS mode of one workload's inbound port, as Istio resolves
//! it: a workload policy (selector) over the namespace's (no selector) over the mesh's (the root
//! namespace's, no selector); `UNSET` inherits from the next scope out; nothing at all is
//! PERMISSIVE. `portLevelMtls` comes from the winning workload policy only, keyed by container
//! port. Several policies at one scope: the oldest wins, then the name. A selector policy in the
//! root namespace is ignored, as Istio does.

use std::collections::BTreeMap;

use tracing::debug;
use trellis_api::resource::{Kind, Resource};
use trellis_api::security::{MtlsMode, PeerAuthenticationSpec};
use trellis_xds::config as pb;

use super::objects::selects;
use crate::model::Model;

/// A workload's resolved modes: what the proxy's `InboundTls` carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundMtls {
    pub mode: Mode,
    pub ports: BTreeMap<u32, Mode>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    #[default]
    Permissive,
    Strict,
    Disable,
}

impl InboundMtls {
    /// The mode on one container port.
    pub fn mode_for(&self, port: u16) -> Mode {
        self.ports.get(&u32::from(port)).copied().unwrap_or(self.mode)
    }

    pub fn to_pb(&self) -> pb::InboundTls {
        pb::InboundTls {
            mode: self.mode.to_pb().into(),
            ports: self.ports.iter().map(|(port, mode)| (*port, mode.to_pb().into())).collect(),
        }
    }
}

impl Mode {
    fn to_pb(self) -> pb::MtlsMode {
        match self {
            Mode::Permissive => pb::MtlsMode::Permissive,
            Mode::Strict => pb::MtlsMode::Strict,
            Mode::Disable => pb::MtlsMode::Disable,
        }
    }

    /// `UNSET` (or no `mtls`) inherits `parent`.
    fn over(mode: Option<MtlsMode>, parent: Mode) -> Mode {
        match mode {
            None | Some(MtlsMode::Unset) => parent,
            Some(MtlsMode::Permissive) => Mode::Permissive,
            Some(MtlsMode::Strict) => Mode::Strict,
            Some(MtlsMode::Disable) => Mode::Disable,
        }
    }
}

/// One policy, with what decides between rivals at its scope.
fn oldest(mut list: Vec<Candidate<'_>>) -> Option<Candidate<'_>> {
    list.sort_by(|a, b| (&a.created, a.name).cmp(&(&b.created, b.name)));
    list.into_iter().next()
}

struct Candidate<'a> {
    /// Unknown creation times sort first, as Go's zero time does in Istio.
    created: Option<String>,
    name: &'a str,
    spec: &'a PeerAuthenticationSpec,
}

/// The effective modes of a workload in `namespace` with `labels`.
pub fn resolve(model: &Model, namespace: &str, labels: &BTreeMap<String, String>) -> InboundMtls {
    let root = model.mesh.root_namespace();
    let mut mesh = Vec::new();
    let mut namespace_wide = Vec::new();
    let mut workload = Vec::new();
    for (key, resource) in model.of_kind(Kind::PeerAuthentication) {
        let Resource::PeerAuthentication(pa) = &**resource else { continue };
        let created = pa.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string());
        let candidate = Candidate { created, name: &key.name, spec: &pa.spec };
        let selector = pa.spec.selector.as_ref().filter(|s| !s.match_labels.is_empty());
        match selector {
            None if key.namespace == root => mesh.push(candidate),
            None if key.namespace == namespace => namespace_wide.push(candidate),
            Some(_) if key.namespace == root && key.namespace != namespace => {
                debug!(policy = %format!("{}/{}", key.namespace, key.name), "a selector policy in the root namespace is ignored");
            }
            Some(s) if key.namespace == namespace && selects(&s.match_labels, labels) => {
                workload.push(candidate)
            }
            _ => {}
        }
    }
    let mode_of = |c: &Option<Candidate<'_>>| c.as_ref().and_then(|c| c.spec.mtls.as_ref()).map(|m| m.mode);
    let (mesh, namespace_wide, workload) = (oldest(mesh), oldest(namespace_wide), oldest(workload));
    let at_mesh = Mode::over(mode_of(&mesh), Mode::Permissive);
    let at_namespace = Mode::over(mode_of(&namespace_wide), at_mesh);
    let mode = Mode::over(mode_of(&workload), at_namespace);
    let ports = workload
        .map(|w| {
            w.spec
                .port_level_mtls
                .iter()
                .map(|(port, mtls)| (*port, Mode::over(Some(mtls.mode), mode)))
                .collect()
        })
        .unwrap_or_default();
    InboundMtls { mode, ports }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::model as model_from_yaml;

    fn policy(
        namespace: &str,
        name: &str,
        selector: Option<&str>,
        mode: &str,
        ports: &str,
        created: &str,
    ) -> String {
        let selector = selector
            .map(|app| format!("  selector: {{ matchLabels: {{ app: {app} }} }}\n"))
            .unwrap_or_default();
        let ports = if ports.is_empty() { String::new() } else { format!("  portLevelMtls: {ports}\n") };
        let created =
            if created.is_empty() { String::new() } else { format!(", creationTimestamp: \"{created}\"") };
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{ name: {name}, namespace: {namespace}{created} }}\nspec:\n{selector}  mtls: {{ mode: {mode} }}\n{ports}---\n"
        )
    }

    fn resolved(yaml: &str) -> InboundMtls {
        let model = model_from_yaml(yaml);
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        resolve(&model, "shop", &labels)
    }

    #[test]
    fn nothing_at_all_is_permissive() {
        assert_eq!(resolved(""), InboundMtls::default());
    }

    // Istio's TestComposePeerAuthentication vectors (pilot/pkg/security/authn/policy_applier_test.go).
    #[test]
    fn namespace_over_mesh() {
        let yaml = policy("istio-system", "mesh", None, "STRICT", "", "")
            + &policy("shop", "ns", None, "PERMISSIVE", "", "");
        assert_eq!(resolved(&yaml).mode, Mode::Permissive);
        let yaml = policy("istio-system", "mesh", None, "DISABLE", "", "")
            + &policy("shop", "ns", None, "PERMISSIVE", "", "");
        assert_eq!(resolved(&yaml).mode, Mode::Permissive);
    }

    #[test]
    fn the_oldest_of_rivals_wins() {
        let yaml = policy("istio-system", "a-now", None, "DISABLE", "", "2026-12-07T10:00:00Z")
            + &policy("istio-system", "b-older", None, "PERMISSIVE", "", "2026-12-07T09:59:59Z")
            + &policy("istio-system", "c-older", None, "STRICT", "", "2026-12-07T09:59:59Z");
        assert_eq!(resolved(&yaml).mode, Mode::Permissive, "oldest, then by name");
    }

    #[test]
    fn unset_inherits_through_every_scope() {
        let yaml = policy("istio-system", "mesh", None, "STRICT", "", "")
            + &policy("shop", "ns", None, "UNSET", "", "")
            + &policy("shop", "web", Some("web"), "UNSET", "", "");
        assert_eq!(resolved(&yaml).mode, Mode::Strict);
    }

    #[test]
    fn port_level_modes_inherit_the_workload_mode() {
        let yaml = policy(
            "shop",
            "web",
            Some("web"),
            "STRICT",
            "{ 80: { mode: DISABLE }, 90: { mode: UNSET }, 100: {} }",
            "",
        );
        let got = resolved(&yaml);
        assert_eq!(got.mode, Mode::Strict);
        assert_eq!(got.ports, BTreeMap::from([(80, Mode::Disable), (90, Mode::Strict), (100, Mode::Strict)]));
    }

    #[test]
    fn workload_over_namespace_and_root_selectors_ignored() {
        let yaml = policy("shop", "ns", None, "STRICT", "", "")
            + &policy("shop", "web", Some("web"), "DISABLE", "", "")
            + &policy("istio-system", "root-selector", Some("web"), "STRICT", "", "");
        assert_eq!(resolved(&yaml).mode, Mode::Disable);
        let yaml = policy("istio-system", "root-selector", Some("web"), "STRICT", "", "");
        assert_eq!(
            resolved(&yaml).mode,
            Mode::Permissive,
            "a selector policy in the root namespace is ignored"
        );
        let other = policy("shop", "other", Some("other"), "STRICT", "", "");
        assert_eq!(resolved(&other).mode, Mode::Permissive, "a workload policy for other labels");
    }
}
