//! QR rendering for the pairing payload: inline SVG for the web page, Unicode half blocks for
//! a terminal on a headless Pi.

use qrcode::render::{svg, unicode};
use qrcode::{EcLevel, QrCode};

#[derive(Debug, thiserror::Error)]
#[error("payload does not fit in a QR code")]
pub struct QrError;

fn code(payload: &str) -> Result<QrCode, QrError> {
    // Level M survives a smudged screen and keeps the symbol small enough to scan at arm's length.
    QrCode::with_error_correction_level(payload.as_bytes(), EcLevel::M).map_err(|_| QrError)
}

pub fn svg(payload: &str) -> Result<String, QrError> {
    Ok(code(payload)?
        .render::<svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

pub fn terminal(payload: &str) -> Result<String, QrError> {
    Ok(code(payload)?
        .render::<unicode::Dense1x2>()
        // Dark modules as light-on-dark terminals expect: invert so scanners see dark-on-light.
        .dark_color(unicode::Dense1x2::Light)
        .light_color(unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_is_scalable_markup() {
        let s = svg(r#"{"v":1}"#).unwrap();
        assert!(
            s.contains("<svg") && s.contains("viewBox"),
            "{}",
            &s[..100.min(s.len())]
        );
        assert!(terminal("x").unwrap().contains('█') || terminal("x").unwrap().contains('▀'));
    }
}
