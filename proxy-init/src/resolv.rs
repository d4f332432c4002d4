//! The pod's nameservers, read from its resolv.conf as Istio's istio-iptables reads them: DNS
//! capture takes only queries to these, so a local resolver's own upstream queries (dnsmasq,
//! a node-local cache) never loop back to the proxy.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

/// resolv.conf is a few lines; anything much larger is not one.
const MAX_LEN: u64 = 64 * 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolvError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is larger than {MAX_LEN} bytes; not a resolv.conf")]
    TooLarge { path: String },
}

/// The `nameserver` addresses of the file, in order; what does not parse is reported in the
/// warnings and skipped (the resolver library skips it too).
pub fn nameservers(path: &Path) -> Result<(Vec<IpAddr>, Vec<String>), ResolvError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|e| ResolvError::Read { path: shown.clone(), message: e.to_string() })?;
    let mut text = String::new();
    file.take(MAX_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| ResolvError::Read { path: shown.clone(), message: e.to_string() })?;
    if text.len() as u64 > MAX_LEN {
        return Err(ResolvError::TooLarge { path: shown });
    }
    Ok(parse(&text))
}

/// The nameservers of resolv.conf text, and a warning for each line that names a bad one.
pub fn parse(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut servers = Vec::new();
    let mut warnings = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else {
            warnings.push("resolv.conf: a nameserver line without an address".to_owned());
            continue;
        };
        // A link-local IPv6 server may carry its zone (fe80::1%eth0); the rule needs the address.
        let address = value.split('%').next().unwrap_or(value);
        match address.parse::<IpAddr>() {
            Ok(ip) if !servers.contains(&ip) => servers.push(ip),
            Ok(_) => {}
            Err(_) => {
                let shown: String = value.chars().take(64).collect();
                warnings.push(format!("resolv.conf: nameserver {shown:?} is not an IP address; ignored"));
            }
        }
    }
    (servers, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_in_order_without_repeats() {
        let text = "# generated\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver  fd00::a \n\
                    nameserver 10.96.0.10\noptions ndots:5\n";
        let (servers, warnings) = parse(text);
        assert_eq!(servers, vec!["10.96.0.10".parse::<IpAddr>().unwrap(), "fd00::a".parse().unwrap()]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn bad_lines_are_named_and_skipped() {
        let long = "x".repeat(10_000);
        let (servers, warnings) = parse(&format!(
            "nameserver\nnameserver dns.example\nnameserver {long}\nnameserver fe80::1%eth0\n"
        ));
        assert_eq!(servers, vec!["fe80::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(warnings.len(), 3);
        assert!(warnings[1].contains("\"dns.example\""), "{warnings:?}");
        assert!(warnings.iter().all(|w| w.len() < 200), "{warnings:?}");
        assert!(parse("\u{0}\u{ffff}nameserver").0.is_empty());
    }

    #[test]
    fn a_missing_or_huge_file_is_a_clear_error() {
        let err = nameservers(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read /nonexistent/resolv.conf"), "{err}");
        let dir = std::env::temp_dir().join(format!("trellis-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("resolv.conf");
        std::fs::write(&big, "#".repeat(70_000)).unwrap();
        assert!(matches!(nameservers(&big), Err(ResolvError::TooLarge { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
