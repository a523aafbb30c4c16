//! Seed 004's provisioning request, `POST /api/v1/provision`, and its validation.
//!
//! Exactly these fields, each required, nothing else (an unknown field is an error naming it, so a
//! phone app with a typo learns at once instead of provisioning half a node):
//! `{"wifi_ssid","wifi_password","room","command_center_url","household_id","node_id","provisioning_token"}`.

use alloc::string::String;
use core::fmt;

use serde::Deserialize;
use zeroize::Zeroizing;

/// Largest request body the AP API reads (a valid request is well under 1 KiB).
pub const MAX_BODY: usize = 2048;
/// Wi-Fi SSID: 1 to 32 bytes (IEEE 802.11).
pub const MAX_SSID: usize = 32;
/// WPA2 passphrase: 8 to 63 characters, or empty for an open network.
pub const MIN_PASSWORD: usize = 8;
/// Longest WPA2 passphrase (64 would be a raw hex PSK, which seed 004's app never sends).
pub const MAX_PASSWORD: usize = 63;
/// Room names follow CONTRACT §2's name rules: at most 64 characters.
pub const MAX_ROOM: usize = 64;
/// Longest `command_center_url`.
pub const MAX_URL: usize = 200;
/// Longest `household_id` (NODES.md §3.1).
pub const MAX_HOUSEHOLD: usize = 64;
/// `prov_` + 43 characters of unpadded base64url (NODES.md §2).
pub const TOKEN_LEN: usize = 48;

/// A validated provisioning request. `Debug` never shows the password or the token.
#[derive(Clone)]
pub struct ProvisionRequest {
    /// Network to join.
    pub wifi_ssid: String,
    /// Its passphrase (empty: open network).
    pub wifi_password: Zeroizing<String>,
    /// The room the node is in.
    pub room: String,
    /// The gateway's base URL, `http://host:port`.
    pub command_center_url: String,
    /// The household (opaque to the node).
    pub household_id: String,
    /// The node's id, made by the gateway with the token.
    pub node_id: String,
    /// The one-time provisioning token.
    pub provisioning_token: Zeroizing<String>,
}

impl fmt::Debug for ProvisionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisionRequest")
            .field("wifi_ssid", &self.wifi_ssid)
            .field("room", &self.room)
            .field("command_center_url", &self.command_center_url)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    wifi_ssid: String,
    wifi_password: Zeroizing<String>,
    room: String,
    command_center_url: String,
    household_id: String,
    node_id: String,
    provisioning_token: Zeroizing<String>,
}

/// Why a provisioning request was refused (answered 400 `BAD_REQUEST`, or 413).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionError {
    /// Over [`MAX_BODY`].
    TooLarge,
    /// Not a JSON object with exactly the seed's fields; the text names what is wrong.
    Malformed(String),
    /// A field's value breaks its rule; names the field, never its value.
    Field(&'static str, &'static str),
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProvisionError::TooLarge => write!(f, "request body over {MAX_BODY} bytes"),
            ProvisionError::Malformed(why) => write!(f, "malformed request: {why}"),
            ProvisionError::Field(field, rule) => write!(f, "{field}: {rule}"),
        }
    }
}

impl ProvisionRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ProvisionError> {
        if body.len() > MAX_BODY {
            return Err(ProvisionError::TooLarge);
        }
        let w: Wire = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names the field ("missing field `room`", "unknown field `x`")
            // and never echoes a string value.
            let mut why = String::new();
            let _ = fmt::write(&mut why, format_args!("{e}"));
            ProvisionError::Malformed(why)
        })?;
        check_ssid(&w.wifi_ssid)?;
        check_password(&w.wifi_password)?;
        check_name("room", &w.room, MAX_ROOM)?;
        check_url(&w.command_center_url)?;
        if w.household_id.chars().count() > MAX_HOUSEHOLD || has_control(&w.household_id) {
            return Err(ProvisionError::Field(
                "household_id",
                "at most 64 characters, no control characters",
            ));
        }
        if !is_uuid(&w.node_id) {
            return Err(ProvisionError::Field(
                "node_id",
                "must be a lower-case hyphenated UUID",
            ));
        }
        if !is_token(&w.provisioning_token) {
            return Err(ProvisionError::Field(
                "provisioning_token",
                "must be prov_ and 43 base64url characters",
            ));
        }
        Ok(Self {
            wifi_ssid: w.wifi_ssid,
            wifi_password: w.wifi_password,
            room: String::from(w.room.trim()),
            command_center_url: String::from(w.command_center_url.trim_end_matches('/')),
            household_id: w.household_id,
            node_id: w.node_id,
            provisioning_token: w.provisioning_token,
        })
    }
}

fn check_ssid(s: &str) -> Result<(), ProvisionError> {
    if s.is_empty() || s.len() > MAX_SSID {
        return Err(ProvisionError::Field("wifi_ssid", "1 to 32 bytes"));
    }
    Ok(())
}

fn check_password(p: &str) -> Result<(), ProvisionError> {
    let n = p.chars().count();
    let printable = p.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !(n == 0 || (MIN_PASSWORD..=MAX_PASSWORD).contains(&n)) || !printable {
        return Err(ProvisionError::Field(
            "wifi_password",
            "empty (open network) or 8 to 63 printable ASCII characters",
        ));
    }
    Ok(())
}

/// CONTRACT §2's name rule: trimmed, 1..=max characters, no control or format characters.
fn check_name(field: &'static str, s: &str, max: usize) -> Result<(), ProvisionError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || has_control(t) {
        return Err(ProvisionError::Field(
            field,
            "1 to 64 characters, no control or format characters",
        ));
    }
    Ok(())
}

fn has_control(s: &str) -> bool {
    s.chars().any(|c| {
        c.is_control()
            // Unicode format characters that matter for spoofing: bidi controls, zero-width.
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    })
}

fn check_url(u: &str) -> Result<(), ProvisionError> {
    // Plain http on the LAN (the gateway serves no TLS); host and optional port, no path needed.
    let rest = u.strip_prefix("http://");
    let ok = u.len() <= MAX_URL
        && rest.is_some_and(|r| {
            let host = r.split('/').next().unwrap_or("");
            !host.is_empty() && r.bytes().all(|b| b.is_ascii_graphic())
        });
    if !ok {
        return Err(ProvisionError::Field(
            "command_center_url",
            "must be http://host[:port], at most 200 characters",
        ));
    }
    Ok(())
}

/// A lower-case hyphenated UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && s.starts_with("prov_")
        && s.bytes()
            .skip(5)
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// One valid request for every module's tests.
#[cfg(test)]
pub(crate) mod fixture {
    use super::ProvisionRequest;

    /// A valid body with this Wi-Fi password.
    pub fn body(password: &str) -> std::vec::Vec<u8> {
        serde_json::json!({
            "wifi_ssid": "HomeWifi", "wifi_password": password, "room": "kitchen",
            "command_center_url": "http://10.0.0.2:8080", "household_id": "h",
            "node_id": "550e8400-e29b-41d4-a716-446655440000",
            "provisioning_token": "prov_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        })
        .to_string()
        .into_bytes()
    }

    /// The parsed request.
    pub fn request(password: &str) -> ProvisionRequest {
        ProvisionRequest::parse(&body(password)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    pub(crate) const NODE_ID: &str = "550e8400-e29b-41d4-a716-446655440000";
    pub(crate) const TOKEN: &str = "prov_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn body_with(field: &str, value: serde_json::Value) -> alloc::vec::Vec<u8> {
        let mut v = serde_json::json!({
            "wifi_ssid": "HomeWifi",
            "wifi_password": "secret-pass",
            "room": "kitchen",
            "command_center_url": "http://192.168.1.50:8002",
            "household_id": "house-1",
            "node_id": NODE_ID,
            "provisioning_token": TOKEN,
        });
        if value.is_null() {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = value;
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn accepts_seed_004s_request() {
        let r = ProvisionRequest::parse(&body_with("room", "kitchen".into())).unwrap();
        assert_eq!(r.wifi_ssid, "HomeWifi");
        assert_eq!(r.wifi_password.as_str(), "secret-pass");
        assert_eq!(r.command_center_url, "http://192.168.1.50:8002");
        assert_eq!(r.node_id, NODE_ID);
        assert_eq!(r.provisioning_token.as_str(), TOKEN);
    }

    #[test]
    fn debug_hides_password_and_token() {
        let r = ProvisionRequest::parse(&body_with("room", "kitchen".into())).unwrap();
        let d = format!("{r:?}");
        assert!(!d.contains("secret-pass") && !d.contains(TOKEN), "{d}");
    }

    #[test]
    fn every_field_is_required() {
        for f in [
            "wifi_ssid",
            "wifi_password",
            "room",
            "command_center_url",
            "household_id",
            "node_id",
            "provisioning_token",
        ] {
            let e = ProvisionRequest::parse(&body_with(f, serde_json::Value::Null)).unwrap_err();
            assert!(e.to_string().contains(f), "{f}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = ProvisionRequest::parse(&body_with("admin_key", "x".into())).unwrap_err();
        assert!(e.to_string().contains("admin_key"), "{e}");
    }

    #[test]
    fn each_field_rule_names_its_field_and_not_the_value() {
        let long = "x".repeat(65);
        let cases: [(&str, serde_json::Value); 11] = [
            ("wifi_ssid", "".into()),
            ("wifi_ssid", "s".repeat(33).into()),
            ("wifi_password", "short".into()),
            ("wifi_password", "p".repeat(64).into()),
            ("room", "   ".into()),
            ("room", "kit\u{202e}chen".into()),
            ("room", long.clone().into()),
            ("command_center_url", "ftp://gateway".into()),
            ("household_id", long.into()),
            ("node_id", "550E8400-E29B-41D4-A716-446655440000".into()),
            ("provisioning_token", "prov_short".into()),
        ];
        for (field, value) in cases {
            let shown = value.to_string();
            let e = ProvisionRequest::parse(&body_with(field, value)).unwrap_err();
            assert!(
                matches!(e, ProvisionError::Field(f, _) if f == field),
                "{field}: {e:?}"
            );
            assert!(!e.to_string().contains(shown.trim_matches('"')) || shown.len() < 4);
        }
    }

    #[test]
    fn open_networks_and_trailing_slashes_are_fine() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&body_with("wifi_password", "".into())).unwrap();
        v["command_center_url"] = "http://gw.local:8080/".into();
        let r = ProvisionRequest::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(r.wifi_password.is_empty());
        assert_eq!(r.command_center_url, "http://gw.local:8080");
    }

    #[test]
    fn oversized_and_non_json_bodies_are_refused() {
        assert_eq!(
            ProvisionRequest::parse(&[b' '; MAX_BODY + 1]).unwrap_err(),
            ProvisionError::TooLarge
        );
        assert!(matches!(
            ProvisionRequest::parse(b"{\"wifi_ssid\":").unwrap_err(),
            ProvisionError::Malformed(_)
        ));
        assert!(ProvisionRequest::parse(b"[]").is_err());
    }
}
