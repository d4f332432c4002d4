//! `trellis uninstall`: deletes what install made, found by its labels, in reverse install
//! order, and waits until it is gone. Namespaces and CRDs only with `--purge`.

use kube::api::DeleteParams;
use tokio::time::{Duration, Instant};

use super::UninstallArgs;
use super::apply::{count_by_kind, installable_kinds, list_owned, reach};
use super::cluster::{self, ApiError, Cluster, api, resolve_kind, show_duration, within};
use super::plan::{ObjectRef, holds_user_data, ownership_selector, sort_for_deletion};

const POLL: Duration = Duration::from_millis(500);

pub async fn uninstall(args: &UninstallArgs) -> Result<(), String> {
    super::check_release(&args.release)?;
    let deadline = Instant::now() + args.timeout;
    let cluster = cluster::connect(&args.kube, args.timeout).await?;
    let version = reach(&cluster, deadline, args.timeout).await?;
    println!(
        "Uninstalling Trellis (release {}) from {} (Kubernetes {version})",
        args.release, cluster.server
    );

    let (owned, warnings) = list_owned(&cluster, &args.release, &installable_kinds(), deadline).await?;
    let (mut remove, kept): (Vec<ObjectRef>, Vec<ObjectRef>) =
        owned.into_iter().map(|(r, _)| r).partition(|r| args.purge || !holds_user_data(&r.kind));
    sort_for_deletion(&mut remove);

    let mut failures: Vec<String> = warnings;
    if remove.is_empty() && kept.is_empty() && failures.is_empty() {
        println!("Nothing to remove: no object carries the labels {}", ownership_selector(&args.release));
        return Ok(());
    }
    let mut deleted = Vec::new();
    for object in &remove {
        match delete(&cluster, object, deadline).await {
            Ok(true) => {
                println!("  deleted    {object}");
                deleted.push(object.clone());
            }
            Ok(false) => println!("  gone       {object} (already)"),
            Err(e) => failures.push(e),
        }
    }
    if let Err(e) = wait_gone(&cluster, &deleted, deadline, args.timeout).await {
        failures.push(e);
    }
    if !kept.is_empty() {
        println!(
            "Kept {} ({}): they hold users' data; `trellis uninstall --purge` removes them, and with them every Istio resource and everything in the namespace.",
            kept.len(),
            count_by_kind(&kept)
        );
    }
    if failures.is_empty() {
        println!("✔ Trellis is uninstalled ({} objects removed)", remove.len());
        Ok(())
    } else {
        Err(format!("not everything could be removed:\n  {}", failures.join("\n  ")))
    }
}

/// Deletes one object; false when it was already gone.
async fn delete(cluster: &Cluster, object: &ObjectRef, deadline: Instant) -> Result<bool, String> {
    let info = resolve_kind(cluster, &object.api_version, &object.kind, deadline).await?;
    let api = api(cluster, &info, Some(&object.namespace));
    match within(deadline, api.delete(&object.name, &DeleteParams::background())).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(format!("cannot delete {object}: {e}")),
    }
}

/// Waits until every deleted object has disappeared (finalizers, a namespace terminating),
/// saying which ones take long.
async fn wait_gone(
    cluster: &Cluster,
    deleted: &[ObjectRef],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    let mut pending: Vec<&ObjectRef> = deleted.iter().collect();
    let mut announced = false;
    loop {
        let mut still = Vec::new();
        for object in pending {
            let info = resolve_kind(cluster, &object.api_version, &object.kind, deadline).await?;
            match within(deadline, api(cluster, &info, Some(&object.namespace)).get_opt(&object.name)).await {
                Ok(None) => {}
                Err(e) if e.is_not_found() => {}
                Ok(Some(_)) | Err(ApiError::TimedOut) => still.push(object),
                Err(e) => return Err(format!("cannot tell whether {object} is gone: {e}")),
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = still.iter().map(ToString::to_string).collect();
            return Err(format!(
                "timed out after {} waiting for deletions to finish: {} still there (finalizers may hold them)",
                show_duration(timeout),
                names.join(", ")
            ));
        }
        if !announced {
            let names: Vec<String> = still.iter().map(ToString::to_string).collect();
            println!("  waiting for {} to go", names.join(", "));
            announced = true;
        }
        tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
        pending = still;
    }
}
