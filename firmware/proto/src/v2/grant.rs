//! Grants (what a door needs to decide offline about one access tool) and the signed snapshot
//! that carries all of one node's grants: the cache refresh.
//!
//! Grant, 150 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | tool_id |
//! | 16 | 16 | node_id |
//! | 32 | 33 | endpoint (length byte, 32 bytes zero-padded) |
//! | 65 | 8 | not_before (u64 BE, Unix s, inclusive) |
//! | 73 | 8 | expires (u64 BE, Unix s, exclusive) |
//! | 81 | 4 | epoch (u32 BE) |
//! | 85 | 65 | phone_key (P-256, SEC1 uncompressed) |
//!
//! Signed grant, 216 bytes: `02 11` ‖ grant ‖ Ed25519 signature over
//! `"latchkey/v2/grant"` ‖ the first 152 bytes.
//!
//! Snapshot, 104 + 150·n bytes: `02 12` ‖ node_id 16 ‖ version u64 ‖ epoch u32 ‖ issued_at u64
//! ‖ n u16 ‖ n grants ‖ Ed25519 signature over `"latchkey/v2/snapshot"` ‖ everything before it.

use ed25519_dalek::ed25519::signature::{MultipartSigner, MultipartVerifier};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use super::endpoint::{EndpointId, ENDPOINT_FIELD_LEN};
use super::wire::{check_header, check_len, copy, field, put};
use super::{
    parse_public_key, DoorId, Error, PublicKeyBytes, ToolId, GRANT_CAPACITY, KIND_SIGNED_GRANT,
    KIND_SNAPSHOT, PUBLIC_KEY_LEN, VERSION,
};

/// Domain-separation prefix of a signed grant's signed message.
pub const GRANT_LABEL: &[u8] = b"latchkey/v2/grant";
/// Domain-separation prefix of a snapshot's signed message.
pub const SNAPSHOT_LABEL: &[u8] = b"latchkey/v2/snapshot";
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The gateway's Ed25519 public key (`gateway_pubkey`, 32 bytes).
///
/// # Errors
/// [`Error::BadGatewayKey`] if the bytes are not a point.
pub fn gateway_key(bytes: &[u8; 32]) -> Result<VerifyingKey, Error> {
    VerifyingKey::from_bytes(bytes).map_err(|_| Error::BadGatewayKey)
}

/// One access tool, as a door needs it to decide offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The access tool's id (`accessToolId`, 16 UUID bytes).
    pub tool_id: ToolId,
    /// The node that honours it (16 UUID bytes).
    pub node_id: DoorId,
    /// The endpoint it opens.
    pub endpoint: EndpointId,
    /// First second of validity (Unix s, inclusive).
    pub not_before: u64,
    /// End of validity (Unix s, exclusive).
    pub expires: u64,
    /// The node's revocation epoch when the grant was issued.
    pub epoch: u32,
    /// The phone's P-256 public key, SEC1 uncompressed.
    pub phone_key: PublicKeyBytes,
}

impl Grant {
    /// Length of the encoded grant.
    pub const LEN: usize = 16 + 16 + ENDPOINT_FIELD_LEN + 8 + 8 + 4 + PUBLIC_KEY_LEN;

    /// The fixed layout.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Grant::LEN] {
        let mut out = [0u8; Grant::LEN];
        let mut at = 0;
        put(&mut out, &mut at, &self.tool_id);
        put(&mut out, &mut at, &self.node_id);
        put(&mut out, &mut at, &self.endpoint.to_field());
        put(&mut out, &mut at, &self.not_before.to_be_bytes());
        put(&mut out, &mut at, &self.expires.to_be_bytes());
        put(&mut out, &mut at, &self.epoch.to_be_bytes());
        put(&mut out, &mut at, &self.phone_key);
        out
    }

    /// Parses the fixed layout, refusing an endpoint that is not canonical, an empty validity
    /// and a phone key that is not a point on P-256.
    ///
    /// # Errors
    /// As described, or [`Error::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Grant, Error> {
        check_len(bytes, Grant::LEN)?;
        let field = |from, to| field(bytes, from, to);
        let grant = Grant {
            tool_id: copy(field(0, 16)),
            node_id: copy(field(16, 32)),
            endpoint: EndpointId::from_field(field(32, 65))?,
            not_before: u64::from_be_bytes(copy(field(65, 73))),
            expires: u64::from_be_bytes(copy(field(73, 81))),
            epoch: u32::from_be_bytes(copy(field(81, 85))),
            phone_key: copy(field(85, Grant::LEN)),
        };
        if grant.not_before >= grant.expires {
            return Err(Error::EmptyValidity);
        }
        parse_public_key(&grant.phone_key)?;
        Ok(grant)
    }

    /// Whether `now` is inside `[not_before, expires)`.
    #[must_use]
    pub const fn valid_at(&self, now: u64) -> bool {
        self.not_before <= now && now < self.expires
    }

    /// The grant signed on its own (gateway side), e.g. to hand a phone its own grant.
    #[must_use]
    pub fn sign(&self, key: &SigningKey) -> [u8; SignedGrant::LEN] {
        let mut out = [0u8; SignedGrant::LEN];
        let mut at = 0;
        put(&mut out, &mut at, &[VERSION, KIND_SIGNED_GRANT]);
        put(&mut out, &mut at, &self.to_bytes());
        let sig = key.multipart_sign(&[GRANT_LABEL, out.get(..at).unwrap_or_default()]);
        put(&mut out, &mut at, &sig.to_bytes());
        out
    }
}

/// A grant with its own signature.
pub struct SignedGrant;

impl SignedGrant {
    /// Length: version, kind, grant, signature.
    pub const LEN: usize = 2 + Grant::LEN + SIGNATURE_LEN;

    /// Checks the signature under the gateway's key, then parses the grant.
    ///
    /// # Errors
    /// Header errors, [`Error::BadLength`], [`Error::BadSignature`], or a grant error.
    pub fn verify(bytes: &[u8], gateway: &VerifyingKey) -> Result<Grant, Error> {
        check_header(bytes, KIND_SIGNED_GRANT)?;
        check_len(bytes, SignedGrant::LEN)?;
        let (signed, sig) = bytes.split_at(2 + Grant::LEN);
        verify(gateway, GRANT_LABEL, signed, sig)?;
        Grant::decode(signed.get(2..).unwrap_or_default())
    }
}

fn verify(gateway: &VerifyingKey, label: &[u8], signed: &[u8], sig: &[u8]) -> Result<(), Error> {
    let sig = Signature::from_bytes(&copy::<SIGNATURE_LEN>(sig));
    gateway
        .multipart_verify(&[label, signed], &sig)
        .map_err(|_| Error::BadSignature)
}

/// What a snapshot says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The node every grant is for.
    pub node_id: DoorId,
    /// Strictly increasing per node: a door refuses a version it has already seen or passed.
    pub version: u64,
    /// The node's current revocation epoch; every grant in the snapshot carries it.
    pub epoch: u32,
    /// The gateway's wall time when it signed (Unix s): a floor for the door's clock.
    pub issued_at: u64,
}

/// Bytes in front of the grants.
pub const SNAPSHOT_HEADER_LEN: usize = 2 + 16 + 8 + 4 + 8 + 2;

/// Length of a snapshot of `count` grants.
#[must_use]
pub const fn snapshot_len(count: usize) -> usize {
    SNAPSHOT_HEADER_LEN + count * Grant::LEN + SIGNATURE_LEN
}

/// The largest snapshot a door accepts.
pub const MAX_SNAPSHOT_LEN: usize = snapshot_len(GRANT_CAPACITY);

/// Encodes and signs a snapshot into `out` (gateway side); returns its length.
///
/// # Errors
/// [`Error::TooManyGrants`], [`Error::WrongNode`] / [`Error::EpochMismatch`] for a grant that
/// does not belong, a grant a node would refuse ([`Error::EmptyValidity`],
/// [`Error::BadPublicKey`], [`Error::DuplicateGrant`]), [`Error::BufferTooSmall`].
pub fn encode_snapshot(
    header: &SnapshotHeader,
    grants: &[Grant],
    key: &SigningKey,
    out: &mut [u8],
) -> Result<usize, Error> {
    if grants.len() > GRANT_CAPACITY {
        return Err(Error::TooManyGrants(grants.len()));
    }
    if grants.iter().any(|g| g.node_id != header.node_id) {
        return Err(Error::WrongNode);
    }
    if grants.iter().any(|g| g.epoch != header.epoch) {
        return Err(Error::EpochMismatch);
    }
    // Refuse here what every node would refuse: a bad validity or phone key, a duplicate.
    for (i, g) in grants.iter().enumerate() {
        Grant::decode(&g.to_bytes())?;
        let earlier = grants.iter().take(i);
        for other in earlier {
            if other.tool_id == g.tool_id && other.endpoint == g.endpoint {
                return Err(Error::DuplicateGrant);
            }
        }
    }
    let len = snapshot_len(grants.len());
    if out.len() < len {
        return Err(Error::BufferTooSmall {
            needed: len,
            available: out.len(),
        });
    }
    let mut at = 0;
    put(out, &mut at, &[VERSION, KIND_SNAPSHOT]);
    put(out, &mut at, &header.node_id);
    put(out, &mut at, &header.version.to_be_bytes());
    put(out, &mut at, &header.epoch.to_be_bytes());
    put(out, &mut at, &header.issued_at.to_be_bytes());
    // At most GRANT_CAPACITY (256): fits a u16.
    put(out, &mut at, &(grants.len() as u16).to_be_bytes());
    for g in grants {
        put(out, &mut at, &g.to_bytes());
    }
    let sig = key.multipart_sign(&[SNAPSHOT_LABEL, out.get(..at).unwrap_or_default()]);
    put(out, &mut at, &sig.to_bytes());
    Ok(at)
}

/// A snapshot whose signature, node, layout and every grant have been checked.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedSnapshot<'a> {
    /// Its header.
    pub header: SnapshotHeader,
    grants: &'a [u8],
}

impl<'a> VerifiedSnapshot<'a> {
    /// The grants, in snapshot order.
    pub fn grants(&self) -> impl Iterator<Item = Grant> + 'a {
        // Every grant decoded in `verify_snapshot`; decoding again cannot fail.
        self.grants
            .chunks_exact(Grant::LEN)
            .filter_map(|g| Grant::decode(g).ok())
    }

    /// Number of grants.
    #[must_use]
    pub fn len(&self) -> usize {
        self.grants.len() / Grant::LEN
    }

    /// Whether the snapshot holds no grant (every tool of the node is gone).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

/// Verifies a snapshot for `node_id` before anything in it is used: layout and length,
/// the signature under the gateway's key, the node id, then every grant (canonical encoding,
/// same node, same epoch as the snapshot, valid phone key, no (tool, endpoint) twice).
/// Whether it is newer than what the door holds is the door's check ([`super::GrantSet`]).
///
/// # Errors
/// The first defect found.
pub fn verify_snapshot<'a>(
    bytes: &'a [u8],
    gateway: &VerifyingKey,
    node_id: &DoorId,
) -> Result<VerifiedSnapshot<'a>, Error> {
    check_header(bytes, KIND_SNAPSHOT)?;
    let field = |from, to| field(bytes, from, to);
    if bytes.len() < snapshot_len(0) {
        return Err(Error::BadLength {
            expected: snapshot_len(0),
            actual: bytes.len(),
        });
    }
    let count = usize::from(u16::from_be_bytes(copy(field(38, 40))));
    if count > GRANT_CAPACITY {
        return Err(Error::TooManyGrants(count));
    }
    check_len(bytes, snapshot_len(count))?;
    let (signed, sig) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    verify(gateway, SNAPSHOT_LABEL, signed, sig)?;
    let header = SnapshotHeader {
        node_id: copy(field(2, 18)),
        version: u64::from_be_bytes(copy(field(18, 26))),
        epoch: u32::from_be_bytes(copy(field(26, 30))),
        issued_at: u64::from_be_bytes(copy(field(30, 38))),
    };
    if header.node_id != *node_id {
        return Err(Error::WrongNode);
    }
    let grants = signed.get(SNAPSHOT_HEADER_LEN..).unwrap_or_default();
    for (i, raw) in grants.chunks_exact(Grant::LEN).enumerate() {
        let g = Grant::decode(raw)?;
        if g.node_id != *node_id {
            return Err(Error::WrongNode);
        }
        if g.epoch != header.epoch {
            return Err(Error::EpochMismatch);
        }
        let earlier = grants.chunks_exact(Grant::LEN).take(i);
        for other in earlier {
            if other.get(..16) == raw.get(..16) && other.get(32..65) == raw.get(32..65) {
                return Err(Error::DuplicateGrant);
            }
        }
    }
    Ok(VerifiedSnapshot { header, grants })
}

/// Standard base64 (RFC 4648 §4, with padding) of `bytes` into `out`: how grants, snapshots
/// and keys travel in JSON.
///
/// # Errors
/// [`Error::BufferTooSmall`].
pub fn to_base64<'o>(bytes: &[u8], out: &'o mut [u8]) -> Result<&'o str, Error> {
    use base64ct::Encoding;
    let needed = base64ct::Base64::encoded_len(bytes);
    let available = out.len();
    base64ct::Base64::encode(bytes, out).map_err(|_| Error::BufferTooSmall { needed, available })
}

/// Decodes standard base64 (with padding) into `out`.
///
/// # Errors
/// [`Error::Base64`] for anything but canonical padded standard base64 that fits `out`.
pub fn from_base64<'o>(text: &str, out: &'o mut [u8]) -> Result<&'o [u8], Error> {
    use base64ct::Encoding;
    base64ct::Base64::decode(text, out).map_err(|_| Error::Base64)
}
