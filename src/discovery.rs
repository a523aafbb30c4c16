//! DNS-SD over mDNS (CONTRACT §2 "Discovery"): the gateway announces `_latchkey._tcp` with
//! `id=<gatewayId>` in its TXT record, on the interfaces it listens on only. A specific listen
//! address selects the interface that holds it (127.0.0.1: loopback alone); an unspecified one
//! selects every interface of that family except loopback (the LAN). Phones and nodes browse
//! for the id they paired with when their stored address stops answering.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};

pub use latchkey_proto::dns_sd::SERVICE_TYPE;
use latchkey_proto::dns_sd::{TXT_ID, TXT_VERSION, VERSION};

#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct DiscoveryError(String);

impl From<mdns_sd::Error> for DiscoveryError {
    fn from(e: mdns_sd::Error) -> Self {
        Self(e.to_string())
    }
}

/// A live announcement; dropping it says goodbye and stops the mDNS thread.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Goodbye packets (TTL 0) so browsers forget us at once, then the thread ends.
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// The interface selections for a listen address, applied in order (later ones win).
fn selections(listen: IpAddr) -> Vec<(IfKind, bool)> {
    if listen.is_unspecified() {
        let family = if listen.is_ipv4() {
            IfKind::IPv4
        } else {
            IfKind::All
        };
        vec![
            (IfKind::All, false),
            (family, true),
            (IfKind::LoopbackV4, false),
            (IfKind::LoopbackV6, false),
        ]
    } else {
        vec![(IfKind::All, false), (IfKind::Addr(listen), true)]
    }
}

/// The instance name: unique per gateway, readable in a service browser.
pub fn instance_name(name: &str, gateway_id: &str) -> String {
    let short: String = gateway_id.chars().take(8).collect();
    let name: String = name.chars().filter(|c| !c.is_control()).take(40).collect();
    format!("{name} {short}")
}

/// Starts announcing the gateway on the interfaces `listen` covers; `port` is the bound one.
pub fn announce(
    name: &str,
    gateway_id: &str,
    listen: SocketAddr,
    port: u16,
) -> Result<Announcer, DiscoveryError> {
    let daemon = ServiceDaemon::new()?;
    for (kind, on) in selections(listen.ip()) {
        if on {
            daemon.enable_interface(kind)?;
        } else {
            daemon.disable_interface(kind)?;
        }
    }
    let host = format!(
        "latchkey-{}.local.",
        gateway_id.chars().take(12).collect::<String>()
    );
    let port_txt = port.to_string();
    let txt = [
        (TXT_ID, gateway_id),
        (TXT_VERSION, VERSION),
        ("port", port_txt.as_str()),
    ];
    let instance = instance_name(name, gateway_id);
    let info = if listen.ip().is_unspecified() {
        // The addresses of whichever selected interfaces exist, kept current by mdns-sd.
        ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", port, &txt[..])?.enable_addr_auto()
    } else {
        ServiceInfo::new(SERVICE_TYPE, &instance, &host, listen.ip(), port, &txt[..])?
    };
    let fullname = info.get_fullname().to_owned();
    daemon.register(info)?;
    Ok(Announcer { daemon, fullname })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_selects_interfaces() {
        let lo = selections("127.0.0.1".parse().unwrap());
        assert!(matches!(lo[0], (IfKind::All, false)));
        assert!(matches!(lo[1], (IfKind::Addr(ip), true) if ip.is_loopback()));
        assert_eq!(lo.len(), 2, "loopback alone");
        let any = selections("0.0.0.0".parse().unwrap());
        assert!(matches!(any[1], (IfKind::IPv4, true)));
        assert!(matches!(any[2], (IfKind::LoopbackV4, false)));
        assert_eq!(
            instance_name("Front\u{7}door", "0123456789abcdef"),
            "Frontdoor 01234567"
        );
    }
}
