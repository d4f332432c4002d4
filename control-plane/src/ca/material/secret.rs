//! Kubernetes mode: the CA from Secrets in trellisd's namespace, as istiod does it.
//!
//! - `cacerts` (Istio's plug-in CA: `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//!   `cert-chain.pem`) when it exists; looked at again every few seconds and reloaded when it
//!   changes, keeping the last good CA when the new contents are not usable.
//! - Otherwise a generated root kept in `istio-ca-secret`, so that a restart or another replica
//!   signs with the same root. Race-free: each start tries to create the Secret with a root of
//!   its own; the one create that wins decides, and everyone else (409 Conflict) reads it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use trellis_identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CaError, CaMaterial, ROOT_CERT_FILE};

use super::{Authority, CurrentCa};
use crate::ca::metrics::CaMetrics;

/// Istio's plug-in CA Secret.
pub const PLUGGED_SECRET: &str = "cacerts";
/// Where Istio keeps its generated root.
pub const SELF_SIGNED_SECRET: &str = "istio-ca-secret";
/// Istio's type for it.
const SELF_SIGNED_TYPE: &str = "istio.io/ca-root";
/// How often `cacerts` is looked at for changes.
const POLL: Duration = Duration::from_secs(10);

pub async fn start(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
    metrics: CaMetrics,
) -> Result<CurrentCa, String> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let plugged_name = format!("Secret {namespace}/{PLUGGED_SECRET}");
    let plugged =
        secrets.get_opt(PLUGGED_SECRET).await.map_err(|e| format!("reading {plugged_name}: {e}"))?;
    match plugged {
        Some(secret) => {
            let authority = from_secret(&secret, &plugged_name)?;
            tracing::info!("CA: plugged-in certificate from {plugged_name}");
            let version = secret.metadata.resource_version.clone();
            let (publish, current) = watch::channel(Arc::new(authority));
            tokio::spawn(follow(secrets, plugged_name, version, publish, metrics));
            Ok(current)
        }
        None => {
            let authority = shared_root(&secrets, namespace, trust_domain).await?;
            Ok(watch::channel(Arc::new(authority)).1)
        }
    }
}

/// The generated root every replica shares.
async fn shared_root(
    secrets: &Api<Secret>,
    namespace: &str,
    trust_domain: &str,
) -> Result<Authority, String> {
    let name = format!("Secret {namespace}/{SELF_SIGNED_SECRET}");
    let generated = CaMaterial::generate_root(trust_domain).map_err(|e| e.to_string())?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some(SELF_SIGNED_TYPE.to_owned()),
        data: Some(data_of(&generated)),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!("CA: generated a self-signed root and kept it in {name}");
            Authority::new(generated, name.clone()).map_err(|e| format!("{name}: {e}"))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing =
                secrets.get(SELF_SIGNED_SECRET).await.map_err(|e| format!("reading {name}: {e}"))?;
            tracing::info!("CA: using the self-signed root kept in {name}");
            from_secret(&existing, &name)
        }
        Err(e) => Err(format!("creating {name}: {e}")),
    }
}

/// Follows `cacerts`: a new resourceVersion is read; what cannot be used is reported once and
/// the last good CA stays. A deleted Secret changes nothing (the CA in memory is still good).
async fn follow(
    secrets: Api<Secret>,
    name: String,
    mut version: Option<String>,
    publish: watch::Sender<Arc<Authority>>,
    metrics: CaMetrics,
) {
    let mut deleted = false;
    loop {
        tokio::time::sleep(POLL).await;
        if publish.is_closed() {
            return;
        }
        let secret = match secrets.get_opt(PLUGGED_SECRET).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                if !std::mem::replace(&mut deleted, true) {
                    tracing::warn!("CA: {name} was deleted; the CA in force stays until it is back");
                }
                continue;
            }
            Err(e) => {
                tracing::debug!("CA: reading {name}: {e}");
                continue;
            }
        };
        deleted = false;
        if secret.metadata.resource_version == version {
            continue;
        }
        version = secret.metadata.resource_version.clone();
        match from_secret(&secret, &name) {
            Ok(next) if next.material() != publish.borrow().material() => {
                tracing::info!("CA: reloaded from {name}");
                publish.send_replace(Arc::new(next));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("CA: reload refused, the last good CA stays: {e}");
                metrics.reload_error(&name);
            }
        }
    }
}

fn data_of(material: &CaMaterial) -> BTreeMap<String, ByteString> {
    [
        (CA_CERT_FILE, &material.ca_cert),
        (CA_KEY_FILE, &material.ca_key),
        (ROOT_CERT_FILE, &material.root_cert),
        (CERT_CHAIN_FILE, &material.cert_chain),
    ]
    .into_iter()
    .map(|(key, text)| (key.to_owned(), ByteString(text.clone().into_bytes())))
    .collect()
}

/// The CA a Secret holds; errors name the Secret and the key.
fn from_secret(secret: &Secret, name: &str) -> Result<Authority, String> {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let key = |key: &str, required: bool| -> Result<String, String> {
        match data.get(key) {
            Some(bytes) => String::from_utf8(bytes.0.clone())
                .map_err(|_| format!("{name}: key {key}: not PEM text (invalid UTF-8)")),
            None if required => Err(format!("{name}: key {key} is missing")),
            None => Ok(String::new()),
        }
    };
    let material = CaMaterial {
        ca_cert: key(CA_CERT_FILE, true)?,
        ca_key: key(CA_KEY_FILE, true)?,
        root_cert: key(ROOT_CERT_FILE, true)?,
        cert_chain: key(CERT_CHAIN_FILE, false)?,
    };
    Authority::new(material, name.to_owned()).map_err(|e| match e {
        CaError::Material { file, message } => format!("{name}: key {file}: {message}"),
        other => format!("{name}: {other}"),
    })
}
