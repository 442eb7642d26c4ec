//! The client modules this node publishes (R-CL): each application's package, signed once at
//! start with the farm's publishing key (derived from the farm secret, so every node of a farm
//! signs alike), listed per client class, and where a session's mutable modules run.

use dabs_farm_proto::keys::{FarmKeys, Purpose};
use dabs_farm_proto::modules::{Device, ModuleEntry, ModuleKind, ModuleSource, Placement, Publisher, place};
use dabs_farm_proto::portion::PortionFactory;
use std::collections::HashMap;
use std::sync::Arc;

/// One published module: what the application gave and what clients are shown.
struct Published {
    source: ModuleSource,
    entry: ModuleEntry,
}

/// Every application's signed package.
pub(super) struct Packages {
    public_key: [u8; 32],
    apps: HashMap<String, Vec<Published>>,
}

/// Why a listing cannot be given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    /// The node runs no such application.
    #[error("this node runs no application {0:?}")]
    UnknownApplication(String),
    /// No module of the application is for that class.
    #[error("application {app:?} has no modules for client class {class:?}; its classes: {known:?}")]
    UnknownClass {
        /// The application.
        app: String,
        /// The class asked for.
        class: String,
        /// The classes it publishes for.
        known: Vec<String>,
    },
}

impl Packages {
    /// Signs every factory's modules with the key of `secret` (the empty secret on a farm
    /// without one, as the control plane does).
    pub(super) fn build(factories: &[Arc<dyn PortionFactory>], secret: Option<&[u8]>) -> Self {
        let publisher =
            Publisher::from_seed(FarmKeys::derive(secret.unwrap_or_default()).key(Purpose::Publishing));
        let apps = factories
            .iter()
            .map(|f| {
                let app = f.app().to_owned();
                let published = f
                    .modules()
                    .into_iter()
                    .map(|source| {
                        let url = format!("/api/applications/{app}/modules/{}", source.name);
                        Published { entry: publisher.entry(&source, url), source }
                    })
                    .collect();
                (app, published)
            })
            .collect();
        Self { public_key: publisher.public_key(), apps }
    }

    /// The farm's publishing key.
    pub(super) fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    fn app(&self, app: &str) -> Result<&[Published], ListingError> {
        self.apps.get(app).map(Vec::as_slice).ok_or_else(|| ListingError::UnknownApplication(app.into()))
    }

    /// What a client of `class` is entitled to; never a peer-locked module.
    pub(super) fn listing(&self, app: &str, class: &str) -> Result<Vec<ModuleEntry>, ListingError> {
        let modules = self.app(app)?;
        let sendable = || modules.iter().filter(|m| m.source.kind != ModuleKind::PeerLocked);
        let listed: Vec<ModuleEntry> = sendable()
            .filter(|m| m.source.classes.iter().any(|c| c == class))
            .map(|m| m.entry.clone())
            .collect();
        if listed.is_empty() {
            let mut known: Vec<String> = sendable().flat_map(|m| m.source.classes.clone()).collect();
            known.sort();
            known.dedup();
            return Err(ListingError::UnknownClass { app: app.into(), class: class.into(), known });
        }
        Ok(listed)
    }

    /// A module's bytes; `None` for one that does not exist or is peer-locked.
    pub(super) fn bytes(&self, app: &str, name: &str) -> Option<Arc<[u8]>> {
        self.app(app)
            .ok()?
            .iter()
            .find(|m| m.source.name == name && m.source.kind != ModuleKind::PeerLocked)
            .map(|m| m.source.wasm.clone())
    }

    /// Where each of `app`'s mutable modules runs for a client of `class` whose device is
    /// `device`: never on a client whose class is not entitled to the module (it could not
    /// fetch it); a client that names no class is placed by its device alone.
    pub(super) fn placement(
        &self,
        app: &str,
        class: Option<&str>,
        device: Option<&Device>,
    ) -> Vec<(String, Placement)> {
        self.app(app)
            .map(|modules| {
                modules
                    .iter()
                    .filter(|m| m.source.kind == ModuleKind::Mutable)
                    .map(|m| {
                        let entitled = class.is_none_or(|c| m.source.classes.iter().any(|k| k == c));
                        let at = if entitled { place(&m.source.needs, device) } else { Placement::Server };
                        (m.source.name.clone(), at)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
