//! An LLM engine with a vLLM-style paged KV cache and continuous batching, speaking the
//! OpenAI HTTP API over TCP and a Unix socket.
//!
//! It must never log prompts or completions: only counts, sizes and timings.
#![deny(unsafe_code)]

pub mod bench;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod gguf;
pub mod kv;
mod mmap;
pub mod model;
pub mod pool;
pub mod quant;
pub mod sampling;
pub mod server;
pub mod service;
pub mod tokenizer;
