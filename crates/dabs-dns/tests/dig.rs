//! The DNS front asked by a client we did not write: Debian's `dig`, over UDP and TCP.

use dabs_dns::{DnsFront, ZoneData};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn zone() -> ZoneData {
    ZoneData::example()
}

async fn front() -> (DnsFront, tokio::sync::watch::Sender<Arc<ZoneData>>) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(zone()));
    (DnsFront::start("127.0.0.1:0".parse().unwrap(), rx, None).await.unwrap(), tx)
}

/// `dig` at `at`: (status, answers, authority, flags).
async fn ask(
    at: SocketAddr,
    name: &str,
    rtype: &str,
    extra: &[&str],
) -> (String, Vec<String>, Vec<String>, String) {
    let d = dabs_testkit::dns::dig_async(at, name, rtype, extra).await;
    (d.status, d.answers, d.authority, d.flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_over_udp_and_tcp_gets_the_zone_of_interop_md() {
    let (front, _tx) = front().await;
    let at = front.local_addr();
    for transport in [&[][..], &["+tcp"][..]] {
        let (status, answers, _, flags) = ask(at, "calc.test.dabs", "A", transport).await;
        assert_eq!(status, "NOERROR", "{transport:?}");
        assert!(flags.contains(" aa"), "authoritative: {flags}");
        assert_eq!(answers, ["calc.test.dabs. 5 IN A 10.9.0.1"], "{transport:?}");
        let (_, answers, ..) = ask(at, "_calc._mp._udp.test.dabs", "SRV", transport).await;
        assert_eq!(answers, ["_calc._mp._udp.test.dabs. 5 IN SRV 0 0 4001 node-1.test.dabs."]);
        let (status, answers, authority, _) = ask(at, "nothing.test.dabs", "A", transport).await;
        assert_eq!((status.as_str(), answers.len()), ("NXDOMAIN", 0));
        assert!(authority[0].contains("IN SOA node-1.test.dabs. hostmaster.test.dabs. 1 "), "{authority:?}");
    }
    let (_, answers, ..) = ask(at, "node-2.test.dabs", "A", &[]).await;
    assert_eq!(answers, ["node-2.test.dabs. 5 IN A 10.1.2.7"]);
    let (_, answers, ..) = ask(at, "six.test.dabs", "AAAA", &[]).await;
    assert_eq!(answers, ["six.test.dabs. 5 IN AAAA fd00::3"]);
    let (_, answers, ..) = ask(at, "test.dabs", "NS", &[]).await;
    assert_eq!(answers, ["test.dabs. 5 IN NS node-1.test.dabs."]);
    let (_, answers, ..) = ask(at, "test.dabs", "SOA", &[]).await;
    assert_eq!(answers.len(), 1);
    let (status, answers, authority, _) = ask(at, "idle.test.dabs", "A", &[]).await;
    assert_eq!((status.as_str(), answers.len(), authority.len()), ("NOERROR", 0, 1), "no server: no data");
    let (status, ..) = ask(at, "example.com", "A", &[]).await;
    assert_eq!(status, "REFUSED");
    assert_eq!(front.queries(), 12, "each query counted once: {}", front.queries());
    front.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_follows_the_zone_and_the_client_subnet() {
    let (front, tx) = front().await;
    let at = front.local_addr();
    let mut z = zone();
    z.apps.insert("calc".into(), vec!["node-2".into(), "node-1".into()]);
    z.serial = 2;
    tx.send_replace(Arc::new(z.clone()));
    // The next query sees it (the watch is read per query): bounded poll, no fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, answers, ..) = ask(at, "calc.test.dabs", "A", &[]).await;
        if answers == ["calc.test.dabs. 5 IN A 10.1.2.7"] {
            break;
        }
        assert!(Instant::now() < deadline, "still {answers:?}");
    }
    // `closest`: ECS 10.9.0.0/24 is nearer node-1 although node-2 ranks first.
    z.closest.insert("calc".into());
    tx.send_replace(Arc::new(z));
    let (_, answers, ..) = ask(at, "calc.test.dabs", "A", &["+subnet=10.9.0.0/24"]).await;
    assert_eq!(answers, ["calc.test.dabs. 5 IN A 10.9.0.1"]);
    let (_, answers, ..) = ask(at, "calc.test.dabs", "A", &["+subnet=10.1.2.0/24"]).await;
    assert_eq!(answers, ["calc.test.dabs. 5 IN A 10.1.2.7"]);
    front.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_stop_the_front() {
    let (front, _tx) = front().await;
    let at = front.local_addr();
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for len in [0usize, 1, 11, 12, 13, 300, 1400] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        junk.send_to(&bytes, at).unwrap();
    }
    // A header claiming queries it does not carry.
    junk.send_to(&[0, 1, 1, 0, 0, 9, 0, 0, 0, 0, 0, 0, 3, b'a'], at).unwrap();
    let (status, answers, ..) = ask(at, "calc.test.dabs", "A", &[]).await;
    assert_eq!((status.as_str(), answers.len()), ("NOERROR", 1));
    front.stop().await;
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    let (front, _tx) = front().await;
    let (_tx2, rx) = tokio::sync::watch::channel(Arc::new(zone()));
    let e = DnsFront::start(front.local_addr(), rx, None).await.err().expect("the port is taken");
    let text = e.to_string();
    assert!(text.starts_with("cannot bind DNS over UDP at 127.0.0.1:"), "{text}");
    front.stop().await;
}
