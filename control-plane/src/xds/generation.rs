//! Pushes happen per generation: a snapshot of the model, taken once changes have settled
//! (100 ms without a change, or 10 s after the first one), with its translations cached per
//! scope so proxies that share a scope share the work and the memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;

use trellis_xds::types::ResourceType;

use super::resources::{ScopeResources, TypeMap, pack_workloads};
use crate::model::{Model, ModelHandle};
use crate::translate::{Scope, translate};

pub const QUIET: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(10);

pub struct Generation {
    pub number: u64,
    pub model: Arc<Model>,
    /// When the first change folded into this generation happened: push latency counts from
    /// here.
    pub changed_at: Instant,
    scopes: Mutex<HashMap<Scope, Arc<OnceLock<Arc<ScopeResources>>>>>,
    /// The previous generation's translations, so unchanged type maps are shared.
    previous: HashMap<Scope, Arc<ScopeResources>>,
    /// The workload table, the same for every scope: packed once, on first use.
    workloads: OnceLock<TypeMap>,
    /// The previous generation's table, shared when unchanged.
    previous_workloads: Option<TypeMap>,
}

impl Generation {
    pub fn first(model: Arc<Model>) -> Generation {
        Generation {
            number: 1,
            model,
            changed_at: Instant::now(),
            scopes: Mutex::default(),
            previous: HashMap::new(),
            workloads: OnceLock::new(),
            previous_workloads: None,
        }
    }

    pub fn next(&self, model: Arc<Model>, changed_at: Instant) -> Generation {
        Generation {
            number: self.number + 1,
            model,
            changed_at,
            scopes: Mutex::default(),
            previous: self.translated(),
            workloads: OnceLock::new(),
            previous_workloads: self.workloads.get().cloned(),
        }
    }

    /// The workload table's resources (see [`crate::translate::workloads`]).
    pub fn workloads(&self) -> TypeMap {
        self.workloads
            .get_or_init(|| {
                let table = crate::translate::workloads::table(&self.model);
                pack_workloads(&table, self.previous_workloads.as_ref())
            })
            .clone()
    }

    /// The resources of `scope`, translated on first use.
    pub fn resources(&self, scope: &Scope) -> Arc<ScopeResources> {
        let cell = {
            let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
            scopes.entry(scope.clone()).or_default().clone()
        };
        cell.get_or_init(|| {
            let config = translate(&self.model, scope);
            let packed = ScopeResources::pack(&config, self.previous.get(scope).map(Arc::as_ref));
            Arc::new(packed.with_shared(ResourceType::Workload, self.workloads()))
        })
        .clone()
    }

    /// The scopes translated so far.
    pub fn translated(&self) -> HashMap<Scope, Arc<ScopeResources>> {
        let scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.iter().filter_map(|(s, cell)| cell.get().map(|r| (s.clone(), r.clone()))).collect()
    }
}

/// Publishes a new generation whenever the model has changed and then stayed quiet for
/// `quiet`, or `max_delay` after the first unpublished change. Runs until the model handle's
/// sender is gone.
pub async fn debounce(
    model: ModelHandle,
    publish: watch::Sender<Arc<Generation>>,
    quiet: Duration,
    max_delay: Duration,
) {
    let mut changes = model.subscribe();
    changes.mark_unchanged();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        let first = Instant::now();
        let mut deadline = first + quiet;
        loop {
            let until = deadline.min(first + max_delay);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() { break; }
                    deadline = Instant::now() + quiet;
                }
                () = tokio::time::sleep_until(until) => break,
            }
        }
        changes.mark_unchanged();
        let next = publish.borrow().next(model.snapshot(), first);
        publish.send_replace(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_table_is_packed_once_for_every_scope_and_kept_while_unchanged() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm-1, namespace: shop }
spec: { address: 10.6.0.1, labels: { app: billing } }
"#;
        let model = Arc::new(crate::translate::test_support::model(yaml));
        let first = Generation::first(model.clone());
        let scope = |ns: &str| Scope { namespace: ns.into(), ..Default::default() };
        let (shop, web) = (first.resources(&scope("shop")), first.resources(&scope("web")));
        let table = shop.of(ResourceType::Workload);
        assert_eq!(
            table.keys().collect::<Vec<_>>(),
            ["10.6.0.1", "spiffe://cluster.local/ns/shop/sa/default"]
        );
        assert!(Arc::ptr_eq(&table, &web.of(ResourceType::Workload)), "one table for every scope");
        let second = first.next(model, Instant::now());
        let again = second.resources(&scope("shop")).of(ResourceType::Workload);
        assert!(Arc::ptr_eq(&table, &again), "an unchanged table is the same table: nothing to push");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_generation_and_a_stream_of_them_is_cut_at_the_maximum() {
        let model = ModelHandle::default();
        let (tx, mut rx) = watch::channel(Arc::new(Generation::first(model.snapshot())));
        tokio::spawn(debounce(model.clone(), tx, QUIET, Duration::from_secs(1)));

        // A burst: ten changes 10 ms apart make one generation.
        let start = Instant::now();
        for _ in 0..10 {
            model.update(|_| true);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().number, 2);
        assert!(start.elapsed() >= Duration::from_millis(190), "pushed only after 100 ms of quiet");

        // Changes every 50 ms never leave 100 ms of quiet: the maximum delay cuts them.
        let start = Instant::now();
        let writer = {
            let model = model.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    model.update(|_| true);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        rx.changed().await.unwrap();
        let waited = start.elapsed();
        assert_eq!(rx.borrow_and_update().number, 3);
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100), "{waited:?}");
        writer.abort();
    }
}
