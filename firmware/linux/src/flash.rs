//! A file treated as NOR flash, so credentials go through the core's one sequential-storage
//! implementation on Linux too. Created 0600; erased bytes are 0xFF; a write can only clear bits
//! (as on the chip); every write and erase is synced to disk before it returns.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use embedded_storage_async::nor_flash::{
    ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Erase page size, as the ESP32-C3's flash.
pub const PAGE: u32 = 4096;
/// Pages of the core's map (credentials, key pair, grants: up to 2 × 12 pages of grant blob).
pub const MAP_PAGES: u32 = 40;
/// Pages of the decision ring (256 entries of 84 bytes with headers, ~48 a page, and slack).
pub const RING_PAGES: u32 = 8;
/// Pages in the flash file.
pub const PAGES: u32 = MAP_PAGES + RING_PAGES;

/// The file-backed flash.
pub struct FileFlash {
    file: File,
}

/// An I/O error on the flash file (logged by the core as a flash error).
#[derive(Debug)]
pub struct FlashIoError(#[allow(dead_code)] io::ErrorKind);

impl NorFlashError for FlashIoError {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

impl FileFlash {
    /// Opens (or creates, erased) the flash file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        // An existing file keeps its bits; make sure nobody widened its mode.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let size = u64::from(PAGE * PAGES);
        let len = file.metadata()?.len();
        if len < size {
            let fill = vec![0xff; usize::try_from(size - len).unwrap_or(0)];
            file.write_all_at(&fill, len)?;
            file.sync_data()?;
        }
        Ok(Self { file })
    }

    /// The range of the core's map: the start of the file (where a node made before the
    /// decision ring kept its credentials).
    pub fn range() -> core::ops::Range<u32> {
        0..PAGE * MAP_PAGES
    }

    /// The range of the core's decision ring: the end of the file.
    pub fn ring_range() -> core::ops::Range<u32> {
        PAGE * MAP_PAGES..PAGE * PAGES
    }
}

fn err(e: io::Error) -> FlashIoError {
    FlashIoError(e.kind())
}

impl ErrorType for FileFlash {
    type Error = FlashIoError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashIoError> {
        self.file
            .read_exact_at(bytes, u64::from(offset))
            .map_err(err)
    }

    fn capacity(&self) -> usize {
        (PAGE * PAGES) as usize
    }
}

// A write ANDs into the file's bits (as NOR does), so a word may be written twice: what the
// decision ring's pops need.
impl MultiwriteNorFlash for FileFlash {}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = PAGE as usize;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashIoError> {
        let len = usize::try_from(to.saturating_sub(from)).unwrap_or(0);
        self.file
            .write_all_at(&vec![0xff; len], u64::from(from))
            .map_err(err)?;
        self.file.sync_data().map_err(err)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashIoError> {
        let mut current = vec![0u8; bytes.len()];
        self.file
            .read_exact_at(&mut current, u64::from(offset))
            .map_err(err)?;
        for (c, b) in current.iter_mut().zip(bytes) {
            *c &= *b;
        }
        self.file
            .write_all_at(&current, u64::from(offset))
            .map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}
