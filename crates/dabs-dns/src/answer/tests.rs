use super::*;

fn zone() -> ZoneData {
    ZoneData {
        origin: "Demo.DABS".into(),
        ttl: 5,
        serial: 7,
        ns_host: "node-1".into(),
        nodes: [
            ("node-1".to_string(), node_addr("10.9.0.1".parse().unwrap(), 4001)),
            ("node-2".to_string(), node_addr("10.1.2.7".parse().unwrap(), 4002)),
            (
                "node-3".to_string(),
                NodeAddr { v4: None, v6: Some("fd00::3".parse().unwrap()), mp_port: 4003 },
            ),
        ]
        .into(),
        apps: [
            ("calc".to_string(), vec!["node-1".to_string(), "node-2".to_string()]),
            ("idle".to_string(), vec![]),
        ]
        .into(),
        closest: Default::default(),
    }
}

const ME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn rdata(a: &Answer) -> Vec<String> {
    a.answers.iter().map(|r| format!("{} {}", r.name, r.data)).collect()
}

#[test]
fn an_application_answers_its_preferred_server() {
    let a = answer(&zone(), "CALC.demo.dabs.", RecordType::A, ME);
    assert_eq!((a.code, a.authoritative), (ResponseCode::NoError, true));
    assert_eq!(rdata(&a), ["calc.demo.dabs. 10.9.0.1"]);
    assert_eq!(a.answers[0].ttl, 5);
    // No IPv6 address on node-1: no data, the SOA says so.
    let a = answer(&zone(), "calc.demo.dabs", RecordType::AAAA, ME);
    assert_eq!((a.code, a.answers.len(), a.authorities.len()), (ResponseCode::NoError, 0, 1));
}

#[test]
fn srv_names_the_preferred_server_and_its_port_with_its_address() {
    let a = answer(&zone(), "_calc._mp._udp.demo.dabs.", RecordType::SRV, ME);
    assert_eq!(rdata(&a), ["_calc._mp._udp.demo.dabs. 0 0 4001 node-1.demo.dabs."]);
    assert_eq!(a.additionals.len(), 1);
    assert_eq!(a.additionals[0].name.to_string(), "node-1.demo.dabs.");
}

#[test]
fn nodes_unknown_names_and_other_zones() {
    assert_eq!(
        rdata(&answer(&zone(), "node-3.demo.dabs.", RecordType::AAAA, ME)),
        ["node-3.demo.dabs. fd00::3"]
    );
    let a = answer(&zone(), "nope.demo.dabs.", RecordType::A, ME);
    assert_eq!((a.code, a.authorities.len()), (ResponseCode::NXDomain, 1));
    let a = answer(&zone(), "_nope._mp._udp.demo.dabs.", RecordType::SRV, ME);
    assert_eq!(a.code, ResponseCode::NXDomain);
    let a = answer(&zone(), "example.com.", RecordType::A, ME);
    assert_eq!((a.code, a.authoritative), (ResponseCode::Refused, false));
    // An application with no server now: no data, never a failure.
    let a = answer(&zone(), "idle.demo.dabs.", RecordType::A, ME);
    assert_eq!((a.code, a.answers.len(), a.authorities.len()), (ResponseCode::NoError, 0, 1));
    // A ranked server that has since left: the next one.
    let mut z = zone();
    z.nodes.remove("node-1");
    assert_eq!(rdata(&answer(&z, "calc.demo.dabs.", RecordType::A, ME)), ["calc.demo.dabs. 10.1.2.7"]);
}

#[test]
fn the_apex_answers_soa_and_ns() {
    let a = answer(&zone(), "demo.dabs.", RecordType::SOA, ME);
    assert_eq!(rdata(&a), ["demo.dabs. node-1.demo.dabs. hostmaster.demo.dabs. 7 3600 600 86400 5"]);
    let a = answer(&zone(), "demo.dabs.", RecordType::NS, ME);
    assert_eq!(rdata(&a), ["demo.dabs. node-1.demo.dabs."]);
    assert_eq!(a.additionals.len(), 1);
    let a = answer(&zone(), "demo.dabs.", RecordType::MX, ME);
    assert_eq!((a.code, a.answers.len()), (ResponseCode::NoError, 0));
}

#[test]
fn closest_answers_the_server_nearest_the_client() {
    let mut z = zone();
    z.closest.insert("calc".into());
    let near = "10.1.2.200".parse().unwrap();
    let a = answer(&z, "calc.demo.dabs.", RecordType::A, near);
    assert_eq!(rdata(&a), ["calc.demo.dabs. 10.1.2.7"]);
    assert!(a.used_subnet);
    // Equally far from both: rank order.
    assert_eq!(rdata(&answer(&z, "calc.demo.dabs.", RecordType::A, ME)), ["calc.demo.dabs. 10.9.0.1"]);
}
