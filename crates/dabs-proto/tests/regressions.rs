//! Exact datagram orderings that once went wrong, replayed by hand against two endpoints.

use dabs_proto::{Addr, CallError, Config, Endpoint, Event, Transmit};
use dabs_wire::{Kind, NakCode, NakPayload, SystemCommand, decode};
use std::time::Duration;

fn addr(port: u16) -> Addr {
    Addr::Udp(([127, 0, 0, 1], port).into())
}

fn drain(ep: &mut Endpoint) -> Vec<Transmit> {
    std::iter::from_fn(|| ep.poll_transmit()).collect()
}

/// What `ep` sends at `t` and in the next few milliseconds: a whole round of a message, as a
/// re-sent one goes out in groups.
fn round(ep: &mut Endpoint, t: Duration) -> Vec<Transmit> {
    let mut sent = drain(ep);
    while let Some(at) = ep.next_deadline().filter(|at| *at <= t + Duration::from_millis(5)) {
        ep.handle_timeout(at);
        sent.extend(drain(ep));
    }
    sent
}

fn events(ep: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

/// Opens a session; returns (client, server, session, the client's ACK of the open REPLY).
fn opened() -> (Endpoint, Endpoint, dabs_proto::SessionId, Vec<Transmit>) {
    let t = Duration::ZERO;
    let mut client = Endpoint::new(Config::default(), 1, 0);
    let mut server = Endpoint::new(Config::default(), 2, 0);
    client.open(t, addr(2), 1, vec![]).unwrap();
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no open") };
    server.accept_open(t, &request, 7, vec![]).unwrap();
    for d in drain(&mut server) {
        client.handle_datagram(t, addr(2), &d.data);
    }
    let Some(Event::Opened { session, .. }) = events(&mut client).pop() else { panic!("not opened") };
    let ack = drain(&mut client);
    assert_eq!(ack.len(), 1, "the client ACKs the open REPLY");
    (client, server, session, ack)
}

#[test]
fn late_ack_of_the_open_reply_does_not_swallow_the_first_request() {
    // The open REPLY and the first request are both transaction 1. The ACK of the REPLY used
    // to mark the half-received request as answered, so it was never delivered.
    let (mut client, mut server, session, ack) = opened();
    let t = Duration::from_millis(1);
    client.call(t, session, 300, vec![7; 3000]).unwrap();
    let buffers = drain(&mut client);
    assert!(buffers.len() > 2);
    server.handle_datagram(t, addr(1), &buffers[0].data);
    server.handle_datagram(t, addr(1), &ack[0].data);
    for b in &buffers[1..] {
        server.handle_datagram(t, addr(1), &b.data);
    }
    let delivered = events(&mut server);
    assert!(
        matches!(delivered.as_slice(), [Event::Request(r)] if r.payload == vec![7; 3000]),
        "request not delivered: {delivered:?}"
    );
}

#[test]
fn a_repeated_multi_buffer_request_gets_one_reply_round() {
    // The REPLY is lost; the client re-sends all its buffers. The server used to re-send the
    // whole reply once per buffer and use up the reply's re-attempts doing so.
    let (mut client, mut server, session, ack) = opened();
    let t = Duration::from_millis(1);
    server.handle_datagram(t, addr(1), &ack[0].data);
    client.call(t, session, 300, vec![1; 5000]).unwrap();
    let buffers = drain(&mut client);
    for b in &buffers {
        server.handle_datagram(t, addr(1), &b.data);
    }
    let Some(Event::Request(req)) = events(&mut server).pop() else { panic!("not delivered") };
    server.reply(t, req.id, vec![2; 5000]).unwrap();
    let reply_round = drain(&mut server).len();
    // Before the REPLY's own first time-out (at least 160 ms).
    let t = Duration::from_millis(150);
    for b in &buffers {
        server.handle_datagram(t, addr(1), &b.data);
    }
    let resent = round(&mut server, t).len();
    assert_eq!(resent, reply_round, "one reply round per repeated request round");
    assert_eq!(server.stats().retransmits, 1);
    // The re-send did not spend the reply's own re-attempts: it still retransmits on its timer.
    let t = Duration::from_secs(1);
    server.handle_timeout(t);
    assert_eq!(round(&mut server, t).len(), reply_round);
}

fn nak_code(d: &Transmit) -> Option<NakCode> {
    let d = decode(&d.data).ok()?;
    (d.header.kind == Kind::Nak).then(|| NakPayload::parse(d.payload).ok().map(|p| p.code)).flatten()
}

fn command(d: &Transmit) -> Option<u16> {
    decode(&d.data).ok().map(|d| d.header.command)
}

#[test]
fn a_reopen_that_cannot_start_leaves_no_stale_session_number() {
    // A re-open needs a free OPEN_SESSION transaction number. When none was free the session
    // was dropped from the session table but its number stayed in the peer's table, so the
    // next datagram for that number (here a duplicate of the server's NAK) found a session
    // that was gone and panicked ("present", in the NAK handler), killing the driver and
    // every other session on it.
    let (mut client, _, session, _) = opened();
    let t = Duration::from_millis(1);
    // Every OPEN_SESSION transaction number in use by opens nobody answers.
    for _ in 0..255 {
        client.open(t, addr(9), 1, vec![]).unwrap();
    }
    assert_eq!(client.open(t, addr(9), 1, vec![]), Err(CallError::SessionsExhausted));
    drain(&mut client);
    // The server restarts and no longer knows the session.
    let mut server = Endpoint::new(Config::default(), 3, 0);
    let call = client.call(t, session, 300, vec![1]).unwrap();
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    let nak = drain(&mut server);
    assert_eq!(nak.iter().filter_map(nak_code).collect::<Vec<_>>(), [NakCode::UnknownSession]);
    client.handle_datagram(t, addr(2), &nak[0].data);
    let lost = events(&mut client);
    assert!(
        lost.contains(&Event::Failed { call, error: CallError::SessionLost })
            && lost.iter().any(|e| matches!(e, Event::SessionClosed { session: s, .. } if *s == session)),
        "{lost:?}"
    );
    assert_eq!(client.session_count(), 0);
    // The network duplicates the NAK.
    client.handle_datagram(t, addr(2), &nak[0].data);
    assert_eq!(client.session_count(), 0);
    assert!(drain(&mut client).is_empty(), "nothing answers a NAK");
}

#[test]
fn an_open_reply_reusing_a_held_number_leaves_no_stale_session_number() {
    // The server restarted and, answering a re-open, reused the number of another session the
    // client still held. The client dropped that session from its session table, and when the
    // re-opening session itself had been closed meanwhile, the number stayed mapped to the
    // dropped one: the next datagram for it (the server's repeated REPLY) panicked
    // ("present", in the REPLY handler).
    let (mut client, mut server, first, ack) = opened();
    let t = Duration::from_millis(1);
    server.handle_datagram(t, addr(1), &ack[0].data);
    // A second session with the same server.
    client.open(t, addr(2), 1, vec![]).unwrap();
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no open") };
    server.accept_open(t, &request, 7, vec![]).unwrap();
    for d in drain(&mut server) {
        client.handle_datagram(t, addr(2), &d.data);
    }
    let Some(Event::Opened { session: second, .. }) = events(&mut client).pop() else { panic!("not opened") };
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    assert_ne!(client.session_info(first).unwrap().1, client.session_info(second).unwrap().1);

    // The server restarts: it knows neither session and numbers sessions from 1 again.
    let mut server = Endpoint::new(Config::default(), 3, 0);
    client.call(t, second, 300, vec![1]).unwrap();
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    let nak = drain(&mut server);
    assert_eq!(nak.iter().filter_map(nak_code).collect::<Vec<_>>(), [NakCode::UnknownSession]);
    client.handle_datagram(t, addr(2), &nak[0].data);
    let reopen = drain(&mut client);
    assert_eq!(reopen.iter().filter_map(command).collect::<Vec<_>>(), [SystemCommand::OpenSession.number()]);
    // The application closes the re-opening session (its CLOSE_SESSION is lost).
    client.close(t, second);
    drain(&mut client);
    events(&mut client);

    for d in &reopen {
        server.handle_datagram(t, addr(1), &d.data);
    }
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no re-open") };
    server.accept_open(t, &request, 7, vec![]).unwrap();
    let reply = drain(&mut server);
    assert_eq!(decode(&reply[0].data).unwrap().header.session, client.session_info(first).unwrap().1);
    client.handle_datagram(t, addr(2), &reply[0].data);
    let lost = events(&mut client);
    assert!(
        lost.iter().any(|e| matches!(e, Event::SessionClosed { session, .. } if *session == first)),
        "the server lost the first session too: {lost:?}"
    );
    assert_eq!(client.session_count(), 0);
    // The client's ACK is lost and the server repeats its REPLY: the client keeps no session
    // for it, so it closes the server's (which would otherwise hold a seat for nobody).
    drain(&mut client);
    client.handle_datagram(t, addr(2), &reply[0].data);
    assert_eq!(client.session_count(), 0);
    assert_eq!(client.stats().extra_open_replies, 1, "an unwanted REPLY is counted");
    let close = drain(&mut client);
    assert_eq!(close.iter().filter_map(command).collect::<Vec<_>>(), [SystemCommand::CloseSession.number()]);
    assert_eq!(
        decode(&close[0].data).unwrap().header.session,
        decode(&reply[0].data).unwrap().header.session
    );
}

#[test]
fn a_peer_that_dies_after_its_ack_fails_the_call_as_outcome_unknown_long_before_reply_timeout() {
    // The server ACKs the request and dies: the client's probes meet silence. The call used to
    // wait out reply_timeout (30 s); now it fails after `silent_probes` silent probes.
    let (mut client, mut server, session, ack) = opened();
    let mut t = Duration::from_millis(1);
    server.handle_datagram(t, addr(1), &ack[0].data);
    client.call(t, session, 300, vec![1]).unwrap();
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    // The server ACKs (its ack delay), and nothing more comes from it.
    while let Some(at) = server.next_deadline().filter(|at| *at < Duration::from_secs(1)) {
        server.handle_timeout(at);
        let out = drain(&mut server);
        for d in &out {
            client.handle_datagram(at, addr(2), &d.data);
        }
        if out.iter().any(|d| decode(&d.data).unwrap().header.kind == Kind::Ack) {
            break;
        }
    }
    drain(&mut client);
    let config = Config::default();
    let failed = loop {
        let Some(at) = client.next_deadline() else {
            panic!("the client stopped waiting without failing the call")
        };
        t = at;
        assert!(t < config.reply_timeout, "still waiting at {t:?}");
        client.handle_timeout(t);
        drain(&mut client); // probes, into the void
        if let Some(e) = events(&mut client).into_iter().find_map(|e| match e {
            Event::Failed { error, .. } => Some(error),
            _ => None,
        }) {
            break e;
        }
    };
    assert!(matches!(failed, CallError::PeerSilent { .. }), "{failed:?}");
    let bound = config.ack_timeout_max * (config.silent_probes + 2);
    assert!(t <= bound, "failed at {t:?}, later than {bound:?}");
    assert!(failed.to_string().contains("outcome unknown"), "{failed}");
}
