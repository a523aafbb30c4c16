//! The node's label: its setup code and label id, made once from the OS CSPRNG and kept in
//! `<state-dir>/label.json` (0600), outside the credentials, so a factory reset keeps them (the
//! printed label does not change).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use latchkey_node_core::setup_code;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock::OsRng;

/// What the label shows.
#[derive(Serialize, Deserialize)]
pub struct Label {
    /// The setup access point's passphrase.
    pub code: Zeroizing<String>,
    /// Four characters in the SSID.
    pub label_id: String,
}

impl Label {
    /// The setup access point's SSID.
    pub fn ssid(&self) -> String {
        setup_code::ssid(&self.label_id)
    }

    /// Loads the label, making it on first start; `true` if it was just made.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<(Self, bool)> {
        let path = state_dir.join("label.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let label: Label =
                    serde_json::from_slice(&bytes).context("label.json is unreadable")?;
                anyhow::ensure!(
                    setup_code::is_valid(&label.code),
                    "label.json holds no valid setup code"
                );
                Ok((label, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let label = Label {
                    code: setup_code::generate(&mut OsRng),
                    label_id: setup_code::generate_label_id(&mut OsRng),
                };
                let json = Zeroizing::new(serde_json::to_vec(&label)?);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                f.write_all(&json)?;
                f.sync_all()?;
                Ok((label, true))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The text of the printed label.
    pub fn print(&self) {
        println!("setup network: {}", self.ssid());
        println!("setup code: {}", self.code.as_str());
    }
}
