//! Keeps the workload's certificate current: certify at start, renew at half its life (with a
//! little jitter, so that proxies started together do not renew together) with a fresh key,
//! and, while the CA cannot be reached, keep the certificate it has and retry with capped
//! backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::client::{CaClient, read_token};
use crate::spiffe::SpiffeId;
use crate::tls::MeshTls;

/// The longest wait between attempts while the CA is away (ztunnel's 150 s).
const MAX_BACKOFF: Duration = Duration::from_secs(150);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub struct Renewal {
    pub ca: CaClient,
    pub token_file: PathBuf,
    /// What the CSR names; the CA decides.
    pub requested: SpiffeId,
    /// The lifetime asked for.
    pub ttl: Duration,
}

/// Runs for the life of the proxy.
pub async fn keep_certified(tls: Arc<MeshTls>, renewal: Renewal) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let attempt = async {
            let token = read_token(&renewal.token_file)?;
            renewal.ca.certify(&renewal.requested, &token, renewal.ttl).await
        };
        let wait = match attempt.await {
            Ok(cert) => {
                let (serial, id, lifetime) =
                    (cert.leaf.serial.clone(), cert.leaf.id.to_string(), cert.lifetime());
                let remaining = cert.remaining(SystemTime::now());
                match tls.install(cert) {
                    Ok(()) => {
                        tracing::info!(%id, %serial, ?lifetime, "workload certificate installed");
                        backoff = FIRST_BACKOFF;
                        renew_after(remaining)
                    }
                    Err(e) => {
                        tls.record_failed_request();
                        tracing::warn!(error = %e, "the CA's certificate cannot be used");
                        next_backoff(&mut backoff, &tls)
                    }
                }
            }
            Err(e) => {
                tls.record_failed_request();
                tracing::warn!(error = %e, retry_in = ?backoff, "certificate request failed; keeping the current certificate");
                next_backoff(&mut backoff, &tls)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Half of what is left of a certificate just received, ± 1 % of that. Counted from receipt
/// rather than from `notBefore`: the CA backdates certificates by two minutes for clock skew,
/// which would make a certificate of a few seconds look past its half life at once.
fn renew_after(remaining: Duration) -> Duration {
    let jitter = remaining.as_secs_f64() * 0.01 * (rand::random::<f64>() * 2.0 - 1.0);
    let half = (remaining.as_secs_f64() / 2.0 + jitter).max(0.0);
    Duration::from_secs_f64(half).max(Duration::from_millis(100))
}

/// The wait before the next attempt: doubling from half a second, capped at 150 s, and never
/// past a quarter of what is left of the current certificate (short-lived ones in tests).
fn next_backoff(backoff: &mut Duration, tls: &MeshTls) -> Duration {
    let mut wait = *backoff;
    if let Some(cert) = tls.current() {
        let quarter = cert.remaining(SystemTime::now()) / 4;
        wait = wait.min(quarter.max(Duration::from_millis(100)));
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    // ± 20 %, so that proxies that lost the CA together do not return together.
    wait.mul_f64(0.8 + rand::random::<f64>() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_near_half_life() {
        let day = Duration::from_secs(86400);
        for _ in 0..100 {
            let wait = renew_after(day);
            assert!(wait >= day / 2 - day / 100 && wait <= day / 2 + day / 100, "{wait:?}");
        }
        // A certificate of four seconds (backdated two minutes by the CA) lasts two.
        let wait = renew_after(Duration::from_secs(4));
        assert!(wait >= Duration::from_millis(1900) && wait <= Duration::from_millis(2100), "{wait:?}");
        assert_eq!(renew_after(Duration::ZERO), Duration::from_millis(100));
    }
}
