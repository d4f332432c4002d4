//! Watcher events → edits of one map of the model. Pure: no I/O, so the relist and rejection
//! rules are tested with fabricated events.
//!
//! kube-rs's watcher delivers `Apply`/`Delete` as things change, and after every (re)list an
//! `Init`, the whole current set as `InitApply`, then `InitDone`. A relist is buffered and lands
//! in the model in one piece, so translation never sees half a list; objects we held that the
//! relist no longer has were deleted while we were not watching, and are removed then.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::runtime::watcher::Event;

use crate::model::Model;

/// What an applied object means for the model.
#[derive(Debug, PartialEq)]
pub enum Admission<V> {
    /// Store this value (replacing any previous one).
    Store(V),
    /// Not something the model holds (e.g. a host-network pod): remove any previous value.
    Ignore,
    /// Rejected: the previous good value, if any, stays in force.
    KeepPrevious,
}

/// How one watched kind lands in the model.
pub trait Target {
    type Object;
    type Key: Ord + Clone;
    type Value: PartialEq;

    /// The model map this kind lives in. Several kinds may share one map (the Istio kinds share
    /// `resources`); each watcher only ever touches the keys it put there itself.
    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>>;

    fn key(&self, object: &Self::Object) -> Self::Key;

    /// Converts (and for Istio kinds, validates) an applied object.
    fn admit(&mut self, key: &Self::Key, object: Self::Object) -> Admission<Self::Value>;

    /// The object is gone; drop whatever was remembered about it.
    fn forget(&mut self, _key: &Self::Key) {}
}

/// A change to one entry of a [`Target::slot`].
#[derive(Debug, PartialEq)]
pub enum Edit<K, V> {
    Put(K, Arc<V>),
    Remove(K),
}

/// Applies edits to the target's map; true when the model changed. Re-applying an equal value
/// (a relist, a pod status change that touches nothing we keep) is not a change, so it does not
/// wake the push pipeline.
pub fn apply<T: Target>(model: &mut Model, edits: Vec<Edit<T::Key, T::Value>>) -> bool {
    let map = T::slot(model);
    let mut changed = false;
    for edit in edits {
        match edit {
            Edit::Put(key, value) => {
                if map.get(&key).is_none_or(|old| **old != *value) {
                    map.insert(key, value);
                    changed = true;
                }
            }
            Edit::Remove(key) => changed |= map.remove(&key).is_some(),
        }
    }
    changed
}

/// The event state of one watcher.
pub struct Mirror<T: Target> {
    target: T,
    /// Keys of the objects that exist in the cluster as far as this watcher knows, accepted or
    /// rejected: the ones a relist has to account for.
    known: BTreeSet<T::Key>,
    /// Between `Init` and `InitDone`.
    relist: Option<Relist<T>>,
}

struct Relist<T: Target> {
    seen: BTreeSet<T::Key>,
    edits: Vec<Edit<T::Key, T::Value>>,
}

impl<T: Target> Mirror<T> {
    pub fn new(target: T) -> Self {
        Mirror { target, known: BTreeSet::new(), relist: None }
    }

    /// Turns one event into edits, appended to `out`. Returns true on `InitDone`: the model
    /// then holds a complete list of this kind.
    pub fn handle(&mut self, event: Event<T::Object>, out: &mut Vec<Edit<T::Key, T::Value>>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(Relist { seen: BTreeSet::new(), edits: Vec::new() });
            }
            Event::InitApply(object) => {
                let key = self.target.key(&object);
                let admission = self.target.admit(&key, object);
                // The watcher always sends Init first; should it ever not, the object is
                // applied as a live event rather than dropped.
                match &mut self.relist {
                    Some(relist) => {
                        if admission != Admission::Ignore {
                            relist.seen.insert(key.clone());
                        }
                        push(&mut relist.edits, key, admission);
                    }
                    None => self.applied(key, admission, out),
                }
            }
            Event::InitDone => {
                let Some(relist) = self.relist.take() else { return true };
                out.extend(relist.edits);
                out.extend(self.known.difference(&relist.seen).map(|gone| Edit::Remove(gone.clone())));
                for gone in self.known.difference(&relist.seen) {
                    self.target.forget(gone);
                }
                self.known = relist.seen;
                return true;
            }
            Event::Apply(object) => {
                let key = self.target.key(&object);
                let admission = self.target.admit(&key, object);
                self.applied(key, admission, out);
            }
            Event::Delete(object) => {
                let key = self.target.key(&object);
                self.known.remove(&key);
                self.target.forget(&key);
                out.push(Edit::Remove(key));
            }
        }
        false
    }

    fn applied(
        &mut self,
        key: T::Key,
        admission: Admission<T::Value>,
        out: &mut Vec<Edit<T::Key, T::Value>>,
    ) {
        if admission == Admission::Ignore {
            self.known.remove(&key);
        } else {
            self.known.insert(key.clone());
        }
        push(out, key, admission);
    }
}

fn push<K, V>(out: &mut Vec<Edit<K, V>>, key: K, admission: Admission<V>) {
    match admission {
        Admission::Store(value) => out.push(Edit::Put(key, Arc::new(value))),
        Admission::Ignore => out.push(Edit::Remove(key)),
        Admission::KeepPrevious => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KubePod;

    /// Pods named `(name, value)`: negative values are rejected, zero is ignored.
    struct Numbers;

    impl Target for Numbers {
        type Object = (&'static str, i32);
        type Key = (String, String);
        type Value = KubePod;

        fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
            &mut model.pods
        }

        fn key(&self, object: &Self::Object) -> Self::Key {
            ("ns".into(), object.0.into())
        }

        fn admit(&mut self, _key: &Self::Key, (name, value): Self::Object) -> Admission<KubePod> {
            match value {
                v if v < 0 => Admission::KeepPrevious,
                0 => Admission::Ignore,
                v => Admission::Store(KubePod {
                    name: name.into(),
                    service_account: v.to_string(),
                    ..KubePod::default()
                }),
            }
        }
    }

    /// Feeds events one at a time, applying each one's edits, as the watcher loop does.
    fn run(
        mirror: &mut Mirror<Numbers>,
        model: &mut Model,
        events: Vec<Event<(&'static str, i32)>>,
    ) -> Vec<bool> {
        events
            .into_iter()
            .map(|event| {
                let mut edits = Vec::new();
                mirror.handle(event, &mut edits);
                apply::<Numbers>(model, edits)
            })
            .collect()
    }

    fn values(model: &Model) -> Vec<(String, String)> {
        model.pods.values().map(|p| (p.name.clone(), p.service_account.clone())).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn a_relist_lands_whole_and_drops_what_vanished() {
        let mut mirror = Mirror::new(Numbers);
        let mut model = Model::default();
        let changed = run(
            &mut mirror,
            &mut model,
            vec![Event::Init, Event::InitApply(("a", 1)), Event::InitApply(("b", 2)), Event::InitDone],
        );
        assert_eq!(changed, [false, false, false, true], "nothing lands before InitDone");
        assert_eq!(values(&model), pairs(&[("a", "1"), ("b", "2")]));

        // `b` was deleted while the watch was down; `a` is unchanged, `c` is new.
        let changed = run(
            &mut mirror,
            &mut model,
            vec![Event::Init, Event::InitApply(("a", 1)), Event::InitApply(("c", 3)), Event::InitDone],
        );
        assert_eq!(changed, [false, false, false, true]);
        assert_eq!(values(&model), pairs(&[("a", "1"), ("c", "3")]));

        // The same list again changes nothing.
        let changed = run(
            &mut mirror,
            &mut model,
            vec![Event::Init, Event::InitApply(("a", 1)), Event::InitApply(("c", 3)), Event::InitDone],
        );
        assert_eq!(changed, [false; 4]);
    }

    #[test]
    fn live_events_upsert_and_delete() {
        let mut mirror = Mirror::new(Numbers);
        let mut model = Model::default();
        let changed = run(
            &mut mirror,
            &mut model,
            vec![
                Event::Apply(("a", 1)),
                Event::Apply(("a", 1)),
                Event::Apply(("a", 5)),
                Event::Delete(("a", 5)),
            ],
        );
        assert_eq!(changed, [true, false, true, true]);
        assert!(model.pods.is_empty());
    }

    #[test]
    fn rejected_updates_keep_the_previous_value_even_across_a_relist() {
        let mut mirror = Mirror::new(Numbers);
        let mut model = Model::default();
        run(&mut mirror, &mut model, vec![Event::Apply(("a", 1)), Event::Apply(("a", -1))]);
        assert_eq!(values(&model), pairs(&[("a", "1")]));
        // The cluster still holds the rejected `a`: a relist must not read its absence from
        // the edits as a deletion.
        run(&mut mirror, &mut model, vec![Event::Init, Event::InitApply(("a", -1)), Event::InitDone]);
        assert_eq!(values(&model), pairs(&[("a", "1")]));
        // Deleting it removes the last good version.
        run(&mut mirror, &mut model, vec![Event::Delete(("a", -1))]);
        assert!(model.pods.is_empty());
    }

    #[test]
    fn ignored_objects_leave_the_model() {
        let mut mirror = Mirror::new(Numbers);
        let mut model = Model::default();
        run(&mut mirror, &mut model, vec![Event::Apply(("a", 1)), Event::Apply(("a", 0))]);
        assert!(model.pods.is_empty());
        run(&mut mirror, &mut model, vec![Event::Apply(("b", 1))]);
        run(&mut mirror, &mut model, vec![Event::Init, Event::InitApply(("b", 0)), Event::InitDone]);
        assert!(model.pods.is_empty());
    }
}
