//! OTLP: the spans as `ExportTraceServiceRequest` (the vendored OpenTelemetry protobufs), sent
//! over gRPC (`TraceService/Export`) or as an HTTP POST of the encoded message. The resource is
//! the proxy (`service.name` is Envoy's service cluster, as Istio's proxies report it).

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use trellis_xds::config as pb;
use trellis_xds::opentelemetry::proto::collector::trace::v1 as collector;
use trellis_xds::opentelemetry::proto::common::v1 as common;
use trellis_xds::opentelemetry::proto::resource::v1 as resource;
use trellis_xds::opentelemetry::proto::trace::v1 as trace;

use super::limited;
use crate::config::ConfigError;
use crate::trace::node::LocalNode;
use crate::trace::span::{Kind, SpanRecord};

/// The W3C `sampled` flag, and "the parent is remote / known" bits of OTLP's span flags.
const SAMPLED_FLAG: u32 = 0x01;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn string(key: &str, value: &str) -> common::KeyValue {
    common::KeyValue {
        key: key.to_owned(),
        value: Some(common::AnyValue {
            value: Some(common::any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

pub(super) fn request(
    batch: &[SpanRecord],
    local: &LocalNode,
    max_tag_length: usize,
) -> collector::ExportTraceServiceRequest {
    let spans = batch
        .iter()
        .map(|s| trace::Span {
            trace_id: s.trace_id.to_be_bytes().to_vec(),
            span_id: s.span_id.to_be_bytes().to_vec(),
            parent_span_id: s.parent_id.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            // Every parent a proxy's span has came from another process.
            flags: SAMPLED_FLAG | if s.parent_id.is_some() { HAS_IS_REMOTE | IS_REMOTE } else { 0 },
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Client => trace::span::SpanKind::Client,
                Kind::Server => trace::span::SpanKind::Server,
            } as i32,
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.start_unix_nanos.saturating_add(s.duration_nanos),
            attributes: s.tags.iter().map(|(k, v)| string(k, limited(v, max_tag_length))).collect(),
            status: s.error.then(|| trace::Status {
                message: String::new(),
                code: trace::status::StatusCode::Error as i32,
            }),
            ..Default::default()
        })
        .collect();
    collector::ExportTraceServiceRequest {
        resource_spans: vec![trace::ResourceSpans {
            resource: Some(resource::Resource {
                attributes: vec![string("service.name", &local.service_name)],
                dropped_attributes_count: 0,
            }),
            scope_spans: vec![trace::ScopeSpans {
                scope: Some(common::InstrumentationScope {
                    name: "trellis-proxy".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

pub(super) fn encode(batch: &[SpanRecord], local: &LocalNode, max_tag_length: usize) -> Bytes {
    Bytes::from(request(batch, local, max_tag_length).encode_to_vec())
}

/// A collector's TraceService: one lazily connected channel per address, tried in order.
#[derive(Debug)]
pub(super) struct GrpcTarget {
    endpoints: Vec<Endpoint>,
    /// One per endpoint, made on the first export (a channel needs a runtime) and kept.
    channels: std::sync::OnceLock<Vec<Channel>>,
    metadata: Vec<(tonic::metadata::AsciiMetadataKey, tonic::metadata::AsciiMetadataValue)>,
    timeout: Duration,
}

impl GrpcTarget {
    pub(super) fn compile(
        addresses: &[String],
        authority: &str,
        config: &pb::TracingOtlpGrpc,
        timeout: Duration,
    ) -> Result<GrpcTarget, ConfigError> {
        let err = |field: String, message: String| ConfigError {
            field: format!("tracing.provider.{field}"),
            message,
        };
        let origin = format!("http://{authority}")
            .parse::<http::Uri>()
            .map_err(|_| err("authority".into(), format!("{authority:?} is not a host")))?;
        let mut endpoints = Vec::with_capacity(addresses.len());
        for (i, address) in addresses.iter().enumerate() {
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| err(format!("addresses[{i}]"), format!("{address:?}: {e}")))?
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                .origin(origin.clone());
            endpoints.push(endpoint);
        }
        let mut metadata = Vec::with_capacity(config.initial_metadata.len());
        for (name, value) in &config.initial_metadata {
            let key = name.parse::<tonic::metadata::AsciiMetadataKey>().map_err(|_| {
                err("otlp_grpc.initial_metadata".into(), format!("{name:?} is not a metadata key"))
            })?;
            let value = value.parse::<tonic::metadata::AsciiMetadataValue>().map_err(|_| {
                err(format!("otlp_grpc.initial_metadata.{name}"), "the value is not ASCII metadata".into())
            })?;
            metadata.push((key, value));
        }
        Ok(GrpcTarget { endpoints, channels: std::sync::OnceLock::new(), metadata, timeout })
    }

    pub(super) async fn export(&self, request: collector::ExportTraceServiceRequest) -> Result<(), String> {
        let channels =
            self.channels.get_or_init(|| self.endpoints.iter().map(Endpoint::connect_lazy).collect());
        let mut last = String::from("no address");
        for (endpoint, channel) in self.endpoints.iter().zip(channels) {
            let mut client = collector::trace_service_client::TraceServiceClient::new(channel.clone());
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(self.timeout);
            for (key, value) in &self.metadata {
                call.metadata_mut().insert(key.clone(), value.clone());
            }
            match tokio::time::timeout(self.timeout, client.export(call)).await {
                Ok(Ok(answer)) => {
                    return match answer.into_inner().partial_success {
                        Some(partial) if partial.rejected_spans > 0 => Err(format!(
                            "the collector rejected {} spans: {}",
                            partial.rejected_spans, partial.error_message
                        )),
                        _ => Ok(()),
                    };
                }
                Ok(Err(status)) => last = format!("{}: {status}", endpoint.uri()),
                Err(_) => last = format!("{}: timed out", endpoint.uri()),
            }
        }
        Err(last)
    }
}
