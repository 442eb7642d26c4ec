//! Encrypted sessions: the Noise handshake, per-datagram authenticated encryption and the
//! replay window. The wire layout is documented in `docs/protocol.md`, "Encryption".

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use dabs_wire::SystemCommand;
use snow::HandshakeState;

/// System command that carries the Noise handshake inside a freshly opened session: the
/// request holds Noise message 1, its REPLY message 2.
pub const KEY_EXCHANGE: u16 = 22;

/// The Noise protocol name used by [`KEY_EXCHANGE`] when the client has not pinned the
/// server's key (authenticates neither side).
pub const NOISE_PARAMS: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";

/// The Noise protocol name used by [`KEY_EXCHANGE`] when the client has pinned the server's
/// static public key (the farm's): only a holder of the matching private key can complete it.
pub const NOISE_NK_PARAMS: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";

/// Bytes of Noise message 1 with the server's key (`-> e, es`: the ephemeral key, then the tag of an empty
/// payload encrypted under the `es` key). The server tells the patterns apart by this length.
const NK_MSG1_LEN: usize = 48;

/// Bytes of the explicit nonce that starts every encrypted payload.
pub(crate) const NONCE_LEN: usize = 8;

/// Bytes of the Poly1305 tag that ends every encrypted payload.
pub(crate) const TAG_LEN: usize = 16;

/// Bytes encryption adds to each datagram's payload (nonce and tag).
pub const ENCRYPTION_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Explicit nonces remembered per session and direction: a nonce already seen, or this many
/// or more below the highest one accepted, is a replay.
pub const REPLAY_WINDOW: u64 = 1024;

const PROLOGUE_LABEL: &[u8] = b"dabs MP key exchange v1";

/// The encryption specification of an encrypted session, for the `"security"` value of an
/// `OPEN_SESSION` REPLY (the layers above put it there as a CBOR map with these four keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecuritySpec {
    /// Bits of each transport key.
    pub key_size: u16,
    /// The key-exchange technique (a Noise protocol name).
    pub key_exchange: &'static str,
    /// The per-datagram cipher.
    pub cipher: &'static str,
    /// What authenticates each datagram.
    pub signature: &'static str,
}

/// The one specification this endpoint implements.
pub const SECURITY_SPEC: SecuritySpec = SecuritySpec {
    key_size: 256,
    key_exchange: NOISE_PARAMS,
    cipher: "ChaCha20-Poly1305",
    signature: "Poly1305 tag over header + explicit nonce + ciphertext",
};

/// The specification of encrypted sessions that authenticate the server: the client pinned
/// the farm's static public key ([`NOISE_NK_PARAMS`]). Same keys, cipher and datagrams as
/// [`SECURITY_SPEC`]; only the handshake differs.
pub const SECURITY_SPEC_NK: SecuritySpec = SecuritySpec { key_exchange: NOISE_NK_PARAMS, ..SECURITY_SPEC };

/// A server's static X25519 private key (for [`NOISE_NK_PARAMS`]); a farm node derives it from
/// the farm secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey(pub [u8; 32]);

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticKey(..)")
    }
}

/// The X25519 public key of a static private key: what clients pin
/// (`FarmClientOptions::farm_key`) and what `dabs farm up` prints.
pub fn static_public_key(private: &[u8; 32]) -> [u8; 32] {
    use snow::resolvers::CryptoResolver;
    let mut out = [0u8; 32];
    let dh = snow::resolvers::DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519);
    if let Some(mut dh) = dh {
        dh.set(private);
        out.copy_from_slice(dh.pubkey());
    }
    out
}

/// Why the server refused a key exchange.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Noise_NK asked for, and this endpoint holds no static key (NAK 13).
    NoStaticKey,
    /// The message did not read (NAK 9).
    Noise(snow::Error),
}

/// The specification of encrypted sessions ([`SECURITY_SPEC`]).
pub fn security_spec() -> SecuritySpec {
    SECURITY_SPEC
}

/// Commands whose datagrams stay in clear even in an encrypted session: they set the session
/// and its keys up.
pub(crate) fn exempt(command: u16) -> bool {
    command == KEY_EXCHANGE || command == SystemCommand::OpenSession.number()
}

/// Binds the handshake to the session: both sides must agree on its number and both queues.
pub(crate) fn prologue(session: u8, client_queue: u16, server_queue: u16) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.push(session);
    p.extend_from_slice(&client_queue.to_be_bytes());
    p.extend_from_slice(&server_queue.to_be_bytes());
    p
}

fn params(pinned: bool) -> snow::params::NoiseParams {
    let name = if pinned { NOISE_NK_PARAMS } else { NOISE_PARAMS };
    name.parse().expect("valid Noise protocol name")
}

/// Starts a handshake as the client: the state and Noise message 1. With `pinned` (the
/// server's static public key) the pattern is NK, else NN.
pub(crate) fn initiate(
    prologue: &[u8],
    pinned: Option<&[u8; 32]>,
) -> Result<(HandshakeState, Vec<u8>), snow::Error> {
    let builder = snow::Builder::new(params(pinned.is_some())).prologue(prologue)?;
    let builder = match pinned {
        Some(key) => builder.remote_public_key(key)?,
        None => builder,
    };
    let mut hs = builder.build_initiator()?;
    let mut msg = vec![0u8; 128];
    let n = hs.write_message(&[], &mut msg)?;
    msg.truncate(n);
    Ok((hs, msg))
}

/// Answers Noise message 1 as the server: the session keys and Noise message 2. Message 1 of
/// 48 bytes asks for NK (the server's static key), any other for NN.
pub(crate) fn respond(
    prologue: &[u8],
    msg1: &[u8],
    static_key: Option<&StaticKey>,
) -> Result<(SessionKeys, Vec<u8>), Refusal> {
    let nk = msg1.len() == NK_MSG1_LEN;
    if nk && static_key.is_none() {
        return Err(Refusal::NoStaticKey);
    }
    let build = || -> Result<HandshakeState, snow::Error> {
        let builder = snow::Builder::new(params(nk)).prologue(prologue)?;
        match static_key.filter(|_| nk) {
            Some(k) => builder.local_private_key(&k.0)?.build_responder(),
            None => builder.build_responder(),
        }
    };
    let run = || -> Result<(SessionKeys, Vec<u8>), snow::Error> {
        let mut hs = build()?;
        let mut scratch = [0u8; 64];
        hs.read_message(msg1, &mut scratch)?;
        let mut msg = vec![0u8; 128];
        let n = hs.write_message(&[], &mut msg)?;
        msg.truncate(n);
        let (to_server, to_client) = hs.dangerously_get_raw_split();
        Ok((SessionKeys::new(&to_client, &to_server), msg))
    };
    run().map_err(Refusal::Noise)
}

/// Takes Noise message 2 as the client. On error the state is unchanged (snow restores it), so
/// an intact copy of the message can still be read.
pub(crate) fn finish(hs: &mut HandshakeState, msg2: &[u8]) -> Result<SessionKeys, snow::Error> {
    let mut scratch = [0u8; 64];
    hs.read_message(msg2, &mut scratch)?;
    if !hs.is_handshake_finished() {
        return Err(snow::Error::State(snow::error::StateProblem::HandshakeNotFinished));
    }
    let (to_server, to_client) = hs.dangerously_get_raw_split();
    Ok(SessionKeys::new(&to_server, &to_client))
}

/// The session's state of encryption.
pub(crate) enum Crypto {
    /// Not encrypted.
    Plain,
    /// Client: Noise message 1 sent, waiting for message 2.
    Handshake(Box<HandshakeState>),
    /// Keyed: every datagram but [`exempt`] ones is encrypted.
    Keys(Box<SessionKeys>),
}

impl Crypto {
    /// The sealer for outgoing datagrams, once keyed.
    pub(crate) fn sealer(&mut self) -> Option<&mut Sealer> {
        match self {
            Crypto::Keys(k) => Some(&mut k.seal),
            _ => None,
        }
    }

    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Crypto::Plain)
    }

    /// Keyed, and the peer has proved it holds the keys.
    pub(crate) fn is_confirmed(&self) -> bool {
        matches!(self, Crypto::Keys(k) if k.confirmed)
    }
}

/// Both directions' keys of a session.
pub(crate) struct SessionKeys {
    pub(crate) seal: Sealer,
    pub(crate) open: Opener,
    /// A datagram from the peer has verified under these keys. Until then a server takes a
    /// new key exchange in their place (the client's message 1 may have been corrupted).
    pub(crate) confirmed: bool,
}

impl SessionKeys {
    fn new(send: &[u8; 32], receive: &[u8; 32]) -> Self {
        Self {
            seal: Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(send)), next: 1 },
            open: Opener {
                cipher: ChaCha20Poly1305::new(Key::from_slice(receive)),
                window: ReplayWindow::new(),
            },
            confirmed: false,
        }
    }
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    *Nonce::from_slice(&b)
}

/// Encrypts outgoing datagrams of one session, each with the next explicit nonce.
pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
    next: u64,
}

impl Sealer {
    /// Fills `body` (exactly `plaintext.len() + ENCRYPTION_OVERHEAD` bytes, right after the
    /// headers `ad`) with nonce, ciphertext and tag. False when the nonces are used up.
    pub(crate) fn seal(&mut self, ad: &[u8], body: &mut [u8], plaintext: &[u8]) -> bool {
        if self.next == u64::MAX || body.len() != plaintext.len() + ENCRYPTION_OVERHEAD {
            return false;
        }
        let n = self.next;
        self.next += 1;
        let (head, rest) = body.split_at_mut(NONCE_LEN);
        head.copy_from_slice(&n.to_be_bytes());
        let (ct, tag_out) = rest.split_at_mut(plaintext.len());
        ct.copy_from_slice(plaintext);
        match self.cipher.encrypt_in_place_detached(&nonce(n), ad, ct) {
            Ok(tag) => {
                tag_out.copy_from_slice(&tag);
                true
            }
            Err(_) => false,
        }
    }
}

/// Why an encrypted datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Too short, or the tag did not verify.
    Auth,
    /// Its nonce was seen already or is too old.
    Replay,
}

/// Decrypts incoming datagrams of one session and rejects replays.
pub(crate) struct Opener {
    cipher: ChaCha20Poly1305,
    window: ReplayWindow,
}

impl Opener {
    /// The plaintext of an encrypted payload whose headers were `ad`.
    #[cfg(test)]
    pub(crate) fn open(&mut self, ad: &[u8], payload: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut plain = Vec::new();
        self.open_into(ad, payload, &mut plain)?;
        Ok(plain)
    }

    /// Decrypts an encrypted payload whose headers were `ad` into `plain` (cleared first), in
    /// place there: a buffer the caller reuses, so opening allocates nothing per datagram.
    pub(crate) fn open_into(
        &mut self,
        ad: &[u8],
        payload: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        if payload.len() < ENCRYPTION_OVERHEAD {
            return Err(OpenError::Auth);
        }
        let (head, rest) = payload.split_at(NONCE_LEN);
        let n = u64::from_be_bytes(head.try_into().expect("8 bytes"));
        if !self.window.fresh(n) {
            return Err(OpenError::Replay);
        }
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        plain.clear();
        plain.extend_from_slice(ct);
        self.cipher
            .decrypt_in_place_detached(&nonce(n), ad, plain, Tag::from_slice(tag))
            .map_err(|_| OpenError::Auth)?;
        // Only an authentic datagram moves the window: forged nonces cannot block real ones.
        self.window.mark(n);
        Ok(())
    }
}

const WINDOW_WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// A sliding window over explicit nonces (as in IPsec and WireGuard).
pub(crate) struct ReplayWindow {
    top: u64,
    bits: [u64; WINDOW_WORDS],
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        Self { top: 0, bits: [0; WINDOW_WORDS] }
    }

    fn bit(n: u64) -> (usize, u64) {
        let i = n % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// True when `n` has not been accepted and is inside the window.
    pub(crate) fn fresh(&self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        if n > self.top {
            return true;
        }
        if self.top - n >= REPLAY_WINDOW {
            return false;
        }
        let (w, b) = Self::bit(n);
        self.bits[w] & b == 0
    }

    /// Records `n` as accepted (call only after [`ReplayWindow::fresh`] said so).
    pub(crate) fn mark(&mut self, n: u64) {
        if n > self.top {
            if n - self.top >= REPLAY_WINDOW {
                self.bits = [0; WINDOW_WORDS];
            } else {
                for m in self.top + 1..n {
                    let (w, b) = Self::bit(m);
                    self.bits[w] &= !b;
                }
            }
            self.top = n;
            let (w, b) = Self::bit(n);
            self.bits[w] &= !b;
        }
        let (w, b) = Self::bit(n);
        self.bits[w] |= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rejects_repeats_and_old_nonces() {
        let mut w = ReplayWindow::new();
        assert!(!w.fresh(0));
        for n in [1, 3, 2, 10] {
            assert!(w.fresh(n));
            w.mark(n);
            assert!(!w.fresh(n));
        }
        assert!(w.fresh(4));
        w.mark(2000);
        assert!(!w.fresh(10), "far below the window");
        assert!(!w.fresh(2000 - REPLAY_WINDOW));
        assert!(w.fresh(2000 - REPLAY_WINDOW + 1));
        w.mark(2000 + REPLAY_WINDOW - 1);
        assert!(w.fresh(2000 + 1));
        assert!(!w.fresh(2000));
    }

    #[test]
    fn handshake_and_datagrams() {
        let p = prologue(7, 1, 2);
        let (mut hs, m1) = initiate(&p, None).unwrap();
        let (mut server, m2) = respond(&p, &m1, None).unwrap();
        let mut bad = m2.clone();
        bad[40] ^= 1;
        assert!(finish(&mut hs, &bad).is_err());
        let mut client = finish(&mut hs, &m2).unwrap();
        let ad = [9u8; 12];
        let mut body = vec![0u8; 5 + ENCRYPTION_OVERHEAD];
        assert!(client.seal.seal(&ad, &mut body, b"hello"));
        assert_eq!(server.open.open(&ad, &body).unwrap(), b"hello");
        assert_eq!(server.open.open(&ad, &body), Err(OpenError::Replay));
        assert!(client.seal.seal(&ad, &mut body, b"hello"));
        let mut other_ad = ad;
        other_ad[3] = 1;
        assert_eq!(server.open.open(&other_ad, &body), Err(OpenError::Auth));
        assert_eq!(server.open.open(&ad, &body).unwrap(), b"hello", "a forgery does not burn the nonce");
        assert!(server.seal.seal(&ad, &mut body, b"world"));
        assert_eq!(client.open.open(&ad, &body).unwrap(), b"world");
        // A mismatched prologue (another session) fails the handshake.
        let (mut hs, m1) = initiate(&prologue(8, 1, 2), None).unwrap();
        let (_, m2) = respond(&p, &m1, None).unwrap();
        assert!(finish(&mut hs, &m2).is_err());
    }

    #[test]
    fn nk_authenticates_the_server_key() {
        let p = prologue(7, 1, 2);
        let farm = StaticKey([7u8; 32]);
        let public = static_public_key(&farm.0);
        assert_ne!(public, [0u8; 32]);
        let (mut hs, m1) = initiate(&p, Some(&public)).unwrap();
        assert_eq!(m1.len(), NK_MSG1_LEN);
        assert!(matches!(respond(&p, &m1, None), Err(Refusal::NoStaticKey)));
        let other = StaticKey([8u8; 32]);
        assert!(
            matches!(respond(&p, &m1, Some(&other)), Err(Refusal::Noise(_))),
            "another key cannot read it"
        );
        let (mut server, m2) = respond(&p, &m1, Some(&farm)).unwrap();
        let mut client = finish(&mut hs, &m2).unwrap();
        let ad = [1u8; 12];
        let mut body = vec![0u8; 2 + ENCRYPTION_OVERHEAD];
        assert!(client.seal.seal(&ad, &mut body, b"hi"));
        assert_eq!(server.open.open(&ad, &body).unwrap(), b"hi");
        // NN still works beside it on a server that holds a key.
        let (_, m1) = initiate(&p, None).unwrap();
        assert_eq!(m1.len(), 32, "NN message 1: the ephemeral key alone");
        assert!(respond(&p, &m1, Some(&farm)).is_ok());
    }
}
