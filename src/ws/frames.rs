//! The wire format of `/ws` (CONTRACT §4): what a client may send, what the gateway answers.
//!
//! Parsing never echoes a client's values back (a confused client may put a key anywhere);
//! errors name the field and the rule instead.

use serde_json::{json, Map, Value};

use crate::events::{is_reserved, MAX_EVENT_DATA};
use crate::registry::DeviceId;

/// Largest text frame the protocol accepts; a bigger one gets `FRAME_TOO_LARGE` and the
/// connection stays up.
pub const MAX_FRAME: usize = 64 * 1024;
pub const MAX_TOPIC_LEN: usize = 128;
/// Longest string `id` a publish may carry.
pub const MAX_ID_LEN: usize = 64;
/// Most patterns one `subscribe` may list.
pub const MAX_PATTERNS: usize = 64;

/// Error codes carried by `{"type":"error"}` frames.
pub mod code {
    pub const BAD_FRAME: &str = "BAD_FRAME";
    pub const FRAME_TOO_LARGE: &str = "FRAME_TOO_LARGE";
    pub const BINARY_UNSUPPORTED: &str = "BINARY_UNSUPPORTED";
    pub const BAD_TOPIC: &str = "BAD_TOPIC";
    pub const TOPIC_RESERVED: &str = "TOPIC_RESERVED";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    pub const INTERNAL: &str = "INTERNAL";
}

/// A frame the client sent, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Publish {
        id: Value,
        topic: String,
        data: Value,
    },
    Subscribe(Filter),
    Resume {
        since: i64,
    },
}

/// Why a client frame was refused; becomes an `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub id: Option<Value>,
    pub code: &'static str,
    pub message: &'static str,
    /// With `RATE_LIMITED`: when the next publish will be taken.
    pub retry_after_ms: Option<u64>,
}

impl FrameError {
    pub fn new(code: &'static str, message: &'static str) -> Self {
        Self {
            id: None,
            code,
            message,
            retry_after_ms: None,
        }
    }

    pub fn with_id(mut self, id: &Value) -> Self {
        self.id = Some(id.clone());
        self
    }

    /// A publish over its device's budget (CONTRACT §4).
    pub fn rate_limited(id: &Value, retry_after_ms: u64) -> Self {
        Self {
            retry_after_ms: Some(retry_after_ms),
            ..Self::new(
                code::RATE_LIMITED,
                "publish budget used up; publish again later",
            )
            .with_id(id)
        }
    }

    /// `{"type":"error","id":K,"code":"…","message":"…"}` (`id` only when the frame had one;
    /// `retryAfterMs` only with `RATE_LIMITED`).
    pub fn render(&self) -> String {
        let mut m = Map::new();
        m.insert("type".into(), "error".into());
        if let Some(id) = &self.id {
            m.insert("id".into(), id.clone());
        }
        m.insert("code".into(), self.code.into());
        m.insert("message".into(), self.message.into());
        if let Some(ms) = self.retry_after_ms {
            m.insert("retryAfterMs".into(), ms.into());
        }
        Value::Object(m).to_string()
    }
}

fn bad(message: &'static str) -> FrameError {
    FrameError::new(code::BAD_FRAME, message)
}

/// Parses and validates one text frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    if text.len() > MAX_FRAME {
        return Err(FrameError::new(
            code::FRAME_TOO_LARGE,
            "frames are limited to 64 KiB",
        ));
    }
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(text) else {
        return Err(bad("a frame is one JSON object"));
    };
    let kind = match m.get("type") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(bad("a frame needs a string \"type\"")),
    };
    match kind {
        "publish" => parse_publish(&mut m),
        "subscribe" => parse_subscribe(&m),
        "resume" => match m.get("since").and_then(Value::as_i64) {
            Some(since) if since >= 0 => Ok(ClientFrame::Resume { since }),
            _ => Err(bad("resume needs \"since\": a sequence number (0 or more)")),
        },
        _ => Err(bad("unknown frame type")),
    }
}

fn parse_publish(m: &mut Map<String, Value>) -> Result<ClientFrame, FrameError> {
    let id = match m.remove("id") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Value::Number(n),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Value::String(s),
        _ => {
            return Err(bad(
                "publish needs an \"id\": an integer or a string of 1 to 64 bytes",
            ))
        }
    };
    let topic = match m.remove("topic") {
        Some(Value::String(t)) => t,
        _ => return Err(bad("publish needs a string \"topic\"").with_id(&id)),
    };
    if !valid_topic(&topic) {
        return Err(FrameError::new(code::BAD_TOPIC, TOPIC_RULE).with_id(&id));
    }
    if is_reserved(&topic) {
        return Err(FrameError::new(
            code::TOPIC_RESERVED,
            "topics under device., access., node., gateway. and vehicle. belong to the gateway",
        )
        .with_id(&id));
    }
    let data = match m.remove("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(bad("\"data\" must be a JSON object").with_id(&id)),
    };
    if data.to_string().len() > MAX_EVENT_DATA {
        return Err(
            FrameError::new(code::PAYLOAD_TOO_LARGE, "event data is limited to 32 KiB")
                .with_id(&id),
        );
    }
    Ok(ClientFrame::Publish { id, topic, data })
}

fn parse_subscribe(m: &Map<String, Value>) -> Result<ClientFrame, FrameError> {
    let Some(Value::Array(list)) = m.get("topics") else {
        return Err(bad("subscribe needs \"topics\": an array of patterns"));
    };
    if list.len() > MAX_PATTERNS {
        return Err(bad("subscribe takes at most 64 patterns"));
    }
    let mut patterns = Vec::with_capacity(list.len());
    for p in list {
        let pattern = p.as_str().and_then(Pattern::parse).ok_or(FrameError::new(
            code::BAD_TOPIC,
            "a pattern is \"*\", a topic, or a topic followed by \".*\" (at most 128 bytes)",
        ))?;
        patterns.push(pattern);
    }
    Ok(ClientFrame::Subscribe(Filter {
        patterns: Some(patterns),
    }))
}

const TOPIC_RULE: &str = "a topic is lower-case [a-z0-9_-] words joined by dots, at most 128 bytes";

/// CONTRACT §4: lower-case `[a-z0-9_-]` words joined by dots, 1 to 128 bytes. Case matters
/// because the reserved prefixes are lower-case: `DEVICE.paired` is not a topic at all.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOPIC_LEN
        && t.split('.').all(|word| {
            !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    /// `door.*`, stored with its dot (`door.`): every topic below `door`, at any depth.
    Below(String),
    Exact(String),
}

/// A subscribe pattern is itself at most 128 bytes: `*` alone (every topic), a topic (exactly
/// it), or a topic followed by `.*` (every topic below it, at any depth). `*` is a whole last
/// word only: `door*`, `*.open` and `a.*.b` are `BAD_TOPIC`.
impl Pattern {
    fn parse(p: &str) -> Option<Self> {
        if p.len() > MAX_TOPIC_LEN {
            return None;
        }
        if p == "*" {
            return Some(Self::Any);
        }
        if let Some(stem) = p.strip_suffix(".*") {
            return valid_topic(stem).then(|| Self::Below(format!("{stem}.")));
        }
        valid_topic(p).then(|| Self::Exact(p.to_owned()))
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Below(prefix) => topic.starts_with(prefix.as_str()),
            Self::Exact(t) => t == topic,
        }
    }
}

/// What a connection has subscribed to; everything until it says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `None`: every topic.
    patterns: Option<Vec<Pattern>>,
}

impl Filter {
    pub fn matches(&self, topic: &str) -> bool {
        match &self.patterns {
            None => true,
            Some(ps) => ps.iter().any(|p| p.matches(topic)),
        }
    }
}

/// `{"type":"hello","deviceId":…,"seq":LATEST}`; `deviceId` is null on admin sockets.
pub fn hello(device_id: Option<&DeviceId>, seq: i64) -> String {
    json!({ "type": "hello", "deviceId": device_id, "seq": seq }).to_string()
}

pub fn ack(id: &Value, seq: i64) -> String {
    json!({ "type": "ack", "id": id, "seq": seq }).to_string()
}

pub fn reset(seq: i64) -> String {
    json!({ "type": "reset", "seq": seq }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_code(text: &str) -> &'static str {
        parse(text).unwrap_err().code
    }

    #[test]
    fn parses_the_three_client_frames() {
        assert_eq!(
            parse(r#"{"type":"publish","id":7,"topic":"ui.sync","data":{"a":1}}"#).unwrap(),
            ClientFrame::Publish {
                id: json!(7),
                topic: "ui.sync".into(),
                data: json!({"a":1})
            }
        );
        assert_eq!(
            parse(r#"{"type":"publish","id":"k1","topic":"ui.sync"}"#).unwrap(),
            ClientFrame::Publish {
                id: json!("k1"),
                topic: "ui.sync".into(),
                data: json!({})
            }
        );
        assert_eq!(
            parse(r#"{"type":"resume","since":0}"#).unwrap(),
            ClientFrame::Resume { since: 0 }
        );
        let ClientFrame::Subscribe(f) =
            parse(r#"{"type":"subscribe","topics":["door.*","ui.sync"]}"#).unwrap()
        else {
            panic!("not a subscribe")
        };
        assert!(f.matches("door.front"));
        assert!(f.matches("door.front.open"));
        assert!(f.matches("ui.sync"));
        assert!(!f.matches("door"));
        assert!(!f.matches("doorbell.ring"));
        assert!(!f.matches("ui.sync2"));
        let ClientFrame::Subscribe(none) = parse(r#"{"type":"subscribe","topics":[]}"#).unwrap()
        else {
            panic!("not a subscribe")
        };
        assert!(!none.matches("ui.sync"));
        assert!(Filter::default().matches("anything"));
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        assert_eq!(err_code("not json"), code::BAD_FRAME);
        assert_eq!(err_code("[1,2]"), code::BAD_FRAME);
        assert_eq!(err_code(r#"{"type":"dance"}"#), code::BAD_FRAME);
        assert_eq!(err_code(r#"{"type":"resume","since":-1}"#), code::BAD_FRAME);
        assert_eq!(
            err_code(r#"{"type":"resume","since":1.5}"#),
            code::BAD_FRAME
        );
        assert_eq!(
            err_code(r#"{"type":"publish","topic":"a"}"#),
            code::BAD_FRAME
        );
        assert_eq!(
            err_code(r#"{"type":"publish","id":1.5,"topic":"a"}"#),
            code::BAD_FRAME
        );
        assert_eq!(
            err_code(r#"{"type":"publish","id":1,"topic":"a","data":[1]}"#),
            code::BAD_FRAME
        );
        for topic in [
            "a..b",
            "DEVICE.paired",
            "Access.granted",
            "ui.Sync",
            "a b",
            "é",
        ] {
            let e = parse(&json!({"type":"publish","id":1,"topic":topic}).to_string()).unwrap_err();
            assert_eq!((e.code, e.id), (code::BAD_TOPIC, Some(json!(1))), "{topic}");
        }
        for pattern in ["a.*.b", "*.a", "door*", "DOOR.*", "**", ".*", ""] {
            assert_eq!(
                err_code(&json!({"type":"subscribe","topics":[pattern]}).to_string()),
                code::BAD_TOPIC,
                "{pattern}"
            );
        }
        let long = format!("{}.*", "a".repeat(MAX_TOPIC_LEN - 1));
        assert_eq!(
            err_code(&json!({"type":"subscribe","topics":[long]}).to_string()),
            code::BAD_TOPIC
        );
        let many = vec!["a"; MAX_PATTERNS + 1];
        assert_eq!(
            err_code(&json!({"type":"subscribe","topics":many}).to_string()),
            code::BAD_FRAME
        );
        for t in ["device.x", "access.granted", "node.up", "gateway.y"] {
            let e = parse(&format!(r#"{{"type":"publish","id":"q","topic":"{t}"}}"#)).unwrap_err();
            assert_eq!((e.code, e.id), (code::TOPIC_RESERVED, Some(json!("q"))));
        }
        let big = "x".repeat(MAX_EVENT_DATA);
        let e = parse(&format!(
            r#"{{"type":"publish","id":3,"topic":"a","data":{{"b":"{big}"}}}}"#
        ))
        .unwrap_err();
        assert_eq!((e.code, e.id), (code::PAYLOAD_TOO_LARGE, Some(json!(3))));
        assert_eq!(err_code(&" ".repeat(MAX_FRAME + 1)), code::FRAME_TOO_LARGE);
    }

    #[test]
    fn errors_never_echo_values() {
        for text in [
            r#"{"type":"publish","id":1,"topic":"device.dev_secret"}"#,
            r#"{"type":"publish","id":1,"topic":"dev_secret bad"}"#,
            r#"{"type":"resume","since":"dev_secret"}"#,
            r#"{"type":"dev_secret"}"#,
            r#"{"type":"subscribe","topics":["dev_secret.."]}"#,
        ] {
            assert!(
                !parse(text).unwrap_err().render().contains("dev_secret"),
                "{text}"
            );
        }
    }

    #[test]
    fn topics() {
        assert!(valid_topic("ui.sync"));
        assert!(valid_topic("door-1.open_now.2"));
        assert!(valid_topic(&"a".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_topic("Door-1.open_now"));
        assert!(!valid_topic("DEVICE.paired"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".a"));
        assert!(!valid_topic("a."));
        assert!(!valid_topic("a b"));
        assert!(!valid_topic(&"a".repeat(MAX_TOPIC_LEN + 1)));
    }

    #[test]
    fn server_frames() {
        let v: Value = serde_json::from_str(&hello(None, 4)).unwrap();
        assert_eq!(v, json!({"type":"hello","deviceId":null,"seq":4}));
        let v: Value = serde_json::from_str(&ack(&json!("x"), 9)).unwrap();
        assert_eq!(v, json!({"type":"ack","id":"x","seq":9}));
        let v: Value = serde_json::from_str(&reset(2)).unwrap();
        assert_eq!(v, json!({"type":"reset","seq":2}));
        let v: Value =
            serde_json::from_str(&FrameError::rate_limited(&json!(5), 50).render()).unwrap();
        assert_eq!(
            (&v["type"], &v["id"], &v["code"], &v["retryAfterMs"]),
            (
                &json!("error"),
                &json!(5),
                &json!("RATE_LIMITED"),
                &json!(50)
            )
        );
    }
}
