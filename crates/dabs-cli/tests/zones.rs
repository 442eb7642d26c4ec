//! R-FO-2's zones, and other runtime behaviour (latency marks, live thresholds, alerts, drain
//! replays), on real nodes (in this process, over loopback UDP and the farm's multicast
//! group): a dependent service of node-1 goes down, lowering its health between the two
//! thresholds, and node-1 must treat existing and new clients as its zone says.

use dabs_net::{Addr, CallError, DriverOptions, Error};
use dabs_node::Node;
use dabs_node::config::NodeConfig;
use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::membership::{wait_for_decider, wait_for_members};
use dabs_testkit::{NodeConfigBuilder, PATIENCE, POLL, eventually_async, random_group, temp_dir};
use dabs_wire::NakCode;
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

const SECRET: &str = "00112233445566778899aabbccddeeff";

/// A node of farm `group`; node-1 declares a dependent TCP service costing 60 health points.
async fn node(
    group: SocketAddrV4,
    i: usize,
    dir: &std::path::Path,
    failover: &str,
    service: SocketAddr,
) -> Node {
    node_at(group, i, dir, failover, service, "127.0.0.1:0").await
}

/// A node alone in its farm (node-1, with the dependent service `service`), once it sees
/// itself as a member.
async fn solo(dir: &std::path::Path, failover: &str, service: &TcpListener) -> Node {
    let n1 = node(random_group(), 1, dir, failover, service.local_addr().unwrap()).await;
    wait_for_members(&[n1.handle()]).await;
    n1
}

/// Node-1 (with a dependent service, the returned listener) and node-2 of a farm of their own,
/// once each sees the other and node-1 decides.
async fn pair(dir: &std::path::Path, failover: &str) -> (TcpListener, Node, Node) {
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let (g, at) = (random_group(), service.local_addr().unwrap());
    let n1 = node(g, 1, dir, failover, at).await;
    let n2 = node(g, 2, dir, failover, at).await;
    assert_eq!(wait_for_decider(&[n1.handle(), n2.handle()]).await, "node-1");
    (service, n1, n2)
}

/// [`node`] bound to the MP address `bind`.
async fn node_at(
    group: SocketAddrV4,
    i: usize,
    dir: &std::path::Path,
    failover: &str,
    service: SocketAddr,
    bind: &str,
) -> Node {
    let config = config(group, i, dir, failover, service, bind);
    Node::start(config, vec![dabs_calc::factory()]).await.unwrap()
}

fn config(
    group: SocketAddrV4,
    i: usize,
    dir: &std::path::Path,
    failover: &str,
    service: SocketAddr,
    bind: &str,
) -> NodeConfig {
    let mut b = NodeConfigBuilder::new("zones", group, &format!("node-{i}")).secret(SECRET).bind(bind);
    if i == 1 {
        b = b.extra(&format!(
            "[health]\ninterval_ms = 100\n\n[[health.service]]\nname = \"cache\"\ntcp = \"{service}\"\nweight = 60\n"
        ));
    }
    // `failover` may hold further sections after the [failover] keys (e.g. [latency]).
    b.extra(&format!("[failover]\n{failover}")).app("calc", true).build(dir)
}

/// The farm secret's bytes.
fn secret() -> Vec<u8> {
    SECRET
        .as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

async fn client(at: SocketAddr) -> Result<FarmClient, Error> {
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    client_on(ep, at).await
}

async fn client_on(ep: dabs_net::EndpointHandle, at: SocketAddr) -> Result<FarmClient, Error> {
    let options =
        FarmClientOptions { secret: Some(secret()), max_reopens: 0, ..FarmClientOptions::new(at, "calc") };
    FarmClient::start(ep, options).await
}

async fn add(c: &FarmClient, a: i64, b: i64) -> i64 {
    let reply = c.call(256, dabs_sdk::encode_args(&(a, b))).await.expect("call answered");
    dabs_sdk::decode_reply::<i64>(&reply).expect("an integer")
}

/// Polls until `f` holds (bounded).
async fn eventually(what: &str, f: impl AsyncFnMut() -> bool) {
    eventually_async(what, PATIENCE, POLL, f).await
}

/// Connection threshold above failover (C 50 > F 10): at health 40 existing clients stay and
/// new ones are refused; back at 100 new ones are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_the_thresholds_existing_clients_stay_and_new_ones_are_refused() {
    let dir = temp_dir("refuse");
    let failover = "failover_threshold = 10\nconnection_threshold = 50\nreturn_threshold = 50";
    let (service, n1, n2) = pair(&dir, failover).await;
    let at = service.local_addr().unwrap();
    let home = n1.mp_addr();
    let existing = client(home).await.expect("node-1 takes clients while healthy");
    assert_eq!(add(&existing, 2, 3).await, 5);

    drop(service); // health 100 - 60 = 40: between F and C
    eventually("node-1 refuses a new client", async || {
        matches!(client(home).await, Err(Error::Call(CallError::Nak { code: NakCode::NotAccepting, .. })))
    })
    .await;
    // The existing client stays on node-1 and is served there. (The pause is the window in
    // which a move would show, not a wait for one.)
    for i in 0..10 {
        assert_eq!(add(&existing, i, 1).await, i + 1);
        assert_eq!(existing.server().await, Some(Addr::Udp(home)), "an existing client was moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(existing.failovers().accepted.load(std::sync::atomic::Ordering::Relaxed), 0);

    let _back = TcpListener::bind(at).unwrap();
    eventually("node-1 takes new clients again", async || client(home).await.is_ok()).await;
    n1.stop().await;
    n2.stop().await;
}

/// Connection threshold below failover (C 10 < F 50): at health 40 existing clients are
/// deferred to node-2, and a new client is admitted, served once, then moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_connection_threshold_lower_new_clients_are_served_once_then_moved() {
    let dir = temp_dir("serve-once");
    let failover = "failover_threshold = 50\nconnection_threshold = 10\nreturn_threshold = 90";
    let (service, n1, n2) = pair(&dir, failover).await;
    let (home, other) = (n1.mp_addr(), n2.mp_addr());
    let existing = client(home).await.expect("node-1 takes clients while healthy");
    assert_eq!(add(&existing, 1, 1).await, 2);

    drop(service); // health 40: deferred (≤ F) but new clients admitted (> C)
    eventually("the existing client is deferred to node-2", async || {
        add(&existing, 1, 2).await == 3 && existing.server().await == Some(Addr::Udp(other))
    })
    .await;

    let newcomer = client(home).await.expect("admitted in the serve-once zone");
    assert_eq!(newcomer.server().await, Some(Addr::Udp(home)));
    // It stays until served once (STARTED does not count) ... (a window in which a premature
    // move would show: nothing to wait for)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(newcomer.server().await, Some(Addr::Udp(home)), "moved before being served");
    assert_eq!(add(&newcomer, 20, 22).await, 42);
    // ... then moves.
    eventually("the newcomer is moved after its first request", async || {
        newcomer.server().await == Some(Addr::Udp(other))
    })
    .await;
    assert_eq!(add(&newcomer, 5, 5).await, 10);
    n1.stop().await;
    n2.stop().await;
}

/// A return threshold below the failover threshold must not call deferred clients back into
/// a zone that would send them away again (ping-pong): at health 40 with F 60 and return 20,
/// the deferred client stays where it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_clients_are_not_called_back_into_a_zone_that_defers_them() {
    let dir = temp_dir("no-ping-pong");
    let failover = "failover_threshold = 60\nconnection_threshold = 10\nreturn_threshold = 20";
    let (service, n1, n2) = pair(&dir, failover).await;
    let (home, other) = (n1.mp_addr(), n2.mp_addr());
    let c = client(home).await.expect("node-1 takes clients while healthy");
    assert_eq!(add(&c, 1, 1).await, 2);
    drop(service); // health 40: deferred; above the return threshold, yet still deferring
    eventually("the client is deferred to node-2", async || {
        add(&c, 1, 2).await == 3 && c.server().await == Some(Addr::Udp(other))
    })
    .await;
    // 1.5 s in which a call back would show (the return pace is 250 ms): nothing to wait for.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.server().await, Some(Addr::Udp(other)), "called back into the defer zone");
    }
    assert_eq!(c.failovers().accepted.load(std::sync::atomic::Ordering::Relaxed), 1, "moved more than once");
    n1.stop().await;
    n2.stop().await;
}

/// A SPAWN naming a portion that already runs on the node, sent by someone who opened a node
/// session without the farm key, is refused and leaves it alone: same address, same queue, its
/// client still served (a member's repeated SPAWN: tests/control_plane_limits.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_for_a_hosted_address_does_not_replace_the_portion() {
    let dir = temp_dir("respawn");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let n1 = solo(&dir, "", &service).await;
    let c = client(n1.mp_addr()).await.expect("client starts");
    assert_eq!(add(&c, 2, 2).await, 4);
    let before = n1.handle().portions();
    assert_eq!(before.len(), 1);
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let ask = dabs_farm_proto::shapes::OpenAsk { node: Some("stranger".into()), ..Default::default() };
    let s = ep.open(Addr::Udp(n1.mp_addr()), 0, ask.to_cbor()).await.unwrap();
    let spawn = dabs_farm_proto::shapes::cbor(&std::collections::BTreeMap::from([
        ("app", "calc"),
        ("va", &before[0].va),
    ]));
    // A stranger's SPAWN is not even considered (issue 11): refused unauthenticated.
    let refused = s.call(dabs_wire::SystemCommand::Spawn.number(), spawn).await;
    assert!(
        matches!(&refused, Err(Error::Call(CallError::Nak { code: NakCode::AuthenticationFailed, .. }))),
        "{refused:?}"
    );
    let after = n1.handle().portions();
    assert_eq!(after.len(), 1);
    assert_eq!((&after[0].va, after[0].queue), (&before[0].va, before[0].queue));
    assert_eq!(add(&c, 3, 3).await, 6, "the client is still served by the same portion");
    n1.stop().await;
}

/// A FAILOVER its client cannot verify is refused (NAK 9) and raised with the farm: the client
/// sends ALERT to its own portion, and that portion's node counts it in its statistics and
/// metrics and lists it among its events; a burst of forgeries raises one alert a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_failover_is_raised_with_the_clients_node() {
    let dir = temp_dir("alert");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let n1 = solo(&dir, "", &service).await;
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let (target, queue) = (ep.local_addrs().udp, FarmClientOptions::new(n1.mp_addr(), "calc").queue);
    // The client's endpoint takes sessions to its queue (as the failover demo's do), so a
    // stranger can reach the client's FAILOVER handling.
    let mut opens = ep.open_requests();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let _ = open.accept(queue, Vec::new()).await;
        }
    });
    let c = client_on(ep, n1.mp_addr()).await.expect("client starts");
    assert_eq!(add(&c, 2, 2).await, 4);
    assert_eq!(n1.handle().stats().client_alerts, 0);

    let attacker = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let ask = dabs_farm_proto::shapes::cbor(&std::collections::BTreeMap::from([("queue", queue)]));
    let s = attacker.open(Addr::Udp(target), 1, ask).await.expect("the client endpoint takes sessions");
    for nonce in 1..=3 {
        let notice = dabs_farm_proto::seal::Failover {
            alternates: vec![dabs_farm_proto::seal::Alternate::at(
                attacker.local_addrs().udp,
                "mp://zones/calc/dasp/evil-1",
            )],
            nonce,
            issued: dabs_net::unix_ms(),
        };
        let forged = notice.seal(&[0x5a; 16], attacker.local_addrs().udp, target);
        match s.call(dabs_wire::SystemCommand::Failover.number(), forged).await {
            Err(Error::Call(CallError::Nak { code: NakCode::AuthenticationFailed, .. })) => {}
            other => panic!("a forged FAILOVER was not refused with NAK 9: {other:?}"),
        }
    }
    assert_eq!(c.failovers().rejected.load(std::sync::atomic::Ordering::Relaxed), 3);
    eventually("node-1 counts the client's alert", async || n1.handle().stats().client_alerts >= 1).await;
    let events = n1.handle().events();
    let alert = events.iter().find(|e| e.text.contains("client alert")).expect("the alert is an event");
    assert!(alert.text.contains("failover_rejected"), "{}", alert.text);
    assert!(alert.text.contains(&attacker.local_addrs().udp.to_string()), "names the sender: {}", alert.text);
    assert!(n1.handle().metrics().await.contains("dabs_client_alerts_total 1"));
    // Three forgeries within a second: one alert, not three. (A window in which a second alert
    // would be counted: nothing to wait for.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(n1.handle().stats().client_alerts, 1);
    // The client still computes, on its own server.
    assert_eq!(add(&c, 3, 4).await, 7);
    attacker.shutdown().await;
    n1.stop().await;
}

/// R-LB-4's latency limits on a real node: a portion's measured latency above the high-water
/// mark closes the node to new clients; latency between the marks keeps it closed; below the
/// low-water mark it takes new clients again. The latency is made by clients whose clocks are
/// behind (their stamps look that much older), so the test needs no slow machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_above_the_high_mark_closes_the_node_until_below_the_low_mark() {
    let dir = temp_dir("latency");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let limits = "\n[latency]\nmax_message_latency_ms = 150\nlow_water_ms = 60\n";
    let n1 = solo(&dir, limits, &service).await;
    let behind = async |ms: i64| {
        let options = DriverOptions { clock_offset_ms: -ms, ..Default::default() };
        let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        client_on(ep, n1.mp_addr()).await.expect("client starts while the node is open")
    };
    let (slow, between, fresh) = (behind(600).await, behind(100).await, behind(0).await);
    assert!(n1.handle().stats().accepting);

    // Calls measured at 600 ms and more: closed.
    for i in 0..5 {
        assert_eq!(add(&slow, i, 1).await, i + 1);
    }
    eventually("node-1 closes above the high-water mark", async || !n1.handle().stats().accepting).await;
    assert!(n1.handle().events().iter().any(|e| e.text.contains("above the high-water mark")));

    // Calls measured at 100 ms and more: between the marks, still closed. (A look that finds no
    // calls at all counts as recovered, so calls keep coming faster than the node looks.)
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(add(&between, 2, 2).await, 4);
        assert!(!n1.handle().stats().accepting, "reopened with latency between the marks");
        // The calls' pace, part of what is tested: faster than the node looks.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Fresh calls: below the low-water mark, open again.
    let reopened = Instant::now() + Duration::from_secs(10);
    while !n1.handle().stats().accepting {
        assert!(Instant::now() < reopened, "still closed 10 s after latency fell below the low-water mark");
        assert_eq!(add(&fresh, 3, 3).await, 6);
        // The calls' pace, as above; the loop is bounded by its 10 s assertion.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(n1.handle().events().iter().any(|e| e.text.contains("under the low-water mark")));
    n1.stop().await;
}

/// The thresholds of clients without a class are run-time settings: at health 40 the node is
/// open under the configured connection threshold 25, refuses new clients once the operator
/// raises it to 50, and takes them again when it is lowered, all without a restart; a client of
/// a configured class keeps its own thresholds meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_changed_at_run_time_take_effect_without_a_restart() {
    let dir = temp_dir("live-thresholds");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let failover = "failover_threshold = 10\nconnection_threshold = 25\n\n\
                    [[failover.class]]\nname = \"gold\"\nfailover_threshold = 5\nconnection_threshold = 20\n";
    let n1 = solo(&dir, failover, &service).await;
    let home = n1.mp_addr();
    drop(service); // health 100 - 60 = 40
    eventually("node-1's health falls to 40", async || n1.handle().stats().health == 40).await;
    assert!(n1.handle().stats().accepting, "40 is above the configured connection threshold 25");
    assert!(client(home).await.is_ok());

    let raise = dabs_node::settings::SettingsPatch { connection_threshold: Some(50), ..Default::default() };
    let s = n1.handle().update_settings(&raise).expect("a valid change");
    assert_eq!(s.thresholds().connection, 50);
    eventually("node-1 refuses new clients under the raised threshold", async || {
        matches!(client(home).await, Err(Error::Call(CallError::Nak { code: NakCode::NotAccepting, .. })))
    })
    .await;
    assert!(!n1.handle().stats().accepting);
    // A gold client (connection threshold 20 of its own) is still admitted.
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let gold = FarmClientOptions { class: Some("gold".into()), ..FarmClientOptions::new(home, "calc") };
    let gold = FarmClient::start(ep, gold).await.expect("a gold client is admitted at health 40");
    assert_eq!(add(&gold, 1, 1).await, 2);

    let lower = dabs_node::settings::SettingsPatch { connection_threshold: Some(30), ..Default::default() };
    n1.handle().update_settings(&lower).expect("a valid change");
    eventually("node-1 takes new clients again", async || client(home).await.is_ok()).await;
    let bad = dabs_node::settings::SettingsPatch { failover_threshold: Some(250), ..Default::default() };
    assert_eq!(n1.handle().update_settings(&bad).unwrap_err().field, "failover_threshold");
    n1.stop().await;
}

/// A DRAIN is taken once: the same sealed message sent again is refused (NAK 9), also after
/// the node restarts on the same address within the message's 30 s window, since the last
/// nonce taken is kept in the node's database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_drain_is_refused_also_after_a_restart() {
    let dir = temp_dir("drain-replay");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let g = random_group();
    let n1 = node_at(g, 1, &dir, "", service.local_addr().unwrap(), &bind).await;
    let at = n1.mp_addr();
    let secret = secret();
    let now = dabs_net::unix_ms();
    let drain = dabs_farm_proto::seal::seal_drain(&secret, at, true, now, now);
    let undo = dabs_farm_proto::seal::seal_drain(&secret, at, false, now + 1, now);
    let send = async |payload: &Vec<u8>| {
        let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
        let ask = dabs_farm_proto::shapes::OpenAsk { node: Some("operator".into()), ..Default::default() };
        let s = ep.open(Addr::Udp(at), 0, ask.to_cbor()).await.expect("a node session");
        let r = s.call(dabs_wire::SystemCommand::Drain.number(), payload.clone()).await;
        ep.shutdown().await;
        r
    };
    let refused = |r: &Result<Vec<u8>, Error>| {
        matches!(r, Err(Error::Call(CallError::Nak { code: NakCode::AuthenticationFailed, .. })))
    };
    send(&drain).await.expect("the first DRAIN is taken");
    assert!(n1.handle().stats().draining);
    assert!(refused(&send(&drain).await), "a replayed DRAIN was taken");
    send(&undo).await.expect("the undo is taken");
    assert!(!n1.handle().stats().draining);

    n1.stop().await;
    let n1 = node_at(g, 1, &dir, "", service.local_addr().unwrap(), &bind).await;
    assert_eq!(n1.mp_addr(), at, "restarted on the same address");
    assert!(refused(&send(&drain).await), "the DRAIN was replayable after a restart");
    assert!(refused(&send(&undo).await), "the undo was replayable after a restart");
    assert!(!n1.handle().stats().draining);
    n1.stop().await;
}

/// Counts how often each request ran, over every portion of every node: integer add (256)
/// whose first operand is the request's id.
#[derive(Clone, Default)]
struct Runs(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<i64, u32>>>);

impl dabs_sdk::ServerPortion for Runs {
    async fn handle(&mut self, command: u16, payload: Vec<u8>) -> dabs_sdk::Handled {
        let reply = match dabs_sdk::decode_args::<(i64, i64)>(&payload, 2) {
            Ok((id, b)) if command == 256 => {
                *self.0.lock().unwrap().entry(id).or_default() += 1;
                dabs_sdk::encode_ok(&(id + b))
            }
            _ => dabs_sdk::encode_err("bad_operands", "only add"),
        };
        dabs_sdk::Handled::Reply(reply)
    }
}

/// R-FO-3/4: clients pushed off a failing node by FAILOVER while they keep calling lose no
/// request and run none twice: every call is answered once and ran exactly once, over both
/// nodes' portions together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_moved_by_failover_run_every_request_exactly_once() {
    let dir = temp_dir("exactly-once");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let g = random_group();
    let failover = "failover_threshold = 50\nconnection_threshold = 60\nreturn_threshold = 90";
    let runs = Runs::default();
    let factory = || -> std::sync::Arc<dyn dabs_farm_proto::portion::PortionFactory> {
        let runs = runs.clone();
        std::sync::Arc::new(dabs_sdk::PortionFactoryFn::new("calc", move || runs.clone()))
    };
    let start = async |i: usize| {
        let c = config(g, i, &dir, failover, service.local_addr().unwrap(), "127.0.0.1:0");
        Node::start(c, vec![factory()]).await.unwrap()
    };
    let (n1, n2) = (start(1).await, start(2).await);
    wait_for_decider(&[n1.handle(), n2.handle()]).await;
    let (home, other) = (n1.mp_addr(), n2.mp_addr());
    const CLIENTS: i64 = 8;
    const CALLS: i64 = 60;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(std::sync::Arc::new(client(home).await.expect("node-1 takes clients while healthy")));
    }
    let mut loops = tokio::task::JoinSet::new();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    for (c, client) in clients.iter().enumerate() {
        let (client, answered) = (client.clone(), answered.clone());
        loops.spawn(async move {
            for k in 0..CALLS {
                let id = c as i64 * 1000 + k;
                let reply = client.call(256, dabs_sdk::encode_args(&(id, 1))).await;
                assert_eq!(dabs_sdk::decode_reply::<i64>(&reply.expect("answered")).unwrap(), id + 1);
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The clients' pace: the failure comes while they keep calling.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
    }
    // The failure comes while the clients are calling: once each has been answered a few times.
    eventually("the clients to be calling", async || {
        answered.load(std::sync::atomic::Ordering::SeqCst) >= CLIENTS * 3
    })
    .await;
    drop(service); // health 40: at or below F 50, every client is deferred to node-2
    while let Some(done) = loops.join_next().await {
        done.expect("a client's calls were all answered, right");
    }
    for c in &clients {
        assert_eq!(c.server().await, Some(Addr::Udp(other)), "every client moved to node-2");
    }
    let runs = runs.0.lock().unwrap().clone();
    assert_eq!(runs.len() as i64, CLIENTS * CALLS, "some request never ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "requests ran more than once: {twice:?}");
    n1.stop().await;
    n2.stop().await;
}
