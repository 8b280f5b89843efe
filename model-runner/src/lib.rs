//! An LLM engine on candle with a vLLM-style paged KV cache and continuous batching. It must never log prompts or completions.
