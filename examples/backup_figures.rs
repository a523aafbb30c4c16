//! Backup figures for docs/PERFORMANCE.md: a registry with N paired devices (10,000 by default),
//! then `latchkey backup`'s work (snapshot through SQLite's backup API, then the file written),
//! timed a few times. Prints the registry's and the backup's size and each run's time.
//!
//! cargo run --release --example backup_figures [-- DEVICES]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use latchkey::pairing::{self, DeviceInfo};

fn main() -> anyhow::Result<()> {
    let devices: usize = std::env::args().nth(1).map_or(Ok(10_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (store, master) = latchkey::open_store(&data, None)?;
    let now = 1_768_300_800;
    let filled = Instant::now();
    for batch in 0..devices.div_ceil(500) {
        let master = &master;
        store.write_blocking(|tx| {
            for i in batch * 500..((batch + 1) * 500).min(devices) {
                let t = pairing::create_token(tx, now, 300).unwrap();
                let info = DeviceInfo::validate(&format!("Phone {i}"), "mobile").unwrap();
                pairing::redeem(tx, master, t.token.expose(), &info, now).unwrap();
            }
            Ok(())
        })?;
    }
    println!(
        "{devices} devices paired in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    // As a daemon at rest would have it: the WAL checkpointed into the file.
    store.read_blocking(|c| {
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    })?;
    let db = std::fs::metadata(store.path())?.len();
    println!("registry: {db} bytes ({:.2} MiB)", db as f64 / 1048576.0);
    for run in 1..=3 {
        let target = dir.path().join(format!("run{run}.backup"));
        let t = Instant::now();
        let snap = latchkey::backup::snapshot(&store, &master, now, &latchkey::backup::dir(&data))?;
        let made = t.elapsed();
        let bytes = latchkey::backup::write(&snap, &target)?;
        let total = t.elapsed();
        println!(
            "run {run}: snapshot {:.0} ms, file written {:.0} ms in all, {bytes} bytes ({:.2} MiB)",
            made.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0,
            bytes as f64 / 1048576.0
        );
    }
    Ok(())
}
