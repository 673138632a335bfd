//! What a running node is asked to do, from the prompt or the control socket.
//!
//! On the socket a request is one line of JSON, such as
//! `{"op":"add","key":"cart","value":"milk"}` or
//! `{"op":"get","key":"cart","read":1,"timeout_ms":2000}`; every field is described on
//! [`Request`]. Unknown fields are refused, so a misspelt option is not silently ignored.

use std::time::Duration;

use crdt_net::node::Ack;
use serde::{Deserialize, Serialize};

/// One request. Keys must not be empty; values may be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add `value` to the set at `key`.
    Add {
        /// The object's key.
        key: String,
        /// The element.
        value: String,
        /// When the write returns.
        #[serde(default)]
        wait: Wait,
    },
    /// Remove `value` from the set at `key` (refused if nothing is at `key`).
    Remove {
        /// The object's key.
        key: String,
        /// The element.
        value: String,
        /// When the write returns.
        #[serde(default)]
        wait: Wait,
    },
    /// Add `by` (default 1) to the grow-only counter at `key`.
    Inc {
        /// The object's key.
        key: String,
        /// How much.
        #[serde(default = "one")]
        by: u64,
        /// When the write returns.
        #[serde(default)]
        wait: Wait,
    },
    /// Add `by` to the up-down counter at `key`.
    Incr {
        /// The object's key.
        key: String,
        /// How much.
        by: u64,
        /// When the write returns.
        #[serde(default)]
        wait: Wait,
    },
    /// Subtract `by` from the up-down counter at `key`.
    Decr {
        /// The object's key.
        key: String,
        /// How much.
        by: u64,
        /// When the write returns.
        #[serde(default)]
        wait: Wait,
    },
    /// Write the last-writer-wins register at `key`.
    Set {
        /// The object's key.
        key: String,
        /// The value.
        value: String,
        /// When the write returns.
        #[serde(default)]
        wait: Wait,
    },
    /// Write the multi-value register at `key` (concurrent writes stay visible).
    Write {
        /// The object's key.
        key: String,
        /// The value.
        value: String,
        /// When the write returns.
        #[serde(default)]
        wait: Wait,
    },
    /// Read the object at `key`.
    Get {
        /// The object's key.
        key: String,
        /// Every entry of a large set or map (otherwise its size and first entries).
        #[serde(default)]
        all: bool,
        /// Wait until this node has the write this token names (read-your-writes).
        #[serde(default)]
        after: Option<String>,
        /// Merge the object from this many peers first.
        #[serde(default)]
        read: usize,
        /// How long to wait for `after` or `read` (default 5000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// List every object.
    Keys {},
    /// This node's id, addresses, traffic and catch-up progress.
    Status {},
    /// The known peers.
    Peers {},
    /// Trust a peer at once: its fingerprint (64 hex digits) or, weaker, its id (16).
    Trust {
        /// The fingerprint or id.
        peer: String,
    },
    /// Stop trusting a peer (fingerprint or id) and close its connections.
    Untrust {
        /// The fingerprint or id.
        peer: String,
    },
    /// Stream changes (of `key` only, if given) until the connection closes.
    Watch {
        /// Only this key's changes.
        #[serde(default)]
        key: Option<String>,
    },
}

fn one() -> u64 {
    1
}

/// When a write returns: once `ack` is met, or with an error after `timeout_ms` (the write
/// stays and keeps spreading).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// `"local"` (the default), a number of peers, `"majority"` or `"all"`.
    #[serde(default)]
    pub ack: Level,
    /// How long to wait for peers (default 5000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl Wait {
    /// The acknowledgement level.
    pub fn ack(&self) -> Ack {
        self.ack.0
    }

    /// The timeout, 5 s unless given.
    pub fn timeout(&self) -> Duration {
        timeout(self.timeout_ms)
    }
}

/// `ms`, or the default of 5 s.
pub fn timeout(ms: Option<u64>) -> Duration {
    Duration::from_millis(ms.unwrap_or(5000))
}

/// An acknowledgement level, written `local`, `majority`, `all` or a number of peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LevelText", into = "String")]
pub struct Level(pub Ack);

/// A level as JSON writes it: a string, or a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum LevelText {
    Peers(usize),
    Text(String),
}

impl TryFrom<LevelText> for Level {
    type Error = String;

    fn try_from(text: LevelText) -> Result<Self, String> {
        match text {
            LevelText::Peers(n) => Ok(Level(Ack::Peers(n))),
            LevelText::Text(text) => text.parse(),
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(Level(match text {
            "local" => Ack::Local,
            "majority" => Ack::Majority,
            "all" => Ack::All,
            n => Ack::Peers(n.parse().map_err(|_| {
                format!(
                    "not an acknowledgement level (local, majority, all or a number of peers): {}",
                    crate::execute::quoted(n)
                )
            })?),
        }))
    }
}

impl From<Level> for String {
    fn from(level: Level) -> String {
        match level.0 {
            Ack::Majority => "majority".into(),
            Ack::All => "all".into(),
            Ack::Peers(n) => n.to_string(),
            _ => "local".into(),
        }
    }
}

impl Request {
    /// The key it names, if any, for the check that keys are not empty.
    pub fn key(&self) -> Option<&str> {
        match self {
            Request::Add { key, .. }
            | Request::Remove { key, .. }
            | Request::Inc { key, .. }
            | Request::Incr { key, .. }
            | Request::Decr { key, .. }
            | Request::Set { key, .. }
            | Request::Write { key, .. }
            | Request::Get { key, .. } => Some(key),
            Request::Watch { key } => key.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_json_with_defaults() {
        let add: Request =
            serde_json::from_str(r#"{"op":"add","key":"cart","value":"milk"}"#).expect("an add");
        assert_eq!(
            add,
            Request::Add {
                key: "cart".into(),
                value: "milk".into(),
                wait: Wait::default()
            }
        );
        let acked: Request = serde_json::from_str(
            r#"{"op":"inc","key":"n","wait":{"ack":"majority","timeout_ms":10}}"#,
        )
        .expect("an inc");
        let Request::Inc { by, wait, .. } = acked else {
            panic!("not an inc: {acked:?}");
        };
        assert_eq!(
            (by, wait.ack(), wait.timeout_ms),
            (1, Ack::Majority, Some(10))
        );
        let peers: Request =
            serde_json::from_str(r#"{"op":"set","key":"k","value":"v","wait":{"ack":2}}"#)
                .expect("a set");
        assert!(matches!(peers, Request::Set { wait, .. } if wait.ack() == Ack::Peers(2)));
    }

    #[test]
    fn misspelt_or_out_of_range_fields_are_refused() {
        for bad in [
            r#"{"op":"add","key":"cart","value":"milk","timeout":5}"#,
            r#"{"op":"keys","all":true}"#,
            r#"{"op":"inc","key":"n","by":-1}"#,
            r#"{"op":"inc","key":"n","by":18446744073709551616}"#,
            r#"{"op":"launch"}"#,
            r#"{"op":"add","key":"cart","value":"milk","wait":{"ack":"most"}}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
