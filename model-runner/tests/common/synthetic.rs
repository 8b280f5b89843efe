//! A synthetic llama-family model: a small GGUF writer and random weights in SmolLM2's
//! formats (token embedding Q8_0, tied output; every other matrix Q4_1; norms F32), made at
//! run time so that nothing has to be carried to the machine that runs the tests.
//!
//! Quantized blocks are drawn directly (random scales as half-precision bit patterns,
//! random quants), so the file needs no quantizer and every value is exact.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// The shape of the synthetic model.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context: usize,
}

impl Shape {
    /// SmolLM2-135M's widths with `layers` layers and a `vocab`-token vocabulary.
    pub fn smollm2(layers: usize, vocab: usize) -> Shape {
        Shape {
            layers,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            ffn: 1536,
            vocab,
            context: 8192,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// splitmix64: a small deterministic generator for weights and test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A positive half-precision value `2^exp * (1 + m / 1024)` with a random mantissa, as bits.
fn f16_bits(rng: &mut Rng, exp: i32) -> u16 {
    let e = (exp + 15) as u16;
    (e << 10) | (rng.below(1024) as u16)
}

const GGML_F32: u32 = 0;
const GGML_Q4_1: u32 = 3;
const GGML_Q8_0: u32 = 8;
const ALIGNMENT: usize = 32;

/// A tensor's directory entry and bytes.
struct Tensor {
    name: String,
    dims: Vec<u64>,
    kind: u32,
    data: Vec<u8>,
}

/// The half-precision bits of a normal `x` (mantissa truncated).
fn f16_of(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "{x} is not a normal half");
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

fn f16_value(h: u16) -> f32 {
    let exp = ((h >> 10) & 0x1f) as i32 - 15;
    let v = (1.0 + f32::from(h & 0x3ff) / 1024.0) * 2f32.powi(exp);
    if h & 0x8000 != 0 { -v } else { v }
}

/// Q4_1 rows: per block of 32, scale d (f16), minimum m about -7.5d (f16, so values q*d + m
/// are centred on zero), 16 bytes of nibbles.
fn q4_1(rng: &mut Rng, rows: usize, cols: usize, exp: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * cols / 32 * 20);
    for _ in 0..rows * cols / 32 {
        let d = f16_bits(rng, exp);
        let m = f16_of(-(7.5 + 0.25 * rng.sym()) * f16_value(d));
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&m.to_le_bytes());
        for _ in 0..16 {
            out.push(rng.next_u64() as u8);
        }
    }
    out
}

/// Q8_0 rows: per block of 32, scale d (f16) and 32 quants in [-127, 127].
fn q8_0(rng: &mut Rng, rows: usize, cols: usize, exp: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * cols / 32 * 34);
    for _ in 0..rows * cols / 32 {
        out.extend_from_slice(&f16_bits(rng, exp).to_le_bytes());
        for _ in 0..32 {
            out.push((rng.below(255) as i32 - 127) as i8 as u8);
        }
    }
    out
}

fn norm_weights(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|_| (1.0 + 0.1 * rng.sym()).to_le_bytes())
        .collect()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A metadata value.
enum Meta {
    Str(String),
    U32(u32),
    F32(f32),
    Strings(Vec<String>),
    I32s(Vec<i32>),
}

fn put_meta(out: &mut Vec<u8>, key: &str, v: &Meta) {
    put_str(out, key);
    match v {
        Meta::Str(s) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            put_str(out, s);
        }
        Meta::U32(x) => {
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&x.to_le_bytes());
        }
        Meta::F32(x) => {
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&x.to_le_bytes());
        }
        Meta::Strings(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        Meta::I32s(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Writes a GGUF (version 3) file from metadata and tensors.
fn write_gguf(path: &Path, meta: &[(&str, Meta)], tensors: &[Tensor]) -> std::io::Result<()> {
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_meta(&mut head, k, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.kind.to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    while head.len() % ALIGNMENT != 0 {
        head.push(0);
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&head)?;
    for t in tensors {
        f.write_all(&t.data)?;
        let pad = t.data.len().div_ceil(ALIGNMENT) * ALIGNMENT - t.data.len();
        f.write_all(&vec![0u8; pad])?;
    }
    f.flush()
}

/// Writes a synthetic llama model of `shape` with weights drawn from `seed` to `path`.
/// Its vocabulary has no stop token: generation runs to max_tokens.
pub fn write_model(path: &Path, shape: Shape, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    let (d, hd) = (shape.hidden, shape.head_dim());
    let kv_rows = shape.kv_heads * hd;
    let mut tensors = Vec::new();
    let matrix = |rng: &mut Rng, name: String, rows: usize, cols: usize| Tensor {
        name,
        dims: vec![cols as u64, rows as u64],
        kind: GGML_Q4_1,
        // Scales about 2^-7..2^-6: values within about +-0.1, a std near 1/sqrt(cols).
        data: q4_1(rng, rows, cols, if cols > 1000 { -8 } else { -7 }),
    };
    tensors.push(Tensor {
        name: "token_embd.weight".into(),
        dims: vec![d as u64, shape.vocab as u64],
        kind: GGML_Q8_0,
        // Values within about +-0.25: logits (tied output) spread over several units.
        data: q8_0(&mut rng, shape.vocab, d, -10),
    });
    for l in 0..shape.layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        let an = norm_weights(&mut rng, d);
        tensors.push(Tensor {
            name: n("attn_norm.weight"),
            dims: vec![d as u64],
            kind: GGML_F32,
            data: an,
        });
        tensors.push(matrix(&mut rng, n("attn_q.weight"), shape.heads * hd, d));
        tensors.push(matrix(&mut rng, n("attn_k.weight"), kv_rows, d));
        tensors.push(matrix(&mut rng, n("attn_v.weight"), kv_rows, d));
        tensors.push(matrix(
            &mut rng,
            n("attn_output.weight"),
            d,
            shape.heads * hd,
        ));
        let fnorm = norm_weights(&mut rng, d);
        tensors.push(Tensor {
            name: n("ffn_norm.weight"),
            dims: vec![d as u64],
            kind: GGML_F32,
            data: fnorm,
        });
        tensors.push(matrix(&mut rng, n("ffn_gate.weight"), shape.ffn, d));
        tensors.push(matrix(&mut rng, n("ffn_up.weight"), shape.ffn, d));
        tensors.push(matrix(&mut rng, n("ffn_down.weight"), d, shape.ffn));
    }
    let on = norm_weights(&mut rng, d);
    tensors.push(Tensor {
        name: "output_norm.weight".into(),
        dims: vec![d as u64],
        kind: GGML_F32,
        data: on,
    });
    let tokens: Vec<String> = (0..shape.vocab).map(|i| format!("tok{i}")).collect();
    let meta = [
        ("general.architecture", Meta::Str("llama".into())),
        ("general.name", Meta::Str("synthetic-smollm2-shape".into())),
        ("llama.block_count", Meta::U32(shape.layers as u32)),
        ("llama.context_length", Meta::U32(shape.context as u32)),
        ("llama.embedding_length", Meta::U32(d as u32)),
        ("llama.feed_forward_length", Meta::U32(shape.ffn as u32)),
        ("llama.attention.head_count", Meta::U32(shape.heads as u32)),
        (
            "llama.attention.head_count_kv",
            Meta::U32(shape.kv_heads as u32),
        ),
        ("llama.rope.freq_base", Meta::F32(100_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", Meta::Strings(tokens)),
        (
            "tokenizer.ggml.token_type",
            Meta::I32s(vec![1; shape.vocab]),
        ),
        ("tokenizer.ggml.merges", Meta::Strings(Vec::new())),
    ];
    write_gguf(path, &meta, &tensors)
}
