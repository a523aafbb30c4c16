//! The doors a gateway can open (`[[endpoint]]` in the config) and who may use them.

use std::collections::HashSet;

use crate::config::{ActionConfig, EndpointConfig};
use crate::registry::DeviceId;

/// One endpoint, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub name: String,
    /// `None`: every paired device may use it.
    allowed: Option<HashSet<String>>,
    pub action: ActionConfig,
}

impl Endpoint {
    /// The device ids allowed, or `None` when every paired device is.
    pub fn allowed(&self) -> Option<Vec<&str>> {
        self.allowed
            .as_ref()
            .map(|set| set.iter().map(String::as_str).collect())
    }

    pub fn allows(&self, device: &DeviceId) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|set| set.contains(device.as_str()))
    }
}

/// The configured endpoints. The first one is the default endpoint, which an auth frame
/// names with the empty id.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    list: Vec<Endpoint>,
}

impl Endpoints {
    pub fn from_config(config: &[EndpointConfig]) -> Self {
        let list = config
            .iter()
            .map(|e| Endpoint {
                id: e.id.clone(),
                name: e.name.clone().unwrap_or_else(|| e.id.clone()),
                allowed: e.devices.as_ref().map(|d| d.iter().cloned().collect()),
                action: e.action.clone(),
            })
            .collect();
        Self { list }
    }

    /// Adds an endpoint every paired device may use (a registered door node, see
    /// `nodes::doors::endpoints`).
    pub fn push_open(&mut self, id: String, name: String, action: ActionConfig) {
        self.list.push(Endpoint {
            id,
            name,
            allowed: None,
            action,
        });
    }

    /// The endpoint an auth frame names (`""` = the default one).
    pub fn resolve(&self, id: &str) -> Option<&Endpoint> {
        if id.is_empty() {
            self.list.first()
        } else {
            self.list.iter().find(|e| e.id == id)
        }
    }

    /// The endpoints `device` may open, in configuration order (`GET /api/me`).
    pub fn open_to<'a>(&'a self, device: &'a DeviceId) -> impl Iterator<Item = &'a Endpoint> {
        self.list.iter().filter(move |e| e.allows(device))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ep(id: &str, devices: Option<Vec<String>>) -> EndpointConfig {
        EndpointConfig {
            id: id.into(),
            name: None,
            devices,
            action: ActionConfig::None,
        }
    }

    #[test]
    fn default_lookup_and_allow_lists() {
        let a = DeviceId::from_bytes([1; 16]);
        let b = DeviceId::from_bytes([2; 16]);
        let eps =
            Endpoints::from_config(&[ep("front", None), ep("garage", Some(vec![a.to_string()]))]);
        assert_eq!(eps.resolve("").map(|e| e.id.as_str()), Some("front"));
        assert_eq!(eps.resolve("front").map(|e| e.name.as_str()), Some("front"));
        assert!(eps.resolve("back").is_none());
        let garage = eps.resolve("garage").unwrap();
        assert!(garage.allows(&a));
        assert!(!garage.allows(&b));
        assert!(eps.resolve("front").unwrap().allows(&b));
        assert!(Endpoints::default().resolve("").is_none());
        let ids = |d| eps.open_to(d).map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ["front", "garage"]);
        assert_eq!(ids(&b), ["front"]);
    }
}
