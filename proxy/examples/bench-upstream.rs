//! The benchmark's upstream: answers every request with a small fixed body, as fast as it can
//! (HTTP/1.1 keep-alive). `bench-upstream ADDR [both]`: with `both`, HTTP/2 prior knowledge
//! too (for `scripts/build-pgo.sh`'s training; the benchmarks keep the plain HTTP/1.1 server).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18080".to_owned());
    let both = std::env::args().nth(2).as_deref() == Some("both");
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("bench-upstream listening on {addr}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello from upstream\n",
                    ))))
                });
                let io = TokioIo::new(stream);
                let _ = if both {
                    auto::Builder::new(TokioExecutor::new()).serve_connection(io, service).await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                        .map_err(Into::into)
                };
            });
        }
    })
}
