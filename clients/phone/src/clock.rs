//! The phone's wall clock and the contract's time formats. Only the command layer reads the
//! clock; the flows take `now` (Unix seconds) from their caller, so tests set the time.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Unix seconds now (0 for a clock set before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `t` as RFC 3339 (the contract's `*_at` fields).
pub fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// An RFC 3339 `*_at` field as Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(rfc3339(1_768_300_800), "2026-01-13T10:40:00Z");
        assert_eq!(parse_rfc3339("2026-01-13T10:40:00Z"), Some(1_768_300_800));
        assert_eq!(
            parse_rfc3339("2026-01-13T11:40:00+01:00"),
            Some(1_768_300_800)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
