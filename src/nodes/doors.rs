//! Doors on nodes: a registered door node is an endpoint (id: a slug of its name or room,
//! unique, editable), beside the `[[endpoint]]`s of the configuration. Endpoint resolution is
//! one function over config + registry, so the BLE gate, the admin's test open and the phone's
//! endpoint list all see the same doors.

use rusqlite::{Connection, OptionalExtension};

use crate::access::endpoint::Endpoints;
use crate::config::{ActionConfig, EndpointConfig};
use crate::store::StoreError;

/// A door node's relay pulse when nothing else is configured.
pub const DEFAULT_PULSE_MS: u64 = 3000;
/// Endpoint ids: `[a-z0-9_-]{1,32}` (the config's rule).
const MAX_ID_LEN: usize = 32;

pub fn valid_endpoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `"Front Door"` → `front-door`; the room when there is no name; `door` when neither gives
/// any ASCII letter or digit.
pub fn slug(name: &str, room: &str) -> String {
    let source = if name.trim().is_empty() { room } else { name };
    let mut out = String::new();
    for c in source.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.truncate(MAX_ID_LEN - 3);
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "door".to_owned()
    } else {
        out
    }
}

/// Whether `id` is used by the configuration or another node.
pub fn endpoint_taken(
    conn: &Connection,
    id: &str,
    reserved: &[String],
) -> Result<bool, StoreError> {
    if reserved.iter().any(|r| r == id) {
        return Ok(true);
    }
    Ok(conn
        .query_row("SELECT 1 FROM nodes WHERE endpoint_id = ?1", [id], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

/// `base`, else `base-2`, `base-3`, … whichever is free first.
pub fn unique_endpoint_id(
    conn: &Connection,
    base: &str,
    reserved: &[String],
) -> Result<String, StoreError> {
    if !endpoint_taken(conn, base, reserved)? {
        return Ok(base.to_owned());
    }
    for n in 2u32.. {
        let candidate = format!("{base}-{n}");
        if !endpoint_taken(conn, &candidate, reserved)? {
            return Ok(candidate);
        }
    }
    Err(StoreError::Corrupt("no free endpoint id"))
}

/// Every endpoint: the configuration's first (in its order; the first is the default), then
/// each registered, unrevoked door node whose id the configuration does not use.
pub fn endpoints(conn: &Connection, config: &[EndpointConfig]) -> Result<Endpoints, StoreError> {
    let mut eps = Endpoints::from_config(config);
    let mut stmt = conn.prepare_cached(
        "SELECT endpoint_id, id, name, room FROM nodes
         WHERE endpoint_id IS NOT NULL AND registered_at IS NOT NULL AND revoked_at IS NULL
         ORDER BY registered_at, rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (id, node_id, name, room) = row?;
        if config.iter().any(|c| c.id == id) {
            continue;
        }
        let label = [name, room]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_else(|| id.clone());
        eps.push_open(
            id,
            label,
            ActionConfig::Node {
                node_id,
                pulse_ms: DEFAULT_PULSE_MS,
            },
        );
    }
    Ok(eps)
}

/// The configuration's endpoint ids, which node doors must not take.
pub fn reserved_ids(config: &[EndpointConfig]) -> Vec<String> {
    config.iter().map(|e| e.id.clone()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("Front Door", "hall"), "front-door");
        assert_eq!(slug("  ", "Küche 2"), "k-che-2");
        assert_eq!(slug("", ""), "door");
        assert_eq!(slug("Tür", ""), "t-r");
        assert_eq!(slug("!!!", ""), "door");
        assert!(slug(&"a".repeat(100), "").len() <= 29);
        assert!(valid_endpoint_id(&slug("Garage (side)", "")));
    }
}
