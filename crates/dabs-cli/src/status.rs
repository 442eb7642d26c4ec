//! `dabs status --farm GROUP:PORT`: the farm as a table, from the members' own announcements.

use dabs_node::stats::{NodeStats, ServiceTimes, load_score};
use dabs_wire::{SystemCommand, decode};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Listens on the group for `listen` and returns the latest announcement of each member.
pub async fn collect(
    group: SocketAddrV4,
    interface: Ipv4Addr,
    listen: Duration,
) -> Result<Vec<NodeStats>, String> {
    let socket = dabs_net::join_group(group, interface).map_err(|e| format!("cannot join {group}: {e}"))?;
    // The nodes' own view of announcements: parts put together, leavers dropped.
    let mut latest = dabs_node::membership::Membership::new(listen);
    let deadline = Instant::now() + listen;
    let mut buf = [0u8; 2048];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline.into(), socket.recv_from(&mut buf)).await {
        let Ok(d) = decode(&buf[..n]) else { continue };
        if d.header.command != SystemCommand::Announce.number() {
            continue;
        }
        if let Ok(s) = NodeStats::from_cbor(d.payload) {
            latest.observe(s, Instant::now());
        }
    }
    Ok(latest.live().cloned().collect())
}

/// The decider among `members`: the one that says it decides (under etcd, the election's
/// leader), else the earliest started (by name on a tie), as a multicast farm picks it.
fn leader(members: &[NodeStats]) -> Option<String> {
    let said = members.iter().filter(|m| m.decider).max_by_key(|m| m.started_ms);
    said.or_else(|| members.iter().min_by_key(|m| (m.started_ms, m.node.clone()))).map(|m| m.node.clone())
}

/// The members as one JSON object, with the table's columns under readable names (`--json`).
pub fn json(group: SocketAddrV4, members: &[NodeStats]) -> Value {
    let leader = leader(members);
    let farm = ServiceTimes::of(members);
    json!({
        "farm": members.first().map(|m| m.farm.clone()),
        "group": group.to_string(),
        "members": members.iter().map(|m| json!({
            "node": m.node,
            "mp": m.mp.to_string(),
            "operator_url": m.operator.map(|o| format!("http://{o}")),
            "leader": Some(&m.node) == leader.as_ref(),
            "cpu_percent": m.cpu_percent,
            "mem_free_mb": m.mem_free_mb,
            "sessions": m.sessions(),
            "portions": m.portions.len(),
            "health": m.health,
            "accepting": m.accepting,
            "draining": m.draining,
            "load": load_score(m, &farm),
        })).collect::<Vec<_>>(),
    })
}

/// Renders members as an aligned table.
pub fn table(members: &[NodeStats]) -> String {
    let leader = leader(members);
    let farm = ServiceTimes::of(members);
    let mut rows = vec![
        [
            "NODE",
            "MP",
            "OPERATOR",
            "LEADER",
            "CPU%",
            "FREE MiB",
            "SESSIONS",
            "PORTIONS",
            "HEALTH",
            "ACCEPTING",
            "LOAD",
        ]
        .map(String::from),
    ];
    for m in members {
        rows.push([
            m.node.clone(),
            m.mp.to_string(),
            m.operator.map(|o| format!("http://{o}")).unwrap_or_else(|| "-".into()),
            if Some(&m.node) == leader.as_ref() { "*".into() } else { String::new() },
            format!("{:.1}", m.cpu_percent),
            m.mem_free_mb.to_string(),
            m.sessions().to_string(),
            m.portions.len().to_string(),
            m.health.to_string(),
            if m.accepting { "yes".into() } else { "no".into() },
            format!("{:.3}", load_score(m, &farm)),
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `dabs status`: the table, or with `as_json` one JSON object.
pub fn run(farm: SocketAddr, interface: Ipv4Addr, listen_ms: u64, as_json: bool) -> ExitCode {
    let SocketAddr::V4(group) = farm else {
        eprintln!("dabs status: --farm must be the farm's IPv4 multicast group, IP:PORT");
        return ExitCode::from(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match rt.block_on(collect(group, interface, Duration::from_millis(listen_ms))) {
        Ok(members) if members.is_empty() => {
            eprintln!("dabs status: no member of {group} announced itself within {listen_ms} ms");
            ExitCode::FAILURE
        }
        Ok(members) if as_json => crate::out::finish("dabs status", crate::out::line(json(group, &members))),
        Ok(members) => {
            let head = format!("farm {} at {group}: {} member(s)", members[0].farm, members.len());
            let written = crate::out::line(head).and_then(|()| crate::out::line(table(&members)));
            crate::out::finish("dabs status", written)
        }
        Err(e) => {
            eprintln!("dabs status: {e}");
            ExitCode::FAILURE
        }
    }
}
