//! Zipkin's v2 JSON (`POST /api/v2/spans`): a list of spans with 128-bit (or, as they came,
//! 64-bit) trace ids, microsecond times, the proxy as `localEndpoint` and the caller as
//! `remoteEndpoint`, and string tags — what Envoy's Zipkin tracer sends for Istio.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use serde::Serialize;

use super::limited;
use crate::trace::context::hex_id;
use crate::trace::node::LocalNode;
use crate::trace::span::{Kind, SpanRecord};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Span<'a> {
    trace_id: String,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    kind: &'static str,
    name: &'a str,
    timestamp: u64,
    duration: u64,
    local_endpoint: Endpoint<'a>,
    /// SERVER spans: the caller. (A CLIENT span's remote end is the upstream, which the
    /// span does not record.)
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_endpoint: Option<Endpoint<'a>>,
    tags: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

fn endpoint(service_name: Option<&str>, ip: Option<IpAddr>, port: Option<u16>) -> Endpoint<'_> {
    Endpoint {
        service_name,
        ipv4: ip.filter(IpAddr::is_ipv4).map(|ip| ip.to_string()),
        ipv6: ip.filter(IpAddr::is_ipv6).map(|ip| ip.to_string()),
        port,
    }
}

pub(super) fn encode(batch: &[SpanRecord], local: &LocalNode, max_tag_length: usize) -> Bytes {
    let spans: Vec<Span<'_>> = batch
        .iter()
        .map(|s| Span {
            trace_id: hex_id(s.trace_id, if s.short_trace_id { 16 } else { 32 }),
            id: hex_id(u128::from(s.span_id), 16),
            parent_id: s.parent_id.map(|p| hex_id(u128::from(p), 16)),
            kind: match s.kind {
                Kind::Client => "CLIENT",
                Kind::Server => "SERVER",
            },
            name: &s.name,
            timestamp: s.start_unix_nanos / 1_000,
            duration: (s.duration_nanos / 1_000).max(1),
            local_endpoint: endpoint(Some(&local.service_name), local.ip, None),
            remote_endpoint: (s.kind == Kind::Server)
                .then(|| endpoint(None, Some(s.peer.ip()), Some(s.peer.port()))),
            tags: s.tags.iter().map(|(k, v)| (k.as_ref(), limited(v, max_tag_length))).collect(),
        })
        .collect();
    // Serializing plain strings and numbers cannot fail; an empty list would be sent if it did.
    Bytes::from(serde_json::to_vec(&spans).unwrap_or_else(|_| b"[]".to_vec()))
}
