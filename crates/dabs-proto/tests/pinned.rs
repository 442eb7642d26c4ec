//! A client that pins the farm's static key (Noise_NK) talks only to a holder of the private
//! key (R-SEC-4): it opens and calls against the real server, and fails closed against a
//! man-in-the-middle endpoint with another key or a server without one.

use dabs_proto::{Addr, CallError, Config, Endpoint, Event, StaticKey, static_public_key};
use dabs_wire::{Kind, NakCode, decode};
use std::time::Duration;

fn addr(port: u16) -> Addr {
    Addr::Udp(([127, 0, 0, 1], port).into())
}

/// What the client saw: the open's outcome, the call's reply, and every command it sent in
/// clear after the `OPEN_SESSION` exchange.
struct Outcome {
    opened: bool,
    authenticated: bool,
    reply: Option<Vec<u8>>,
    failure: Option<CallError>,
    clear_requests: Vec<u16>,
}

fn run(server_key: Option<StaticKey>, pinned: [u8; 32]) -> Outcome {
    let mut client = Endpoint::new(Config::default(), 1, 0);
    let mut server = Endpoint::new(Config { static_key: server_key, ..Config::default() }, 2, 0);
    let mut t = Duration::ZERO;
    client.open_pinned(t, addr(2), 1, b"{}".to_vec(), pinned).unwrap();
    let mut out =
        Outcome { opened: false, authenticated: false, reply: None, failure: None, clear_requests: vec![] };
    for _ in 0..200 {
        t += Duration::from_millis(20);
        client.handle_timeout(t);
        server.handle_timeout(t);
        while let Some(d) = client.poll_transmit() {
            if let Ok(h) = decode(&d.data).map(|d| d.header)
                && h.kind == Kind::Request
                && !h.encrypted
                && h.command >= 256
            {
                out.clear_requests.push(h.command);
            }
            server.handle_datagram(t, addr(1), &d.data);
        }
        while let Some(e) = server.poll_event() {
            match e {
                Event::Open { request, .. } => {
                    server.accept_open(t, &request, 7, b"{}".to_vec()).unwrap();
                }
                Event::Request(r) => server.reply(t, r.id, r.payload).unwrap(),
                _ => {}
            }
        }
        while let Some(d) = server.poll_transmit() {
            client.handle_datagram(t, addr(2), &d.data);
        }
        while let Some(e) = client.poll_event() {
            match e {
                Event::Opened { session, .. } => {
                    out.opened = true;
                    out.authenticated = client.session_authenticated(session);
                    client.call(t, session, 300, b"secret".to_vec()).unwrap();
                }
                Event::Reply { payload, .. } => out.reply = Some(payload),
                Event::Failed { error, .. } => out.failure = Some(error),
                _ => {}
            }
        }
        if out.reply.is_some() || out.failure.is_some() {
            break;
        }
    }
    out
}

#[test]
fn a_pinned_client_opens_and_calls_the_holder_of_the_farm_key() {
    let farm = StaticKey([0x42; 32]);
    let o = run(Some(farm.clone()), static_public_key(&farm.0));
    assert!(o.opened && o.authenticated, "{:?}", o.failure);
    assert_eq!(o.reply.as_deref(), Some(&b"secret"[..]));
    assert!(o.clear_requests.is_empty());
}

#[test]
fn a_man_in_the_middle_with_another_key_is_refused_and_the_client_fails_closed() {
    let farm = StaticKey([0x42; 32]);
    let mitm = StaticKey([0x66; 32]);
    let o = run(Some(mitm), static_public_key(&farm.0));
    println!("against another key: {:?}", o.failure);
    assert!(!o.opened, "the session must not open");
    assert!(
        matches!(o.failure, Some(CallError::Nak { code: NakCode::AuthenticationFailed, .. })),
        "{:?}",
        o.failure
    );
    assert!(o.clear_requests.is_empty(), "nothing sent in clear: {:?}", o.clear_requests);
}

#[test]
fn a_server_without_a_static_key_refuses_with_nak_13() {
    let farm = StaticKey([0x42; 32]);
    let o = run(None, static_public_key(&farm.0));
    println!("against no key: {:?}", o.failure);
    assert!(!o.opened);
    match o.failure {
        Some(CallError::Nak { code: NakCode::EncryptionRefused, text }) => {
            assert!(text.contains("static key"), "{text}")
        }
        other => panic!("expected NAK 13, got {other:?}"),
    }
    assert!(o.clear_requests.is_empty());
}
