//! The inner messages of the channel: the JSON a client seals as its request, and the JSON
//! events the server seals, one per response chunk.
//!
//! These types only describe the plaintext; they must never be logged (they hold prompts
//! and completions).

use serde::{Deserialize, Serialize};

/// The plaintext of a sealed request (UTF-8 JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The client's clock when it sealed the request, in milliseconds since the Unix epoch;
    /// the server refuses it outside its replay window.
    pub ts_ms: u64,
    /// The conversation this message belongs to, or null for an ephemeral one.
    #[serde(default)]
    pub conversation: Option<String>,
    /// An OpenAI chat.completions request body: messages, max_tokens, temperature, ...
    pub request: serde_json::Value,
}

impl ChatRequest {
    /// The JSON bytes to seal.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and a Value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

/// Token counts, as in an OpenAI `usage` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// One event of a response; each response chunk's plaintext is one of these as JSON.
/// A well-formed response is `meta`, any number of `delta`, then `done` or `error` in the
/// final chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ResponseEvent {
    /// Which model answers.
    Meta { model: String },
    /// The next piece of the answer.
    Delta { text: String },
    /// Generation ended.
    Done {
        finish_reason: FinishReason,
        #[serde(default)]
        usage: Usage,
    },
    /// Generation failed; the message is safe to show (it holds no prompt text).
    Error { message: String },
}

impl ResponseEvent {
    /// The JSON bytes to seal as one chunk.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses one opened chunk.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_documented_json_shape() {
        let done = ResponseEvent::Done {
            finish_reason: FinishReason::Cancelled,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                total_tokens: 5,
            },
        };
        let value: serde_json::Value = serde_json::from_slice(&done.to_json_bytes()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "done", "finish_reason": "cancelled",
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
        );
        let delta = ResponseEvent::from_json_bytes(br#"{"type":"delta","text":"hi"}"#).unwrap();
        assert_eq!(delta, ResponseEvent::Delta { text: "hi".into() });
        assert!(ResponseEvent::from_json_bytes(br#"{"type":"shout","text":"hi"}"#).is_err());
    }

    #[test]
    fn a_request_without_conversation_is_ephemeral() {
        let request: ChatRequest =
            serde_json::from_str(r#"{"ts_ms": 5, "request": {"messages": []}}"#).unwrap();
        assert_eq!(request.conversation, None);
        assert_eq!(request.ts_ms, 5);
        assert!(
            serde_json::from_str::<ChatRequest>(r#"{"request": {}}"#).is_err(),
            "ts_ms is required"
        );
    }
}
