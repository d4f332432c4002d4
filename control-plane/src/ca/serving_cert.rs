//! trellisd's own certificate for its TLS port (15012), issued by the CA it runs, so that
//! workloads verify trellisd with the same root they verify each other with. Issued again
//! whenever the CA changes (a new root must be served at once) and every few hours, well
//! before it expires.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;

use super::material::{Authority, CurrentCa};

/// The names trellisd is reached by.
#[derive(Clone, Debug)]
pub struct ServingNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

const TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const RENEW_EVERY: Duration = Duration::from_secs(12 * 3600);

/// The TLS config in force for the port; an error at start is a start-up error.
pub fn keep_serving_config(
    names: ServingNames,
    mut current: CurrentCa,
) -> Result<watch::Receiver<Arc<ServerConfig>>, String> {
    let first = issue(&names, &current.borrow_and_update())?;
    let (publish, configs) = watch::channel(first);
    tokio::spawn(async move {
        let mut can_change = true;
        while !publish.is_closed() {
            if can_change {
                tokio::select! {
                    _ = tokio::time::sleep(RENEW_EVERY) => {}
                    changed = current.changed() => can_change = changed.is_ok(),
                }
            } else {
                tokio::time::sleep(RENEW_EVERY).await;
            }
            let authority = current.borrow_and_update().clone();
            match issue(&names, &authority) {
                Ok(config) => {
                    publish.send_replace(config);
                }
                // The certificate in use is good for weeks: keep it, try at the next round.
                Err(e) => tracing::error!("CA: cannot issue trellisd's serving certificate: {e}"),
            }
        }
    });
    Ok(configs)
}

fn issue(names: &ServingNames, authority: &Authority) -> Result<Arc<ServerConfig>, String> {
    let (chain, key) = authority
        .ca
        .issue_server(&names.dns, &names.ips, TTL)
        .map_err(|e| format!("serving certificate ({}): {e}", authority.origin))?;
    trellis_identity::tls::control_plane_server_config(&chain, &key)
}
