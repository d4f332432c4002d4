//! A decided response written straight to its wire form, from the shared resources.
//!
//! Building a `DeltaDiscoveryResponse` first copies every resource's name and version into a
//! message that lives only until it is encoded: a first sync of a few thousand small resources
//! (the workload table) made a few thousand short-lived allocations per proxy. Here a response
//! is one allocation of exactly its size; connecting 1,000 to 2,000 proxies took a quarter to a
//! third less of trellisd's CPU (`bench/control-plane.sh`, RESULTS.md). The bytes are those
//! prost writes for [`Outgoing::into_response`] (fields in tag order, proto3 defaults left
//! out), which the tests check.

use std::io::Write as _;

use pbjson_types::Any;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::resources::Entry;
use super::session::Outgoing;

// DeltaDiscoveryResponse
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;
// Resource
const VERSION: u32 = 1;
const RESOURCE: u32 = 2;
const NAME: u32 = 3;
// google.protobuf.Any
const ANY_TYPE_URL: u32 = 1;
const ANY_VALUE: u32 = 2;

/// A resource's version as the proxy sees it: 16 hex digits.
type Version = [u8; 16];

fn version(entry: &Entry) -> Version {
    let mut text = [0u8; 16];
    // 16 hex digits of a u64 always fit.
    let _ = write!(&mut text[..], "{:016x}", entry.version);
    text
}

/// The length of a length-delimited field holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string or bytes field, left out when empty as proto3 does.
fn optional_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() { 0 } else { field_len(tag, bytes.len()) }
}

fn put_field(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

fn put_optional(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_field(tag, bytes, buf);
    }
}

fn any_len(any: &Any) -> usize {
    optional_len(ANY_TYPE_URL, any.type_url.as_bytes()) + optional_len(ANY_VALUE, &any.value)
}

fn resource_len(entry: &Entry) -> usize {
    field_len(VERSION, Version::default().len())
        + field_len(RESOURCE, any_len(&entry.any))
        + optional_len(NAME, entry.name.as_bytes())
}

/// The encoded length of the response, without gRPC's prefix.
pub fn encoded_len(outgoing: &Outgoing) -> usize {
    let generation = outgoing.generation.to_string();
    optional_len(SYSTEM_VERSION_INFO, generation.as_bytes())
        + outgoing.resources.iter().map(|e| field_len(RESOURCES, resource_len(e))).sum::<usize>()
        + optional_len(TYPE_URL, outgoing.kind.type_url().as_bytes())
        + optional_len(NONCE, outgoing.nonce.as_bytes())
        + outgoing.removed.iter().map(|name| field_len(REMOVED_RESOURCES, name.len())).sum::<usize>()
}

/// Appends the response's encoding to `buf`.
pub fn encode(outgoing: &Outgoing, buf: &mut Vec<u8>) {
    put_optional(SYSTEM_VERSION_INFO, outgoing.generation.to_string().as_bytes(), buf);
    for entry in &outgoing.resources {
        encode_key(RESOURCES, WireType::LengthDelimited, buf);
        encode_varint(resource_len(entry) as u64, buf);
        put_field(VERSION, &version(entry), buf);
        encode_key(RESOURCE, WireType::LengthDelimited, buf);
        encode_varint(any_len(&entry.any) as u64, buf);
        put_optional(ANY_TYPE_URL, entry.any.type_url.as_bytes(), buf);
        put_optional(ANY_VALUE, &entry.any.value, buf);
        put_optional(NAME, entry.name.as_bytes(), buf);
    }
    put_optional(TYPE_URL, outgoing.kind.type_url().as_bytes(), buf);
    put_optional(NONCE, outgoing.nonce.as_bytes(), buf);
    for name in &outgoing.removed {
        put_field(REMOVED_RESOURCES, name.as_bytes(), buf);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;
    use trellis_xds::types::ResourceType;

    use super::*;

    fn entry(name: &str, version: u64, type_url: &str, value: Vec<u8>) -> Arc<Entry> {
        Arc::new(Entry {
            name: name.into(),
            version,
            any: Any { type_url: type_url.into(), value: value.into() },
            deps: vec!["ignored".into()],
        })
    }

    fn outgoing(resources: Vec<Arc<Entry>>, removed: &[&str], nonce: &str, generation: u64) -> Outgoing {
        Outgoing {
            kind: ResourceType::Workload,
            nonce: nonce.into(),
            generation,
            resources,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn assert_same_as_prost(outgoing: Outgoing) {
        let mut written = Vec::new();
        encode(&outgoing, &mut written);
        assert_eq!(written.len(), encoded_len(&outgoing), "the length computed up front");
        let expected = outgoing.into_response().encode_to_vec();
        assert_eq!(written, expected);
    }

    #[test]
    fn a_response_is_written_byte_for_byte_as_prost_writes_it() {
        let url = ResourceType::Workload.type_url();
        assert_same_as_prost(outgoing(
            vec![
                entry("uid-1", 0xdead_beef, url, b"\x0a\x03abc".to_vec()),
                // Long enough for multi-byte length prefixes at every level.
                entry(&"n".repeat(300), u64::MAX, url, vec![7; 20_000]),
            ],
            &["gone-1", "gone-2"],
            "42",
            1_234_567,
        ));
    }

    #[test]
    fn empty_parts_are_left_out_as_proto3_does() {
        // An empty resource body, an empty name, an empty removed name and no nonce: each is
        // where a hand-written encoder most easily differs from the generated one.
        assert_same_as_prost(outgoing(vec![entry("", 0, "", Vec::new())], &[""], "", 0));
        assert_same_as_prost(outgoing(Vec::new(), &[], "1", 7));
    }

    #[test]
    fn what_is_written_decodes_to_the_resources_sent() {
        let url = ResourceType::Workload.type_url();
        let out = outgoing(vec![entry("a", 1, url, vec![1, 2, 3])], &["b"], "9", 3);
        let mut written = Vec::new();
        encode(&out, &mut written);
        let decoded = trellis_xds::discovery::DeltaDiscoveryResponse::decode(&written[..]).unwrap();
        assert_eq!(decoded.resources[0].name, "a");
        assert_eq!(decoded.resources[0].version, "0000000000000001");
        assert_eq!(decoded.resources[0].resource.as_ref().unwrap().value, vec![1, 2, 3]);
        assert_eq!(decoded.removed_resources, vec!["b".to_string()]);
        assert_eq!(decoded.system_version_info, "3");
        assert_eq!(decoded.type_url, url);
    }
}
