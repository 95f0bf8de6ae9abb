//! Protocol version 2: what a node knows of its peers' keys, and the pairwise keys that
//! authenticate messages between two nodes with a MAC instead of a signature.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use k256::ecdsa::VerifyingKey;
use rustc_hash::FxHashMap;
use sha2::Sha256;

use super::NativeIdentity;
use crate::id::NodeId;

/// The HKDF salt of a pairwise key (PROTOCOL.md section 10).
const KDF_SALT: &[u8] = b"kad-native-v2 pair";
/// The first bytes of every MAC input.
const MAC_LABEL: &[u8] = b"kad-native-v2 mac";

/// The pairwise key of two nodes: HKDF-SHA256 (salt `"kad-native-v2 pair"`) of the x coordinate
/// of their static secp256k1 ECDH point, with the two node ids in ascending byte order as `info`.
/// Both nodes derive the same key. `None` if `peer_public` is not a valid point.
pub fn pair_key(identity: &NativeIdentity, peer_public: &[u8]) -> Option<[u8; 32]> {
    let peer = VerifyingKey::from_sec1_bytes(peer_public).ok()?;
    Some(pair_key_parsed(identity, &peer))
}

pub(super) fn pair_key_parsed(identity: &NativeIdentity, peer: &VerifyingKey) -> [u8; 32] {
    let shared = k256::ecdh::diffie_hellman(identity.key.as_nonzero_scalar(), peer.as_affine());
    let peer_id = super::node_id_from_public_key(&peer.to_encoded_point(true).to_bytes());
    let (lo, hi) = if identity.id <= peer_id {
        (identity.id, peer_id)
    } else {
        (peer_id, identity.id)
    };
    let mut info = [0u8; 40];
    info[..20].copy_from_slice(lo.as_bytes());
    info[20..].copy_from_slice(hi.as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), shared.raw_secret_bytes());
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 8,160.
    let _ = hk.expand(&info, &mut okm);
    okm
}

fn mac_state(pair: &[u8; 32], from: &NodeId, to: &NodeId, signed: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pair).expect("HMAC accepts any key");
    mac.update(MAC_LABEL);
    mac.update(from.as_bytes());
    mac.update(to.as_bytes());
    mac.update(signed);
    mac
}

/// The MAC of a version 2 message: HMAC-SHA256 under the pairwise key of
/// `"kad-native-v2 mac"` ‖ sender id ‖ recipient id ‖ the exact bytes of `SIGNED`.
pub fn mac_tag(pair: &[u8; 32], from: &NodeId, to: &NodeId, signed: &[u8]) -> [u8; 32] {
    mac_state(pair, from, to, signed)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a MAC in constant time.
pub(super) fn mac_verify(
    pair: &[u8; 32],
    from: &NodeId,
    to: &NodeId,
    signed: &[u8],
    tag: &[u8; 32],
) -> bool {
    mac_state(pair, from, to, signed).verify_slice(tag).is_ok()
}

/// What this node knows of one peer.
#[derive(Clone)]
pub(super) struct Peer {
    /// Its compressed public key (its id is the key's hash: checked before it is stored).
    pub(super) public: [u8; 33],
    /// It speaks version 2 (it said so in a message of its own, or a contact list said so).
    pub(super) v2: bool,
    /// The pairwise key, derived on first use.
    pub(super) pair: Option<[u8; 32]>,
}

/// The peers whose keys a codec knows, bounded: past the bound one entry leaves for each that
/// comes in (a peer forgotten costs a signature on the next message to it, nothing more).
pub(super) struct Peers {
    map: FxHashMap<NodeId, Peer>,
    cap: usize,
}

impl Peers {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            map: FxHashMap::default(),
            cap: cap.max(1),
        }
    }

    pub(super) fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    pub(super) fn get(&self, id: &NodeId) -> Option<&Peer> {
        self.map.get(id)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    fn make_room(&mut self, id: &NodeId) {
        if self.map.len() >= self.cap && !self.map.contains_key(id) {
            if let Some(old) = self.map.keys().next().copied() {
                self.map.remove(&old);
            }
        }
    }

    /// Records what a peer's own authenticated message says: its key, and whether it speaks
    /// version 2.
    pub(super) fn learn_direct(&mut self, id: NodeId, public: [u8; 33], v2: bool) {
        self.make_room(&id);
        let e = self.map.entry(id).or_insert(Peer {
            public,
            v2,
            pair: None,
        });
        if e.public != public {
            // Unreachable for an honest peer (its id is its key's hash); start afresh.
            e.public = public;
            e.pair = None;
        }
        e.v2 = v2;
    }

    /// Records a contact's key from an answer (the key's hash is the contact's id): a third
    /// party's word, which never overrides what the peer said itself.
    pub(super) fn learn_listed(&mut self, id: NodeId, public: [u8; 33]) {
        if self.map.contains_key(&id) {
            return;
        }
        self.make_room(&id);
        self.map.insert(
            id,
            Peer {
                public,
                v2: true,
                pair: None,
            },
        );
    }

    /// The pairwise key with `id`, if it speaks version 2 and its key is known (derived once).
    pub(super) fn pair_for_sending(
        &mut self,
        identity: &NativeIdentity,
        id: &NodeId,
    ) -> Option<[u8; 32]> {
        let peer = self.map.get_mut(id)?;
        if !peer.v2 {
            return None;
        }
        if peer.pair.is_none() {
            peer.pair = Some(pair_key(identity, &peer.public)?);
        }
        peer.pair
    }

    /// The pairwise key with the sender of a version 2 message, whose key `vk` came with it
    /// (already checked against its id). Not stored before the message verifies.
    pub(super) fn pair_for_receiving(
        &self,
        identity: &NativeIdentity,
        id: &NodeId,
        public: &[u8; 33],
        vk: &VerifyingKey,
    ) -> [u8; 32] {
        match self.map.get(id) {
            Some(p) if p.public == *public && p.pair.is_some() => p.pair.unwrap_or_default(),
            _ => pair_key_parsed(identity, vk),
        }
    }

    /// Stores a pairwise key that just verified a message.
    pub(super) fn verified_v2(&mut self, id: NodeId, public: [u8; 33], pair: [u8; 32]) {
        self.learn_direct(id, public, true);
        if let Some(p) = self.map.get_mut(&id) {
            p.pair = Some(pair);
        }
    }
}
