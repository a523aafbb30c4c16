//! How a gateway is found on the LAN (CONTRACT §2 "Discovery"): a DNS-SD service over mDNS
//! whose TXT record names the gateway. Phones and nodes browse for it when the address they
//! stored stops answering, and trust only the gateway they paired with.

/// The DNS-SD service type, with the mDNS domain.
pub const SERVICE_TYPE: &str = "_latchkey._tcp.local.";
/// TXT key: the gateway id (as in the pair answer and the QR payload).
pub const TXT_ID: &str = "id";
/// TXT key: this record's format version.
pub const TXT_VERSION: &str = "v";
/// The TXT format version a gateway announces.
pub const VERSION: &str = "1";

/// Whether a record whose TXT `id` is `announced` is the gateway `paired` with: the same id,
/// exactly. Any other record (another gateway, a stranger, no id) is ignored, so nobody on the
/// LAN can redirect a phone or node by announcing the service type.
pub fn is_paired_gateway(announced: Option<&str>, paired: &str) -> bool {
    !paired.is_empty() && announced == Some(paired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_paired_id_counts() {
        assert!(is_paired_gateway(Some("abc123"), "abc123"));
        assert!(!is_paired_gateway(Some("abc124"), "abc123"));
        assert!(!is_paired_gateway(Some("ABC123"), "abc123"));
        assert!(!is_paired_gateway(None, "abc123"));
        assert!(!is_paired_gateway(Some(""), ""));
    }
}
