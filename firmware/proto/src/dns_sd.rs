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

/// Where a gateway announced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// An address of the gateway (IPv4 first, as the QR payload has it).
    pub ip: core::net::IpAddr,
    /// Its HTTP port (the SRV record's).
    pub port: u16,
}

/// Whether browsing is allowed here: not when `LATCHKEY_MDNS` is `off`, `false` or `0` (tests
/// outside a private network namespace, networks that forbid multicast).
#[cfg(feature = "mdns")]
pub fn browsing_enabled() -> bool {
    !std::env::var("LATCHKEY_MDNS")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "off" | "false" | "0"))
}

/// Browses for the gateway `gateway_id` for at most `limit`; records with another id are
/// skipped ([`is_paired_gateway`]). Blocking: async callers use their runtime's blocking pool.
#[cfg(feature = "mdns")]
pub fn find(
    gateway_id: &str,
    limit: std::time::Duration,
) -> Result<Option<Found>, std::string::String> {
    use std::string::ToString;
    use std::vec::Vec;
    let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| e.to_string())?;
    let events = daemon.browse(SERVICE_TYPE).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + limit;
    let mut found = None;
    while let Ok(ev) = events.recv_deadline(deadline) {
        let mdns_sd::ServiceEvent::ServiceResolved(s) = ev else {
            continue;
        };
        if !is_paired_gateway(s.get_property_val_str(TXT_ID), gateway_id) {
            continue;
        }
        let mut ips: Vec<core::net::IpAddr> = s.addresses.iter().map(|a| a.to_ip_addr()).collect();
        ips.sort_by_key(|ip| !ip.is_ipv4());
        if let Some(ip) = ips.first() {
            found = Some(Found {
                ip: *ip,
                port: s.port,
            });
            break;
        }
    }
    let _ = daemon.shutdown();
    Ok(found)
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
