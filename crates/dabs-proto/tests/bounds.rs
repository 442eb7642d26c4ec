//! Hostile peers cannot exhaust an endpoint (R-SEC-3): half-sent multi-buffer messages hold
//! what arrived and stay within the reassembly budgets, and one source address flooding opens
//! cannot lock another out. Sans-IO: datagrams are forged by hand and handed in.

use dabs_proto::{Addr, Config, Endpoint, Event, Transmit};
use dabs_wire::{
    BufferHeader, Header, Kind, NakCode, NakPayload, SentTime, SystemCommand, chunk_size, decode, encode,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn at(ip: [u8; 4], port: u16) -> Addr {
    Addr::Udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
}

fn drain(ep: &mut Endpoint) -> Vec<Transmit> {
    std::iter::from_fn(|| ep.poll_transmit()).collect()
}

fn events(ep: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

fn naks(ts: &[Transmit]) -> Vec<NakCode> {
    ts.iter()
        .filter_map(|t| {
            let d = decode(&t.data).ok()?;
            (d.header.kind == Kind::Nak).then(|| NakPayload::parse(d.payload).unwrap().code)
        })
        .collect()
}

fn datagram(h: &Header, buffer: Option<BufferHeader>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 512];
    let n = encode(h, buffer, payload, &mut out).unwrap();
    out.truncate(n);
    out
}

/// A hostile client: sends `OPEN_SESSION` by hand from `from`; the server accepts every open.
/// Returns the session number the REPLY gave (`None`: refused).
fn hostile_open(server: &mut Endpoint, t: Duration, from: &Addr, tx: u8) -> Option<u8> {
    let h = Header {
        transaction: tx,
        sent: SentTime::from_unix_millis(t.as_millis() as u64),
        src: 9,
        ..Header::new(Kind::Request, SystemCommand::OpenSession.number())
    };
    server.handle_datagram(t, from.clone(), &datagram(&h, None, b"{}"));
    for e in events(server) {
        if let Event::Open { request, .. } = e {
            let _ = server.accept_open(t, &request, 7, vec![]);
        }
    }
    drain(server)
        .iter()
        .filter(|d| d.to == *from)
        .filter_map(|d| decode(&d.data).ok().map(|d| d.header))
        .find(|h| h.kind == Kind::Reply)
        .map(|h| h.session)
}

/// Buffers `range` of a `total`-buffer request (transaction `tx`) in session `session`.
fn half_message(session: u8, tx: u8, total: u16, range: std::ops::Range<u16>) -> Vec<Vec<u8>> {
    let h = Header {
        session,
        transaction: tx,
        sent: SentTime::from_unix_millis(1000),
        dst: 7,
        src: 9,
        ..Header::new(Kind::Request, 300)
    };
    let chunk = vec![0xA5u8; chunk_size(false, 0)];
    range.map(|index| datagram(&h, Some(BufferHeader { index, total }), &chunk)).collect()
}

/// The largest message `max_message` allows, in buffers.
fn largest(max_message: usize) -> u16 {
    ((max_message - 1) / chunk_size(false, 0) + 1) as u16
}

/// The attack of issue 11: the first buffer of many 1 MiB messages, from many addresses. Today
/// each first buffer reserved the whole message (16,000 of them took a node to 16 GB
/// virtual). What the endpoint holds must follow what arrived, and stay within its budget.
#[test]
fn half_sent_messages_hold_only_what_arrived() {
    let config = Config::default();
    let total = largest(config.max_message);
    let mut server = Endpoint::new(config, 1, 0);
    let t = Duration::from_millis(5);
    let mut received = 0u64;
    for host in 1..=48u8 {
        let from = at([10, 0, 0, host], 4000);
        let session = hostile_open(&mut server, t, &from, 1).expect("accepted");
        for tx in 1..=8u8 {
            for d in half_message(session, tx, total, 0..1) {
                received += (d.len() - 16) as u64;
                server.handle_datagram(t, from.clone(), &d);
            }
        }
        drain(&mut server);
    }
    let st = server.stats();
    println!(
        "{} half-sent messages, {received} payload bytes received, reassembly holds {} bytes (peak {})",
        48 * 8,
        st.reassembly_bytes,
        st.reassembly_peak_bytes
    );
    assert!(
        st.reassembly_peak_bytes <= received,
        "holds more than arrived: {} > {received}",
        st.reassembly_peak_bytes
    );
    assert!(st.reassembly_peak_bytes <= 64 * MIB, "over the endpoint's default budget");
}

/// A client endpoint at `from` opens a session with `server` (which accepts every open),
/// then calls; both succeed. `t` advances; every datagram either way is delivered.
fn legit_open_and_call(server: &mut Endpoint, server_addr: &Addr, from: &Addr, t: &mut Duration) -> bool {
    let mut client = Endpoint::new(Config::default(), 77, 0);
    client.open(*t, server_addr.clone(), 1, b"{}".to_vec()).unwrap();
    let mut session = None;
    let mut answered = false;
    for round in 0..40 {
        *t += Duration::from_millis(10);
        client.handle_timeout(*t);
        server.handle_timeout(*t);
        for d in drain(&mut client) {
            server.handle_datagram(*t, from.clone(), &d.data);
        }
        for e in events(server) {
            match e {
                Event::Open { request, .. } => {
                    let _ = server.accept_open(*t, &request, 7, vec![]);
                }
                Event::Request(r) => {
                    let _ = server.reply(*t, r.id, r.payload);
                }
                _ => {}
            }
        }
        for d in drain(server) {
            if d.to == *from {
                client.handle_datagram(*t, server_addr.clone(), &d.data);
            }
        }
        for e in events(&mut client) {
            match e {
                Event::Opened { session: s, .. } => session = Some(s),
                Event::Reply { payload, .. } => answered = payload == b"ping",
                Event::Failed { error, .. } => println!("legit client: round {round}: {error}"),
                _ => {}
            }
        }
        if let Some(s) = session.take() {
            client.call(*t, s, 300, b"ping".to_vec()).unwrap();
        }
        if answered {
            return true;
        }
    }
    false
}

/// One host opening from thousands of ports (group opens this node leaves to others: each
/// leaves a peer entry behind) filled the peer table, and every other client was refused
/// (NAK 10) until the sweep. Another address must still get in.
#[test]
fn one_source_flooding_opens_cannot_lock_another_out() {
    let config = Config { max_peers: 4096, ..Config::default() };
    let server_addr = at([10, 9, 9, 9], 5000);
    let mut server = Endpoint::new(config, 1, 0);
    let mut t = Duration::from_millis(1);
    let mut refused = 0;
    for port in 1..=5000u16 {
        let h = Header {
            transaction: 1,
            sent: SentTime::from_unix_millis(t.as_millis() as u64),
            src: 9,
            ..Header::new(Kind::Request, SystemCommand::OpenSession.number())
        };
        server.handle_group_datagram(t, at([10, 0, 0, 66], port), &datagram(&h, None, b"{}"));
        events(&mut server); // left to another node
        refused += naks(&drain(&mut server)).len();
    }
    println!("flood: 5000 opens from one host, {refused} refused");
    let legit = at([10, 0, 0, 1], 4000);
    assert!(
        legit_open_and_call(&mut server, &server_addr, &legit, &mut t),
        "the other address was locked out"
    );
}

/// The same host's opens accepted (the node answers each): half-open sessions that never
/// answer, from thousands of ports. Another address must still open and call.
#[test]
fn one_source_flooding_half_open_sessions_cannot_lock_another_out() {
    let config = Config { max_peers: 4096, ..Config::default() };
    let server_addr = at([10, 9, 9, 9], 5000);
    let mut server = Endpoint::new(config, 1, 0);
    let mut t = Duration::from_millis(1);
    let mut accepted = 0;
    for port in 1..=5000u16 {
        accepted += usize::from(hostile_open(&mut server, t, &at([10, 0, 0, 66], port), 1).is_some());
    }
    println!(
        "flood: 5000 accepted opens from one host, {accepted} answered, {} sessions open",
        server.session_count()
    );
    let legit = at([10, 0, 0, 1], 4000);
    assert!(
        legit_open_and_call(&mut server, &server_addr, &legit, &mut t),
        "the other address was locked out"
    );
}

/// Whole half-messages, not just first buffers: the session's, the source's and the
/// endpoint's budgets each stop them (NAK 5, 5 and 8), the endpoint never holds more than its
/// budget, and when the senders' sessions expire everything is given back.
#[test]
fn budgets_per_session_source_and_endpoint_bound_what_half_messages_hold() {
    const KIB: usize = 1024;
    let config = Config {
        reassembly_per_session: 64 * KIB,
        reassembly_per_source: 128 * KIB,
        reassembly_total: 256 * KIB,
        ..Config::default()
    };
    let idle = config.idle_timeout;
    let mut server = Endpoint::new(config, 1, 0);
    let t = Duration::from_millis(5);
    // 48 KiB messages, all but the last buffer sent.
    let total = (48 * KIB / chunk_size(false, 0) + 1) as u16;
    let mut codes = Vec::new();
    // Five hosts, three sessions each (three ports), two messages per session.
    for host in 1..=5u8 {
        for port in 1..=3u16 {
            let from = at([10, 0, 1, host], port);
            let session = hostile_open(&mut server, t, &from, 1).expect("accepted");
            for tx in 1..=2u8 {
                for d in half_message(session, tx, total, 0..total - 1) {
                    server.handle_datagram(t, from.clone(), &d);
                }
                codes.extend(naks(&drain(&mut server)));
                let st = server.stats();
                assert!(
                    st.reassembly_bytes <= 256 * KIB as u64,
                    "over the endpoint budget: {}",
                    st.reassembly_bytes
                );
            }
        }
    }
    let st = server.stats().clone();
    println!(
        "held {} bytes (peak {}), {} messages refused, NAKs {:?}",
        st.reassembly_bytes, st.reassembly_peak_bytes, st.reassembly_refused, st.naks_sent
    );
    assert!(st.reassembly_peak_bytes <= 256 * KIB as u64);
    assert!(codes.contains(&NakCode::TooLarge), "session and source budgets answer NAK 5");
    assert!(codes.contains(&NakCode::Overloaded), "the endpoint's budget answers NAK 8");
    // One NAK per refused message (on the buffer that overflowed), not one per buffer.
    assert_eq!(codes.len() as u64, st.reassembly_refused);
    // The senders vanish: their sessions expire with what they held.
    let later = t + idle * 2;
    let mut now = t;
    while now < later {
        now += Duration::from_millis(500);
        server.handle_timeout(now);
        drain(&mut server);
    }
    assert_eq!(server.stats().reassembly_bytes, 0, "given back when the sessions expired");
    let server_addr = at([10, 9, 9, 9], 5000);
    let mut t = later;
    assert!(legit_open_and_call(&mut server, &server_addr, &at([10, 0, 0, 1], 4000), &mut t));
}
