//! BLE GATT adapter (CONTRACT §5). Filled in by the BLE door service work.

use crate::config::BleMode;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error("BLE was required (--ble on) but is not available: {0}")]
    Unavailable(String),
}

/// Starts the BLE service according to the configured mode.
pub async fn start(state: &AppState) -> Result<(), BleError> {
    match state.config.ble {
        BleMode::Off => Ok(()),
        BleMode::Auto => {
            tracing::info!("BLE is off: the door service is not built into this version yet");
            Ok(())
        }
        BleMode::On => Err(BleError::Unavailable(
            "the door service is not built yet".into(),
        )),
    }
}
