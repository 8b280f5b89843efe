//! The tokenizer and chat template, both built from the GGUF metadata: no download.
//!
//! Byte-level BPE (`tokenizer.ggml.model` = gpt2) with the pre-tokenizer named by
//! `tokenizer.ggml.pre`; control and user-defined tokens are matched whole before BPE. The
//! chat template is `tokenizer.chat_template`, rendered with minijinja in a sandbox that can
//! read only the messages it is given. This module never logs text.

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;
use serde_json::json;

use crate::gguf::{Gguf, Value};

/// GGUF token types.
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// The GPT-2 pre-tokenizer pattern used by Llama 3 (`llama-bpe`) and friends.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer pattern.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why the tokenizer or template could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the model has no {0} in its metadata")]
    Missing(&'static str),
    #[error("tokenizer model {0:?} is not supported (only gpt2-style BPE)")]
    UnsupportedModel(String),
    #[error("pre-tokenizer {0:?} is not supported")]
    UnsupportedPre(String),
    #[error("could not build the tokenizer: {0}")]
    Build(String),
    #[error("could not encode or decode: {0}")]
    Codec(String),
    #[error("the chat template failed: {0}")]
    Template(String),
}

/// Text to token ids and back, plus the model's special tokens.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Tokens that end generation.
    pub stop_tokens: Vec<u32>,
    pub bos_token: String,
    pub eos_token: String,
    pub vocab_size: usize,
    chat_template: Option<String>,
}

/// One chat message, as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

fn strings(g: &Gguf, key: &'static str) -> Result<Vec<String>, TokenizerError> {
    let arr = g
        .get(key)
        .and_then(Value::as_array)
        .ok_or(TokenizerError::Missing(key))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or(TokenizerError::Missing(key))
        })
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.into()));
        }
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let merges = strings(g, "tokenizer.ggml.merges")?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
        let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
        let pre_tokenizer = match pre {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "gpt2" | "default" => byte_level(true),
            "llama-bpe" | "llama3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
                split(LLAMA3_PATTERN), byte_level(false)]}),
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [
                split(QWEN2_PATTERN), byte_level(false)]}),
            other => return Err(TokenizerError::UnsupportedPre(other.into())),
        };
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            vocab.insert(tok.clone(), json!(id));
            let t = types.get(id).copied().unwrap_or(1);
            if t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED {
                added.push(
                    json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": t == TOKEN_TYPE_CONTROL}),
                );
            }
        }
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(spec).map_err(|e| TokenizerError::Build(e.to_string()))?;
        let id_of = |key: &str| g.get(key).and_then(Value::as_u64).map(|v| v as u32);
        let eos = id_of("tokenizer.ggml.eos_token_id");
        let mut stop_tokens: Vec<u32> = eos.into_iter().collect();
        // Chat models also end a turn with these; stop on any that exist.
        for name in [
            "<|endoftext|>",
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
        ] {
            if let Some(id) = tokens.iter().position(|t| t == name)
                && !stop_tokens.contains(&(id as u32))
            {
                stop_tokens.push(id as u32);
            }
        }
        let name_of = |id: Option<u32>| {
            id.and_then(|i| tokens.get(i as usize).cloned())
                .unwrap_or_default()
        };
        Ok(Tokenizer {
            inner,
            stop_tokens,
            bos_token: name_of(id_of("tokenizer.ggml.bos_token_id")),
            eos_token: name_of(eos),
            vocab_size: tokens.len(),
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Token ids of `text`, with special tokens written in the text recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, leaving special tokens out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Renders the chat template for `messages`, ending with the assistant's turn opened.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::Missing("tokenizer.chat_template"))?;
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.set_unknown_method_callback(python_string_methods);
        env.add_template("chat", source)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

/// The few Python string methods that chat templates call.
fn python_string_methods(
    _state: &minijinja::State,
    value: &JinjaValue,
    method: &str,
    args: &[JinjaValue],
) -> Result<JinjaValue, JinjaError> {
    let Some(s) = value.as_str() else {
        return Err(JinjaError::from(ErrorKind::UnknownMethod));
    };
    let (args, _kwargs): (&[JinjaValue], Kwargs) = minijinja::value::from_args(args)?;
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str()).unwrap_or("");
    Ok(match method {
        "strip" => JinjaValue::from(s.trim()),
        "lstrip" => JinjaValue::from(s.trim_start()),
        "rstrip" => JinjaValue::from(s.trim_end()),
        "upper" => JinjaValue::from(s.to_uppercase()),
        "lower" => JinjaValue::from(s.to_lowercase()),
        "startswith" => JinjaValue::from(s.starts_with(arg(0))),
        "endswith" => JinjaValue::from(s.ends_with(arg(0))),
        _ => return Err(JinjaError::from(ErrorKind::UnknownMethod)),
    })
}
