//! The floor of any HTTP/1.1 proxy built on hyper and tokio: a keep-alive server connection,
//! a pool of keep-alive client connections (each driven by its own task, as Trellis does), and
//! nothing else: no routing, header hygiene, limits, timers or metrics. `bench/proxy-instructions.sh`
//! counts its instructions per request next to Trellis's and nginx's, so that what Trellis adds
//! on top of hyper can be told from what hyper itself costs.
//!
//! `hyper-floor LISTEN UPSTREAM` (both `host:port`; defaults 127.0.0.1:18600 and :18080).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, hyper::Error>;

/// Idle upstream connections (one runtime thread: never contended).
static POOL: Mutex<Vec<http1::SendRequest<Incoming>>> = Mutex::new(Vec::new());

async fn forward(upstream: SocketAddr, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut sender = match pooled {
        Some(sender) => sender,
        None => match dial(upstream).await {
            Ok(sender) => sender,
            Err(e) => return Ok(bad_gateway(e)),
        },
    };
    match sender.send_request(request).await {
        Ok(response) => {
            POOL.lock().unwrap_or_else(|e| e.into_inner()).push(sender);
            Ok(response.map(|body| body.boxed()))
        }
        Err(e) => Ok(bad_gateway(e.into())),
    }
}

async fn dial(upstream: SocketAddr) -> Result<http1::SendRequest<Incoming>, Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn bad_gateway(e: Box<dyn std::error::Error>) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(format!("{e}\n"))).map_err(|n| match n {}).boxed());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:18600").parse()?;
    let upstream: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:18080").parse()?;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => accepted?.0,
                _ = terminate.recv() => return Ok(()),
            };
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let service = service_fn(move |request| forward(upstream, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
