//! The CNI protocol's envelope: which versions we speak, the environment a runtime sets, and
//! the error object plugins print (spec 1.1.0, "Error" and "Environment variables").

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Versions whose configurations we accept. 0.3.x and 0.4.0 results have the same shape for
/// what we pass through; CHECK exists from 0.4.0, STATUS and GC from 1.1.0.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";

/// Error codes from the spec; 100 and up are ours.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The pod's annotations ask for something we cannot program.
    pub const INVALID_POD_SETTINGS: u32 = 100;
    /// Programming the redirect failed; nothing of it is left behind.
    pub const REDIRECT_FAILED: u32 = 101;
}

/// A CNI error, printed on stdout as the spec's error object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The error object, in the configuration's version when it was readable.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        let wire = Wire { cni_version, code: self.code, msg: &self.msg, details: &self.details };
        serde_json::to_string(&wire).unwrap_or_else(|_| format!("{{\"code\":{}}}", self.code))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(value: &str) -> Result<Command, CniError> {
        Ok(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "unknown CNI_COMMAND",
                    format!("CNI_COMMAND={other:?}; expected ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ));
            }
        })
    }
}

/// What the runtime told us about the container, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`, as key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the environment through `var`, so tests need not touch the process's own.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let command = var("CNI_COMMAND").ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                "CNI_COMMAND is not set",
                "this program is a CNI plugin; run it from a container runtime, or use `trellis-cni install`",
            )
        })?;
        let command = Command::parse(&command)?;
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        let invocation = Invocation {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            args: match parse_cni_args(&var("CNI_ARGS").unwrap_or_default()) {
                Ok(args) => args,
                // Teardown and queries must not fail on arguments they do not need.
                Err(_) if !matches!(command, Command::Add | Command::Check) => BTreeMap::new(),
                Err(e) => return Err(e),
            },
        };
        if matches!(command, Command::Add | Command::Check) {
            for (name, present) in [
                ("CNI_CONTAINERID", invocation.container_id.is_some()),
                ("CNI_NETNS", invocation.netns.is_some()),
                ("CNI_IFNAME", invocation.ifname.is_some()),
            ] {
                if !present {
                    return Err(CniError::new(
                        code::INVALID_ENVIRONMENT,
                        format!("{name} is not set"),
                        format!("{command:?} needs {name}"),
                    ));
                }
            }
        }
        Ok(invocation)
    }

    /// The Kubernetes pod this container belongs to, when the runtime said.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((self.args.get("K8S_POD_NAMESPACE")?.as_str(), self.args.get("K8S_POD_NAME")?.as_str()))
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_cni_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "CNI_ARGS is malformed",
                format!("{pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn reads_a_kubelet_invocation() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID="),
            ("CNI_PATH", "/opt/cni/bin"),
        ]))
        .unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.pod(), Some(("shop", "web-0")));
        assert_eq!(inv.args.get("K8S_POD_UID").map(String::as_str), Some(""));
    }

    #[test]
    fn missing_or_bad_environment_is_code_4() {
        for (pairs, details) in [
            (&[][..], "this program is a CNI plugin"),
            (&[("CNI_COMMAND", "ATTACH")][..], "CNI_COMMAND=\"ATTACH\""),
            (
                &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")][..],
                "needs CNI_NETNS",
            ),
            (
                &[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "x"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "K8S_POD_NAME"),
                ][..],
                "\"K8S_POD_NAME\" is not KEY=VALUE",
            ),
        ] {
            let err = Invocation::from_env(env(pairs)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{pairs:?}");
            assert!(err.to_string().contains(details), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn del_needs_no_namespace_and_survives_bad_arguments() {
        let inv = Invocation::from_env(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "x")])).unwrap();
        assert_eq!(inv.netns, None);
        let inv = Invocation::from_env(env(&[("CNI_COMMAND", "DEL"), ("CNI_ARGS", "garbage")])).unwrap();
        assert!(inv.args.is_empty());
    }

    #[test]
    fn the_error_object_has_the_spec_fields() {
        let err = CniError::new(7, "bad config", "prevResult: missing");
        let v: serde_json::Value = serde_json::from_str(&err.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "prevResult: missing"})
        );
    }
}
