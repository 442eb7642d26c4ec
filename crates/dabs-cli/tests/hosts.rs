//! A farm across hosts (issue 13): real node processes in network namespaces joined by a
//! bridge, each host with its own address. With multicast across the bridge, and with
//! multicast dropped at the bridge by nftables (the farm then meets through its seed lists and
//! spreads by unicast announcements), a join is seen by every node within 1 s and a death or
//! a clean stop within 3 s, each timed in every node's own view. A node that cannot join the
//! multicast group at all says so and carries on with its seeds. With etcd as the registry
//! (run in the switch's namespace, multicast dropped, no seeds), the same limits hold.

use dabs_testkit::http::try_get_json;
use dabs_testkit::netns::{Hosts, OBSERVER, run_in};
use dabs_testkit::{NodeConfigBuilder, NodeProc, PATIENCE, POLL, eventually, random_group, temp_dir};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SECRET: &str = "686f7374732d746573742d7365637265742d3031323334353637383961626364";
/// Every node's MP port (each host has its own port space): what seed lists name.
const PORT: u16 = 47000;
/// How often a view is read while timing.
const WATCH: Duration = Duration::from_millis(20);

fn seed(i: usize) -> SocketAddr {
    SocketAddr::new(Hosts::addr(i).into(), PORT)
}

/// How the farm's nodes find each other.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Multicast across the bridge.
    Multicast,
    /// Multicast dropped; seed lists and unicast announcements.
    Seeds,
    /// Multicast dropped; leased keys in etcd.
    Etcd,
}

/// Node `i`'s configuration: on host `i`; with `seeds`, node-1 seeds from node-2 and every
/// other node from node-1; `interface` overrides where it joins the group; `etcd` makes it
/// the registry.
fn config(
    dir: &std::path::Path,
    group: std::net::SocketAddrV4,
    i: usize,
    seeds: bool,
    interface: Option<Ipv4Addr>,
    etcd: Option<&str>,
) -> PathBuf {
    let me = Hosts::addr(i);
    let mut b = NodeConfigBuilder::new("hosts", group, &format!("node-{i}"))
        .bind(format!("{me}:{PORT}"))
        .interface(interface.unwrap_or(me))
        .secret(SECRET)
        .operator_at(format!("{me}:0"))
        .app_with("calc", "start_at_init = true\n");
    if seeds {
        b = b.seeds(&[if i == 1 { seed(2) } else { seed(1) }]);
    }
    if let Some(url) = etcd {
        b = b.etcd(url);
    }
    b.write(dir)
}

/// The member names in the view at `url`.
fn view(url: &str) -> Result<BTreeSet<String>, String> {
    Ok(dabs_testkit::MemberView::of_operator(url)?.members.into_keys().collect())
}

/// Reads every view in `urls` until each satisfies `done`, for at most `limit` past `since`;
/// returns, per view, how long after `since` it first did.
fn time_views(
    urls: &[(String, String)],
    since: Instant,
    limit: Duration,
    done: impl Fn(&BTreeSet<String>) -> bool,
) -> Vec<(String, Duration)> {
    let mut first: Vec<Option<Duration>> = vec![None; urls.len()];
    while first.iter().any(Option::is_none) && since.elapsed() < limit + Duration::from_secs(2) {
        for (i, (_, url)) in urls.iter().enumerate() {
            if first[i].is_none() && view(url).is_ok_and(|v| done(&v)) {
                first[i] = Some(since.elapsed());
            }
        }
        std::thread::sleep(WATCH);
    }
    urls.iter()
        .zip(first)
        .map(|((name, _), t)| {
            (name.clone(), t.unwrap_or_else(|| panic!("{name}'s view never changed within {limit:?}")))
        })
        .collect()
}

fn assert_within(what: &str, limit: Duration, timed: &[(String, Duration)]) {
    println!(
        "{what}: {}",
        timed.iter().map(|(n, t)| format!("{n} {} ms", t.as_millis())).collect::<Vec<_>>().join(", ")
    );
    for (n, t) in timed {
        assert!(*t <= limit, "{what}: {n}'s view took {} ms (limit {} ms)", t.as_millis(), limit.as_millis());
    }
}

fn membership_across_hosts(mode: Mode) {
    let hosts = Hosts::create(4).expect("four hosts on a bridge");
    let seeds_only = mode == Mode::Seeds;
    if mode != Mode::Multicast {
        hosts.block_multicast().expect("nftables dropping multicast at the bridge");
    }
    let dir = temp_dir(&format!("hosts-{mode:?}"));
    let group = random_group();
    // etcd on the switch's address, in its namespace: every host reaches it over the bridge.
    let etcd = (mode == Mode::Etcd).then(|| {
        let dir = dir.clone();
        run_in(hosts.switch().name(), move || dabs_testkit::etcd::EtcdServer::start_on(&dir, OBSERVER))
    });
    // In seeds mode node-4 is also given an interface it cannot join the group on.
    let configs: Vec<PathBuf> = (1..=4)
        .map(|i| {
            let bad = (seeds_only && i == 4).then_some(Ipv4Addr::new(10, 88, 0, 200));
            config(&dir, group, i, seeds_only, bad, etcd.as_ref().map(|e| e.url.as_str()))
        })
        .collect();
    let names: Vec<String> = (1..=4).map(|i| hosts.host(i).name().to_owned()).collect();
    run_in(hosts.switch().name(), move || {
        let mut nodes: Vec<NodeProc> =
            (0..3).map(|i| NodeProc::start_in(&names[i], DABS, &configs[i])).collect();
        let urls = |nodes: &[NodeProc]| -> Vec<(String, String)> {
            nodes.iter().map(|n| (n.ready.name.clone(), n.url().to_owned())).collect()
        };
        let three: BTreeSet<String> = (1..=3).map(|i| format!("node-{i}")).collect();
        eventually("three hosts forming a farm", PATIENCE, POLL, || {
            for (name, url) in urls(&nodes) {
                let v = view(&url)?;
                if v != three {
                    return Err(format!("{name} sees {v:?}"));
                }
            }
            Ok(())
        });

        // A fourth host joins: within 1 s in every view, its own included.
        let node4 = NodeProc::start_in(&names[3], DABS, &configs[3]);
        let joined = node4.ready_at;
        nodes.push(node4);
        let all: BTreeSet<String> = (1..=4).map(|i| format!("node-{i}")).collect();
        let timed = time_views(&urls(&nodes), joined, Duration::from_secs(1), |v| v.is_superset(&all));
        assert_within(&format!("{mode:?}: node-4 joined"), Duration::from_secs(1), &timed);
        if seeds_only {
            let events = try_get_json(nodes[3].url(), "/api/events").expect("node-4's events");
            assert!(
                events.to_string().contains("cannot join the multicast group"),
                "node-4 says why: {events}"
            );
        }

        // node-3 is killed: gone from every survivor's view within 3 s.
        let mut node3 = nodes.remove(2);
        node3.signal(libc::SIGKILL);
        let killed = Instant::now();
        let timed = time_views(&urls(&nodes), killed, Duration::from_secs(3), |v| !v.contains("node-3"));
        assert_within(&format!("{mode:?}: node-3 killed"), Duration::from_secs(3), &timed);
        node3.wait_exit();

        // node-2 stops cleanly: gone from every survivor's view within 3 s.
        let mut node2 = nodes.remove(1);
        node2.signal(libc::SIGTERM);
        let stopped = Instant::now();
        let timed = time_views(&urls(&nodes), stopped, Duration::from_secs(3), |v| !v.contains("node-2"));
        assert_within(&format!("{mode:?}: node-2 stopped"), Duration::from_secs(3), &timed);
        assert!(node2.wait_exit().success());
    });
    if mode != Mode::Multicast {
        assert!(hosts.multicast_dropped() > 0, "the bridge dropped no multicast: the test proved nothing");
    }
    drop(etcd);
}

#[test]
fn a_farm_across_hosts_meets_by_multicast_over_the_bridge() {
    membership_across_hosts(Mode::Multicast);
}

#[test]
fn a_farm_across_hosts_meets_by_its_seed_lists_when_multicast_is_dropped() {
    membership_across_hosts(Mode::Seeds);
}

#[test]
fn a_farm_across_hosts_meets_through_etcd_when_multicast_is_dropped() {
    membership_across_hosts(Mode::Etcd);
}

/// `dabs farm up --hosts`: each node on a host of its own, the farm whole in every view (read
/// from the switch's namespace, the only place the hosts' network reaches), and every
/// namespace gone once the farm stops.
#[test]
fn farm_up_puts_each_node_on_a_host_and_removes_the_hosts_when_it_stops() {
    let farm = dabs_testkit::Farm::up_with(DABS, 3, "hosts-up", &["--hosts"]);
    let manifest = farm.manifest();
    let switch = manifest["netns"]["switch"].as_str().expect("farm.json names the switch").to_owned();
    let mut names: Vec<String> = vec![switch.clone()];
    names.extend(
        manifest["netns"]["hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()),
    );
    assert_eq!(names.len(), 4, "{manifest}");
    let (urls, token) = (farm.operators(), farm.token());
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(
            url,
            &format!("http://{}:8080", Hosts::addr(i + 1)),
            "node-{} is on host {}",
            i + 1,
            i + 1
        );
    }
    let all: BTreeSet<String> = (1..=3).map(|i| format!("node-{i}")).collect();
    run_in(&switch, move || {
        eventually("every host's node seeing all three", PATIENCE, POLL, || {
            for url in &urls {
                let (status, farm) = dabs_testkit::http::json_as(Some(&token), "GET", url, "/api/farm", None);
                let seen: BTreeSet<String> = farm["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["name"].as_str().map(str::to_owned))
                    .collect();
                if status != 200 || seen != all {
                    return Err(format!("{url}: {status} {seen:?}"));
                }
            }
            Ok(())
        });
    });
    drop(farm);
    let listed = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for n in &names {
        assert!(!listed.contains(n.as_str()), "{n} left behind: {listed}");
    }
}
