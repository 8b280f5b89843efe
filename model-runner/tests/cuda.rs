//! The CUDA path against the CPU path: the paged-attention kernel on random keys, values and
//! queries through shuffled block tables, and the whole engine on a synthetic model with
//! SmolLM2's widths and formats (greedy tokens equal, with chunked prefill, prefix-cache hits
//! and preemption; logits within a tolerance).
//!
//! Without a CUDA device every test prints "SKIPPED: no CUDA device" and passes, unless
//! CLOISTER_REQUIRE_CUDA=1, when it fails. The synthetic model is written at run time (the
//! real 98 MB model does not travel to the GPU machine).
#![cfg(feature = "cuda")]

#[path = "common/synthetic.rs"]
mod synthetic;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cloister_model_runner::cuda::{
    CudaDevice, CudaError, CudaKvStore, CudaModel, FlatBatch, compile_kernels, cpu_paged_attention,
    device_count,
};
use cloister_model_runner::engine::{Device, Engine, EngineConfig};
use cloister_model_runner::kv::{BlockId, KvShape, KvStore};
use cloister_model_runner::model::{LoadedModel, Model, PagedKv, Scratch};
use cloister_model_runner::quant::Kernel;
use cloister_model_runner::sampling::SamplingParams;
use synthetic::{Rng, Shape};

/// The GPU, or None (skip) when there is none and CLOISTER_REQUIRE_CUDA is not 1.
fn gpu() -> Option<Arc<CudaDevice>> {
    let required = std::env::var("CLOISTER_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let reason = match device_count() {
        Ok(0) => "the driver reports no device".to_owned(),
        Ok(_) => {
            return Some(match CudaDevice::open(0) {
                Ok(d) => d,
                Err(e) => panic!("a CUDA device exists but cannot be used: {e}"),
            });
        }
        Err(e) => e.to_string(),
    };
    if required {
        panic!("CLOISTER_REQUIRE_CUDA=1 but there is no usable CUDA device: {reason}");
    }
    eprintln!("SKIPPED: no CUDA device ({reason})");
    None
}

/// The synthetic model (4 layers, a 2048-token vocabulary), written and loaded once, on the
/// CPU's portable kernel: the GPU kernels reproduce its arithmetic operation for operation
/// (the SIMD kernels add in another order, and the 8-bit activation quantization amplifies
/// that into visible differences), so the CPU and the GPU should agree to rounding noise.
fn model() -> Arc<LoadedModel> {
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("synthetic.gguf");
            synthetic::write_model(&path, Shape::smollm2(4, 2048), 0x5eed).unwrap();
            let mut m = Model::load(&path, 2).expect("the synthetic model loads");
            Arc::get_mut(&mut m.model)
                .expect("nothing else holds the model yet")
                .kernel = Kernel::Portable;
            Arc::new(m)
        })
        .clone()
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sym()).collect()
}

/// Offset of (layer, block, kv head, token in block) in kv.rs's layout.
fn at(shape: KvShape, bt: usize, blocks: usize, l: usize, b: usize, h: usize, t: usize) -> usize {
    (((l * blocks + b) * shape.kv_heads + h) * bt + t) * shape.head_dim
}

#[test]
fn paged_attention_kernel_equals_cpu_attention() {
    let Some(dev) = gpu() else { return };
    let shape = KvShape {
        layers: 2,
        kv_heads: 3,
        head_dim: 64,
    };
    let (heads, bt, blocks) = (9, 16, 40);
    let mut rng = Rng::new(7);
    // Every slot of the pool gets random keys and values, on the CPU store and in a host
    // copy in kv.rs's layout that goes to the GPU.
    let mut cpu = KvStore::new(shape, bt, blocks);
    let n = shape.layers * blocks * shape.kv_heads * bt * shape.head_dim;
    let (mut keys, mut values) = (vec![0.0f32; n], vec![0.0f32; n]);
    let width = shape.kv_heads * shape.head_dim;
    for l in 0..shape.layers {
        for slot in 0..blocks * bt {
            let k = random(&mut rng, width);
            let v = random(&mut rng, width);
            cpu.write(l, slot, &k, &v);
            for h in 0..shape.kv_heads {
                let o = at(shape, bt, blocks, l, slot / bt, h, slot % bt);
                let hd = shape.head_dim;
                keys[o..o + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
                values[o..o + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
            }
        }
    }
    let mut gpu_kv = CudaKvStore::new(&dev, shape, bt, blocks).unwrap();
    gpu_kv.upload(&keys, &values).unwrap();
    // Shuffled block ids, handed to sequences whose contexts are 1, a block boundary (16),
    // just past it (17), and more than three blocks (53, 70).
    let mut ids: Vec<BlockId> = (0..blocks as BlockId).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let contexts = [1usize, 16, 17, 53, 70];
    let mut tables: Vec<Vec<BlockId>> = Vec::new();
    let mut next = 0;
    for &c in &contexts {
        let nb = c.div_ceil(bt);
        tables.push(ids[next..next + nb].to_vec());
        next += nb;
    }
    // Queries: each sequence's last position, plus a few earlier ones (a prefill chunk).
    let mut token_seq = Vec::new();
    let mut positions = Vec::new();
    for (s, &c) in contexts.iter().enumerate() {
        for p in [c - 1, c / 2, 15.min(c - 1)] {
            token_seq.push(s as u32);
            positions.push(p);
        }
    }
    let q = random(&mut rng, positions.len() * heads * shape.head_dim);
    let table_refs: Vec<&[BlockId]> = tables.iter().map(Vec::as_slice).collect();
    let ctx_lens: Vec<usize> = positions.iter().map(|p| p + 1).collect();
    for layer in 0..shape.layers {
        let per_token: Vec<&[BlockId]> =
            token_seq.iter().map(|&s| table_refs[s as usize]).collect();
        let want = cpu_paged_attention(&mut cpu, layer, &q, heads, &positions, per_token);
        let got = dev
            .paged_attention(
                &gpu_kv,
                layer,
                &q,
                heads,
                &token_seq,
                &ctx_lens,
                &table_refs,
            )
            .unwrap();
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("layer {layer}: max abs diff GPU vs CPU attention {diff:e}");
        assert!(
            diff < 1e-4,
            "GPU attention differs from the CPU's by {diff}"
        );
        assert!(
            want.iter().any(|v| v.abs() > 1e-3),
            "the reference is not trivial"
        );
    }
    // A context past the table is refused, not read out of bounds.
    assert!(
        dev.paged_attention(
            &gpu_kv,
            0,
            &q[..heads * 64],
            heads,
            &[0],
            &[17],
            &table_refs
        )
        .is_err()
    );
}

#[test]
fn gpu_copy_block_equals_cpu_copy_block() {
    let Some(dev) = gpu() else { return };
    let shape = KvShape {
        layers: 3,
        kv_heads: 2,
        head_dim: 32,
    };
    let (bt, blocks) = (4, 6);
    let mut rng = Rng::new(11);
    let n = shape.layers * blocks * shape.kv_heads * bt * shape.head_dim;
    let keys = random(&mut rng, n);
    let values = random(&mut rng, n);
    let mut g = CudaKvStore::new(&dev, shape, bt, blocks).unwrap();
    g.upload(&keys, &values).unwrap();
    g.copy_block(4, 1).unwrap();
    let (k2, v2) = g.download().unwrap();
    for l in 0..shape.layers {
        let len = shape.kv_heads * bt * shape.head_dim;
        let src = at(shape, bt, blocks, l, 4, 0, 0);
        let dst = at(shape, bt, blocks, l, 1, 0, 0);
        assert_eq!(&k2[dst..dst + len], &keys[src..src + len]);
        assert_eq!(&v2[dst..dst + len], &values[src..src + len]);
        // Other blocks are untouched.
        let other = at(shape, bt, blocks, l, 2, 0, 0);
        assert_eq!(&k2[other..other + len], &keys[other..other + len]);
    }
    assert!(
        g.copy_block(6, 0).is_err(),
        "a block past the pool is refused"
    );
}

/// Prefill of several sequences in one flat batch (shuffled blocks), then a decode step
/// reading the cache: the GPU's logits are within a tolerance of the CPU's.
#[test]
fn gpu_forward_logits_match_cpu() {
    let Some(dev) = gpu() else { return };
    let m = model();
    let c = &m.model.config;
    let (bt, blocks) = (16, 64);
    let mut rng = Rng::new(3);
    let lens = [1usize, 16, 23, 50];
    let mut ids: Vec<BlockId> = (0..blocks as BlockId).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut tables = Vec::new();
    let mut next = 0;
    for &l in &lens {
        let nb = (l + 1).div_ceil(bt);
        tables.push(ids[next..next + nb].to_vec());
        next += nb;
    }
    let mut tokens = Vec::new();
    let mut positions = Vec::new();
    let mut token_seq = Vec::new();
    let mut logit_rows = Vec::new();
    for (s, &l) in lens.iter().enumerate() {
        for p in 0..l {
            tokens.push(rng.below(c.vocab as u64) as u32);
            positions.push(p);
            token_seq.push(s as u32);
        }
        logit_rows.push(tokens.len() - 1);
    }
    let mut cpu_store = KvStore::new(c.kv_shape(), bt, blocks);
    let mut gpu_model = CudaModel::upload(&dev, &m.model).unwrap();
    let mut gpu_kv = gpu_model.new_kv(bt, blocks).unwrap();
    let mut scratch = Scratch::default();
    let mut compare = |tokens: &[u32], positions: &[usize], token_seq: &[u32], rows: &[usize]| {
        let table_refs: Vec<&[BlockId]> = tables.iter().map(Vec::as_slice).collect();
        let per_token: Vec<&[BlockId]> =
            token_seq.iter().map(|&s| table_refs[s as usize]).collect();
        let mut kv = PagedKv {
            store: &mut cpu_store,
            positions,
            tables: per_token.clone(),
        };
        let want = m
            .model
            .forward(tokens, positions, &mut kv, rows, &mut scratch)
            .unwrap();
        let slots: Vec<usize> = positions
            .iter()
            .zip(&per_token)
            .map(|(&p, t)| t[p / bt] as usize * bt + p % bt)
            .collect();
        let batch = FlatBatch {
            tokens,
            positions,
            slots: &slots,
            token_seq,
            tables: &table_refs,
        };
        let got = gpu_model.forward(&mut gpu_kv, &batch, rows).unwrap();
        assert_eq!(got.len(), rows.len() * c.vocab);
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("logits: max |CPU| {scale}, max abs diff GPU vs CPU {diff:e}");
        assert!(scale > 1.0, "the synthetic model's logits are not trivial");
        // The same arithmetic in the same order: equal but for rare last-bit differences
        // (exp in double on both sides); a real difference in the math shows up as 1e-2.
        assert!(
            diff <= 1e-4 * scale,
            "GPU logits differ by {diff} (scale {scale}): run \
             gpu_forward_stage_by_stage_equals_cpu to see the first stage that differs"
        );
        for r in 0..rows.len() {
            let row = |v: &[f32]| {
                let x = &v[r * c.vocab..(r + 1) * c.vocab];
                (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
            };
            assert_eq!(row(&got), row(&want), "greedy token of row {r}");
        }
    };
    compare(&tokens, &positions, &token_seq, &logit_rows);
    // One decode step per sequence, reading everything cached above.
    let dec_tokens: Vec<u32> = lens
        .iter()
        .map(|_| rng.below(c.vocab as u64) as u32)
        .collect();
    let dec_pos: Vec<usize> = lens.to_vec();
    let dec_seq: Vec<u32> = (0..lens.len() as u32).collect();
    let rows: Vec<usize> = (0..lens.len()).collect();
    compare(&dec_tokens, &dec_pos, &dec_seq, &rows);
}

/// Layer 0 and the output, stage by stage, on a prefill of two sequences (3 and 21 tokens,
/// shuffled blocks): prints every stage's largest difference between GPU and CPU and fails
/// at the first stage past a tight tolerance, so one GPU run names the stage that differs.
/// Float stages may differ by 1e-5 of their largest value; quantized activations (`.q8`)
/// not at all (a flipped 8-bit value is a step of 1/127 of its block's largest value).
#[test]
fn gpu_forward_stage_by_stage_equals_cpu() {
    let Some(dev) = gpu() else { return };
    let m = model();
    let c = &m.model.config;
    let (bt, blocks) = (16, 16);
    let tables: Vec<Vec<BlockId>> = vec![vec![9], vec![4, 13]];
    let lens = [3usize, 21];
    let mut rng = Rng::new(17);
    let (mut tokens, mut positions, mut token_seq, mut rows) = (vec![], vec![], vec![], vec![]);
    for (s, &l) in lens.iter().enumerate() {
        for p in 0..l {
            tokens.push(rng.below(c.vocab as u64) as u32);
            positions.push(p);
            token_seq.push(s as u32);
        }
        rows.push(tokens.len() - 1);
    }
    let table_refs: Vec<&[BlockId]> = tables.iter().map(Vec::as_slice).collect();
    let per_token: Vec<&[BlockId]> = token_seq.iter().map(|&s| table_refs[s as usize]).collect();
    let slots: Vec<usize> = positions
        .iter()
        .zip(&per_token)
        .map(|(&p, t)| t[p / bt] as usize * bt + p % bt)
        .collect();

    let mut cpu_store = KvStore::new(c.kv_shape(), bt, blocks);
    let mut scratch = Scratch::tracing();
    let mut kv = PagedKv {
        store: &mut cpu_store,
        positions: &positions,
        tables: per_token.clone(),
    };
    m.model
        .forward(&tokens, &positions, &mut kv, &rows, &mut scratch)
        .unwrap();
    let cpu = scratch.take_trace();

    let mut gpu_model = CudaModel::upload(&dev, &m.model).unwrap();
    let mut gpu_kv = gpu_model.new_kv(bt, blocks).unwrap();
    let batch = FlatBatch {
        tokens: &tokens,
        positions: &positions,
        slots: &slots,
        token_seq: &token_seq,
        tables: &table_refs,
    };
    let (_, gpu) = gpu_model
        .forward_traced(&mut gpu_kv, &batch, &rows)
        .unwrap();

    let names = |t: &[(String, Vec<f32>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&gpu),
        names(&cpu),
        "the two traces name the same stages"
    );
    assert!(cpu.len() >= 20 && cpu.last().unwrap().0 == "logits");
    let mut first_bad = None;
    let mut first_nonzero = None;
    for ((name, want), (_, got)) in cpu.iter().zip(&gpu) {
        assert_eq!(got.len(), want.len(), "stage {name}: lengths");
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let (at, diff) = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |best, (i, d)| if d > best.1 { (i, d) } else { best },
            );
        let tolerance = if name.ends_with(".q8") {
            0.0
        } else {
            1e-5 * scale
        };
        let verdict = if diff > tolerance {
            "EXCEEDS"
        } else if diff > 0.0 {
            "ok (not bit-equal)"
        } else {
            "ok (bit-equal)"
        };
        eprintln!(
            "stage {name:<24} max|CPU| {scale:<12.6e} max |GPU-CPU| {diff:<12.4e} at {at:<6} {verdict}"
        );
        if diff > 0.0 && first_nonzero.is_none() {
            first_nonzero = Some(name.clone());
        }
        if diff > tolerance && first_bad.is_none() {
            first_bad = Some((name.clone(), diff, scale, at, got[at], want[at]));
        }
    }
    eprintln!("first stage that is not bit-equal: {first_nonzero:?}");
    if let Some((name, diff, scale, at, g, w)) = first_bad {
        panic!(
            "GPU and CPU part at stage {name}: max difference {diff:e} (stage max {scale:e}), \
             e.g. element {at}: GPU {g} vs CPU {w}; first stage not bit-equal: {first_nonzero:?}"
        );
    }
}

fn engine_on(m: &LoadedModel, device: Device, blocks: usize, batch_tokens: usize) -> Engine {
    let config = EngineConfig {
        block_tokens: 16,
        kv_blocks: blocks,
        max_batch_tokens: batch_tokens,
        max_running: 16,
    };
    Engine::on_device(m.model.clone(), Vec::new(), config, device).unwrap()
}

/// Queues every prompt (ids from `first_id`), steps until all finish; each one's tokens.
fn run(
    engine: &mut Engine,
    prompts: &[Vec<u32>],
    first_id: u64,
    new_tokens: usize,
) -> Vec<Vec<u32>> {
    for (i, p) in prompts.iter().enumerate() {
        engine
            .add(
                first_id + i as u64,
                p.clone(),
                SamplingParams::greedy(new_tokens),
                [9; 32],
                None,
            )
            .unwrap();
    }
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    while engine.has_work() {
        for o in engine.step().unwrap() {
            if let Some(t) = o.token {
                out.entry(o.seq).or_default().push(t);
            }
        }
    }
    (0..prompts.len() as u64)
        .map(|i| out.remove(&(first_id + i)).unwrap_or_default())
        .collect()
}

fn prompts(rng: &mut Rng, vocab: usize, lens: &[usize]) -> Vec<Vec<u32>> {
    lens.iter()
        .map(|&l| (0..l).map(|_| rng.below(vocab as u64) as u32).collect())
        .collect()
}

/// The engine on the GPU gives the CPU engine's greedy tokens: a batch of prompts of
/// different lengths with chunked prefill, then prompts sharing their prefixes (prefix-cache
/// hits), then the same batch again with a KV pool so small that sequences are preempted.
#[test]
fn engine_on_gpu_gives_the_cpu_engines_greedy_tokens() {
    if gpu().is_none() {
        return;
    }
    let m = model();
    let vocab = m.model.config.vocab;
    let mut rng = Rng::new(42);
    const NEW: usize = 16;
    let first = prompts(&mut rng, vocab, &[1, 7, 16, 33, 70, 120]);
    // Second wave: the first wave's prompts (whole blocks of them are cached) plus new tails.
    let second: Vec<Vec<u32>> = first
        .iter()
        .filter(|p| p.len() >= 16)
        .map(|p| {
            let mut q = p.clone();
            q.extend((0..5).map(|_| rng.below(vocab as u64) as u32));
            q
        })
        .collect();

    let mut results = Vec::new();
    for device in [Device::Cpu, Device::Cuda(0)] {
        let mut e = engine_on(&m, device, 256, 48);
        assert_eq!(e.device(), device);
        let a = run(&mut e, &first, 0, NEW);
        let hits_before = e.pool().prefix_hit_tokens;
        let b = run(&mut e, &second, 100, NEW);
        let hits = e.pool().prefix_hit_tokens - hits_before;
        assert!(
            hits >= 16 * second.len() as u64,
            "{device}: prefix hits {hits}"
        );
        assert_eq!(e.pool().used_blocks(), 0, "{device}: blocks freed");
        // 10 blocks (160 tokens) for prompts up to 120 + 16 tokens: preemption.
        let mut small = engine_on(&m, device, 10, 48);
        let c = run(&mut small, &first, 200, NEW);
        assert!(
            small.stats.preemptions > 0,
            "{device}: no preemption happened"
        );
        assert!(a.iter().chain(&b).chain(&c).all(|t| t.len() == NEW));
        results.push((a, b, c));
    }
    let (cpu, gpu) = (&results[0], &results[1]);
    assert_eq!(gpu.0, cpu.0, "first wave: GPU tokens differ from the CPU's");
    assert_eq!(
        gpu.1, cpu.1,
        "prefix-cache hits: GPU tokens differ from the CPU's"
    );
    assert_eq!(
        gpu.2, cpu.2,
        "after preemption: GPU tokens differ from the CPU's"
    );
    // Preemption and recompute change nothing on either device.
    assert_eq!(gpu.2, gpu.0);
    // The model does not just repeat one token: the comparison means something.
    let distinct: std::collections::HashSet<u32> = cpu.0.iter().flatten().copied().collect();
    assert!(
        distinct.len() > 8,
        "only {} distinct tokens",
        distinct.len()
    );
}

/// A device ordinal that does not exist is a clear error, not a panic and not the CPU.
#[test]
fn a_missing_device_is_an_error() {
    if gpu().is_none() {
        return;
    }
    let m = model();
    let config = EngineConfig::default();
    let err = Engine::on_device(m.model.clone(), Vec::new(), config, Device::Cuda(999))
        .expect_err("device 999 does not exist");
    assert!(err.to_string().contains("GPU"), "{err}");
    let mut chain = String::new();
    let mut e: Option<&dyn std::error::Error> = Some(&err);
    while let Some(x) = e {
        chain.push_str(&x.to_string());
        e = x.source();
    }
    assert!(chain.contains("no CUDA device 999"), "{chain}");
}

/// Where there is no GPU (no driver, or no device), asking for one is an error that says
/// so, never a panic and never a quiet run on the CPU. Runs on machines without a GPU.
#[test]
fn no_gpu_is_a_clear_error() {
    if !matches!(device_count(), Err(_) | Ok(0)) {
        eprintln!("SKIPPED: this machine has a CUDA device");
        return;
    }
    let m = model();
    let err = Engine::on_device(
        m.model.clone(),
        Vec::new(),
        EngineConfig::default(),
        Device::Cuda(0),
    )
    .expect_err("there is no GPU here");
    let mut chain = String::new();
    let mut e: Option<&dyn std::error::Error> = Some(&err);
    while let Some(x) = e {
        chain.push_str(&x.to_string());
        chain.push('\n');
        e = x.source();
    }
    eprintln!("{chain}");
    assert!(
        chain.contains("driver") || chain.contains("no CUDA device"),
        "{chain}"
    );
}

/// The synthetic model is a fair stand-in on the CPU alone (runs without a GPU): its greedy
/// tokens vary, and preemption with recompute leaves them unchanged.
#[test]
fn synthetic_model_is_a_fair_stand_in_on_the_cpu() {
    let m = model();
    let mut rng = Rng::new(42);
    let first = prompts(&mut rng, m.model.config.vocab, &[1, 7, 16, 33, 70, 120]);
    let mut big = engine_on(&m, Device::Cpu, 256, 48);
    let a = run(&mut big, &first, 0, 16);
    let mut small = engine_on(&m, Device::Cpu, 10, 48);
    let c = run(&mut small, &first, 0, 16);
    assert!(small.stats.preemptions > 0);
    assert_eq!(a, c);
    let distinct: std::collections::HashSet<u32> = a.iter().flatten().copied().collect();
    eprintln!("{} distinct tokens in {:?}", distinct.len(), a);
    assert!(
        distinct.len() > 8,
        "only {} distinct tokens",
        distinct.len()
    );
}

/// NVRTC compiles the kernels for the GPUs we target, with or without a GPU: runs wherever
/// libnvrtc loads (e.g. from the `nvidia-cuda-nvrtc-cu12` wheel on LD_LIBRARY_PATH).
#[test]
fn kernels_compile_with_nvrtc() {
    let required = std::env::var("CLOISTER_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    for arch in ["compute_80", "compute_90"] {
        match compile_kernels(arch) {
            Ok(ptx) => {
                for name in ["matmul_q4", "paged_attention", "quantize_q8", "copy_block"] {
                    assert!(ptx.contains(&format!(".entry {name}")), "{arch}: no {name}");
                }
            }
            Err(CudaError::NoNvrtc) if !required => {
                eprintln!("SKIPPED: no CUDA device or libnvrtc to compile with");
                return;
            }
            Err(e) => panic!("{arch}: {e}"),
        }
    }
}
