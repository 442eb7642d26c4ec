//! Proximity and moves (R-VA-3, R-VA-4): a stream of calls follows a portion from another
//! process (local socket) into this process (in-process queue) and back, and every call is
//! answered exactly once, none run twice, none lost.
//!
//! The other process is this same test binary started again with `DABS_MOVE_CHILD` set; it
//! runs the portion and takes orders on stdin (`drain`, `accept`, `dump`, `quit`).

use dabs_net::{AddressObject, Channel, DriverOptions, EndpointHandle, StaticResolver, host_id};
use dabs_wire::NakCode;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const QUEUE: u16 = 5;
const WORK: u16 = 300;
const VA: &str = "mp://test/counter/dasp/1";

/// The portion: runs each call (records its id), or refuses with NAK 12 while draining.
struct Portion {
    accepting: Arc<AtomicBool>,
    executed: Arc<Mutex<Vec<u64>>>,
}

fn start_portion(ep: &EndpointHandle, accepting: bool) -> Portion {
    let p = Portion { accepting: Arc::new(AtomicBool::new(accepting)), executed: Arc::default() };
    let mut opens = ep.open_requests();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let _ = open.accept(QUEUE, vec![]).await;
        }
    });
    let mut requests = ep.register_queue(QUEUE);
    let (accepting, executed) = (p.accepting.clone(), p.executed.clone());
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            if !accepting.load(Ordering::SeqCst) {
                req.reject(NakCode::NotAccepting, "portion is moving");
                continue;
            }
            let id = u64::from_be_bytes(req.request.payload[..8].try_into().unwrap());
            executed.lock().unwrap().push(id);
            let reply = req.request.payload.clone();
            req.reply(reply);
        }
    });
    p
}

/// Reads the child's output up to the line holding `prefix`; returns that line from there.
fn read_marker(from_child: &mut BufReader<std::process::ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(from_child.read_line(&mut line).unwrap() > 0, "child exited");
        // The test harness may print its own text before ours on the same line.
        if let Some(at) = line.find(prefix) {
            return line[at..].trim().to_owned();
        }
    }
}

fn address_object(ep: &EndpointHandle) -> AddressObject {
    let l = ep.local_addrs();
    AddressObject {
        inproc: Some(l.inproc),
        local: l.unix.clone(),
        network: Some(l.udp),
        host: Some(host_id()),
        pid: Some(std::process::id()),
        queue: QUEUE,
        va: Some(VA.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_portion() {
    if std::env::var("DABS_MOVE_CHILD").is_err() {
        return; // only runs as the other process of `calls_follow_a_moving_portion`
    }
    let path = std::env::temp_dir().join(format!("dabs-move-child-{}.sock", std::process::id()));
    let opts = DriverOptions { unix_path: Some(path.clone()), ..Default::default() };
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), opts).await.unwrap();
    let portion = start_portion(&ep, true);
    let l = ep.local_addrs();
    println!("ADDR {} {} {}", l.udp, path.display(), std::process::id());
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "drain" => portion.accepting.store(false, Ordering::SeqCst),
            "accept" => portion.accepting.store(true, Ordering::SeqCst),
            "dump" => {
                let ids: Vec<String> = portion.executed.lock().unwrap().iter().map(u64::to_string).collect();
                println!("EXECUTED {}", ids.join(","));
            }
            _ => break,
        }
        println!("OK");
    }
    ep.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_a_moving_portion() {
    if std::env::var("DABS_MOVE_CHILD").is_ok() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_portion", "--nocapture", "--test-threads", "1"])
        .env("DABS_MOVE_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let addr_line = read_marker(&mut from_child, "ADDR ");
    let parts: Vec<&str> = addr_line.split(' ').collect();
    let remote = AddressObject {
        inproc: None,
        local: Some(parts[2].into()),
        network: Some(parts[1].parse().unwrap()),
        host: Some(host_id()),
        pid: Some(parts[3].parse().unwrap()),
        queue: QUEUE,
        va: Some(VA.into()),
    };

    let my_path = std::env::temp_dir().join(format!("dabs-move-parent-{}.sock", std::process::id()));
    let client = dabs_net::spawn(
        "127.0.0.1:0".parse().unwrap(),
        DriverOptions { unix_path: Some(my_path), ..Default::default() },
    )
    .await
    .unwrap();
    let resolver = StaticResolver::default();
    resolver.set(VA, remote.clone());
    let channel = Arc::new(Channel::new(client.clone(), Arc::new(resolver.clone()), VA, 9, vec![]));

    // The in-process home the portion moves to, drained until the move.
    let local_ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let local = start_portion(&local_ep, false);

    const CALLS: u64 = 600;
    const WORKERS: u64 = 4;
    let answered = Arc::new(Mutex::new(BTreeSet::new()));
    let routes = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (channel, answered, routes) = (channel.clone(), answered.clone(), routes.clone());
        workers.push(tokio::spawn(async move {
            for i in (w..CALLS).step_by(WORKERS as usize) {
                let reply = channel.call(WORK, i.to_be_bytes().to_vec()).await.expect("call failed");
                assert_eq!(reply, i.to_be_bytes(), "wrong reply");
                assert!(answered.lock().unwrap().insert(i), "call {i} answered twice");
                if let Some(r) = channel.route().await {
                    let mut routes = routes.lock().unwrap();
                    if routes.last() != Some(&r) {
                        routes.push(r);
                    }
                }
                // The stream's pace (a load generator), so the moves fall mid-stream.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    let wait_for = |n: usize| {
        let answered = answered.clone();
        async move {
            let what = format!("the stream to reach {n} answers");
            dabs_testkit::eventually_async(
                &what,
                Duration::from_secs(10),
                Duration::from_millis(5),
                async || answered.lock().unwrap().len() >= n,
            )
            .await
        }
    };
    let tell = move |order: &str, to_child: &mut std::process::ChildStdin| {
        writeln!(to_child, "{order}").unwrap();
        to_child.flush().unwrap();
    };

    // Move in: the portion starts here, the address now points here, the child drains.
    wait_for(150).await;
    local.accepting.store(true, Ordering::SeqCst);
    resolver.set(VA, address_object(&local_ep));
    tell("drain", &mut to_child);
    // Move back out.
    wait_for(350).await;
    tell("accept", &mut to_child);
    resolver.set(VA, remote);
    local.accepting.store(false, Ordering::SeqCst);

    for w in workers {
        w.await.unwrap();
    }
    tell("dump", &mut to_child);
    let dump = tokio::task::spawn_blocking(move || {
        let dump = read_marker(&mut from_child, "EXECUTED");
        tell("quit", &mut to_child);
        // Read to the end so the child's harness can print its summary and exit cleanly.
        let _ = std::io::Read::read_to_end(&mut from_child, &mut Vec::new());
        dump
    })
    .await
    .unwrap();
    assert!(child.wait().unwrap().success(), "child portion process failed");

    let remote_ids: Vec<u64> =
        dump.trim_start_matches("EXECUTED").split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let local_ids = local.executed.lock().unwrap().clone();
    let mut all = BTreeSet::new();
    for id in remote_ids.iter().chain(local_ids.iter()) {
        assert!(all.insert(*id), "call {id} ran twice");
    }
    assert_eq!(all.len() as u64, CALLS, "some call never ran");
    assert_eq!(answered.lock().unwrap().len() as u64, CALLS, "some call never answered");
    assert!(!local_ids.is_empty() && !remote_ids.is_empty(), "both homes served calls");
    let routes = routes.lock().unwrap().clone();
    let kinds: Vec<&str> = routes
        .iter()
        .map(|r| match r {
            dabs_net::Addr::Local(_) => "local",
            dabs_net::Addr::InProc(_) => "inproc",
            dabs_net::Addr::Udp(_) => "udp",
            dabs_net::Addr::Tcp(_) => "tcp",
            dabs_net::Addr::Ws(_) => "ws",
        })
        .collect();
    let mut dedup = kinds.clone();
    dedup.dedup();
    assert_eq!(dedup, ["local", "inproc", "local"], "routes taken: {kinds:?}");
}
