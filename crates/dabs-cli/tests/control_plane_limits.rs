//! Issue 11 item 2, from a holder of the farm secret: even an authenticated member cannot make
//! a node run more portions than its cap (`[node] max_portions`, default 256), and the node
//! refuses the one beyond it cleanly and keeps serving. The member's side is written here from
//! docs/protocol.md ("Control-plane authentication") alone, with its own HMAC: the test checks
//! the construction as an independent implementation would read it, not the node's code.

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
use ciborium::Value;
use dabs_farm_proto::keys::{FarmKeys, Purpose};
use dabs_farm_proto::shapes::{OpenAsk, cbor};
use dabs_net::{Addr, CallError, Config, DriverOptions, EndpointHandle, Error};
use dabs_node::stats::NodeStats;
use dabs_testkit::NodeProc;
use dabs_wire::{NakCode, SystemCommand};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn secret() -> Vec<u8> {
    (0..SECRET.len()).step_by(2).map(|i| u8::from_str_radix(&SECRET[i..i + 2], 16).unwrap()).collect()
}

async fn endpoint() -> EndpointHandle {
    let config = Config { ack_timeout: Duration::from_millis(100), max_retries: 6, ..Config::default() };
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
        .await
        .unwrap()
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// A member of the farm as docs/protocol.md describes one: its name, address, run and counter.
struct Member {
    key: [u8; 32],
    name: String,
    addr: SocketAddr,
    started_ms: u64,
    counter: u64,
}

impl Member {
    /// The sealed request map and its tag: HMAC-SHA256(control key, "dabs-control-v1" 0x00
    /// sender 0x00 receiver 0x00 node 0x00 command(u16 BE) receiver-start st n t (u64 BE)
    /// body).
    fn seal(&mut self, to: SocketAddr, to_started: u64, command: u16, body: &[u8]) -> (Value, Vec<u8>) {
        self.counter += 1;
        let issued = dabs_net::unix_ms();
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).unwrap();
        m.update(format!("dabs-control-v1\0{}\0{to}\0{}\0", self.addr, self.name).as_bytes());
        m.update(&command.to_be_bytes());
        for n in [to_started, self.started_ms, self.counter, issued] {
            m.update(&n.to_be_bytes());
        }
        m.update(body);
        let tag = m.finalize().into_bytes().to_vec();
        let map = Value::Map(vec![
            (text("node"), text(&self.name)),
            (text("st"), Value::Integer(self.started_ms.into())),
            (text("n"), Value::Integer(self.counter.into())),
            (text("t"), Value::Integer(issued.into())),
            (text("body"), Value::Bytes(body.to_vec())),
            (text("mac"), Value::Bytes(tag.clone())),
        ]);
        (map, tag)
    }

    /// The answer's body, once its tag verifies: HMAC-SHA256(control key,
    /// "dabs-control-reply-v1" 0x00 responder 0x00 requester 0x00 command(u16 BE) request-tag body).
    fn open_answer(&self, from: SocketAddr, command: u16, request_tag: &[u8], answer: &[u8]) -> Vec<u8> {
        let v: Value = ciborium::from_reader(answer).unwrap();
        let map = v.as_map().expect("a sealed answer is a map");
        let get =
            |k: &str| map.iter().find(|(key, _)| key.as_text() == Some(k)).unwrap().1.as_bytes().unwrap();
        let (body, tag) = (get("body"), get("mac"));
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).unwrap();
        m.update(format!("dabs-control-reply-v1\0{from}\0{}\0", self.addr).as_bytes());
        m.update(&command.to_be_bytes());
        m.update(request_tag);
        m.update(body);
        m.verify_slice(tag).expect("the node's answer carries the documented tag");
        body.clone()
    }
}

fn node_config(dir: &std::path::Path) -> std::path::PathBuf {
    node_config_with(dir, "")
}

/// [`node_config`] with more `[farm]` lines.
fn node_config_with(dir: &std::path::Path, farm: &str) -> std::path::PathBuf {
    let group = format!(
        "239.255.{}.{}:{}",
        rand::random_range(1..=254),
        rand::random_range(1..=254),
        rand::random_range(40_000..60_000)
    );
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[farm]\nname = \"limits\"\ngroup = \"{group}\"\ninterface = \"127.0.0.1\"\nsecret = \"{SECRET}\"\n{farm}\n\
             [node]\nname = \"node-1\"\nbind = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n\
             [[app]]\nname = \"calc\"\nstart_at_init = true\n"
        ),
    )
    .unwrap();
    config
}

/// The node's own statistics, asked for in a tool's session (no proof needed for them).
async fn stats_of(ep: &EndpointHandle, node: SocketAddr) -> NodeStats {
    let ask = OpenAsk { node: Some("observer".into()), ..Default::default() }.to_cbor();
    let tool = ep.open(Addr::Udp(node), 0, ask).await.unwrap();
    let stats = tool.call(SystemCommand::GetStatistics.number(), vec![]).await.unwrap();
    let (me, _): (NodeStats, Vec<NodeStats>) = ciborium::from_reader(&stats[..]).unwrap();
    tool.close();
    me
}

/// Joins the node at `node` (started at `started_ms`) as member "tester": a node session
/// opened with a proof of the control key.
async fn as_member(ep: &EndpointHandle, node: SocketAddr, started_ms: u64) -> (Member, dabs_net::Session) {
    let mut member = Member {
        key: *FarmKeys::derive(&secret()).key(Purpose::Control),
        name: "tester".into(),
        addr: ep.local_addrs().udp,
        started_ms: dabs_net::unix_ms(),
        counter: 0,
    };
    let (proof, _) = member.seal(node, started_ms, SystemCommand::OpenSession.number(), &[]);
    let open = Value::Map(vec![(text("node"), text("tester")), (text("auth"), proof)]);
    let session = ep.open(Addr::Udp(node), 0, to_vec(&open)).await.expect("a member opens a node session");
    (member, session)
}

fn nak(r: &Result<Vec<u8>, Error>) -> Option<(NakCode, String)> {
    match r {
        Err(Error::Call(CallError::Nak { code, text })) => Some((*code, text.clone())),
        _ => None,
    }
}

/// A member SPAWNs until the node's default cap (256 portions): each is started and answered
/// under the documented tag; the one beyond is refused with NAK 12 naming the cap, as is every
/// later one, while a client is still served. A replayed SPAWN and one sealed with another
/// farm's key are refused (NAK 9) without starting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_spawn_beyond_the_cap_and_the_node_keeps_serving() {
    let dir = dabs_testkit::temp_dir("limits-cap");
    let node = NodeProc::start(DABS, &node_config(&dir));
    let ep = endpoint().await;
    let me = stats_of(&ep, node.mp).await;
    let (mut member, session) = as_member(&ep, node.mp, me.started_ms).await;

    let spawn_cmd = SystemCommand::Spawn.number();
    let body = cbor(&BTreeMap::from([("app", "calc"), ("cause", "test")]));
    let mut started = Vec::new();
    let mut refused = None;
    let mut last_sealed = None;
    // The node started one at initialisation; at most 256 fit.
    for _ in 0..300 {
        let (sealed, tag) = member.seal(node.mp, me.started_ms, spawn_cmd, &body);
        let sealed = to_vec(&sealed);
        let r = session.call(spawn_cmd, sealed.clone()).await;
        if let Some(n) = nak(&r) {
            refused = Some(n);
            break;
        }
        let answer = member.open_answer(node.mp, spawn_cmd, &tag, &r.expect("SPAWN answered"));
        let v: BTreeMap<String, String> = ciborium::from_reader(&answer[..]).unwrap();
        started.push(v["va"].clone());
        last_sealed = Some(sealed);
    }
    assert_eq!(
        started.len(),
        255,
        "the default cap is 256 portions, one of them started at initialisation: {refused:?}"
    );
    let (code, why) = refused.expect("the SPAWN beyond the cap is refused");
    assert_eq!(code, NakCode::NotAccepting, "{why}");
    assert!(why.contains("max_portions"), "the refusal names the cap: {why}");
    // Refused again, cleanly (the node does not hang looking for a queue).
    let (sealed, _) = member.seal(node.mp, me.started_ms, spawn_cmd, &body);
    let again = session.call(spawn_cmd, to_vec(&sealed)).await;
    assert_eq!(nak(&again).map(|n| n.0), Some(NakCode::NotAccepting), "{again:?}");
    // A SPAWN for a portion already here starts nothing and names it.
    let hosted = cbor(&BTreeMap::from([("app", "calc"), ("va", started[0].as_str())]));
    let (sealed, tag) = member.seal(node.mp, me.started_ms, spawn_cmd, &hosted);
    let answer = session.call(spawn_cmd, to_vec(&sealed)).await.expect("a hosted address is answered");
    let v: BTreeMap<String, String> =
        ciborium::from_reader(&member.open_answer(node.mp, spawn_cmd, &tag, &answer)[..]).unwrap();
    assert_eq!(v["va"], started[0]);
    // A replay of a SPAWN already taken, and one sealed with another key: refused, NAK 9.
    let replay = session.call(spawn_cmd, last_sealed.unwrap()).await;
    assert_eq!(nak(&replay).map(|n| n.0), Some(NakCode::AuthenticationFailed), "{replay:?}");
    let mut outsider = Member { key: [7; 32], counter: 10_000, ..member };
    let (sealed, _) = outsider.seal(node.mp, me.started_ms, spawn_cmd, &body);
    let forged = session.call(spawn_cmd, to_vec(&sealed)).await;
    assert_eq!(nak(&forged).map(|n| n.0), Some(NakCode::AuthenticationFailed), "{forged:?}");

    // Still serving: a client gets a seat on one of the portions and is answered.
    let client = endpoint().await;
    let s = client
        .open(Addr::Udp(node.mp), 1, OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor())
        .await
        .expect("a client still gets in");
    let reply = s.call(256, cbor(&(40_i64, 2_i64))).await.unwrap();
    let v: BTreeMap<String, i64> = ciborium::from_reader(&reply[..]).unwrap();
    assert_eq!(v["ok"], 42);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under the etcd registry an ASSIGN carries its decider's fencing token, and a node refuses
/// one from a decider older than the newest it has seen, even sealed by a member: without a
/// token, with a token below the node's own election, and, once a newer decider's token was
/// taken, with the node's own earlier one. A decision with the newest token is carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_an_assign_from_an_older_decider_is_refused() {
    let dir = dabs_testkit::temp_dir("limits-fence");
    let etcd = dabs_testkit::etcd::EtcdServer::start(&dir);
    let farm = format!("registry = \"etcd\"\netcd = [\"{}\"]", etcd.url);
    let node = NodeProc::start(DABS, &node_config_with(&dir, &farm));
    let ep = endpoint().await;
    // Alone in its farm, the node wins the election: its announcement says it decides.
    let mut me = None;
    for _ in 0..100 {
        let s = stats_of(&ep, node.mp).await;
        if s.decider {
            me = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let me = me.expect("the node alone in etcd is elected within 5 s");
    let (mut member, session) = as_member(&ep, node.mp, me.started_ms).await;
    let victim = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let assign_cmd = SystemCommand::Assign.number();
    let mut assign = |fence: Option<u64>, tx: u8| {
        let body = cbor(&dabs_farm_proto::shapes::Assign {
            client: victim.local_addr().unwrap(),
            tx,
            stamp: 1234,
            src: 1,
            crc: false,
            app: "calc".into(),
            va: None,
            start_new: false,
            overflow: false,
            class: None,
            group: None,
            security: false,
            pinned: false,
            fence,
            device: None,
        });
        to_vec(&member.seal(node.mp, me.started_ms, assign_cmd, &body).0)
    };
    let unfenced = session.call(assign_cmd, assign(None, 1)).await;
    let (code, why) = nak(&unfenced).expect("an ASSIGN without a token is refused");
    assert_eq!(code, NakCode::NotAccepting);
    assert!(why.contains("without a fencing token"), "{why}");
    // Revision 1 is older than any election key: the node's own was created after its
    // member key.
    let stale = session.call(assign_cmd, assign(Some(1), 2)).await;
    let (_, why) = nak(&stale).expect("an ASSIGN from an older decider is refused");
    assert!(why.contains("older than the newest decider"), "{why}");
    // A newer decider's decision is carried out: the client hears the REPLY.
    let newer = 1 << 40;
    session.call(assign_cmd, assign(Some(newer), 3)).await.expect("the newest decider's ASSIGN is taken");
    let mut buf = [0u8; 2048];
    let heard = tokio::time::timeout(Duration::from_secs(5), victim.recv_from(&mut buf)).await;
    assert!(heard.is_ok(), "the assigned client got no REPLY");
    // From then on a token below it is stale, however recent it was before.
    let old = session.call(assign_cmd, assign(Some(newer - 1), 4)).await;
    let (_, why) = nak(&old).expect("the older token is refused once a newer one was seen");
    assert!(why.contains(&format!("({newer})")), "{why}");
    drop(node);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
