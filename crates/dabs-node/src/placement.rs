//! Choosing a server for a new client (R-RE-5).

use crate::config::AppConfig;
use crate::policy::SubFarm;
use crate::stats::NodeStats;
use std::collections::HashMap;

/// Where a client should go.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// To a running portion with room.
    Existing {
        /// The node.
        node: String,
        /// The portion's virtual address.
        va: String,
    },
    /// To a new portion, started on this node.
    StartNew {
        /// The node.
        node: String,
    },
}

impl Choice {
    /// The node chosen.
    pub fn node(&self) -> &str {
        match self {
            Choice::Existing { node, .. } | Choice::StartNew { node } => node,
        }
    }
}

/// The clients a decider has sent each node that the node's last announcement does not show
/// yet: pending = sent − accepted, from the decider's own count of clients sent and the
/// node's announced count of clients it accepted ([`NodeStats::accepted`]). A late
/// announcement thus still counts the clients sent after it was taken, and only those.
///
/// Counters that go backwards do not make pending negative or huge: the count of clients
/// sent and not yet seen accepted never exceeds the clients sent and never goes below zero.
/// A node that restarted (a new `started_ms`) or whose count fell starts afresh at zero
/// pending: the clients sent to its earlier life are gone with it. A node that accepted more
/// than this decider sent (clients placed by a previous decider) also ends at zero. A decider
/// that restarts starts with no counts, so it first sees every node at zero. A node that
/// announces no count (an older version) is taken to include every client sent so far, as
/// before this count existed.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    nodes: HashMap<String, Tally>,
}

/// One node's tally at the decider.
#[derive(Clone, Debug, Default)]
struct Tally {
    /// Clients sent to it (assignments not refused).
    sent: u64,
    /// Of those, the ones its announcements have shown accepted (never more than `sent`).
    seen: u64,
    /// Its last announced count, and the life (`started_ms`) it belongs to.
    accepted: Option<(u64, u64)>,
}

impl Pending {
    /// No clients sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client is being sent to `node`.
    pub fn sent(&mut self, node: &str) {
        self.nodes.entry(node.to_owned()).or_default().sent += 1;
    }

    /// `node` refused the client just sent (or did not confirm it): it is not pending there.
    pub fn refused(&mut self, node: &str) {
        if let Some(t) = self.nodes.get_mut(node) {
            t.sent = t.sent.saturating_sub(1);
            t.seen = t.seen.min(t.sent);
        }
    }

    /// Takes in an announcement of `s` (a new one, not a duplicate or an older one).
    pub fn observe(&mut self, s: &NodeStats) {
        let t = self.nodes.entry(s.node.clone()).or_default();
        match (s.accepted, t.accepted) {
            // Same life, count not lower: the clients it accepted since its last announcement,
            // at most those still pending (the rest were someone else's).
            (Some(now), Some((before, life))) if life == s.started_ms && now >= before => {
                t.seen = t.seen.saturating_add(now - before).min(t.sent);
            }
            // First seen, restarted, count went backwards, or no count: start afresh.
            _ => t.seen = t.sent,
        }
        t.accepted = s.accepted.map(|a| (a, s.started_ms));
    }

    /// Clients sent to `node` that its last announcement does not show.
    pub fn get(&self, node: &str) -> u64 {
        self.nodes.get(node).map_or(0, |t| t.sent - t.seen)
    }

    /// Forgets `node` (it left the farm).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }
}

/// True when `s` may take clients of `app`: accepting, in the app's sub-group, above the
/// resource minimums.
pub fn eligible(app: &AppConfig, s: &NodeStats) -> bool {
    s.accepting
        && !s.leaving
        && (app.subgroup.is_empty() || app.subgroup.contains(&s.node))
        && s.mem_free_mb >= app.min_free_memory_mb
        && f64::from(s.cpu_percent) <= app.max_cpu_percent
}

/// Where another portion of `app` goes when its portions starve on `resource` and this node
/// (`me`) does not take it (R-LB-3): the eligible member with the lowest use of that resource
/// (fewest recent time-outs on it), then the lowest load; ties to the earliest in `members`.
pub fn spawn_target<'a>(
    app: &AppConfig,
    members: &[&'a NodeStats],
    me: &str,
    resource: &str,
) -> Option<&'a NodeStats> {
    let used = |s: &NodeStats| s.starved.iter().find(|(r, _)| r == resource).map_or(0, |(_, n)| *n);
    let farm = crate::stats::ServiceTimes::of(members.iter().copied());
    let load = |s: &NodeStats| crate::stats::load_score(s, &farm);
    members
        .iter()
        .copied()
        .filter(|s| s.node != me && eligible(app, s))
        .min_by(|a, b| used(a).cmp(&used(b)).then(load(a).total_cmp(&load(b))))
}

/// A resource of this server nearing `app`'s minimums (R-LB-5: start portions before users
/// notice): free memory within half the floor above it, or CPU within 10 points of the
/// ceiling. The resource type and the cause, or `None` while there is room.
pub fn running_low(app: &AppConfig, host: &crate::stats::HostSample) -> Option<(&'static str, String)> {
    let floor = app.min_free_memory_mb;
    if floor > 0 && host.mem_free_mb < floor + floor / 2 {
        let cause =
            format!("free memory {} MiB approaching {}'s floor of {floor} MiB", host.mem_free_mb, app.name);
        return Some(("memory", cause));
    }
    let ceiling = app.max_cpu_percent;
    if ceiling < 100.0 && f64::from(host.cpu_percent) > ceiling - 10.0 {
        let cause =
            format!("CPU {:.0}% approaching {}'s ceiling of {ceiling:.0}%", host.cpu_percent, app.name);
        return Some(("cpu", cause));
    }
    None
}

/// The ranked choices for a new client of `app`, best first, with its policy and no
/// sub-farms or client address: see [`choose_with`].
pub fn choose<'a>(
    app: &AppConfig,
    members: impl Iterator<Item = &'a NodeStats>,
    pending: &Pending,
    va_hint: Option<&str>,
) -> Vec<Choice> {
    choose_with(app, &[], members, pending, va_hint, None)
}

/// The ranked choices for a new client of `app`, best first: (i) the server its policy
/// prefers ([`crate::policy::rank`]) among those already running a portion with room; (ii)
/// every ranked server, starting a portion; (iii) lower-ranked servers with a portion that has
/// room. Under the default policy (least loaded) `pending` counts the clients sent to a node
/// that its last announcement does not show, each as one more session of the application on
/// it (the unit of [`load_score`](crate::stats::load_score), weighted by the node's service time), so a burst of opens
/// does not all land on one node; a `va_hint` (a client coming back to its portion) goes first
/// if a live node hosts it. Ties go to the node that started first, the earliest ballot.
/// `client` is the opening client with its measured round trips (for the `closest` policy).
pub fn choose_with<'a>(
    app: &AppConfig,
    subfarms: &[SubFarm],
    members: impl Iterator<Item = &'a NodeStats>,
    pending: &Pending,
    va_hint: Option<&str>,
    client: Option<&crate::policy::Asker>,
) -> Vec<Choice> {
    let members: Vec<&NodeStats> = members.collect();
    let room = |s: &'a NodeStats| {
        let extra = pending.get(&s.node);
        s.portions
            .iter()
            .filter(|p| {
                p.app == app.name
                    && p.status_fault.is_none()
                    && p.sessions + extra < app.max_sessions_per_portion
            })
            .min_by_key(|p| p.sessions)
    };
    let ranked: Vec<&NodeStats> = crate::policy::rank(app, subfarms, &members, pending, client)
        .ranked
        .into_iter()
        .map(|r| r.node)
        .collect();

    let mut out = Vec::new();
    if let Some(va) = va_hint
        // A client coming back to its own portion is not a new client of that server: follow
        // the address even while the server takes no new ones.
        && let Some(host) = members.iter().find(|s| !s.leaving && s.portions.iter().any(|p| p.va == va))
    {
        out.push(Choice::Existing { node: host.node.clone(), va: va.to_owned() });
    }
    let with_room: Vec<Choice> = ranked
        .iter()
        .filter_map(|s| room(s).map(|p| Choice::Existing { node: s.node.clone(), va: p.va.clone() }))
        .collect();
    let (best, busier) = with_room.split_at(with_room.len().min(1));
    out.extend_from_slice(best);
    out.extend(ranked.iter().map(|s| Choice::StartNew { node: s.node.clone() }));
    out.extend_from_slice(busier);
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::tests::stats;

    fn app() -> AppConfig {
        AppConfig {
            name: "calculator-app".into(),
            start_at_init: true,
            subgroup: vec![],
            min_free_memory_mb: 0,
            max_cpu_percent: 100.0,
            max_sessions_per_portion: 1000,
            ..AppConfig::new("calculator-app")
        }
    }

    #[test]
    fn least_loaded_with_a_portion_first_then_new_portions() {
        let a = stats("a", 50);
        let b = stats("b", 10);
        let mut c = stats("c", 0);
        c.portions.clear();
        let ch = choose(&app(), [&a, &b, &c].into_iter(), &Pending::new(), None);
        assert_eq!(ch[0], Choice::Existing { node: "b".into(), va: b.portions[0].va.clone() });
        assert!(matches!(&ch[1], Choice::StartNew { node } if node == "c"), "{ch:?}");
    }

    #[test]
    fn pending_assignments_spread_a_burst() {
        let a = stats("a", 10);
        let b = stats("b", 10);
        let mut pending = Pending::new();
        for _ in 0..5 {
            pending.sent("a");
        }
        assert_eq!(choose(&app(), [&a, &b].into_iter(), &pending, None)[0].node(), "b");
    }

    #[test]
    fn subgroup_minimums_and_hint() {
        let mut cfg = app();
        cfg.subgroup = vec!["b".into()];
        let a = stats("a", 0);
        let b = stats("b", 900);
        let ch = choose(&cfg, [&a, &b].into_iter(), &Pending::new(), None);
        assert!(ch.iter().all(|c| c.node() == "b"), "{ch:?}");
        cfg.subgroup.clear();
        cfg.min_free_memory_mb = 30_000;
        assert!(choose(&cfg, [&a, &b].into_iter(), &Pending::new(), None).is_empty());
        let hint = a.portions[2].va.clone();
        assert_eq!(choose(&app(), [&a, &b].into_iter(), &Pending::new(), Some(&hint))[0].node(), "a");
    }

    #[test]
    fn spawns_go_where_the_starved_resource_is_least_used_then_least_loaded() {
        let me = stats("me", 0);
        let mut a = stats("a", 10);
        a.starved = vec![("db".into(), 3), ("cpu".into(), 0)];
        let mut b = stats("b", 200);
        b.starved = vec![("db".into(), 1)];
        let c = stats("c", 100); // no time-outs at all
        let members = [&me, &a, &b, &c];
        // Lowest use of the starved resource wins over load: c (0 on db), never this node.
        assert_eq!(spawn_target(&app(), &members, "me", "db").unwrap().node, "c");
        // Equal use (0 on cpu for a, c, b): the least loaded of them.
        assert_eq!(spawn_target(&app(), &members, "me", "cpu").unwrap().node, "a");
        // Not eligible (memory floor, or not accepting): skipped even when least used.
        let mut cfg = app();
        cfg.min_free_memory_mb = 30_000;
        assert_eq!(spawn_target(&cfg, &members, "me", "db"), None);
        let mut c_closed = c.clone();
        c_closed.accepting = false;
        assert_eq!(spawn_target(&app(), &[&me, &a, &b, &c_closed], "me", "db").unwrap().node, "b");
        // Alone in the farm: nobody else.
        assert_eq!(spawn_target(&app(), &[&me], "me", "db"), None);
    }

    #[test]
    fn resources_running_low_against_the_minimums() {
        let host = |mem_free_mb, cpu_percent| crate::stats::HostSample {
            mem_free_mb,
            cpu_percent,
            ..Default::default()
        };
        let mut cfg = app();
        assert_eq!(running_low(&cfg, &host(10, 99.0)), None, "no minimums set: never low");
        cfg.min_free_memory_mb = 1000;
        assert_eq!(running_low(&cfg, &host(1600, 50.0)), None);
        assert_eq!(running_low(&cfg, &host(1400, 50.0)).unwrap().0, "memory");
        cfg.max_cpu_percent = 80.0;
        assert_eq!(running_low(&cfg, &host(4000, 65.0)), None);
        let (resource, cause) = running_low(&cfg, &host(4000, 75.0)).unwrap();
        assert_eq!(resource, "cpu");
        assert!(cause.contains("80%"), "{cause}");
    }

    /// `s` announcing `accepted` clients taken in its life that started at `started_ms`.
    fn announced(s: &NodeStats, accepted: u64, started_ms: u64) -> NodeStats {
        NodeStats { accepted: Some(accepted), started_ms, seq: s.seq + 1, ..s.clone() }
    }

    #[test]
    fn pending_is_sent_minus_accepted_across_a_late_report() {
        let a = stats("a", 10);
        let mut p = Pending::new();
        p.observe(&announced(&a, 100, 1));
        assert_eq!(p.get("a"), 0, "first sight: nothing sent yet");
        for _ in 0..5 {
            p.sent("a");
        }
        assert_eq!(p.get("a"), 5);
        // An announcement taken after the node had accepted 3 of the 5 arrives late, after
        // 2 more were sent: 4 are pending, not 0 (clearing on arrival) nor 7.
        p.sent("a");
        p.sent("a");
        p.observe(&announced(&a, 103, 1));
        assert_eq!(p.get("a"), 4);
        // The next one shows all 7.
        p.observe(&announced(&a, 107, 1));
        assert_eq!(p.get("a"), 0);
        // A refused assignment is not pending.
        p.sent("a");
        p.refused("a");
        assert_eq!(p.get("a"), 0);
        assert_eq!(p.get("unknown"), 0);
    }

    #[test]
    fn counters_that_go_backwards_give_neither_negative_nor_huge_pending() {
        let a = stats("a", 10);
        let mut p = Pending::new();
        p.observe(&announced(&a, 500, 1));
        for _ in 0..3 {
            p.sent("a");
        }
        // The node restarted: a new life whose count starts again from zero.
        p.observe(&announced(&a, 1, 2));
        assert_eq!(p.get("a"), 0, "clients of its earlier life are gone with it");
        p.sent("a");
        p.observe(&announced(&a, 2, 2));
        assert_eq!(p.get("a"), 0);
        // Its count falls within one life (a reset we cannot explain): start afresh, no wrap.
        p.sent("a");
        p.sent("a");
        p.observe(&announced(&a, 0, 2));
        assert_eq!(p.get("a"), 0);
        p.sent("a");
        p.observe(&announced(&a, 0, 2));
        assert_eq!(p.get("a"), 1);
        // It accepted far more than this decider sent (a previous decider's clients): zero,
        // and what is sent next counts again.
        p.observe(&announced(&a, 1_000, 2));
        assert_eq!(p.get("a"), 0);
        p.sent("a");
        assert_eq!(p.get("a"), 1);
        // A restarted decider knows nothing: its first look at a busy node is zero pending.
        let mut fresh = Pending::new();
        fresh.observe(&announced(&a, 1_000, 2));
        fresh.sent("a");
        fresh.observe(&announced(&a, 1_000, 2));
        assert_eq!(fresh.get("a"), 1);
        // A node without the count (an older version): every announcement shows everything.
        let mut old = a.clone();
        old.accepted = None;
        p.sent("a");
        p.observe(&old);
        assert_eq!(p.get("a"), 0);
    }

    #[test]
    fn a_late_report_keeps_later_clients_in_the_ranking() {
        // Two equal nodes; 4 clients sent to a, of which its (late) announcement shows 2.
        let a = stats("a", 10);
        let b = stats("b", 10);
        let mut p = Pending::new();
        p.observe(&announced(&a, 0, 1));
        p.observe(&announced(&b, 0, 1));
        for _ in 0..4 {
            p.sent("a");
        }
        // (As many of its clients left meanwhile: its sessions figure is unchanged.)
        let a_now = announced(&a, 2, 1);
        p.observe(&a_now);
        assert_eq!(p.get("a"), 2);
        // Cleared on arrival, a would tie with b and win on its name; the 2 not yet shown
        // send the client to b.
        assert_eq!(choose(&app(), [&a_now, &b].into_iter(), &p, None)[0].node(), "b");
    }

    #[test]
    fn a_faster_node_gets_the_client_with_equal_sessions() {
        let mut fast = stats("fast", 10);
        let mut slow = stats("slow", 10);
        // The slow node started first, so it would win a tie.
        slow.started_ms = fast.started_ms - 1;
        for p in &mut fast.portions {
            p.service_ms = Some(1.0);
        }
        for p in &mut slow.portions {
            p.service_ms = Some(4.0);
        }
        assert_eq!(choose(&app(), [&slow, &fast].into_iter(), &Pending::new(), None)[0].node(), "fast");
        // Until enough is pending there to outweigh the speed.
        let mut p = Pending::new();
        for _ in 0..250 {
            p.sent("fast");
        }
        assert_eq!(choose(&app(), [&slow, &fast].into_iter(), &p, None)[0].node(), "slow");
    }

    #[test]
    fn a_full_portion_is_not_available() {
        let mut cfg = app();
        cfg.max_sessions_per_portion = 5;
        let a = stats("a", 5);
        let ch = choose(&cfg, [&a].into_iter(), &Pending::new(), None);
        assert_eq!(ch, vec![Choice::StartNew { node: "a".into() }]);
    }
}
