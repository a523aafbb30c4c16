//! Pairing from the phone's side: read the QR (payload JSON or a picture of it), redeem the
//! token, keep what the gateway answered.

use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use super::Credentials;
use crate::secret::SecretString;

/// Largest QR image we decode (a phone-camera still, generously).
const MAX_IMAGE_BYTES: u64 = 32 * 1024 * 1024;
/// Largest payload we accept (QR version 40 holds under 3 KB).
const MAX_PAYLOAD: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PhonePairError {
    #[error("QR image {0}: {1}")]
    Image(String, String),
    #[error("no QR code found in the image")]
    NoQr,
    #[error("QR payload is not a latchkey pairing code: {0}")]
    Payload(String),
    #[error("pairing code expired at {0}; ask for a new one")]
    Expired(String),
    #[error("gateway refused pairing: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("gateway unreachable at {0}: {1}")]
    Unreachable(String, String),
    #[error("gateway answered something unexpected: {0}")]
    Protocol(String),
}

/// The QR payload (CONTRACT §2); unknown fields are allowed ("more fields may follow").
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QrPayload {
    pub v: u32,
    pub host: String,
    pub port: u16,
    pub pair_token: String,
    pub expires: i64,
}

impl std::fmt::Debug for QrPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrPayload")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

pub fn parse_payload(text: &str) -> Result<QrPayload, PhonePairError> {
    if text.len() > MAX_PAYLOAD {
        return Err(PhonePairError::Payload("longer than 4 KiB".into()));
    }
    let p: QrPayload = serde_json::from_str(text.trim()).map_err(|e| {
        PhonePairError::Payload(format!(
            "{} (line {}, column {})",
            e.classify_name(),
            e.line(),
            e.column()
        ))
    })?;
    if p.v != 1 {
        return Err(PhonePairError::Payload(format!(
            "version {} is not supported",
            p.v
        )));
    }
    if p.host.is_empty() || p.host.len() > 253 || p.pair_token.is_empty() {
        return Err(PhonePairError::Payload("host or pairToken missing".into()));
    }
    Ok(p)
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Decodes the first QR code in a PNG (or any format the `image` crate was built with).
pub fn decode_qr_image(path: &Path) -> Result<String, PhonePairError> {
    let shown = path.display().to_string();
    let meta =
        std::fs::metadata(path).map_err(|e| PhonePairError::Image(shown.clone(), e.to_string()))?;
    if meta.len() > MAX_IMAGE_BYTES {
        return Err(PhonePairError::Image(shown, "larger than 32 MiB".into()));
    }
    let img = image::open(path).map_err(|e| PhonePairError::Image(shown, e.to_string()))?;
    decode_qr(&img.to_luma8())
}

pub fn decode_qr(gray: &image::GrayImage) -> Result<String, PhonePairError> {
    let mut prepared = rqrr::PreparedImage::prepare(gray.clone());
    for grid in prepared.detect_grids() {
        if let Ok((_, content)) = grid.decode() {
            return Ok(content);
        }
    }
    Err(PhonePairError::NoQr)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PairAnswer {
    device_id: String,
    device_key: String,
    totp: TotpAnswer,
    gateway_id: String,
    ws_url: String,
}

#[derive(Deserialize)]
struct TotpAnswer {
    secret: String,
}

/// Redeems the payload's token; the gateway's answer becomes the phone's credentials.
pub async fn redeem(
    http: &reqwest::Client,
    payload: &QrPayload,
    name: &str,
    kind: &str,
    now: i64,
) -> Result<Credentials, PhonePairError> {
    if payload.expires <= now {
        return Err(PhonePairError::Expired(crate::clock::rfc3339(
            payload.expires,
        )));
    }
    let base = if payload.host.contains(':') {
        format!("http://[{}]:{}", payload.host, payload.port)
    } else {
        format!("http://{}:{}", payload.host, payload.port)
    };
    let resp = http
        .post(format!("{base}/api/pair"))
        .json(&json!({ "pairToken": payload.pair_token, "deviceInfo": { "name": name, "type": kind } }))
        .send()
        .await
        .map_err(|e| PhonePairError::Unreachable(base.clone(), e.without_url().to_string()))?;
    // A capped read: a hostile host cannot make the phone buffer an endless body.
    let crate::provisioning::Answer { status, body: v } =
        crate::provisioning::answer(resp)
            .await
            .map_err(|e| PhonePairError::Unreachable(base.clone(), e.without_url().to_string()))?;
    if !(200..300).contains(&status) {
        return Err(PhonePairError::Refused {
            code: v["error"]["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
            message: v["error"]["message"]
                .as_str()
                .map_or_else(|| status.to_string(), str::to_owned),
        });
    }
    let a: PairAnswer = serde_json::from_value(v)
        .map_err(|e| PhonePairError::Protocol(e.classify_name().to_owned()))?;
    Ok(Credentials {
        device_id: a.device_id,
        device_key: SecretString::new(a.device_key),
        totp_secret: SecretString::new(a.totp.secret),
        gateway_host: payload.host.clone(),
        gateway_port: payload.port,
        gateway_id: a.gateway_id,
        ws_url: a.ws_url,
        name: name.to_owned(),
        phone_key: None,
        access_tool: None,
        vehicle_keys: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_parsing() {
        let p = parse_payload(
            r#"{"v":1,"host":"192.168.1.42","port":8080,"pairToken":"pt_x","expires":1736764800,"extra":true}"#,
        )
        .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.expires),
            ("192.168.1.42", 8080, 1_736_764_800)
        );
        assert!(!format!("{p:?}").contains("pt_x"));
        assert!(parse_payload("{}").is_err());
        assert!(
            parse_payload(r#"{"v":2,"host":"h","port":1,"pairToken":"t","expires":1}"#).is_err()
        );
        assert!(parse_payload(&"x".repeat(5000)).is_err());
    }

    #[test]
    fn decodes_our_own_qr() {
        let payload = r#"{"v":1,"host":"10.0.0.2","port":8080,"pairToken":"pt_abc","expires":1}"#;
        let code = qrcode::QrCode::new(payload.as_bytes()).unwrap();
        let (w, colors) = (code.width() as u32, code.to_colors());
        let (scale, quiet) = (6u32, 4u32);
        let side = (w + 2 * quiet) * scale;
        let img = image::GrayImage::from_fn(side, side, |x, y| {
            let (mx, my) = (x / scale, y / scale);
            let dark = mx >= quiet
                && my >= quiet
                && mx < w + quiet
                && my < w + quiet
                && colors[((my - quiet) * w + (mx - quiet)) as usize] == qrcode::Color::Dark;
            image::Luma([if dark { 0 } else { 255 }])
        });
        assert_eq!(decode_qr(&img).unwrap(), payload);
        let blank = image::GrayImage::from_pixel(50, 50, image::Luma([255]));
        assert!(matches!(decode_qr(&blank), Err(PhonePairError::NoQr)));
    }
}
