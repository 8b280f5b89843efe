//! `measurements.json`: the expected register values of a Cloister image and, for each
//! register, the events behind it. The format is specified in docs/measurements.md.
//!
//! Serialization only; never I/O.

use serde::{Deserialize, Serialize};

use crate::register::{Digest48, Register};

/// One extend of a register: what was measured, the digest extended, and the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What this event is, in words ("kernel Authenticode SHA-384").
    pub what: String,
    /// The 48-byte digest extended into the register, lower-case hex.
    pub digest: String,
    /// The inputs the digest came from (file names, sizes, settings), as text.
    #[serde(default)]
    pub inputs: std::collections::BTreeMap<String, String>,
}

impl Event {
    pub fn new(what: impl Into<String>, digest: &Digest48) -> Self {
        Event {
            what: what.into(),
            digest: hex::encode(digest),
            inputs: Default::default(),
        }
    }

    pub fn input(mut self, key: &str, value: impl Into<String>) -> Self {
        self.inputs.insert(key.to_owned(), value.into());
        self
    }
}

/// The events of every register, by register name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Events {
    #[serde(default)]
    pub mrtd: Vec<Event>,
    #[serde(default)]
    pub rtmr0: Vec<Event>,
    #[serde(default)]
    pub rtmr1: Vec<Event>,
    #[serde(default)]
    pub rtmr2: Vec<Event>,
    #[serde(default)]
    pub rtmr3: Vec<Event>,
}

/// Expected register values, lower-case hex. A register left out is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    #[serde(default, with = "opt_hex48", skip_serializing_if = "Option::is_none")]
    pub mrtd: Option<Digest48>,
    #[serde(default, with = "opt_hex48", skip_serializing_if = "Option::is_none")]
    pub rtmr0: Option<Digest48>,
    #[serde(default, with = "opt_hex48", skip_serializing_if = "Option::is_none")]
    pub rtmr1: Option<Digest48>,
    #[serde(default, with = "opt_hex48", skip_serializing_if = "Option::is_none")]
    pub rtmr2: Option<Digest48>,
    #[serde(default, with = "opt_hex48", skip_serializing_if = "Option::is_none")]
    pub rtmr3: Option<Digest48>,
    #[serde(default)]
    pub events: Events,
}

impl Measurements {
    /// The expected value of a register by its name (`mrtd`, `rtmr0` .. `rtmr3`).
    pub fn register(&self, name: &str) -> Option<&Digest48> {
        match name {
            "mrtd" => self.mrtd.as_ref(),
            "rtmr0" => self.rtmr0.as_ref(),
            "rtmr1" => self.rtmr1.as_ref(),
            "rtmr2" => self.rtmr2.as_ref(),
            "rtmr3" => self.rtmr3.as_ref(),
            _ => None,
        }
    }

    /// Parses `measurements.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Writes `measurements.json` (pretty, keys in a fixed order, newline at the end).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Replays a list of events into a register value.
pub fn replay(events: &[Event]) -> Option<Digest48> {
    let mut r = Register::default();
    for e in events {
        let d: Digest48 = hex::decode(&e.digest).ok()?.try_into().ok()?;
        r.extend(&d);
    }
    Some(r.0)
}

mod opt_hex48 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::register::Digest48;

    pub fn serialize<S: Serializer>(v: &Option<Digest48>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&hex::encode(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Digest48>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => {
                let bytes = hex::decode(&s).map_err(D::Error::custom)?;
                let arr: Digest48 = bytes
                    .try_into()
                    .map_err(|_| D::Error::custom("a register is 48 bytes (96 hex digits)"))?;
                Ok(Some(arr))
            }
        }
    }
}
