use super::*;

fn zone() -> ZoneData {
    ZoneData::example()
}

const ME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn rdata(a: &Answer) -> Vec<String> {
    a.answers.iter().map(|r| format!("{} {}", r.name, r.data)).collect()
}

#[test]
fn an_application_answers_its_preferred_server() {
    let a = answer(&zone(), "CALC.test.dabs.", RecordType::A, ME);
    assert_eq!((a.code, a.authoritative), (ResponseCode::NoError, true));
    assert_eq!(rdata(&a), ["calc.test.dabs. 10.9.0.1"]);
    assert_eq!(a.answers[0].ttl, 5);
    // No IPv6 address on node-1: no data, the SOA says so.
    let a = answer(&zone(), "calc.test.dabs", RecordType::AAAA, ME);
    assert_eq!((a.code, a.answers.len(), a.authorities.len()), (ResponseCode::NoError, 0, 1));
}

#[test]
fn srv_names_the_preferred_server_and_its_port_with_its_address() {
    let a = answer(&zone(), "_calc._mp._udp.test.dabs.", RecordType::SRV, ME);
    assert_eq!(rdata(&a), ["_calc._mp._udp.test.dabs. 0 0 4001 node-1.test.dabs."]);
    assert_eq!(a.additionals.len(), 1);
    assert_eq!(a.additionals[0].name.to_string(), "node-1.test.dabs.");
}

#[test]
fn nodes_unknown_names_and_other_zones() {
    assert_eq!(
        rdata(&answer(&zone(), "node-3.test.dabs.", RecordType::AAAA, ME)),
        ["node-3.test.dabs. fd00::3"]
    );
    let a = answer(&zone(), "nope.test.dabs.", RecordType::A, ME);
    assert_eq!((a.code, a.authorities.len()), (ResponseCode::NXDomain, 1));
    let a = answer(&zone(), "_nope._mp._udp.test.dabs.", RecordType::SRV, ME);
    assert_eq!(a.code, ResponseCode::NXDomain);
    let a = answer(&zone(), "example.com.", RecordType::A, ME);
    assert_eq!((a.code, a.authoritative), (ResponseCode::Refused, false));
    // An application with no server now: no data, never a failure.
    let a = answer(&zone(), "idle.test.dabs.", RecordType::A, ME);
    assert_eq!((a.code, a.answers.len(), a.authorities.len()), (ResponseCode::NoError, 0, 1));
    // A ranked server that has since left: the next one.
    let mut z = zone();
    z.nodes.remove("node-1");
    assert_eq!(rdata(&answer(&z, "calc.test.dabs.", RecordType::A, ME)), ["calc.test.dabs. 10.1.2.7"]);
}

#[test]
fn the_apex_answers_soa_and_ns() {
    let a = answer(&zone(), "test.dabs.", RecordType::SOA, ME);
    assert_eq!(rdata(&a), ["test.dabs. node-1.test.dabs. hostmaster.test.dabs. 1 3600 600 86400 5"]);
    let a = answer(&zone(), "test.dabs.", RecordType::NS, ME);
    assert_eq!(rdata(&a), ["test.dabs. node-1.test.dabs."]);
    assert_eq!(a.additionals.len(), 1);
    let a = answer(&zone(), "test.dabs.", RecordType::MX, ME);
    assert_eq!((a.code, a.answers.len()), (ResponseCode::NoError, 0));
}

#[test]
fn closest_answers_the_server_nearest_the_client() {
    let mut z = zone();
    z.closest.insert("calc".into());
    let near = "10.1.2.200".parse().unwrap();
    let a = answer(&z, "calc.test.dabs.", RecordType::A, near);
    assert_eq!(rdata(&a), ["calc.test.dabs. 10.1.2.7"]);
    assert!(a.used_subnet);
    // Equally far from both: rank order.
    assert_eq!(rdata(&answer(&z, "calc.test.dabs.", RecordType::A, ME)), ["calc.test.dabs. 10.9.0.1"]);
}

#[test]
fn closest_follows_measured_round_trips_over_prefixes() {
    let mut z = zone();
    z.closest.insert("calc".into());
    let client = "10.1.2.200".parse().unwrap();
    let mut asked = 0;
    // node-1 (10.9.0.1) shares fewer bits with the client but is nearer by measurement.
    let mut near = || {
        asked += 1;
        RoundTripsUs::from([("node-1".to_string(), 3_000), ("node-2".to_string(), 40_000)])
    };
    let a = answer_near(&z, "calc.test.dabs.", RecordType::A, client, &mut near);
    assert_eq!(rdata(&a), ["calc.test.dabs. 10.9.0.1"]);
    assert!(a.used_subnet);
    // A node measured but no longer ranked (or gone) is not answered.
    let mut gone = || RoundTripsUs::from([("node-9".to_string(), 1), ("node-2".to_string(), 40_000)]);
    let a = answer_near(&z, "calc.test.dabs.", RecordType::A, client, &mut gone);
    assert_eq!(rdata(&a), ["calc.test.dabs. 10.1.2.7"]);
    // Not a closest application: round trips are not even asked for.
    z.closest.clear();
    let a = answer_near(&z, "calc.test.dabs.", RecordType::A, client, &mut near);
    assert_eq!(rdata(&a), ["calc.test.dabs. 10.9.0.1"]);
    assert!(!a.used_subnet);
    assert_eq!(asked, 1);
    // Within the same millisecond: the longer prefix.
    z.closest.insert("calc".into());
    let mut close = || RoundTripsUs::from([("node-1".to_string(), 300), ("node-2".to_string(), 900)]);
    let a = answer_near(&z, "calc.test.dabs.", RecordType::A, client, &mut close);
    assert_eq!(rdata(&a), ["calc.test.dabs. 10.1.2.7"]);
}
