//! The demo's input, described the way users describe a mesh: plain pod manifests
//! (`pods.yaml`), Istio resources (`istio/`) and a mesh config (`mesh.yaml`). A copy of
//! `examples/demo` is built into the executable, so the demo runs from anywhere; `--from DIR`
//! reads another directory laid out the same way.

use std::path::Path;

/// The files of one demo, as text.
#[derive(Clone, Debug)]
pub struct Example {
    /// Where it came from, for messages.
    pub origin: String,
    pub mesh: String,
    pub pods: String,
    /// The Istio resources, by path relative to `istio/`.
    pub istio: Vec<(String, String)>,
}

impl Example {
    /// `examples/demo`, as it was when this executable was built.
    pub fn built_in() -> Example {
        Example {
            origin: "examples/demo (built in)".to_owned(),
            mesh: include_str!("../../../examples/demo/mesh.yaml").to_owned(),
            pods: include_str!("../../../examples/demo/pods.yaml").to_owned(),
            istio: vec![
                (
                    "services.yaml".to_owned(),
                    include_str!("../../../examples/demo/istio/services.yaml").to_owned(),
                ),
                (
                    "catalog.yaml".to_owned(),
                    include_str!("../../../examples/demo/istio/catalog.yaml").to_owned(),
                ),
                (
                    "inventory.yaml".to_owned(),
                    include_str!("../../../examples/demo/istio/inventory.yaml").to_owned(),
                ),
                (
                    "security.yaml".to_owned(),
                    include_str!("../../../examples/demo/istio/security.yaml").to_owned(),
                ),
                (
                    "authorization.yaml".to_owned(),
                    include_str!("../../../examples/demo/istio/authorization.yaml").to_owned(),
                ),
                (
                    "telemetry.yaml".to_owned(),
                    include_str!("../../../examples/demo/istio/telemetry.yaml").to_owned(),
                ),
            ],
        }
    }

    /// A directory with `mesh.yaml`, `pods.yaml` and `istio/*.yaml`.
    pub fn from_dir(dir: &Path) -> Result<Example, String> {
        let read =
            |path: &Path| crate::input::read_input(path).map_err(|e| format!("{}: {e}", path.display()));
        let istio_dir = dir.join("istio");
        let entries = std::fs::read_dir(&istio_dir).map_err(|e| format!("{}: {e}", istio_dir.display()))?;
        let mut istio = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", istio_dir.display()))?.path();
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
            if is_yaml && path.is_file() {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                istio.push((name, read(&path)?));
            }
        }
        if istio.is_empty() {
            return Err(format!("{}: no .yaml files", istio_dir.display()));
        }
        istio.sort();
        Ok(Example {
            origin: dir.display().to_string(),
            mesh: read(&dir.join("mesh.yaml"))?,
            pods: read(&dir.join("pods.yaml"))?,
            istio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_copy_is_the_examples_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
        let from_disk = Example::from_dir(&dir).unwrap();
        let built_in = Example::built_in();
        assert_eq!(from_disk.mesh, built_in.mesh);
        assert_eq!(from_disk.pods, built_in.pods);
        let mut istio = built_in.istio.clone();
        istio.sort();
        assert_eq!(from_disk.istio, istio, "a file added to examples/demo/istio must be added to built_in()");
    }

    #[test]
    fn a_directory_without_its_parts_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Example::from_dir(dir.path()).unwrap_err();
        assert!(err.contains("istio"), "{err}");
        std::fs::create_dir(dir.path().join("istio")).unwrap();
        std::fs::write(dir.path().join("istio/a.yaml"), "").unwrap();
        let err = Example::from_dir(dir.path()).unwrap_err();
        assert!(err.contains("mesh.yaml"), "{err}");
    }
}
