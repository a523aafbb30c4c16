//! The decision ring (NODES.md §8, spec B): every door decision, numbered, kept in flash until
//! the gateway acknowledges it, uploaded in `decisions` frames.
//!
//! This is the pure part: a RAM mirror of the flash queue (at most [`RING_CAPACITY`] entries,
//! about 25 KB) that tells the caller what to write. The caller performs the writes in the
//! order given: on an acknowledgement the bookkeeping first, then the pops, so a power cut in
//! between re-sends entries the gateway already has (it acknowledges them again without new
//! events: exactly once by `seq`).
//!
//! ```text
//!  record ──▶ [ oldest … newest ] ── full? drop oldest, lost += 1
//!                │
//!  upload ──▶ `decisions` (≤ 32 oldest, `lost`), one in flight ── `decisions_ack` upTo ──▶ popped
//!                                                   └── session ends: sent again next session
//! ```

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use latchkey_proto::v2::{EndpointId, Record, Status, ENDPOINT_FIELD_LEN};
use serde::Serialize;

use crate::storage::{DecisionStore, RingMeta};

/// Decisions the ring keeps.
pub const RING_CAPACITY: usize = 256;
/// Entries in one `decisions` frame.
pub const UPLOAD_BATCH: usize = 32;
/// Bytes of a stored entry.
pub const ENTRY_LEN: usize = 8 + 1 + 1 + 16 + ENDPOINT_FIELD_LEN + 8 + 8;

const HAS_TOOL: u8 = 1;
const HAS_ENDPOINT: u8 = 2;
const HAS_PHONE_TIME: u8 = 4;
const HAS_DOOR_TIME: u8 = 8;
const OFFLINE: u8 = 16;

/// One decision as the ring keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Node-local number, strictly increasing over the node's life, first 1.
    pub seq: u64,
    /// What the door decided, and about whom.
    pub record: Record,
    /// The node had no gateway session when it decided.
    pub offline: bool,
}

impl Entry {
    /// The stored form: `seq ‖ status ‖ flags ‖ tool 16 ‖ endpoint 33 ‖ phone_time ‖ door_time`.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let r = &self.record;
        let flags = [
            (r.tool_id.is_some(), HAS_TOOL),
            (r.endpoint.is_some(), HAS_ENDPOINT),
            (r.phone_time.is_some(), HAS_PHONE_TIME),
            (r.door_time.is_some(), HAS_DOOR_TIME),
            (self.offline, OFFLINE),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |acc, (_, bit)| acc | bit);
        let mut out = [0u8; ENTRY_LEN];
        let parts: [&[u8]; 7] = [
            &self.seq.to_be_bytes(),
            &[r.status.code()],
            &[flags],
            &r.tool_id.unwrap_or_default(),
            &r.endpoint.map_or([0; ENDPOINT_FIELD_LEN], |e| e.to_field()),
            &r.phone_time.unwrap_or(0).to_be_bytes(),
            &r.door_time.unwrap_or(0).to_be_bytes(),
        ];
        let mut at = 0;
        for part in parts {
            if let Some(dst) = out.get_mut(at..at + part.len()) {
                dst.copy_from_slice(part);
            }
            at += part.len();
        }
        out
    }

    /// Reads the stored form; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.len() != ENTRY_LEN {
            return None;
        }
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let status = Status::try_from(*bytes.get(8)?).ok()?;
        let flags = *bytes.get(9)?;
        let has = |bit: u8| flags & bit != 0;
        let tool: [u8; 16] = bytes.get(10..26)?.try_into().ok()?;
        let endpoint = EndpointId::from_field(bytes.get(26..26 + ENDPOINT_FIELD_LEN)?).ok()?;
        let at = 26 + ENDPOINT_FIELD_LEN;
        Some(Entry {
            seq: u64_at(0)?,
            record: Record {
                status,
                tool_id: has(HAS_TOOL).then_some(tool),
                endpoint: has(HAS_ENDPOINT).then_some(endpoint),
                phone_time: has(HAS_PHONE_TIME).then(|| u64_at(at)).flatten(),
                door_time: has(HAS_DOOR_TIME).then(|| u64_at(at + 8)).flatten(),
            },
            offline: has(OFFLINE),
        })
    }
}

/// What recording a decision asks the caller to write, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrites {
    /// The ring was full: pop the oldest stored entry, then store `meta` (the new `lost`).
    pub drop_oldest: Option<RingMeta>,
    /// Then push this entry.
    pub push: [u8; ENTRY_LEN],
}

/// What an acknowledgement asks the caller to write, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckWrites {
    /// Store this bookkeeping first.
    pub meta: RingMeta,
    /// Then pop this many of the oldest stored entries.
    pub pop: usize,
}

impl RecordWrites {
    /// Performs the writes; a failure is logged (the decision stays in RAM and is uploaded, but
    /// would not survive a restart).
    pub async fn store(&self, store: &mut impl DecisionStore) {
        let mut saved = Ok(());
        if let Some(meta) = self.drop_oldest {
            saved = match store.ring_pop(1).await {
                Ok(()) => store.save_ring_meta(meta).await,
                Err(e) => Err(e),
            };
        }
        if saved.is_ok() {
            saved = store.ring_push(&self.push).await;
        }
        if let Err(e) = saved {
            log::error!("decision ring: cannot store a decision: {e}");
        }
    }
}

impl AckWrites {
    /// Performs the writes. Bookkeeping first: a cut before the pops re-sends what the gateway
    /// already has, which it acknowledges again without new events.
    pub async fn store(&self, store: &mut impl DecisionStore) {
        let saved = match store.save_ring_meta(self.meta).await {
            Ok(()) => store.ring_pop(self.pop).await,
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            log::error!("decision ring: cannot drop acknowledged entries: {e}");
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    up_to: u64,
    lost: u32,
    unrecognised: u32,
}

/// The ring's RAM mirror and upload state. A stored entry that does not decode is kept as
/// `None` so that counts of stored entries stay right; it is never uploaded.
#[derive(Debug, Default)]
pub struct DecisionRing {
    entries: VecDeque<Option<Entry>>,
    next_seq: u64,
    lost: u32,
    /// Attempts that matched no grant since the last acknowledged upload (RAM only).
    unrecognised: u32,
    in_flight: Option<InFlight>,
}

impl DecisionRing {
    /// The ring as stored: its entries, oldest first, and its bookkeeping.
    pub fn boot(stored: &[Vec<u8>], meta: RingMeta) -> Self {
        let entries: VecDeque<Option<Entry>> =
            stored.iter().map(|bytes| Entry::decode(bytes)).collect();
        let unreadable = entries.iter().filter(|e| e.is_none()).count();
        if unreadable > 0 {
            log::warn!("decision ring: {unreadable} stored entries unreadable");
        }
        let last = entries.iter().flatten().map(|e| e.seq).max().unwrap_or(0);
        Self {
            entries,
            next_seq: meta.seq_floor.max(last.saturating_add(1)).max(1),
            lost: meta.lost,
            unrecognised: 0,
            in_flight: None,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decisions dropped and not yet reported.
    pub fn lost(&self) -> u32 {
        self.lost
    }

    /// The bookkeeping to store.
    pub fn meta(&self) -> RingMeta {
        RingMeta {
            seq_floor: self.next_seq,
            lost: self.lost,
        }
    }

    /// Counts an attempt that matched no grant (a plain result). Such attempts are not stored:
    /// anyone in radio range can make them, and storing each would let a stranger push real
    /// decisions out of the ring and wear the flash. The count rides along with the next upload.
    pub fn note_unrecognised(&mut self) {
        self.unrecognised = self.unrecognised.saturating_add(1);
    }

    /// Unrecognised attempts not yet reported.
    pub fn unrecognised(&self) -> u32 {
        self.unrecognised
    }

    /// Records a decision; returns what to write.
    pub fn record(&mut self, record: Record, offline: bool) -> RecordWrites {
        let entry = Entry {
            seq: self.next_seq,
            record,
            offline,
        };
        self.next_seq = self.next_seq.saturating_add(1);
        let drop_oldest = if self.entries.len() >= RING_CAPACITY {
            if let Some(Some(_)) = self.entries.pop_front() {
                self.lost = self.lost.saturating_add(1);
            }
            Some(self.meta())
        } else {
            None
        };
        self.entries.push_back(Some(entry));
        RecordWrites {
            drop_oldest,
            push: entry.encode(),
        }
    }

    /// The next `decisions` frame, if none is in flight and there is something to send.
    pub fn upload(&mut self) -> Option<String> {
        if self.in_flight.is_some() {
            return None;
        }
        let batch: Vec<&Entry> = self.entries.iter().flatten().take(UPLOAD_BATCH).collect();
        let up_to = batch.last()?.seq;
        #[derive(Serialize)]
        struct Frame<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            entries: Vec<Wire<'a>>,
            lost: u32,
            unrecognised: u32,
        }
        let frame = Frame {
            kind: "decisions",
            entries: batch.iter().map(|e| Wire::of(e)).collect(),
            lost: self.lost,
            unrecognised: self.unrecognised,
        };
        let text = serde_json::to_string(&frame).ok()?;
        self.in_flight = Some(InFlight {
            up_to,
            lost: self.lost,
            unrecognised: self.unrecognised,
        });
        Some(text)
    }

    /// The gateway committed every entry up to `up_to`.
    pub fn ack(&mut self, up_to: u64) -> AckWrites {
        let mut pop = 0;
        while let Some(front) = self.entries.front() {
            if front.is_some_and(|e| e.seq > up_to) {
                break;
            }
            self.entries.pop_front();
            pop += 1;
        }
        if let Some(sent) = self.in_flight.take() {
            if up_to >= sent.up_to {
                self.lost = self.lost.saturating_sub(sent.lost);
                self.unrecognised = self.unrecognised.saturating_sub(sent.unrecognised);
            }
        }
        AckWrites {
            meta: self.meta(),
            pop,
        }
    }

    /// The session ended: an unacknowledged frame is sent again on the next one.
    pub fn disconnected(&mut self) {
        self.in_flight = None;
    }
}

/// One entry as the `decisions` frame carries it (spec B).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    seq: u64,
    status: &'static str,
    tool_id: Option<String>,
    endpoint: Option<&'a str>,
    phone_time: Option<u64>,
    door_time: Option<u64>,
    offline: bool,
}

impl<'a> Wire<'a> {
    fn of(e: &'a Entry) -> Self {
        let r = &e.record;
        Wire {
            seq: e.seq,
            status: r.status.as_str(),
            tool_id: r.tool_id.map(|t| uuid_text(&t)),
            endpoint: r.endpoint.as_ref().map(EndpointId::as_str),
            phone_time: r.phone_time,
            door_time: r.door_time,
            offline: e.offline,
        }
    }
}

/// A UUID's canonical lower-case text.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex = data_encoding::HEXLOWER.encode(bytes);
    let mut out = String::with_capacity(36);
    for (i, c) in hex.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ram_flash::{RamFlash, PAGE};
    use crate::storage::FlashStore;
    use futures_executor::block_on;
    use serde_json::{json, Value};

    fn flash_store(flash: RamFlash) -> FlashStore<RamFlash> {
        let map = 2 * PAGE as u32;
        FlashStore::new(flash, 0..map, map..map + 8 * PAGE as u32).unwrap()
    }

    async fn reboot(store: FlashStore<RamFlash>) -> (FlashStore<RamFlash>, DecisionRing) {
        let mut store = flash_store(store.into_flash());
        let entries = store.ring_entries().await.unwrap();
        let ring = DecisionRing::boot(&entries, store.ring_meta().await.unwrap());
        (store, ring)
    }

    fn granted(i: u64) -> Record {
        Record {
            status: Status::Granted,
            tool_id: Some([0xa1; 16]),
            endpoint: Some(EndpointId::new("front-door").unwrap()),
            phone_time: Some(1_767_225_612 + i),
            door_time: Some(1_767_225_600 + i),
        }
    }

    fn unknown() -> Record {
        Record {
            status: Status::UnknownTool,
            tool_id: None,
            endpoint: None,
            phone_time: None,
            door_time: None,
        }
    }

    fn frame(ring: &mut DecisionRing) -> Value {
        serde_json::from_str(&ring.upload().unwrap()).unwrap()
    }

    fn seqs(frame: &Value) -> Vec<u64> {
        frame["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn entries_round_trip_through_their_stored_form() {
        for (record, offline) in [(granted(3), true), (unknown(), false)] {
            let e = Entry {
                seq: 77,
                record,
                offline,
            };
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
        assert_eq!(Entry::decode(&[0; ENTRY_LEN - 1]), None);
        let mut bad = Entry {
            seq: 1,
            record: unknown(),
            offline: false,
        }
        .encode();
        bad[8] = 200;
        assert_eq!(Entry::decode(&bad), None);
    }

    #[test]
    fn offline_decisions_are_uploaded_once_in_batches_resent_after_a_reconnect_and_dropped_on_ack()
    {
        block_on(async {
            let mut store = flash_store(RamFlash::new(10));
            let mut ring = DecisionRing::boot(&[], RingMeta::default());
            for i in 0..39 {
                ring.record(granted(i), true).store(&mut store).await;
            }
            ring.record(unknown(), true).store(&mut store).await;
            // The node restarts before it reaches the gateway: nothing is lost.
            let (mut store, mut ring) = reboot(store).await;
            assert_eq!(ring.len(), 40);
            let first = frame(&mut ring);
            assert_eq!(seqs(&first), (1..=32).collect::<Vec<_>>());
            assert_eq!(first["type"], "decisions");
            assert_eq!(first["lost"], 0);
            assert_eq!(
                first["entries"][0],
                json!({"seq":1,"status":"GRANTED","toolId":"a1a1a1a1-a1a1-a1a1-a1a1-a1a1a1a1a1a1",
                       "endpoint":"front-door","phoneTime":1_767_225_612u64,
                       "doorTime":1_767_225_600u64,"offline":true})
            );
            assert!(ring.upload().is_none(), "one frame in flight");
            // The session drops before the ack: the same entries go again on the next one.
            ring.disconnected();
            assert_eq!(frame(&mut ring), first);
            ring.ack(32).store(&mut store).await;
            let second = frame(&mut ring);
            assert_eq!(seqs(&second), (33..=40).collect::<Vec<_>>());
            assert_eq!(
                second["entries"][7],
                json!({"seq":40,"status":"UNKNOWN_TOOL","toolId":null,"endpoint":null,
                       "phoneTime":null,"doorTime":null,"offline":true})
            );
            // A decision made while a frame is in flight waits for the ack.
            ring.record(granted(50), false).store(&mut store).await;
            assert!(ring.upload().is_none());
            ring.ack(40).store(&mut store).await;
            let third = frame(&mut ring);
            assert_eq!(seqs(&third), [41]);
            assert_eq!(third["entries"][0]["offline"], false);
            ring.ack(41).store(&mut store).await;
            assert!(ring.upload().is_none());
            // Attempts that matched no grant are counted, not stored, and go with the next upload.
            ring.note_unrecognised();
            ring.note_unrecognised();
            assert!(ring.upload().is_none(), "a count alone sends nothing");
            let writes = ring.record(granted(60), false);
            writes.store(&mut store).await;
            let fourth = frame(&mut ring);
            assert_eq!(
                (seqs(&fourth), fourth["unrecognised"].clone()),
                (vec![42], json!(2))
            );
            ring.note_unrecognised();
            ring.ack(42).store(&mut store).await;
            assert_eq!(ring.unrecognised(), 1, "only what was reported is cleared");
            // Acknowledged entries are gone from flash; the numbering goes on after a restart.
            let (mut store, mut ring) = reboot(store).await;
            assert!(ring.is_empty());
            ring.record(unknown(), true).store(&mut store).await;
            assert_eq!(seqs(&frame(&mut ring)), [43]);
        });
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_reports_them_lost_until_acknowledged() {
        block_on(async {
            let mut store = flash_store(RamFlash::new(10));
            let mut ring = DecisionRing::boot(&[], RingMeta::default());
            for i in 0..(RING_CAPACITY as u64 + 10) {
                ring.record(granted(i), true).store(&mut store).await;
            }
            assert_eq!((ring.len(), ring.lost()), (RING_CAPACITY, 10));
            let (mut store, mut ring) = reboot(store).await;
            assert_eq!((ring.len(), ring.lost()), (RING_CAPACITY, 10));
            let first = frame(&mut ring);
            assert_eq!(first["lost"], 10);
            assert_eq!(seqs(&first), (11..=42).collect::<Vec<_>>());
            ring.ack(42).store(&mut store).await;
            assert_eq!(ring.lost(), 0);
            let (_, mut ring) = reboot(store).await;
            assert_eq!((ring.len(), ring.lost()), (RING_CAPACITY - 32, 0));
            assert_eq!(frame(&mut ring)["lost"], 0);
        });
    }

    proptest::proptest! {
        #[test]
        fn no_stored_bytes_panic_the_ring_at_boot(
            stored in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
                0..20,
            ),
            floor in proptest::prelude::any::<u64>(),
        ) {
            let mut ring = DecisionRing::boot(&stored, RingMeta { seq_floor: floor, lost: 0 });
            proptest::prop_assert_eq!(ring.len(), stored.len());
            let _ = ring.upload();
            let writes = ring.ack(u64::MAX);
            proptest::prop_assert_eq!(writes.pop, stored.len());
        }
    }
}
