//! gRPC probes: `grpc.health.v1.Health/Check` over plaintext HTTP/2, SERVING passes, as the
//! kubelet sends it. The two messages are written out here with prost's derive: they are the
//! whole of the health protocol a probe needs, and `tonic-health` is not among our
//! dependencies. Public so that tests can serve the same messages.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// The method's path.
pub const CHECK: &str = "/grpc.health.v1.Health/Check";

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// The name in the proto, which is what people grep for.
    pub fn name(self) -> &'static str {
        match self {
            ServingStatus::Unknown => "UNKNOWN",
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

/// Asks the app on `stream` (reached at `authority`) whether `service` ("" for the whole
/// server) is serving.
pub(super) async fn check(stream: TcpStream, authority: &str, service: &str) -> Result<(), String> {
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    let origin: Uri =
        format!("http://{authority}").parse().map_err(|_| format!("{authority:?} is not an authority"))?;
    let mut client = tonic::client::Grpc::with_origin(Connection(sender), origin);
    let call = async {
        client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        let request = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        client
            .unary(request, PathAndQuery::from_static(CHECK), codec)
            .await
            .map_err(|status| format!("rpc error: code = {:?} desc = {}", status.code(), status.message()))
    };
    // The connection is driven here, beside the call, and closed with it.
    let response = tokio::select! {
        response = call => response?,
        done = connection => return Err(match done {
            Ok(()) => "connection closed before an answer".to_owned(),
            Err(e) => format!("HTTP/2: {e}"),
        }),
    };
    match ServingStatus::try_from(response.into_inner().status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("service unhealthy (responded with {})", other.name())),
        Err(_) => Err("service unhealthy (responded with an unknown status)".to_owned()),
    }
}

/// One HTTP/2 connection, as the service tonic's client calls through.
struct Connection(http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}
