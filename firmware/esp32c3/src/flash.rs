//! The board's flash: node-core's `FlashStore` over esp-storage (made async by
//! embassy-embedded-hal's `BlockingAsync`: the SPI flash is blocking anyway), and the label.
//!
//! The label (setup code and label id, NODES.md §4.1) is made on first boot from the TRNG and
//! kept in its own page, outside the store, so a factory reset keeps it. Layout, 28 bytes: the
//! 19-character code, one zero byte, the 4-character label id, then the marker `LKL1`, written
//! after the rest: a power cut before the marker leaves an unmarked page, which the
//! next boot erases and fills again. The code is printed on the serial console once, when it
//! is made (the factory prints the label from that line), and never again.

use embassy_embedded_hal::adapter::BlockingAsync;
use esp_storage::FlashStorage;
use latchkey_node_core::board::Rng;
use latchkey_node_core::storage::FlashStore;
use latchkey_node_core::{setup_code, Kind};
use zeroize::{Zeroize, Zeroizing};

use crate::board::{KIND_RANGE, LABEL_RANGE, RING_RANGE, STORE_RANGE};

/// The store node-core runs on.
pub type Store<'a> = FlashStore<BlockingAsync<&'a mut FlashStorage<'static>>>;

/// node-core's store over the `latchkey` and `ring` partitions.
pub fn store<'a>(flash: &'a mut FlashStorage<'static>) -> Option<Store<'a>> {
    FlashStore::new(BlockingAsync::new(flash), STORE_RANGE, RING_RANGE).ok()
}

const MARKER: [u8; 4] = *b"LKL1";
const ID_LEN: usize = 4;
const BODY: usize = setup_code::CODE_LEN + 1 + ID_LEN;
/// The `kind` page's word for a vehicle node.
const KIND_VEHICLE: [u8; 4] = *b"vhcl";
const RECORD: usize = BODY + MARKER.len();
// esp-storage writes whole 4-byte words.
const _: () = assert!(BODY.is_multiple_of(4) && RECORD.is_multiple_of(4));

/// The printed label.
pub struct Label {
    /// The setup access point's passphrase.
    pub code: Zeroizing<alloc::string::String>,
    /// Four characters in the SSID.
    pub label_id: alloc::string::String,
}

/// Why the label page could not be used.
#[derive(Debug, Clone, Copy)]
pub struct LabelError;

/// Reads the label, making and storing it on first boot.
pub fn load_or_create_label(
    flash: &mut FlashStorage<'static>,
    rng: &mut impl Rng,
) -> Result<Label, LabelError> {
    let mut record = Zeroizing::new([0u8; RECORD]);
    flash
        .read(LABEL_RANGE.start, record.as_mut())
        .map_err(|_| LabelError)?;
    if let Some(label) = parse(record.as_ref()) {
        return Ok(label);
    }
    let label = Label {
        code: setup_code::generate(rng),
        label_id: setup_code::generate_label_id(rng),
    };
    if label.code.len() != setup_code::CODE_LEN || label.label_id.len() != ID_LEN {
        return Err(LabelError);
    }
    let mut body = Zeroizing::new([0u8; BODY]);
    body[..setup_code::CODE_LEN].copy_from_slice(label.code.as_bytes());
    body[setup_code::CODE_LEN + 1..].copy_from_slice(label.label_id.as_bytes());
    flash
        .erase(LABEL_RANGE.start, LABEL_RANGE.end)
        .and_then(|()| flash.write(LABEL_RANGE.start, body.as_ref()))
        .and_then(|()| flash.write(LABEL_RANGE.start + BODY as u32, &MARKER))
        .map_err(|_| LabelError)?;
    // The factory's one chance to read the code; it is never logged again.
    esp_println::println!("setup network: {}", setup_code::ssid(&label.label_id));
    esp_println::println!("setup code: {}", label.code.as_str());
    body.zeroize();
    Ok(label)
}

fn parse(record: &[u8]) -> Option<Label> {
    if record.get(BODY..)? != MARKER {
        return None;
    }
    let code = core::str::from_utf8(record.get(..setup_code::CODE_LEN)?).ok()?;
    let id = core::str::from_utf8(record.get(setup_code::CODE_LEN + 1..BODY)?).ok()?;
    let id_ok = id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    (setup_code::is_valid(code) && id_ok).then(|| Label {
        code: Zeroizing::new(code.into()),
        label_id: id.into(),
    })
}

/// The node's kind from the `kind` page: `vhcl` is a vehicle; erased (or anything else, which
/// is logged) is a door.
pub fn kind(flash: &mut FlashStorage<'static>) -> Kind {
    let mut word = [0u8; 4];
    match flash.read(KIND_RANGE.start, &mut word) {
        Ok(()) if word == KIND_VEHICLE => Kind::Vehicle,
        Ok(()) if word == [0xFF; 4] => Kind::Door,
        Ok(()) => {
            log::warn!("kind page holds no known kind; a door node");
            Kind::Door
        }
        Err(_) => {
            log::error!("kind page unreadable; a door node");
            Kind::Door
        }
    }
}
