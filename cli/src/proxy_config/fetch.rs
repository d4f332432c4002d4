//! GETs admin pages over one HTTP/1.1 connection (a TCP connection to `--admin`, or a pod's
//! port-forward stream), one after the other, each answer capped in size. The caller bounds
//! the whole exchange in time.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::answers::quote_start;

/// The largest answer read. A config dump of a proxy that sees thousands of services is a few
/// MiB of JSON.
pub const MAX_BODY: usize = 32 << 20;
const MAX_ERROR_BODY: usize = 4 << 10;

/// Fetches `paths` in order over `io`; `source` names where it leads, for messages.
pub async fn pages<S>(io: S, source: &str, paths: &[&str]) -> Result<Vec<Bytes>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("{source}: HTTP handshake: {e}"))?;
    // Drives the connection; ends with it (or with the runtime).
    tokio::spawn(connection);
    let mut bodies = Vec::with_capacity(paths.len());
    for path in paths {
        sender
            .ready()
            .await
            .map_err(|e| format!("{source}: the connection closed before GET {path}: {e}"))?;
        let request = Request::get(*path)
            // The admin port answers any Host; this one says who asks.
            .header(header::HOST, "localhost")
            .header(header::USER_AGENT, concat!("trellis/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the request for {path}: {e}"))?;
        let response =
            sender.send_request(request).await.map_err(|e| format!("{source}: GET {path}: {e}"))?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = Limited::new(response.into_body(), MAX_ERROR_BODY).collect().await;
            let start = body.map(|b| quote_start(&b.to_bytes())).unwrap_or_default();
            let hint = if status == StatusCode::NOT_FOUND {
                " (is this a Trellis proxy's admin port, 15000, of this version?)"
            } else {
                ""
            };
            return Err(format!("{source}: GET {path} answered {status}{hint}: {start}"));
        }
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_BODY as u64) {
            return Err(too_large(source, path));
        }
        match Limited::new(response.into_body(), MAX_BODY).collect().await {
            Ok(body) => bodies.push(body.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => return Err(too_large(source, path)),
            Err(e) => return Err(format!("{source}: reading the answer to GET {path}: {e}")),
        }
    }
    Ok(bodies)
}

fn too_large(source: &str, path: &str) -> String {
    format!("{source}: the answer to GET {path} is larger than {} MiB; refusing to read it", MAX_BODY >> 20)
}
