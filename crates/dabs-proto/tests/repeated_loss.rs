//! Calls under loss that repeats in every retransmission round, two endpoints driven by hand
//! on a simulated clock: each test drops a fixed pattern of datagrams and shows that the call
//! is still answered, and run, exactly once. (What the turmoil test found, made deterministic.)

use dabs_proto::{Addr, Config, Endpoint, Event, IncomingId, SessionId, Transmit};
use dabs_wire::{Kind, decode};
use std::time::Duration;

fn addr(port: u16) -> Addr {
    Addr::Udp(([127, 0, 0, 1], port).into())
}

fn drain(ep: &mut Endpoint) -> Vec<Transmit> {
    std::iter::from_fn(|| ep.poll_transmit()).collect()
}

const COMMAND: u16 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum From {
    Client,
    Server,
}

/// A datagram on its way: who sent it, its place in the burst it was sent in (the datagrams
/// an endpoint emitted at one instant) and that burst's length, and when.
struct Sent<'a> {
    from: From,
    position: usize,
    burst: usize,
    data: &'a [u8],
    at: Duration,
}

impl Sent<'_> {
    fn kind(&self) -> Kind {
        decode(self.data).unwrap().header.kind
    }

    /// A datagram of the call (not of opening the session).
    fn of_call(&self) -> bool {
        decode(self.data).unwrap().header.command == COMMAND
    }

    fn buffer_index(&self) -> Option<u16> {
        decode(self.data).unwrap().buffer.map(|b| b.index)
    }
}

struct Outcome {
    /// The client's events for the call (replies and failures).
    client: Vec<Event>,
    /// Requests the server application saw.
    executed: usize,
    server: Endpoint,
}

/// Opens a session, makes one call of `request` bytes that the server answers with `reply`
/// bytes after `think`, and runs both endpoints until the call ends or `limit` passes.
/// `lose` decides which datagrams the network drops.
fn call(
    request: usize,
    reply: usize,
    think: Duration,
    limit: Duration,
    mut lose: impl FnMut(&Sent<'_>, &Endpoint) -> bool,
) -> Outcome {
    let mut client = Endpoint::new(Config::default(), 1, 0);
    let mut server = Endpoint::new(Config::default(), 2, 0);
    let mut t = Duration::ZERO;
    client.open(t, addr(2), 1, vec![]).unwrap();
    let mut session: Option<SessionId> = None;
    let mut pending: Option<(Duration, IncomingId, Vec<u8>)> = None;
    let mut executed = 0;
    let mut outcome = Vec::new();
    while t <= limit {
        // Exchange datagrams until both ends are quiet.
        loop {
            let c = drain(&mut client);
            let s = drain(&mut server);
            for (position, d) in c.iter().enumerate() {
                let sent = Sent { from: From::Client, position, burst: c.len(), data: &d.data, at: t };
                if !lose(&sent, &server) {
                    server.handle_datagram(t, addr(1), &d.data);
                }
            }
            for (position, d) in s.iter().enumerate() {
                let sent = Sent { from: From::Server, position, burst: s.len(), data: &d.data, at: t };
                if !lose(&sent, &server) {
                    client.handle_datagram(t, addr(2), &d.data);
                }
            }
            while let Some(e) = server.poll_event() {
                match e {
                    Event::Open { request, .. } => {
                        server.accept_open(t, &request, 7, vec![]).unwrap();
                    }
                    Event::Request(r) => {
                        executed += 1;
                        pending = Some((t + think, r.id, vec![0xAB; reply]));
                    }
                    _ => {}
                }
            }
            while let Some(e) = client.poll_event() {
                match e {
                    Event::Opened { session: s, .. } => {
                        session = Some(s);
                        client.call(t, s, COMMAND, vec![0xCD; request]).unwrap();
                    }
                    e @ (Event::Reply { .. } | Event::Failed { .. }) => outcome.push(e),
                    _ => {}
                }
            }
            if c.is_empty() && s.is_empty() {
                break;
            }
        }
        if session.is_some() && !outcome.is_empty() {
            break;
        }
        let due = [client.next_deadline(), server.next_deadline(), pending.as_ref().map(|p| p.0)];
        let Some(next) = due.into_iter().flatten().min() else { break };
        t = next.max(t);
        if let Some((at, id, payload)) = pending.take() {
            if at <= t {
                server.reply(t, id, payload).unwrap();
            } else {
                pending = Some((at, id, payload));
            }
        }
        client.handle_timeout(t);
        server.handle_timeout(t);
    }
    Outcome { client: outcome, executed, server }
}

fn answered_once(o: &Outcome, reply: usize) {
    assert_eq!(o.executed, 1, "the request ran once");
    match o.client.as_slice() {
        [Event::Reply { payload, .. }] => assert_eq!(payload, &vec![0xAB; reply]),
        other => panic!("expected one reply, got {other:?}"),
    }
}

#[test]
fn a_reply_given_up_is_still_sent_to_a_repeated_request() {
    // The server ACKs the request, answers a second later, and every transmission of its
    // REPLY is lost until it stops retransmitting. The client keeps probing: a probe after
    // that must still get the REPLY (the request ran, it cannot run again). The server
    // used to drop the REPLY and answer probes with bare ACKs until the call timed out.
    let o = call(40, 40, Duration::from_secs(1), Duration::from_secs(60), |d, server| {
        d.from == From::Server
            && d.of_call()
            && d.kind() == Kind::Reply
            && server.stats().replies_undelivered == 0
    });
    assert_eq!(o.server.stats().replies_undelivered, 1, "the loss must outlast the REPLY's re-attempts");
    answered_once(&o, 40);
}

#[test]
fn a_partly_received_reply_counts_as_the_acknowledgement() {
    // The REPLY (11 buffers) loses its buffer 3 in every round for 20 s, longer than the
    // client's re-attempts of the request last. The buffers that do arrive show the request
    // was received, so the client must wait for the rest instead of giving up; the client used
    // to count on and fail with GaveUp although the request had run.
    let o = call(40, 5_000, Duration::ZERO, Duration::from_secs(60), |d, _| {
        d.from == From::Server && d.at < Duration::from_secs(20) && d.buffer_index() == Some(3)
    });
    answered_once(&o, 5_000);
}

#[test]
fn buffers_lost_at_the_head_of_every_long_burst_still_arrive() {
    // A link that drops whatever is still in flight when it fails loses the first datagrams
    // of a long burst most often. Here every burst of more than four datagrams keeps only its
    // last three: rounds that always sent buffer 0 first, back to back, never delivered it,
    // and the call gave up.
    let o = call(8_000, 8_000, Duration::ZERO, Duration::from_secs(60), |d, _| {
        d.burst > 4 && d.position < d.burst - 3
    });
    answered_once(&o, 8_000);
}

#[test]
fn a_message_sent_again_goes_out_in_small_groups() {
    // The same link, keeping only the last datagram of a long burst: every buffer but the
    // last is lost in every round unless a re-sent round goes out a few datagrams at a time.
    let o = call(8_000, 40, Duration::ZERO, Duration::from_secs(60), |d, _| {
        d.burst > 4 && d.position + 1 < d.burst
    });
    answered_once(&o, 40);
}

/// A session whose one call ran at the server and whose REPLY was lost in every re-attempt
/// until the server parked it. Returns the server, a copy of the request, and when it parked.
fn parked(server_config: Config) -> (Endpoint, Vec<u8>, Duration) {
    let mut t = Duration::ZERO;
    let mut client = Endpoint::new(Config::default(), 1, 0);
    let mut server = Endpoint::new(server_config, 2, 0);
    client.open(t, addr(2), 1, vec![]).unwrap();
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    let Some(Event::Open { request, .. }) = server.poll_event() else { panic!("no open") };
    server.accept_open(t, &request, 7, vec![]).unwrap();
    for d in drain(&mut server) {
        client.handle_datagram(t, addr(2), &d.data);
    }
    let Some(Event::Opened { session, .. }) = client.poll_event() else { panic!("not opened") };
    for d in drain(&mut client) {
        server.handle_datagram(t, addr(1), &d.data);
    }
    client.call(t, session, COMMAND, vec![1; 40]).unwrap();
    let request = drain(&mut client).remove(0).data;
    server.handle_datagram(t, addr(1), &request);
    let Some(Event::Request(r)) = server.poll_event() else { panic!("not delivered") };
    server.reply(t, r.id, vec![2; 40]).unwrap();
    while server.stats().replies_undelivered == 0 {
        drain(&mut server); // every REPLY is lost
        t = server.next_deadline().expect("the REPLY is retransmitted");
        server.handle_timeout(t);
    }
    drain(&mut server);
    (server, request, t)
}

/// Runs the server's timers up to `until`, dropping what it sends.
fn run_until(server: &mut Endpoint, until: Duration) {
    while let Some(t) = server.next_deadline().filter(|t| *t <= until) {
        server.handle_timeout(t);
        drain(server);
    }
}

fn kinds(ds: &[Transmit]) -> Vec<Kind> {
    ds.iter().map(|d| decode(&d.data).unwrap().header.kind).collect()
}

#[test]
fn a_parked_reply_is_freed_once_its_request_stops_coming() {
    let (mut server, request, at) = parked(Config::default());
    let t = at + Duration::from_secs(5);
    run_until(&mut server, t);
    server.handle_datagram(t, addr(1), &request);
    assert_eq!(kinds(&drain(&mut server)), [Kind::Reply], "a repeat gets the parked REPLY");
    // Nobody asks for it again within `reply_timeout`: the client has moved on; it is freed,
    // and a late copy of the request is only ACKed (never run again).
    let t = t + Config::default().reply_timeout + Duration::from_secs(1);
    run_until(&mut server, t);
    server.handle_datagram(t, addr(1), &request);
    assert_eq!(kinds(&drain(&mut server)), [Kind::Ack]);
    assert_eq!(server.stats().requests_delivered, 1);
    assert_eq!(server.session_count(), 1);
}

#[test]
fn a_parked_reply_does_not_keep_an_idle_session_open() {
    // Idle expiry shorter than the time a parked REPLY is kept: the session must still expire.
    let config = Config { idle_timeout: Duration::from_secs(10), ..Config::default() };
    let (mut server, _, at) = parked(config);
    assert_eq!(server.session_count(), 1);
    run_until(&mut server, at + Duration::from_secs(5));
    assert_eq!(server.session_count(), 0, "the idle session expired with its parked REPLY");
    assert_eq!(server.stats().sessions_expired, 1);
}
