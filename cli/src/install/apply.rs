//! `trellis install`: render, apply in order (namespace, CRDs until Established, the rest),
//! prune what an earlier install made and the chart no longer has, wait for the control plane.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::Value;
use tokio::time::{Duration, Instant};

use super::cluster::{self, ApiError, Cluster, KindInfo, api, resolve_kind, show_duration, within};
use super::plan::{self, Desired, ObjectRef, Plan, owned_by, ownership_selector};
use super::readiness::{self, Readiness};
use super::{FIELD_MANAGER, InstallArgs, check_namespace, check_release};

/// How often the waits look again.
const POLL: Duration = Duration::from_millis(500);
/// Extra time, past the deadline, to find out why pods are not ready (for the message only).
const DIAGNOSIS: Duration = Duration::from_secs(5);

pub async fn install(args: &InstallArgs) -> Result<(), String> {
    check_namespace("-n", &args.namespace)?;
    check_release(&args.release)?;
    let started = Instant::now();
    let deadline = started + args.timeout;
    let plan = super::render_plan(&args.namespace, &args.release, &args.values, &args.set)?;
    if args.dry_run {
        print!("{}", to_yaml(&plan)?);
        return Ok(());
    }

    let cluster = cluster::connect(&args.kube, args.timeout).await?;
    let version = reach(&cluster, deadline, args.timeout).await?;
    println!(
        "Installing Trellis (release {}) into namespace {} on {} (Kubernetes {version})",
        args.release, args.namespace, cluster.server
    );
    let (owned, warnings) = list_owned(&cluster, &args.release, &plan_kinds(&plan), deadline).await?;
    for warning in warnings {
        println!("  ! {warning}");
    }

    let mut tally = Tally::default();
    for desired in &plan.namespaces {
        apply_namespace(&cluster, desired, &owned, &args.release, deadline, &mut tally).await?;
    }
    for desired in &plan.crds {
        apply_one(&cluster, desired, &owned, deadline, &mut tally).await?;
    }
    if !plan.crds.is_empty() {
        wait_established(&cluster, &plan.crds, deadline, args.timeout).await?;
        println!("  {} CRDs established", plan.crds.len());
    }
    for desired in &plan.rest {
        apply_one(&cluster, desired, &owned, deadline, &mut tally).await?;
    }
    let owned_refs: Vec<ObjectRef> = owned.iter().map(|(r, _)| r.clone()).collect();
    for stale in plan::to_prune(&owned_refs, &plan) {
        prune(&cluster, &stale, deadline).await?;
        tally.pruned += 1;
    }

    println!("Waiting for the control plane (at most {} in all)", show_duration(args.timeout));
    wait_ready(&cluster, &plan, deadline, args.timeout).await?;
    println!(
        "✔ Trellis is installed and ready in {} ({}) in {}",
        args.namespace,
        tally.summary(),
        show_duration(Duration::from_millis(started.elapsed().as_millis() as u64 / 100 * 100))
    );
    println!(
        "Next: label a namespace for injection (kubectl label namespace NAME istio-injection=enabled), restart its pods, and run `trellis check`."
    );
    Ok(())
}

/// The plan as YAML documents, each headed by the template it came from (as `helm template`).
fn to_yaml(plan: &Plan) -> Result<String, String> {
    let mut out = String::new();
    for desired in plan.all() {
        let yaml = serde_saphyr::to_string(&desired.object)
            .map_err(|e| format!("cannot print {} as YAML: {e}", desired.reference))?;
        let _ = write!(out, "---\n# Source: {}\n{yaml}", desired.source);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Asks the API server its version: the first contact, with a clear message when it fails.
pub async fn reach(cluster: &Cluster, deadline: Instant, timeout: Duration) -> Result<String, String> {
    match within(deadline, cluster.client.apiserver_version()).await {
        Ok(info) => Ok(info.git_version),
        Err(ApiError::TimedOut) => Err(format!(
            "no answer from the Kubernetes API server at {} within {}",
            cluster.server,
            show_duration(timeout)
        )),
        Err(e) => Err(format!("cannot reach the Kubernetes API server at {}: {e}", cluster.server)),
    }
}

/// The kinds where an earlier install may have left objects: every kind the chart may render,
/// and those of this plan.
fn plan_kinds(plan: &Plan) -> Vec<(String, String)> {
    let mut kinds = installable_kinds();
    for desired in plan.all() {
        let kind = (desired.reference.api_version.clone(), desired.reference.kind.clone());
        if !kinds
            .iter()
            .any(|(av, k)| *k == kind.1 && cluster::split_api_version(av).0 == desired.reference.group())
        {
            kinds.push(kind);
        }
    }
    kinds
}

/// Every kind of the fixed table and of the Istio CRDs that a chart may render, as (apiVersion,
/// kind).
pub fn installable_kinds() -> Vec<(String, String)> {
    cluster::all_known_kinds()
        .into_iter()
        .filter(|k| !RUNTIME_KINDS.contains(&k.resource.kind.as_str()))
        .map(|k| (k.resource.api_version, k.resource.kind))
        .collect()
}

/// Kinds that controllers make, never a chart.
const RUNTIME_KINDS: &[&str] = &["Node", "Pod", "Endpoints", "EndpointSlice", "ReplicaSet"];

/// Every object that carries the labels of `release`, with its resourceVersion, and the kinds
/// that could not be listed (as warnings: their objects are neither compared nor pruned).
pub async fn list_owned(
    cluster: &Cluster,
    release: &str,
    kinds: &[(String, String)],
    deadline: Instant,
) -> Result<(Vec<(ObjectRef, String)>, Vec<String>), String> {
    let selector = ownership_selector(release);
    let mut owned = Vec::new();
    let mut warnings = Vec::new();
    for (api_version, kind) in kinds {
        let Some(info) = cluster::known_kind(api_version, kind) else {
            match resolve_kind(cluster, api_version, kind, deadline).await {
                Ok(info) => {
                    owned.extend(list_kind(cluster, &info, &selector, deadline, &mut warnings).await?)
                }
                Err(e) => warnings.push(e),
            }
            continue;
        };
        owned.extend(list_kind(cluster, &info, &selector, deadline, &mut warnings).await?);
    }
    Ok((owned, warnings))
}

async fn list_kind(
    cluster: &Cluster,
    info: &KindInfo,
    selector: &str,
    deadline: Instant,
    warnings: &mut Vec<String>,
) -> Result<Vec<(ObjectRef, String)>, String> {
    let kind = &info.resource.kind;
    let list = match within(deadline, api(cluster, info, None).list(&ListParams::default().labels(selector)))
        .await
    {
        Ok(list) => list,
        // The kind is not served (a CRD not installed yet): nothing of it was made.
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(ApiError::TimedOut) => {
            return Err(format!("no answer from the API server listing {kind}s in time"));
        }
        Err(e) => {
            warnings.push(format!("cannot list {kind}s to find what an earlier install made: {e}"));
            return Ok(Vec::new());
        }
    };
    Ok(list
        .items
        .iter()
        .map(|object| {
            let reference = ObjectRef {
                api_version: info.resource.api_version.clone(),
                kind: kind.clone(),
                namespace: object.metadata.namespace.clone().unwrap_or_default(),
                name: object.metadata.name.clone().unwrap_or_default(),
            };
            (reference, object.metadata.resource_version.clone().unwrap_or_default())
        })
        .collect())
}

#[derive(Default)]
struct Tally {
    created: usize,
    configured: usize,
    unchanged: usize,
    adopted: usize,
    kept: usize,
    pruned: usize,
}

impl Tally {
    fn summary(&self) -> String {
        let total = self.created + self.configured + self.unchanged + self.adopted;
        let mut parts = vec![format!("{total} objects")];
        for (n, what) in [
            (self.created, "created"),
            (self.configured, "configured"),
            (self.unchanged, "unchanged"),
            (self.adopted, "adopted"),
            (self.pruned, "pruned"),
            (self.kept, "existing namespace kept"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        parts.join(", ")
    }
}

fn json_of(object: &DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// The release namespace (or another the chart renders): applied when missing or made by an
/// earlier install; a namespace that was there before is used as it is, so that uninstall
/// `--purge` never deletes it.
async fn apply_namespace(
    cluster: &Cluster,
    desired: &Desired,
    owned: &[(ObjectRef, String)],
    release: &str,
    deadline: Instant,
    tally: &mut Tally,
) -> Result<(), String> {
    let info =
        resolve_kind(cluster, &desired.reference.api_version, &desired.reference.kind, deadline).await?;
    let existing = within(deadline, api(cluster, &info, None).get_opt(&desired.reference.name))
        .await
        .map_err(|e| format!("cannot read {}: {e}", desired.reference))?;
    match existing {
        Some(ns) if !owned_by(&json_of(&ns), release) => {
            println!("  kept       {} (it existed before install; uninstall leaves it)", desired.reference);
            tally.kept += 1;
            Ok(())
        }
        _ => apply_one(cluster, desired, owned, deadline, tally).await,
    }
}

/// Server-side apply of one object, reporting whether it was created, changed or left as it was.
async fn apply_one(
    cluster: &Cluster,
    desired: &Desired,
    owned: &[(ObjectRef, String)],
    deadline: Instant,
    tally: &mut Tally,
) -> Result<(), String> {
    let reference = &desired.reference;
    let info = resolve_kind(cluster, &reference.api_version, &reference.kind, deadline)
        .await
        .map_err(|e| format!("cannot apply {reference} (from {}): {e}", desired.source))?;
    let api = api(cluster, &info, Some(&reference.namespace));
    let before = owned.iter().find(|(r, _)| r.same_object(reference)).map(|(_, rv)| rv.clone());
    // Not made by an earlier install: does it exist anyway (then it is adopted)?
    let existed = match before {
        Some(_) => true,
        None => within(deadline, api.get_opt(&reference.name))
            .await
            .map_err(|e| apply_error(desired, &e))?
            .is_some(),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = within(deadline, api.patch(&reference.name, &params, &Patch::Apply(&desired.object)))
        .await
        .map_err(|e| apply_error(desired, &e))?;
    let after = applied.metadata.resource_version.unwrap_or_default();
    let outcome = match before {
        Some(rv) if rv == after => {
            tally.unchanged += 1;
            "unchanged"
        }
        Some(_) => {
            tally.configured += 1;
            "configured"
        }
        None if existed => {
            tally.adopted += 1;
            "adopted"
        }
        None => {
            tally.created += 1;
            "created"
        }
    };
    println!("  {outcome:<10} {reference}");
    Ok(())
}

fn apply_error(desired: &Desired, e: &ApiError) -> String {
    let hint = if e.is_forbidden() {
        "\n  the current user may not create or change it; `trellis check --pre` lists the permissions install needs"
    } else if e.is_not_found() {
        "\n  the API server does not serve this kind (is its CRD installed?)"
    } else if matches!(e, ApiError::TimedOut) {
        "\n  the overall --timeout passed; run install again with a longer --timeout"
    } else {
        ""
    };
    format!("cannot apply {} (from {}): {e}{hint}", desired.reference, desired.source)
}

async fn prune(cluster: &Cluster, stale: &ObjectRef, deadline: Instant) -> Result<(), String> {
    let info = resolve_kind(cluster, &stale.api_version, &stale.kind, deadline).await?;
    let api = api(cluster, &info, Some(&stale.namespace));
    match within(deadline, api.delete(&stale.name, &DeleteParams::background())).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(format!(
                "cannot prune {stale} (made by an earlier install, no longer rendered): {e}"
            ));
        }
    }
    println!("  pruned     {stale} (no longer in the chart)");
    Ok(())
}

/// One object whose readiness install waits for.
struct Awaited<'a> {
    reference: &'a ObjectRef,
    info: KindInfo,
    check: fn(&Value) -> Readiness,
    last: Option<String>,
}

async fn wait_established(
    cluster: &Cluster,
    crds: &[Desired],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    let mut awaited = Vec::new();
    for desired in crds {
        let info =
            resolve_kind(cluster, &desired.reference.api_version, &desired.reference.kind, deadline).await?;
        awaited.push(Awaited {
            reference: &desired.reference,
            info,
            check: readiness::crd_established,
            last: None,
        });
    }
    wait_for(cluster, awaited, deadline, Verbosity::Quiet).await.map_err(|pending| {
        format!("timed out after {} waiting for CRDs to be established:\n{pending}", show_duration(timeout))
    })
}

/// Waits for the Deployments and DaemonSets to be available and every webhook to have its
/// caBundle.
async fn wait_ready(
    cluster: &Cluster,
    plan: &Plan,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    let mut awaited = Vec::new();
    for desired in &plan.rest {
        let check: fn(&Value) -> Readiness = match desired.reference.kind.as_str() {
            "Deployment" => readiness::deployment,
            "DaemonSet" => readiness::daemon_set,
            "MutatingWebhookConfiguration" => readiness::webhook_ca_bundle,
            _ => continue,
        };
        let info =
            resolve_kind(cluster, &desired.reference.api_version, &desired.reference.kind, deadline).await?;
        awaited.push(Awaited { reference: &desired.reference, info, check, last: None });
    }
    wait_for(cluster, awaited, deadline, Verbosity::Diagnose).await.map_err(|pending| {
        format!(
            "timed out after {} waiting for the control plane; not ready:\n{pending}\nWhat was applied stays; `trellis check` shows the state, and `trellis install` can be run again.",
            show_duration(timeout)
        )
    })
}

/// How much `wait_for` says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verbosity {
    /// Only what takes long (CRDs, which the API server establishes at once, one line in all).
    Quiet,
    /// Each object when it is ready, and at the deadline why its pods are not.
    Diagnose,
}

/// Polls until every awaited object is ready, printing each change; at the deadline, the list of
/// what is still not ready.
async fn wait_for(
    cluster: &Cluster,
    mut awaited: Vec<Awaited<'_>>,
    deadline: Instant,
    verbosity: Verbosity,
) -> Result<(), String> {
    loop {
        let mut still = Vec::new();
        for mut item in awaited {
            let api = api(cluster, &item.info, Some(&item.reference.namespace));
            let state = match within(deadline, api.get_opt(&item.reference.name)).await {
                Ok(Some(object)) => (item.check)(&json_of(&object)),
                Ok(None) => Err("not found".to_owned()),
                Err(ApiError::TimedOut) => Err(item.last.clone().unwrap_or_else(|| "no answer".to_owned())),
                Err(e) => Err(format!("cannot read it: {e}")),
            };
            match state {
                Ok(detail) if verbosity == Verbosity::Diagnose || item.last.is_some() => {
                    println!("  ready      {}: {detail}", item.reference);
                }
                Ok(_) => {}
                Err(why) => {
                    if item.last.as_ref() != Some(&why) {
                        println!("  waiting    {}: {why}", item.reference);
                        item.last = Some(why);
                    }
                    still.push(item);
                }
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut pending = String::new();
            for item in &still {
                let why = item.last.as_deref().unwrap_or("not ready");
                let _ = writeln!(pending, "  {}: {why}", item.reference);
                if verbosity == Verbosity::Diagnose {
                    for problem in pod_problems(cluster, item).await {
                        let _ = writeln!(pending, "    pod {problem}");
                    }
                }
            }
            return Err(pending.trim_end().to_owned());
        }
        tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
        awaited = still;
    }
}

/// Why the pods of a Deployment or DaemonSet are not ready (empty when that cannot be found out
/// quickly).
async fn pod_problems(cluster: &Cluster, item: &Awaited<'_>) -> Vec<String> {
    if !matches!(item.reference.kind.as_str(), "Deployment" | "DaemonSet") {
        return Vec::new();
    }
    let deadline = Instant::now() + DIAGNOSIS;
    let workload = match within(
        deadline,
        api(cluster, &item.info, Some(&item.reference.namespace)).get(&item.reference.name),
    )
    .await
    {
        Ok(object) => json_of(&object),
        Err(_) => return Vec::new(),
    };
    let Some(selector) = readiness::pod_selector(&workload) else { return Vec::new() };
    let Some(pods_kind) = cluster::known_kind("v1", "Pod") else { return Vec::new() };
    let pods = api(cluster, &pods_kind, Some(&item.reference.namespace));
    match within(deadline, pods.list(&ListParams::default().labels(&selector))).await {
        Ok(list) if list.items.is_empty() => vec![format!("none matches {selector} yet")],
        Ok(list) => readiness::pod_problems(&list.items.iter().map(json_of).collect::<Vec<_>>()),
        Err(e) => vec![format!("cannot list them: {e}")],
    }
}

/// Owned objects by kind, for messages.
pub fn count_by_kind(objects: &[ObjectRef]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for object in objects {
        *counts.entry(object.kind.as_str()).or_default() += 1;
    }
    counts.iter().map(|(kind, n)| format!("{n} {kind}")).collect::<Vec<_>>().join(", ")
}
