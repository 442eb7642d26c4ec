//! Scripted, adversarial runs of sans-IO endpoints: the one harness that the cargo-fuzz target
//! (`fuzz/fuzz_targets/endpoint_script.rs`) and the property test (`tests/script_props.rs`)
//! both drive.
//!
//! A run is a [`Setup`] and a list of [`Op`]s. Three endpoints (0, 1, 2) share a network the
//! script controls datagram by datagram: it delivers, drops, duplicates, reorders, corrupts,
//! truncates and misroutes what the endpoints send, injects arbitrary bytes (also on the
//! farm's group path, which endpoints 0 and 1 listen on), moves the clock, and plays each
//! endpoint's application (open, call, accept, reject, reply, close). After every operation
//! the harness checks what the applications saw against what the script did and returns a
//! typed [`Violation`] rather than panicking; a panic can only come from the endpoint itself.
//! Every run ends with [`Harness::quiesce`]: the network heals, the applications answer
//! everything, and every call made must end exactly once within [`QUIESCE_LIMIT`], after
//! which the endpoints must fall silent.
//!
//! Two kinds of checks. Those about an endpoint's own books (one outcome per call, only for
//! calls made, sessions and counters that add up, deadlines in the future, every call ending)
//! hold whatever arrives. Those about content (a request delivered at most once per session
//! and exactly as sent, a reply exactly as the server's application sent it) hold only while
//! every datagram delivered is one an endpoint really sent from where it says: once the
//! script has tampered with one (corrupt, truncate, misroute, inject) a clear session without
//! a CRC cannot tell a forgery from the real thing, so they are switched off for the rest of
//! the run ([`Report::tampered`]).

use dabs_proto::{
    Addr, CallError, CallId, Config, Endpoint, Event, IncomingId, OpenRequest, SessionId, Time,
};
use dabs_wire::NakCode;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

/// Endpoints in a run.
pub const ENDPOINTS: usize = 3;
/// Endpoints that listen on the group address (a farm's multicast group).
pub const GROUP_MEMBERS: [usize; 2] = [0, 1];
/// Largest payload a script's call or reply carries (about ten buffers).
pub const MAX_PAYLOAD: usize = 5_000;
/// Longest single clock step of [`Op::Advance`] and [`Op::Flow`].
pub const MAX_STEP: Duration = Duration::from_secs(40);
/// A datagram still in the network this long after it was sent is gone (a real network's
/// datagram lifetime). Stamps are milliseconds of the hour and compare within half an hour;
/// a copy held back for longer than that is outside what the protocol claims to handle.
pub const DATAGRAM_LIFETIME: Duration = Duration::from_secs(120);
/// Datagrams the network holds at once; more are dropped (a full queue).
pub const NETWORK_CAPACITY: usize = 1024;
/// One-way delay of the healthy network ([`Op::Flow`], quiesce).
pub const LATENCY: Duration = Duration::from_millis(1);
/// After the network heals and the applications answer everything, every call must have
/// ended within this much simulated time.
pub const QUIESCE_LIMIT: Duration = Duration::from_secs(300);
/// Once every call has ended, the endpoints must stop sending within this long...
pub const QUIET_AFTER: Duration = Duration::from_secs(60);
/// ...which is watched for this long.
pub const QUIET_WATCH: Duration = Duration::from_secs(180);
/// Steps (instants at which something happens) one clock move may take before the run is
/// judged a storm.
const STEP_LIMIT: usize = 200_000;
/// Commands of the script's calls: this bit set, the caller's call number in the rest.
const TAG_BIT: u16 = 0x8000;
const WALL_EPOCH_MS: u64 = 1_767_261_600_000; // on the hour
/// NAK codes the applications pick from when they refuse something.
const REJECT_CODES: [u16; 10] = [1, 2, 4, 5, 6, 7, 8, 9, 13, 300];

/// How the endpoints are configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Setup {
    /// Endpoint `i` sends CRCs when `crc_off[i]` is false.
    pub crc_off: [bool; ENDPOINTS],
    /// Endpoint `i` refuses key exchanges when `refuse_encryption[i]` is true.
    pub refuse_encryption: [bool; ENDPOINTS],
    /// Seeds the endpoints' time-out jitter.
    pub seed: u64,
    /// Where in the hour the clock starts, in ms (modulo one hour): stamps wrap there.
    pub hour_offset_ms: u32,
}

/// One step of a script. Indices pick from what exists at that moment, modulo its count (an
/// operation with nothing to pick does nothing); endpoint numbers are taken modulo
/// [`ENDPOINTS`], where a fourth value means the group address (as a destination) or a
/// stranger's address (as a source).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Endpoint `from`'s application opens a session to endpoint `to` (or the group).
    Open {
        /// Opener.
        from: u8,
        /// Target endpoint, or the group.
        to: u8,
        /// Encrypted session.
        encrypt: bool,
    },
    /// Endpoint `from`'s application calls in one of the sessions it has known (closed ones
    /// too: the call must then be refused).
    Call {
        /// Caller.
        from: u8,
        /// Which of its sessions.
        session: u8,
        /// Payload size, modulo [`MAX_PAYLOAD`] + 1.
        size: u16,
    },
    /// Accept a pending `OPEN_SESSION`.
    Accept {
        /// Endpoint.
        at: u8,
        /// Which pending open.
        open: u8,
    },
    /// Refuse a pending `OPEN_SESSION` with a NAK.
    RejectOpen {
        /// Endpoint.
        at: u8,
        /// Which pending open.
        open: u8,
        /// Picks the NAK code.
        code: u8,
    },
    /// Leave a pending `OPEN_SESSION` to someone else (`forget_open`).
    ForgetOpen {
        /// Endpoint.
        at: u8,
        /// Which pending open.
        open: u8,
    },
    /// Reply to a delivered request.
    Reply {
        /// Endpoint.
        at: u8,
        /// Which pending request.
        request: u8,
        /// Payload size, modulo [`MAX_PAYLOAD`] + 1.
        size: u16,
    },
    /// Refuse a delivered request with a NAK.
    Reject {
        /// Endpoint.
        at: u8,
        /// Which pending request.
        request: u8,
        /// Picks the NAK code.
        code: u8,
    },
    /// Reply again to a request already answered: must be refused.
    AnswerAgain {
        /// Endpoint.
        at: u8,
        /// Which answered request.
        request: u8,
    },
    /// Close one of the sessions an application has known.
    Close {
        /// Endpoint.
        at: u8,
        /// Which of its sessions.
        session: u8,
    },
    /// Deliver a datagram in flight (0 is the oldest; any other reorders).
    Deliver {
        /// Which datagram.
        index: u8,
    },
    /// Lose a datagram in flight.
    Drop {
        /// Which datagram.
        index: u8,
    },
    /// Deliver a copy of a datagram in flight, keeping it in flight.
    Duplicate {
        /// Which datagram.
        index: u8,
    },
    /// Deliver a datagram in flight with one byte changed.
    Corrupt {
        /// Which datagram.
        index: u8,
        /// Which byte, modulo its length.
        offset: u16,
        /// XORed into it (0 counts as 1).
        xor: u8,
    },
    /// Deliver a datagram in flight cut short.
    Truncate {
        /// Which datagram.
        index: u8,
        /// Its new length, modulo its length.
        len: u16,
    },
    /// Deliver a datagram in flight from another source or to another destination.
    Misroute {
        /// Which datagram.
        index: u8,
        /// Claimed source (an endpoint or the stranger).
        from: u8,
        /// Destination (an endpoint or the group).
        to: u8,
    },
    /// Deliver arbitrary bytes as a datagram.
    Inject {
        /// Claimed source (an endpoint or the stranger).
        from: u8,
        /// Destination (an endpoint or the group).
        to: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Move the clock, firing every timer on time, with the network frozen (nothing in
    /// flight arrives; what is sent piles up).
    Advance {
        /// Milliseconds, modulo [`MAX_STEP`] + 1 ms.
        ms: u16,
    },
    /// Move the clock over a healthy network: everything arrives after [`LATENCY`], in order.
    Flow {
        /// Milliseconds, modulo [`MAX_STEP`] + 1 ms.
        ms: u16,
        /// The applications accept every open and answer every request as it comes.
        answer: bool,
    },
}

/// Where a run broke a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A call ended twice.
    DoubleOutcome {
        /// Endpoint.
        endpoint: usize,
        /// The call.
        call: CallId,
        /// How it ended first.
        first: String,
        /// How it ended again.
        second: String,
    },
    /// An outcome for a call this endpoint never made (or of the wrong kind: `Opened` for a
    /// call, `Reply` for an open).
    UnknownCall {
        /// Endpoint.
        endpoint: usize,
        /// The call.
        call: CallId,
        /// The event.
        event: String,
    },
    /// A request was delivered twice to one session.
    DuplicateDelivery {
        /// Receiving endpoint.
        endpoint: usize,
        /// Its session.
        session: SessionId,
        /// Calling endpoint.
        caller: usize,
        /// The caller's call number.
        seq: u16,
    },
    /// A request arrived that differs from what its call sent, or for no call made.
    WrongRequest {
        /// Receiving endpoint.
        endpoint: usize,
        /// Calling endpoint.
        caller: usize,
        /// The caller's call number.
        seq: u16,
        /// What is wrong.
        detail: String,
    },
    /// A reply arrived that the peer's application never sent for that call.
    WrongReply {
        /// Endpoint.
        endpoint: usize,
        /// The call.
        call: CallId,
        /// What is wrong.
        detail: String,
    },
    /// An event named a session the application was never given, or one already closed.
    UnknownSession {
        /// Endpoint.
        endpoint: usize,
        /// The session.
        session: SessionId,
        /// The event.
        event: String,
    },
    /// A session was closed twice, or a session number came back.
    SessionReused {
        /// Endpoint.
        endpoint: usize,
        /// The session.
        session: SessionId,
        /// What happened.
        detail: String,
    },
    /// `call` on a live session was refused, or on a closed one accepted.
    CallResult {
        /// Endpoint.
        endpoint: usize,
        /// The session.
        session: SessionId,
        /// Whether the application believed it open.
        live: bool,
        /// What `call` returned.
        result: String,
    },
    /// `close` of a live session did not report it closed.
    CloseUnreported {
        /// Endpoint.
        endpoint: usize,
        /// The session.
        session: SessionId,
    },
    /// A request already answered could be answered again.
    AnsweredTwice {
        /// Endpoint.
        endpoint: usize,
        /// The request.
        id: IncomingId,
    },
    /// After `handle_timeout(now)`, the next deadline was not after `now`.
    DeadlineInPast {
        /// Endpoint.
        endpoint: usize,
        /// The deadline.
        deadline: Time,
    },
    /// More sessions than opens and accepts can explain.
    SessionLeak {
        /// Endpoint.
        endpoint: usize,
        /// `session_count()`.
        count: usize,
        /// Sessions reported closed.
        closed: usize,
        /// Opens made plus sessions accepted.
        created_at_most: usize,
    },
    /// The endpoint's counters disagree with the events it gave.
    StatsMismatch {
        /// Endpoint.
        endpoint: usize,
        /// Which counter.
        counter: &'static str,
        /// Its value.
        stats: u64,
        /// Events seen.
        events: u64,
    },
    /// One clock move took more steps than any honest exchange needs.
    Storm {
        /// Datagrams in flight then.
        in_flight: usize,
    },
    /// The network healed and every application answered, yet calls were still open.
    Unresolved {
        /// Endpoint.
        endpoint: usize,
        /// The calls.
        calls: Vec<CallId>,
        /// How long the harness waited.
        waited: Duration,
    },
    /// Every call had ended, yet the endpoints kept sending.
    NeverQuiet {
        /// Sender of the last datagram seen.
        endpoint: usize,
        /// How long after the last call ended it was sent.
        after: Duration,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Violation {}

/// Where in a run a violation was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// After (or during) the op at this index.
    Op(usize),
    /// During the closing quiesce phase.
    Quiesce,
}

/// A violation, where it happened and at what simulated time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub stage: Stage,
    /// Simulated time.
    pub now: Time,
    /// What.
    pub violation: Violation,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {:?}: {}", self.stage, self.now, self.violation)
    }
}

impl std::error::Error for Failure {}

/// What a run did, for tests that want to know the script exercised something.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Opens made (accepted by `open`).
    pub opens: u64,
    /// Calls made (accepted by `call`).
    pub calls: u64,
    /// `Opened` events.
    pub opened: u64,
    /// `Reply` events.
    pub replies: u64,
    /// `Failed` events.
    pub failed: u64,
    /// `Failed` events by kind of error (`GaveUp`, `Nak 13`, `SessionLost`...).
    pub failures: BTreeMap<String, u64>,
    /// Requests delivered to applications.
    pub requests: u64,
    /// Encrypted sessions that completed their key exchange (either side).
    pub encrypted: u64,
    /// Datagrams handed to endpoints.
    pub delivered: u64,
    /// The script tampered with datagrams (content checks were off from then on).
    pub tampered: bool,
    /// Simulated time the quiesce phase took until every call had ended.
    pub quiesce_time: Duration,
    /// Simulated time of the whole run.
    pub elapsed: Duration,
}

/// Runs a script and its quiesce phase.
pub fn run(setup: &Setup, ops: &[Op]) -> Result<Report, Failure> {
    let mut h = Harness::new(setup);
    for (i, op) in ops.iter().enumerate() {
        h.apply(op).map_err(|violation| Failure { stage: Stage::Op(i), now: h.now, violation })?;
    }
    h.quiesce().map_err(|violation| Failure { stage: Stage::Quiesce, now: h.now, violation })?;
    Ok(h.report())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Endpoint(usize),
    Group,
    Stranger,
}

#[derive(Clone, Debug)]
struct Packet {
    from: Addr,
    to: Addr,
    data: Vec<u8>,
    sent_at: Time,
}

#[derive(Clone, Debug)]
enum CallKind {
    Open,
    Request { seq: u16, size: usize },
}

#[derive(Clone, Debug)]
struct CallRec {
    kind: CallKind,
    outcome: Option<String>,
}

#[derive(Clone, Debug)]
struct Pending {
    id: IncomingId,
    /// (calling endpoint, its call number) when the command carries the script's tag.
    tag: Option<(usize, u16)>,
}

/// One endpoint's application, as the harness plays it.
#[derive(Default)]
struct App {
    calls: HashMap<CallId, CallRec>,
    by_seq: HashMap<u16, CallId>,
    next_seq: u16,
    /// Every session the application was given, in order.
    sessions: Vec<SessionId>,
    known: HashSet<SessionId>,
    closed: HashSet<SessionId>,
    accepted: usize,
    opens_made: usize,
    pending_opens: Vec<OpenRequest>,
    pending: Vec<Pending>,
    answered: Vec<IncomingId>,
    delivered: HashSet<(SessionId, usize, u16)>,
    replies: u64,
    failed: u64,
}

impl App {
    fn live(&self, s: SessionId) -> bool {
        self.known.contains(&s) && !self.closed.contains(&s)
    }

    fn unresolved(&self) -> Vec<CallId> {
        let mut v: Vec<CallId> =
            self.calls.iter().filter(|(_, c)| c.outcome.is_none()).map(|(id, _)| *id).collect();
        v.sort();
        v
    }
}

/// Endpoints, their applications and the network between them.
pub struct Harness {
    now: Time,
    endpoints: Vec<Endpoint>,
    apps: Vec<App>,
    net: VecDeque<Packet>,
    /// Replies the applications sent, by the (caller, call number) they answer.
    sent_replies: HashMap<(usize, u16), Vec<Vec<u8>>>,
    tampered: bool,
    auto_answer: bool,
    /// The endpoint that sent last, and when.
    last_send: Option<(usize, Time)>,
    report: Report,
}

/// The address of endpoint `i`.
pub fn addr(i: usize) -> Addr {
    Addr::Udp(([127, 0, 0, 1], 7001 + i as u16).into())
}

/// The farm group's address.
pub fn group() -> Addr {
    Addr::Udp(([239, 1, 2, 3], 7000).into())
}

/// An address no endpoint has.
pub fn stranger() -> Addr {
    Addr::Udp(([127, 0, 0, 9], 7009).into())
}

fn index_of(a: &Addr) -> Option<usize> {
    (0..ENDPOINTS).find(|i| addr(*i) == *a)
}

fn source(n: u8) -> Target {
    match usize::from(n) % (ENDPOINTS + 1) {
        i if i < ENDPOINTS => Target::Endpoint(i),
        _ => Target::Stranger,
    }
}

fn destination(n: u8) -> Target {
    match usize::from(n) % (ENDPOINTS + 1) {
        i if i < ENDPOINTS => Target::Endpoint(i),
        _ => Target::Group,
    }
}

fn target_addr(t: &Target) -> Addr {
    match t {
        Target::Endpoint(i) => addr(*i),
        Target::Group => group(),
        Target::Stranger => stranger(),
    }
}

fn step(ms: u16) -> Duration {
    Duration::from_millis(u64::from(ms) % (MAX_STEP.as_millis() as u64 + 1))
}

fn payload_size(size: u16) -> usize {
    usize::from(size) % (MAX_PAYLOAD + 1)
}

/// The bytes of a request (`reply == false`) or reply of call `seq` of endpoint `caller`.
fn pattern(caller: usize, seq: u16, len: usize, reply: bool) -> Vec<u8> {
    let salt = if reply { 0x5a } else { 0xa5 };
    (0..len)
        .map(|i| {
            (i as u32).wrapping_mul(131).wrapping_add(u32::from(seq) * 7 + caller as u32 * 29) as u8 ^ salt
        })
        .collect()
}

fn reject_code(code: u8) -> NakCode {
    NakCode::from_number(REJECT_CODES[usize::from(code) % REJECT_CODES.len()])
}

fn pick<T>(v: &[T], i: u8) -> Option<usize> {
    (!v.is_empty()).then(|| usize::from(i) % v.len())
}

impl Harness {
    /// Three endpoints configured by `setup`, at [`addr`]`(0..3)`, at time zero.
    pub fn new(setup: &Setup) -> Self {
        let epoch = WALL_EPOCH_MS + u64::from(setup.hour_offset_ms) % 3_600_000;
        let endpoints = (0..ENDPOINTS)
            .map(|i| {
                let config = Config {
                    crc: !setup.crc_off[i],
                    accept_encryption: !setup.refuse_encryption[i],
                    ..Config::default()
                };
                Endpoint::new(config, setup.seed.wrapping_add(i as u64), epoch)
            })
            .collect();
        Self {
            now: Duration::ZERO,
            endpoints,
            apps: (0..ENDPOINTS).map(|_| App { next_seq: 1, ..App::default() }).collect(),
            net: VecDeque::new(),
            sent_replies: HashMap::new(),
            tampered: false,
            auto_answer: false,
            last_send: None,
            report: Report::default(),
        }
    }

    /// Simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// What the run did so far.
    pub fn report(&self) -> Report {
        let mut r = self.report.clone();
        r.tampered = self.tampered;
        r.elapsed = self.now;
        r.encrypted = self.endpoints.iter().map(|e| e.stats().sessions_encrypted).sum();
        r
    }

    /// Applies one operation, then checks every invariant.
    pub fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        match op {
            Op::Open { from, to, encrypt } => {
                self.open(usize::from(*from) % ENDPOINTS, destination(*to), *encrypt)?
            }
            Op::Call { from, session, size } => {
                self.call(usize::from(*from) % ENDPOINTS, *session, payload_size(*size))?
            }
            Op::Accept { at, open } => {
                let at = usize::from(*at) % ENDPOINTS;
                if let Some(i) = pick(&self.apps[at].pending_opens, *open) {
                    let req = self.apps[at].pending_opens.remove(i);
                    self.accept(at, &req)?;
                }
            }
            Op::RejectOpen { at, open, code } => {
                let at = usize::from(*at) % ENDPOINTS;
                if let Some(i) = pick(&self.apps[at].pending_opens, *open) {
                    let req = self.apps[at].pending_opens.remove(i);
                    self.endpoints[at].reject_open(self.now, &req, reject_code(*code), "script says no");
                }
            }
            Op::ForgetOpen { at, open } => {
                let at = usize::from(*at) % ENDPOINTS;
                if let Some(i) = pick(&self.apps[at].pending_opens, *open) {
                    let req = self.apps[at].pending_opens.remove(i);
                    self.endpoints[at].forget_open(&req);
                }
            }
            Op::Reply { at, request, size } => {
                let at = usize::from(*at) % ENDPOINTS;
                if let Some(i) = pick(&self.apps[at].pending, *request) {
                    let p = self.apps[at].pending.remove(i);
                    self.reply(at, p, Some(payload_size(*size)));
                }
            }
            Op::Reject { at, request, code } => {
                let at = usize::from(*at) % ENDPOINTS;
                if let Some(i) = pick(&self.apps[at].pending, *request) {
                    let p = self.apps[at].pending.remove(i);
                    let _ = self.endpoints[at].reject(self.now, p.id, reject_code(*code), "script refuses");
                    self.apps[at].answered.push(p.id);
                }
            }
            Op::AnswerAgain { at, request } => {
                let at = usize::from(*at) % ENDPOINTS;
                if let Some(i) = pick(&self.apps[at].answered, *request) {
                    let id = self.apps[at].answered[i];
                    if self.endpoints[at].reply(self.now, id, b"again".to_vec()).is_ok() {
                        return Err(Violation::AnsweredTwice { endpoint: at, id });
                    }
                }
            }
            Op::Close { at, session } => {
                let at = usize::from(*at) % ENDPOINTS;
                if let Some(i) = pick(&self.apps[at].sessions, *session) {
                    let sid = self.apps[at].sessions[i];
                    let live = self.apps[at].live(sid);
                    self.endpoints[at].close(self.now, sid);
                    self.settle()?;
                    if live && !self.apps[at].closed.contains(&sid) {
                        return Err(Violation::CloseUnreported { endpoint: at, session: sid });
                    }
                }
            }
            Op::Deliver { index } => {
                if let Some(i) = pick(self.net.make_contiguous(), *index) {
                    let p = self.net.remove(i).expect("picked");
                    self.deliver(&p)?;
                }
            }
            Op::Drop { index } => {
                if let Some(i) = pick(self.net.make_contiguous(), *index) {
                    self.net.remove(i);
                }
            }
            Op::Duplicate { index } => {
                if let Some(i) = pick(self.net.make_contiguous(), *index) {
                    let p = self.net[i].clone();
                    self.deliver(&p)?;
                }
            }
            Op::Corrupt { index, offset, xor } => {
                if let Some(i) = pick(self.net.make_contiguous(), *index) {
                    let mut p = self.net.remove(i).expect("picked");
                    if !p.data.is_empty() {
                        let at = usize::from(*offset) % p.data.len();
                        p.data[at] ^= (*xor).max(1);
                    }
                    self.tampered = true;
                    self.deliver(&p)?;
                }
            }
            Op::Truncate { index, len } => {
                if let Some(i) = pick(self.net.make_contiguous(), *index) {
                    let mut p = self.net.remove(i).expect("picked");
                    let n = p.data.len();
                    p.data.truncate(if n == 0 { 0 } else { usize::from(*len) % n });
                    self.tampered = true;
                    self.deliver(&p)?;
                }
            }
            Op::Misroute { index, from, to } => {
                if let Some(i) = pick(self.net.make_contiguous(), *index) {
                    let mut p = self.net.remove(i).expect("picked");
                    p.from = target_addr(&source(*from));
                    p.to = target_addr(&destination(*to));
                    self.tampered = true;
                    self.deliver(&p)?;
                }
            }
            Op::Inject { from, to, bytes } => {
                let p = Packet {
                    from: target_addr(&source(*from)),
                    to: target_addr(&destination(*to)),
                    data: bytes.clone(),
                    sent_at: self.now,
                };
                self.tampered = true;
                self.deliver(&p)?;
            }
            Op::Advance { ms } => {
                let until = self.now + step(*ms);
                self.run_until(until, false, false)?;
            }
            Op::Flow { ms, answer } => {
                let until = self.now + step(*ms);
                self.auto_answer = *answer;
                let r = self.run_until(until, true, false);
                self.auto_answer = false;
                r?;
            }
        }
        self.settle()?;
        self.check()
    }

    /// Heals the network, has every application answer everything, and runs until every
    /// call has ended (at most [`QUIESCE_LIMIT`]); then watches the endpoints fall silent.
    pub fn quiesce(&mut self) -> Result<(), Violation> {
        self.auto_answer = true;
        self.settle()?;
        let start = self.now;
        let limit = start + QUIESCE_LIMIT;
        while self.apps.iter().any(|a| !a.unresolved().is_empty()) {
            if self.now >= limit {
                let (endpoint, app) =
                    self.apps.iter().enumerate().find(|(_, a)| !a.unresolved().is_empty()).expect("some");
                return Err(Violation::Unresolved {
                    endpoint,
                    calls: app.unresolved(),
                    waited: self.now - start,
                });
            }
            // Small slices, so that the check above sees the end soon after it comes.
            let until = (self.now + Duration::from_millis(100)).min(limit);
            self.run_until(until, true, true)?;
        }
        self.report.quiesce_time = self.now - start;
        let done = self.now;
        let watch_end = done + QUIET_WATCH;
        while self.now < watch_end {
            let until = (self.now + Duration::from_secs(1)).min(watch_end);
            self.run_until(until, true, false)?;
            if let Some((endpoint, at)) = self.last_send
                && at > done + QUIET_AFTER
            {
                return Err(Violation::NeverQuiet { endpoint, after: at - done });
            }
        }
        self.auto_answer = false;
        Ok(())
    }

    fn open(&mut self, from: usize, to: Target, encrypt: bool) -> Result<(), Violation> {
        let to = match to {
            Target::Endpoint(i) if i == from => addr((i + 1) % ENDPOINTS),
            t => target_addr(&t),
        };
        let queue = 10 + from as u16;
        let r = self.endpoints[from].open_with(self.now, to, queue, b"{}".to_vec(), encrypt);
        match r {
            Ok(call) => {
                let app = &mut self.apps[from];
                app.calls.insert(call, CallRec { kind: CallKind::Open, outcome: None });
                app.opens_made += 1;
                self.report.opens += 1;
            }
            Err(CallError::SessionsExhausted) => {}
            Err(e) => {
                return Err(Violation::CallResult {
                    endpoint: from,
                    session: SessionId(0),
                    live: true,
                    result: format!("open: {e:?}"),
                });
            }
        }
        Ok(())
    }

    fn call(&mut self, from: usize, session: u8, size: usize) -> Result<(), Violation> {
        let app = &mut self.apps[from];
        let Some(i) = pick(&app.sessions, session) else {
            return Ok(());
        };
        if app.next_seq >= TAG_BIT {
            return Ok(());
        }
        let sid = app.sessions[i];
        let live = app.live(sid);
        let seq = app.next_seq;
        let r = self.endpoints[from].call(self.now, sid, TAG_BIT | seq, pattern(from, seq, size, false));
        let app = &mut self.apps[from];
        match (live, r) {
            (true, Ok(call)) => {
                app.next_seq += 1;
                app.calls.insert(call, CallRec { kind: CallKind::Request { seq, size }, outcome: None });
                app.by_seq.insert(seq, call);
                self.report.calls += 1;
                Ok(())
            }
            (false, Err(CallError::UnknownSession)) => Ok(()),
            (live, r) => {
                Err(Violation::CallResult { endpoint: from, session: sid, live, result: format!("{r:?}") })
            }
        }
    }

    fn accept(&mut self, at: usize, req: &OpenRequest) -> Result<(), Violation> {
        let queue = 100 + at as u16;
        match self.endpoints[at].accept_open(self.now, req, queue, b"{\"ok\":1}".to_vec()) {
            Ok(sid) => {
                let app = &mut self.apps[at];
                if app.closed.contains(&sid) {
                    return Err(Violation::SessionReused {
                        endpoint: at,
                        session: sid,
                        detail: "accept_open returned a closed session".into(),
                    });
                }
                if app.known.insert(sid) {
                    app.sessions.push(sid);
                    app.accepted += 1;
                }
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    fn reply(&mut self, at: usize, p: Pending, size: Option<usize>) {
        let size = size.unwrap_or_else(|| p.tag.map_or(0, |(c, s)| (usize::from(s) * 397 + c * 1000) % 1200));
        let payload = match p.tag {
            Some((caller, seq)) => pattern(caller, seq, size, true),
            None => vec![0xee; size],
        };
        if self.endpoints[at].reply(self.now, p.id, payload.clone()).is_ok()
            && let Some(tag) = p.tag
        {
            self.sent_replies.entry(tag).or_default().push(payload);
        }
        self.apps[at].answered.push(p.id);
    }

    /// Hands a datagram to its destination (each group member but its sender, for the group).
    fn deliver(&mut self, p: &Packet) -> Result<(), Violation> {
        if p.to == group() {
            for i in GROUP_MEMBERS {
                if addr(i) != p.from {
                    self.report.delivered += 1;
                    self.endpoints[i].handle_group_datagram(self.now, p.from.clone(), &p.data);
                }
            }
        } else if let Some(i) = index_of(&p.to) {
            self.report.delivered += 1;
            self.endpoints[i].handle_datagram(self.now, p.from.clone(), &p.data);
        }
        Ok(())
    }

    /// Fires what is due, collects what the endpoints sent, and plays the applications.
    fn settle(&mut self) -> Result<(), Violation> {
        loop {
            for ep in &mut self.endpoints {
                ep.handle_timeout(self.now);
            }
            self.collect();
            let mut any = false;
            for i in 0..ENDPOINTS {
                while let Some(e) = self.endpoints[i].poll_event() {
                    any = true;
                    self.observe(i, e)?;
                }
            }
            if self.auto_answer {
                for i in 0..ENDPOINTS {
                    for req in std::mem::take(&mut self.apps[i].pending_opens) {
                        any = true;
                        self.accept(i, &req)?;
                    }
                    for p in std::mem::take(&mut self.apps[i].pending) {
                        any = true;
                        self.reply(i, p, None);
                    }
                }
            }
            if !any {
                return Ok(());
            }
        }
    }

    fn collect(&mut self) {
        for i in 0..ENDPOINTS {
            while let Some(t) = self.endpoints[i].poll_transmit() {
                self.last_send = Some((i, self.now));
                let routable = t.to == group() || index_of(&t.to).is_some();
                if routable && self.net.len() < NETWORK_CAPACITY {
                    self.net.push_back(Packet { from: addr(i), to: t.to, data: t.data, sent_at: self.now });
                }
            }
        }
    }

    /// Moves the clock to `until`, stopping at every timer (and, with `flow`, at every
    /// arrival after [`LATENCY`]). With `stop_when_resolved`, returns early once no call is
    /// left open.
    fn run_until(&mut self, until: Time, flow: bool, stop_when_resolved: bool) -> Result<(), Violation> {
        for _ in 0..STEP_LIMIT {
            self.expire();
            if flow {
                while self.net.front().is_some_and(|p| p.sent_at + LATENCY <= self.now) {
                    let p = self.net.pop_front().expect("front");
                    self.deliver(&p)?;
                }
            }
            self.settle()?;
            self.check()?;
            if stop_when_resolved && self.apps.iter().all(|a| a.unresolved().is_empty()) {
                return Ok(());
            }
            let arrival = if flow { self.net.front().map(|p| p.sent_at + LATENCY) } else { None };
            let timer = self.endpoints.iter_mut().filter_map(Endpoint::next_deadline).min();
            let next = match (arrival, timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match next {
                Some(t) if t <= until => self.now = self.now.max(t),
                _ => {
                    self.now = until;
                    self.expire();
                    return Ok(());
                }
            }
        }
        Err(Violation::Storm { in_flight: self.net.len() })
    }

    /// Datagrams older than [`DATAGRAM_LIFETIME`] leave the network.
    fn expire(&mut self) {
        // Sends are appended at the current time, which never goes back: oldest first.
        while self.net.front().is_some_and(|p| p.sent_at + DATAGRAM_LIFETIME < self.now) {
            self.net.pop_front();
        }
    }

    fn observe(&mut self, i: usize, e: Event) -> Result<(), Violation> {
        let honest = !self.tampered;
        let app = &mut self.apps[i];
        match e {
            Event::Request(inc) => {
                self.report.requests += 1;
                if !app.live(inc.id.session) {
                    return Err(Violation::UnknownSession {
                        endpoint: i,
                        session: inc.id.session,
                        event: "Request".into(),
                    });
                }
                let caller = index_of(&inc.peer);
                let tag = match caller {
                    Some(c) if inc.command & TAG_BIT != 0 => Some((c, inc.command & !TAG_BIT)),
                    _ => None,
                };
                if honest {
                    let Some((caller, seq)) = tag else {
                        return Err(Violation::WrongRequest {
                            endpoint: i,
                            caller: caller.unwrap_or(usize::MAX),
                            seq: 0,
                            detail: format!("untagged request, command {}", inc.command),
                        });
                    };
                    let made =
                        self.apps[caller].by_seq.get(&seq).and_then(|c| self.apps[caller].calls.get(c));
                    let Some(CallRec { kind: CallKind::Request { size, .. }, .. }) = made else {
                        return Err(Violation::WrongRequest {
                            endpoint: i,
                            caller,
                            seq,
                            detail: "no such call".into(),
                        });
                    };
                    if inc.payload != pattern(caller, seq, *size, false) {
                        return Err(Violation::WrongRequest {
                            endpoint: i,
                            caller,
                            seq,
                            detail: format!(
                                "payload of {} bytes differs from the {size} sent",
                                inc.payload.len()
                            ),
                        });
                    }
                    if !self.apps[i].delivered.insert((inc.id.session, caller, seq)) {
                        return Err(Violation::DuplicateDelivery {
                            endpoint: i,
                            session: inc.id.session,
                            caller,
                            seq,
                        });
                    }
                }
                let app = &mut self.apps[i];
                // The same id again is a new delivery (its stamp came round again): answerable.
                app.answered.retain(|a| *a != inc.id);
                app.pending.push(Pending { id: inc.id, tag });
            }
            Event::Open { request, .. } => app.pending_opens.push(request),
            Event::Sessionless { .. } | Event::ReplyUndelivered { .. } => {}
            Event::Opened { call, session, .. } => {
                Self::outcome(i, app, call, true, "Opened")?;
                self.report.opened += 1;
                if app.known.contains(&session) || app.closed.contains(&session) {
                    return Err(Violation::SessionReused {
                        endpoint: i,
                        session,
                        detail: "Opened named a session already known".into(),
                    });
                }
                app.known.insert(session);
                app.sessions.push(session);
            }
            Event::Reopened { session, .. } => {
                if !app.live(session) {
                    return Err(Violation::UnknownSession { endpoint: i, session, event: "Reopened".into() });
                }
            }
            Event::Reply { call, payload, .. } => {
                Self::outcome(i, app, call, false, "Reply")?;
                app.replies += 1;
                self.report.replies += 1;
                if honest {
                    let Some(CallKind::Request { seq, .. }) = app.calls.get(&call).map(|c| &c.kind) else {
                        unreachable!("checked by outcome")
                    };
                    let sent = self.sent_replies.get(&(i, *seq));
                    if !sent.is_some_and(|s| s.contains(&payload)) {
                        return Err(Violation::WrongReply {
                            endpoint: i,
                            call,
                            detail: format!(
                                "{} bytes; the peer's application sent {:?}",
                                payload.len(),
                                sent.map(|s| s.iter().map(Vec::len).collect::<Vec<_>>())
                            ),
                        });
                    }
                }
            }
            Event::Failed { call, error } => {
                let is_open = matches!(app.calls.get(&call).map(|c| &c.kind), Some(CallKind::Open));
                Self::outcome(i, app, call, is_open, &format!("Failed({error:?})"))?;
                app.failed += 1;
                self.report.failed += 1;
                let kind = match &error {
                    CallError::Nak { code, .. } => format!("Nak {}", code.number()),
                    e => format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_owned(),
                };
                *self.report.failures.entry(kind).or_default() += 1;
            }
            Event::SessionClosed { session, .. } => {
                if !app.closed.insert(session) {
                    return Err(Violation::SessionReused {
                        endpoint: i,
                        session,
                        detail: "closed twice".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Records how `call` ended: it must be a call of this kind, not ended yet.
    fn outcome(i: usize, app: &mut App, call: CallId, open: bool, how: &str) -> Result<(), Violation> {
        let Some(rec) = app.calls.get_mut(&call) else {
            return Err(Violation::UnknownCall { endpoint: i, call, event: how.into() });
        };
        if matches!(rec.kind, CallKind::Open) != open {
            return Err(Violation::UnknownCall {
                endpoint: i,
                call,
                event: format!("{how} for {:?}", rec.kind),
            });
        }
        if let Some(first) = &rec.outcome {
            return Err(Violation::DoubleOutcome {
                endpoint: i,
                call,
                first: first.clone(),
                second: how.into(),
            });
        }
        rec.outcome = Some(how.into());
        Ok(())
    }

    /// The invariants that hold between operations whatever happened.
    fn check(&mut self) -> Result<(), Violation> {
        for (i, (ep, app)) in self.endpoints.iter_mut().zip(&self.apps).enumerate() {
            if let Some(deadline) = ep.next_deadline()
                && deadline <= self.now
            {
                return Err(Violation::DeadlineInPast { endpoint: i, deadline });
            }
            let created_at_most = app.opens_made + app.accepted;
            if ep.session_count() + app.closed.len() > created_at_most {
                return Err(Violation::SessionLeak {
                    endpoint: i,
                    count: ep.session_count(),
                    closed: app.closed.len(),
                    created_at_most,
                });
            }
            let stats = ep.stats();
            for (counter, stats, events) in [
                ("calls_answered", stats.calls_answered, app.replies),
                ("calls_failed", stats.calls_failed, app.failed),
            ] {
                if stats != events {
                    return Err(Violation::StatsMismatch { endpoint: i, counter, stats, events });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker itself must be able to fail: fabricated events that break the rules are
    /// caught.
    #[test]
    fn the_checker_catches_a_second_outcome_and_an_unknown_call() {
        let mut h = Harness::new(&Setup::default());
        let call = CallId(42);
        h.apps[1].calls.insert(call, CallRec { kind: CallKind::Request { seq: 1, size: 0 }, outcome: None });
        h.apps[1].by_seq.insert(1, call);
        let failed = || Event::Failed { call, error: CallError::SessionLost };
        assert_eq!(h.observe(1, failed()), Ok(()));
        assert!(matches!(h.observe(1, failed()), Err(Violation::DoubleOutcome { endpoint: 1, .. })));
        assert!(matches!(h.observe(0, failed()), Err(Violation::UnknownCall { endpoint: 0, .. })));
        // The endpoint's counters saw none of these.
        assert!(matches!(h.check(), Err(Violation::StatsMismatch { counter: "calls_failed", .. })));
    }
}
