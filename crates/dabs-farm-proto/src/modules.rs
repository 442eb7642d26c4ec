//! Client modules (R-CL; interop.md, "Client modules"): what an application publishes for its
//! client portions, how the farm signs each module and a client verifies it, the device
//! profile a client sends in `OPEN_SESSION`, and where a mutable module runs.
//!
//! A module is WebAssembly with the sandbox's ABI (`dabs-sandbox`). Its signature is Ed25519,
//! by the farm's publishing key, over `"dabs-module-v1" || name || 0x00 || sha256(bytes)`.

use ciborium::Value;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The signature's domain separation prefix (interop.md).
pub const SIGNATURE_CONTEXT: &[u8] = b"dabs-module-v1";

/// What a module is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleKind {
    /// Sent to every client of its classes at bootstrap.
    First,
    /// Sent when a client needs it: a return channel's (`channel` set) or a feature's.
    Addon,
    /// Runs on the client or on the server, decided per session from the device (R-CL-2).
    Mutable,
    /// Pinned to the server by its interface: never listed, never sent (R-CL-4).
    PeerLocked,
}

/// What a mutable module needs of a device to run there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Needs {
    /// CPUs the device must offer.
    pub cpus: u32,
    /// Memory the device must offer, MiB.
    pub memory_mb: u64,
    /// Whether it needs floating point.
    pub float: bool,
}

/// One module as its application publishes it.
#[derive(Clone, Debug)]
pub struct ModuleSource {
    /// Its name, unique within the application.
    pub name: String,
    /// What it is for.
    pub kind: ModuleKind,
    /// The return channel it adds (`"udp"`, `"tcp"`, `"ws"`), for a channel's module.
    pub channel: Option<String>,
    /// The client classes entitled to it.
    pub classes: Vec<String>,
    /// What it needs of a device (mutable modules).
    pub needs: Needs,
    /// The WebAssembly.
    pub wasm: Arc<[u8]>,
}

/// One module as a client sees it in the listing (interop.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntry {
    /// Its name.
    pub name: String,
    /// `first`, `addon` or `mutable`.
    pub kind: ModuleKind,
    /// The channel a channel module adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
    /// Where its bytes are fetched (a path on the same operator port).
    pub url: String,
    /// Ed25519 by the farm's publishing key, standard base64.
    pub signature: String,
}

/// Why a module was refused. Nothing of it runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The bytes fetched are not the ones listed.
    #[error("module {name}: its bytes hash to {got}, the listing says {listed}: refused")]
    HashMismatch {
        /// The module.
        name: String,
        /// The listed hash.
        listed: String,
        /// The fetched bytes' hash.
        got: String,
    },
    /// The signature is not the farm's over this name and hash.
    #[error("module {name}: the signature is not the farm publishing key's: refused")]
    BadSignature {
        /// The module.
        name: String,
    },
    /// A field is not in its encoding.
    #[error("module {name}: {field} is not valid {encoding}")]
    Encoding {
        /// The module.
        name: String,
        /// The field.
        field: &'static str,
        /// What it should be.
        encoding: &'static str,
    },
    /// The publishing key is not an Ed25519 public key.
    #[error("the farm's publishing key is not a valid Ed25519 public key")]
    BadKey,
}

/// The bytes the signature covers.
pub fn signed_message(name: &str, sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + name.len() + 33);
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.extend_from_slice(sha256);
    m
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The farm's publishing key (the nodes derive it from the farm secret, `keys::Purpose`).
pub struct Publisher {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher({})", base64_encode(&self.public_key()))
    }
}

impl Publisher {
    /// The key whose secret scalar is made from `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { key: ed25519_dalek::SigningKey::from_bytes(seed) }
    }

    /// The 32-byte public key clients verify with.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The listing entry of `module`, fetched from `url`.
    pub fn entry(&self, module: &ModuleSource, url: String) -> ModuleEntry {
        let hash = sha256(&module.wasm);
        let signature = self.key.sign(&signed_message(&module.name, &hash));
        ModuleEntry {
            name: module.name.clone(),
            kind: module.kind,
            channel: module.channel.clone(),
            sha256: hex::encode(hash),
            url,
            signature: base64_encode(&signature.to_bytes()),
        }
    }
}

/// Checks `bytes` against `entry` and `entry`'s signature against the farm's `public_key`.
pub fn verify(public_key: &[u8; 32], entry: &ModuleEntry, bytes: &[u8]) -> Result<(), ModuleError> {
    let name = || entry.name.clone();
    let listed: [u8; 32] = hex::decode(&entry.sha256)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| ModuleError::Encoding { name: name(), field: "sha256", encoding: "64 hex digits" })?;
    let got = sha256(bytes);
    if got != listed {
        return Err(ModuleError::HashMismatch {
            name: name(),
            listed: entry.sha256.clone(),
            got: hex::encode(got),
        });
    }
    let signature: [u8; 64] =
        base64_decode(&entry.signature).and_then(|s| s.try_into().ok()).ok_or_else(|| {
            ModuleError::Encoding { name: name(), field: "signature", encoding: "base64 of 64 bytes" }
        })?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(public_key).map_err(|_| ModuleError::BadKey)?;
    key.verify_strict(
        &signed_message(&entry.name, &listed),
        &ed25519_dalek::Signature::from_bytes(&signature),
    )
    .map_err(|_| ModuleError::BadSignature { name: name() })
}

/// Standard base64 with padding (RFC 4648 §4), as the listing and the key route carry it.
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64; `None` when it is not.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// What a client device offers (R-CL-2), sent in `OPEN_SESSION` under `"device"`: measured,
/// then capped by the client's configured ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Device {
    /// CPUs it offers.
    pub cpus: u32,
    /// Memory it offers, MiB.
    pub memory_mb: u64,
    /// Whether it has floating point.
    pub float: bool,
    /// Whether it can run WebAssembly modules.
    pub wasm: bool,
}

impl Device {
    /// The CBOR map `{"cpus", "memory_mb", "float", "wasm"}`.
    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            (Value::Text("cpus".into()), Value::Integer(self.cpus.into())),
            (Value::Text("memory_mb".into()), Value::Integer(self.memory_mb.into())),
            (Value::Text("float".into()), Value::Bool(self.float)),
            (Value::Text("wasm".into()), Value::Bool(self.wasm)),
        ])
    }

    /// Reads the map; a key left out means the device does not offer it.
    pub fn from_value(v: Value) -> Result<Self, crate::shapes::ShapeError> {
        const WHAT: &str = "OPEN_SESSION device";
        let wrong = |key: &str, expected| crate::shapes::ShapeError::WrongType {
            what: WHAT.into(),
            key: key.into(),
            expected,
        };
        let Value::Map(entries) = v else {
            return Err(crate::shapes::ShapeError::NotAMap { what: WHAT.into() });
        };
        let mut d = Device::default();
        for (k, v) in entries {
            match (k.as_text(), v) {
                (Some("cpus"), Value::Integer(n)) => {
                    d.cpus = u32::try_from(n).map_err(|_| wrong("cpus", "an unsigned 32-bit integer"))?
                }
                (Some("memory_mb"), Value::Integer(n)) => {
                    d.memory_mb = u64::try_from(n).map_err(|_| wrong("memory_mb", "an unsigned integer"))?
                }
                (Some("float"), Value::Bool(b)) => d.float = b,
                (Some("wasm"), Value::Bool(b)) => d.wasm = b,
                (Some(key @ ("cpus" | "memory_mb")), _) => return Err(wrong(key, "an unsigned integer")),
                (Some(key @ ("float" | "wasm")), _) => return Err(wrong(key, "a boolean")),
                _ => {}
            }
        }
        Ok(d)
    }
}

/// Where a mutable module runs for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the client's sandbox.
    Client,
    /// In the server portion, called over the network partition.
    Server,
}

impl Placement {
    /// `"client"` or `"server"`, as the REPLY's `placement` map carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Client => "client",
            Placement::Server => "server",
        }
    }
}

/// Where a module needing `needs` runs for a client whose device is `device` (none sent: a
/// client that says nothing of itself gets the server).
pub fn place(needs: &Needs, device: Option<&Device>) -> Placement {
    match device {
        Some(d)
            if d.wasm
                && d.cpus >= needs.cpus.max(1)
                && d.memory_mb >= needs.memory_mb
                && (d.float || !needs.float) =>
        {
            Placement::Client
        }
        _ => Placement::Server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, wasm: &[u8]) -> ModuleSource {
        ModuleSource {
            name: name.into(),
            kind: ModuleKind::Mutable,
            channel: None,
            classes: vec!["native".into()],
            needs: Needs::default(),
            wasm: wasm.into(),
        }
    }

    #[test]
    fn a_signed_module_verifies_and_any_change_is_refused() {
        let publisher = Publisher::from_seed(&[7; 32]);
        let key = publisher.public_key();
        let m = module("integer-ops", b"\0asm\x01\0\0\0");
        let entry = publisher.entry(&m, "/x".into());
        assert_eq!(verify(&key, &entry, &m.wasm), Ok(()));
        // The signature is over the documented bytes, checkable with the public key alone.
        let sig = ed25519_dalek::Signature::from_bytes(
            &base64_decode(&entry.signature).unwrap().try_into().unwrap(),
        );
        let msg = [b"dabs-module-v1".as_slice(), b"integer-ops", &[0], &sha256(&m.wasm)].concat();
        assert!(ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap().verify_strict(&msg, &sig).is_ok());
        assert!(matches!(verify(&key, &entry, b"\0asm\x01\0\0\x01"), Err(ModuleError::HashMismatch { .. })));
        let renamed = ModuleEntry { name: "float-ops".into(), ..entry.clone() };
        assert!(matches!(verify(&key, &renamed, &m.wasm), Err(ModuleError::BadSignature { .. })));
        let other = Publisher::from_seed(&[8; 32]).public_key();
        let e = verify(&other, &entry, &m.wasm).unwrap_err();
        assert!(e.to_string().contains("not the farm publishing key"), "{e}");
        let bad = ModuleEntry { signature: "not base64!".into(), ..entry };
        assert!(matches!(verify(&key, &bad, &m.wasm), Err(ModuleError::Encoding { field: "signature", .. })));
    }

    #[test]
    fn devices_round_trip_and_place_modules_by_what_they_offer() {
        let host = Device { cpus: 4, memory_mb: 8192, float: true, wasm: true };
        assert_eq!(Device::from_value(host.to_value()), Ok(host));
        let needs = Needs { cpus: 1, memory_mb: 64, float: false };
        assert_eq!(place(&needs, Some(&host)), Placement::Client);
        assert_eq!(place(&needs, None), Placement::Server);
        assert_eq!(place(&needs, Some(&Device { wasm: false, ..host })), Placement::Server);
        assert_eq!(place(&needs, Some(&Device { memory_mb: 16, ..host })), Placement::Server);
        assert_eq!(place(&needs, Some(&Device { cpus: 0, ..host })), Placement::Server);
        let float = Needs { float: true, ..needs };
        assert_eq!(place(&float, Some(&Device { float: false, ..host })), Placement::Server);
        let bad = Value::Map(vec![(Value::Text("cpus".into()), Value::Text("four".into()))]);
        assert!(Device::from_value(bad).unwrap_err().to_string().contains("cpus"));
    }
}
