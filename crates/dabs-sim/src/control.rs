//! A script harness for the farm's control plane (`dabs_farm_proto::control`): one receiving
//! node, one member that holds the key, and a stranger that does not, exchanging sealed
//! requests and announcements that the script replays, mutates, misroutes and forges while
//! the clock moves. The fuzz target `control_script` and the property test
//! `tests/control_props.rs` run it; [`ControlHarness::apply`] checks after every operation
//! that the receiver acted on exactly the member's genuine messages, each at most once.

use dabs_farm_proto::control::{
    AUTH_WINDOW_MS, AnnounceFloor, ReplayGuard, Route, Stamp, open_announcement, open_request,
    seal_announcements, seal_request,
};
use dabs_farm_proto::keys::{FarmKeys, Purpose};
use dabs_farm_proto::records::NodeStats;
use std::collections::HashSet;
use std::net::SocketAddr;

/// The receiver's address.
const RECEIVER: &str = "127.0.0.1:7001";
/// The member's address.
const MEMBER: &str = "127.0.0.1:7002";
/// The stranger's address.
const STRANGER: &str = "127.0.0.1:7003";
/// The receiver's run.
const RECEIVER_STARTED_MS: u64 = 1_000_000;
/// Messages kept for replays and mutations.
const KEPT: usize = 64;

/// One step of a control-plane script.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ControlOp {
    /// The member seals a request (`command`, body of `len` bytes) and sends it.
    Request {
        /// Its MP command number.
        command: u16,
        /// Body length (capped at 64).
        len: u8,
    },
    /// The member sends a request under an earlier counter than its next (a reordered send).
    Late {
        /// How far back (capped by what it has sent).
        back: u8,
    },
    /// The member announces itself.
    Announce,
    /// The member restarts: a new run, counters from 1 again.
    Restart,
    /// A kept message is sent again, verbatim.
    Replay {
        /// Which kept message.
        which: u8,
    },
    /// A kept message is sent with one bit flipped.
    Flip {
        /// Which kept message.
        which: u8,
        /// Which bit (modulo its length).
        bit: u16,
    },
    /// A kept message is sent from the stranger's address.
    Misroute {
        /// Which kept message.
        which: u8,
    },
    /// The stranger seals with a key of its own.
    Forge {
        /// Its MP command number.
        command: u16,
    },
    /// Arbitrary bytes as a request or an announcement.
    Garbage {
        /// As an announcement rather than a request.
        announce: bool,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The clock moves on (ms, capped at 40 s).
    Advance {
        /// How far.
        ms: u16,
    },
}

/// Something the receiver did that it must not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlViolation {
    /// A request was acted on that the member never sealed as such.
    ForeignRequestAccepted(String),
    /// One of the member's requests was acted on twice.
    RequestTwice(u64, u64),
    /// An announcement was taken that the member never sent as such.
    ForeignAnnouncementAccepted(String),
    /// The same announcement was taken twice.
    AnnouncementTwice(u64, u64),
    /// A fresh, genuine message from the member was refused.
    GenuineRefused(String),
}

/// What a run did, for a property test to see that it tried something.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlReport {
    /// Requests acted on.
    pub accepted: u64,
    /// Messages refused.
    pub refused: u64,
    /// Announcements taken.
    pub announcements: u64,
}

/// One receiver, one member, one stranger.
pub struct ControlHarness {
    key: [u8; 32],
    announce_key: [u8; 32],
    stranger_key: [u8; 32],
    now_ms: u64,
    member_started_ms: u64,
    next_counter: u64,
    seq: u64,
    /// (bytes, is announcement) of what the member sent.
    kept: Vec<(Vec<u8>, bool)>,
    /// Every genuine request: (run, counter, command, body).
    genuine: HashSet<(u64, u64, u16, Vec<u8>)>,
    /// Genuine announcements: (run, sequence).
    genuine_announcements: HashSet<(u64, u64)>,
    taken: HashSet<(u64, u64)>,
    taken_announcements: HashSet<(u64, u64)>,
    guard: ReplayGuard,
    floor: AnnounceFloor,
    report: ControlReport,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| unreachable!("literal address"))
}

impl Default for ControlHarness {
    fn default() -> Self {
        let keys = FarmKeys::derive(b"control harness farm secret, 32b");
        let other = FarmKeys::derive(b"a stranger's own secret, 32 byte");
        Self {
            key: *keys.key(Purpose::Control),
            announce_key: *keys.key(Purpose::Announce),
            stranger_key: *other.key(Purpose::Control),
            now_ms: 2_000_000,
            member_started_ms: 1_500_000,
            next_counter: 1,
            seq: 0,
            kept: Vec::new(),
            genuine: HashSet::new(),
            genuine_announcements: HashSet::new(),
            taken: HashSet::new(),
            taken_announcements: HashSet::new(),
            guard: ReplayGuard::default(),
            floor: AnnounceFloor::default(),
            report: ControlReport::default(),
        }
    }
}

impl ControlHarness {
    /// What the run did so far.
    pub fn report(&self) -> &ControlReport {
        &self.report
    }

    fn route(&self, sender: SocketAddr, command: u16) -> Route {
        Route { sender, receiver: addr(RECEIVER), receiver_started_ms: RECEIVER_STARTED_MS, command }
    }

    fn keep(&mut self, bytes: &[u8], announce: bool) {
        if self.kept.len() < KEPT {
            self.kept.push((bytes.to_vec(), announce));
        } else {
            let i = (self.now_ms as usize + bytes.len()) % KEPT;
            self.kept[i] = (bytes.to_vec(), announce);
        }
    }

    fn seal(&mut self, command: u16, counter: u64, len: u8) -> Vec<u8> {
        let body: Vec<u8> = (0..len.min(64)).map(|i| i ^ (counter as u8)).collect();
        let stamp = Stamp {
            node: "member".into(),
            started_ms: self.member_started_ms,
            counter,
            issued_ms: self.now_ms,
        };
        let (bytes, _) = seal_request(&self.key, &self.route(addr(MEMBER), command), &stamp, &body);
        self.genuine.insert((self.member_started_ms, counter, command, body));
        bytes
    }

    /// The receiver takes a request from `from`: what a node does before acting on it.
    /// `fresh_genuine` says the message was just sealed by the member (it must be taken).
    fn receive_request(
        &mut self,
        from: SocketAddr,
        command: u16,
        bytes: &[u8],
        fresh_genuine: bool,
    ) -> Result<(), ControlViolation> {
        let opened = open_request(&self.key, &self.route(from, command), bytes, self.now_ms)
            .and_then(|o| self.guard.check(&o.stamp).map(|()| o));
        match opened {
            Ok(o) => {
                let id = (o.stamp.started_ms, o.stamp.counter);
                if from != addr(MEMBER) || !self.genuine.contains(&(id.0, id.1, command, o.body.clone())) {
                    return Err(ControlViolation::ForeignRequestAccepted(format!("{o:?} from {from}")));
                }
                if !self.taken.insert(id) {
                    return Err(ControlViolation::RequestTwice(id.0, id.1));
                }
                self.report.accepted += 1;
                Ok(())
            }
            Err(e) => {
                self.report.refused += 1;
                if fresh_genuine {
                    return Err(ControlViolation::GenuineRefused(e.to_string()));
                }
                Ok(())
            }
        }
    }

    fn receive_announcement(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        fresh: bool,
    ) -> Result<(), ControlViolation> {
        let taken = open_announcement(&self.announce_key, from, bytes, self.now_ms).and_then(|s| {
            // A part already taken is dropped quietly, like a refusal.
            match self.floor.check(&s)? {
                true => Ok(s),
                false => Err(dabs_farm_proto::control::AuthError::Replayed {
                    node: s.node.clone(),
                    started_ms: s.started_ms,
                    counter: s.seq,
                }),
            }
        });
        match taken {
            Ok(s) => {
                let id = (s.started_ms, s.seq);
                if from != addr(MEMBER) || !self.genuine_announcements.contains(&id) {
                    return Err(ControlViolation::ForeignAnnouncementAccepted(format!("{id:?} from {from}")));
                }
                if !self.taken_announcements.insert(id) {
                    return Err(ControlViolation::AnnouncementTwice(id.0, id.1));
                }
                self.report.announcements += 1;
                Ok(())
            }
            Err(e) => {
                self.report.refused += 1;
                if fresh {
                    return Err(ControlViolation::GenuineRefused(e.to_string()));
                }
                Ok(())
            }
        }
    }

    /// Runs one operation and checks the receiver.
    pub fn apply(&mut self, op: &ControlOp) -> Result<(), ControlViolation> {
        // Requests travel in one command each; a replay keeps the command it was sealed for.
        const COMMAND: u16 = 17;
        match op {
            ControlOp::Request { command, len } => {
                let command = COMMAND + command % 8;
                let counter = self.next_counter;
                self.next_counter += 1;
                let bytes = self.seal(command, counter, *len);
                self.keep(&bytes, false);
                self.receive_request(addr(MEMBER), command, &bytes, true)
            }
            ControlOp::Late { back } => {
                // A new body under a counter the member already used (a sender that reuses one):
                // the receiver took that counter, so it must not act on this.
                if self.next_counter <= 1 {
                    return Ok(());
                }
                // A counter already sent in this run: 1 ..= next - 1.
                let counter = self.next_counter - 1 - u64::from(*back).min(self.next_counter - 2);
                let bytes = self.seal(COMMAND, counter, 4);
                self.receive_request(addr(MEMBER), COMMAND, &bytes, false)
            }
            ControlOp::Announce => {
                self.seq += 1;
                let mut stats = NodeStats::example("member", 1);
                stats.mp = addr(MEMBER);
                stats.started_ms = self.member_started_ms;
                stats.seq = self.seq;
                self.genuine_announcements.insert((stats.started_ms, stats.seq));
                // Two portions: one datagram, as the replay checks here assume.
                stats.portions.truncate(2);
                let bytes =
                    seal_announcements(&self.announce_key, addr(MEMBER), &stats, self.now_ms).swap_remove(0);
                self.keep(&bytes, true);
                self.receive_announcement(addr(MEMBER), &bytes, true)
            }
            ControlOp::Restart => {
                self.member_started_ms = self.now_ms.max(self.member_started_ms + 1);
                self.next_counter = 1;
                self.seq = 0;
                Ok(())
            }
            ControlOp::Replay { which } | ControlOp::Flip { which, .. } | ControlOp::Misroute { which } => {
                let Some((mut bytes, announce)) =
                    (!self.kept.is_empty()).then(|| self.kept[usize::from(*which) % self.kept.len()].clone())
                else {
                    return Ok(());
                };
                let mut from = addr(MEMBER);
                match op {
                    ControlOp::Flip { bit, .. } if !bytes.is_empty() => {
                        let bit = usize::from(*bit) % (bytes.len() * 8);
                        bytes[bit / 8] ^= 1 << (bit % 8);
                    }
                    ControlOp::Misroute { .. } => from = addr(STRANGER),
                    _ => {}
                }
                if announce {
                    self.receive_announcement(from, &bytes, false)
                } else {
                    // Sent in every command a replay could try: accepted in at most its own.
                    (0..8).try_for_each(|c| self.receive_request(from, COMMAND + c, &bytes, false))
                }
            }
            ControlOp::Forge { command } => {
                let command = COMMAND + command % 8;
                let stamp =
                    Stamp { node: "member".into(), started_ms: u64::MAX, counter: 1, issued_ms: self.now_ms };
                let (bytes, _) =
                    seal_request(&self.stranger_key, &self.route(addr(MEMBER), command), &stamp, b"forged");
                self.receive_request(addr(MEMBER), command, &bytes, false)
            }
            ControlOp::Garbage { announce, bytes } => {
                if *announce {
                    self.receive_announcement(addr(MEMBER), bytes, false)
                } else {
                    self.receive_request(addr(MEMBER), COMMAND, bytes, false)
                }
            }
            ControlOp::Advance { ms } => {
                self.now_ms += u64::from(*ms).min(40_000).min(AUTH_WINDOW_MS + 10_000);
                Ok(())
            }
        }
    }
}

/// Runs `ops` on a fresh harness: the first violation, or what the run did.
pub fn run(ops: &[ControlOp]) -> Result<ControlReport, ControlViolation> {
    let mut h = ControlHarness::default();
    for op in ops {
        h.apply(op)?;
    }
    Ok(h.report().clone())
}
