//! Halfway through, the canary's weights change: the VirtualService's file in the control
//! plane's config directory is replaced (by rename, as a careful editor would), and the change
//! counts as arrived once the control plane has pushed a newer config and every proxy has
//! acknowledged it (`/debug/syncz`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::load::{Phase, Shared};
use super::plan::Canary;
use crate::proxy_status::fetch::{Endpoint, syncz};
use crate::proxy_status::model::Syncz;

/// How long the change may take to reach the proxies.
const DEADLINE: Duration = Duration::from_secs(15);

/// The newest generation sent to any proxy, and whether every proxy acknowledged what it got.
fn progress(syncz: &Syncz) -> (u64, bool) {
    let newest =
        syncz.proxies.iter().flat_map(|p| p.types.values()).filter_map(|t| t.sent).max().unwrap_or(0);
    let synced = !syncz.proxies.is_empty() && syncz.proxies.iter().all(|p| p.state().is_synced());
    (newest, synced)
}

async fn read(endpoint: &Endpoint) -> Result<Syncz, String> {
    syncz(endpoint, Duration::from_secs(2)).await
}

/// Makes the edit and waits for it to arrive; returns how long that took. The load counts
/// answers as neither phase in between.
pub async fn switch(
    canary: &Canary,
    config_dir: &Path,
    monitoring: SocketAddr,
    record: &Shared,
) -> Result<Duration, String> {
    let endpoint = Endpoint::parse(&format!("http://{monitoring}"))?;
    let (before, _) = progress(&read(&endpoint).await?);
    if let Ok(mut r) = record.lock() {
        r.phase = Phase::Switching;
    }
    let path = config_dir.join(&canary.file);
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, &canary.edited).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    let start = Instant::now();
    loop {
        if let Ok(now) = read(&endpoint).await
            && let (newest, true) = progress(&now)
            && newest > before
        {
            break;
        }
        if start.elapsed() > DEADLINE {
            return Err(format!(
                "no newer config was acknowledged by every proxy within {DEADLINE:?} (is any proxy routing to {}?)",
                canary.service
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    if let Ok(mut r) = record.lock() {
        r.phase = Phase::After;
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_the_newest_push_and_whether_all_acknowledged() {
        let syncz: Syncz = crate::proxy_status::fetch::parse(
            br#"{"proxies": [
                {"id": "a", "status": "SYNCED", "types": {"service": {"sent": 3, "acked": 3}, "virtualhost": {"sent": 7, "acked": 7}}},
                {"id": "b", "status": "STALE", "types": {"service": {"sent": 5, "acked": 3}}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(progress(&syncz), (7, false));
        assert_eq!(progress(&Syncz::default()), (0, false));
    }
}
