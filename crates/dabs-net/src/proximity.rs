//! Proximity: pick the cheapest way to reach a portion, and follow it when it moves.

use crate::handle::{EndpointHandle, Error, Session};
use crate::inproc;
use dabs_proto::{Addr, CallError};
use dabs_wire::NakCode;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Every form under which a portion can be reached (R-VA-1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressObject {
    /// Its endpoint's in-process id, valid inside the process given by `host`/`pid`.
    pub inproc: Option<u64>,
    /// Its endpoint's Unix datagram socket, valid on `host`.
    pub local: Option<PathBuf>,
    /// Its endpoint's UDP address.
    pub network: Option<SocketAddr>,
    /// The host the local forms belong to (see [`host_id`]).
    pub host: Option<String>,
    /// The process the in-process form belongs to.
    pub pid: Option<u32>,
    /// The portion's queue at that endpoint.
    pub queue: u16,
    /// Its virtual address, `mp://FARM/APP/dasp/ID`.
    pub va: Option<String>,
}

impl AddressObject {
    /// The cheapest route from this process: same process, then same host, then network.
    pub fn route(&self) -> Option<Addr> {
        let same_host = self.host.as_deref() == Some(host_id().as_str());
        if let Some(id) = self.inproc
            && same_host
            && self.pid == Some(std::process::id())
            && inproc::is_live(id)
        {
            return Some(Addr::InProc(id));
        }
        if let Some(path) = &self.local
            && same_host
            && path.exists()
        {
            return Some(Addr::Local(path.to_string_lossy().into()));
        }
        self.network.map(Addr::Udp)
    }
}

/// This host's identity, for telling same-host addresses from others.
pub fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Maps virtual addresses to address objects.
pub trait Resolver: Send + Sync {
    /// The current address object of a virtual address.
    fn resolve(&self, va: &str) -> Option<AddressObject>;
}

/// A resolver backed by a table that can be updated while in use (tests, static setups).
#[derive(Clone, Default)]
pub struct StaticResolver(Arc<Mutex<HashMap<String, AddressObject>>>);

impl StaticResolver {
    /// Points `va` at `addr`.
    pub fn set(&self, va: &str, addr: AddressObject) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(va.to_owned(), addr);
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, va: &str) -> Option<AddressObject> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(va).cloned()
    }
}

/// A conversation with a portion known by its virtual address. Each call goes over the
/// cheapest route to wherever the portion is now; a portion that has moved away answers
/// NAK 12 (not accepting) or NAK 1/7 (gone), which means the request did not run, so the
/// channel resolves the address again, opens a session there and sends it once more.
pub struct Channel {
    endpoint: EndpointHandle,
    resolver: Arc<dyn Resolver>,
    va: String,
    local_queue: u16,
    open_payload: Vec<u8>,
    current: tokio::sync::Mutex<Option<(Addr, Route)>>,
    max_moves: u32,
}

/// One call's use of a route; ends the use even if the call is cancelled.
struct InUse(Route);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.end_call();
    }
}

/// A session in use by a channel. A session the channel has moved away from is closed only
/// when its last call has finished: closing it earlier would fail calls that may have run.
#[derive(Clone)]
struct Route {
    session: Session,
    /// Calls in flight, and whether the channel has moved away.
    use_state: Arc<Mutex<(usize, bool)>>,
}

impl Route {
    fn new(session: Session) -> Self {
        Self { session, use_state: Arc::default() }
    }

    fn begin_call(&self) {
        self.use_state.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
    }

    fn end_call(&self) {
        let mut st = self.use_state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 -= 1;
        if st.0 == 0 && st.1 {
            self.session.close();
        }
    }

    fn retire(&self) {
        let mut st = self.use_state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.1 {
            st.1 = true;
            if st.0 == 0 {
                self.session.close();
            }
        }
    }
}

impl Channel {
    /// A channel from `local_queue` of `endpoint` to the portion at `va`.
    pub fn new(
        endpoint: EndpointHandle,
        resolver: Arc<dyn Resolver>,
        va: &str,
        local_queue: u16,
        open_payload: Vec<u8>,
    ) -> Self {
        Self {
            endpoint,
            resolver,
            va: va.to_owned(),
            local_queue,
            open_payload,
            current: tokio::sync::Mutex::new(None),
            max_moves: 20,
        }
    }

    /// The route the last call took.
    pub async fn route(&self) -> Option<Addr> {
        self.current.lock().await.as_ref().map(|(a, _)| a.clone())
    }

    /// The route to use now, counted as in use by one call until [`Route::end_call`] (via [`InUse`]).
    async fn session(&self) -> Result<(Addr, Route), Error> {
        let mut current = self.current.lock().await;
        let obj = self.resolver.resolve(&self.va).ok_or(Error::Call(CallError::Nak {
            code: NakCode::UnknownQueue,
            text: format!("{} does not resolve", self.va),
        }))?;
        let route = obj.route().ok_or(Error::Call(CallError::UnknownSession))?;
        if let Some((addr, r)) = current.as_ref()
            && *addr == route
        {
            r.begin_call();
            return Ok((addr.clone(), r.clone()));
        }
        if let Some((_, old)) = current.take() {
            old.retire();
        }
        let session = self.endpoint.open(route.clone(), self.local_queue, self.open_payload.clone()).await?;
        let r = Route::new(session);
        r.begin_call();
        *current = Some((route.clone(), r.clone()));
        Ok((route, r))
    }

    /// Sends a request to the portion wherever it is, following moves.
    pub async fn call(&self, command: u16, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut moves = 0;
        loop {
            let (route, r) = self.session().await?;
            let in_use = InUse(r);
            let result = in_use.0.session.call(command, payload.clone()).await;
            drop(in_use);
            match result {
                Err(Error::Call(CallError::Nak { code, .. }))
                    if matches!(
                        code,
                        NakCode::NotAccepting | NakCode::UnknownQueue | NakCode::UnknownSession
                    ) && moves < self.max_moves =>
                {
                    // Refused unrun: the portion is leaving or gone from `route`.
                    moves += 1;
                    let mut current = self.current.lock().await;
                    if current.as_ref().is_some_and(|(a, _)| *a == route)
                        && let Some((_, gone)) = current.take()
                    {
                        gone.retire();
                    }
                    drop(current);
                    tokio::time::sleep(std::time::Duration::from_millis(2 * u64::from(moves))).await;
                }
                other => return other,
            }
        }
    }
}
