//! The benchmark against llama.cpp: prompt processing, single-stream and batched generation,
//! KV capacity; and llama.cpp's own tools run on the same file with the same thread count,
//! so that ratios come from one run on one machine.
//!
//! It drives the engine directly (no HTTP), like llama.cpp's `llama-bench` and
//! `llama-batched-bench` drive theirs. It is a measurement tool, never a test: nothing here
//! asserts a speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::engine::{Engine, EngineConfig};
use crate::kv::KvStore;
use crate::model::LoadedModel;
use crate::sampling::SamplingParams;

/// Prompt length of the prompt-processing figure (llama.cpp's pp512).
pub const PROMPT_TOKENS: usize = 512;
/// Tokens generated per stream (llama.cpp's tg128, and `-ntg 128`).
pub const GENERATED_TOKENS: usize = 128;
/// Prompt length of each generating stream (`-npp 8`).
pub const STREAM_PROMPT_TOKENS: usize = 8;
/// KV budget of the capacity figure, in MiB.
pub const KV_BUDGET_MB: usize = 256;
/// Concurrent streams of the aggregate figures.
pub const STREAMS: [usize; 2] = [8, 32];

/// Tokens per second, one figure per measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Prompt processing, 512 tokens in one step.
    pub prompt_512: f64,
    /// One stream generating 128 tokens.
    pub one_stream: f64,
    /// 8 and 32 streams generating 128 tokens each, tokens/s in all.
    pub streams: [f64; 2],
}

/// How many 512-token sequences fit in [`KV_BUDGET_MB`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvCapacity {
    pub paged_sequences: usize,
    pub contiguous_sequences: usize,
    pub context: usize,
    /// Share of reserved KV memory not holding a token (internal fragmentation).
    pub paged_waste: f64,
}

fn engine(m: &LoadedModel, batch_tokens: usize, blocks: usize) -> Engine {
    let config = EngineConfig {
        block_tokens: 16,
        kv_blocks: blocks,
        max_batch_tokens: batch_tokens,
        max_running: 64,
    };
    // No stop tokens: every stream generates exactly what it was asked for.
    Engine::new(m.model.clone(), Vec::new(), config)
}

/// A prompt of `n` ordinary tokens (ids from the middle of the vocabulary).
fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 1000 + (i * 7 + salt * 131) % 20_000)
        .collect()
}

/// Runs `streams` sequences of `prompt_len` prompt tokens and `gen_tokens` generated
/// tokens; returns (seconds until every stream has its first token, generation tokens/s
/// after that).
fn run_streams(
    m: &LoadedModel,
    streams: usize,
    prompt_len: usize,
    gen_tokens: usize,
) -> anyhow::Result<(f64, f64)> {
    let blocks = streams * (prompt_len + gen_tokens).div_ceil(16) + 8;
    let mut e = engine(m, PROMPT_TOKENS.max(streams), blocks);
    for s in 0..streams {
        e.add(
            s as u64,
            prompt(prompt_len, s as u32),
            SamplingParams::greedy(gen_tokens),
            [s as u8; 32],
            None,
        )
        .map_err(|e| anyhow::anyhow!("the benchmark sequence does not fit: {e:?}"))?;
    }
    let start = Instant::now();
    let mut first_tokens = None;
    let mut generated = 0usize;
    while e.has_work() {
        let out = e.step()?;
        generated += out.iter().filter(|o| o.token.is_some()).count();
        if first_tokens.is_none() && generated >= streams {
            first_tokens = Some((Instant::now(), generated));
        }
    }
    let end = Instant::now();
    let (t0, at_first) = first_tokens.unwrap_or((start, 0));
    let decode_s = (end - t0).as_secs_f64();
    let rate = if decode_s > 0.0 {
        (generated - at_first) as f64 / decode_s
    } else {
        0.0
    };
    Ok(((t0 - start).as_secs_f64(), rate))
}

/// Measures the engine on a loaded model.
pub fn measure_engine(m: &LoadedModel) -> anyhow::Result<Figures> {
    // A short warm-up: page the weights in, grow the scratch buffers.
    run_streams(m, 2, 16, 4)?;
    let (pp, _) = run_streams(m, 1, PROMPT_TOKENS, 1)?;
    let (_, one) = run_streams(m, 1, STREAM_PROMPT_TOKENS, GENERATED_TOKENS)?;
    let mut streams = [0.0; 2];
    for (i, n) in STREAMS.into_iter().enumerate() {
        streams[i] = run_streams(m, n, STREAM_PROMPT_TOKENS, GENERATED_TOKENS)?.1;
    }
    Ok(Figures {
        prompt_512: PROMPT_TOKENS as f64 / pp,
        one_stream: one,
        streams,
    })
}

/// The KV capacity of the paged cache against a contiguous one, for this model's shape.
pub fn kv_capacity(m: &LoadedModel) -> KvCapacity {
    let shape = m.model.config.kv_shape();
    let budget = KV_BUDGET_MB << 20;
    let blocks = KvStore::blocks_for_budget(shape, 16, budget);
    let per_seq_blocks = PROMPT_TOKENS.div_ceil(16);
    KvCapacity {
        paged_sequences: blocks / per_seq_blocks,
        contiguous_sequences: budget / (shape.bytes_per_token() * m.model.config.context),
        context: m.model.config.context,
        paged_waste: 1.0 - PROMPT_TOKENS as f64 / (per_seq_blocks * 16) as f64,
    }
}

/// Where a cached llama.cpp build lives (`model-runner/scripts/build-llama-cpp.sh`), if it
/// is there.
pub fn cached_llama_cpp() -> Option<PathBuf> {
    let cache = std::env::var("CLOISTER_CACHE").unwrap_or_else(|_| "/var/cache/cloister".into());
    let bin = Path::new(&cache).join("llama-cpp-0.3.36/build/bin");
    (bin.join("llama-bench").is_file() && bin.join("llama-batched-bench").is_file()).then_some(bin)
}

/// Runs llama.cpp's `llama-bench` (pp512, tg128) and `llama-batched-bench` (8 and 32
/// streams of 128 tokens after 8-token prompts) from `bin` on `model` with `threads`.
pub fn measure_llama_cpp(bin: &Path, model: &Path, threads: usize) -> anyhow::Result<Figures> {
    let t = threads.to_string();
    let out = Command::new(bin.join("llama-bench"))
        .arg("-m")
        .arg(model)
        .args(["-t", &t, "-p", "512", "-n", "128", "-o", "json"])
        .output()?;
    anyhow::ensure!(out.status.success(), "llama-bench failed: {}", out.status);
    let (prompt_512, one_stream) = parse_llama_bench(&String::from_utf8_lossy(&out.stdout))?;
    let out = Command::new(bin.join("llama-batched-bench"))
        .arg("-m")
        .arg(model)
        .args([
            "-t", &t, "-tb", &t, "-c", "8192", "-b", "2048", "-ub", "512",
        ])
        .args(["-npp", "8", "-ntg", "128", "-npl", "8,32"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "llama-batched-bench failed: {}",
        out.status
    );
    let streams = parse_batched_bench(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Figures {
        prompt_512,
        one_stream,
        streams,
    })
}

/// (pp512, tg128) average tokens/s from `llama-bench -o json`.
pub fn parse_llama_bench(json: &str) -> anyhow::Result<(f64, f64)> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)?;
    let pick = |p: u64, n: u64| {
        rows.iter()
            .find(|r| r["n_prompt"].as_u64() == Some(p) && r["n_gen"].as_u64() == Some(n))
            .and_then(|r| r["avg_ts"].as_f64())
            .ok_or_else(|| anyhow::anyhow!("llama-bench printed no pp{p}/tg{n} figure"))
    };
    Ok((pick(512, 0)?, pick(0, 128)?))
}

/// S_TG (generation tokens/s in all) for 8 and 32 streams from `llama-batched-bench`'s
/// table: `| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |`.
pub fn parse_batched_bench(table: &str) -> anyhow::Result<[f64; 2]> {
    let mut out = [None; 2];
    for line in table.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 8 || cells[0] != "8" || cells[1] != "128" {
            continue;
        }
        for (i, n) in STREAMS.into_iter().enumerate() {
            if cells[2] == n.to_string() {
                out[i] = cells[7].parse::<f64>().ok();
            }
        }
    }
    match out {
        [Some(a), Some(b)] => Ok([a, b]),
        _ => anyhow::bail!("llama-batched-bench printed no S_TG for 8 and 32 streams"),
    }
}

/// The 1-minute load average, to print beside figures taken on a shared machine.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The figures' names, in the order of [`Figures::values`].
pub const FIGURE_NAMES: [&str; 4] = [
    "prompt processing, 512 tokens",
    "one stream, 128 tokens",
    "8 streams, in all",
    "32 streams, in all",
];

impl Figures {
    /// The figures in the order of [`FIGURE_NAMES`].
    pub fn values(&self) -> [f64; 4] {
        [
            self.prompt_512,
            self.one_stream,
            self.streams[0],
            self.streams[1],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_outputs_parse() {
        let json = r#"[{"n_prompt": 512, "n_gen": 0, "avg_ts": 284.7},
                       {"n_prompt": 0, "n_gen": 128, "avg_ts": 124.6}]"#;
        assert_eq!(parse_llama_bench(json).unwrap(), (284.7, 124.6));
        assert!(parse_llama_bench("[]").is_err());
        let table = "\
|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|     8 |    128 |    8 |   1088 |    0.050 |  1280.00 |    5.148 |   198.90 |    5.198 |   209.31 |
|     8 |    128 |   32 |   4352 |    0.200 |  1280.00 |   17.010 |   240.80 |   17.21 |   252.88 |";
        assert_eq!(parse_batched_bench(table).unwrap(), [198.9, 240.8]);
        assert!(parse_batched_bench(&table[..300]).is_err());
    }
}
