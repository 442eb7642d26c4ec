//! Waiting for a farm by watching its membership rather than sleeping: every node's own view
//! (from its `NodeHandle` in this process, or its operator API `/api/farm`) must list the
//! same members and the same leader, and for group opens to be answered the leader must have
//! been up for a lease (a node decides only once it has heard everyone older than itself).

use crate::wait::{PATIENCE, POLL, eventually, eventually_async};
use dabs_node::NodeHandle;
use dabs_node::config::DEFAULT_LEASE;
use std::collections::BTreeMap;
use std::time::Duration;

/// One node's view of its farm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The node whose view it is.
    pub viewer: String,
    /// The members it lists, with their start times (Unix ms).
    pub members: BTreeMap<String, u64>,
    /// The leader it names, if any.
    pub leader: Option<String>,
}

impl MemberView {
    /// The view of a node running in this process.
    pub fn of_handle(node: &NodeHandle) -> MemberView {
        let (members, leader) = node.members();
        MemberView {
            viewer: node.name().to_owned(),
            members: members.into_iter().map(|m| (m.node, m.started_ms)).collect(),
            leader,
        }
    }

    /// The view a node's operator interface (`http://IP:PORT`) shows at `/api/farm`.
    pub fn of_operator(url: &str) -> Result<MemberView, String> {
        let farm = crate::http::try_get_json(url, "/api/farm")?;
        let listed = farm["members"].as_array().ok_or_else(|| format!("no members in {farm}"))?;
        let members = listed
            .iter()
            .map(|m| Some((m["name"].as_str()?.to_owned(), m["started_ms"].as_u64()?)))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("a member without name or start time in {farm}"))?;
        Ok(MemberView { viewer: url.to_owned(), members, leader: farm["leader"].as_str().map(str::to_owned) })
    }
}

/// Whether `views` agree on a farm of exactly `n` members (the same names in every view).
pub fn agree(views: &[MemberView], n: usize) -> Result<(), String> {
    let first = views.first().ok_or("no views")?;
    for v in views {
        if v.members.len() != n || v.members.keys().ne(first.members.keys()) {
            let names = |v: &MemberView| v.members.keys().cloned().collect::<Vec<_>>();
            return Err(format!(
                "{} sees {:?}, {} sees {:?}",
                first.viewer,
                names(first),
                v.viewer,
                names(v)
            ));
        }
    }
    Ok(())
}

/// Whether `views` agree on `n` members and on a leader that has been up for `lease` at
/// `now_ms` (Unix ms), so that it decides group opens: that leader's name, or why not.
pub fn decider(views: &[MemberView], n: usize, lease: Duration, now_ms: u64) -> Result<String, String> {
    agree(views, n)?;
    let leader = views[0].leader.clone().ok_or_else(|| format!("{} names no leader", views[0].viewer))?;
    if let Some(v) = views.iter().find(|v| v.leader.as_ref() != Some(&leader)) {
        return Err(format!("{} names leader {leader}, {} names {:?}", views[0].viewer, v.viewer, v.leader));
    }
    let started = views[0].members.get(&leader).ok_or_else(|| format!("leader {leader} is not a member"))?;
    // One more millisecond: start times are whole milliseconds, the node's own clock is not.
    let ready = started + lease.as_millis() as u64 + 1;
    if now_ms < ready {
        return Err(format!("leader {leader} decides in {} ms", ready - now_ms));
    }
    Ok(leader)
}

/// Now, in Unix milliseconds (the clock members' start times are on).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Waits until every node in `nodes` (running in this process) sees all of them.
pub async fn wait_for_members(nodes: &[NodeHandle]) {
    eventually_async("every node sees every other", PATIENCE, POLL, async || {
        agree(&nodes.iter().map(MemberView::of_handle).collect::<Vec<_>>(), nodes.len())
    })
    .await
}

/// Waits until every node in `nodes` (running in this process, default lease) sees all of
/// them and their leader decides group opens; returns the leader's name.
pub async fn wait_for_decider(nodes: &[NodeHandle]) -> String {
    eventually_async("the farm's members agree and its leader decides", PATIENCE, POLL, async || {
        decider(
            &nodes.iter().map(MemberView::of_handle).collect::<Vec<_>>(),
            nodes.len(),
            DEFAULT_LEASE,
            unix_ms(),
        )
    })
    .await
}

/// [`wait_for_decider`] for node processes, read through their operator interfaces (`urls`).
/// Blocking: async tests call it through `tokio::task::spawn_blocking`.
pub fn wait_for_decider_at(urls: &[String]) -> String {
    eventually("the farm's members agree and its leader decides", PATIENCE, POLL, || {
        let views = urls.iter().map(|u| MemberView::of_operator(u)).collect::<Result<Vec<_>, _>>()?;
        decider(&views, urls.len(), DEFAULT_LEASE, unix_ms())
    })
}

/// [`wait_for_decider_at`] from async code (on a blocking thread).
pub async fn wait_for_decider_at_async(urls: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || wait_for_decider_at(&urls))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(viewer: &str, members: &[(&str, u64)], leader: Option<&str>) -> MemberView {
        MemberView {
            viewer: viewer.into(),
            members: members.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            leader: leader.map(str::to_owned),
        }
    }

    #[test]
    fn a_farm_decides_once_its_views_agree_and_its_leader_has_been_up_a_lease() {
        let both = [("a", 1_000), ("b", 1_200)];
        let views = [view("a", &both, Some("a")), view("b", &both, Some("a"))];
        let lease = Duration::from_millis(1500);
        assert_eq!(decider(&views, 2, lease, 2_501), Ok("a".into()));
        assert!(decider(&views, 2, lease, 2_400).unwrap_err().contains("decides in"));
        assert!(decider(&views, 3, lease, 9_999).is_err(), "a member missing");
        let split = [view("a", &both, Some("a")), view("b", &both[1..], Some("b"))];
        assert!(agree(&split, 2).unwrap_err().contains("b sees [\"b\"]"));
        let leaders = [view("a", &both, Some("a")), view("b", &both, None)];
        assert!(decider(&leaders, 2, lease, 9_999).is_err(), "no agreed leader");
    }
}
