//! What the zone answers to one question: a pure function of the zone data, the name, the
//! type and the client's address, so it is tested without sockets.

use crate::{NodeAddr, ZoneData};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Each node's round trip to a client's network, microseconds.
pub type RoundTripsUs = BTreeMap<String, u32>;

/// The answer to one question.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    /// The response code.
    pub code: ResponseCode,
    /// Whether it speaks for the zone (false only for names outside it).
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of a negative answer).
    pub authorities: Vec<Record>,
    /// The additional section (the SRV target's addresses).
    pub additionals: Vec<Record>,
    /// Whether the client's subnet chose the answer (`closest`), for the ECS scope.
    pub used_subnet: bool,
}

/// The query's EDNS Client Subnet (RFC 7871), if it carries one.
pub(crate) fn client_subnet(edns: Option<&hickory_server::proto::op::Edns>) -> Option<ClientSubnet> {
    match edns?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some(*s),
        _ => None,
    }
}

/// `name` made absolute and lower case.
fn normal(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    if n.ends_with('.') { n } else { format!("{n}.") }
}

/// Bits two addresses share from the left (0 across families): how `closest` measures nearness.
pub fn common_prefix(a: IpAddr, b: IpAddr) -> u32 {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros(),
        _ => 0,
    }
}

/// A round trip as `closest` compares it: whole milliseconds, since differences below that are
/// measurement noise, where the address prefix says more.
pub fn rtt_class(us: u32) -> u32 {
    us / 1000
}

/// Answers `qtype` for `qname` from `zone`, for a client at `client`, with nothing measured.
pub fn answer(zone: &ZoneData, qname: &str, qtype: RecordType, client: IpAddr) -> Answer {
    answer_near(zone, qname, qtype, client, &mut RoundTripsUs::new)
}

/// Answers `qtype` for `qname` from `zone`, for a client at `client`; `near` gives each node's
/// measured round trip to the client's network, asked only for a `closest` application.
pub fn answer_near(
    zone: &ZoneData,
    qname: &str,
    qtype: RecordType,
    client: IpAddr,
    near: &mut dyn FnMut() -> RoundTripsUs,
) -> Answer {
    let origin = normal(&zone.origin);
    let q = normal(qname);
    let ttl = zone.ttl.max(1);
    let Ok(origin_name) = Name::from_ascii(&origin) else {
        return Answer { code: ResponseCode::ServFail, ..Default::default() };
    };
    let name = |relative: &str| Name::from_ascii(format!("{relative}.{origin}")).ok();
    let record = |n: Name, data: RData| Record::from_rdata(n, ttl, data);
    let soa = || {
        let mname = name(&zone.ns_host).unwrap_or_else(|| origin_name.clone());
        let rname = name("hostmaster").unwrap_or_else(|| origin_name.clone());
        // Refresh, retry and expire matter only to secondaries, which this zone has none of.
        record(origin_name.clone(), RData::SOA(SOA::new(mname, rname, zone.serial, 3600, 600, 86_400, ttl)))
    };
    let addresses = |node: &str, n: &Name, want: RecordType| -> Vec<Record> {
        let Some(a) = zone.nodes.get(node) else { return Vec::new() };
        let v4 = a.v4.filter(|_| matches!(want, RecordType::A | RecordType::ANY)).map(|ip| RData::A(A(ip)));
        let v6 =
            a.v6.filter(|_| matches!(want, RecordType::AAAA | RecordType::ANY))
                .map(|ip| RData::AAAA(AAAA(ip)));
        v4.into_iter().chain(v6).map(|d| record(n.clone(), d)).collect()
    };
    let mut out = Answer { authoritative: true, ..Default::default() };
    let negative = |mut out: Answer, code| {
        out.code = code;
        out.authorities.push(soa());
        out
    };
    let relative = if q == origin {
        None
    } else if let Some(r) = q.strip_suffix(&format!(".{origin}")) {
        Some(r.to_owned())
    } else {
        return Answer { code: ResponseCode::Refused, ..Default::default() };
    };
    let Some(relative) = relative else {
        // The apex.
        match qtype {
            RecordType::SOA => out.answers.push(soa()),
            RecordType::NS => {
                if let Some(ns) = name(&zone.ns_host) {
                    out.answers.push(record(origin_name.clone(), RData::NS(NS(ns.clone()))));
                    out.additionals = addresses(&zone.ns_host, &ns, RecordType::ANY);
                }
            }
            _ => return negative(out, ResponseCode::NoError),
        }
        return out;
    };
    let mut preferred = |app: &str| -> Option<(&str, bool)> {
        let ranked = zone.apps.get(app)?;
        let live = || ranked.iter().filter_map(|n| zone.nodes.get(n).map(|a| (n, a)));
        if zone.closest.contains(app) {
            let rank =
                |n: &String| std::cmp::Reverse(ranked.iter().position(|r| r == n).unwrap_or(usize::MAX));
            let bits = |a: &NodeAddr| {
                [a.v4.map(IpAddr::V4), a.v6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                    .map(|ip| common_prefix(ip, client))
                    .max()
                    .unwrap_or(0)
            };
            // The shortest measured round trip in whole milliseconds (finer is noise), then the
            // longest common prefix, then rank order; before any is measured, prefix and rank.
            let rtt = near();
            let measured = live().filter_map(|(n, a)| rtt.get(n).map(|us| (n, a, *us)));
            if let Some((n, ..)) =
                measured.max_by_key(|(n, a, us)| (std::cmp::Reverse(rtt_class(*us)), bits(a), rank(n)))
            {
                return Some((n.as_str(), true));
            }
            let (best, _) = live().max_by_key(|(n, a)| (bits(a), rank(n)))?;
            return Some((best.as_str(), true));
        }
        ranked.iter().find(|n| zone.nodes.contains_key(*n)).map(|n| (n.as_str(), false))
    };
    // `_APP._mp._udp`: the preferred server's MP port.
    if let Some(app) = relative.strip_prefix('_').and_then(|r| r.strip_suffix("._mp._udp"))
        && zone.apps.contains_key(app)
    {
        let Some((node, used)) = preferred(app) else { return negative(out, ResponseCode::NoError) };
        out.used_subnet = used;
        if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
            return negative(out, ResponseCode::NoError);
        }
        let (Some(target), Some(a), Some(owner)) = (name(node), zone.nodes.get(node), name(&relative)) else {
            return negative(out, ResponseCode::NoError);
        };
        out.answers.push(record(owner, RData::SRV(SRV::new(0, 0, a.mp_port, target.clone()))));
        out.additionals = addresses(node, &target, RecordType::ANY);
        return out;
    }
    let Some(owner) = name(&relative) else { return negative(out, ResponseCode::NXDomain) };
    if zone.apps.contains_key(relative.as_str()) {
        let Some((node, used)) = preferred(&relative) else { return negative(out, ResponseCode::NoError) };
        out.used_subnet = used;
        out.answers = addresses(node, &owner, qtype);
        return if out.answers.is_empty() { negative(out, ResponseCode::NoError) } else { out };
    }
    if zone.nodes.contains_key(relative.as_str()) {
        out.answers = addresses(&relative, &owner, qtype);
        return if out.answers.is_empty() { negative(out, ResponseCode::NoError) } else { out };
    }
    negative(out, ResponseCode::NXDomain)
}

/// A node reachable at `ip` (v4 or v6) with MP port `port`, for zone data built by hand.
pub fn node_addr(ip: IpAddr, port: u16) -> NodeAddr {
    match ip {
        IpAddr::V4(a) => NodeAddr { v4: Some(a), v6: None, mp_port: port },
        IpAddr::V6(a) => NodeAddr { v4: None, v6: Some(a), mp_port: port },
    }
}

#[cfg(test)]
mod tests;
