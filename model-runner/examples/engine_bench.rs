//! Engine benchmark: prompt processing, single-stream and batched generation, KV capacity.
//! Prints figures and, when llama.cpp figures are given, ratios.
//!
//! `cargo run --release -p cloister-model-runner --example engine_bench -- MODEL.gguf [THREADS]`
//!
//! Set `LLAMA_CPP_PP512`, `LLAMA_CPP_TG128`, `LLAMA_CPP_TG_8`, `LLAMA_CPP_TG_32` (tokens/s
//! measured by llama.cpp in the same run, on the same file and thread count) to get ratios.
use std::time::Instant;

use cloister_model_runner::engine::{Engine, EngineConfig};
use cloister_model_runner::kv::KvStore;
use cloister_model_runner::model::{LoadedModel, Model};
use cloister_model_runner::sampling::SamplingParams;

const PROMPT_TOKENS: usize = 512;
const GENERATED_TOKENS: usize = 128;
const KV_BUDGET_MB: usize = 256;

fn engine(m: &LoadedModel, batch_tokens: usize, blocks: usize) -> Engine {
    let config = EngineConfig {
        block_tokens: 16,
        kv_blocks: blocks,
        max_batch_tokens: batch_tokens,
        max_running: 64,
    };
    // No stop tokens: every stream generates exactly GENERATED_TOKENS.
    Engine::new(m.model.clone(), Vec::new(), config)
}

/// A prompt of `n` ordinary tokens (ids from the middle of the vocabulary).
fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 1000 + (i * 7 + salt * 131) % 20_000)
        .collect()
}

/// Runs `streams` sequences of `prompt_len` prompt tokens and `gen_tokens` generated
/// tokens; returns (prefill seconds: until every stream has its first token, generation
/// tokens/s after that).
fn run(m: &LoadedModel, streams: usize, prompt_len: usize, gen_tokens: usize) -> (f64, f64) {
    let blocks = streams * (prompt_len + gen_tokens).div_ceil(16) + 8;
    let mut e = engine(m, PROMPT_TOKENS.max(streams), blocks);
    for s in 0..streams {
        let params = SamplingParams::greedy(gen_tokens);
        e.add(
            s as u64,
            prompt(prompt_len, s as u32),
            params,
            [s as u8; 32],
            None,
        )
        .expect("fits");
    }
    let start = Instant::now();
    let mut prefill_end = None;
    let mut generated = 0usize;
    while e.has_work() {
        let out = e.step().expect("step");
        generated += out.iter().filter(|o| o.token.is_some()).count();
        if prefill_end.is_none() && generated >= streams {
            prefill_end = Some((Instant::now(), generated));
        }
    }
    let end = Instant::now();
    let (t0, at_prefill) = prefill_end.unwrap_or((start, 0));
    let decode_tokens = generated - at_prefill;
    let decode_s = (end - t0).as_secs_f64();
    let rate = if decode_s > 0.0 {
        decode_tokens as f64 / decode_s
    } else {
        0.0
    };
    ((t0 - start).as_secs_f64(), rate)
}

fn ratio(name: &str, ours: f64) {
    match std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()) {
        Some(theirs) => println!(
            "    llama.cpp {theirs:.1} tok/s -> ratio {:.2}x",
            ours / theirs
        ),
        None => println!("    (set {name} to the llama.cpp figure for a ratio)"),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bench MODEL.gguf [THREADS]"))?;
    let threads: usize = args.get(2).map(|t| t.parse()).transpose()?.unwrap_or(2);
    let m = Model::load(path.as_ref(), threads)?;
    println!(
        "model {} | kernel {:?} | threads {}",
        m.name,
        m.model.kernel,
        m.model.threads()
    );

    let (pp, _) = run(&m, 1, PROMPT_TOKENS, 1);
    let pp_rate = PROMPT_TOKENS as f64 / pp;
    println!("prompt processing, {PROMPT_TOKENS} tokens: {pp_rate:.1} tok/s");
    ratio("LLAMA_CPP_PP512", pp_rate);

    let (_, tg) = run(&m, 1, 8, GENERATED_TOKENS);
    println!("single stream, {GENERATED_TOKENS} tokens: {tg:.1} tok/s");
    ratio("LLAMA_CPP_TG128", tg);

    for (streams, var) in [(8, "LLAMA_CPP_TG_8"), (32, "LLAMA_CPP_TG_32")] {
        let (_, agg) = run(&m, streams, 8, GENERATED_TOKENS);
        println!("{streams} streams, {GENERATED_TOKENS} tokens each: {agg:.1} tok/s in all");
        ratio(var, agg);
    }

    let shape = m.model.config.kv_shape();
    let blocks = KvStore::blocks_for_budget(shape, 16, KV_BUDGET_MB << 20);
    let per_seq_blocks = PROMPT_TOKENS.div_ceil(16);
    let paged = blocks / per_seq_blocks;
    let contiguous = (KV_BUDGET_MB << 20) / (shape.bytes_per_token() * m.model.config.context);
    let waste = 1.0 - PROMPT_TOKENS as f64 / (per_seq_blocks * 16) as f64;
    println!(
        "KV budget {KV_BUDGET_MB} MB: {paged} sequences of {PROMPT_TOKENS} tokens paged, {contiguous} with a contiguous cache reserving the full {}-token context; paged waste {:.1}% (internal fragmentation only)",
        m.model.config.context,
        waste * 100.0
    );
    Ok(())
}
