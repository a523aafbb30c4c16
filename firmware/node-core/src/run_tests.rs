//! [`run`] end to end on the host: a registered node with fake board parts (a scripted gateway
//! session, a radio the test drives as a phone would, a RAM flash), in real time on a
//! current-thread runtime. What the module tests cannot show: the four sub-loops wired together.

use std::cell::RefCell as StdRefCell;
use std::rc::Rc;
use std::time::Duration;

use latchkey_proto::v2::{ResultFrame, Status};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::board::{ConnId, DoorEvent, HardwareError, HttpResponse, NetError, Network, WsMessage};
use crate::storage::ram_flash::{RamFlash, PAGE};
use crate::storage::FlashStore;
use crate::test_support::*;

/// A guard against hangs, never a pass/fail timer.
const PATIENCE: Duration = Duration::from_secs(20);

struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }
    async fn sleep_until(&self, at: Instant) {
        tokio::time::sleep_until(self.0 + Duration::from_millis(at.as_millis())).await;
    }
}

#[derive(Clone, Default)]
struct PinLog(Rc<StdRefCell<Vec<bool>>>);

impl Relay for PinLog {
    fn set(&mut self, energised: bool) -> Result<(), HardwareError> {
        self.0.borrow_mut().push(energised);
        Ok(())
    }
}

struct HomeWifi;

impl Wifi for HomeWifi {
    async fn scan(&mut self) -> Result<Vec<Network>, WifiError> {
        Ok(Vec::new())
    }
    async fn open_setup_ap(&mut self, _: &str, _: &str) -> Result<(), WifiError> {
        Ok(())
    }
    async fn close_setup_ap(&mut self) {}
    async fn join(&mut self, _: &str, _: &str) -> Result<(), WifiError> {
        Ok(())
    }
}

struct NoHttp;

impl HttpClient for NoHttp {
    async fn post_json(&mut self, _: &str, _: &[u8]) -> Result<HttpResponse, NetError> {
        Err(NetError)
    }
}

/// The gateway as the test scripts it: connects wait until it is up; each session hands the
/// test a sender (gateway → node) and a receiver (node → gateway).
struct ScriptedGateway {
    up: watch::Receiver<bool>,
    /// Where the gateway moved, and the id its mDNS record names: dials elsewhere fail.
    moved: Option<(String, String)>,
    /// Every URL the node dialled.
    dialled: Rc<StdRefCell<Vec<String>>>,
    sessions: mpsc::UnboundedSender<(
        mpsc::UnboundedSender<WsMessage>,
        mpsc::UnboundedReceiver<String>,
    )>,
}

struct ScriptedConn {
    from_gateway: mpsc::UnboundedReceiver<WsMessage>,
    to_gateway: mpsc::UnboundedSender<String>,
}

impl WsConnector for ScriptedGateway {
    type Conn = ScriptedConn;
    async fn connect(&mut self, url: &str, _: &str) -> Result<ScriptedConn, ConnectError> {
        self.dialled.borrow_mut().push(url.into());
        if self.moved.as_ref().is_some_and(|(_, to)| to != url) {
            return Err(ConnectError::Net);
        }
        if self.up.wait_for(|up| *up).await.is_err() {
            return Err(ConnectError::Net);
        }
        let (gw_tx, from_gateway) = mpsc::unbounded_channel();
        let (to_gateway, gw_rx) = mpsc::unbounded_channel();
        self.sessions
            .send((gw_tx, gw_rx))
            .map_err(|_| ConnectError::Net)?;
        Ok(ScriptedConn {
            from_gateway,
            to_gateway,
        })
    }
    async fn locate(&mut self, gateway_id: &str) -> Option<String> {
        let (id, url) = self.moved.as_ref()?;
        latchkey_proto::dns_sd::is_paired_gateway(Some(id), gateway_id).then(|| url.clone())
    }
}

impl WsConn for ScriptedConn {
    async fn send_text(&mut self, text: &str) -> Result<(), NetError> {
        self.to_gateway.send(text.into()).map_err(|_| NetError)
    }
    async fn recv(&mut self) -> WsMessage {
        self.from_gateway
            .recv()
            .await
            .unwrap_or(WsMessage::Close(None))
    }
    async fn close(&mut self, _: u16) {}
}

struct Ap(tokio::net::TcpListener);

impl ApListener for Ap {
    type Runtime = picoserve::TokioRuntime;
    type Timer = picoserve::time::TokioTimer;
    type Socket = tokio::net::TcpStream;
    async fn accept(&self) -> Result<tokio::net::TcpStream, NetError> {
        self.0.accept().await.map(|(s, _)| s).map_err(|_| NetError)
    }
    fn timer(&self) -> Self::Timer {
        picoserve::time::TokioTimer
    }
}

/// What the door's radio said back: a challenge read's answer or a notification.
#[derive(Debug)]
enum Air {
    /// The door tag, and whether the pairing service is served.
    Started([u8; 5], bool),
    Read(ConnId, Vec<u8>),
    Written(ConnId, bool),
    Notified(ConnId, Vec<u8>),
}

struct TestRadio {
    events: mpsc::UnboundedReceiver<DoorEvent>,
    air: mpsc::UnboundedSender<Air>,
}

impl DoorRadio for TestRadio {
    async fn start(&mut self, door_tag: [u8; 5], pairing: bool) -> Result<(), HardwareError> {
        self.air
            .send(Air::Started(door_tag, pairing))
            .map_err(|_| HardwareError)
    }
    async fn next(&mut self) -> DoorEvent {
        match self.events.recv().await {
            Some(e) => e,
            None => core::future::pending().await,
        }
    }
    async fn reply_read(&mut self, conn: ConnId, value: &[u8]) {
        let _ = self.air.send(Air::Read(conn, value.to_vec()));
    }
    async fn notify(&mut self, conn: ConnId, value: &[u8]) {
        let _ = self.air.send(Air::Notified(conn, value.to_vec()));
    }
    async fn reply_write(&mut self, conn: ConnId, ok: bool) {
        let _ = self.air.send(Air::Written(conn, ok));
    }
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("nothing came")
        .expect("channel closed")
}

/// The test's side of one gateway session.
struct Sess {
    to_node: mpsc::UnboundedSender<WsMessage>,
    from_node: mpsc::UnboundedReceiver<String>,
}

impl Sess {
    fn send(&self, frame: Value) {
        self.to_node
            .send(WsMessage::Text(frame.to_string()))
            .unwrap();
    }
    async fn frame(&mut self) -> Value {
        serde_json::from_str(&next(&mut self.from_node).await).unwrap()
    }
    async fn hello(&mut self) {
        self.send(json!({"type":"hello","nodeId":NODE_ID,"gatewayId":"gw","now":NOW}));
        assert_eq!(self.frame().await["type"], "status");
    }
    /// No frame from the node in a short while.
    async fn quiet(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(300), self.from_node.recv()).await;
        assert!(r.is_err(), "unexpected frame {r:?}");
    }
}

/// A phone at the door on connection `conn`: reads a challenge, writes its request, returns the
/// challenge and the notified result.
async fn open_door(
    radio: &mpsc::UnboundedSender<DoorEvent>,
    air: &mut mpsc::UnboundedReceiver<Air>,
    phone: &Phone,
    conn: ConnId,
) -> (Vec<u8>, latchkey_proto::v2::VerifiedResult) {
    open_door_at(radio, air, phone, conn, "front-door").await
}

/// [`open_door`] for `endpoint`.
async fn open_door_at(
    radio: &mpsc::UnboundedSender<DoorEvent>,
    air: &mut mpsc::UnboundedReceiver<Air>,
    phone: &Phone,
    conn: ConnId,
    endpoint: &str,
) -> (Vec<u8>, latchkey_proto::v2::VerifiedResult) {
    radio.send(DoorEvent::ReadChallenge { conn }).unwrap();
    let Air::Read(c, challenge) = next(air).await else {
        panic!("no challenge")
    };
    assert_eq!(c, conn);
    let (request, keys, nonce) = phone.request(&challenge, endpoint);
    radio
        .send(DoorEvent::Request {
            conn,
            value: request,
        })
        .unwrap();
    let Air::Notified(c, result) = next(air).await else {
        panic!("no result")
    };
    assert_eq!(c, conn);
    let verified = match ResultFrame::open(&result, &keys, &nonce) {
        Ok(v) => v,
        Err(e) => panic!("{e}: {result:02x?}"),
    };
    (challenge, verified)
}

type TestBoard = Board<
    FlashStore<RamFlash>,
    PinLog,
    TokioClock,
    HomeWifi,
    NoHttp,
    ScriptedGateway,
    Ap,
    Counter,
    TestRadio,
>;

/// The test's ends of a node's board.
struct Bench {
    up: watch::Sender<bool>,
    sessions: mpsc::UnboundedReceiver<(
        mpsc::UnboundedSender<WsMessage>,
        mpsc::UnboundedReceiver<String>,
    )>,
    radio: mpsc::UnboundedSender<DoorEvent>,
    air: mpsc::UnboundedReceiver<Air>,
    pin: PinLog,
}

/// A registered node of `kind`, as its flash holds it after registration, with the gateway down.
async fn registered(kind: Kind) -> (TestBoard, Config, Bench) {
    let mut store = FlashStore::new(
        RamFlash::new(40),
        0..(32 * PAGE as u32),
        (32 * PAGE as u32)..(40 * PAGE as u32),
    )
    .unwrap();
    store.save_identity(&door_identity()).await.unwrap();
    let mut creds = credentials();
    creds.wifi_ssid = String::from("HomeWifi");
    store.save_credentials(&creds).await.unwrap();

    let (up_tx, up) = watch::channel(false);
    let (sessions_tx, sessions) = mpsc::unbounded_channel();
    let (radio_tx, events) = mpsc::unbounded_channel();
    let (air_tx, air) = mpsc::unbounded_channel();
    let pin = PinLog::default();
    let board = Board {
        store,
        relay: pin.clone(),
        clock: TokioClock(tokio::time::Instant::now()),
        wifi: HomeWifi,
        http: NoHttp,
        ws: ScriptedGateway {
            up,
            moved: None,
            dialled: Rc::default(),
            sessions: sessions_tx,
        },
        ap: Ap(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        rng: Counter::default(),
        radio: TestRadio {
            events,
            air: air_tx,
        },
    };
    let config = Config {
        kind,
        setup_ssid: String::from("latchkey-setup-test"),
        setup_code: Zeroizing::new(String::from("code")),
        factory_reset: false,
    };
    let bench = Bench {
        up: up_tx,
        sessions,
        radio: radio_tx,
        air,
        pin,
    };
    (board, config, bench)
}

#[tokio::test]
async fn the_door_opens_with_the_gateway_down_and_the_decision_is_uploaded_once_it_returns() {
    let (board, config, bench) = registered(Kind::Door).await;
    let Bench {
        up: up_tx,
        mut sessions,
        radio: radio_tx,
        mut air,
        pin,
    } = bench;
    let phone = Phone::new(0x11);

    let script = async {
        // Registered: the door advertises at once, with no gateway.
        let Air::Started(tag, pairing) = next(&mut air).await else {
            panic!("radio not started")
        };
        assert_eq!(tag, latchkey_proto::v2::door_tag(&DOOR_ID));
        assert!(!pairing, "a door serves no pairing service");
        // No grants yet, no time: the phone is unknown here (a plain answer).
        let (challenge, r) = open_door(&radio_tx, &mut air, &phone, 1).await;
        assert_eq!(&challenge[34..42], &[0u8; 8], "door_time unknown");
        assert_eq!((r.status, r.authenticated), (Status::UnknownTool, false));

        // The gateway comes up: hello, the backlog, and the grants.
        up_tx.send(true).unwrap();
        let (to_node, from_node) = next(&mut sessions).await;
        let mut s = Sess { to_node, from_node };
        s.hello().await;
        // The unknown phone's attempt is counted, not stored: nothing to upload yet.
        let grant = phone.grant(DOOR_ID, "front-door");
        s.send(json!({"type":"grants","pulse_ms":1500,
                      "snapshot": snapshot(&gateway(), 1, 0, NOW - 600, &[grant])}));
        assert_eq!(
            s.frame().await,
            json!({"type":"grants_ack","version":1,"ok":true,"grants":1})
        );

        // The gateway goes away; the door keeps the time and decides alone.
        up_tx.send(false).unwrap();
        s.to_node.send(WsMessage::Close(Some(1001))).unwrap();
        drop(s);
        let (_, r) = open_door(&radio_tx, &mut air, &phone, 2).await;
        assert_eq!((r.status, r.authenticated), (Status::Granted, true));
        assert!(r.door_time.is_some_and(|t| t >= NOW));
        assert_eq!(pin.0.borrow().last(), Some(&true), "the relay pulses");

        // Back: the offline decision is uploaded; unacknowledged, it is sent again next time.
        up_tx.send(true).unwrap();
        let (to_node, from_node) = next(&mut sessions).await;
        let mut s = Sess { to_node, from_node };
        s.hello().await;
        let first = s.frame().await;
        let entries = first["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(first["unrecognised"], 1, "the stranger's attempt, counted");
        assert_eq!(entries[0]["seq"], 1);
        assert_eq!(entries[0]["status"], "GRANTED");
        assert_eq!(entries[0]["toolId"], "11111111-1111-1111-1111-111111111111");
        assert_eq!(entries[0]["endpoint"], "front-door");
        assert_eq!(entries[0]["offline"], true);
        s.to_node.send(WsMessage::Close(Some(1001))).unwrap();
        drop(s);
        let (to_node, from_node) = next(&mut sessions).await;
        let mut s = Sess { to_node, from_node };
        s.hello().await;
        assert_eq!(s.frame().await, first, "the same entries again");
        s.send(json!({"type":"decisions_ack","upTo":1}));
        s.quiet().await;

        // Online now: a decision is uploaded at once, marked online.
        let (_, r) = open_door(&radio_tx, &mut air, &phone, 3).await;
        assert_eq!(r.status, Status::Granted);
        let mut d = s.frame().await;
        while d["type"] == "status" {
            // The relay's change is reported too.
            d = s.frame().await;
        }
        assert_eq!(d["entries"][0]["seq"], 2);
        assert_eq!(d["entries"][0]["offline"], false);
        assert_eq!(d["unrecognised"], 0, "the count was cleared by the ack");
    };
    tokio::select! {
        r = run(board, &config, core::future::pending()) => panic!("run ended: {r:?}"),
        () = script => {}
    }
}

#[tokio::test]
async fn a_vehicle_takes_a_pairing_response_offline_then_opens_for_the_new_key() {
    use latchkey_proto::v2::pairing::{PairingChallenge, PairingResponse, ENDPOINT};
    let (board, config, mut b) = registered(Kind::Vehicle).await;
    let phone = Phone::new(0x11);
    let script = async {
        let Air::Started(_, pairing) = next(&mut b.air).await else {
            panic!("radio not started")
        };
        assert!(pairing, "a vehicle serves the pairing service");
        // No gateway has ever said the time: the challenge's timestamp is 0.
        b.radio
            .send(DoorEvent::PairingChallenge { conn: 4 })
            .unwrap();
        let Air::Read(4, challenge) = next(&mut b.air).await else {
            panic!("no pairing challenge")
        };
        let c = PairingChallenge::verify(&challenge, &door_public()).unwrap();
        assert_eq!((c.vehicle_id, c.timestamp), (DOOR_ID, 0));
        let response = PairingResponse {
            nonce: c.nonce,
            key_id: phone.tool,
            not_before: NOW - 600,
            expires: NOW + 86_400,
            epoch: 0,
            phone_key: phone.public(),
        }
        .sign(&DOOR_ID, &gateway());
        for (conn, ok) in [(5, false), (4, true), (4, false)] {
            b.radio
                .send(DoorEvent::PairingResponse {
                    conn,
                    value: response.to_vec(),
                })
                .unwrap();
            let Air::Written(c, written) = next(&mut b.air).await else {
                panic!("no write answer")
            };
            assert_eq!((c, written), (conn, ok), "conn {conn}");
        }
        // The key is held: the phone is known (sealed answer) though the time is not.
        let (_, r) = open_door_at(&b.radio, &mut b.air, &phone, 6, ENDPOINT).await;
        assert_eq!((r.status, r.authenticated), (Status::ClockUnknown, true));
        // The gateway says the time: the vehicle opens.
        b.up.send(true).unwrap();
        let (to_node, from_node) = next(&mut b.sessions).await;
        let mut s = Sess { to_node, from_node };
        s.hello().await;
        let (_, r) = open_door_at(&b.radio, &mut b.air, &phone, 7, ENDPOINT).await;
        assert_eq!((r.status, r.authenticated), (Status::Granted, true));
        assert_eq!(b.pin.0.borrow().last(), Some(&true), "the relay pulses");
    };
    tokio::select! {
        r = run(board, &config, core::future::pending()) => panic!("run ended: {r:?}"),
        () = script => {}
    }
}

/// The gateway moved (new address): after [`LOCATE_AFTER_FAILURES`] failed dials the node asks
/// the board where its gateway is, stores the answer and holds its session there; a record
/// naming another gateway moves nothing.
#[tokio::test]
async fn a_node_follows_its_gateway_to_a_new_address_and_no_other() {
    const NEW: &str = "ws://10.0.0.9:8081/ws";
    for (announced, follows) in [("gw", true), ("another-gateway", false)] {
        let (mut board, config, bench) = registered(Kind::Door).await;
        board.ws.moved = Some((announced.into(), NEW.into()));
        let dialled = board.ws.dialled.clone();
        let Bench {
            up: up_tx,
            mut sessions,
            ..
        } = bench;
        up_tx.send(true).unwrap();
        let script = async {
            if follows {
                let (to_node, from_node) = next(&mut sessions).await;
                let mut s = Sess { to_node, from_node };
                s.hello().await;
            } else {
                // Past the point where it looked, and one dial more: still the old address.
                tokio::time::timeout(PATIENCE, async {
                    while dialled.borrow().len() <= LOCATE_AFTER_FAILURES as usize {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .unwrap();
            }
        };
        tokio::select! {
            r = run(board, &config, core::future::pending()) => panic!("run ended: {r:?}"),
            () = script => {}
        }
        let dialled = dialled.borrow();
        let old = credentials().ws_url;
        assert!(
            dialled[..LOCATE_AFTER_FAILURES as usize]
                .iter()
                .all(|u| *u == old),
            "{dialled:?}"
        );
        if follows {
            assert_eq!(dialled.last().map(String::as_str), Some(NEW), "{dialled:?}");
        } else {
            assert!(dialled.iter().all(|u| *u == old), "{dialled:?}");
        }
    }
}
