//! Kubernetes mode: the injector owns its serving certificate. At start it makes a CA and a
//! serving certificate for its Service, and adds the CA to the `caBundle` of its
//! MutatingWebhookConfiguration through the API, putting it back whenever someone overwrites
//! the bundle.
//!
//! Every replica has its own CA, so the bundle is a set: each replica adds its CA and drops
//! expired ones, and never removes a CA that is still valid (another replica, or the previous
//! release during a rolling update, may be serving with it). Updates use the object's
//! resourceVersion and are retried on conflict, so replicas starting together do not overwrite
//! each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;
use x509_parser::pem::Pem;

/// The serving certificate lives a year; the CA ten. The injector re-issues the serving
/// certificate with the same CA long before it expires.
const SERVING_LIFETIME: time::Duration = time::Duration::days(365);
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
/// Tolerates clocks that are a little behind.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// CAs kept besides our own, newest first. Every start of a replica adds a CA, so a replica
/// that crash-loops would grow the bundle without end; with a cap, old CAs fall out, and a live
/// replica whose CA fell out sees it and adds it back.
const MAX_OTHER_CAS: usize = 15;

pub struct WebhookIdentity {
    pub webhook_config: String,
    pub service: String,
    pub namespace: String,
}

impl WebhookIdentity {
    /// The names the API server may use to reach the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }
}

/// A CA that can issue serving certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl Authority {
    pub fn generate(identity: &WebhookIdentity) -> Result<Self, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{}.{} webhook CA", identity.service, identity.namespace));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority { ca_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    pub fn issue(&self, identity: &WebhookIdentity) -> Result<Serving, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::new(identity.dns_names())?;
        params.distinguished_name.push(DnType::CommonName, identity.dns_names()[2].clone());
        params.not_before = now - BACKDATE;
        params.not_after = now + SERVING_LIFETIME;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Serving { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after: params.not_after })
    }
}

/// The bundle with `ours` added and expired or unreadable certificates removed. Pure, so the
/// rules are tested without an API server.
pub fn merge_bundle(existing: &[u8], ours: &str, now: OffsetDateTime) -> Vec<u8> {
    let ours_der: Vec<Vec<u8>> =
        Pem::iter_from_buffer(ours.as_bytes()).flatten().map(|p| p.contents).collect();
    let mut others: Vec<(OffsetDateTime, Vec<u8>)> = Vec::new();
    for pem in Pem::iter_from_buffer(existing).flatten() {
        if pem.label != "CERTIFICATE"
            || ours_der.contains(&pem.contents)
            || others.iter().any(|(_, d)| *d == pem.contents)
        {
            continue;
        }
        let validity = pem.parse_x509().ok().map(|cert| {
            let v = cert.validity();
            (v.not_before.to_datetime(), v.not_after.to_datetime())
        });
        if let Some((not_before, not_after)) = validity
            && not_after > now
        {
            others.push((not_before, pem.contents));
        }
    }
    others.sort_by_key(|(not_before, _)| std::cmp::Reverse(*not_before));
    others.truncate(MAX_OTHER_CAS);
    let mut out: String = others.iter().map(|(_, der)| to_pem(der)).collect();
    out.push_str(ours);
    out.into_bytes()
}

fn to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Whether every webhook of ours (those calling our Service) trusts our CA.
pub fn bundle_has_ca(
    config: &MutatingWebhookConfiguration,
    identity: &WebhookIdentity,
    ca_pem: &str,
) -> bool {
    let ours: Vec<Vec<u8>> = Pem::iter_from_buffer(ca_pem.as_bytes()).flatten().map(|p| p.contents).collect();
    our_webhooks(config, identity).all(|bundle| {
        let trusted: Vec<Vec<u8>> = Pem::iter_from_buffer(bundle).flatten().map(|p| p.contents).collect();
        ours.iter().all(|c| trusted.contains(c))
    })
}

fn our_webhooks<'a>(
    config: &'a MutatingWebhookConfiguration,
    identity: &'a WebhookIdentity,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    config
        .webhooks
        .iter()
        .flatten()
        .filter(|w| calls_us(&w.client_config, identity))
        .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()).unwrap_or_default())
}

fn calls_us(
    client: &k8s_openapi::api::admissionregistration::v1::WebhookClientConfig,
    id: &WebhookIdentity,
) -> bool {
    client.service.as_ref().is_some_and(|s| s.name == id.service && s.namespace == id.namespace)
}

/// Adds our CA to every webhook of ours, retrying on conflicting updates. Returns whether the
/// object had to be changed.
pub async fn ensure_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    identity: &WebhookIdentity,
    ca_pem: &str,
) -> Result<bool, kube::Error> {
    let mut attempt = 0;
    loop {
        let mut config = api.get(&identity.webhook_config).await?;
        if bundle_has_ca(&config, identity, ca_pem) {
            return Ok(false);
        }
        let now = OffsetDateTime::now_utc();
        for hook in config.webhooks.iter_mut().flatten() {
            if calls_us(&hook.client_config, identity) {
                let existing = hook.client_config.ca_bundle.take().map(|b| b.0).unwrap_or_default();
                hook.client_config.ca_bundle = Some(ByteString(merge_bundle(&existing, ca_pem, now)));
            }
        }
        // `replace` sends the resourceVersion we read: a concurrent writer makes it fail with
        // 409 instead of being silently overwritten.
        match api.replace(&identity.webhook_config, &PostParams::default(), &config).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 10 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Keeps our CA in the bundle for as long as the injector runs: sets it once the webhook
/// configuration exists, then watches it and puts the CA back whenever it goes missing. `ready`
/// turns true once the API server can verify us.
pub async fn keep_ca_bundle(
    api: Api<MutatingWebhookConfiguration>,
    identity: Arc<WebhookIdentity>,
    ca_pem: Arc<String>,
    ready: Arc<AtomicBool>,
) {
    let selector = format!("metadata.name={}", identity.webhook_config);
    let mut events = watcher(api.clone(), watcher::Config::default().fields(&selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let config = match event {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(error = %e, "watching the webhook configuration failed; retrying");
                continue;
            }
        };
        if bundle_has_ca(&config, &identity, &ca_pem) {
            ready.store(true, Ordering::Release);
            continue;
        }
        if our_webhooks(&config, &identity).next().is_none() {
            tracing::warn!(
                webhook = %identity.webhook_config,
                service = %identity.service,
                "no webhook in this configuration calls our Service; nothing to trust us"
            );
            continue;
        }
        // Retry on a timer: the next watch event may be a long time coming.
        let mut backoff = Duration::from_millis(500);
        loop {
            match ensure_ca_bundle(&api, &identity, &ca_pem).await {
                Ok(changed) => {
                    if changed {
                        tracing::info!(webhook = %identity.webhook_config, "added our CA to the webhook's caBundle");
                    }
                    ready.store(true, Ordering::Release);
                    break;
                }
                Err(e) => {
                    tracing::warn!(webhook = %identity.webhook_config, error = %e, retry_in = ?backoff, "cannot update the caBundle");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Re-issues the serving certificate into the files the server reloads from, with the same CA,
/// when two thirds of its lifetime have passed.
pub async fn renew_serving_certificate(
    authority: Arc<Authority>,
    identity: Arc<WebhookIdentity>,
    mut not_after: OffsetDateTime,
    write: impl Fn(&Serving) -> std::io::Result<()> + Send + 'static,
) {
    loop {
        let remaining = (not_after - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        let wait = Duration::try_from(remaining * 2 / 3).unwrap_or(Duration::from_secs(3600));
        tokio::time::sleep(wait.max(Duration::from_secs(60))).await;
        match authority.issue(&identity).map_err(|e| e.to_string()).and_then(|s| {
            write(&s).map_err(|e| e.to_string())?;
            Ok(s.not_after)
        }) {
            Ok(next) => {
                tracing::info!("serving certificate renewed");
                not_after = next;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the serving certificate; retrying later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> WebhookIdentity {
        WebhookIdentity {
            webhook_config: "trellis-sidecar-injector".into(),
            service: "trellis-injector".into(),
            namespace: "trellis-system".into(),
        }
    }

    fn ca_valid_until(not_after: OffsetDateTime) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = not_after - time::Duration::days(10);
        params.not_after = not_after;
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    fn count(bundle: &[u8]) -> usize {
        Pem::iter_from_buffer(bundle).flatten().count()
    }

    #[test]
    fn bundles_keep_valid_cas_drop_expired_ones_and_never_duplicate() {
        let now = OffsetDateTime::now_utc();
        let ours = Authority::generate(&identity()).unwrap().ca_pem;
        let other_replica = ca_valid_until(now + time::Duration::days(100));
        let expired = ca_valid_until(now - time::Duration::days(1));
        let existing = format!("{other_replica}{expired}garbage that is not PEM\n");
        let merged = merge_bundle(existing.as_bytes(), &ours, now);
        assert_eq!(count(&merged), 2, "the other replica's CA and ours");
        let text = String::from_utf8(merged.clone()).unwrap();
        assert!(text.ends_with(&ours));
        assert_eq!(merge_bundle(&merged, &ours, now), merged, "adding our CA twice changes nothing");
        assert_eq!(count(&merge_bundle(b"", &ours, now)), 1);
    }

    #[test]
    fn a_crash_looping_replica_cannot_grow_the_bundle_without_end() {
        let now = OffsetDateTime::now_utc();
        let mut bundle = Vec::new();
        for _ in 0..40 {
            let ca = Authority::generate(&identity()).unwrap().ca_pem;
            bundle = merge_bundle(&bundle, &ca, now);
        }
        assert_eq!(count(&bundle), MAX_OTHER_CAS + 1);
    }

    #[test]
    fn serving_certificates_name_the_service() {
        let id = identity();
        let authority = Authority::generate(&id).unwrap();
        let serving = authority.issue(&id).unwrap();
        let pem = Pem::iter_from_buffer(serving.cert_pem.as_bytes()).next().unwrap().unwrap();
        let cert = pem.parse_x509().unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(names.contains(&"DNSName(trellis-injector.trellis-system.svc)".to_owned()), "{names:?}");
        assert!(!cert.is_ca());
    }
}
