use super::*;
use crate::stats::tests::stats;

fn app(policy: &str) -> AppConfig {
    AppConfig { policy: policy.parse().unwrap(), ..AppConfig::new("calculator-app") }
}

fn names(r: &Ranking<'_>) -> Vec<String> {
    r.names()
}

/// `s` with its portions' figure `name` set to `v` (each portion `v / portions`).
fn with_figure(mut s: NodeStats, name: &str, v: f32) -> NodeStats {
    let n = s.portions.len() as f32;
    for p in &mut s.portions {
        p.figures = vec![(name.into(), v / n)];
    }
    s
}

#[test]
fn each_policy_ranks_on_its_own_figure() {
    let mut a = stats("a", 10);
    let mut b = stats("b", 20);
    // a: fewer clients; b: faster, more throughput, fewer pending, lighter mailbox.
    for p in &mut a.portions {
        p.service_ms = Some(8.0);
        p.rate = Some(10.0);
        p.queue_depth = 9;
    }
    for p in &mut b.portions {
        p.service_ms = Some(1.0);
        p.rate = Some(50.0);
        p.queue_depth = 1;
    }
    let a = with_figure(a, "mailbox", 600.0);
    let b = with_figure(b, "mailbox", 60.0);
    let members = [&a, &b];
    let pending = Pending::new();
    let first =
        |policy: &str| rank(&app(policy), &[], &members, &pending, None).preferred().map(str::to_owned);
    // The load signal weighs each client by its portion's service time: b's 120 fast clients
    // are less work than a's 60 slow ones.
    assert_eq!(first("least_loaded").as_deref(), Some("b"));
    assert_eq!(first("fewest_clients").as_deref(), Some("a"));
    assert_eq!(first("fastest_response").as_deref(), Some("b"));
    assert_eq!(first("fewest_pending").as_deref(), Some("b"));
    assert_eq!(first("highest_throughput").as_deref(), Some("b"));
    assert_eq!(first("app_figure:mailbox").as_deref(), Some("b"));
    // A published `pending` figure wins over the queue for fewest_pending.
    let a2 = with_figure(a.clone(), "pending", 0.0);
    let b2 = with_figure(b.clone(), "pending", 600.0);
    let r = rank(&app("fewest_pending"), &[], &[&a2, &b2], &pending, None);
    assert_eq!(r.preferred(), Some("a"), "{:?}", r.ranked.iter().map(|x| &x.why).collect::<Vec<_>>());
    // The reasons name the figures.
    let r = rank(&app("app_figure:mailbox"), &[], &members, &pending, None);
    assert_eq!(r.ranked[0].why, "mailbox = 60");
}

#[test]
fn clients_sent_but_not_yet_announced_count_for_fewest_clients() {
    let a = stats("a", 10);
    let b = stats("b", 11);
    let mut pending = Pending::new();
    for _ in 0..7 {
        pending.sent("a");
    }
    let r = rank(&app("fewest_clients"), &[], &[&a, &b], &pending, None);
    assert_eq!(names(&r), ["b", "a"]);
}

#[test]
fn a_failed_or_silent_status_object_takes_its_server_out_until_it_reports() {
    let a = stats("a", 1);
    let mut b = stats("b", 50);
    let r = rank(&app("least_loaded"), &[], &[&a, &b], &Pending::new(), None);
    assert_eq!(names(&r), ["a", "b"]);
    let mut a_bad = a.clone();
    for p in &mut a_bad.portions {
        p.status_fault = Some("pending: silent for 750 ms".into());
    }
    let r = rank(&app("least_loaded"), &[], &[&a_bad, &b], &Pending::new(), None);
    assert_eq!(names(&r), ["b"]);
    assert_eq!(r.excluded, vec![("a".to_string(), "status object: pending: silent for 750 ms".to_string())]);
    // One portion still answering keeps the server, ranked on that portion alone.
    a_bad.portions[0].status_fault = None;
    b.portions.truncate(1);
    let r = rank(&app("fewest_clients"), &[], &[&a_bad, &b], &Pending::new(), None);
    assert_eq!(names(&r), ["a", "b"], "a counts only its answering portion: 1 client against 50");
}

#[test]
fn servers_without_a_figure_come_after_those_with_one() {
    let a = stats("a", 10);
    let mut fresh = stats("fresh", 0);
    fresh.portions.clear();
    let a = with_figure(a, "keys", 1e6);
    let r = rank(&app("app_figure:keys"), &[], &[&fresh, &a], &Pending::new(), None);
    assert_eq!(names(&r), ["a", "fresh"]);
    assert_eq!(r.ranked[1].figure, None);
    assert_eq!(r.ranked[1].why, "no keys published");
}

#[test]
fn two_sub_farms_rank_inside_by_their_policy_and_outside_as_one_entity() {
    // Site east ranks by fewest clients, site west by its mailbox figure; globally the
    // application asks for the least mailbox load, each site standing as the mean of its own.
    let e1 = with_figure(stats("e1", 40), "mailbox", 100.0);
    let e2 = with_figure(stats("e2", 5), "mailbox", 300.0);
    let w1 = with_figure(stats("w1", 1), "mailbox", 150.0);
    let w2 = with_figure(stats("w2", 90), "mailbox", 50.0);
    let lone = with_figure(stats("lone", 0), "mailbox", 180.0);
    let subfarms = vec![
        SubFarm { name: "east".into(), nodes: vec!["e1".into(), "e2".into()], policy: Policy::FewestClients },
        SubFarm {
            name: "west".into(),
            nodes: vec!["w1".into(), "w2".into()],
            policy: Policy::AppFigure("mailbox".into()),
        },
    ];
    let members = [&e1, &e2, &w1, &w2, &lone];
    let r = rank(&app("app_figure:mailbox"), &subfarms, &members, &Pending::new(), None);
    // west's mean 100 < lone 180 < east's mean 200; inside west the lower mailbox (w2) first,
    // inside east the fewer clients (e2) first although its mailbox is the heavier.
    assert_eq!(names(&r), ["w2", "w1", "lone", "e2", "e1"]);
    assert!(r.ranked[0].why.starts_with("sub-farm west (app_figure:mailbox)"), "{}", r.ranked[0].why);
    // Swap the global policy: fewest clients per member, east (mean 135) now beats west (273),
    // and east still puts e2 first.
    let r = rank(&app("fewest_clients"), &subfarms, &members, &Pending::new(), None);
    assert_eq!(names(&r), ["lone", "e2", "e1", "w2", "w1"]);
}

#[test]
fn closest_prefers_the_shortest_measured_round_trip_then_the_longest_common_prefix() {
    let mut near = stats("near", 30);
    near.mp = "10.1.2.7:4000".parse().unwrap();
    let mut far = stats("far", 1);
    far.mp = "10.9.0.1:4000".parse().unwrap();
    let mut near2 = stats("near2", 10);
    near2.mp = "10.1.2.9:4000".parse().unwrap();
    let members = [&far, &near, &near2];
    // Nothing measured yet: the longest common prefix, then the lighter server.
    let mut asker = crate::policy::Asker::unmeasured("10.1.2.200".parse().unwrap());
    let r = rank(&app("closest"), &[], &members, &Pending::new(), Some(&asker));
    assert_eq!(names(&r), ["near2", "near", "far"]);
    assert!(r.ranked[0].why.contains("not measured yet"), "{}", r.ranked[0].why);
    // Measured: the shortest round trip, whatever the addresses; unmeasured servers last.
    asker.rtt_us = [("far".to_string(), 4_000), ("near".to_string(), 9_000)].into();
    let r = rank(&app("closest"), &[], &members, &Pending::new(), Some(&asker));
    assert_eq!(names(&r), ["far", "near", "near2"]);
    assert!(r.ranked[0].why.starts_with("round trip 4.00 ms to 10.1.2.0/24, load "), "{}", r.ranked[0].why);
    // Equal round trips (to the millisecond): the longer prefix, then the lighter server.
    asker.rtt_us =
        [("far".to_string(), 4_100), ("near".to_string(), 4_900), ("near2".to_string(), 4_000)].into();
    let r = rank(&app("closest"), &[], &members, &Pending::new(), Some(&asker));
    assert_eq!(names(&r), ["near2", "near", "far"]);
    // Without a client address: least loaded.
    let r = rank(&app("closest"), &[], &members, &Pending::new(), None);
    assert_eq!(names(&r), ["far", "near2", "near"]);
    assert_eq!(common_prefix("10.0.0.1".parse().unwrap(), "::1".parse().unwrap()), 0);
}

#[test]
fn ineligible_servers_are_listed_with_the_reason() {
    let mut a = stats("a", 1);
    a.accepting = false;
    let b = stats("b", 1);
    let r = rank(&app("least_loaded"), &[], &[&a, &b], &Pending::new(), None);
    assert_eq!(names(&r), ["b"]);
    assert_eq!(r.excluded, vec![("a".to_string(), "not accepting new clients".to_string())]);
}
