//! Wi-Fi: node-core's [`Wifi`] over esp-radio, and the tasks the radio needs.
//!
//! The `WifiController` lives in [`wifi_task`], which also keeps a joined station connected
//! (node-core joins once and then only reconnects its session). [`EspWifi`] is the core's
//! handle: each call is a numbered command to the task and waits for the answer with that
//! number, so a call the core abandons (its join timeout) cannot hand its late answer to the
//! next call.

use alloc::string::String;
use alloc::vec::Vec;

use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_net::{Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_time::{with_timeout, Duration, Timer};
use esp_radio::wifi::ap::AccessPointConfig;
use esp_radio::wifi::scan::ScanConfig;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethod, AuthenticationMethodConfig, Config, ConnectionError, DisconnectReason,
    Interface, WifiController,
};
use latchkey_node_core::board::{Network, Wifi, WifiError};
use static_cell::StaticCell;
use zeroize::Zeroizing;

use crate::board::{AP_ADDR, AP_MAX_STATIONS, AP_SOCKETS, STA_SOCKETS};
use crate::panel::{self, Code};

/// Longest wait for a DHCP lease after association (node-core bounds the whole join at 30 s).
const DHCP_TIMEOUT_MS: u64 = 20_000;
/// Wait before re-associating after the home network dropped the station.
const RECONNECT_MS: u64 = 5_000;
/// Networks kept from a scan (node-core lists at most 32).
const SCAN_MAX: usize = 64;

enum Cmd {
    Scan,
    OpenAp {
        ssid: String,
        passphrase: Zeroizing<String>,
    },
    CloseAp,
    Join {
        ssid: String,
        password: Zeroizing<String>,
    },
}

enum Answer {
    Scan(Result<Vec<Network>, WifiError>),
    Done(Result<(), WifiError>),
}

static COMMANDS: Channel<CriticalSectionRawMutex, (u32, Cmd), 1> = Channel::new();
static ANSWERS: Channel<CriticalSectionRawMutex, (u32, Answer), 1> = Channel::new();

static STA_RESOURCES: StaticCell<StackResources<STA_SOCKETS>> = StaticCell::new();
static AP_RESOURCES: StaticCell<StackResources<AP_SOCKETS>> = StaticCell::new();

/// Starts the radio's Wi-Fi side: the controller's task, two embassy-net stacks on the one
/// radio (the station with DHCP, the setup access point at [`AP_ADDR`]) with their runners,
/// and the access point's DHCP server. Returns the two stacks.
pub fn start(
    spawner: &Spawner,
    wifi: esp_hal::peripherals::WIFI<'static>,
    seed: u64,
) -> Result<(Stack<'static>, Stack<'static>), esp_radio::wifi::WifiError> {
    let controller = WifiController::new(wifi, Default::default())?;
    let (sta, sta_runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        STA_RESOURCES.init(StackResources::new()),
        seed,
    );
    let (ap, ap_runner) = embassy_net::new(
        Interface::access_point(),
        embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(AP_ADDR, 24),
            gateway: Some(AP_ADDR),
            dns_servers: Default::default(),
        }),
        AP_RESOURCES.init(StackResources::new()),
        seed.rotate_left(17),
    );
    spawner.spawn(crate::net::net_task(sta_runner).unwrap_or_else(|_| crate::fatal_now()));
    spawner.spawn(crate::net::net_task(ap_runner).unwrap_or_else(|_| crate::fatal_now()));
    spawner.spawn(crate::net::dhcp_server_task(ap).unwrap_or_else(|_| crate::fatal_now()));
    spawner.spawn(wifi_task(controller, sta).unwrap_or_else(|_| crate::fatal_now()));
    Ok((sta, ap))
}

/// node-core's Wi-Fi handle.
pub struct EspWifi {
    seq: u32,
}

impl EspWifi {
    /// The handle of the one [`wifi_task`].
    pub fn new() -> Self {
        Self { seq: 0 }
    }

    async fn call(&mut self, cmd: Cmd) -> Answer {
        self.seq = self.seq.wrapping_add(1);
        COMMANDS.send((self.seq, cmd)).await;
        loop {
            let (seq, answer) = ANSWERS.receive().await;
            if seq == self.seq {
                return answer;
            }
        }
    }

    async fn done(&mut self, cmd: Cmd) -> Result<(), WifiError> {
        match self.call(cmd).await {
            Answer::Done(r) => r,
            Answer::Scan(_) => Err(WifiError::Failed),
        }
    }
}

impl Wifi for EspWifi {
    async fn scan(&mut self) -> Result<Vec<Network>, WifiError> {
        match self.call(Cmd::Scan).await {
            Answer::Scan(r) => r,
            Answer::Done(_) => Err(WifiError::Failed),
        }
    }

    async fn open_setup_ap(&mut self, ssid: &str, passphrase: &str) -> Result<(), WifiError> {
        self.done(Cmd::OpenAp {
            ssid: ssid.into(),
            passphrase: Zeroizing::new(passphrase.into()),
        })
        .await
    }

    async fn close_setup_ap(&mut self) {
        if self.done(Cmd::CloseAp).await.is_err() {
            log::warn!("wifi: closing the access point failed");
        }
    }

    async fn join(&mut self, ssid: &str, password: &str) -> Result<(), WifiError> {
        self.done(Cmd::Join {
            ssid: ssid.into(),
            password: Zeroizing::new(password.into()),
        })
        .await
    }
}

/// Owns the radio's Wi-Fi side: runs the core's commands and keeps a joined station up.
#[embassy_executor::task]
pub async fn wifi_task(mut controller: WifiController<'static>, sta: Stack<'static>) {
    let mut joined = false;
    // A join was tried this boot: an access point opened after it is a retry (LED code).
    let mut attempted = false;
    loop {
        let (seq, cmd) =
            match select(COMMANDS.receive(), keep_station(&mut controller, joined)).await {
                Either::First(c) => c,
                Either::Second(never) => match never {},
            };
        let answer = match cmd {
            Cmd::Scan => {
                joined = false;
                Answer::Scan(scan(&mut controller).await)
            }
            Cmd::OpenAp { ssid, passphrase } => {
                joined = false;
                let r = open_ap(&mut controller, &ssid, &passphrase);
                if r.is_ok() {
                    panel::show(if attempted {
                        Code::SetupRetry
                    } else {
                        Code::Setup
                    });
                }
                Answer::Done(r)
            }
            Cmd::CloseAp => Answer::Done(station_mode(&mut controller, None)),
            Cmd::Join { ssid, password } => {
                attempted = true;
                panel::show(Code::Busy);
                let r = join(&mut controller, sta, &ssid, &password).await;
                joined = r.is_ok();
                if joined {
                    panel::show(Code::Offline);
                }
                Answer::Done(r)
            }
        };
        ANSWERS.send((seq, answer)).await;
    }
}

/// Re-associates whenever the joined network drops the station; never completes.
async fn keep_station(
    controller: &mut WifiController<'static>,
    joined: bool,
) -> core::convert::Infallible {
    if !joined {
        return core::future::pending().await;
    }
    loop {
        if controller.is_connected() {
            if let Ok(info) = controller.wait_for_disconnect_async().await {
                log::warn!("wifi: station disconnected ({:?})", info.reason);
            }
            panel::show(Code::Offline);
        }
        Timer::after(Duration::from_millis(RECONNECT_MS)).await;
        match controller.connect_async().await {
            Ok(_) => log::info!("wifi: station reconnected"),
            Err(e) => log::warn!("wifi: reconnect failed: {e:?}"),
        }
    }
}

async fn scan(controller: &mut WifiController<'static>) -> Result<Vec<Network>, WifiError> {
    station_mode(controller, None)?;
    let found = controller
        .scan_async(&ScanConfig::default().with_max(SCAN_MAX))
        .await
        .map_err(|e| {
            log::warn!("wifi: scan: {e:?}");
            WifiError::Failed
        })?;
    let mut found: Vec<Network> = found
        .into_iter()
        // Hidden networks have no name to offer.
        .filter(|ap| !ap.ssid.is_empty())
        .map(|ap| Network {
            ssid: ap.ssid.as_str().into(),
            rssi: i16::from(ap.signal_strength),
            secure: !matches!(ap.auth_method, None | Some(AuthenticationMethod::None)),
        })
        .collect();
    found.sort_by_key(|n| core::cmp::Reverse(n.rssi));
    // A name seen twice (several access points of one network) keeps its strongest entry.
    let mut networks: Vec<Network> = Vec::with_capacity(found.len());
    for n in found {
        if !networks.iter().any(|m| m.ssid == n.ssid) {
            networks.push(n);
        }
    }
    Ok(networks)
}

fn open_ap(
    controller: &mut WifiController<'static>,
    ssid: &str,
    passphrase: &str,
) -> Result<(), WifiError> {
    let ssid = ssid.try_into().map_err(|_| WifiError::Failed)?;
    let password = passphrase.try_into().map_err(|_| WifiError::Failed)?;
    // WPA2-PSK (CCMP): esp-radio's soft AP offers no WPA3-SAE.
    let config = AccessPointConfig::default()
        .with_ssid(ssid)
        .with_authentication(AuthenticationMethodConfig::Wpa2Personal(password))
        .with_max_connections(AP_MAX_STATIONS);
    controller
        .set_config(&Config::AccessPoint(config))
        .map_err(|e| {
            log::warn!("wifi: access point: {e:?}");
            WifiError::Failed
        })
}

/// Station mode, unassociated (`None`) or set up to join `network`.
fn station_mode(
    controller: &mut WifiController<'static>,
    network: Option<(&str, &str)>,
) -> Result<(), WifiError> {
    let mut config = StationConfig::default();
    if let Some((ssid, password)) = network {
        let ssid = ssid.try_into().map_err(|_| WifiError::NotFound)?;
        let auth = if password.is_empty() {
            AuthenticationMethodConfig::Open
        } else {
            AuthenticationMethodConfig::Wpa2Personal(
                password.try_into().map_err(|_| WifiError::WrongPassword)?,
            )
        };
        config = config.with_ssid(ssid).with_authentication(auth);
    }
    controller
        .set_config(&Config::Station(config))
        .map_err(|e| {
            log::warn!("wifi: station mode: {e:?}");
            WifiError::Failed
        })
}

async fn join(
    controller: &mut WifiController<'static>,
    sta: Stack<'static>,
    ssid: &str,
    password: &str,
) -> Result<(), WifiError> {
    station_mode(controller, Some((ssid, password)))?;
    match controller.connect_async().await {
        Ok(_) => {}
        Err(ConnectionError::Failed(info)) => {
            log::warn!("wifi: join refused ({:?})", info.reason);
            return Err(refusal(info.reason));
        }
        Err(ConnectionError::WifiError(e)) => {
            log::warn!("wifi: join: {e:?}");
            return Err(WifiError::Failed);
        }
        Err(_) => return Err(WifiError::Failed),
    }
    with_timeout(Duration::from_millis(DHCP_TIMEOUT_MS), sta.wait_config_up())
        .await
        .map_err(|_| {
            log::warn!("wifi: no DHCP lease");
            WifiError::Failed
        })?;
    if let Some(config) = sta.config_v4() {
        log::info!("wifi: station address {}", config.address);
    }
    Ok(())
}

/// What a refused association means for the setup app (NODES.md §4.2's error codes).
fn refusal(reason: DisconnectReason) -> WifiError {
    match reason {
        DisconnectReason::NoAccessPointFound
        | DisconnectReason::NoAccessPointFoundWithCompatibleSecurity
        | DisconnectReason::NoAccessPointFoundInAuthmodeThreshold
        | DisconnectReason::NoAccessPointFoundInRssiThreshold
        | DisconnectReason::BeaconTimeout => WifiError::NotFound,
        DisconnectReason::FourWayHandshakeTimeout
        | DisconnectReason::HandshakeTimeout
        | DisconnectReason::AuthenticationFailed
        | DisconnectReason::MicFailure
        | DisconnectReason::_802_1xAuthenticationFailed => WifiError::WrongPassword,
        _ => WifiError::Failed,
    }
}
