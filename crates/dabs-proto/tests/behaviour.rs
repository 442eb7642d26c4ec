//! The endpoint's promises, each shown with two endpoints driven by hand.

use dabs_proto::{Addr, CallError, Config, Endpoint, Event, Transmit};
use dabs_wire::{Kind, NakCode, NakPayload, decode};
use std::time::Duration;

fn addr(port: u16) -> Addr {
    Addr::Udp(([127, 0, 0, 1], port).into())
}

fn drain(ep: &mut Endpoint) -> Vec<Transmit> {
    std::iter::from_fn(|| ep.poll_transmit()).collect()
}

fn events(ep: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

fn deliver(to: &mut Endpoint, from: u16, t: Duration, ds: &[Transmit]) {
    for d in ds {
        to.handle_datagram(t, addr(from), &d.data);
    }
}

fn nak_code(d: &Transmit) -> Option<NakCode> {
    let d = decode(&d.data).ok()?;
    (d.header.kind == Kind::Nak).then(|| NakPayload::parse(d.payload).unwrap().code)
}

fn pair(server_config: Config) -> (Endpoint, Endpoint, dabs_proto::SessionId) {
    let t = Duration::ZERO;
    let mut client = Endpoint::new(Config::default(), 1, 0);
    let mut server = Endpoint::new(server_config, 2, 0);
    client.open(t, addr(2), 1, vec![]).unwrap();
    let out = drain(&mut client);
    deliver(&mut server, 1, t, &out);
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!() };
    server.accept_open(t, &request, 7, vec![]).unwrap();
    let out = drain(&mut server);
    deliver(&mut client, 2, t, &out);
    let Some(Event::Opened { session, .. }) = events(&mut client).pop() else { panic!() };
    let out = drain(&mut client);
    deliver(&mut server, 1, t, &out);
    (client, server, session)
}

#[test]
fn too_large_and_too_many_partials_are_refused_with_nak_5() {
    let config = Config { max_message: 10_000, max_partial_per_peer: 2, ..Config::default() };
    let (mut client, mut server, s) = pair(config);
    let t = Duration::from_millis(1);
    client.call(t, s, 300, vec![0; 20_000]).unwrap();
    let out = drain(&mut client);
    server.handle_datagram(t, addr(1), &out[0].data);
    assert_eq!(drain(&mut server).iter().filter_map(nak_code).collect::<Vec<_>>(), [NakCode::TooLarge]);

    // Three messages begun, none finished: the third is refused.
    for _ in 0..3 {
        client.call(t, s, 300, vec![0; 2_000]).unwrap();
    }
    let firsts: Vec<Transmit> = drain(&mut client)
        .into_iter()
        .filter(|d| decode(&d.data).unwrap().buffer.is_some_and(|b| b.index == 0 && b.total == 5))
        .collect();
    assert_eq!(firsts.len(), 3);
    deliver(&mut server, 1, t, &firsts);
    assert_eq!(drain(&mut server).iter().filter_map(nak_code).collect::<Vec<_>>(), [NakCode::TooLarge]);
}

#[test]
fn reply_is_retransmitted_until_acked() {
    let (mut client, mut server, s) = pair(Config::default());
    let t = Duration::from_millis(1);
    client.call(t, s, 300, b"q".to_vec()).unwrap();
    let out = drain(&mut client);
    deliver(&mut server, 1, t, &out);
    let Some(Event::Request(req)) = events(&mut server).pop() else { panic!() };
    server.reply(t, req.id, b"a".to_vec()).unwrap();
    let first = drain(&mut server);
    assert_eq!(first.len(), 1);
    // Withhold the client's ACK: the REPLY comes again, unchanged (same stamp).
    let deadline = server.next_deadline().unwrap();
    server.handle_timeout(deadline);
    let again = drain(&mut server);
    assert_eq!(again, first);
    // Deliver it; the client ACKs; the server stops.
    deliver(&mut client, 2, deadline, &again);
    assert!(matches!(events(&mut client).as_slice(), [Event::Reply { payload, .. }] if payload == b"a"));
    let ack = drain(&mut client);
    deliver(&mut server, 1, deadline, &ack);
    server.handle_timeout(deadline + Duration::from_secs(60));
    assert!(drain(&mut server).is_empty(), "nothing more after the ACK");
    assert_eq!(server.stats().replies_undelivered, 0);
}

#[test]
fn late_copy_of_an_earlier_use_of_a_transaction_is_not_run_again() {
    let (mut client, mut server, s) = pair(Config::default());
    let mut t = Duration::from_millis(1);
    let mut first_copy = None;
    // 255 calls wrap the transaction numbers; keep a copy of transaction 1's first request.
    for i in 0..256u32 {
        client.call(t, s, 300, i.to_be_bytes().to_vec()).unwrap();
        let out = drain(&mut client);
        if i == 0 {
            first_copy = Some(out[0].clone());
        }
        deliver(&mut server, 1, t, &out);
        for e in events(&mut server) {
            let Event::Request(req) = e else { panic!() };
            server.reply(t, req.id, req.payload).unwrap();
        }
        let out = drain(&mut server);
        deliver(&mut client, 2, t, &out);
        let ack = drain(&mut client);
        deliver(&mut server, 1, t, &ack);
        t += Duration::from_millis(2);
    }
    assert_eq!(server.stats().requests_delivered, 256);
    // The old copy of transaction 1 arrives now, after the number was used again.
    server.handle_datagram(t, addr(1), &first_copy.unwrap().data);
    assert!(events(&mut server).is_empty(), "a late copy must not run again");
    assert_eq!(server.stats().requests_delivered, 256);
}

#[test]
fn idle_sessions_expire_and_the_client_reopens() {
    let config = Config { idle_timeout: Duration::from_secs(10), ..Config::default() };
    let (mut client, mut server, s) = pair(config);
    server.handle_timeout(Duration::from_secs(30));
    assert!(events(&mut server).iter().any(|e| matches!(e, Event::SessionClosed { .. })));
    assert_eq!(server.session_count(), 0);
    assert_eq!(server.stats().sessions_expired, 1);

    // The client does not know: its next request is NAKed 1, it re-opens and carries on.
    let t = Duration::from_secs(31);
    client.call(t, s, 300, b"after".to_vec()).unwrap();
    let out = drain(&mut client);
    deliver(&mut server, 1, t, &out);
    let nak = drain(&mut server);
    assert_eq!(nak.iter().filter_map(nak_code).collect::<Vec<_>>(), [NakCode::UnknownSession]);
    deliver(&mut client, 2, t, &nak);
    let reopen = drain(&mut client);
    deliver(&mut server, 1, t, &reopen);
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no re-open") };
    server.accept_open(t, &request, 7, vec![]).unwrap();
    let out = drain(&mut server);
    deliver(&mut client, 2, t, &out);
    assert!(events(&mut client).iter().any(|e| matches!(e, Event::Reopened { .. })));
    let resent = drain(&mut client); // ACK of the open REPLY, then the request again
    deliver(&mut server, 1, t, &resent);
    let delivered = events(&mut server);
    assert!(matches!(delivered.as_slice(), [Event::Request(r)] if r.payload == b"after"), "{delivered:?}");
    assert_eq!(client.stats().sessions_reopened, 1);
}

#[test]
fn unknown_application_nak_fails_the_open() {
    let t = Duration::ZERO;
    let mut client = Endpoint::new(Config::default(), 1, 0);
    let mut server = Endpoint::new(Config::default(), 2, 0);
    let call = client.open(t, addr(2), 1, vec![]).unwrap();
    let out = drain(&mut client);
    deliver(&mut server, 1, t, &out);
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!() };
    server.reject_open(t, &request, NakCode::UnknownApplication, "no application \"x\"");
    let out = drain(&mut server);
    deliver(&mut client, 2, t, &out);
    let evs = events(&mut client);
    let [Event::Failed { call: c, error: CallError::Nak { code, text } }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!((*c, *code, text.as_str()), (call, NakCode::UnknownApplication, "no application \"x\""));
}
