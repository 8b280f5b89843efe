//! Engine benchmark: prompt processing, single-stream and batched generation, KV capacity,
//! side by side with llama.cpp when its cached build is there (or `LLAMA_CPP_BIN` names its
//! folder; `LLAMA_CPP_BIN=` skips it). The same as `cloister bench`, without the rest of the cloister command.
//!
//! `cargo run --release -p cloister-model-runner --example engine_bench -- MODEL.gguf [THREADS] [ROUNDS]`
use std::path::PathBuf;

use cloister_model_runner::bench;
use cloister_model_runner::model::Model;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = PathBuf::from(
        args.get(1)
            .ok_or_else(|| anyhow::anyhow!("usage: engine_bench MODEL.gguf [THREADS] [ROUNDS]"))?,
    );
    let threads: usize = args.get(2).map(|t| t.parse()).transpose()?.unwrap_or(2);
    let rounds: usize = args.get(3).map(|t| t.parse()).transpose()?.unwrap_or(1);
    // LLAMA_CPP_BIN names llama.cpp's folder; set but empty, it skips llama.cpp.
    let llama = match std::env::var_os("LLAMA_CPP_BIN") {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => bench::cached_llama_cpp(),
    };
    let m = Model::load(&path, threads)?;
    println!(
        "model {} | kernel {:?} | threads {}",
        m.name,
        m.model.kernel,
        m.model.threads()
    );
    for round in 1..=rounds {
        let theirs = match &llama {
            Some(bin) => Some(bench::measure_llama_cpp(bin, &path, threads)?),
            None => None,
        };
        let load_before = bench::load_average();
        let ours = bench::measure_engine(&m)?;
        println!(
            "round {round}, load average {:.1} -> {:.1}",
            load_before.unwrap_or(f64::NAN),
            bench::load_average().unwrap_or(f64::NAN)
        );
        for (i, name) in bench::FIGURE_NAMES.iter().enumerate() {
            let o = ours.values()[i];
            match &theirs {
                Some(t) => {
                    let t = t.values()[i];
                    println!(
                        "  {name}: {o:.1} tok/s | llama.cpp {t:.1} | ratio {:.2}x",
                        o / t
                    )
                }
                None => println!("  {name}: {o:.1} tok/s"),
            }
        }
    }
    let kv = bench::kv_capacity(&m);
    println!(
        "KV budget {} MB: {} sequences of {} tokens paged, {} with a contiguous cache reserving the full {}-token context; paged waste {:.1}% (internal fragmentation only)",
        bench::KV_BUDGET_MB,
        kv.paged_sequences,
        bench::PROMPT_TOKENS,
        kv.contiguous_sequences,
        kv.context,
        kv.paged_waste * 100.0
    );
    Ok(())
}
