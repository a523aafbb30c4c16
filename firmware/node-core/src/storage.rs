//! The node's persistent state: its key pair, once registered its credentials, its door grants
//! and its decision ring.
//!
//! One implementation, [`FlashStore`], over any
//! `embedded_storage_async::nor_flash::MultiwriteNorFlash` and two ranges of it that the board
//! hands in (a partition on the ESP32, a file on Linux): a sequential-storage **map** (key pair,
//! credentials, grants, ring bookkeeping) and a sequential-storage **queue** (the decision ring,
//! popped on the gateway's acknowledgement, which needs a flash whose words can be written twice).
//! sequential-storage writes each item whole with a CRC and only then marks it valid, so a power
//! cut during a save leaves the previous value readable (tested below with a flash that "loses
//! power after N writes"). A factory reset erases both ranges.
//!
//! Map items: `KEY_IDENTITY` (the 32-byte P-256 secret), `KEY_CREDENTIALS` (JSON of
//! [`Credentials`]), `KEY_RING_META` ([`RingMeta`]), and the grant blob
//! ([`crate::grants`]): a map item must fit one erase page, so the blob (up to ~47 KB for 256
//! grants) is cut into [`GRANT_CHUNK`]-byte chunks. Chunks go to the slot that is not current
//! (keys `KEY_GRANT_SLOTS[slot] + i`), and `KEY_GRANT_HEAD` (slot, length) is written last: a
//! power cut during a save leaves the previous blob whole.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use embedded_storage_async::nor_flash::MultiwriteNorFlash;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};
use sequential_storage::queue::{QueueConfig, QueueStorage};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::identity::{Identity, SECRET_LEN};

/// Largest stored item; a credentials record is about 400 bytes.
pub const MAX_ITEM: usize = 1024;
const KEY_IDENTITY: u8 = 1;
const KEY_CREDENTIALS: u8 = 2;
const KEY_RING_META: u8 = 3;
const KEY_GRANT_HEAD: u8 = 4;
/// First chunk key of each of the two grant slots (at most [`GRANT_CHUNKS`] keys each).
const KEY_GRANT_SLOTS: [u8; 2] = [0x40, 0x80];
/// Bytes of one grant-blob chunk: one map item, which must fit an erase page (4096 on the
/// ESP32-C3 and the Linux file) with its header.
pub const GRANT_CHUNK: usize = 4000;
/// Chunks a grant blob may take.
pub const GRANT_CHUNKS: usize = 16;
/// The largest grant blob the store keeps.
pub const MAX_GRANT_BLOB: usize = GRANT_CHUNK * GRANT_CHUNKS;
/// Largest decision-ring entry.
pub const MAX_RING_ITEM: usize = 128;

/// What registration gave the node (NODES.md §3.2), plus where it stands.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// The node's id.
    pub node_id: String,
    /// `Authorization: Node <node_key>` on `/ws`.
    pub node_key: Zeroizing<String>,
    /// The gateway's id.
    pub gateway_id: String,
    /// The gateway's Ed25519 public key (standard base64).
    pub gateway_pubkey: String,
    /// Where the session goes.
    pub ws_url: String,
    /// The room from provisioning.
    pub room: String,
    /// The station network to rejoin after a reboot.
    #[serde(default)]
    pub wifi_ssid: String,
    /// Its passphrase (a Linux node whose network the host manages ignores both).
    #[serde(default)]
    pub wifi_password: Zeroizing<String>,
    /// The gateway closed a session with 4403: stay offline until a factory reset.
    #[serde(default)]
    pub revoked: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("node_id", &self.node_id)
            .field("gateway_id", &self.gateway_id)
            .field("ws_url", &self.ws_url)
            .field("wifi_ssid", &self.wifi_ssid)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// A storage failure. The board's flash error is reduced to a word: it is logged, never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The flash failed to read, write or erase.
    Flash,
    /// The stored data cannot be decoded (or the range is full of it).
    Corrupt,
    /// The range is misconfigured (not page-aligned or under two pages).
    Config,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::Flash => "flash error",
            StoreError::Corrupt => "stored data unreadable",
            StoreError::Config => "storage range misconfigured",
        })
    }
}

/// The node's persistent state, as the core uses it.
#[allow(async_fn_in_trait)]
pub trait CredentialStore {
    /// The stored key pair, if any.
    async fn identity(&mut self) -> Result<Option<Identity>, StoreError>;
    /// Stores the key pair.
    async fn save_identity(&mut self, identity: &Identity) -> Result<(), StoreError>;
    /// The stored credentials, if the node is registered.
    async fn credentials(&mut self) -> Result<Option<Credentials>, StoreError>;
    /// Stores credentials (replacing any).
    async fn save_credentials(&mut self, credentials: &Credentials) -> Result<(), StoreError>;
    /// Factory reset: erases everything this store holds.
    async fn erase(&mut self) -> Result<(), StoreError>;
}

/// The decision ring's bookkeeping, kept next to it (NODES.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingMeta {
    /// No decision is ever numbered below this (the ring may be empty after acknowledgements).
    pub seq_floor: u64,
    /// Decisions dropped because the ring was full, not yet reported to the gateway.
    pub lost: u32,
}

impl RingMeta {
    fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.seq_floor.to_be_bytes());
        out[8..].copy_from_slice(&self.lost.to_be_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let seq: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let lost: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
        (bytes.len() == 12).then(|| RingMeta {
            seq_floor: u64::from_be_bytes(seq),
            lost: u32::from_be_bytes(lost),
        })
    }
}

/// Where the door's grant blob lives ([`crate::grants`] makes and reads the blob).
#[allow(async_fn_in_trait)]
pub trait GrantBlobStore {
    /// The stored blob, if any.
    async fn grant_blob(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
    /// Replaces the blob (atomically: a power cut leaves the old one or the new one).
    async fn save_grant_blob(&mut self, blob: &[u8]) -> Result<(), StoreError>;
}

/// Where the decision ring lives: a FIFO of encoded entries plus [`RingMeta`].
#[allow(async_fn_in_trait)]
pub trait DecisionStore {
    /// Every stored entry, oldest first.
    async fn ring_entries(&mut self) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Appends an entry.
    async fn ring_push(&mut self, entry: &[u8]) -> Result<(), StoreError>;
    /// Removes the `n` oldest entries.
    async fn ring_pop(&mut self, n: usize) -> Result<(), StoreError>;
    /// The bookkeeping (default when never saved).
    async fn ring_meta(&mut self) -> Result<RingMeta, StoreError>;
    /// Stores the bookkeeping.
    async fn save_ring_meta(&mut self, meta: RingMeta) -> Result<(), StoreError>;
}

type Uncache<K> = Cache<Uncached, Uncached, Uncached, K>;
/// The map over the store's flash, with the store's buffer.
type MapView<'a, F> = (MapStorage<u8, &'a mut F, Uncache<u8>>, &'a mut [u8]);
/// The ring's queue over the store's flash, with the store's buffer.
type RingView<'a, F> = (QueueStorage<&'a mut F, Uncache<()>>, &'a mut [u8]);

/// [`CredentialStore`], [`GrantBlobStore`] and [`DecisionStore`] on NOR flash through
/// sequential-storage. Both storages are built per operation over `&mut flash`: with no cache
/// there is nothing to keep between operations, and one flash serves both ranges.
pub struct FlashStore<F: MultiwriteNorFlash> {
    flash: F,
    map_range: Range<u32>,
    ring_range: Range<u32>,
    buf: Zeroizing<Vec<u8>>,
}

impl<F: MultiwriteNorFlash> FlashStore<F> {
    /// A store with its map over `map` and its decision ring over `ring` of `flash` (each
    /// page-aligned; the map at least two erase pages; the two apart).
    pub fn new(flash: F, map: Range<u32>, ring: Range<u32>) -> Result<Self, StoreError> {
        MapConfig::<F>::try_new(map.clone()).map_err(|_| StoreError::Config)?;
        QueueConfig::<F>::try_new(ring.clone()).map_err(|_| StoreError::Config)?;
        if map.start < ring.end && ring.start < map.end {
            return Err(StoreError::Config);
        }
        Ok(Self {
            flash,
            map_range: map,
            ring_range: ring,
            buf: Zeroizing::new(alloc::vec![0u8; GRANT_CHUNK + 64]),
        })
    }

    /// Gives the flash back (tests "reboot" a node on the same bytes this way).
    pub fn into_flash(self) -> F {
        self.flash
    }

    fn map(&mut self) -> Result<MapView<'_, F>, StoreError> {
        let config =
            MapConfig::<&mut F>::try_new(self.map_range.clone()).map_err(|_| StoreError::Config)?;
        Ok((
            MapStorage::new(&mut self.flash, config, Cache::new_uncached()),
            self.buf.as_mut_slice(),
        ))
    }

    fn ring(&mut self) -> Result<RingView<'_, F>, StoreError> {
        let config = QueueConfig::<&mut F>::try_new(self.ring_range.clone())
            .map_err(|_| StoreError::Config)?;
        Ok((
            QueueStorage::new(&mut self.flash, config, Cache::new_uncached()),
            self.buf.as_mut_slice(),
        ))
    }

    async fn fetch(&mut self, key: u8) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let (mut map, buf) = self.map()?;
        match map.fetch_item::<&[u8]>(buf, &key).await {
            Ok(v) => Ok(v.map(|bytes| Zeroizing::new(bytes.to_vec()))),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn store(&mut self, key: u8, value: &[u8]) -> Result<(), StoreError> {
        if value.len() > GRANT_CHUNK {
            return Err(StoreError::Corrupt);
        }
        let (mut map, buf) = self.map()?;
        map.store_item(buf, &key, &value).await.map_err(map_err)
    }
}

fn map_err<E>(e: sequential_storage::Error<E>) -> StoreError {
    match e {
        sequential_storage::Error::Storage { .. } => StoreError::Flash,
        _ => StoreError::Corrupt,
    }
}

impl<F: MultiwriteNorFlash> CredentialStore for FlashStore<F> {
    async fn identity(&mut self) -> Result<Option<Identity>, StoreError> {
        match self.fetch(KEY_IDENTITY).await? {
            None => Ok(None),
            Some(bytes) if bytes.len() == SECRET_LEN => Identity::from_secret_bytes(&bytes)
                .map(Some)
                .ok_or(StoreError::Corrupt),
            Some(_) => Err(StoreError::Corrupt),
        }
    }

    async fn save_identity(&mut self, identity: &Identity) -> Result<(), StoreError> {
        let secret = identity.secret_bytes();
        self.store(KEY_IDENTITY, secret.as_ref()).await
    }

    async fn credentials(&mut self) -> Result<Option<Credentials>, StoreError> {
        match self.fetch(KEY_CREDENTIALS).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| StoreError::Corrupt),
        }
    }

    async fn save_credentials(&mut self, credentials: &Credentials) -> Result<(), StoreError> {
        let bytes =
            Zeroizing::new(serde_json::to_vec(credentials).map_err(|_| StoreError::Corrupt)?);
        if bytes.len() > MAX_ITEM {
            return Err(StoreError::Corrupt);
        }
        self.store(KEY_CREDENTIALS, &bytes).await
    }

    async fn erase(&mut self) -> Result<(), StoreError> {
        let (mut map, _) = self.map()?;
        map.erase_all().await.map_err(map_err)?;
        let (mut ring, _) = self.ring()?;
        ring.erase_all().await.map_err(map_err)
    }
}

impl<F: MultiwriteNorFlash> GrantBlobStore for FlashStore<F> {
    async fn grant_blob(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(head) = self.fetch(KEY_GRANT_HEAD).await? else {
            return Ok(None);
        };
        let (slot, len) = match head.as_slice() {
            [slot @ (0 | 1), a, b, c, d] => (
                usize::from(*slot),
                u32::from_be_bytes([*a, *b, *c, *d]) as usize,
            ),
            _ => return Err(StoreError::Corrupt),
        };
        if len > MAX_GRANT_BLOB {
            return Err(StoreError::Corrupt);
        }
        let mut blob = Zeroizing::new(Vec::with_capacity(len));
        for i in 0..len.div_ceil(GRANT_CHUNK) {
            let key = slot_key(slot, i)?;
            let chunk = self.fetch(key).await?.ok_or(StoreError::Corrupt)?;
            blob.extend_from_slice(&chunk);
        }
        if blob.len() != len {
            return Err(StoreError::Corrupt);
        }
        Ok(Some(blob))
    }

    async fn save_grant_blob(&mut self, blob: &[u8]) -> Result<(), StoreError> {
        if blob.len() > MAX_GRANT_BLOB {
            return Err(StoreError::Corrupt);
        }
        let current = match self.fetch(KEY_GRANT_HEAD).await? {
            Some(head) => head.first().copied().map_or(0, usize::from),
            None => 1,
        };
        let slot = 1 - current.min(1);
        for (i, chunk) in blob.chunks(GRANT_CHUNK).enumerate() {
            self.store(slot_key(slot, i)?, chunk).await?;
        }
        let mut head = [0u8; 5];
        head[0] = slot as u8;
        head[1..].copy_from_slice(&(blob.len() as u32).to_be_bytes());
        self.store(KEY_GRANT_HEAD, &head).await
    }
}

fn slot_key(slot: usize, chunk: usize) -> Result<u8, StoreError> {
    let first = KEY_GRANT_SLOTS.get(slot).ok_or(StoreError::Corrupt)?;
    if chunk >= GRANT_CHUNKS {
        return Err(StoreError::Corrupt);
    }
    Ok(first + chunk as u8)
}

impl<F: MultiwriteNorFlash> DecisionStore for FlashStore<F> {
    async fn ring_entries(&mut self) -> Result<Vec<Vec<u8>>, StoreError> {
        let (mut ring, buf) = self.ring()?;
        let mut iter = ring.iter().await.map_err(map_err)?;
        let mut out = Vec::new();
        while let Some(entry) = iter.next(buf).await.map_err(map_err)? {
            out.push(entry.to_vec());
        }
        Ok(out)
    }

    async fn ring_push(&mut self, entry: &[u8]) -> Result<(), StoreError> {
        if entry.len() > MAX_RING_ITEM {
            return Err(StoreError::Corrupt);
        }
        let (mut ring, _) = self.ring()?;
        // The ring's owner keeps it within its count; a full range still takes the entry by
        // dropping the oldest page rather than losing the newest decision.
        ring.push(entry, true).await.map_err(map_err)
    }

    async fn ring_pop(&mut self, n: usize) -> Result<(), StoreError> {
        let (mut ring, buf) = self.ring()?;
        for _ in 0..n {
            if ring.pop(buf).await.map_err(map_err)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    async fn ring_meta(&mut self) -> Result<RingMeta, StoreError> {
        match self.fetch(KEY_RING_META).await? {
            None => Ok(RingMeta::default()),
            Some(bytes) => RingMeta::from_bytes(&bytes).ok_or(StoreError::Corrupt),
        }
    }

    async fn save_ring_meta(&mut self, meta: RingMeta) -> Result<(), StoreError> {
        self.store(KEY_RING_META, &meta.to_bytes()).await
    }
}

/// A RAM NOR flash for host tests that can "lose power" after a number of writes: the write that
/// crosses the limit lands only partly (half its words), and every later write or erase fails.
#[cfg(test)]
pub(crate) mod ram_flash {
    use alloc::vec::Vec;
    use embedded_storage_async::nor_flash::{
        ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
    };

    pub const PAGE: usize = 4096;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PowerCut;
    impl NorFlashError for PowerCut {
        fn kind(&self) -> NorFlashErrorKind {
            NorFlashErrorKind::Other
        }
    }

    pub struct RamFlash {
        pub bytes: Vec<u8>,
        pub writes_left: Option<usize>,
    }

    impl RamFlash {
        pub fn new(pages: usize) -> Self {
            Self {
                bytes: alloc::vec![0xff; pages * PAGE],
                writes_left: None,
            }
        }
        fn spend(&mut self) -> Result<bool, PowerCut> {
            match &mut self.writes_left {
                None => Ok(true),
                Some(0) => Err(PowerCut),
                Some(n) => {
                    *n -= 1;
                    Ok(*n > 0)
                }
            }
        }
    }

    impl ErrorType for RamFlash {
        type Error = PowerCut;
    }

    impl ReadNorFlash for RamFlash {
        const READ_SIZE: usize = 1;
        async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), PowerCut> {
            let o = offset as usize;
            bytes.copy_from_slice(&self.bytes[o..o + bytes.len()]);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.bytes.len()
        }
    }

    // Writes AND into the bytes (NOR semantics), so a word can be written again.
    impl MultiwriteNorFlash for RamFlash {}

    impl NorFlash for RamFlash {
        const WRITE_SIZE: usize = 4;
        const ERASE_SIZE: usize = PAGE;
        async fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerCut> {
            self.spend()?;
            self.bytes[from as usize..to as usize].fill(0xff);
            Ok(())
        }
        async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerCut> {
            let whole = self.spend()?;
            let o = offset as usize;
            // NOR semantics: a write can only clear bits.
            let n = if whole {
                bytes.len()
            } else {
                bytes.len() / 8 * 4
            };
            for (dst, src) in self.bytes[o..o + n].iter_mut().zip(&bytes[..n]) {
                *dst &= *src;
            }
            if whole {
                Ok(())
            } else {
                Err(PowerCut)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ram_flash::{RamFlash, PAGE};
    use super::*;
    use futures_executor::block_on;

    const RANGE: Range<u32> = 0..(4 * PAGE as u32);
    const RING: Range<u32> = (4 * PAGE as u32)..(6 * PAGE as u32);
    const SMALL: Range<u32> = 0..(2 * PAGE as u32);

    fn creds(n: u32) -> Credentials {
        Credentials {
            node_id: String::from("550e8400-e29b-41d4-a716-446655440000"),
            node_key: Zeroizing::new(alloc::format!("node_{n:043}")),
            gateway_id: String::from("gw-1"),
            gateway_pubkey: String::from("AAAA"),
            ws_url: String::from("ws://127.0.0.1:8080/ws"),
            room: String::from("hall"),
            wifi_ssid: String::from("HomeWifi"),
            wifi_password: Zeroizing::new(String::from("right-pass")),
            revoked: false,
        }
    }

    struct Fixed(u8);
    impl crate::board::Rng for Fixed {
        fn fill_bytes(&mut self, buf: &mut [u8]) {
            buf.fill(self.0);
        }
    }

    #[test]
    fn credentials_and_identity_survive_a_reboot_and_factory_reset_erases_both() {
        block_on(async {
            let mut s = FlashStore::new(RamFlash::new(6), RANGE, RING).unwrap();
            assert_eq!(s.credentials().await.unwrap(), None);
            let id = Identity::generate(&mut Fixed(5));
            s.save_identity(&id).await.unwrap();
            s.save_credentials(&creds(1)).await.unwrap();
            let mut s = FlashStore::new(s.into_flash(), RANGE, RING).unwrap();
            assert_eq!(s.credentials().await.unwrap(), Some(creds(1)));
            let back = s.identity().await.unwrap().unwrap();
            assert_eq!(back.public_base64(), id.public_base64());
            s.erase().await.unwrap();
            let mut s = FlashStore::new(s.into_flash(), RANGE, RING).unwrap();
            assert!(s.identity().await.unwrap().is_none());
            assert_eq!(s.credentials().await.unwrap(), None);
        });
    }

    #[test]
    fn many_saves_wrap_around_the_pages() {
        block_on(async {
            let mut s = FlashStore::new(RamFlash::new(6), SMALL, RING).unwrap();
            for n in 0..200 {
                s.save_credentials(&creds(n)).await.unwrap();
            }
            assert_eq!(s.credentials().await.unwrap(), Some(creds(199)));
        });
    }

    #[test]
    fn a_power_cut_during_a_save_leaves_the_old_or_the_new_record_never_garbage() {
        block_on(async {
            let mut outcomes = (0, 0);
            for cut_after in 1..40 {
                let mut s = FlashStore::new(RamFlash::new(6), SMALL, RING).unwrap();
                // Fill most of the first page so that some cuts land in a page switch.
                for n in 0..6 {
                    s.save_credentials(&creds(n)).await.unwrap();
                }
                let mut flash = s.into_flash();
                flash.writes_left = Some(cut_after);
                let mut s = FlashStore::new(flash, SMALL, RING).unwrap();
                let _ = s.save_credentials(&creds(77)).await;
                // Power back: the flash works again, the node boots.
                let mut flash = s.into_flash();
                flash.writes_left = None;
                let mut s = FlashStore::new(flash, SMALL, RING).unwrap();
                let got = s.credentials().await.unwrap();
                if got == Some(creds(5)) {
                    outcomes.0 += 1;
                } else if got == Some(creds(77)) {
                    outcomes.1 += 1;
                } else {
                    panic!("cut after {cut_after} writes left {got:?}");
                }
                // And the store still takes writes afterwards.
                s.save_credentials(&creds(88)).await.unwrap();
                assert_eq!(s.credentials().await.unwrap(), Some(creds(88)));
            }
            assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
        });
    }

    #[test]
    fn a_misaligned_range_is_a_config_error() {
        assert!(matches!(
            FlashStore::new(RamFlash::new(6), 0..PAGE as u32, RING),
            Err(StoreError::Config)
        ));
        assert!(matches!(
            FlashStore::new(
                RamFlash::new(6),
                RANGE,
                (3 * PAGE as u32)..(5 * PAGE as u32)
            ),
            Err(StoreError::Config)
        ));
    }

    #[test]
    fn a_grant_blob_survives_a_reboot_and_a_power_cut_leaves_the_old_or_the_new_one() {
        block_on(async {
            let old: Vec<u8> = (0..9_000u32).map(|i| i as u8).collect();
            let new: Vec<u8> = (0..13_000u32).map(|i| (i * 7) as u8).collect();
            let map = 0..(12 * PAGE as u32);
            let ring = (12 * PAGE as u32)..(14 * PAGE as u32);
            let mut s = FlashStore::new(RamFlash::new(14), map.clone(), ring.clone()).unwrap();
            assert_eq!(s.grant_blob().await.unwrap(), None);
            s.save_grant_blob(&old).await.unwrap();
            let mut s = FlashStore::new(s.into_flash(), map.clone(), ring.clone()).unwrap();
            assert_eq!(s.grant_blob().await.unwrap().unwrap().as_slice(), old);
            let base = s.into_flash().bytes;
            let mut seen = (0, 0);
            for cut_after in 1..40 {
                let mut flash = RamFlash::new(14);
                flash.bytes = base.clone();
                flash.writes_left = Some(cut_after);
                let mut s = FlashStore::new(flash, map.clone(), ring.clone()).unwrap();
                let _ = s.save_grant_blob(&new).await;
                let mut flash = s.into_flash();
                flash.writes_left = None;
                let mut s = FlashStore::new(flash, map.clone(), ring.clone()).unwrap();
                let got = s.grant_blob().await.unwrap().unwrap();
                if got.as_slice() == old.as_slice() {
                    seen.0 += 1;
                } else {
                    assert_eq!(got.as_slice(), new.as_slice(), "cut after {cut_after}");
                    seen.1 += 1;
                }
            }
            assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
        });
    }

    #[test]
    fn the_ring_keeps_its_order_across_a_reboot_and_pops_the_oldest() {
        block_on(async {
            let mut s = FlashStore::new(RamFlash::new(6), SMALL, RING).unwrap();
            // Two pages hold ~96 entries of 75 bytes; 40 stay clear of the overwrite.
            for i in 0..40u8 {
                s.ring_push(&[i; 75]).await.unwrap();
            }
            s.ring_pop(15).await.unwrap();
            s.save_ring_meta(RingMeta {
                seq_floor: 41,
                lost: 2,
            })
            .await
            .unwrap();
            let mut s = FlashStore::new(s.into_flash(), SMALL, RING).unwrap();
            let entries = s.ring_entries().await.unwrap();
            assert_eq!(entries.len(), 25);
            assert_eq!(entries[0], [15u8; 75]);
            assert_eq!(entries[24], [39u8; 75]);
            assert_eq!(
                s.ring_meta().await.unwrap(),
                RingMeta {
                    seq_floor: 41,
                    lost: 2
                }
            );
            s.erase().await.unwrap();
            assert!(s.ring_entries().await.unwrap().is_empty());
            assert_eq!(s.ring_meta().await.unwrap(), RingMeta::default());
        });
    }
}
