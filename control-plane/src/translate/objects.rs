//! Borrowed, typed views of the model's Istio resources, each with the name that log lines use
//! for it (`VirtualService shop/reviews`).

use std::collections::BTreeMap;
use std::fmt;

use trellis_api::networking::{
    DestinationRuleSpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec, WorkloadEntrySpec,
};
use trellis_api::resource::{Kind, Resource};

use crate::model::Model;

/// One resource of the model: where it lives, its annotations and its spec.
pub struct Object<'a, T> {
    pub kind: Kind,
    pub namespace: &'a str,
    pub name: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
    pub spec: &'a T,
}

static NO_ANNOTATIONS: BTreeMap<String, String> = BTreeMap::new();

impl<T> Clone for Object<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Object<'_, T> {}

impl<T> fmt::Display for Object<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl<T> fmt::Debug for Object<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The resources of one kind, in (namespace, name) order.
fn of_kind<'a, T: 'a>(
    model: &'a Model,
    kind: Kind,
    spec: fn(&Resource) -> Option<&T>,
) -> impl Iterator<Item = Object<'a, T>> {
    model.of_kind(kind).filter_map(move |(key, resource)| {
        let annotations = resource.metadata().annotations.as_ref().unwrap_or(&NO_ANNOTATIONS);
        Some(Object { kind, namespace: &key.namespace, name: &key.name, annotations, spec: spec(resource)? })
    })
}

pub fn virtual_services(model: &Model) -> impl Iterator<Item = Object<'_, VirtualServiceSpec>> {
    of_kind(model, Kind::VirtualService, |r| match r {
        Resource::VirtualService(vs) => Some(&vs.spec),
        _ => None,
    })
}

pub fn destination_rules(model: &Model) -> impl Iterator<Item = Object<'_, DestinationRuleSpec>> {
    of_kind(model, Kind::DestinationRule, |r| match r {
        Resource::DestinationRule(dr) => Some(&dr.spec),
        _ => None,
    })
}

pub fn service_entries(model: &Model) -> impl Iterator<Item = Object<'_, ServiceEntrySpec>> {
    of_kind(model, Kind::ServiceEntry, |r| match r {
        Resource::ServiceEntry(se) => Some(&se.spec),
        _ => None,
    })
}

pub fn workload_entries(model: &Model) -> impl Iterator<Item = Object<'_, WorkloadEntrySpec>> {
    of_kind(model, Kind::WorkloadEntry, |r| match r {
        Resource::WorkloadEntry(we) => Some(&we.spec),
        _ => None,
    })
}

pub fn sidecars(model: &Model) -> impl Iterator<Item = Object<'_, SidecarSpec>> {
    of_kind(model, Kind::Sidecar, |r| match r {
        Resource::Sidecar(s) => Some(&s.spec),
        _ => None,
    })
}

/// Whether every label of a selector is on the workload. An empty selector selects everything.
pub fn selects(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
