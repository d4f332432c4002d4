//! `--ca-dir`: Istio's plug-in CA files (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//! `cert-chain.pem`), read at start and again whenever they change. A change that does not make
//! a usable CA (a half-copied set, a key that is not the certificate's) is logged and counted
//! naming the file, and the last good CA keeps signing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use trellis_identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CaError, CaMaterial, ROOT_CERT_FILE};

use super::{Authority, CurrentCa};
use crate::ca::metrics::CaMetrics;
use crate::ca::watched::{self, Watched};

pub fn start(dir: PathBuf, metrics: CaMetrics) -> Result<CurrentCa, String> {
    let paths: Vec<PathBuf> =
        [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE].iter().map(|f| dir.join(f)).collect();
    let watched = Watched::new(paths);
    let first = load(&dir, &watched).map_err(|e| e.message)?;
    tracing::info!(dir = %dir.display(), "CA: plugged-in certificate from --ca-dir");
    let (publish, current) = watch::channel(Arc::new(first));
    watched::follow(watched, publish, Followed { dir, metrics });
    Ok(current)
}

/// The directory as [`watched::follow`] rereads it.
struct Followed {
    dir: PathBuf,
    metrics: CaMetrics,
}

impl watched::Follow for Followed {
    type Value = Authority;
    type Error = LoadError;

    fn read(&mut self, watched: &Watched) -> Result<Authority, LoadError> {
        load(&self.dir, watched)
    }

    fn same(&self, old: &Authority, new: &Authority) -> bool {
        old.material() == new.material()
    }

    fn accepted(&mut self, _: &Authority) {
        tracing::info!(dir = %self.dir.display(), "CA: reloaded from --ca-dir");
    }

    fn refused(&mut self, e: LoadError) {
        tracing::error!(file = %e.file, "CA: reload refused, the last good CA stays: {}", e.message);
        self.metrics.reload_error(&e.file);
    }
}

struct LoadError {
    /// The file to blame.
    file: String,
    message: String,
}

fn load(dir: &Path, watched: &Watched) -> Result<Authority, LoadError> {
    if let Some((path, size)) = watched.oversized() {
        let file = path.display().to_string();
        let message =
            format!("{file}: {size} bytes, more than {} (not CA material)", watched::MAX_FILE_BYTES);
        return Err(LoadError { file, message });
    }
    let origin = format!("--ca-dir {}", dir.display());
    let material = CaMaterial::read_dir(dir).map_err(|e| blame(dir, e))?;
    Authority::new(material, origin).map_err(|e| blame(dir, e))
}

/// Names the file a material error is about with its full path.
fn blame(dir: &Path, error: CaError) -> LoadError {
    match error {
        CaError::Material { file, message } => {
            // read_dir names full paths already; CertificateAuthority::new names the file alone.
            let path = if Path::new(&file).is_absolute() { PathBuf::from(&file) } else { dir.join(&file) };
            let file = path.display().to_string();
            LoadError { message: format!("{file}: {message}"), file }
        }
        other => {
            LoadError { file: dir.display().to_string(), message: format!("{}: {other}", dir.display()) }
        }
    }
}
