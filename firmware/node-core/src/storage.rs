//! The node's persistent state: its key pair and, once registered, its credentials.
//!
//! One implementation, [`FlashStore`], a sequential-storage map over any
//! `embedded_storage_async::nor_flash::NorFlash` and a range of it that the board hands in (a
//! partition on the ESP32, a file on Linux). sequential-storage writes each item whole with a CRC
//! and only then marks it valid, so a power cut during a save leaves the previous value readable
//! (tested below with a flash that "loses power after N writes"). A factory reset erases the
//! whole range.
//!
//! Items: `KEY_IDENTITY` (the 32-byte P-256 secret), `KEY_CREDENTIALS` (JSON of [`Credentials`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use embedded_storage_async::nor_flash::NorFlash;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::identity::{Identity, SECRET_LEN};

/// Largest stored item; a credentials record is about 400 bytes.
pub const MAX_ITEM: usize = 1024;
const KEY_IDENTITY: u8 = 1;
const KEY_CREDENTIALS: u8 = 2;

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

/// [`CredentialStore`] on NOR flash through sequential-storage.
pub struct FlashStore<F: NorFlash> {
    map: MapStorage<u8, F, Cache<Uncached, Uncached, Uncached, u8>>,
    buf: Zeroizing<Vec<u8>>,
}

impl<F: NorFlash> FlashStore<F> {
    /// A store over `range` of `flash` (page-aligned, at least two erase pages).
    pub fn new(flash: F, range: Range<u32>) -> Result<Self, StoreError> {
        let config = MapConfig::<F>::try_new(range).map_err(|_| StoreError::Config)?;
        Ok(Self {
            map: MapStorage::new(flash, config, Cache::new_uncached()),
            buf: Zeroizing::new(alloc::vec![0u8; MAX_ITEM + 16]),
        })
    }

    /// Gives the flash back (tests "reboot" a node on the same bytes this way).
    pub fn into_flash(self) -> F {
        self.map.destroy().0
    }

    async fn fetch(&mut self, key: u8) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match self.map.fetch_item::<&[u8]>(&mut self.buf, &key).await {
            Ok(v) => Ok(v.map(|bytes| Zeroizing::new(bytes.to_vec()))),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn store(&mut self, key: u8, value: &[u8]) -> Result<(), StoreError> {
        if value.len() > MAX_ITEM {
            return Err(StoreError::Corrupt);
        }
        self.map
            .store_item(&mut self.buf, &key, &value)
            .await
            .map_err(map_err)
    }
}

fn map_err<E>(e: sequential_storage::Error<E>) -> StoreError {
    match e {
        sequential_storage::Error::Storage { .. } => StoreError::Flash,
        _ => StoreError::Corrupt,
    }
}

impl<F: NorFlash> CredentialStore for FlashStore<F> {
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
        self.store(KEY_CREDENTIALS, &bytes).await
    }

    async fn erase(&mut self) -> Result<(), StoreError> {
        self.map.erase_all().await.map_err(map_err)
    }
}

/// A RAM NOR flash for host tests that can "lose power" after a number of writes: the write that
/// crosses the limit lands only partly (half its words), and every later write or erase fails.
#[cfg(test)]
pub(crate) mod ram_flash {
    use alloc::vec::Vec;
    use embedded_storage_async::nor_flash::{
        ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
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
            let mut s = FlashStore::new(RamFlash::new(4), RANGE).unwrap();
            assert_eq!(s.credentials().await.unwrap(), None);
            let id = Identity::generate(&mut Fixed(5));
            s.save_identity(&id).await.unwrap();
            s.save_credentials(&creds(1)).await.unwrap();
            let mut s = FlashStore::new(s.into_flash(), RANGE).unwrap();
            assert_eq!(s.credentials().await.unwrap(), Some(creds(1)));
            let back = s.identity().await.unwrap().unwrap();
            assert_eq!(back.public_base64(), id.public_base64());
            s.erase().await.unwrap();
            let mut s = FlashStore::new(s.into_flash(), RANGE).unwrap();
            assert!(s.identity().await.unwrap().is_none());
            assert_eq!(s.credentials().await.unwrap(), None);
        });
    }

    #[test]
    fn many_saves_wrap_around_the_pages() {
        block_on(async {
            let mut s = FlashStore::new(RamFlash::new(2), 0..(2 * PAGE as u32)).unwrap();
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
                let mut s = FlashStore::new(RamFlash::new(2), 0..(2 * PAGE as u32)).unwrap();
                // Fill most of the first page so that some cuts land in a page switch.
                for n in 0..6 {
                    s.save_credentials(&creds(n)).await.unwrap();
                }
                let mut flash = s.into_flash();
                flash.writes_left = Some(cut_after);
                let mut s = FlashStore::new(flash, 0..(2 * PAGE as u32)).unwrap();
                let _ = s.save_credentials(&creds(77)).await;
                // Power back: the flash works again, the node boots.
                let mut flash = s.into_flash();
                flash.writes_left = None;
                let mut s = FlashStore::new(flash, 0..(2 * PAGE as u32)).unwrap();
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
            FlashStore::new(RamFlash::new(4), 0..PAGE as u32),
            Err(StoreError::Config)
        ));
    }
}
