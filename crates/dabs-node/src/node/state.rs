//! The node's state, one part per concern. The parts sit under one lock because decisions read
//! across them at once (admission reads hosting, balancing and failover together; an
//! announcement reads all of them) and none of them is held across an `await`: one lock keeps
//! every such decision consistent without an order between locks to get wrong.

use super::failover::{ClientEntry, Deferred};
use crate::config::NodeConfig;
use crate::membership::Membership;
use crate::stats::{HostSample, PortionFigures};
use dabs_farm_proto::portion::RuntimeEvent;
use dabs_net::SessionId;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// First queue given to portions.
pub(super) const FIRST_PORTION_QUEUE: u16 = 16;

/// Everything the node's tasks share, by concern.
pub(super) struct State {
    pub(super) members: Members,
    pub(super) deciding: Deciding,
    pub(super) hosting: Hosting,
    pub(super) balancing: Balancing,
    pub(super) failover: FailoverState,
}

/// The farm as this node hears it.
pub(super) struct Members {
    pub(super) membership: Membership,
    /// When an announcement last arrived (ours come back over the group): the MP listener works.
    pub(super) heard_at: Option<Instant>,
    /// Sequence number of this node's last announcement.
    pub(super) seq: u64,
    /// The decider as last logged, to log each change once.
    pub(super) decider: Option<String>,
    /// The members' recent figures and the members that went down, for the operator.
    pub(super) history: crate::history::History,
}

/// What this node remembers as the decider, and of clients placed on a decider's behalf.
pub(super) struct Deciding {
    /// Clients this node sent each node as decider that its last announcement does not show.
    pub(super) pending: crate::placement::Pending,
    /// Virtual addresses of dead portions this decider has moved, and where: every client
    /// coming back to one goes to the same new home.
    pub(super) moved: HashMap<String, String>,
    /// Clients this node has taken on a decider's behalf since it started (announced).
    pub(super) accepted: u64,
}

/// One portion running here.
pub(super) struct Portion {
    pub(super) app: String,
    pub(super) queue: u16,
    pub(super) figures: Arc<PortionFigures>,
    pub(super) events: mpsc::UnboundedSender<RuntimeEvent>,
    pub(super) started_ms: u64,
    /// Its clients, to tell them to move.
    pub(super) clients: Vec<ClientEntry>,
}

/// The portions this node hosts and their clients' sessions.
pub(super) struct Hosting {
    pub(super) portions: BTreeMap<String, Portion>,
    /// Takes new clients at all (false once stopping).
    pub(super) accepting: bool,
    pub(super) next_queue: u16,
    /// The next portion number, persisted so a restarted node never reuses a name.
    pub(super) next_portion: u64,
    /// The portion (virtual address) of each open client session, so a session that ends is
    /// taken off its portion's count.
    pub(super) open_sessions: HashMap<SessionId, String>,
    /// Sessions of clients sent away from a portion (still open, for a call back), so their
    /// end still reaches the portion.
    pub(super) left_sessions: HashMap<SessionId, String>,
    /// Sessions that ended before the task accepting them had counted them (a client that
    /// closes an open's extra answer at once), with when: that task gives the seat back
    /// instead of counting a client nobody has. Entries older than a few seconds are
    /// sessions this node opened itself, dropped as new ones come.
    pub(super) closed_early: HashMap<SessionId, Instant>,
}

/// How long an early close is remembered: far longer than an accept takes to be counted.
const CLOSED_EARLY_KEEP: std::time::Duration = std::time::Duration::from_secs(10);
/// Early closes remembered at most (sessions the node opened itself end here too).
const CLOSED_EARLY_MAX: usize = 4096;

/// The balancing process's memory: host figures, latency marks, starvation, spawns and moves.
pub(super) struct Balancing {
    pub(super) host: HostSample,
    /// Closed to new clients because message latency passed the high-water mark.
    pub(super) latency_closed: bool,
    /// Lock/timer time-outs of the last [`super::balancing::STARVATION_WINDOW`]: (when,
    /// resource, application, portion).
    pub(super) timeouts: VecDeque<(Instant, String, String, String)>,
    /// Last spawn per application, for the cool-down.
    pub(super) last_spawn: HashMap<String, Instant>,
    /// Latency sum and count per portion at the last look, for a windowed mean.
    pub(super) latency_marks: HashMap<String, (u64, u64)>,
    /// Since when this node has been closed to new clients (latency or starvation).
    pub(super) closed_since: Option<Instant>,
    /// When a portion was last moved away from here.
    pub(super) last_move: Option<Instant>,
    /// Portions moved away from here: (virtual address, new node, when).
    pub(super) moved_out: Vec<(String, String, Instant)>,
    /// Each portion's time-out count at the last look, to see which starved since.
    pub(super) starve_marks: HashMap<String, u64>,
    /// When each starving portion last gave clients away.
    pub(super) last_spread: HashMap<String, Instant>,
    /// Since when each portion has been idle, for retirement.
    pub(super) idle_since: super::retire::IdleSince,
    /// When seats of vanished clients were last reclaimed.
    pub(super) last_reclaim: Option<Instant>,
}

/// The failover process's memory: drain, health, deferred clients and their return.
pub(super) struct FailoverState {
    /// The operator drained this node.
    pub(super) draining: bool,
    /// Highest drain nonce accepted, against replays.
    pub(super) drain_nonce: u64,
    /// The last self-assessment (R-FO-1).
    pub(super) health: crate::health::Health,
    /// Clients sent to alternates, to call back when healthy again.
    pub(super) deferred: Vec<Deferred>,
    /// Bounds how fast deferred clients come back.
    pub(super) return_gate: crate::zones::ReturnGate,
    /// A batch run of FAILOVERs is under way.
    pub(super) pushing: bool,
    /// The last FAILOVER nonce sent.
    pub(super) last_nonce: u64,
}

impl Hosting {
    /// A portion queue no portion holds, searched from `next_queue` on (wrapping to
    /// [`FIRST_PORTION_QUEUE`]); `None` when every one is taken. At most one queue per portion
    /// running here can be taken, so the search ends within `portions + 1` candidates: its
    /// length depends on the cap, not on anything a peer sends.
    pub(super) fn free_queue(&self) -> Option<u16> {
        let taken: std::collections::HashSet<u16> = self.portions.values().map(|p| p.queue).collect();
        let span = u32::from(u16::MAX - FIRST_PORTION_QUEUE) + 1;
        let start = u32::from(self.next_queue.max(FIRST_PORTION_QUEUE) - FIRST_PORTION_QUEUE);
        (0..span.min(taken.len() as u32 + 1))
            .map(|i| FIRST_PORTION_QUEUE + ((start + i) % span) as u16)
            .find(|q| !taken.contains(q))
    }

    /// Whether `session` ended before it was counted (and forgets it).
    pub(super) fn ended_before_counted(&mut self, session: SessionId) -> bool {
        self.closed_early.remove(&session).is_some()
    }

    /// Remembers that `session` ended while not (or not yet) counted on a portion.
    pub(super) fn note_closed_uncounted(&mut self, session: SessionId) {
        let now = Instant::now();
        if self.closed_early.len() >= CLOSED_EARLY_MAX {
            self.closed_early.retain(|_, at| now.duration_since(*at) < CLOSED_EARLY_KEEP);
        }
        if self.closed_early.len() < CLOSED_EARLY_MAX {
            self.closed_early.insert(session, now);
        }
    }
}

impl State {
    /// A node's state at start: `next_portion` and `drain_nonce` come from its database.
    pub(super) fn new(config: &NodeConfig, next_portion: u64, drain_nonce: u64) -> Self {
        Self {
            members: Members {
                membership: Membership::new(config.node.lease),
                heard_at: None,
                seq: 0,
                decider: None,
                history: Default::default(),
            },
            deciding: Deciding { pending: Default::default(), moved: HashMap::new(), accepted: 0 },
            hosting: Hosting {
                portions: BTreeMap::new(),
                accepting: true,
                next_queue: FIRST_PORTION_QUEUE,
                next_portion,
                open_sessions: HashMap::new(),
                left_sessions: HashMap::new(),
                closed_early: HashMap::new(),
            },
            balancing: Balancing {
                host: Default::default(),
                latency_closed: false,
                timeouts: Default::default(),
                last_spawn: HashMap::new(),
                latency_marks: HashMap::new(),
                closed_since: None,
                last_move: None,
                moved_out: Vec::new(),
                starve_marks: HashMap::new(),
                last_spread: HashMap::new(),
                idle_since: Default::default(),
                last_reclaim: None,
            },
            failover: FailoverState {
                draining: false,
                drain_nonce,
                health: Default::default(),
                deferred: Vec::new(),
                return_gate: crate::zones::ReturnGate::new(
                    config.failover.return_batch,
                    config.failover.return_interval,
                ),
                pushing: false,
                last_nonce: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosting_with(queues: impl IntoIterator<Item = u16>, next_queue: u16) -> Hosting {
        let (events, _) = mpsc::unbounded_channel();
        let portion = |queue| Portion {
            app: "calc".into(),
            queue,
            figures: Arc::new(PortionFigures::default()),
            events: events.clone(),
            started_ms: 0,
            clients: Vec::new(),
        };
        Hosting {
            portions: queues.into_iter().map(|q| (format!("va-{q}"), portion(q))).collect(),
            accepting: true,
            next_queue,
            next_portion: 0,
            open_sessions: HashMap::new(),
            left_sessions: HashMap::new(),
            closed_early: HashMap::new(),
        }
    }

    #[test]
    fn a_session_closed_before_it_was_counted_is_told_once() {
        let mut h = hosting_with([], FIRST_PORTION_QUEUE);
        let s = SessionId(7);
        assert!(!h.ended_before_counted(s), "nothing closed yet");
        h.note_closed_uncounted(s);
        assert!(h.ended_before_counted(s), "the accepting task learns it ended");
        assert!(!h.ended_before_counted(s), "and only once");
        for n in 0..(CLOSED_EARLY_MAX as u64 + 10) {
            h.note_closed_uncounted(SessionId(1000 + n));
        }
        assert!(h.closed_early.len() <= CLOSED_EARLY_MAX, "bounded: {}", h.closed_early.len());
    }

    #[test]
    fn a_free_queue_is_found_by_a_bounded_search_or_none_when_every_one_is_taken() {
        assert_eq!(hosting_with([], FIRST_PORTION_QUEUE).free_queue(), Some(FIRST_PORTION_QUEUE));
        assert_eq!(hosting_with([16, 17, 19], 16).free_queue(), Some(18));
        // Wraps past the last queue to the first free one.
        assert_eq!(hosting_with([u16::MAX, 16], u16::MAX).free_queue(), Some(17));
        let full = hosting_with(FIRST_PORTION_QUEUE..=u16::MAX, 300);
        assert_eq!(full.portions.len(), 65_520);
        assert_eq!(full.free_queue(), None, "every portion queue taken: a clean None, no endless search");
    }
}
