//! The ADS service as trellisd serves it: tonic's generated server, except for how responses
//! are encoded.
//!
//! tonic encodes a stream's responses into one buffer per stream and keeps that buffer for the
//! stream's whole life at the size of the largest response it ever encoded (`EncodedBytes` in
//! tonic 0.14's `codec/encode.rs` hands out `split_to` parts of it and reuses the allocation
//! once they are written; no codec setting lets it shrink). A control plane holds one stream
//! per proxy, and every proxy's first sync fills that buffer with a full response part
//! (`MAX_RESPONSE_BYTES`), so each idle proxy kept about 8 KiB of touched memory for nothing.
//! Here each response is encoded into a buffer of exactly its size, which HTTP/2 drops once it
//! is written: an idle stream holds no encode buffer. It is written straight from the shared
//! resources ([`super::wire`]), with no response message built first. Requests are still
//! decoded by tonic.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::Frame;
use tokio_stream::Stream as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::{Bytes, Service, StdError, http};
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use trellis_xds::codec::XdsCodec;
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::server::XdsServer;
use super::session::Outgoing;
use super::wire;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// gRPC's message prefix: a compression flag and the length.
const PREFIX: usize = 5;

/// [`XdsServer`] as a gRPC service for [`tonic::transport::Server::add_service`].
#[derive(Clone)]
pub struct AdsService {
    server: Arc<XdsServer>,
    max_decoding_message_size: usize,
}

impl AdsService {
    pub fn new(server: XdsServer, max_decoding_message_size: usize) -> Self {
        Self { server: Arc::new(server), max_decoding_message_size }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            Ok(match delta(server, request, max).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            })
        })
    }
}

async fn delta<B>(
    server: Arc<XdsServer>,
    request: http::Request<B>,
    max_decoding_message_size: usize,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    if request.uri().path() != DELTA_PATH {
        return Err(Status::unimplemented(""));
    }
    // The same answer as tonic's without compression support.
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        let mut status =
            Status::unimplemented(format!("Content is compressed with `{encoding}` which isn't supported"));
        // What the gRPC compression spec asks a server to say it accepts instead.
        status.metadata_mut().insert("grpc-accept-encoding", MetadataValue::from_static("identity"));
        return Err(status);
    }
    let decoder = XdsCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default().decoder();
    let request =
        request.map(|body| Streaming::new_request(decoder, body, None, Some(max_decoding_message_size)));
    let responses = server.delta_stream(tonic::Request::from_http(request)).await?;
    let body = Encoded { server, responses: Some(responses) };
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
    Ok(response)
}

/// The response body: each message in a buffer of its own, then the status as trailers.
struct Encoded {
    server: Arc<XdsServer>,
    /// `None` once the trailers are out.
    responses: Option<ReceiverStream<Box<Outgoing>>>,
}

impl http_body::Body for Encoded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Some(responses) = self.responses.as_mut() else { return Poll::Ready(None) };
        let status = match ready!(Pin::new(responses).poll_next(cx)) {
            Some(outgoing) => match encode(&outgoing) {
                Ok(data) => {
                    self.server.count_sent(data.len() - PREFIX);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(status) => status,
            },
            None => Status::ok(""),
        };
        self.responses = None;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(status.add_header(&mut trailers).map(|()| Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.responses.is_none()
    }
}

/// One gRPC message: uncompressed, its length, the message; exactly as large as it needs.
fn encode(outgoing: &Outgoing) -> Result<Bytes, Status> {
    let len = wire::encoded_len(outgoing);
    let prefix_len = u32::try_from(len)
        .map_err(|_| Status::resource_exhausted(format!("a response of {len} bytes is too large")))?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix_len.to_be_bytes());
    wire::encode(outgoing, &mut buf);
    debug_assert_eq!(buf.len(), PREFIX + len);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_message_is_prefixed_with_its_length_and_fills_its_buffer_exactly() {
        let outgoing = Outgoing {
            kind: trellis_xds::types::ResourceType::Service,
            nonce: "7".into(),
            generation: 3,
            resources: Vec::new(),
            removed: vec!["gone".into()],
        };
        let data = encode(&outgoing).unwrap();
        let response = outgoing.into_response();
        let len = response.encoded_len();
        assert_eq!(data.len(), PREFIX + len);
        assert_eq!(data[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(data[1..PREFIX].try_into().unwrap()) as usize, len);
        assert_eq!(DeltaDiscoveryResponse::decode(&data[PREFIX..]).unwrap(), response);
    }
}
