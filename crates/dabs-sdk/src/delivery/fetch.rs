//! Fetching from a node's operator port over plain HTTP, and verifying what comes back before
//! anything of it runs.

use super::{ChannelPolicy, DeliveryError};
use dabs_farm_proto::modules::{self, ModuleEntry};
use std::net::SocketAddr;
use std::time::Duration;

/// The most a listing or a module may be.
pub const MAX_BODY: usize = 4 << 20;

/// A module that passed its hash and signature checks and validates in the sandbox.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Its listing entry.
    pub entry: ModuleEntry,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Validated, ready to run.
    pub module: dabs_sandbox::Module,
}

impl Verified {
    /// A channel module's policy: what its `run` answers.
    pub fn policy(&self) -> Result<ChannelPolicy, DeliveryError> {
        let name = &self.entry.name;
        let limits = dabs_sandbox::Limits { fuel: 1_000_000, memory_bytes: 1 << 20, output_bytes: 4096 };
        let out = self
            .module
            .run(&[], &limits)
            .map_err(|e| DeliveryError::Sandbox { name: name.clone(), why: e.to_string() })?;
        serde_json::from_slice(&out).map_err(|e| {
            DeliveryError::Package(format!("module {name}: its channel policy is not readable: {e}"))
        })
    }
}

/// Fetches from one node's operator interface, checking everything against the publishing key.
pub struct Fetcher {
    base: String,
    addr: SocketAddr,
    http: reqwest::Client,
    key: [u8; 32],
}

impl Fetcher {
    /// A fetcher for `ops` (`http://IP:PORT`); with `pinned`, a node serving another key is
    /// refused, else the node's key is taken.
    pub async fn new(ops: &str, pinned: Option<[u8; 32]>) -> Result<Self, DeliveryError> {
        let base = ops.trim_end_matches('/').to_owned();
        let bad = |why: &str| DeliveryError::Fetch { url: ops.into(), why: why.into() };
        let addr: SocketAddr = base
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http://IP:PORT is supported"))?
            .parse()
            .map_err(|_| bad("the operator address must be IP:PORT"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let mut f = Self { base, addr, http, key: [0; 32] };
        #[derive(serde::Deserialize)]
        struct Key {
            ed25519: String,
        }
        let served: Key = serde_json::from_slice(&f.get("/api/farm/publishing-key").await?)
            .map_err(|e| bad(&format!("the publishing key is not readable: {e}")))?;
        let key: [u8; 32] = modules::base64_decode(&served.ed25519)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad("the publishing key is not 32 bytes of base64"))?;
        if pinned.is_some_and(|p| p != key) {
            return Err(DeliveryError::KeyMismatch { served: served.ed25519 });
        }
        f.key = key;
        Ok(f)
    }

    /// The operator interface's address (where the WebSocket channel is).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The publishing key in use.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, DeliveryError> {
        let url = format!("{}{path}", self.base);
        let fail = |why: String| DeliveryError::Fetch { url: url.clone(), why };
        let mut resp = self.http.get(&url).send().await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        // Read no more than a module may be: nothing is verified before it is all here.
        let too_big = || fail(format!("more than {MAX_BODY} bytes: refused"));
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(fail(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        Ok(body)
    }

    /// The modules a client of `class` is entitled to.
    pub async fn listing(&self, app: &str, class: &str) -> Result<Vec<ModuleEntry>, DeliveryError> {
        let body = self.get(&format!("/api/applications/{app}/modules?class={class}")).await?;
        serde_json::from_slice(&body).map_err(|e| DeliveryError::Fetch {
            url: format!("{}/api/applications/{app}/modules", self.base),
            why: format!("not a module listing: {e}"),
        })
    }

    /// Fetches `entry`'s bytes, checks them against the listing's hash and the signature, and
    /// validates them in the sandbox: a module that fails any of it is refused.
    pub async fn module(&self, entry: &ModuleEntry) -> Result<Verified, DeliveryError> {
        if !entry.url.starts_with('/') {
            return Err(DeliveryError::Package(format!(
                "module {}: its url {:?} is not a path on this node",
                entry.name, entry.url
            )));
        }
        let bytes = self.get(&entry.url).await?;
        modules::verify(&self.key, entry, &bytes)?;
        let module = dabs_sandbox::Module::new(&bytes)
            .map_err(|e| DeliveryError::Sandbox { name: entry.name.clone(), why: e.to_string() })?;
        Ok(Verified { entry: entry.clone(), bytes, module })
    }
}
