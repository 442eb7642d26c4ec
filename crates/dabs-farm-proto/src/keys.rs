//! Keys derived from the farm secret, one per purpose, so that a key that leaks from one use
//! (say, a captured MAC) says nothing about another, and a purpose can be added without
//! touching the others. HKDF-SHA256 (RFC 5869): salt `"dabs-farm-keys-v1"`, input key material
//! the farm secret, info the purpose's label, 32 bytes out. `docs/security.md` lists what each
//! key protects.

use hkdf::Hkdf;
use sha2::Sha256;

const SALT: &[u8] = b"dabs-farm-keys-v1";

/// What a derived key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// MACs on membership announcements (`ANNOUNCE`).
    Announce,
    /// MACs on node-to-node commands and their answers (`ASSIGN`, `SPAWN`, `SETTINGS`,
    /// `RESOLVE_VA`, node session opens).
    Control,
    /// The farm's static Noise private key, which clients pin to authenticate the farm.
    NoiseStatic,
    /// The seed of the farm's Ed25519 publishing key, which signs client modules.
    Publishing,
}

impl Purpose {
    /// The HKDF info label: fixed forever for a purpose, so every node derives the same key.
    pub fn label(self) -> &'static [u8] {
        match self {
            Purpose::Announce => b"dabs announce mac v1",
            Purpose::Control => b"dabs control mac v1",
            Purpose::NoiseStatic => b"dabs noise static key v1",
            Purpose::Publishing => b"dabs module publishing key v1",
        }
    }
}

/// The keys of one farm secret.
#[derive(Clone)]
pub struct FarmKeys {
    announce: [u8; 32],
    control: [u8; 32],
    noise_static: [u8; 32],
    publishing: [u8; 32],
}

impl std::fmt::Debug for FarmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FarmKeys(..)") // never print key material
    }
}

impl FarmKeys {
    /// Derives every purpose's key from `secret`.
    pub fn derive(secret: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(SALT), secret);
        let expand = |p: Purpose| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: this cannot fail.
            hk.expand(p.label(), &mut out).unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
            out
        };
        Self {
            announce: expand(Purpose::Announce),
            control: expand(Purpose::Control),
            noise_static: expand(Purpose::NoiseStatic),
            publishing: expand(Purpose::Publishing),
        }
    }

    /// The key for `purpose`.
    pub fn key(&self, purpose: Purpose) -> &[u8; 32] {
        match purpose {
            Purpose::Announce => &self.announce,
            Purpose::Control => &self.control,
            Purpose::NoiseStatic => &self.noise_static,
            Purpose::Publishing => &self.publishing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_purpose_has_its_own_key_and_the_derivation_is_the_documented_one() {
        let keys = FarmKeys::derive(b"0123456789abcdef0123456789abcdef");
        let all = [Purpose::Announce, Purpose::Control, Purpose::NoiseStatic, Purpose::Publishing]
            .map(|p| *keys.key(p));
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b), "purpose {i} shares its key");
        }
        assert_eq!(*FarmKeys::derive(b"0123456789abcdef0123456789abcdef").key(Purpose::Control), all[1]);
        assert_ne!(*FarmKeys::derive(b"another secret, also 32 bytes!!!").key(Purpose::Control), all[1]);
        // RFC 5869 by hand: PRK = HMAC(salt, secret); OKM = HMAC(PRK, info || 0x01).
        use hmac::{KeyInit, Mac};
        let mut prk = hmac::Hmac::<Sha256>::new_from_slice(SALT).unwrap();
        prk.update(b"0123456789abcdef0123456789abcdef");
        let prk = prk.finalize().into_bytes();
        let mut okm = hmac::Hmac::<Sha256>::new_from_slice(&prk).unwrap();
        okm.update(Purpose::Announce.label());
        okm.update(&[1]);
        assert_eq!(okm.finalize().into_bytes().as_slice(), &all[0]);
        assert_eq!(format!("{keys:?}"), "FarmKeys(..)");
    }
}
