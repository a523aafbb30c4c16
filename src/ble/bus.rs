//! What the BLE adapter learns from the system bus with zbus: whether BlueZ and an adapter
//! answer, and when that changes (bluetoothd restarts, adapters come and go, phones
//! disconnect). Registration itself goes through bluer.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zbus::fdo::{DBusProxy, ObjectManagerProxy};
use zbus::message::Type as MessageType;
use zbus::zvariant::OwnedValue;
use zbus::{MatchRule, MessageStream};

pub const BLUEZ: &str = "org.bluez";
const ADAPTER_IFACE: &str = "org.bluez.Adapter1";
const DEVICE_IFACE: &str = "org.bluez.Device1";
/// How long we wait for BlueZ to answer a question; bluer's own limit is 120 s.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket), or to
/// `address` when the configuration names one.
pub async fn connect(address: Option<&str>) -> Result<zbus::Connection, String> {
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::system(),
    }
    .map_err(|e| format!("cannot reach the system D-Bus: {e}"))?;
    match tokio::time::timeout(CALL_TIMEOUT, builder.build()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot reach the system D-Bus: {e}")),
        Err(_) => Err("the system D-Bus did not answer within 5 s".into()),
    }
}

/// The adapters BlueZ offers (`hci0`, …), sorted; or why BlueZ does not answer.
pub async fn adapters(conn: &zbus::Connection) -> Result<Vec<String>, String> {
    let om = ObjectManagerProxy::builder(conn)
        .destination(BLUEZ)
        .and_then(|b| b.path("/"))
        .map_err(|e| e.to_string())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let objects = match tokio::time::timeout(CALL_TIMEOUT, om.get_managed_objects()).await {
        Err(_) => return Err("org.bluez did not answer within 5 s".into()),
        Ok(Err(zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_))) => {
            return Err("org.bluez is not on the system D-Bus (is bluetoothd running?)".into())
        }
        Ok(Err(e)) => return Err(format!("org.bluez did not list its objects: {e}")),
        Ok(Ok(o)) => o,
    };
    let mut names: Vec<String> = objects
        .iter()
        .filter(|(_, ifaces)| ifaces.keys().any(|i| i.as_str() == ADAPTER_IFACE))
        .filter_map(|(path, _)| adapter_name(path.as_str()))
        .collect();
    names.sort();
    Ok(names)
}

/// `/org/bluez/hci0` → `hci0`.
pub fn adapter_name(path: &str) -> Option<String> {
    let name = path.strip_prefix("/org/bluez/")?;
    (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
}

/// Picks the configured adapter, else `hci0`, else the first one.
pub fn choose_adapter(available: &[String], wanted: Option<&str>) -> Result<String, String> {
    match wanted {
        Some(w) if available.iter().any(|a| a == w) => Ok(w.to_owned()),
        Some(w) if available.is_empty() => {
            Err(format!("BlueZ has no Bluetooth adapter (configured: {w})"))
        }
        Some(w) => Err(format!(
            "adapter {w} is not present (BlueZ has {})",
            available.join(", ")
        )),
        None if available.iter().any(|a| a == "hci0") => Ok("hci0".into()),
        None => available
            .first()
            .cloned()
            .ok_or_else(|| "BlueZ has no Bluetooth adapter".to_owned()),
    }
}

/// Something on the bus that matters to the BLE service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// `org.bluez` changed hands: `None` = bluetoothd went away.
    BluezOwner(Option<String>),
    AdapterAdded(String),
    AdapterRemoved(String),
    /// A peer disconnected (its device object path).
    PeerGone(String),
}

/// Watches the bus and forwards [`BusEvent`]s until `stop`.
pub async fn watch(
    conn: &zbus::Connection,
    stop: CancellationToken,
) -> Result<mpsc::Receiver<BusEvent>, zbus::Error> {
    let (tx, rx) = mpsc::channel(64);

    let dbus = DBusProxy::new(conn).await?;
    let mut owners = dbus
        .receive_name_owner_changed_with_args(&[(0, BLUEZ)])
        .await?;
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    s = owners.next() => s,
                    _ = stop.cancelled() => return,
                };
                let Some(sig) = sig else { return };
                if let Ok(args) = sig.args() {
                    let new = args.new_owner().as_ref().map(|n| n.to_string());
                    if tx.send(BusEvent::BluezOwner(new)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    // InterfacesAdded / InterfacesRemoved from whoever owns org.bluez, and Device1 property
    // changes (disconnects). Match rules with the well-known sender are resolved by the bus.
    let om_rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(BLUEZ)?
        .interface("org.freedesktop.DBus.ObjectManager")?
        .build();
    let props_rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(BLUEZ)?
        .interface("org.freedesktop.DBus.Properties")?
        .member("PropertiesChanged")?
        .arg(0, DEVICE_IFACE)?
        .build();
    let mut om = MessageStream::for_match_rule(om_rule, conn, Some(256)).await?;
    let mut props = MessageStream::for_match_rule(props_rule, conn, Some(256)).await?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = om.next() => m,
                m = props.next() => m,
                _ = stop.cancelled() => return,
            };
            let Some(Ok(msg)) = msg else { return };
            for ev in classify(&msg) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

type Props = HashMap<String, OwnedValue>;

fn classify(msg: &zbus::Message) -> Vec<BusEvent> {
    let hdr = msg.header();
    let member = hdr
        .member()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let body = msg.body();
    match member.as_str() {
        "InterfacesAdded" => {
            let Ok((path, ifaces)) =
                body.deserialize::<(zbus::zvariant::OwnedObjectPath, HashMap<String, Props>)>()
            else {
                return vec![];
            };
            if ifaces.contains_key(ADAPTER_IFACE) {
                adapter_name(path.as_str())
                    .map(BusEvent::AdapterAdded)
                    .into_iter()
                    .collect()
            } else {
                vec![]
            }
        }
        "InterfacesRemoved" => {
            let Ok((path, ifaces)) =
                body.deserialize::<(zbus::zvariant::OwnedObjectPath, Vec<String>)>()
            else {
                return vec![];
            };
            let mut out = Vec::new();
            if ifaces.iter().any(|i| i == ADAPTER_IFACE) {
                out.extend(adapter_name(path.as_str()).map(BusEvent::AdapterRemoved));
            }
            if ifaces.iter().any(|i| i == DEVICE_IFACE) {
                out.push(BusEvent::PeerGone(path.to_string()));
            }
            out
        }
        "PropertiesChanged" => {
            let Some(path) = hdr.path().map(|p| p.to_string()) else {
                return vec![];
            };
            let Ok((_, changed, _)) = body.deserialize::<(String, Props, Vec<String>)>() else {
                return vec![];
            };
            let disconnected = changed
                .get("Connected")
                .and_then(|v| bool::try_from(v).ok())
                == Some(false);
            if disconnected {
                vec![BusEvent::PeerGone(path)]
            } else {
                vec![]
            }
        }
        _ => vec![],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn adapter_choice() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(choose_adapter(&a(&["hci1", "hci0"]), None).unwrap(), "hci0");
        assert_eq!(choose_adapter(&a(&["hci1", "hci2"]), None).unwrap(), "hci1");
        assert_eq!(choose_adapter(&a(&["hci1"]), Some("hci1")).unwrap(), "hci1");
        assert!(choose_adapter(&a(&["hci0"]), Some("hci1"))
            .unwrap_err()
            .contains("hci1 is not present"));
        assert!(choose_adapter(&[], None)
            .unwrap_err()
            .contains("no Bluetooth adapter"));
        assert_eq!(adapter_name("/org/bluez/hci3").as_deref(), Some("hci3"));
        assert_eq!(adapter_name("/org/bluez/hci3/dev_00"), None);
    }
}
