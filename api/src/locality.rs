//! Where a workload runs: Istio's locality, `region/zone/subzone`, how it is written (a
//! WorkloadEntry's `locality`, the `istio-locality` label, the Kubernetes topology labels of a
//! node) and the patterns a `localityLbSetting` matches localities with.
//!
//! Pure parsing and matching, shared by validation, the control plane and the proxy, so that the
//! three read a locality the same way.

use std::fmt;

/// Overrides the registry's locality of a workload (pod or WorkloadEntry), and gives a proxy
/// outside Kubernetes its own. Label values cannot hold `/`, so `us-east.zone1.a` stands for
/// `us-east/zone1/a` (Istio's convention).
pub const LOCALITY_LABEL: &str = "istio-locality";
/// A Kubernetes node's region and zone (Kubernetes' well-known labels).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// A node's subzone (Istio's label; Kubernetes has none).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// A locality. Every part may be empty (unknown); a known part never follows an unknown one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Reads `region`, `region/zone` or `region/zone/subzone`; the empty string is the unknown
    /// locality. Errors say what is wrong with the text.
    pub fn parse(text: &str) -> Result<Locality, String> {
        if text.is_empty() {
            return Ok(Locality::default());
        }
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() > 3 {
            return Err(format!(
                "locality {text:?} has {} parts; the form is region/zone/subzone",
                parts.len()
            ));
        }
        for part in &parts {
            check_part(text, part)?;
        }
        if let Some(gap) = parts.iter().position(|p| p.is_empty()) {
            return Err(format!(
                "locality {text:?} has an empty {}; the form is region/zone/subzone",
                ["region", "zone", "subzone"][gap]
            ));
        }
        let part = |i: usize| parts.get(i).map_or_else(String::new, |p| (*p).to_owned());
        Ok(Locality { region: part(0), zone: part(1), subzone: part(2) })
    }

    /// Reads the `istio-locality` label's value: dots separate the parts (a value that has `/`
    /// is read as it is, as Istio does).
    pub fn from_label(value: &str) -> Result<Locality, String> {
        if value.contains('/') { Locality::parse(value) } else { Locality::parse(&value.replace('.', "/")) }
    }

    /// From a node's topology labels (`topology.kubernetes.io/region`, `.../zone`,
    /// `topology.istio.io/subzone`), as far as they go: a part after a missing one is dropped.
    pub fn from_topology_labels(get: impl Fn(&str) -> Option<String>) -> Locality {
        let region = get(REGION_LABEL).unwrap_or_default();
        let zone = if region.is_empty() { String::new() } else { get(ZONE_LABEL).unwrap_or_default() };
        let subzone = if zone.is_empty() { String::new() } else { get(SUBZONE_LABEL).unwrap_or_default() };
        Locality { region, zone, subzone }
    }

    pub fn is_unknown(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// The value of one of the topology labels for this locality (Istio adds them to the labels
    /// of every proxy and endpoint, so that `failoverPriority` can name them); `None` for other
    /// keys.
    pub fn topology_label(&self, key: &str) -> Option<&str> {
        match key {
            REGION_LABEL => Some(&self.region),
            ZONE_LABEL => Some(&self.zone),
            SUBZONE_LABEL => Some(&self.subzone),
            _ => None,
        }
    }
}

impl fmt::Display for Locality {
    /// `region/zone/subzone` without trailing empty parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        if !self.zone.is_empty() || !self.subzone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        if !self.subzone.is_empty() {
            write!(f, "/{}", self.subzone)?;
        }
        Ok(())
    }
}

/// A part of a locality: no spaces or control characters, no `*` (only patterns have those).
fn check_part(text: &str, part: &str) -> Result<(), String> {
    if part.contains('*') {
        return Err(format!("locality {text:?} has a wildcard; only localityLbSetting patterns may"));
    }
    if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("locality {text:?} has spaces or control characters"));
    }
    Ok(())
}

/// A `localityLbSetting.distribute` locality: `region/zone/subzone` where the last part given
/// may be `*` (any); parts not given match any value. `*` alone matches every locality.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalityPattern {
    /// `None`: any.
    pub region: Option<String>,
    pub zone: Option<String>,
    pub subzone: Option<String>,
}

impl LocalityPattern {
    /// Reads a pattern; errors say what is wrong with it (Istio's rules: at most one `*`, and
    /// only as the last part; no empty part).
    pub fn parse(text: &str) -> Result<LocalityPattern, String> {
        if text.is_empty() {
            return Err(
                "empty locality; the form is region/zone/subzone, with * as the last part for any".into()
            );
        }
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() > 3 {
            return Err(format!(
                "locality {text:?} has {} parts; the form is region/zone/subzone",
                parts.len()
            ));
        }
        let stars = text.matches('*').count();
        if stars > 1 || (stars == 1 && parts.last() != Some(&"*")) {
            return Err(format!("locality {text:?}: the wildcard * may only be the whole last part, once"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("locality {text:?} has an empty part; the form is region/zone/subzone"));
        }
        if parts.iter().any(|p| p.chars().any(|c| c.is_whitespace() || c.is_control())) {
            return Err(format!("locality {text:?} has spaces or control characters"));
        }
        let part = |i: usize| parts.get(i).filter(|p| **p != "*").map(|p| (*p).to_owned());
        Ok(LocalityPattern { region: part(0), zone: part(1), subzone: part(2) })
    }

    /// Whether the pattern matches `locality` (Istio's `LocalityMatch`).
    pub fn matches(&self, locality: &Locality) -> bool {
        let part = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        part(&self.region, &locality.region)
            && part(&self.zone, &locality.zone)
            && part(&self.subzone, &locality.subzone)
    }

    /// Whether some locality matches both patterns.
    pub fn overlaps(&self, other: &LocalityPattern) -> bool {
        let part = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        part(&self.region, &other.region)
            && part(&self.zone, &other.zone)
            && part(&self.subzone, &other.subzone)
    }
}

/// One entry of `failoverPriority`: a label key, or `key=value` (the value the proxy's own is
/// replaced with).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FailoverLabel {
    pub key: String,
    pub value: Option<String>,
}

impl FailoverLabel {
    /// Splits `key` or `key=value`; the key and value are not checked here.
    pub fn parse(text: &str) -> FailoverLabel {
        match text.split_once('=') {
            Some((key, value)) => FailoverLabel { key: key.to_owned(), value: Some(value.to_owned()) },
            None => FailoverLabel { key: text.to_owned(), value: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(region: &str, zone: &str, subzone: &str) -> Locality {
        Locality { region: region.into(), zone: zone.into(), subzone: subzone.into() }
    }

    #[test]
    fn localities_parse_and_print_back() {
        assert_eq!(Locality::parse("us-east/us-east-1a/rack-1"), Ok(loc("us-east", "us-east-1a", "rack-1")));
        assert_eq!(Locality::parse("us-east"), Ok(loc("us-east", "", "")));
        assert_eq!(Locality::parse(""), Ok(Locality::default()));
        assert_eq!(loc("us-east", "a", "").to_string(), "us-east/a");
        assert_eq!(loc("us-east", "a", "r1").to_string(), "us-east/a/r1");
        assert_eq!(Locality::from_label("us-east.a.r1"), Ok(loc("us-east", "a", "r1")));
        assert_eq!(Locality::from_label("us-east/a"), Ok(loc("us-east", "a", "")));
    }

    #[test]
    fn bad_localities_say_why() {
        for (text, want) in [
            ("a/b/c/d", "has 4 parts"),
            ("/zone", "has an empty region"),
            ("region//sub", "has an empty zone"),
            ("region/", "has an empty zone"),
            ("us-east/*", "has a wildcard"),
            ("us east", "spaces"),
        ] {
            let err = Locality::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn topology_labels_stop_at_the_first_missing_part() {
        let labels = |pairs: &[(&str, &str)]| {
            let map: std::collections::BTreeMap<String, String> =
                pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            Locality::from_topology_labels(|k| map.get(k).cloned())
        };
        assert_eq!(
            labels(&[(REGION_LABEL, "r"), (ZONE_LABEL, "z"), (SUBZONE_LABEL, "s")]),
            loc("r", "z", "s")
        );
        assert_eq!(labels(&[(ZONE_LABEL, "z")]), Locality::default());
        assert_eq!(labels(&[(REGION_LABEL, "r"), (SUBZONE_LABEL, "s")]), loc("r", "", ""));
    }

    #[test]
    fn patterns_match_like_istio() {
        let p = |s: &str| LocalityPattern::parse(s).unwrap();
        let here = loc("us-east", "a", "r1");
        assert!(p("*").matches(&here));
        assert!(p("us-east").matches(&here));
        assert!(p("us-east/*").matches(&here));
        assert!(p("us-east/a").matches(&here));
        assert!(p("us-east/a/r1").matches(&here));
        assert!(!p("us-east/b").matches(&here));
        assert!(!p("us-west/*").matches(&here));
        assert!(p("us-east/*").overlaps(&p("us-east/a")));
        assert!(!p("us-east/a").overlaps(&p("us-east/b")));
        for bad in ["", "us-*", "*/a", "a/*/b", "a//b", "a/b/c/d", "**"] {
            assert!(LocalityPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failover_labels_split_on_the_first_equals() {
        assert_eq!(FailoverLabel::parse("zone"), FailoverLabel { key: "zone".into(), value: None });
        assert_eq!(
            FailoverLabel::parse("net=a=b"),
            FailoverLabel { key: "net".into(), value: Some("a=b".into()) }
        );
    }
}
