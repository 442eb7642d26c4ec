//! The endpoint's promises, each shown with two endpoints driven by hand.

use dabs_proto::{Addr, CallError, CallId, Config, Endpoint, Event, SessionId, Transmit};
use dabs_wire::{Kind, NakCode, NakPayload, SystemCommand, crc8, decode};
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
    pair_with(Config::default(), 1, server_config)
}

/// A session opened by a client with `client_config` whose time-outs follow `client_seed`.
fn pair_with(
    client_config: Config,
    client_seed: u64,
    server_config: Config,
) -> (Endpoint, Endpoint, dabs_proto::SessionId) {
    let t = Duration::ZERO;
    let mut client = Endpoint::new(client_config, client_seed, 0);
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

/// A client that dies half-way through a multi-buffer request leaves a partial message; once
/// its session has been idle for the idle time-out the session expires with it, and the
/// peer's partial-message slot is free again.
#[test]
fn a_half_received_message_does_not_keep_an_abandoned_session_alive() {
    let config =
        Config { idle_timeout: Duration::from_secs(10), max_partial_per_peer: 1, ..Config::default() };
    let (mut client, mut server, s) = pair(config);
    let t = Duration::from_millis(1);
    client.call(t, s, 300, vec![7; 2_000]).unwrap();
    let first: Vec<Transmit> = drain(&mut client).into_iter().take(1).collect();
    deliver(&mut server, 1, t, &first); // the rest never comes
    assert!(events(&mut server).is_empty());
    server.handle_timeout(Duration::from_secs(30));
    assert_eq!(server.session_count(), 0, "the abandoned session expired");
    assert_eq!(server.stats().sessions_expired, 1);

    // The same peer, in a new session, may begin a multi-buffer message again (the one slot
    // is free): it is delivered, not refused with NAK 5.
    let t = Duration::from_secs(31);
    let mut client = Endpoint::new(Config::default(), 3, 0);
    client.open(t, addr(2), 1, vec![]).unwrap();
    deliver(&mut server, 1, t, &drain(&mut client));
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no open") };
    server.accept_open(t, &request, 7, vec![]).unwrap();
    deliver(&mut client, 2, t, &drain(&mut server));
    let Some(Event::Opened { session, .. }) = events(&mut client).pop() else { panic!("not opened") };
    deliver(&mut server, 1, t, &drain(&mut client));
    client.call(t, session, 300, vec![8; 2_000]).unwrap();
    deliver(&mut server, 1, t, &drain(&mut client));
    assert!(drain(&mut server).iter().filter_map(nak_code).next().is_none(), "refused");
    let got = events(&mut server);
    assert!(matches!(got.as_slice(), [Event::Request(r)] if r.payload == vec![8; 2_000]), "{got:?}");
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

/// Runs both endpoints' timers from `from` to `until`, carrying every datagram between them;
/// returns the events each raised (client's, server's).
fn run_both(
    client: &mut Endpoint,
    server: &mut Endpoint,
    from: Duration,
    until: Duration,
) -> (Vec<Event>, Vec<Event>) {
    let (mut client_events, mut server_events) = (Vec::new(), Vec::new());
    let mut t = from;
    loop {
        loop {
            let c = drain(client);
            let s = drain(server);
            if c.is_empty() && s.is_empty() {
                break;
            }
            deliver(server, 1, t, &c);
            deliver(client, 2, t, &s);
        }
        client_events.extend(events(client));
        server_events.extend(events(server));
        match [client.next_deadline(), server.next_deadline()].into_iter().flatten().min() {
            Some(next) if next <= until => {
                t = next.max(t);
                client.handle_timeout(t);
                server.handle_timeout(t);
            }
            _ => return (client_events, server_events),
        }
    }
}

// ---------------------------------------------------------------- retransmission timing

/// A call into a session whose server has gone silent: when the request went out, and when
/// and how the call ended.
struct Unanswered {
    /// Every transmission of the request, the first included.
    sent_at: Vec<Duration>,
    /// When the call failed.
    failed_at: Duration,
    error: CallError,
}

impl Unanswered {
    /// The waits between transmissions, then the wait from the last one to the failure.
    fn intervals(&self) -> Vec<Duration> {
        let mut ends = self.sent_at[1..].to_vec();
        ends.push(self.failed_at);
        self.sent_at.iter().zip(ends).map(|(a, b)| b - *a).collect()
    }
}

fn unanswered_call(config: Config, seed: u64) -> Unanswered {
    let (mut client, _server, s) = pair_with(config, seed, Config::default());
    let t0 = Duration::from_millis(1);
    let call = client.call(t0, s, 300, b"anyone there?".to_vec()).unwrap();
    let first = drain(&mut client);
    assert_eq!(first.len(), 1, "a small request is one datagram");
    let mut sent_at = vec![t0];
    loop {
        // Nothing reaches the server and nothing comes back: only the client's timers move.
        let at = client.next_deadline().expect("a call in flight has a deadline");
        assert!(at < t0 + Duration::from_secs(120), "the call never ended");
        client.handle_timeout(at);
        let out = drain(&mut client);
        for d in &out {
            assert_eq!(d.data, first[0].data, "a re-attempt is the same datagram, original stamp included");
        }
        if !out.is_empty() {
            sent_at.push(at);
        }
        match events(&mut client).as_slice() {
            [] => {}
            [Event::Failed { call: c, error }] if *c == call => {
                return Unanswered { sent_at, failed_at: at, error: error.clone() };
            }
            other => panic!("unexpected events {other:?}"),
        }
    }
}

/// The ACK time-out before each re-attempt without jitter: `ack_timeout`, growing by
/// `backoff` per attempt, never above `ack_timeout_max`; one per transmission.
fn nominal_waits(config: &Config) -> Vec<Duration> {
    let mut wait = config.ack_timeout;
    (0..=config.max_retries)
        .map(|_| {
            let w = wait;
            wait = wait.mul_f64(config.backoff).min(config.ack_timeout_max);
            w
        })
        .collect()
}

/// Checks one unanswered call against `config`: `max_retries` re-attempts, each after the
/// nominal wait spread by at most ± `jitter`, then `GaveUp`. Returns each wait as a fraction
/// of its nominal value.
fn check_retransmission_schedule(config: &Config, run: &Unanswered) -> Vec<f64> {
    let retries = config.max_retries;
    assert_eq!(run.sent_at.len(), retries as usize + 1, "one first transmission and max_retries re-attempts");
    assert_eq!(run.error, CallError::GaveUp { attempts: retries + 1 });
    let nominal = nominal_waits(config);
    let intervals = run.intervals();
    assert_eq!(intervals.len(), nominal.len());
    let slack = 1e-6; // Duration arithmetic rounds to nanoseconds
    let ratios: Vec<f64> =
        intervals.iter().zip(&nominal).map(|(i, n)| i.as_secs_f64() / n.as_secs_f64()).collect();
    for (k, r) in ratios.iter().enumerate() {
        assert!(
            (1.0 - config.jitter - slack..=1.0 + config.jitter + slack).contains(r),
            "wait {k} is {:?}, outside {:?} ± {}: {intervals:?}",
            intervals[k],
            nominal[k],
            config.jitter
        );
        assert!(intervals[k] <= config.ack_timeout_max.mul_f64(1.0 + config.jitter + slack));
    }
    // While the time-out grows, growth outweighs the spread, so each wait is longer than the
    // one before.
    let growing = nominal.windows(2).take_while(|w| w[1] > w[0]).count();
    assert!(growing >= 2, "the configuration must show some growth: {nominal:?}");
    assert!(config.backoff * (1.0 - config.jitter) > 1.0 + config.jitter);
    for k in 0..growing {
        assert!(intervals[k + 1] > intervals[k], "wait {} did not grow: {intervals:?}", k + 1);
    }
    // Then it stays at the cap.
    assert!(nominal[growing..].iter().all(|n| *n == config.ack_timeout_max), "{nominal:?}");
    assert!(growing + 2 < nominal.len(), "the configuration must reach the cap: {nominal:?}");
    ratios
}

/// Largest minus smallest.
fn spread(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::MIN, f64::max) - xs.iter().copied().fold(f64::MAX, f64::min)
}

#[test]
fn an_unanswered_request_is_retried_with_growing_jittered_timeouts_then_gives_up() {
    // The defaults (docs/protocol.md): 200 ms, ×1.6 up to 2 s, ± 20 %, 8 re-attempts.
    let config = Config::default();
    let a = unanswered_call(config.clone(), 11);
    let b = unanswered_call(config.clone(), 12);
    let ra = check_retransmission_schedule(&config, &a);
    let rb = check_retransmission_schedule(&config, &b);
    // Jittered: the waits are spread within one run (the capped ones are all 2 s nominal, yet
    // differ), and two endpoints with different seeds do not retry in step.
    assert!(spread(&ra) > 0.1, "waits barely jittered: {:?}", a.intervals());
    let capped = &a.intervals()[5..];
    assert!(capped.windows(2).all(|w| w[0] != w[1]), "capped waits identical: {capped:?}");
    assert!(
        a.intervals().iter().zip(b.intervals()).all(|(x, y)| *x != y),
        "{:?} {:?}",
        a.intervals(),
        b.intervals()
    );
    assert!(spread(&rb) > 0.1, "waits barely jittered: {:?}", b.intervals());
    // The same seed replays the same schedule.
    assert_eq!(unanswered_call(config, 11).sent_at, a.sent_at);
}

#[test]
fn retransmission_follows_the_configured_backoff_cap_and_retries() {
    let config = Config {
        ack_timeout: Duration::from_millis(50),
        ack_timeout_max: Duration::from_millis(700),
        backoff: 2.0,
        jitter: 0.1,
        max_retries: 6,
        ..Config::default()
    };
    // Nominal waits 50, 100, 200, 400, 700, 700, 700 ms.
    let run = unanswered_call(config.clone(), 5);
    let ratios = check_retransmission_schedule(&config, &run);
    assert!(spread(&ratios) > 0.02, "waits barely jittered: {:?}", run.intervals());
    // Without jitter the waits are exactly the nominal ones: the spread above is the jitter.
    let exact = Config { jitter: 0.0, ..config };
    let run = unanswered_call(exact.clone(), 5);
    let ratios = check_retransmission_schedule(&exact, &run);
    assert!(ratios.iter().all(|r| (r - 1.0).abs() < 1e-6), "{:?}", run.intervals());
}

// ---------------------------------------------------------------- NAKs and re-opening

/// `d` with an impossible sent time (1023 ms) and a CRC that matches again: it arrives
/// intact but malformed, and its receiver NAKs it with 4.
fn malformed(d: &Transmit) -> Vec<u8> {
    let mut b = d.data.clone();
    b[6] |= 0x03;
    b[7] = 0xFF;
    let n = b.len();
    b[n - 1] = crc8(&b[..n - 1]);
    b
}

/// `d` with one payload byte damaged in transit: its receiver NAKs it with 2.
fn corrupted(d: &Transmit) -> Vec<u8> {
    let mut b = d.data.clone();
    b[12] ^= 0x5A;
    b
}

fn command(d: &Transmit) -> u16 {
    decode(&d.data).unwrap().header.command
}

fn session_number(d: &Transmit) -> u8 {
    decode(&d.data).unwrap().header.session
}

/// One call in an open session whose request the network damages, one round at a time.
struct Damaged {
    client: Endpoint,
    server: Endpoint,
    session: SessionId,
    call: CallId,
    number: u8,
    /// The request as the client last sent it.
    request: Transmit,
    t: Duration,
}

impl Damaged {
    fn new(client_config: Config) -> Self {
        let (mut client, server, session) = pair_with(client_config, 1, Config::default());
        let (_, number, _) = client.session_info(session).unwrap();
        let t = Duration::from_millis(1);
        let call = client.call(t, session, 300, b"question".to_vec()).unwrap();
        let mut sent = drain(&mut client);
        assert_eq!(sent.len(), 1);
        Self { client, server, session, call, number, request: sent.remove(0), t }
    }

    /// The request reaches the server damaged so that it answers `code` (2 or 4); the NAK
    /// reaches the client. Returns what the client sends in reply. Rounds are 150 ms apart,
    /// past the 100 ms in which further NAKs count as the same round's.
    fn round(&mut self, code: NakCode) -> Vec<Transmit> {
        let bytes = match code {
            NakCode::Malformed => malformed(&self.request),
            NakCode::CrcMismatch => corrupted(&self.request),
            other => panic!("no damage earns NAK {other}"),
        };
        self.server.handle_datagram(self.t, addr(1), &bytes);
        let nak = drain(&mut self.server);
        assert_eq!(nak.iter().filter_map(nak_code).collect::<Vec<_>>(), [code]);
        assert!(events(&mut self.server).is_empty(), "a damaged request is never delivered");
        deliver(&mut self.client, 2, self.t, &nak);
        assert!(events(&mut self.client).is_empty(), "a NAK {code} does not end the call");
        let sent = drain(&mut self.client);
        self.t += Duration::from_millis(150);
        sent
    }

    /// A round after which the client must only have sent the same request again.
    fn retried(&mut self, code: NakCode, round: usize) {
        let sent = self.round(code);
        assert_eq!(sent.len(), 1, "round {round}: {sent:?}");
        assert_eq!(sent[0].data, self.request.data, "round {round}: the same request, in the same session");
        assert_eq!(self.client.stats().sessions_reopened, 0, "round {round}");
    }

    /// Lets the request through now and checks that the call is answered once, the request
    /// run once, and nothing more happens for a minute.
    fn answered_once(mut self, session_number: u8) {
        let t = self.t;
        deliver(&mut self.server, 1, t, std::slice::from_ref(&self.request));
        let evs = events(&mut self.server);
        let [Event::Request(req)] = evs.as_slice() else { panic!("{evs:?}") };
        assert_eq!((req.payload.as_slice(), req.session_number), (&b"question"[..], session_number));
        self.server.reply(t, req.id, b"answer".to_vec()).unwrap();
        let (client_events, server_events) =
            run_both(&mut self.client, &mut self.server, t, t + Duration::from_secs(60));
        let [Event::Reply { call, payload, .. }] = client_events.as_slice() else {
            panic!("{client_events:?}")
        };
        assert_eq!((*call, payload.as_slice()), (self.call, &b"answer"[..]));
        assert!(server_events.is_empty(), "{server_events:?}");
        assert_eq!(self.server.stats().requests_delivered, 1);
        assert_eq!(self.client.stats().calls_failed, 0);
    }
}

fn malformed_naks_reopen_after(naks_before_reopen: u32) {
    let config = Config { naks_before_reopen, ..Config::default() };
    let mut run = Damaged::new(config);
    for round in 1..naks_before_reopen as usize {
        run.retried(NakCode::Malformed, round);
    }
    // The last NAK 4 re-opens: an OPEN_SESSION goes to the server, and nothing else yet.
    let sent = run.round(NakCode::Malformed);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((command(&sent[0]), session_number(&sent[0])), (SystemCommand::OpenSession.number(), 0));
    assert_eq!(run.client.stats().sessions_reopened, 1);
    let t = run.t;
    deliver(&mut run.server, 1, t, &sent);
    let Some(Event::Open { request, .. }) = events(&mut run.server).pop() else { panic!("no re-open") };
    run.server.accept_open(t, &request, 7, vec![]).unwrap();
    let reply = drain(&mut run.server);
    deliver(&mut run.client, 2, t, &reply);
    let evs = events(&mut run.client);
    assert!(
        matches!(evs.as_slice(), [Event::Reopened { session, .. }] if *session == run.session),
        "{evs:?}"
    );
    let (_, number, _) = run.client.session_info(run.session).unwrap();
    assert_ne!(number, run.number, "the session moved to a new number");
    // The client ACKs the open REPLY and sends the unacknowledged request again, in the new
    // session.
    let mut sent = drain(&mut run.client);
    sent.retain(|d| command(d) == 300);
    assert_eq!(sent.len(), 1, "the request goes again, once");
    assert_eq!(session_number(&sent[0]), number);
    run.request = sent.remove(0);
    run.answered_once(number);
}

#[test]
fn repeated_malformed_naks_reopen_the_session_and_the_request_is_answered_once() {
    malformed_naks_reopen_after(Config::default().naks_before_reopen);
    malformed_naks_reopen_after(1);
    malformed_naks_reopen_after(5);
}

#[test]
fn repeated_crc_naks_are_only_retried() {
    // A new session cannot cure corruption (docs/protocol.md, "NAKs").
    let config = Config::default();
    let rounds = config.naks_before_reopen as usize + 3;
    assert!(rounds < config.max_retries as usize, "the NAK rounds must not use up the re-attempts");
    let mut run = Damaged::new(config);
    for round in 1..=rounds {
        run.retried(NakCode::CrcMismatch, round);
    }
    let number = run.number;
    assert_eq!(run.client.session_info(run.session).unwrap().1, number);
    run.answered_once(number);
}

#[test]
fn crc_naks_do_not_count_towards_reopening_on_malformed_naks() {
    // Only NAK 4 rounds count: two CRC NAKs and then one NAK 4 are not three NAK 4s.
    let config = Config::default();
    assert_eq!(config.naks_before_reopen, 3);
    let mut run = Damaged::new(config);
    run.retried(NakCode::CrcMismatch, 1);
    run.retried(NakCode::CrcMismatch, 2);
    run.retried(NakCode::Malformed, 3);
    run.retried(NakCode::CrcMismatch, 4);
    run.retried(NakCode::Malformed, 5);
    // The third NAK 4 does.
    let sent = run.round(NakCode::Malformed);
    assert_eq!(sent.iter().map(command).collect::<Vec<_>>(), [SystemCommand::OpenSession.number()]);
    assert_eq!(run.client.stats().sessions_reopened, 1);
}

fn closed_reason(events: &[Event]) -> Option<dabs_proto::CloseReason> {
    events.iter().find_map(|e| match e {
        Event::SessionClosed { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// A confirmed close whose first `CLOSE_SESSION` is lost is sent again until the server
/// answers; the server lets the session go, and the client learns it from the REPLY.
#[test]
fn a_confirmed_close_is_retransmitted_until_the_server_answers() {
    let (mut client, mut server, s) = pair(Config::default());
    let t = Duration::from_millis(1);
    let close = client.close_confirmed(t, s).unwrap();
    assert!(!drain(&mut client).is_empty(), "the close is sent at once");
    // ...and lost: the server still holds the session.
    assert_eq!(server.session_count(), 1);
    assert_eq!(
        client.call(t, s, 300, vec![]),
        Err(CallError::SessionLost),
        "a closing session takes no calls"
    );

    let again = client.next_deadline().expect("the close waits for its answer");
    client.handle_timeout(again);
    let resent = drain(&mut client);
    let d = decode(&resent[0].data).unwrap();
    assert_eq!((d.header.kind, d.header.command), (Kind::Request, SystemCommand::CloseSession.number()));
    deliver(&mut server, 1, again, &resent);
    assert_eq!(server.session_count(), 0, "the server let the session go");
    assert_eq!(closed_reason(&events(&mut server)), Some(dabs_proto::CloseReason::ClosedByPeer));

    deliver(&mut client, 2, again, &drain(&mut server));
    let got = events(&mut client);
    assert!(got.iter().any(|e| matches!(e, Event::Reply { call, .. } if *call == close)), "{got:?}");
    assert_eq!(closed_reason(&got), Some(dabs_proto::CloseReason::ClosedLocally));
    assert_eq!(client.session_count(), 0);
}

/// When the server's REPLY to the close is lost, the client's next copy finds no session there
/// (NAK 1): that ends the close. It must not re-open the session (which would leave a new one
/// behind on the server), and nothing more is sent.
#[test]
fn a_confirmed_close_whose_reply_is_lost_ends_on_nak_1_without_reopening() {
    let (mut client, mut server, s) = pair(Config::default());
    let t = Duration::from_millis(1);
    // A call in flight when the client stops fails at once.
    let pending = client.call(t, s, 300, b"q".to_vec()).unwrap();
    deliver(&mut server, 1, t, &drain(&mut client));
    let close = client.close_confirmed(t, s).unwrap();
    let got = events(&mut client);
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Failed { call, error: CallError::SessionLost } if *call == pending)),
        "{got:?}"
    );
    deliver(&mut server, 1, t, &drain(&mut client));
    assert_eq!(server.session_count(), 0);
    let _lost_reply = drain(&mut server);

    let again = client.next_deadline().unwrap();
    client.handle_timeout(again);
    deliver(&mut server, 1, again, &drain(&mut client));
    let nak = drain(&mut server);
    assert_eq!(nak.iter().filter_map(nak_code).collect::<Vec<_>>(), [NakCode::UnknownSession]);
    deliver(&mut client, 2, again, &nak);
    let got = events(&mut client);
    assert!(
        got.iter().any(|e| matches!(e, Event::Failed { call, error: CallError::Nak { code: NakCode::UnknownSession, .. } } if *call == close)),
        "{got:?}"
    );
    assert_eq!(client.session_count(), 0);
    let sent = drain(&mut client);
    assert!(sent.is_empty(), "nothing after the close ended (no re-open): {} datagrams", sent.len());
    client.handle_timeout(again + Duration::from_secs(60));
    assert!(drain(&mut client).is_empty(), "no re-open later either");
    assert_eq!(client.stats().sessions_reopened, 0);
}

/// A server that never answers: the close is given up after the usual retries and the session
/// is gone all the same.
#[test]
fn a_confirmed_close_nobody_answers_is_given_up_and_the_session_removed() {
    let (mut client, _server, s) = pair(Config::default());
    let mut t = Duration::from_millis(1);
    let close = client.close_confirmed(t, s).unwrap();
    let mut rounds = 0;
    while let Some(at) = client.next_deadline() {
        assert!(rounds < 100, "the close never ended");
        rounds += 1;
        t = at;
        client.handle_timeout(t);
        let _ = drain(&mut client);
        if client.session_count() == 0 {
            break;
        }
    }
    assert_eq!(client.session_count(), 0);
    let got = events(&mut client);
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Failed { call, error: CallError::GaveUp { .. } } if *call == close)),
        "{got:?}"
    );
}

/// An open's REPLY that its client never acknowledges (it kept another server's answer, or
/// is gone) closes the server's half-open session once the re-attempts are spent: the
/// application learns of it (and frees the seat) instead of holding it until the idle
/// time-out. A session whose client did acknowledge stays.
#[test]
fn an_open_reply_never_acknowledged_closes_the_half_open_session() {
    let mut server = Endpoint::new(Config::default(), 2, 0);
    let mut silent = Endpoint::new(Config::default(), 10, 0);
    let mut kept = Endpoint::new(Config::default(), 11, 0);
    let t = Duration::ZERO;
    let mut ids = Vec::new();
    for (port, client) in [(10u16, &mut silent), (11, &mut kept)] {
        client.open(t, addr(2), 1, vec![]).unwrap();
        deliver(&mut server, port, t, &drain(client));
        let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no open") };
        ids.push(server.accept_open(t, &request, 7, vec![]).unwrap());
    }
    let replies = drain(&mut server);
    assert_eq!(replies.len(), 2);
    // Only the second client gets its REPLY (and ACKs it); the first hears nothing.
    let to_kept: Vec<Transmit> = replies.into_iter().filter(|d| d.to == addr(11)).collect();
    deliver(&mut kept, 2, t, &to_kept);
    deliver(&mut server, 11, t, &drain(&mut kept));
    let _ = events(&mut server);
    let mut now = t;
    for _ in 0..100 {
        let Some(deadline) = server.next_deadline() else { break };
        if deadline > Duration::from_secs(60) || server.session_count() == 1 {
            break;
        }
        now = deadline;
        server.handle_timeout(now);
        let _ = drain(&mut server);
    }
    assert_eq!(server.session_count(), 1, "the unacknowledged open is closed, by {now:?}");
    assert!(now < Duration::from_secs(60), "well before the idle time-out: {now:?}");
    let got = events(&mut server);
    assert!(
        got.iter().any(|e| matches!(e, Event::SessionClosed { session, reason: dabs_proto::CloseReason::Unacknowledged, .. } if *session == ids[0])),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|e| matches!(e, Event::SessionClosed { session, .. } if *session == ids[1])),
        "{got:?}"
    );
    assert_eq!(server.stats().replies_undelivered, 1);
}

/// `reclaim_idle` closes only the named server sessions idle past `reclaim_idle_after`,
/// longest idle first and no more than asked, as if they had expired.
#[test]
fn reclaim_idle_closes_the_longest_idle_of_the_named_sessions_only() {
    let config = Config { reclaim_idle_after: Duration::from_secs(5), ..Config::default() };
    let mut server = Endpoint::new(config, 2, 0);
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    // Three clients, opened (and last active) at 0 s, 1 s and 2 s.
    for i in 0..3u16 {
        let t = Duration::from_secs(u64::from(i));
        let mut client = Endpoint::new(Config::default(), 10 + u64::from(i), 0);
        client.open(t, addr(2), 1, vec![]).unwrap();
        deliver(&mut server, 10 + i, t, &drain(&mut client));
        let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no open") };
        ids.push(server.accept_open(t, &request, 7, vec![]).unwrap());
        deliver(&mut client, 2, t, &drain(&mut server));
        deliver(&mut server, 10 + i, t, &drain(&mut client)); // the ACK: no longer half-open
        clients.push(client);
    }
    let _ = events(&mut server);
    assert_eq!(server.reclaim_idle(Duration::from_secs(4), &ids, 3), 0, "none idle for 5 s yet");
    assert_eq!(server.reclaim_idle(Duration::from_secs(6), &ids[1..], 3), 1, "only the named ones");
    assert_eq!(server.session_count(), 2, "the unnamed session idle longest stays");
    let got = events(&mut server);
    assert!(
        matches!(got.as_slice(), [Event::SessionClosed { session, reason: dabs_proto::CloseReason::Idle, .. }] if *session == ids[1]),
        "the longest idle of those named goes first: {got:?}"
    );
    assert_eq!(server.reclaim_idle(Duration::from_secs(9), &ids, 1), 1, "no more than asked");
    assert_eq!(server.session_count(), 1);
    assert_eq!(server.stats().sessions_reclaimed, 2);
}

/// A session just accepted whose client has not ACKed the REPLY yet is half-open; the
/// endpoint's own relief may take it, but `reclaim_idle` waits until it is idle long enough.
#[test]
fn reclaim_idle_spares_a_session_just_opened_even_while_half_open() {
    let config = Config { reclaim_idle_after: Duration::from_secs(5), ..Config::default() };
    let mut server = Endpoint::new(config, 2, 0);
    let mut client = Endpoint::new(Config::default(), 10, 0);
    let t = Duration::ZERO;
    client.open(t, addr(2), 1, vec![]).unwrap();
    deliver(&mut server, 10, t, &drain(&mut client));
    let Some(Event::Open { request, .. }) = events(&mut server).pop() else { panic!("no open") };
    let sid = server.accept_open(t, &request, 7, vec![]).unwrap();
    let _reply_not_yet_acked = drain(&mut server);
    assert_eq!(
        server.reclaim_idle(Duration::from_secs(1), &[sid], 1),
        0,
        "taken while its ACK is on the way"
    );
    assert_eq!(server.session_count(), 1);
    assert_eq!(server.reclaim_idle(Duration::from_secs(6), &[sid], 1), 1, "an abandoned half-open one goes");
}
