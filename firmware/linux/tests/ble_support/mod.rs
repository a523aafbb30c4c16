//! Plays the node core against a [`BluezRadio`]: challenge reads (door or pairing) get
//! [`CHALLENGE`], requests are echoed as the Result notification, pairing responses are
//! accepted when their first byte is 1, and every event is handed to the test in order.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use latchkey_node::ble::BluezRadio;
use latchkey_node_core::board::{DoorEvent, DoorRadio};
use tokio::sync::mpsc;

/// Guards against a hang; never a pass/fail timer.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the stand-in core answers every challenge read with (any 42 bytes do here).
pub const CHALLENGE: [u8; 42] = {
    let mut c = [0x5a; 42];
    c[0] = 0x02;
    c[1] = 0x01;
    c
};

/// A UUID as BlueZ spells it.
pub fn uuid(u: u128) -> String {
    latchkey_proto::UuidText(u).to_string()
}

/// The events the radio gave the stand-in core.
pub struct Door {
    rx: mpsc::UnboundedReceiver<DoorEvent>,
}

impl Door {
    pub async fn event(&mut self) -> DoorEvent {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no door event")
            .expect("the core loop ended")
    }
}

/// Runs the stand-in core on `radio` until the test ends.
pub fn serve(mut radio: BluezRadio) -> Door {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = radio.next().await;
            match &ev {
                DoorEvent::ReadChallenge { conn } => radio.reply_read(*conn, &CHALLENGE).await,
                DoorEvent::Request { conn, value } => radio.notify(*conn, value).await,
                DoorEvent::PairingChallenge { conn } => radio.reply_read(*conn, &CHALLENGE).await,
                // A response starting with 1 is accepted, anything else refused.
                DoorEvent::PairingResponse { conn, value } => {
                    radio.reply_write(*conn, value.first() == Some(&1)).await
                }
                DoorEvent::Disconnected { .. } => {}
            }
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    Door { rx }
}
