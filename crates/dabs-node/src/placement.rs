//! Choosing a server for a new client (R-RE-5).

use crate::config::AppConfig;
use crate::stats::{NodeStats, load_score};
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

/// True when `s` may take clients of `app`: accepting, in the app's sub-group, above the
/// resource minimums.
pub fn eligible(app: &AppConfig, s: &NodeStats) -> bool {
    s.accepting
        && !s.leaving
        && (app.subgroup.is_empty() || app.subgroup.contains(&s.node))
        && s.mem_free_mb >= app.min_free_memory_mb
        && f64::from(s.cpu_percent) <= app.max_cpu_percent
}

/// The ranked choices for a new client of `app`, best first: (i) the least-loaded servers
/// already running a portion with room; (ii) the least-loaded servers, starting a portion;
/// (iii) busier servers with a portion that has room. `pending` counts clients assigned to a
/// node since its last announcement, each as one more session (the unit of [`load_score`]), so
/// a burst of opens does not all land on one node;
/// a `va_hint` (a client coming back to its portion) goes first if a live node hosts it.
/// Ties go to the node that started first, the earliest ballot.
pub fn choose<'a>(
    app: &AppConfig,
    members: impl Iterator<Item = &'a NodeStats>,
    pending: &HashMap<String, u64>,
    va_hint: Option<&str>,
) -> Vec<Choice> {
    let members: Vec<&NodeStats> = members.collect();
    let score = |s: &NodeStats| load_score(s) + pending.get(&s.node).copied().unwrap_or(0) as f64;
    let room = |s: &'a NodeStats| {
        let extra = pending.get(&s.node).copied().unwrap_or(0);
        s.portions
            .iter()
            .filter(|p| p.app == app.name && p.sessions + extra < app.max_sessions_per_portion)
            .min_by_key(|p| p.sessions)
    };
    let mut ranked: Vec<(&NodeStats, f64)> =
        members.iter().filter(|s| eligible(app, s)).map(|s| (*s, score(s))).collect();
    ranked.sort_by(|a, b| {
        a.1.total_cmp(&b.1).then(a.0.started_ms.cmp(&b.0.started_ms)).then(a.0.node.cmp(&b.0.node))
    });

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
        .filter_map(|(s, _)| room(s).map(|p| Choice::Existing { node: s.node.clone(), va: p.va.clone() }))
        .collect();
    let (best, busier) = with_room.split_at(with_room.len().min(1));
    out.extend_from_slice(best);
    out.extend(ranked.iter().map(|(s, _)| Choice::StartNew { node: s.node.clone() }));
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
        }
    }

    #[test]
    fn least_loaded_with_a_portion_first_then_new_portions() {
        let a = stats("a", 50);
        let b = stats("b", 10);
        let mut c = stats("c", 0);
        c.portions.clear();
        let ch = choose(&app(), [&a, &b, &c].into_iter(), &HashMap::new(), None);
        assert_eq!(ch[0], Choice::Existing { node: "b".into(), va: b.portions[0].va.clone() });
        assert!(matches!(&ch[1], Choice::StartNew { node } if node == "c"), "{ch:?}");
    }

    #[test]
    fn pending_assignments_spread_a_burst() {
        let a = stats("a", 10);
        let b = stats("b", 10);
        let mut pending = HashMap::new();
        pending.insert("a".to_string(), 5);
        assert_eq!(choose(&app(), [&a, &b].into_iter(), &pending, None)[0].node(), "b");
    }

    #[test]
    fn subgroup_minimums_and_hint() {
        let mut cfg = app();
        cfg.subgroup = vec!["b".into()];
        let a = stats("a", 0);
        let b = stats("b", 900);
        let ch = choose(&cfg, [&a, &b].into_iter(), &HashMap::new(), None);
        assert!(ch.iter().all(|c| c.node() == "b"), "{ch:?}");
        cfg.subgroup.clear();
        cfg.min_free_memory_mb = 30_000;
        assert!(choose(&cfg, [&a, &b].into_iter(), &HashMap::new(), None).is_empty());
        let hint = a.portions[2].va.clone();
        assert_eq!(choose(&app(), [&a, &b].into_iter(), &HashMap::new(), Some(&hint))[0].node(), "a");
    }

    #[test]
    fn a_full_portion_is_not_available() {
        let mut cfg = app();
        cfg.max_sessions_per_portion = 5;
        let a = stats("a", 5);
        let ch = choose(&cfg, [&a].into_iter(), &HashMap::new(), None);
        assert_eq!(ch, vec![Choice::StartNew { node: "a".into() }]);
    }
}
