//! A small HTTP/1.1 client for the demo: keep-alive connections to one address, reused across
//! requests, a deadline over each request, and a cap on the answer's size. The demo apps use it
//! for their downstream calls, the demo for its load, probes and metrics.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Answers larger than this are refused (a Prometheus page of the demo is a few tens of KiB).
const MAX_BODY: usize = 4 << 20;
/// Idle connections kept per address.
const MAX_IDLE: usize = 32;

/// Keep-alive connections to one address.
pub struct Pool {
    target: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Pool {
    pub fn new(target: SocketAddr) -> Pool {
        Pool { target, idle: Mutex::new(Vec::new()) }
    }

    /// GET `path` with this Host and extra headers; the whole exchange within `timeout`.
    pub async fn get(
        &self,
        authority: &str,
        path: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(timeout, self.exchange(authority, path, headers)).await {
            Ok(result) => result,
            Err(_) => Err(format!("{}: no answer within {}ms", self.target, timeout.as_millis())),
        }
    }

    async fn exchange(&self, authority: &str, path: &str, headers: &HeaderMap) -> Result<Answer, String> {
        let mut sender = self.connection().await?;
        let mut request = Request::get(path)
            .header(header::HOST, authority)
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("request for {authority}{path}: {e}"))?;
        request.headers_mut().extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{}: request failed: {e}", self.target))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{}: reading the answer: {e}", self.target))?
            .to_bytes();
        self.put_back(sender);
        Ok(Answer { status, body })
    }

    /// An idle connection that is still open, or a new one.
    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = tokio::net::TcpStream::connect(self.target)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.target))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: HTTP handshake: {e}", self.target))?;
        // Drives the connection until either side closes it.
        tokio::spawn(connection);
        Ok(sender)
    }

    fn put_back(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(sender);
        }
    }
}

/// One GET on a connection of its own (probes and metrics).
pub async fn get_once(target: SocketAddr, path: &str, timeout: Duration) -> Result<Answer, String> {
    Pool::new(target).get(&target.to_string(), path, &HeaderMap::new(), timeout).await
}
