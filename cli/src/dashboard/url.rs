//! An `http://host:port/base` the user gives (`--prometheus`), checked once at start.

use std::net::SocketAddr;

use hyper::Uri;

#[derive(Clone, Debug)]
pub struct HttpUrl {
    /// As the user wrote it, for messages.
    pub text: String,
    host: String,
    port: u16,
    /// The base path without its trailing slash (empty for none).
    pub path: String,
}

impl HttpUrl {
    /// `flag` names the option in messages.
    pub fn parse(flag: &str, input: &str) -> Result<HttpUrl, String> {
        let input = input.trim();
        let with_scheme = if input.contains("://") { input.to_owned() } else { format!("http://{input}") };
        let uri: Uri = with_scheme.parse().map_err(|e| format!("{flag} {input:?}: not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{flag} {input:?}: only http:// is supported"));
        }
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => a,
            _ => {
                return Err(format!(
                    "{flag} {input:?}: no host (or user information, which is not supported)"
                ));
            }
        };
        let port = match authority.as_str().strip_prefix(authority.host()).and_then(|r| r.strip_prefix(':')) {
            None => 80,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(format!("{flag} {input:?}: {text:?} is not a port number")),
            },
        };
        if uri.query().is_some() {
            return Err(format!("{flag} {input:?}: a query string is not supported"));
        }
        Ok(HttpUrl {
            text: input.to_owned(),
            host: authority.host().trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The first address the host resolves to.
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("{}: cannot resolve {}: {e}", self.text, self.host))?;
        addrs.next().ok_or_else(|| format!("{}: {} has no address", self.text, self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let url = HttpUrl::parse("--prometheus", "http://prom:9090/prometheus/").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("prom", 9090, "/prometheus"));
        assert_eq!(HttpUrl::parse("--prometheus", "127.0.0.1:9090").unwrap().port, 9090);
        for bad in
            ["https://x", "http://:9", "http://x:99999", "http://u@x", "http://x/?a=b", "ftp://x", "a b"]
        {
            let e = HttpUrl::parse("--prometheus", bad).unwrap_err();
            assert!(e.starts_with("--prometheus"), "{e}");
        }
    }
}
