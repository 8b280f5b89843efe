//! `cloister bench`: model-runner's engine against llama.cpp on the same GGUF file, same
//! thread count, in one run, printing ratios. The measuring lives in
//! `cloister_model_runner::bench`; this module only repeats and prints.

use std::path::PathBuf;

use cloister_model_runner::bench::{self, FIGURE_NAMES, Figures};
use cloister_model_runner::model::Model;

/// Benchmark the model runner against llama.cpp (when its build is cached).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF model (default: the one `model-runner/scripts/fetch-model.sh` caches).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute threads, for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Rounds, each llama.cpp then model-runner; the spread across rounds is printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Folder of llama.cpp's llama-bench and llama-batched-bench (default: the build that
    /// `model-runner/scripts/build-llama-cpp.sh` caches, when it is there).
    #[arg(long)]
    llama_cpp: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cache = std::env::var("CLOISTER_CACHE").unwrap_or_else(|_| "/var/cache/cloister".into());
    let model = args
        .model
        .unwrap_or_else(|| PathBuf::from(cache).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    anyhow::ensure!(
        model.is_file(),
        "no model at {} (run model-runner/scripts/fetch-model.sh, or pass --model)",
        model.display()
    );
    let llama = args.llama_cpp.or_else(bench::cached_llama_cpp);
    if llama.is_none() {
        println!(
            "llama.cpp is not built: model-runner figures only (model-runner/scripts/build-llama-cpp.sh builds it)"
        );
    }
    let m = Model::load(&model, args.threads)?;
    println!(
        "model {} | kernel {:?} | threads {} | {} rounds",
        m.name,
        m.model.kernel,
        m.model.threads(),
        args.rounds
    );
    let mut ratios: Vec<[f64; 4]> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let theirs = match &llama {
            Some(bin) => Some(bench::measure_llama_cpp(bin, &model, args.threads)?),
            None => None,
        };
        let load = bench::load_average().unwrap_or(f64::NAN);
        let ours = bench::measure_engine(&m)?;
        println!("round {round} (load average {load:.1}):");
        print_round(&ours, theirs.as_ref());
        if let Some(t) = theirs {
            let (o, t) = (ours.values(), t.values());
            ratios.push([0, 1, 2, 3].map(|i| o[i] / t[i]));
        }
    }
    if !ratios.is_empty() {
        println!(
            "ratios against llama.cpp over {} rounds (min / median / max):",
            ratios.len()
        );
        for (i, name) in FIGURE_NAMES.iter().enumerate() {
            let mut r: Vec<f64> = ratios.iter().map(|r| r[i]).collect();
            r.sort_by(f64::total_cmp);
            println!(
                "  {name}: {:.2}x / {:.2}x / {:.2}x",
                r[0],
                r[r.len() / 2],
                r[r.len() - 1]
            );
        }
    }
    let kv = bench::kv_capacity(&m);
    println!(
        "KV in {} MB: {} sequences of {} tokens paged (waste {:.1}%), {} with a contiguous cache reserving the full {}-token context",
        bench::KV_BUDGET_MB,
        kv.paged_sequences,
        bench::PROMPT_TOKENS,
        kv.paged_waste * 100.0,
        kv.contiguous_sequences,
        kv.context
    );
    Ok(())
}

fn print_round(ours: &Figures, theirs: Option<&Figures>) {
    for (i, name) in FIGURE_NAMES.iter().enumerate() {
        let o = ours.values()[i];
        match theirs {
            Some(t) => {
                let t = t.values()[i];
                println!("  {name}: {o:.1} tok/s, llama.cpp {t:.1}: {:.2}x", o / t);
            }
            None => println!("  {name}: {o:.1} tok/s"),
        }
    }
}
