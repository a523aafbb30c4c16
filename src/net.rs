//! Which address to put in the QR code (CONTRACT §2): the configured `advertise_host`, else the
//! listen address when it names a specific IP, else the IPv4 address of the interface that
//! carries the default route.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub fn advertise_host(configured: Option<&str>, listen: SocketAddr) -> String {
    if let Some(h) = configured {
        return h.to_owned();
    }
    if !listen.ip().is_unspecified() {
        return listen.ip().to_string();
    }
    match default_route_ipv4() {
        Some(ip) => ip.to_string(),
        None => {
            tracing::warn!("no default route found; advertising 127.0.0.1 (set advertise_host)");
            Ipv4Addr::LOCALHOST.to_string()
        }
    }
}

/// Reads the kernel's routing table rather than opening a socket towards some outside address.
fn default_route_ipv4() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = default_route_iface(&routes)?;
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find_map(|a| match a.ip() {
            IpAddr::V4(v4) if a.name == iface && !v4.is_loopback() => Some(v4),
            _ => None,
        })
}

/// The interface of the lowest-metric default route in `/proc/net/route` text.
fn default_route_iface(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask …
            let (iface, dest, flags, metric) = (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?);
            let up = u32::from_str_radix(flags, 16).ok()? & 1 == 1;
            (*dest == "00000000" && up)
                .then(|| (metric.parse::<u32>().unwrap_or(u32::MAX), iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let specific: SocketAddr = "192.168.1.42:8080".parse().unwrap();
        assert_eq!(advertise_host(Some("gw.lan"), specific), "gw.lan");
        assert_eq!(advertise_host(None, specific), "192.168.1.42");
        assert!(!advertise_host(None, any).is_empty());
    }

    #[test]
    fn picks_lowest_metric_default_route() {
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\n";
        assert_eq!(default_route_iface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_iface("Iface\n"), None);
    }
}
