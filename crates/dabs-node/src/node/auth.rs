//! The control plane's authentication at this node (docs/protocol.md, "Control-plane
//! authentication"): the keys, this run's counter, the replay state of every sender, the node
//! sessions whose opener proved the key, and the count (and rate-limited events) of what failed.

use super::Inner;
use dabs_farm_proto::control::{self, AnnounceFloor, AuthError, Opened, ReplayGuard, Route, Stamp};
use dabs_farm_proto::keys::{FarmKeys, Purpose};
use dabs_net::{Addr, IncomingRequest, SessionId, unix_ms};
use dabs_wire::{NakCode, SystemCommand};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one event line about refused messages per this interval; the rest are counted in it.
const NOTE_EVERY: Duration = Duration::from_secs(1);

/// This node's side of the authenticated control plane.
pub(super) struct Auth {
    keys: FarmKeys,
    /// The counter of this run's sealed requests (the last one used).
    counter: AtomicU64,
    /// Counters taken per sender run.
    replay: Mutex<ReplayGuard>,
    /// Newest (start, sequence) per announcing node.
    floor: Mutex<AnnounceFloor>,
    /// Node sessions whose opener proved the control key: session → node name.
    sessions: Mutex<HashMap<SessionId, String>>,
    /// When the last refusal was noted, and how many were refused since without a line.
    noted: Mutex<(Option<Instant>, u64)>,
}

impl Auth {
    /// Keys from the farm secret; a farm without one (loopback only) uses the empty secret, so
    /// the wire stays the same but anyone on the host could compute the keys.
    pub(super) fn new(secret: Option<&[u8]>) -> Self {
        Self {
            keys: FarmKeys::derive(secret.unwrap_or_default()),
            counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayGuard::default()),
            floor: Mutex::new(AnnounceFloor::default()),
            sessions: Mutex::new(HashMap::new()),
            noted: Mutex::new((None, 0)),
        }
    }

    pub(super) fn announce_key(&self) -> &[u8; 32] {
        self.keys.key(Purpose::Announce)
    }

    pub(super) fn control_key(&self) -> &[u8; 32] {
        self.keys.key(Purpose::Control)
    }

    /// Forgets a session that ended.
    pub(super) fn session_closed(&self, session: SessionId) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&session);
    }
}

impl Inner {
    /// Counts a refused message and notes it (rate-limited, [`Inner::note_limited`]).
    pub(super) fn auth_failed(&self, what: &str, from: &Addr, why: &AuthError) {
        self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%from, error = %why, "{what} refused");
        self.note_limited(format!("{what} from {from} refused: {why}"));
    }

    /// Notes a refusal, at most one line a second (saying how many more were refused since),
    /// so a flood cannot wipe the event log.
    pub(super) fn note_limited(&self, text: String) {
        let suppressed = {
            let mut noted = self.auth.noted.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if noted.0.is_some_and(|at| now.duration_since(at) < NOTE_EVERY) {
                noted.1 += 1;
                return;
            }
            noted.0 = Some(now);
            std::mem::take(&mut noted.1)
        };
        let more = if suppressed > 0 {
            format!(" ({suppressed} more refused since the last line)")
        } else {
            String::new()
        };
        self.note(format!("{text}{more}"));
    }

    /// A stamp for the next sealed request of this run.
    fn next_stamp(&self) -> Stamp {
        Stamp {
            node: self.me.clone(),
            started_ms: self.started_ms,
            counter: self.auth.counter.fetch_add(1, Ordering::Relaxed) + 1,
            issued_ms: unix_ms(),
        }
    }

    /// Seals `body` as request `command` to the member at `to` that started at `to_started_ms`.
    pub(super) fn seal_request(
        &self,
        to: SocketAddr,
        to_started_ms: u64,
        command: u16,
        body: &[u8],
    ) -> (Vec<u8>, [u8; control::TAG_LEN]) {
        let route = Route { sender: self.mp, receiver: to, receiver_started_ms: to_started_ms, command };
        control::seal_request(self.auth.control_key(), &route, &self.next_stamp(), body)
    }

    /// The `OPEN_SESSION` payload of a node session to `to`: `{"node", "auth"}`, the proof a
    /// sealed request with an empty body.
    pub(super) fn node_open_payload(&self, to: SocketAddr, to_started_ms: u64) -> Vec<u8> {
        let route = Route {
            sender: self.mp,
            receiver: to,
            receiver_started_ms: to_started_ms,
            command: SystemCommand::OpenSession.number(),
        };
        let (proof, _) =
            control::seal_request_value(self.auth.control_key(), &route, &self.next_stamp(), &[]);
        let payload = ciborium::Value::Map(vec![
            (ciborium::Value::Text("node".into()), ciborium::Value::Text(self.me.clone())),
            (ciborium::Value::Text("auth".into()), proof),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&payload, &mut out).expect("CBOR into a Vec cannot fail");
        out
    }

    fn route_from(&self, from: &Addr, command: u16) -> Result<Route, AuthError> {
        let Addr::Udp(sender) = from else {
            return Err(AuthError::Malformed("node commands come over UDP only".into()));
        };
        Ok(Route { sender: *sender, receiver: self.mp, receiver_started_ms: self.started_ms, command })
    }

    /// Checks the proof in a node session's `OPEN_SESSION` payload: `Ok(None)` without one (a
    /// tool's session: it gets what any client gets), `Ok(Some(node))` when it verifies for
    /// the node the payload names. Opens are not replay-checked (the core re-sends the same
    /// open to re-open a session); what runs in the session is.
    pub(super) fn check_node_open(
        &self,
        from: &Addr,
        named: &str,
        payload: &[u8],
    ) -> Result<Option<String>, AuthError> {
        let value: ciborium::Value =
            ciborium::from_reader(payload).map_err(|_| AuthError::Malformed("not CBOR".into()))?;
        let Some(proof) = value
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("auth")))
            .map(|(_, v)| v.clone())
        else {
            return Ok(None);
        };
        let route = self.route_from(from, SystemCommand::OpenSession.number())?;
        let opened = control::open_request_value(self.auth.control_key(), &route, proof, unix_ms())?;
        if opened.stamp.node != named {
            return Err(AuthError::Malformed(format!(
                "the proof is {}'s, the open names {named}",
                opened.stamp.node
            )));
        }
        Ok(Some(opened.stamp.node))
    }

    /// Records a node session whose opener proved the key.
    pub(super) fn node_session_opened(&self, session: SessionId, node: String) {
        self.auth.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(session, node);
    }

    /// Authenticates a node command: it must come in a node session whose opener proved the
    /// key, from that node, sealed for this node and this run, fresh and not replayed. On
    /// failure the request is refused (NAK 9), counted and noted, and `Err` returned.
    pub(super) fn authenticate(&self, req: IncomingRequest) -> Result<(Opened, IncomingRequest), ()> {
        let command = req.request.command;
        let name =
            SystemCommand::from_number(command).map_or_else(|| command.to_string(), |c| c.name().to_owned());
        match self.check_request(&req) {
            Ok(opened) => Ok((opened, req)),
            Err(why) => {
                self.auth_failed(&name, &req.request.peer, &why);
                req.reject(NakCode::AuthenticationFailed, format!("{name} not authenticated"));
                Err(())
            }
        }
    }

    fn check_request(&self, req: &IncomingRequest) -> Result<Opened, AuthError> {
        let session_node = self
            .auth
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&req.request.id.session)
            .cloned();
        let Some(session_node) = session_node else {
            return Err(AuthError::Malformed("not in a node session that proved the farm key".into()));
        };
        let route = self.route_from(&req.request.peer, req.request.command)?;
        let opened = control::open_request(self.auth.control_key(), &route, &req.request.payload, unix_ms())?;
        if opened.stamp.node != session_node {
            return Err(AuthError::Malformed(format!(
                "sealed by {}, in {session_node}'s session",
                opened.stamp.node
            )));
        }
        self.auth.replay.lock().unwrap_or_else(|e| e.into_inner()).check(&opened.stamp)?;
        Ok(opened)
    }

    /// Answers an authenticated request with `body`, sealed and bound to it.
    pub(super) fn answer(&self, req: IncomingRequest, opened: &Opened, body: &[u8]) {
        let Addr::Udp(requester) = req.request.peer else { return };
        let sealed = control::seal_reply(
            self.auth.control_key(),
            self.mp,
            requester,
            req.request.command,
            &opened.mac,
            body,
        );
        req.reply(sealed);
    }

    /// Checks an announcement heard from `from`: its tag, its sender, its time, and that it is
    /// newer than any heard from that node; `None` for a part already taken (a duplicate).
    pub(super) fn check_announcement(
        &self,
        from: &Addr,
        payload: &[u8],
    ) -> Result<Option<crate::stats::NodeStats>, AuthError> {
        let Addr::Udp(sender) = from else {
            return Err(AuthError::Malformed("announcements come over UDP only".into()));
        };
        let stats = control::open_announcement(self.auth.announce_key(), *sender, payload, unix_ms())?;
        let fresh = self.auth.floor.lock().unwrap_or_else(|e| e.into_inner()).check(&stats)?;
        Ok(fresh.then_some(stats))
    }
}
