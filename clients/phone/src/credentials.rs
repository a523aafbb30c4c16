//! The phone's stored credentials: created 0600, written atomically, never printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::{SecretBytes, SecretString};
use crate::tool::AccessTool;
use crate::vehicle::VehicleKey;

/// Largest credentials file we read; ours are a few hundred bytes.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub device_id: String,
    #[serde(with = "secret_string")]
    pub device_key: SecretString,
    /// Base32, as the gateway issued it.
    #[serde(with = "secret_string")]
    pub totp_secret: SecretString,
    pub gateway_host: String,
    pub gateway_port: u16,
    pub gateway_id: String,
    pub ws_url: String,
    pub name: String,
    /// The phone's P-256 private key (std base64 of the 32-byte scalar); absent in credentials
    /// written before door protocol version 2 (`phone unlock` then makes one).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_secret_string"
    )]
    pub phone_key: Option<SecretString>,
    /// The access tool the gateway issued for that key (public data), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_tool: Option<AccessTool>,
    /// Vehicle keys (`phone pair-vehicle`), public data like the tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vehicle_keys: Vec<VehicleKey>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("device_id", &self.device_id)
            .field(
                "gateway",
                &format_args!("{}:{}", self.gateway_host, self.gateway_port),
            )
            .field("gateway_id", &self.gateway_id)
            .field(
                "access_tool",
                &self.access_tool.as_ref().map(|t| &t.access_tool_id),
            )
            .finish_non_exhaustive()
    }
}

mod secret_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::secret::SecretString;

    pub fn serialize<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(SecretString::new)
    }
}

mod opt_secret_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::secret::SecretString;

    // Only called for `Some` (the field is skipped when `None`).
    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(v.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Option::<String>::deserialize(d).map(|o| o.map(SecretString::new))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials {path} are not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no credentials at {0}; pair first with `latchkey phone pair`")]
    Missing(PathBuf),
}

impl Credentials {
    /// The raw TOTP secret (base32-decoded).
    pub fn totp_bytes(&self) -> Option<SecretBytes> {
        let s = self
            .totp_secret
            .expose()
            .trim_end_matches('=')
            .to_ascii_uppercase();
        data_encoding::BASE32_NOPAD
            .decode(s.as_bytes())
            .ok()
            .map(SecretBytes::new)
    }

    pub fn base_url(&self) -> String {
        if self.gateway_host.contains(':') {
            format!("http://[{}]:{}", self.gateway_host, self.gateway_port)
        } else {
            format!("http://{}:{}", self.gateway_host, self.gateway_port)
        }
    }

    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        use std::io::Read;
        let io = |source| CredentialsError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CredentialsError::Missing(path.to_owned()))
            }
            Err(e) => return Err(io(e)),
        };
        let mut text = String::new();
        file.take(MAX_FILE).read_to_string(&mut text).map_err(io)?;
        serde_json::from_str(&text).map_err(|e| CredentialsError::Invalid {
            path: path.to_owned(),
            // serde's message names the field; the file's contents are never echoed.
            message: format!("line {} column {}", e.line(), e.column()),
        })
    }

    /// Writes atomically: a 0600 temp file beside the target, fsynced, then renamed.
    pub fn save(&self, path: &Path) -> Result<(), CredentialsError> {
        let io = |source| CredentialsError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| CredentialsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Where `phone listen` keeps the last event seq it saw: beside the credentials.
    pub fn seq_path(path: &Path) -> PathBuf {
        beside(path, ".seq")
    }

    /// Where `phone unlock` keeps the last TOTP step it sent: beside the credentials.
    pub fn step_path(path: &Path) -> PathBuf {
        beside(path, ".step")
    }
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Writes a number next to the credentials (write-then-rename, so a crash never leaves a
/// torn number).
fn store_number(target: &Path, n: u64) -> std::io::Result<()> {
    let mut tmp = target.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{n}\n"))?;
    std::fs::rename(tmp, target)
}

fn load_number(target: &Path) -> Option<u64> {
    std::fs::read_to_string(target)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The last TOTP step sent to this gateway, if any.
pub fn load_step(path: &Path) -> Option<u64> {
    load_number(&Credentials::step_path(path))
}

pub fn store_step(path: &Path, step: u64) -> std::io::Result<()> {
    store_number(&Credentials::step_path(path), step)
}

/// `$XDG_CONFIG_HOME/latchkey/phone.json`, else `~/.config/latchkey/phone.json`, else
/// `./latchkey-phone.json`.
pub fn default_path() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("latchkey/phone.json");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".config/latchkey/phone.json");
    }
    PathBuf::from("latchkey-phone.json")
}

/// Reads the last seen seq (0 if none).
pub fn load_seq(path: &Path) -> u64 {
    load_number(&Credentials::seq_path(path)).unwrap_or(0)
}

/// Whether a seq was ever recorded for these credentials.
pub fn has_seq(path: &Path) -> bool {
    load_number(&Credentials::seq_path(path)).is_some()
}

/// Records the last seen seq.
pub fn store_seq(path: &Path, seq: u64) -> std::io::Result<()> {
    store_number(&Credentials::seq_path(path), seq)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn sample() -> Credentials {
        Credentials {
            device_id: "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b".into(),
            device_key: SecretString::new("dev_secretkey".into()),
            totp_secret: SecretString::new("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into()),
            gateway_host: "192.168.1.42".into(),
            gateway_port: 8080,
            gateway_id: "gw".into(),
            ws_url: "ws://192.168.1.42:8080/ws".into(),
            name: "Pixel".into(),
            phone_key: None,
            access_tool: None,
            vehicle_keys: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_0600_and_round_trips_without_printing_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/phone.json");
        let c = sample();
        c.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Credentials::load(&path).unwrap();
        assert_eq!(back.device_key.expose(), "dev_secretkey");
        assert_eq!(back.totp_bytes().unwrap().expose(), b"12345678901234567890");
        let dbg = format!("{back:?}");
        assert!(
            !dbg.contains("dev_secretkey") && !dbg.contains("GEZDGNBV"),
            "{dbg}"
        );
        assert_eq!(load_seq(&path), 0);
        assert!(!has_seq(&path));
        store_seq(&path, 42).unwrap();
        assert_eq!(load_seq(&path), 42);
        assert!(has_seq(&path));
        assert_eq!(load_step(&path), None);
        store_step(&path, 7).unwrap();
        assert_eq!(load_step(&path), Some(7));
        assert!(matches!(
            Credentials::load(&dir.path().join("none.json")),
            Err(CredentialsError::Missing(_))
        ));
        // A phone key survives the round trip and never prints.
        let mut c = sample();
        c.phone_key = Some(crate::tool::generate_key().unwrap());
        c.save(&path).unwrap();
        let back = Credentials::load(&path).unwrap();
        let key = back.phone_key.as_ref().unwrap().expose().to_owned();
        assert_eq!(Some(key.as_str()), c.phone_key.as_ref().map(|k| k.expose()));
        assert!(!format!("{back:?}").contains(&key));
        std::fs::write(&path, "{\"deviceKey\": \"dev_leak\"").unwrap();
        let err = Credentials::load(&path).unwrap_err().to_string();
        assert!(!err.contains("dev_leak"), "{err}");
    }
}
