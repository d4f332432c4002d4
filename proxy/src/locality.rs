//! Locality-aware load balancing, as Istio configures Envoy for it (`localityLbSetting`).
//!
//! At compile time a cluster's endpoints are split into parts, from the proxy's own place
//! ([`Place`]: its locality and labels) and theirs:
//!
//! - **priority levels** (failover): level 0 is the endpoints nearest to the proxy (same region,
//!   zone and subzone; or by `failoverPriority` labels), then same zone, same region, the
//!   `failover` region, the rest. Only with outlier detection, as in Istio.
//! - **weighted localities** (`distribute`): one part per locality a matching rule sends
//!   traffic to, with its weight; endpoints elsewhere get none.
//!
//! The balancer keeps tables per part ([`Balancer::partitioned`]); a pick first chooses the
//! part, then picks in it. Without ejections that choice is free for priorities (level 0) and a
//! draw over a few weights for localities. With ejections the parts' health decides, as in
//! Envoy: a part's health is 1.4 (the overprovisioning factor) × its share of endpoints not
//! ejected, capped at 100 %; priority levels take the load their health allows in order and the
//! rest spills on; localities' weights are scaled by their health.

use std::collections::BTreeMap;

use rand::RngExt;
use trellis_api::locality::{FailoverLabel, Locality, LocalityPattern};
use trellis_xds::config as pb;

use crate::balance::{Balancer, Picked};
use crate::outlier::{Detector, Excluded};

/// Envoy's default overprovisioning factor, in percent.
pub const OVERPROVISIONING_PERCENT: u64 = 140;
/// An endpoint in no part (a `distribute` rule sends it nothing).
const NO_PART: u32 = u32::MAX;
/// Istio's locality priorities per failover-priority level (0-4), to combine the two.
const LOCALITY_LEVELS: u32 = 5;

/// Where this proxy runs: what endpoints are compared with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    pub locality: Locality,
    /// The labels `failoverPriority` may name.
    pub labels: BTreeMap<String, String>,
}

impl Place {
    /// From the configuration's top level; the error names the field.
    pub fn compile(config: &pb::ProxyConfig) -> Result<Place, (String, String)> {
        let locality = locality_of(config.locality.as_ref()).map_err(|e| ("locality".to_owned(), e))?;
        Ok(Place { locality, labels: config.workload_labels.clone() })
    }
}

/// A `pb::Locality` as a checked [`Locality`] (unset: unknown).
pub fn locality_of(locality: Option<&pb::Locality>) -> Result<Locality, String> {
    let Some(l) = locality else { return Ok(Locality::default()) };
    let locality = Locality { region: l.region.clone(), zone: l.zone.clone(), subzone: l.subzone.clone() };
    // Round-trip through the text form, which rejects a part after an empty one, and wildcards.
    if locality.region.contains('/') || locality.zone.contains('/') || locality.subzone.contains('/') {
        return Err(format!("{:?}: a part has a '/'", locality.to_string()));
    }
    let text = [&locality.region, &locality.zone, &locality.subzone]
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join("/");
    Locality::parse(text.trim_end_matches('/')).map(|_| locality)
}

/// A cluster's `locality_lb`, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    distribute: Vec<(LocalityPattern, Vec<(LocalityPattern, u32)>)>,
    /// Region → region.
    failover: Vec<(String, String)>,
    failover_priority: Vec<FailoverLabel>,
}

impl Setting {
    /// Parses the setting; the error is (field under `field`, message).
    pub fn compile(setting: &pb::LocalityLoadBalancing, field: &str) -> Result<Setting, (String, String)> {
        let mut distribute = Vec::new();
        for (i, d) in setting.distribute.iter().enumerate() {
            let at = format!("{field}.distribute[{i}]");
            let from = LocalityPattern::parse(&d.from).map_err(|e| (format!("{at}.from"), e))?;
            let mut to = Vec::new();
            for (pattern, &weight) in &d.to {
                let parsed =
                    LocalityPattern::parse(pattern).map_err(|e| (format!("{at}.to[{pattern:?}]"), e))?;
                if weight > 100 {
                    return Err((
                        format!("{at}.to[{pattern:?}]"),
                        format!("weight {weight} is more than 100"),
                    ));
                }
                to.push((parsed, weight));
            }
            distribute.push((from, to));
        }
        let mut failover = Vec::new();
        for (i, f) in setting.failover.iter().enumerate() {
            if f.from.is_empty() || f.to.is_empty() || f.from.contains('/') || f.to.contains('/') {
                return Err((
                    format!("{field}.failover[{i}]"),
                    format!("from {:?} and to {:?} must both be regions", f.from, f.to),
                ));
            }
            failover.push((f.from.clone(), f.to.clone()));
        }
        let failover_priority = setting.failover_priority.iter().map(|l| FailoverLabel::parse(l)).collect();
        Ok(Setting { distribute, failover, failover_priority })
    }
}

/// An endpoint as locality-aware balancing sees it.
pub struct Endpoint<'a> {
    pub locality: Locality,
    pub labels: &'a BTreeMap<String, String>,
    pub weight: u32,
}

/// How a cluster's endpoints are split by locality, and how a pick chooses the part.
#[derive(Debug)]
pub struct LocalityLb {
    kind: Kind,
    /// The part of each endpoint (balancer index), or [`NO_PART`].
    part_of: Vec<u32>,
    /// Endpoints per part; every part has one at least.
    sizes: Vec<u32>,
}

#[derive(Debug, PartialEq)]
enum Kind {
    /// Envoy's priority levels: part `i` is priority `i`.
    Priorities,
    /// Envoy's locality-weighted balancing: each part's weight.
    Weighted(Vec<u32>),
}

/// The split of a cluster's endpoints: the balancer's parts, and the [`LocalityLb`] that
/// chooses among them.
pub struct Plan {
    pub lb: LocalityLb,
    pub parts: Vec<Vec<usize>>,
}

impl Plan {
    /// Works out the split, Istio's way, or `None` when locality changes nothing for this proxy
    /// (no `distribute` rule from its locality, no outlier detection to fail over with, or one
    /// priority level only).
    pub fn new(setting: &Setting, place: &Place, endpoints: &[Endpoint<'_>], outlier: bool) -> Option<Plan> {
        if !setting.distribute.is_empty() {
            return distribute(setting, place, endpoints);
        }
        if !outlier {
            return None;
        }
        let levels: Vec<u32> = endpoints.iter().map(|e| priority(setting, place, e)).collect();
        let mut distinct = levels.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return None;
        }
        let mut parts = vec![Vec::new(); distinct.len()];
        let mut part_of = Vec::with_capacity(levels.len());
        for (i, level) in levels.iter().enumerate() {
            let part = distinct.partition_point(|l| l < level);
            parts[part].push(i);
            part_of.push(part as u32);
        }
        let sizes = parts.iter().map(|p| p.len() as u32).collect();
        Some(Plan { lb: LocalityLb { kind: Kind::Priorities, part_of, sizes }, parts })
    }
}

/// The first `distribute` rule whose `from` matches the proxy: one part per locality its `to`
/// patterns match, each pattern's weight shared among its localities by their endpoints'
/// weights (rounded up, as Istio does).
fn distribute(setting: &Setting, place: &Place, endpoints: &[Endpoint<'_>]) -> Option<Plan> {
    let (_, to) = setting.distribute.iter().find(|(from, _)| from.matches(&place.locality))?;
    let mut part_of = vec![NO_PART; endpoints.len()];
    let mut parts: Vec<Vec<usize>> = Vec::new();
    let mut weights = Vec::new();
    for (pattern, weight) in to {
        let mut localities: BTreeMap<&Locality, (Vec<usize>, u64)> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            if part_of[i] == NO_PART && pattern.matches(&e.locality) {
                let entry = localities.entry(&e.locality).or_default();
                entry.0.push(i);
                entry.1 += u64::from(e.weight.max(1));
            }
        }
        let total: u64 = localities.values().map(|(_, w)| w).sum();
        for (members, sum) in localities.into_values() {
            let share = (sum * u64::from(*weight)).div_ceil(total.max(1));
            for &i in &members {
                part_of[i] = parts.len() as u32;
            }
            parts.push(members);
            weights.push(u32::try_from(share).unwrap_or(u32::MAX));
        }
    }
    let sizes = parts.iter().map(|p| p.len() as u32).collect();
    Some(Plan { lb: LocalityLb { kind: Kind::Weighted(weights), part_of, sizes }, parts })
}

/// An endpoint's priority before levels are numbered from 0: by `failoverPriority` labels, then
/// (with no labels, or with `failover` too) by proximity, Istio's `applyLocalityFailover`.
fn priority(setting: &Setting, place: &Place, e: &Endpoint<'_>) -> u32 {
    let labels = &setting.failover_priority;
    let mut level = 0;
    if !labels.is_empty() {
        let n = labels.len() as u32;
        let mismatch = labels.iter().position(|label| {
            let mine =
                label.value.as_deref().or_else(|| label_of(&place.labels, &place.locality, &label.key));
            mine.unwrap_or_default() != label_of(e.labels, &e.locality, &label.key).unwrap_or_default()
        });
        level = mismatch.map_or(0, |j| n - j as u32);
        if setting.failover.is_empty() {
            return level;
        }
    }
    level * LOCALITY_LEVELS + proximity(&place.locality, &e.locality, &setting.failover)
}

/// A label's value, the topology labels defaulting to the locality's parts (Istio adds those
/// labels to every proxy and endpoint).
fn label_of<'a>(labels: &'a BTreeMap<String, String>, locality: &'a Locality, key: &str) -> Option<&'a str> {
    labels.get(key).map(String::as_str).or_else(|| locality.topology_label(key))
}

/// 0: same region, zone and subzone; 1: same zone; 2: same region; 3: elsewhere, or the
/// proxy's region's failover region when one is listed, whose other regions are then 4.
fn proximity(me: &Locality, there: &Locality, failover: &[(String, String)]) -> u32 {
    if me.region != there.region {
        return match failover.iter().find(|(from, _)| *from == me.region) {
            Some((_, to)) if *to != there.region => 4,
            _ => 3,
        };
    }
    if me.zone != there.zone {
        return 2;
    }
    u32::from(me.subzone != there.subzone)
}

impl LocalityLb {
    /// Picks an endpoint: chooses the part by health (see the module), then picks in it,
    /// leaving out what outlier detection ejected. `None` when no part has a healthy endpoint.
    #[inline]
    pub fn pick<'b>(
        &self,
        balancer: &'b Balancer,
        outlier: Option<&Detector>,
        hash: Option<u64>,
        avoid: Option<usize>,
    ) -> Option<Picked<'b>> {
        match outlier.map_or(Excluded::Nothing, Detector::excluded) {
            Excluded::Nothing => balancer.pick_in(self.choose(None, hash)?, hash, avoid),
            // Envoy's panic spreads load over every host of every level; a distribute rule's
            // localities keep their weights (the endpoints it sends nothing stay out).
            Excluded::Panic => match self.kind {
                Kind::Priorities => balancer.pick(hash, avoid),
                Kind::Weighted(_) => balancer.pick_in(self.choose(None, hash)?, hash, avoid),
            },
            Excluded::These(excluded) => {
                let mut healthy = self.sizes.clone();
                for &i in &excluded {
                    if let Some(count) = self.part_of.get(i).and_then(|&p| healthy.get_mut(p as usize)) {
                        *count = count.saturating_sub(1);
                    }
                }
                let part = self.choose(Some(&healthy), hash)?;
                balancer.pick_in_excluding(part, hash, avoid, &excluded)
            }
        }
    }

    /// The part a pick goes to, given each part's healthy endpoints (`None`: all are). The
    /// request's hash, when it has one, makes the choice the same for the same key.
    fn choose(&self, healthy: Option<&[u32]>, hash: Option<u64>) -> Option<usize> {
        let draw = |total: u64| hash.map_or_else(|| rand::rng().random_range(0..total), |h| h % total);
        match &self.kind {
            Kind::Priorities => {
                let healthy = match healthy {
                    None => return (!self.sizes.is_empty()).then_some(0),
                    Some(healthy) => healthy,
                };
                let loads = self.priority_loads(healthy)?;
                let point = draw(100);
                let mut sum = 0;
                loads.iter().position(|&load| {
                    sum += load;
                    point < sum
                })
            }
            Kind::Weighted(weights) => {
                let effective: Vec<u64> = weights
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| {
                        let health = healthy.map_or(100, |h| self.health(i, h[i]));
                        u64::from(w) * health
                    })
                    .collect();
                let total: u64 = effective.iter().sum();
                if total == 0 {
                    return None;
                }
                let point = draw(total);
                let mut sum = 0;
                effective.iter().position(|&w| {
                    sum += w;
                    point < sum
                })
            }
        }
    }

    /// A part's health in percent: 1.4 × its share of healthy endpoints, at most 100.
    fn health(&self, part: usize, healthy: u32) -> u64 {
        let size = u64::from(self.sizes[part].max(1));
        (OVERPROVISIONING_PERCENT * u64::from(healthy) / size).min(100)
    }

    /// Envoy's priority load: each level in turn takes its health (normalized by the total
    /// health when that is under 100 %) of what is left; rounding leftovers go to the first
    /// level with any health. `None` when no level has a healthy endpoint.
    fn priority_loads(&self, healthy: &[u32]) -> Option<Vec<u64>> {
        let health: Vec<u64> = healthy.iter().enumerate().map(|(i, &h)| self.health(i, h)).collect();
        let total = health.iter().sum::<u64>().min(100);
        if total == 0 {
            return None;
        }
        let mut left = 100u64;
        let mut loads: Vec<u64> = health
            .iter()
            .map(|&h| {
                let load = (h * 100 / total).min(left);
                left -= load;
                load
            })
            .collect();
        if left > 0
            && let Some(first) = health.iter().position(|&h| h > 0)
        {
            loads[first] += left;
        }
        Some(loads)
    }

    /// The part of the endpoint at `index`: its priority level, or its locality's position
    /// among the weighted ones. `None` when it gets no traffic.
    pub fn part_of(&self, index: usize) -> Option<u32> {
        self.part_of.get(index).copied().filter(|&p| p != NO_PART)
    }

    /// What the admin page shows of the endpoint at `index`: its `priority` level, or its
    /// `locality_weight` (0: a distribute rule sends it nothing).
    pub fn describe(&self, index: usize) -> (&'static str, u32) {
        match &self.kind {
            Kind::Priorities => ("priority", self.part_of(index).unwrap_or(0)),
            Kind::Weighted(weights) => (
                "locality_weight",
                self.part_of(index).and_then(|p| weights.get(p as usize)).copied().unwrap_or(0),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(text: &str) -> Locality {
        Locality::parse(text).unwrap()
    }

    fn setting(yaml: &str) -> Setting {
        let pb: pb::LocalityLoadBalancing = serde_saphyr::from_str(yaml).unwrap();
        Setting::compile(&pb, "locality_lb").unwrap()
    }

    fn place(locality: &str) -> Place {
        Place { locality: loc(locality), labels: BTreeMap::new() }
    }

    /// The part of each endpoint, for endpoints at these localities (and labels).
    fn parts(
        setting: &Setting,
        place: &Place,
        endpoints: &[(&str, &[(&str, &str)])],
        outlier: bool,
    ) -> Option<Vec<Option<u32>>> {
        let labels: Vec<BTreeMap<String, String>> = endpoints
            .iter()
            .map(|(_, l)| l.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
            .collect();
        let endpoints: Vec<Endpoint<'_>> = endpoints
            .iter()
            .zip(&labels)
            .map(|((l, _), labels)| Endpoint { locality: loc(l), labels, weight: 1 })
            .collect();
        let plan = Plan::new(setting, place, &endpoints, outlier)?;
        Some((0..endpoints.len()).map(|i| plan.lb.part_of(i)).collect())
    }

    #[test]
    fn proximity_orders_subzone_zone_region_failover_and_the_rest() {
        let s = setting("failover: [{from: us-east, to: eu-west}]");
        let eps: &[(&str, &[(&str, &str)])] = &[
            ("us-east/a/r1", &[]),
            ("us-east/a/r2", &[]),
            ("us-east/b", &[]),
            ("us-west/a", &[]),
            ("eu-west/a", &[]),
            ("us-east/a/r1", &[]),
        ];
        let got = parts(&s, &place("us-east/a/r1"), eps, true).unwrap();
        // Levels 0 (same subzone), 1 (same zone), 2 (same region), 3 (eu-west), 4 (the rest).
        assert_eq!(got, [Some(0), Some(1), Some(2), Some(4), Some(3), Some(0)]);
        // Without the failover entry, every other region is one level; levels are numbered
        // without gaps.
        let plain = setting("{}");
        let got = parts(&plain, &place("us-east/a/r1"), eps, true).unwrap();
        assert_eq!(got, [Some(0), Some(1), Some(2), Some(3), Some(3), Some(0)]);
        // Without outlier detection: nothing.
        assert!(parts(&plain, &place("us-east/a/r1"), eps, false).is_none());
        // Everything in one level: nothing to do either.
        assert!(
            parts(&plain, &place("us-east/a"), &[("us-east/a", &[]), ("us-east/a", &[])], true).is_none()
        );
    }

    #[test]
    fn failover_priority_labels_decide_first_and_the_topology_labels_come_from_the_locality() {
        let s = setting("failoverPriority: [topology.istio.io/network, topology.kubernetes.io/zone]");
        let mut me = place("r/a");
        me.labels.insert("topology.istio.io/network".into(), "n1".into());
        let eps: &[(&str, &[(&str, &str)])] = &[
            ("r/a", &[("topology.istio.io/network", "n1")]),
            ("r/b", &[("topology.istio.io/network", "n1")]),
            ("r/a", &[("topology.istio.io/network", "n2")]),
            ("other/a", &[("topology.istio.io/network", "n1")]),
        ];
        // Both match: 0; the zone differs: 1 (2 - 1); the network differs: 2. Proximity is not
        // applied without `failover` (the other region is in zone "a": level 0).
        assert_eq!(parts(&s, &me, eps, true).unwrap(), [Some(0), Some(1), Some(2), Some(0)]);
        // key=value compares with that value instead of the proxy's.
        let s = setting("failoverPriority: ['topology.istio.io/network=n2']");
        assert_eq!(parts(&s, &me, eps, true).unwrap(), [Some(1), Some(1), Some(0), Some(1)]);
        // With failover too, proximity orders within each label level.
        let s = setting("{failoverPriority: [topology.istio.io/network], failover: [{from: r, to: other}]}");
        assert_eq!(parts(&s, &me, eps, true).unwrap(), [Some(0), Some(1), Some(3), Some(2)]);
    }

    #[test]
    fn distribute_splits_by_the_first_matching_rule_and_leaves_the_rest_out() {
        let s = setting(
            "distribute: [{from: 'us-east/a/*', to: {'us-east/a/*': 70, 'us-east/b/*': 30}}, {from: 'us-east/*', to: {'us-west/*': 100}}]",
        );
        let eps: &[(&str, &[(&str, &str)])] =
            &[("us-east/a/r1", &[]), ("us-east/a/r2", &[]), ("us-east/b/r1", &[]), ("us-west/a", &[])];
        let plan_for = |p: &Place| {
            let labels = BTreeMap::new();
            let endpoints: Vec<Endpoint<'_>> =
                eps.iter().map(|(l, _)| Endpoint { locality: loc(l), labels: &labels, weight: 1 }).collect();
            Plan::new(&s, p, &endpoints, false).unwrap()
        };
        let plan = plan_for(&place("us-east/a/r1"));
        // us-east/a/* matches two localities with one endpoint each: 35 apiece, rounded up.
        assert_eq!(plan.lb.kind, Kind::Weighted(vec![35, 35, 30]));
        assert_eq!(plan.parts, [vec![0], vec![1], vec![2]]);
        assert_eq!(plan.lb.part_of(3), None, "in no `to` locality: no traffic");
        let plan = plan_for(&place("us-east/b"));
        assert_eq!(plan.lb.kind, Kind::Weighted(vec![100]));
        assert_eq!(plan.parts, [vec![3]]);
        assert!(Plan::new(&s, &place("eu/x"), &[], false).is_none(), "no rule from here: nothing");
    }

    fn priorities(sizes: &[u32]) -> LocalityLb {
        LocalityLb { kind: Kind::Priorities, part_of: Vec::new(), sizes: sizes.to_vec() }
    }

    #[test]
    fn priority_load_follows_envoys_overprovisioning() {
        let lb = priorities(&[10, 10]);
        assert_eq!(lb.priority_loads(&[10, 10]), Some(vec![100, 0]));
        // 80% healthy × 1.4 is over 100: still all of it.
        assert_eq!(lb.priority_loads(&[8, 10]), Some(vec![100, 0]));
        // Envoy's table: 70% → 98, 50% → 70, 20% → 28, 0% → 0.
        assert_eq!(lb.priority_loads(&[7, 10]), Some(vec![98, 2]));
        assert_eq!(lb.priority_loads(&[5, 10]), Some(vec![70, 30]));
        assert_eq!(lb.priority_loads(&[2, 10]), Some(vec![28, 72]));
        assert_eq!(lb.priority_loads(&[0, 10]), Some(vec![0, 100]));
        // Both short: normalized by the total health (70 + 28 = 98), 71 and 28.
        assert_eq!(lb.priority_loads(&[5, 2]), Some(vec![71 + 1, 28]), "the rounding leftover to level 0");
        // Three levels, the first two down: all to the third.
        assert_eq!(priorities(&[1, 2, 3]).priority_loads(&[0, 0, 3]), Some(vec![0, 0, 100]));
        assert_eq!(lb.priority_loads(&[0, 0]), None);
    }

    #[test]
    fn without_ejections_priorities_take_level_0_and_weights_draw() {
        assert_eq!(priorities(&[2, 3]).choose(None, None), Some(0));
        let weighted =
            LocalityLb { kind: Kind::Weighted(vec![30, 70]), part_of: Vec::new(), sizes: vec![1, 1] };
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[weighted.choose(None, None).unwrap()] += 1;
        }
        assert!((2700..3300).contains(&counts[0]), "{counts:?}");
        // A locality with nothing healthy gets nothing; with nothing healthy anywhere, no part.
        for _ in 0..100 {
            assert_eq!(weighted.choose(Some(&[0, 1]), None), Some(1));
        }
        assert_eq!(weighted.choose(Some(&[0, 0]), None), None);
        // The same key goes to the same part.
        let loads = priorities(&[2, 2]);
        let first = loads.choose(Some(&[1, 2]), Some(12345));
        assert!((0..50).all(|_| loads.choose(Some(&[1, 2]), Some(12345)) == first));
    }

    #[test]
    fn bad_settings_and_localities_name_their_field() {
        let bad: pb::LocalityLoadBalancing =
            serde_saphyr::from_str("distribute: [{from: 'a/*/b', to: {'a/*': 100}}]").unwrap();
        let (field, message) = Setting::compile(&bad, "clusters[0].locality_lb").unwrap_err();
        assert_eq!(field, "clusters[0].locality_lb.distribute[0].from");
        assert!(message.contains("wildcard"), "{message}");
        let bad: pb::LocalityLoadBalancing =
            serde_saphyr::from_str("failover: [{from: a/b, to: c}]").unwrap();
        assert_eq!(Setting::compile(&bad, "x").unwrap_err().0, "x.failover[0]");
        let gap = pb::Locality { region: String::new(), zone: "z".into(), subzone: String::new() };
        assert!(locality_of(Some(&gap)).unwrap_err().contains("empty region"));
        let ok = pb::Locality { region: "r".into(), zone: "z".into(), subzone: String::new() };
        assert_eq!(locality_of(Some(&ok)), Ok(loc("r/z")));
    }
}
