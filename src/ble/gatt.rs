//! The door service as a bluer GATT application and LE advertisement, and their registration
//! on one adapter. The application is plain data whose callbacks call into [`Door`]; the
//! handles unregister on drop.

use std::sync::Arc;
use std::time::Duration;

use bluer::adv::{Advertisement, AdvertisementHandle, Type as AdvType};
use bluer::gatt::local::{
    Application, ApplicationHandle, Characteristic, CharacteristicNotifier, CharacteristicNotify,
    CharacteristicNotifyMethod, CharacteristicRead, CharacteristicWrite, CharacteristicWriteMethod,
    ReqResult, Service,
};
use bluer::gatt::WriteOp;
use bluer::Uuid;
use futures_util::FutureExt;

use latchkey_proto::{
    adv_data, v2, ADV_COMPANY_ID, AUTH_UUID, CHALLENGE_UUID, RESULT_UUID, SERVICE_UUID,
};

use super::door::{peer_path, Door, Request};
use super::door_v2::DoorV2;

/// Our limit on each registration call (bluer's own is 120 s).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// A live registration: dropping it unregisters the application and the advertisement.
pub struct Registration {
    pub adapter: String,
    _app: ApplicationHandle,
    _adv: AdvertisementHandle,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

/// The GATT application: the version-1 service with the Challenge, Auth and Result
/// characteristics (PROTOCOL.md §3), then the version-2 service with Challenge, Request and
/// Result (§16). Both have the same shape; only the door behind them differs.
pub fn application(door: &Arc<Door>, v2: &Arc<DoorV2>) -> Application {
    let enc = door.require_encryption();
    let (reader, writer, subscriber) = (door.clone(), door.clone(), door.clone());
    let v1_service = service(
        SERVICE_UUID,
        challenge(CHALLENGE_UUID, enc, move |r| {
            let door = reader.clone();
            async move { door.read_challenge(&r) }
        }),
        write(AUTH_UUID, enc, move |value, r, op, prep| {
            writer.write_auth(value, &r, op, prep)
        }),
        result(RESULT_UUID, move |n| {
            let door = subscriber.clone();
            async move { door.result_subscribed(n).await }
        }),
    );
    let (reader, writer, subscriber) = (v2.clone(), v2.clone(), v2.clone());
    let v2_service = service(
        v2::SERVICE_UUID,
        challenge(v2::CHALLENGE_UUID, enc, move |r| {
            let door = reader.clone();
            async move { door.read_challenge(&r).await }
        }),
        write(v2::REQUEST_UUID, enc, move |value, r, op, prep| {
            writer.write_request(value, &r, op, prep)
        }),
        result(v2::RESULT_UUID, move |n| {
            let door = subscriber.clone();
            async move { door.result_subscribed(n).await }
        }),
    );
    Application {
        services: vec![v1_service, v2_service],
        ..Default::default()
    }
}

fn service(
    uuid: u128,
    challenge: Characteristic,
    write: Characteristic,
    result: Characteristic,
) -> Service {
    Service {
        uuid: Uuid::from_u128(uuid),
        primary: true,
        characteristics: vec![challenge, write, result],
        ..Default::default()
    }
}

/// Challenge: `read` (answered by `read`) and `notify`. Notify-capable as the protocol says; a
/// BlueZ gateway never notifies challenges, because BlueZ would send them to every subscriber
/// (PROTOCOL.md §7.1).
fn challenge<F, Fut>(uuid: u128, enc: bool, read: F) -> Characteristic
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ReqResult<Vec<u8>>> + Send + 'static,
{
    Characteristic {
        uuid: Uuid::from_u128(uuid),
        read: Some(CharacteristicRead {
            read: true,
            encrypt_authenticated_read: enc,
            fun: Box::new(move |req| {
                read(Request {
                    peer: peer_path(&req.adapter_name, req.device_address),
                    offset: req.offset,
                })
                .boxed()
            }),
            ..Default::default()
        }),
        notify: Some(CharacteristicNotify {
            notify: true,
            method: CharacteristicNotifyMethod::Fun(Box::new(|_| async {}.boxed())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Auth (v1) or Request (v2): `write` with response, answered at once by `write`.
fn write<F>(uuid: u128, enc: bool, write: F) -> Characteristic
where
    F: Fn(Vec<u8>, Request, WriteOp, bool) -> ReqResult<()> + Send + Sync + 'static,
{
    let write = Arc::new(write);
    Characteristic {
        uuid: Uuid::from_u128(uuid),
        write: Some(CharacteristicWrite {
            write: true,
            encrypt_authenticated_write: enc,
            method: CharacteristicWriteMethod::Fun(Box::new(move |value, req| {
                let r = Request {
                    peer: peer_path(&req.adapter_name, req.device_address),
                    offset: req.offset,
                };
                let write = write.clone();
                async move { write(value, r, req.op_type, req.prepare_authorize) }.boxed()
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Result: `notify`, each subscription handed to `subscribed`.
fn result<F, Fut>(uuid: u128, subscribed: F) -> Characteristic
where
    F: Fn(CharacteristicNotifier) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Characteristic {
        uuid: Uuid::from_u128(uuid),
        notify: Some(CharacteristicNotify {
            notify: true,
            method: CharacteristicNotifyMethod::Fun(Box::new(move |n| subscribed(n).boxed())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Advertising interval: short, so a phone that starts scanning finds the gateway at once
/// (Apple's accessory guidelines start at 20 ms; 100–150 ms keeps the Pi's radio mostly idle
/// and still answers a phone's scan window within a fraction of a second).
const ADV_INTERVAL_MIN: Duration = Duration::from_millis(100);
const ADV_INTERVAL_MAX: Duration = Duration::from_millis(150);

/// Connectable advertising (PROTOCOL.md §3): the service UUID and the gateway's short id
/// (manufacturer data) in the 31-byte advertising data, the name in the scan response
/// (BlueZ puts `LocalName` there for legacy connectable advertising).
pub fn advertisement(name: &str, gateway_id: &str) -> Advertisement {
    Advertisement {
        advertisement_type: AdvType::Peripheral,
        service_uuids: [Uuid::from_u128(SERVICE_UUID)].into_iter().collect(),
        manufacturer_data: [(ADV_COMPANY_ID, adv_data(gateway_id).to_vec())]
            .into_iter()
            .collect(),
        local_name: Some(name.to_owned()),
        discoverable: Some(true),
        min_interval: Some(ADV_INTERVAL_MIN),
        max_interval: Some(ADV_INTERVAL_MAX),
        ..Default::default()
    }
}

async fn within<T>(
    what: &str,
    fut: impl std::future::Future<Output = bluer::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(REGISTER_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: BlueZ did not answer within 10 s")),
    }
}

/// Powers the adapter if needed, then registers the application and the advertisement.
pub async fn register(
    session: &bluer::Session,
    adapter_name: &str,
    door: &Arc<Door>,
    v2: &Arc<DoorV2>,
) -> Result<Registration, String> {
    let adapter = session
        .adapter(adapter_name)
        .map_err(|e| format!("adapter {adapter_name}: {e}"))?;
    if !within("reading the adapter's power state", adapter.is_powered()).await? {
        within("powering the adapter on", adapter.set_powered(true)).await?;
        tracing::info!(adapter = adapter_name, "powered the Bluetooth adapter on");
    }
    let app = within(
        "registering the GATT application",
        adapter.serve_gatt_application(application(door, v2)),
    )
    .await?;
    let adv = within(
        "registering the LE advertisement",
        adapter.advertise(advertisement(
            &door.state().config.name,
            &door.state().gateway_id,
        )),
    )
    .await?;
    Ok(Registration {
        adapter: adapter_name.to_owned(),
        _app: app,
        _adv: adv,
    })
}
