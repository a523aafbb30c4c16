//! Display names that people give devices (and nodes): text shown in lists, logs and the UI,
//! so nothing that can hide, reorder or break lines (CONTRACT §2).

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Characters, not bytes.
pub const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must be 1 to 64 characters")]
    Length,
    /// Control (Cc), format (Cf: bidi overrides, zero-width characters) or line/paragraph
    /// separators (Zl, Zp).
    #[error("must not contain control, format or separator characters")]
    Invisible,
}

/// Trims `raw` and checks it is a fit name: 1 to 64 characters, none of them control, format
/// or line/paragraph separator characters.
pub fn display_name(raw: &str) -> Result<&str, NameError> {
    let name = raw.trim();
    if name.chars().any(|c| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    }) {
        return Err(NameError::Invisible);
    }
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::Length);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_bounds_in_characters() {
        assert_eq!(display_name("  Pixel 7 "), Ok("Pixel 7"));
        assert_eq!(display_name(&"é".repeat(64)), Ok("é".repeat(64).as_str()));
        assert_eq!(display_name(&"é".repeat(65)), Err(NameError::Length));
        assert_eq!(display_name("   "), Err(NameError::Length));
        assert_eq!(display_name("Küche 🚪"), Ok("Küche 🚪"));
    }

    #[test]
    fn refuses_what_hides_or_reorders_text() {
        for bad in [
            "a\u{7}b",
            "evil\u{202E}gnp.exe",
            "\u{200B}",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{FEFF}b",
            "a\u{2066}b",
            "a\nb",
        ] {
            assert_eq!(display_name(bad), Err(NameError::Invisible), "{bad:?}");
        }
    }
}
