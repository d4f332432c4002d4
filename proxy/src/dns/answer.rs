//! One query in, one decision out: answer it from the name table, forward it to the pod's
//! resolvers, or drop it. Only A and AAAA questions of the class IN for a name in the table are
//! answered here (authoritatively, NOERROR with no records when the name has no address of
//! that family, as Istio's agent does: the name exists); everything else goes upstream.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::table::NameTable;

/// The time-to-live of an answer from the table (Istio's agent uses the same 30 seconds).
pub const TTL: u32 = 30;
/// What a UDP answer may take without EDNS (RFC 1035).
pub const UDP_CLASSIC: usize = 512;
/// The most a UDP answer takes even when the client offers more: the size DNS flag day 2020
/// settled on, which passes every path without fragments.
pub const UDP_EDNS_MAX: usize = 1232;
/// TCP carries a two-byte length.
pub const TCP_MAX: usize = u16::MAX as usize;
const HEADER: usize = 12;

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not ours: ask the pod's resolvers.
    Forward,
    /// Not a query (a response, or too short to have an id): nothing to answer.
    Drop,
}

/// Whether the answer travels over UDP (and so must fit what the client can take) or TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub fn answer(query: &[u8], table: &NameTable, transport: Transport) -> Reply {
    let message = match Message::from_vec(query) {
        Ok(message) => message,
        // A query we cannot read still gets an answer when its header is there: clients then
        // fail at once instead of after their timeout.
        Err(_) => return header_only(query, ResponseCode::FormErr),
    };
    if message.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if message.metadata.op_code != OpCode::Query || message.queries.len() != 1 {
        return Reply::Forward;
    }
    let question = &message.queries[0];
    if question.query_class() != DNSClass::IN {
        return Reply::Forward;
    }
    let wanted = question.query_type();
    if wanted != RecordType::A && wanted != RecordType::AAAA {
        return Reply::Forward;
    }
    let Some(addresses) = table.lookup(&question.name().to_ascii()) else {
        return Reply::Forward;
    };
    let mut response = Message::response(message.metadata.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = message.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.checking_disabled = message.metadata.checking_disabled;
    response.add_query(question.clone());
    let name = question.name().clone();
    let records: Vec<Record> = if wanted == RecordType::A {
        addresses.v4.iter().map(|ip| Record::from_rdata(name.clone(), TTL, RData::A(A(*ip)))).collect()
    } else {
        addresses.v6.iter().map(|ip| Record::from_rdata(name.clone(), TTL, RData::AAAA(AAAA(*ip)))).collect()
    };
    response.insert_answers(records);
    let limit = match (transport, &message.edns) {
        (Transport::Tcp, _) => TCP_MAX,
        (Transport::Udp, None) => UDP_CLASSIC,
        (Transport::Udp, Some(edns)) => usize::from(edns.max_payload()).clamp(UDP_CLASSIC, UDP_EDNS_MAX),
    };
    if message.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_EDNS_MAX as u16).set_version(0);
        response.set_edns(edns);
    }
    encode_within(response, limit).unwrap_or_else(|| failure(query))
}

/// The answer, with records taken off the end until it fits (and the truncation bit set, so
/// that the client asks again over TCP).
fn encode_within(mut response: Message, limit: usize) -> Option<Reply> {
    loop {
        let bytes = response.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(Reply::Answer(bytes));
        }
        response.answers.pop()?;
        response.metadata.truncation = true;
    }
}

/// SERVFAIL for `query` (its id and question, when it has them): no resolver answered.
pub fn failure(query: &[u8]) -> Reply {
    match Message::from_vec(query) {
        Ok(message) if message.metadata.message_type == MessageType::Query => {
            let mut response =
                Message::error_msg(message.metadata.id, message.metadata.op_code, ResponseCode::ServFail);
            response.metadata.recursion_desired = message.metadata.recursion_desired;
            response.add_queries(message.queries);
            match response.to_vec() {
                Ok(bytes) => Reply::Answer(bytes),
                Err(_) => header_only(query, ResponseCode::ServFail),
            }
        }
        Ok(_) => Reply::Drop,
        Err(_) => header_only(query, ResponseCode::FormErr),
    }
}

/// A bare header answering `query`'s id, for a query too broken to repeat its question.
fn header_only(query: &[u8], code: ResponseCode) -> Reply {
    // The QR bit: a response is never answered, so two resolvers cannot bounce errors forever.
    let is_response = query.get(2).is_some_and(|b| b & 0x80 != 0);
    // Less than a header is noise, not a query.
    let (Some(id), false) = (query.get(..2).filter(|_| query.len() >= HEADER), is_response) else {
        return Reply::Drop;
    };
    let id = u16::from_be_bytes([id[0], id[1]]);
    match Message::error_msg(id, OpCode::Query, code).to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Drop,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use trellis_xds::config as pb;

    use super::*;

    fn table() -> NameTable {
        let many: Vec<String> = (0..100).map(|i| format!("10.1.0.{i}")).collect();
        NameTable::from_config(&pb::ProxyConfig {
            services: vec![
                pb::Service {
                    name: "api.external.test".into(),
                    addresses: vec!["240.240.0.7".into()],
                    ..Default::default()
                },
                pb::Service { name: "wide.example".into(), addresses: many, ..Default::default() },
            ],
            ..Default::default()
        })
    }

    fn query(name: &str, kind: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn answered(reply: Reply) -> Message {
        match reply {
            Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("not answered: {other:?}"),
        }
    }

    fn addresses(m: &Message) -> Vec<IpAddr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_mesh_name_is_answered_from_the_table() {
        let m = answered(answer(&query("API.external.test.", RecordType::A, None), &table(), Transport::Udp));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(addresses(&m), vec!["240.240.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.answers[0].ttl, TTL);
        assert_eq!(m.queries.len(), 1);
    }

    #[test]
    fn a_family_without_addresses_is_nodata_not_nxdomain() {
        let m =
            answered(answer(&query("api.external.test.", RecordType::AAAA, None), &table(), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn other_names_types_and_classes_go_upstream() {
        let t = table();
        assert_eq!(answer(&query("example.org.", RecordType::A, None), &t, Transport::Udp), Reply::Forward);
        assert_eq!(
            answer(&query("api.external.test.", RecordType::MX, None), &t, Transport::Udp),
            Reply::Forward
        );
        let mut chaos = Message::from_vec(&query("api.external.test.", RecordType::A, None)).unwrap();
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(answer(&chaos.to_vec().unwrap(), &t, Transport::Udp), Reply::Forward);
    }

    #[test]
    fn a_long_answer_is_truncated_over_udp_and_whole_over_tcp() {
        let t = table();
        let classic = answered(answer(&query("wide.example.", RecordType::A, None), &t, Transport::Udp));
        assert!(classic.metadata.truncation);
        assert!(classic.to_vec().unwrap().len() <= UDP_CLASSIC);
        let edns = answered(answer(&query("wide.example.", RecordType::A, Some(4096)), &t, Transport::Udp));
        assert!(edns.metadata.truncation && edns.answers.len() > classic.answers.len());
        assert!(edns.to_vec().unwrap().len() <= UDP_EDNS_MAX);
        let tcp = answered(answer(&query("wide.example.", RecordType::A, None), &t, Transport::Tcp));
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 100);
    }

    #[test]
    fn hostile_bytes_get_formerr_or_nothing_and_never_a_panic() {
        let t = table();
        assert_eq!(answer(&[], &t, Transport::Udp), Reply::Drop);
        assert_eq!(answer(&[0x12], &t, Transport::Udp), Reply::Drop);
        assert_eq!(answer(&[0xab, 0xcd, 0x01, 0x00, 0xff, 0xff], &t, Transport::Udp), Reply::Drop);
        let formerr = answered(answer(&[0xab, 0xcd, 1, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0], &t, Transport::Udp));
        assert_eq!((formerr.metadata.id, formerr.metadata.response_code), (0xabcd, ResponseCode::FormErr));
        // A response (QR set) is never answered: no ping-pong between two servers.
        let mut response = query("api.external.test.", RecordType::A, None);
        response[2] |= 0x80;
        assert_eq!(answer(&response, &t, Transport::Udp), Reply::Drop);
        assert_eq!(answer(&response[..5], &t, Transport::Udp), Reply::Drop);
        // Every prefix and a flipped byte at every offset: an answer, a forward or a drop.
        let good = query("api.external.test.", RecordType::A, Some(1232));
        for end in 0..good.len() {
            let _ = answer(&good[..end], &t, Transport::Udp);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = answer(&bad, &t, Transport::Tcp);
        }
        // A compression pointer that points at itself.
        let mut looped = good[..12].to_vec();
        looped[5] = 1;
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(answer(&looped, &t, Transport::Udp), Reply::Answer(_)));
    }

    #[test]
    fn servfail_repeats_the_question() {
        let m = answered(failure(&query("example.org.", RecordType::A, None)));
        assert_eq!((m.metadata.id, m.metadata.response_code), (0x1234, ResponseCode::ServFail));
        assert_eq!(m.queries.len(), 1);
        assert_eq!(failure(&[1]), Reply::Drop);
    }
}
