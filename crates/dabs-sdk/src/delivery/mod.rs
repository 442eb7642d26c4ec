//! A client portion delivered in parts (R-CL-1…3, R-MP-7; docs/delivery.md): fetch the
//! application's first set of modules from a node's operator port, verify each against the
//! farm's publishing key before it runs, try the return channels in the preferred order
//! (UDP, TCP, WebSocket), fetching the next channel's add-on only when the one before cannot
//! be established and dropping add-ons the device cannot use, then fetch the mutable modules
//! the farm placed on this device.

mod device;
mod fetch;

pub use device::{DeviceProfile, measure};
pub use fetch::{Fetcher, MAX_BODY, Verified};

use crate::client::{FarmClient, FarmClientOptions, Transport};
use dabs_farm_proto::modules::{self, ModuleKind, Placement};
use dabs_net::EndpointHandle;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a client needs to bootstrap.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// A node's operator interface, `http://IP:PORT`: where modules are fetched and the
    /// WebSocket channel is.
    pub ops: String,
    /// The farm's MP address (a node's, or the group's for UDP).
    pub farm: SocketAddr,
    /// The application.
    pub app: String,
    /// The client's class: which modules it is entitled to.
    pub class: String,
    /// What the device is and can use.
    pub device: DeviceProfile,
    /// The farm's publishing key, pinned; `None` takes the one the node serves (trust on
    /// first use) and says so in the report.
    pub publishing_key: Option<[u8; 32]>,
    /// Options for the farm client (app, farm, transport and device are set here).
    pub options: Option<FarmClientOptions>,
    /// Feature add-ons to fetch (by name): only these, and only when asked.
    pub features: Vec<String>,
}

/// Why a client could not be delivered. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The operator interface could not be asked.
    #[error("cannot fetch from {url}: {why}")]
    Fetch {
        /// What was asked for.
        url: String,
        /// Why it failed.
        why: String,
    },
    /// A module failed verification; nothing of it ran.
    #[error(transparent)]
    Module(#[from] dabs_farm_proto::modules::ModuleError),
    /// A verified module does not run in the sandbox.
    #[error("module {name} is signed but does not run: {why}")]
    Sandbox {
        /// The module.
        name: String,
        /// The sandbox's complaint.
        why: String,
    },
    /// The node serves another publishing key than the pinned one.
    #[error("the farm's publishing key is {served}, not the pinned one: refusing its modules")]
    KeyMismatch {
        /// What the node served, base64.
        served: String,
    },
    /// The listing has no module for the first channel, or a channel module's policy is bad.
    #[error("{0}")]
    Package(String),
    /// No channel could be established.
    #[error("no channel reached the farm: {0}")]
    NoChannel(String),
}

/// A channel module's policy, as its `run` answers it.
#[derive(Clone, Debug, Deserialize)]
pub struct ChannelPolicy {
    /// The channel it is the policy of (`udp`, `tcp`, `ws`).
    pub channel: String,
    /// How long to try opening a session on this channel before the next one.
    pub open_timeout_ms: u64,
    /// Opens attempted within that time.
    pub attempts: u32,
}

/// One channel tried.
#[derive(Clone, Debug)]
pub struct ChannelAttempt {
    /// The channel.
    pub transport: Transport,
    /// How long the attempt took (including fetching its add-on).
    pub took: Duration,
    /// `Ok` when it was established; why not otherwise.
    pub outcome: Result<(), String>,
}

/// A delivered client: connected, with its verified modules.
pub struct Delivered {
    /// The farm client, on the channel that worked.
    pub client: Arc<FarmClient>,
    /// That channel.
    pub transport: Transport,
    /// Every channel tried, in order.
    pub attempts: Vec<ChannelAttempt>,
    /// Channel add-ons dropped because the device cannot use their channel.
    pub dropped: Vec<String>,
    /// Modules fetched and verified, in order: (name, kind, bytes).
    pub fetched: Vec<(String, ModuleKind, usize)>,
    /// Where each mutable module runs.
    pub placement: Vec<(String, Placement)>,
    /// The verified bytes of the mutable modules placed on this client.
    pub mutable: HashMap<String, Verified>,
    /// The feature add-ons asked for, verified.
    pub features: HashMap<String, Verified>,
    /// The publishing key was taken from the node rather than pinned.
    pub key_from_node: bool,
    /// Time to the first set fetched, verified and instantiated.
    pub first_set: Duration,
    /// Time to everything delivered and connected.
    pub total: Duration,
}

/// Delivers a client portion: see the module's documentation for the steps.
pub async fn deliver(endpoint: EndpointHandle, b: Bootstrap) -> Result<Delivered, DeliveryError> {
    let started = Instant::now();
    let fetcher = Fetcher::new(&b.ops, b.publishing_key).await?;
    let listing = fetcher.listing(&b.app, &b.class).await?;
    let mut fetched = Vec::new();
    let mut policies: HashMap<String, ChannelPolicy> = HashMap::new();
    let take = |v: &Verified, fetched: &mut Vec<(String, ModuleKind, usize)>| {
        fetched.push((v.entry.name.clone(), v.entry.kind, v.bytes.len()));
    };
    let mut dropped = Vec::new();
    let usable = |entry: &modules::ModuleEntry| {
        entry.channel.as_deref().is_none_or(|c| b.device.channels.iter().any(|t| t.name() == c))
    };
    for entry in listing.iter().filter(|e| e.kind == ModuleKind::First) {
        if !usable(entry) {
            dropped.push(entry.name.clone());
            continue;
        }
        let v = fetcher.module(entry).await?;
        take(&v, &mut fetched);
        if let Some(ch) = &entry.channel {
            policies.insert(ch.clone(), v.policy()?);
        }
    }
    let first_set = started.elapsed();
    let mut attempts = Vec::new();
    let mut connected = None;
    for transport in Transport::ALL {
        let module = listing.iter().find(|e| e.channel.as_deref() == Some(transport.name()));
        let Some(module) = module else { continue };
        if !usable(module) {
            if module.kind != ModuleKind::First {
                dropped.push(module.name.clone());
            }
            continue;
        }
        let tried = Instant::now();
        let policy = match policies.get(transport.name()) {
            Some(p) => p.clone(),
            None => {
                // The add-on is fetched only now that the channels before it failed.
                let v = fetcher.module(module).await?;
                take(&v, &mut fetched);
                let p = v.policy()?;
                policies.insert(transport.name().into(), p.clone());
                p
            }
        };
        // The listing's `channel` is not signed; the module's own answer is.
        if policy.channel != transport.name() {
            return Err(DeliveryError::Package(format!(
                "module {} is listed for channel {} but is the policy of channel {}",
                module.name,
                transport.name(),
                policy.channel
            )));
        }
        let farm = match transport {
            Transport::WebSocket => fetcher.addr(),
            _ => b.farm,
        };
        let mut options = b.options.clone().unwrap_or_else(|| FarmClientOptions::new(farm, &b.app));
        options.farm = farm;
        options.app = b.app.clone();
        options.transport = transport;
        options.device = b.device.offered();
        options.class = Some(b.class.clone());
        options.max_reopens = policy.attempts.saturating_sub(1);
        let budget = Duration::from_millis(policy.open_timeout_ms);
        let outcome = match tokio::time::timeout(budget, FarmClient::start(endpoint.clone(), options)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no session within {budget:?}")),
        };
        let took = tried.elapsed();
        match outcome {
            Ok(client) => {
                attempts.push(ChannelAttempt { transport, took, outcome: Ok(()) });
                connected = Some((Arc::new(client), transport));
                break;
            }
            Err(why) => {
                tracing::info!(channel = transport.name(), %why, "channel not established; trying the next");
                attempts.push(ChannelAttempt { transport, took, outcome: Err(why) });
            }
        }
    }
    let Some((client, transport)) = connected else {
        let mut why: Vec<String> = attempts
            .iter()
            .map(|a| {
                format!("{}: {}", a.transport.name(), a.outcome.as_ref().err().map_or("", String::as_str))
            })
            .collect();
        if why.is_empty() {
            why.push("the device can use none of the application's channels".into());
        }
        if !dropped.is_empty() {
            why.push(format!("dropped {} (channels this device cannot use)", dropped.join(", ")));
        }
        return Err(DeliveryError::NoChannel(why.join("; ")));
    };
    let mut placement = client.placement().await;
    let mut mutable = HashMap::new();
    for (name, place) in placement.iter_mut() {
        if *place != Placement::Client {
            continue;
        }
        // A module placed here that this class may not fetch runs where the server does
        // anything the client does not: on the server (its portion serves every operation).
        let Some(entry) = listing.iter().find(|e| &e.name == name && e.kind == ModuleKind::Mutable) else {
            tracing::warn!(module = %name, "placed here but not listed for this class: left to the server");
            *place = Placement::Server;
            continue;
        };
        let v = fetcher.module(entry).await?;
        take(&v, &mut fetched);
        mutable.insert(name.clone(), v);
    }
    let mut features = HashMap::new();
    for name in &b.features {
        let entry = listing
            .iter()
            .find(|e| &e.name == name && e.kind == ModuleKind::Addon && e.channel.is_none())
            .ok_or_else(|| {
                DeliveryError::Package(format!(
                    "application {} publishes no feature add-on {name:?} for class {}",
                    b.app, b.class
                ))
            })?;
        let v = fetcher.module(entry).await?;
        take(&v, &mut fetched);
        features.insert(name.clone(), v);
    }
    Ok(Delivered {
        client,
        features,
        transport,
        attempts,
        dropped,
        fetched,
        placement,
        mutable,
        key_from_node: b.publishing_key.is_none(),
        first_set,
        total: started.elapsed(),
    })
}
