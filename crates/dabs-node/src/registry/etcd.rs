//! The etcd registry's driver: this node's member key under a lease kept alive, a watch on the
//! other members' keys, a campaign for the decider's key, and an observer of the election.
//! Keys: `/dabs/FARM/members/NODE` (the node's statistics at registration, CBOR) and the
//! election `/dabs/FARM/decider` (etcd's v3election service).

use super::{Leader, RegistryEvent, RegistryView};
use crate::stats::NodeStats;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long one unary call to etcd may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before trying again after etcd failed or a stream ended.
const RETRY: Duration = Duration::from_millis(200);

/// The running driver; [`EtcdRegistry::stop`] revokes the lease, which removes the member key
/// and the decider's key at once.
pub(crate) struct EtcdRegistry {
    client: Client,
    view: Arc<Mutex<RegistryView>>,
    lease: Arc<Mutex<Option<i64>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where this farm's keys live.
#[derive(Clone)]
struct Keys {
    members: String,
    election: String,
    me: String,
    registration: Vec<u8>,
    ttl: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn timed<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd {what}: {e}")),
        Err(_) => Err(format!("etcd {what}: no answer in {CALL_TIMEOUT:?}")),
    }
}

impl EtcdRegistry {
    /// Connects, registers this node under a lease of `ttl` (etcd may raise it to its own
    /// minimum) and starts the tasks; fails when etcd cannot be reached at all.
    pub(crate) async fn start(
        endpoints: &[String],
        farm: &str,
        registration: &NodeStats,
        ttl: Duration,
        view: Arc<Mutex<RegistryView>>,
        events: mpsc::UnboundedSender<RegistryEvent>,
    ) -> Result<Self, String> {
        let options = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT);
        let client = timed("connect", Client::connect(endpoints, Some(options))).await?;
        let mut first = registration.clone();
        first.portions.clear();
        first.known.clear();
        first.part = None;
        let keys = Keys {
            members: format!("/dabs/{farm}/members/"),
            election: format!("/dabs/{farm}/decider"),
            me: registration.node.clone(),
            registration: first.to_cbor(),
            ttl: Duration::from_secs(ttl.as_secs_f64().ceil().max(1.0) as u64),
        };
        let lease = register(&client, &keys).await?;
        lock(&view).reachable = true;
        let held = Arc::new(Mutex::new(Some(lease)));
        let tasks = vec![
            tokio::spawn(session_loop(client.clone(), keys.clone(), lease, view.clone(), held.clone())),
            tokio::spawn(members_loop(client.clone(), keys.clone(), view.clone(), events)),
            tokio::spawn(observe_loop(client.clone(), keys, view.clone())),
        ];
        Ok(Self { client, view, lease: held, tasks })
    }

    /// Stops deciding and leaves: revoking the lease deletes this node's member key and its
    /// place in the election, so the others see it go and the next decider is named at once.
    pub(crate) async fn stop(&self) {
        lock(&self.view).mine = None;
        for t in &self.tasks {
            t.abort();
        }
        let lease = lock(&self.lease).take();
        if let Some(lease) = lease {
            let mut client = self.client.clone();
            if let Err(e) = timed("lease revoke", client.lease_revoke(lease)).await {
                tracing::warn!(error = %e, "etcd lease not revoked: the farm sees this node go when it lapses");
            }
        }
    }
}

/// Grants a lease and puts the member key under it.
async fn register(client: &Client, keys: &Keys) -> Result<i64, String> {
    let mut c = client.clone();
    let ttl = i64::try_from(keys.ttl.as_secs()).unwrap_or(i64::MAX);
    let lease = timed("lease grant", c.lease_grant(ttl, None)).await?.id();
    let key = format!("{}{}", keys.members, keys.me);
    let put = c.put(key, keys.registration.clone(), Some(PutOptions::new().with_lease(lease)));
    timed("put member key", put).await?;
    Ok(lease)
}

/// Keeps the lease alive and campaigns with it; when the lease is lost (etcd unreachable for
/// its whole time to live, or expired), stops leading and registers again with a new one.
async fn session_loop(
    client: Client,
    keys: Keys,
    mut lease: i64,
    view: Arc<Mutex<RegistryView>>,
    held: Arc<Mutex<Option<i64>>>,
) {
    loop {
        let campaign = tokio::spawn(campaign(client.clone(), keys.clone(), lease, view.clone()));
        keep_alive(&client, lease, keys.ttl, &view).await;
        campaign.abort();
        lock(&view).mine = None;
        tracing::warn!(lease, "etcd lease lost: this node no longer decides; registering again");
        // Best effort: a lease still alive in etcd would hold the old place in the election.
        let mut c = client.clone();
        let _ = timed("lease revoke", c.lease_revoke(lease)).await;
        lease = loop {
            match register(&client, &keys).await {
                Ok(new) => break new,
                Err(e) => {
                    lock(&view).reachable = false;
                    tracing::warn!(error = %e, "etcd registration failed; trying again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        *lock(&held) = Some(lease);
        lock(&view).reachable = true;
    }
}

/// Renews `lease` every third of its time to live; returns once it is lost.
async fn keep_alive(client: &Client, lease: i64, ttl: Duration, view: &Mutex<RegistryView>) {
    let interval = ttl / 3;
    let mut renewed = Instant::now();
    'stream: while renewed.elapsed() < ttl {
        let mut c = client.clone();
        let Ok((mut keeper, mut answers)) = timed("keep-alive", c.lease_keep_alive(lease)).await else {
            lock(view).reachable = false;
            tokio::time::sleep(RETRY).await;
            continue;
        };
        loop {
            if keeper.keep_alive().await.is_err() {
                tokio::time::sleep(RETRY).await;
                continue 'stream;
            }
            match tokio::time::timeout(interval, answers.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    renewed = Instant::now();
                    lock(view).reachable = true;
                }
                // Time to live 0: etcd no longer has the lease.
                Ok(Ok(Some(_))) => return,
                Ok(Ok(None) | Err(_)) => {
                    tokio::time::sleep(RETRY).await;
                    continue 'stream;
                }
                Err(_) => {
                    lock(view).reachable = false;
                    if renewed.elapsed() >= ttl {
                        return;
                    }
                }
            }
            tokio::time::sleep(interval.saturating_sub(renewed.elapsed().min(interval))).await;
            if renewed.elapsed() >= ttl {
                return;
            }
        }
    }
}

/// Waits to be elected with `lease`; once elected, this node decides with the leader key's
/// creation revision as its fencing token.
async fn campaign(mut client: Client, keys: Keys, lease: i64, view: Arc<Mutex<RegistryView>>) {
    loop {
        // No time-out: a campaign waits for as long as older candidates hold the key.
        match client.campaign(keys.election.clone(), keys.me.clone(), lease).await {
            Ok(mut won) => {
                let Some(key) = won.take_leader() else { return };
                let fence = u64::try_from(key.rev()).unwrap_or_default();
                let mut v = lock(&view);
                v.observe_leader(Leader { node: keys.me.clone(), fence });
                v.mine = Some(fence);
                drop(v);
                tracing::info!(fence, "elected the farm's decider in etcd");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "etcd campaign failed; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Follows the election: every node learns each new decider and its token.
async fn observe_loop(mut client: Client, keys: Keys, view: Arc<Mutex<RegistryView>>) {
    loop {
        if let Ok(mut leaders) = client.observe(keys.election.clone()).await {
            while let Ok(Some(answer)) = leaders.message().await {
                if let Some(kv) = answer.kv() {
                    let node = String::from_utf8_lossy(kv.value()).into_owned();
                    let fence = u64::try_from(kv.create_revision()).unwrap_or_default();
                    lock(&view).observe_leader(Leader { node, fence });
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Follows the member keys: a snapshot, then a watch from the snapshot's revision; again from
/// a new snapshot whenever the watch ends.
async fn members_loop(
    mut client: Client,
    keys: Keys,
    view: Arc<Mutex<RegistryView>>,
    events: mpsc::UnboundedSender<RegistryEvent>,
) {
    let prefix = keys.members.clone();
    let name_of = |key: &[u8]| String::from_utf8_lossy(&key[prefix.len().min(key.len())..]).into_owned();
    let decode = |value: &[u8], name: &str| match NodeStats::from_cbor(value) {
        Ok(s) if s.node == name => Some(s),
        Ok(s) => {
            tracing::warn!(key = name, says = %s.node, "etcd member key names another node: ignored");
            None
        }
        Err(e) => {
            tracing::warn!(key = name, error = %e, "etcd member key unreadable: ignored");
            None
        }
    };
    loop {
        let snapshot =
            match timed("get members", client.get(prefix.clone(), Some(GetOptions::new().with_prefix())))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    lock(&view).reachable = false;
                    tracing::warn!(error = %e, "etcd members not read; trying again");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let now: BTreeMap<String, NodeStats> = snapshot
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = name_of(kv.key());
                decode(kv.value(), &name).map(|s| (name, s))
            })
            .collect();
        {
            let mut v = lock(&view);
            for gone in v.members.keys().filter(|n| !now.contains_key(*n)) {
                let _ = events.send(RegistryEvent::Left(gone.clone()));
            }
            for s in now.values() {
                let _ = events.send(RegistryEvent::Joined(Box::new(s.clone())));
            }
            v.members = now;
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        if let Ok(mut watch) = client.watch(prefix.clone(), Some(options)).await {
            while let Ok(Some(answer)) = watch.message().await {
                if answer.canceled() {
                    break;
                }
                for event in answer.events() {
                    let Some(kv) = event.kv() else { continue };
                    let name = name_of(kv.key());
                    match event.event_type() {
                        EventType::Put => {
                            if let Some(s) = decode(kv.value(), &name) {
                                lock(&view).members.insert(name, s.clone());
                                let _ = events.send(RegistryEvent::Joined(Box::new(s)));
                            }
                        }
                        EventType::Delete => {
                            lock(&view).members.remove(&name);
                            let _ = events.send(RegistryEvent::Left(name));
                        }
                    }
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
