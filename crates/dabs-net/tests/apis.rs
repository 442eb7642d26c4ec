//! The driver's call APIs over each partition, and its typed errors, on loopback.

use dabs_net::{Addr, CallError, Config, DriverOptions, EndpointHandle, Error};
use dabs_wire::{NakCode, SystemCommand};
use std::time::Duration;

const QUEUE: u16 = 3;
const UPPER: u16 = 300;

/// A server endpoint that accepts every session on QUEUE and upper-cases command 300.
async fn server(options: DriverOptions) -> EndpointHandle {
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    let mut opens = ep.open_requests();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            open.accept(QUEUE, b"ok".to_vec()).await.unwrap();
        }
    });
    let mut requests = ep.register_queue(QUEUE);
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            if req.request.command == UPPER {
                let reply = req.request.payload.to_ascii_uppercase();
                req.reply(reply);
            } else {
                req.reject(NakCode::UnknownCommand, "only 300");
            }
        }
    });
    ep
}

async fn client(options: DriverOptions) -> EndpointHandle {
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), options).await.unwrap()
}

fn tmp_sock(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dabs-test-{}-{name}.sock", std::process::id()))
}

#[tokio::test]
async fn sync_async_and_callback_calls_over_udp() {
    let srv = server(DriverOptions::default()).await;
    let cli = client(DriverOptions::default()).await;
    let s = cli.open(Addr::Udp(srv.local_addrs().udp), 7, b"{}".to_vec()).await.unwrap();
    assert_eq!(s.queue, QUEUE);
    assert_eq!(s.reply, b"ok");

    // Synchronous: one awaited call.
    assert_eq!(s.call(UPPER, b"abc".to_vec()).await.unwrap(), b"ABC");

    // Asynchronous: all submitted at once, awaited later, each with its own answer.
    let futures: Vec<_> = (0..50).map(|i| s.call_async(UPPER, format!("m{i}").into_bytes())).collect();
    for (i, f) in futures.into_iter().enumerate() {
        assert_eq!(f.await.unwrap(), format!("M{i}").into_bytes());
    }

    // Callback: runs on the driver task with the outcome.
    let (tx, rx) = tokio::sync::oneshot::channel();
    cli.call_with(s.id, UPPER, b"cb".to_vec(), move |r| {
        let _ = tx.send(r);
    });
    assert_eq!(rx.await.unwrap().unwrap(), b"CB");

    // Multi-buffer both ways, 64 KiB.
    let big: Vec<u8> = (0..65_536u32).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(s.call(UPPER, big.clone()).await.unwrap(), big.to_ascii_uppercase());
    let echo = s.call(SystemCommand::Echo.number(), big.clone()).await.unwrap();
    assert_eq!(echo, big);

    let stats = srv.stats().await.unwrap();
    assert!(stats.requests_delivered >= 53);
    assert_eq!(stats.calls_failed, 0);
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let srv = server(DriverOptions::default()).await;
    let cli = client(DriverOptions::default()).await;
    let s = cli.open(Addr::Udp(srv.local_addrs().udp), 7, b"{}".to_vec()).await.unwrap();
    let err = s.call(999, vec![]).await.unwrap_err();
    assert!(matches!(err, Error::Call(CallError::Nak { code: NakCode::UnknownCommand, .. })), "{err}");

    // A queue nobody listens on: NAK 7.
    srv.unregister_queue(QUEUE);
    // The driver takes its orders in turn: once it has answered this one, it has done that.
    srv.stats().await.unwrap();
    let err = s.call(UPPER, vec![]).await.unwrap_err();
    assert!(matches!(err, Error::Call(CallError::Nak { code: NakCode::UnknownQueue, .. })), "{err}");

    // An endpoint with no open handler refuses sessions: NAK 11.
    let bare = client(DriverOptions::default()).await;
    let err = cli.open(Addr::Udp(bare.local_addrs().udp), 1, vec![]).await.err().unwrap();
    assert!(matches!(err, Error::Call(CallError::Nak { code: NakCode::UnknownApplication, .. })), "{err}");

    // Too large to send at all.
    let err = s.call(UPPER, vec![0; 2 << 20]).await.unwrap_err();
    assert!(matches!(err, Error::Call(CallError::TooLarge { .. })), "{err}");
}

#[tokio::test]
async fn a_dead_peer_is_reported_after_the_retries() {
    let srv = server(DriverOptions::default()).await;
    let fast = Config {
        ack_timeout: Duration::from_millis(10),
        ack_timeout_max: Duration::from_millis(40),
        max_retries: 3,
        ..Config::default()
    };
    let cli = client(DriverOptions { config: fast, ..Default::default() }).await;
    let s = cli.open(Addr::Udp(srv.local_addrs().udp), 7, vec![]).await.unwrap();
    srv.shutdown().await;
    let err = s.call(UPPER, b"x".to_vec()).await.unwrap_err();
    assert_eq!(err, Error::Call(CallError::GaveUp { attempts: 4 }));
    let stats = cli.stats().await.unwrap();
    assert_eq!(stats.retransmits, 3);
    assert_eq!(stats.calls_failed, 1);
}

#[tokio::test]
async fn local_socket_partition_needs_no_acks() {
    let (sp, cp) = (tmp_sock("srv"), tmp_sock("cli"));
    let srv = server(DriverOptions { unix_path: Some(sp.clone()), ..Default::default() }).await;
    let cli = client(DriverOptions { unix_path: Some(cp.clone()), ..Default::default() }).await;
    let s = cli.open(Addr::Local(sp.to_string_lossy().into()), 7, vec![]).await.unwrap();
    assert!(matches!(s.peer, Addr::Local(_)));
    for i in 0..20 {
        assert_eq!(s.call(UPPER, format!("x{i}").into_bytes()).await.unwrap(), format!("X{i}").into_bytes());
    }
    let big = vec![b'q'; 10_000];
    assert_eq!(s.call(UPPER, big).await.unwrap(), vec![b'Q'; 10_000]);
    let c = cli.stats().await.unwrap();
    let v = srv.stats().await.unwrap();
    // Open + 20 small + one 21-buffer request; replies likewise: not one ACK either way.
    assert_eq!(c.datagrams_out, 1 + 20 + 21, "client sent ACKs over a reliable link: {c:?}");
    assert_eq!(v.datagrams_out, 1 + 20 + 21, "server sent ACKs over a reliable link: {v:?}");
    // Each driver truncates its clock to whole ms, so a reply can look up to 1 ms early and
    // count as clock skew: either way it was timed.
    assert!(c.latency_count + c.clock_skew >= 21, "replies are still timed: {c:?}");
    cli.shutdown().await;
    srv.shutdown().await;
    assert!(!sp.exists() && !cp.exists(), "sockets removed on shutdown");
}

#[tokio::test]
async fn in_process_partition() {
    let srv = server(DriverOptions::default()).await;
    let cli = client(DriverOptions::default()).await;
    let s = cli.open(Addr::InProc(srv.local_addrs().inproc), 7, vec![]).await.unwrap();
    assert_eq!(s.call(UPPER, b"in".to_vec()).await.unwrap(), b"IN");
    let c = cli.stats().await.unwrap();
    assert_eq!(c.datagrams_out, 2, "open and one request, no ACKs: {c:?}");
}

#[tokio::test]
async fn open_sessions_are_counted_as_they_open_and_close() {
    let srv = server(DriverOptions::default()).await;
    let cli = client(DriverOptions::default()).await;
    let to = Addr::Udp(srv.local_addrs().udp);
    let a = cli.open(to.clone(), 1, vec![]).await.unwrap();
    let b = cli.open(to, 1, vec![]).await.unwrap();
    assert_eq!(cli.stats().await.unwrap().sessions_open, 2);
    a.close();
    b.close();
    // The server hears both CLOSE_SESSIONs; the gauge falls back, while the counter of
    // sessions ever opened does not.
    let s = dabs_testkit::eventually_async(
        "the server to count no open session",
        Duration::from_secs(2),
        Duration::from_millis(10),
        async || {
            let s = srv.stats().await.unwrap();
            if s.sessions_open == 0 { Ok(s) } else { Err(format!("it counts {}", s.sessions_open)) }
        },
    )
    .await;
    assert_eq!(s.sessions_opened, 2);
    assert_eq!(cli.stats().await.unwrap().sessions_open, 0);
}
