//! The DNS proxy's reading of a query (`trellis_proxy::dns::answer`), which every process in a
//! pod that captures its DNS can send to 15053.
//!
//! Input: the bytes of one UDP datagram (or TCP message). Properties: nothing panics; an answer
//! parses as a DNS response with the query's id, fits what the transport allows, and repeats
//! the question; a response is never answered.
#![no_main]

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use trellis_proxy::dns::answer::{Reply, Transport, UDP_EDNS_MAX, answer};
use trellis_proxy::dns::table::NameTable;
use trellis_xds::config as pb;

fuzz_target!(|data: &[u8]| {
    let table = NameTable::from_config(&pb::ProxyConfig {
        services: vec![
            pb::Service {
                name: "api.external.test".into(),
                aliases: vec!["api".into()],
                addresses: vec!["240.240.0.7".into(), "fd00::7".into()],
                ports: Vec::new(),
            },
            pb::Service {
                name: "*.wild.test".into(),
                aliases: Vec::new(),
                addresses: (0..60).map(|i| format!("10.0.0.{i}")).collect(),
                ports: Vec::new(),
            },
        ],
        ..Default::default()
    });
    for transport in [Transport::Udp, Transport::Tcp] {
        match answer(data, &table, transport) {
            Reply::Answer(bytes) => {
                if transport == Transport::Udp {
                    assert!(bytes.len() <= UDP_EDNS_MAX, "a UDP answer of {} bytes", bytes.len());
                }
                assert_eq!(bytes[..2], data[..2], "the answer carries the query's id");
                let message = Message::from_vec(&bytes).expect("an answer parses");
                assert_eq!(message.metadata.message_type, MessageType::Response);
                assert!(data.len() >= 12 && data[2] & 0x80 == 0, "only a query is answered");
            }
            Reply::Forward => {
                let query = Message::from_vec(data).expect("only a readable query goes upstream");
                assert_eq!(query.metadata.message_type, MessageType::Query);
            }
            Reply::Drop => {}
        }
    }
});
