//! Generation throughput, CPU against CUDA, in one run, on a synthetic model with
//! SmolLM2-135M's full shapes and formats (30 layers, 49152-token vocabulary, Q4_1 matrices,
//! Q8_0 tied embedding), written at start. Prints tokens/s for one stream and for 32
//! streams on each device, and the CUDA/CPU ratios.
//!
//! `cargo run --release --features cuda --example cuda_bench -- [NEW_TOKENS] [THREADS]`
//! (defaults: 64 new tokens per stream after a 16-token prompt; every CPU).

#[path = "../tests/common/synthetic.rs"]
mod synthetic;

use std::time::Instant;

use cloister_model_runner::engine::{Device, Engine, EngineConfig};
use cloister_model_runner::model::Model;
use cloister_model_runner::sampling::SamplingParams;

const PROMPT_TOKENS: usize = 16;
const STREAMS: [usize; 2] = [1, 32];

/// Decode tokens/s of `streams` greedy streams of `new_tokens` each (the prefill step is
/// left out of the timing).
fn measure(
    model: &std::sync::Arc<Model>,
    device: Device,
    streams: usize,
    new_tokens: usize,
) -> anyhow::Result<f64> {
    let block_tokens = 16;
    let config = EngineConfig {
        block_tokens,
        kv_blocks: streams * (PROMPT_TOKENS + new_tokens).div_ceil(block_tokens) + 8,
        max_batch_tokens: streams * PROMPT_TOKENS,
        max_running: streams,
    };
    let mut engine = Engine::on_device(model.clone(), Vec::new(), config, device)?;
    let mut rng = synthetic::Rng::new(1);
    let vocab = model.config.vocab as u64;
    for s in 0..streams {
        let prompt = (0..PROMPT_TOKENS)
            .map(|_| rng.below(vocab) as u32)
            .collect();
        engine.add(
            s as u64,
            prompt,
            SamplingParams::greedy(new_tokens),
            [0; 32],
            None,
        )?;
    }
    // Prefill (every prompt fits the first step), then time the decode steps.
    engine.step()?;
    let before = engine.stats.generated_tokens;
    let started = Instant::now();
    while engine.has_work() {
        engine.step()?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((engine.stats.generated_tokens - before) as f64 / secs)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let new_tokens: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let threads: usize = match args.next() {
        Some(a) => a.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let dir = tempfile_dir()?;
    let path = dir.join("synthetic-smollm2.gguf");
    synthetic::write_model(&path, synthetic::Shape::smollm2(30, 49152), 0x5eed)?;
    let loaded = Model::load(&path, threads)?;
    std::fs::remove_dir_all(&dir).ok();
    let model = loaded.model;
    println!(
        "synthetic SmolLM2 shapes: {} layers, vocab {}, {PROMPT_TOKENS}-token prompts, {new_tokens} new tokens per stream, {threads} CPU threads ({:?})",
        model.config.layers, model.config.vocab, model.kernel
    );
    println!("{:<8} {:>8} {:>12}", "device", "streams", "tokens/s");
    let mut ratios = Vec::new();
    for streams in STREAMS {
        let cpu = measure(&model, Device::Cpu, streams, new_tokens)?;
        println!("{:<8} {streams:>8} {cpu:>12.1}", "cpu");
        let gpu = measure(&model, Device::Cuda(0), streams, new_tokens)?;
        println!("{:<8} {streams:>8} {gpu:>12.1}", "cuda:0");
        ratios.push((streams, gpu / cpu));
    }
    for (streams, r) in ratios {
        println!("ratio cuda/cpu, {streams} stream(s): {r:.2}x");
    }
    Ok(())
}

/// A fresh folder for the model file (removed after loading: the weights are copied).
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cloister-cuda-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
