//! Reading the pod from the Kubernetes API with the kubeconfig the installer wrote: short
//! timeouts and a few attempts, because the runtime is waiting on us to start the pod.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::protocol::{CniError, code};

const ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_PAUSE: Duration = Duration::from_millis(200);

pub async fn get_pod(kubeconfig: &Path, namespace: &str, name: &str) -> Result<Pod, CniError> {
    let client = client(kubeconfig).await?;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let mut pause = FIRST_PAUSE;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, pods.get(name)).await {
            Ok(Ok(pod)) => return Ok(pod),
            Ok(Err(kube::Error::Api(status))) if status.is_not_found() => {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    "pod not found",
                    format!("pod {namespace}/{name} does not exist in the Kubernetes API"),
                ));
            }
            // A refusal (forbidden, unauthorized) will not change by asking again; being told
            // to slow down (429) will.
            Ok(Err(kube::Error::Api(status))) if status.code < 500 && status.code != 429 => {
                return Err(CniError::new(
                    code::IO_FAILURE,
                    "the Kubernetes API refused the pod lookup",
                    format!("pod {namespace}/{name}: {} {}: {}", status.code, status.reason, status.message),
                ));
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        }
        tracing::warn!(attempt, error = %last, "pod lookup failed");
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        "cannot reach the Kubernetes API server",
        format!("pod {namespace}/{name}, {ATTEMPTS} attempts: {last}"),
    ))
}

async fn client(kubeconfig: &Path) -> Result<Client, CniError> {
    let where_ = kubeconfig.display();
    let raw = Kubeconfig::read_from(kubeconfig).map_err(|e| {
        CniError::new(code::IO_FAILURE, "cannot read the kubeconfig", format!("{where_}: {e}"))
    })?;
    let mut config = Config::from_custom_kubeconfig(raw, &KubeConfigOptions::default())
        .await
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid kubeconfig", format!("{where_}: {e}")))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(ATTEMPT_TIMEOUT);
    Client::try_from(config)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid kubeconfig", format!("{where_}: {e}")))
}
