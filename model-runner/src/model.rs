//! The llama-family transformer: loading weights from GGUF and the forward pass over a flat
//! varlen batch.
//!
//! One forward call takes any mix of sequences, each with some new tokens at some positions:
//! a decode step is one token, a prefill chunk is many, a prefix-cache hit is a chunk that
//! starts past position 0. Keys and values go through a [`KvAccess`], which is the paged
//! cache in serving and a contiguous cache in the reference path used by tests; both share
//! the same attention arithmetic, so their outputs are equal bit for bit.
//!
//! Every token's result depends only on its own sequence: matrix products are per row and
//! per token, in a fixed order of additions. This module never sees text.

use std::path::Path;

use rayon::prelude::*;

use crate::gguf::{Gguf, GgufError, TensorInfo, TensorType, Value};
use crate::kv::{BlockId, KvShape, KvStore};
use crate::mmap::MappedFile;
use crate::pool::ComputePool;
use crate::quant::{
    Kernel, Q4Matrix, Q8_BLOCK, Q8Matrix, QuantError, Weights, axpy_f32, dequantize, dot_f32,
    matmul_rows, quantize_activation_row, quantize_row,
};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Longest context the engine serves, whatever the model claims (RoPE tables are built for it).
pub const MAX_CONTEXT_TOKENS: usize = 32_768;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read the model file")]
    Io(#[source] std::io::Error),
    #[error("the model file is not valid GGUF")]
    Gguf(#[source] GgufError),
    #[error("architecture {0:?} is not supported (llama, mistral, qwen2 are)")]
    UnsupportedArchitecture(String),
    #[error("the model has no {0}")]
    Missing(String),
    #[error("tensor {name} has shape {dims:?}, expected {expected:?}")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {name}")]
    Quant {
        name: String,
        #[source]
        source: QuantError,
    },
    #[error("the tokenizer")]
    Tokenizer(#[source] TokenizerError),
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("position {0} is past the longest context served")]
    TooLong(usize),
    /// The GPU failed (a driver or launch error) while running the model.
    #[error("the GPU failed: {0}")]
    Device(String),
}

/// The shape of a llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// NeoX-style RoPE (rotate halves) instead of llama's interleaved pairs.
    pub rope_neox: bool,
    /// Longest context served: the model's, capped at [`MAX_CONTEXT_TOKENS`].
    pub context: usize,
}

impl ModelConfig {
    /// The shape of one cached token.
    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    /// Q, K and V stacked: heads*hd + 2*kv_heads*hd rows.
    pub(crate) qkv: Weights,
    pub(crate) qkv_bias: Option<Vec<f32>>,
    pub(crate) wo: Weights,
    pub(crate) ffn_norm: Vec<f32>,
    /// Gate and up stacked: 2*ffn rows.
    pub(crate) gate_up: Weights,
    pub(crate) down: Weights,
}

/// A loaded model, ready to run.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub kernel: Kernel,
    pub(crate) embed: Weights,
    /// None when the output projection is tied to the embedding.
    pub(crate) output: Option<Weights>,
    pub(crate) output_norm: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) rope_cos: Vec<f32>,
    pub(crate) rope_sin: Vec<f32>,
    pool: ComputePool,
}

/// A model file's parts: the model, its tokenizer and its name.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: std::sync::Arc<Model>,
    pub tokenizer: std::sync::Arc<Tokenizer>,
    pub name: String,
}

/// Buffers reused from one forward call to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    big: Vec<f32>,
    transposed: Vec<f32>,
    act: Vec<f32>,
    xq: Q8Matrix,
    /// When set, the stages of layer 0 and of the output are recorded here (diagnostics).
    trace: Option<Vec<(String, Vec<f32>)>>,
}

impl Scratch {
    /// Scratch that also records, in order, every stage of layer 0 and of the output (for
    /// comparing another implementation stage by stage): `embedding`, `attn_norm`, its
    /// 8-bit quantization (`attn_norm.q8`, `.q8_scales`, `.q8_sums`), `qkv`, `rope`,
    /// `attention` (+ q8), `attn_output`, `attn_residual`, `ffn_norm` (+ q8), `gate_up`,
    /// `swiglu` (+ q8), `down`, `ffn_residual`, then `output_norm` (+ q8) and `logits`.
    /// Each is the whole batch's values, row-major by token.
    pub fn tracing() -> Scratch {
        Scratch {
            trace: Some(Vec::new()),
            ..Scratch::default()
        }
    }

    /// The stages recorded since the last call (empty unless made by [`Scratch::tracing`]).
    pub fn take_trace(&mut self) -> Vec<(String, Vec<f32>)> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

fn record(trace: &mut Option<Vec<(String, Vec<f32>)>>, name: &str, values: &[f32]) {
    if let Some(t) = trace {
        t.push((name.to_owned(), values.to_vec()));
    }
}

/// Records the 8-bit activations last fed to a matrix product (`rows` rows).
fn record_q8(trace: &mut Option<Vec<(String, Vec<f32>)>>, name: &str, xq: &Q8Matrix, rows: usize) {
    if trace.is_none() {
        return;
    }
    let blocks = rows * xq.cols / Q8_BLOCK;
    let quants: Vec<f32> = xq.quants[..rows * xq.cols]
        .iter()
        .map(|&q| f32::from(q))
        .collect();
    record(trace, &format!("{name}.q8"), &quants);
    record(trace, &format!("{name}.q8_scales"), &xq.scales[..blocks]);
    record(trace, &format!("{name}.q8_sums"), &xq.block_sums[..blocks]);
}

/// Records `rows` rows of `width` values made by `f(row, out)`.
fn record_rows(
    trace: &mut Option<Vec<(String, Vec<f32>)>>,
    name: &str,
    rows: usize,
    width: usize,
    f: impl Fn(usize, &mut [f32]),
) {
    if trace.is_none() {
        return;
    }
    let mut v = vec![0.0f32; rows * width];
    for (t, out) in v.chunks_exact_mut(width).enumerate() {
        f(t, out);
    }
    record(trace, name, &v);
}

/// Where a forward pass keeps and reads keys and values.
pub trait KvAccess: Sync + Send {
    /// Stores token `token` (index in the flat batch)'s keys and values for `layer`.
    fn write(&mut self, layer: usize, token: usize, k: &[f32], v: &[f32]);
    /// Runs of (keys, values) for kv head `head` that token `token` attends to, in position
    /// order, each `head_dim * n` long.
    fn runs<'s>(
        &'s self,
        layer: usize,
        token: usize,
        head: usize,
        out: &mut Vec<(&'s [f32], &'s [f32])>,
    );
}

/// The paged cache seen by one flat batch.
#[derive(Debug)]
pub struct PagedKv<'a> {
    pub store: &'a mut KvStore,
    /// Per token of the batch: its position and its sequence's block table.
    pub positions: &'a [usize],
    pub tables: Vec<&'a [BlockId]>,
}

impl KvAccess for PagedKv<'_> {
    fn write(&mut self, layer: usize, token: usize, k: &[f32], v: &[f32]) {
        let bt = self.store.block_tokens;
        let pos = self.positions[token];
        let slot = self.tables[token][pos / bt] as usize * bt + pos % bt;
        self.store.write(layer, slot, k, v);
    }

    fn runs<'s>(
        &'s self,
        layer: usize,
        token: usize,
        head: usize,
        out: &mut Vec<(&'s [f32], &'s [f32])>,
    ) {
        let bt = self.store.block_tokens;
        let ctx = self.positions[token] + 1;
        for (i, &block) in self.tables[token].iter().enumerate() {
            let start = i * bt;
            if start >= ctx {
                break;
            }
            out.push(self.store.head_run(layer, block, head, bt.min(ctx - start)));
        }
    }
}

/// A contiguous per-sequence cache for the reference path: `[layer][kv_head][position][hd]`.
#[derive(Debug)]
pub struct ContiguousKv {
    shape: KvShape,
    capacity: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    positions: Vec<usize>,
}

impl ContiguousKv {
    /// Room for `capacity` positions.
    pub fn new(shape: KvShape, capacity: usize) -> ContiguousKv {
        let n = shape.layers * shape.kv_heads * capacity * shape.head_dim;
        ContiguousKv {
            shape,
            capacity,
            keys: vec![0.0; n],
            values: vec![0.0; n],
            positions: Vec::new(),
        }
    }

    /// Sets the positions of the next forward call's tokens.
    pub fn set_positions(&mut self, positions: &[usize]) {
        self.positions.clear();
        self.positions.extend_from_slice(positions);
    }

    fn at(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.shape.kv_heads + head) * self.capacity + pos) * self.shape.head_dim
    }
}

impl KvAccess for ContiguousKv {
    fn write(&mut self, layer: usize, token: usize, k: &[f32], v: &[f32]) {
        let hd = self.shape.head_dim;
        let pos = self.positions[token];
        for h in 0..self.shape.kv_heads {
            let at = self.at(layer, h, pos);
            self.keys[at..at + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            self.values[at..at + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    fn runs<'s>(
        &'s self,
        layer: usize,
        token: usize,
        head: usize,
        out: &mut Vec<(&'s [f32], &'s [f32])>,
    ) {
        let at = self.at(layer, head, 0);
        let n = (self.positions[token] + 1) * self.shape.head_dim;
        out.push((&self.keys[at..at + n], &self.values[at..at + n]));
    }
}

fn meta_u64(g: &Gguf, key: &str) -> Result<u64, ModelError> {
    g.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| ModelError::Missing(format!("metadata {key}")))
}

impl ModelConfig {
    fn from_gguf(g: &Gguf) -> Result<ModelConfig, ModelError> {
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Missing("general.architecture".into()))?
            .to_owned();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ModelError::UnsupportedArchitecture(arch));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = meta_u64(g, &k("embedding_length"))? as usize;
        let heads = meta_u64(g, &k("attention.head_count"))? as usize;
        let kv_heads = g
            .get(&k("attention.head_count_kv"))
            .and_then(Value::as_u64)
            .unwrap_or(heads as u64) as usize;
        if heads == 0
            || kv_heads == 0
            || !hidden.is_multiple_of(heads)
            || !heads.is_multiple_of(kv_heads)
        {
            return Err(ModelError::Missing("a consistent head count".into()));
        }
        let head_dim = hidden / heads;
        let vocab = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|a| a.len())
            .ok_or_else(|| ModelError::Missing("tokenizer.ggml.tokens".into()))?;
        let f = |key: &str, default: f64| g.get(key).and_then(Value::as_f64).unwrap_or(default);
        Ok(ModelConfig {
            layers: meta_u64(g, &k("block_count"))? as usize,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn: meta_u64(g, &k("feed_forward_length"))? as usize,
            vocab,
            rms_eps: f(&k("attention.layer_norm_rms_epsilon"), 1e-5) as f32,
            rope_base: f(&k("rope.freq_base"), 10_000.0) as f32,
            rope_neox: arch == "qwen2",
            context: (meta_u64(g, &k("context_length")).unwrap_or(4096) as usize)
                .clamp(1, MAX_CONTEXT_TOKENS),
            architecture: arch,
        })
    }
}

struct TensorSource<'a> {
    gguf: &'a Gguf,
    bytes: &'a [u8],
}

impl TensorSource<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.gguf
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::Missing(format!("tensor {name}")))
    }

    fn has(&self, name: &str) -> bool {
        self.gguf.tensors.contains_key(name)
    }

    fn check(&self, name: &str, expected: &[u64]) -> Result<&TensorInfo, ModelError> {
        let info = self.info(name)?;
        if info.dims != expected {
            return Err(ModelError::BadShape {
                name: name.into(),
                dims: info.dims.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok(info)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let info = self.check(name, &[len as u64])?;
        let mut out = vec![0.0; len];
        dequantize(
            info.kind,
            &self.bytes[info.offset..info.offset + info.size],
            &mut out,
        )
        .map_err(|source| ModelError::Quant {
            name: name.into(),
            source,
        })?;
        Ok(out)
    }

    /// Appends the rows of matrix `name` ([rows][cols]) to `dst`, requantized to Q8.
    fn append_rows(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        dst: &mut Q8Matrix,
        at_row: usize,
    ) -> Result<(), ModelError> {
        let info = self.check(name, &[cols as u64, rows as u64])?;
        let (per_block, block_bytes) =
            info.kind.block_layout().ok_or_else(|| ModelError::Quant {
                name: name.into(),
                source: QuantError::Unsupported(info.kind),
            })?;
        let row_bytes = cols / per_block as usize * block_bytes as usize;
        let data = &self.bytes[info.offset..info.offset + info.size];
        let kind = info.kind;
        let q = &mut dst.quants[at_row * cols..(at_row + rows) * cols];
        let s = &mut dst.scales[at_row * cols / Q8_BLOCK..(at_row + rows) * cols / Q8_BLOCK];
        q.par_chunks_mut(cols)
            .zip(s.par_chunks_mut(cols / Q8_BLOCK))
            .enumerate()
            .try_for_each_init(
                || vec![0.0f32; cols],
                |buf, (r, (qr, sr))| {
                    dequantize(kind, &data[r * row_bytes..(r + 1) * row_bytes], buf)?;
                    quantize_row(buf, qr, sr);
                    Ok(())
                },
            )
            .map_err(|source| ModelError::Quant {
                name: name.into(),
                source,
            })
    }

    /// Stacks the named matrices into one: kept 4-bit when every part is Q4_0/Q4_1 (unless
    /// `CLOISTER_WEIGHTS=q8`), requantized to 8 bits otherwise.
    fn matrix(&self, parts: &[(&str, usize)], cols: usize) -> Result<Weights, ModelError> {
        let four_bit = std::env::var("CLOISTER_WEIGHTS").map_or(true, |v| v != "q8")
            && parts.iter().all(|(name, _)| {
                self.info(name)
                    .is_ok_and(|i| matches!(i.kind, TensorType::Q4_0 | TensorType::Q4_1))
            });
        if four_bit {
            return self.matrix_q4(parts, cols).map(Weights::Q4);
        }
        self.matrix_q8(parts, cols).map(Weights::Q8)
    }

    fn matrix_q4(&self, parts: &[(&str, usize)], cols: usize) -> Result<Q4Matrix, ModelError> {
        let rows = parts.iter().map(|p| p.1).sum();
        let mut m = Q4Matrix::with_shape(rows, cols).map_err(|source| ModelError::Quant {
            name: parts[0].0.into(),
            source,
        })?;
        let mut at = 0;
        for &(name, r) in parts {
            let info = self.check(name, &[cols as u64, r as u64])?;
            let data = &self.bytes[info.offset..info.offset + info.size];
            let row_bytes = info.size / r;
            for i in 0..r {
                m.set_row_from_gguf(at + i, info.kind, &data[i * row_bytes..(i + 1) * row_bytes])
                    .map_err(|source| ModelError::Quant {
                        name: name.into(),
                        source,
                    })?;
            }
            at += r;
        }
        Ok(m)
    }

    fn matrix_q8(&self, parts: &[(&str, usize)], cols: usize) -> Result<Q8Matrix, ModelError> {
        let rows = parts.iter().map(|p| p.1).sum();
        let mut m = Q8Matrix::with_shape(rows, cols).map_err(|source| ModelError::Quant {
            name: parts[0].0.into(),
            source,
        })?;
        let mut at = 0;
        for &(name, r) in parts {
            self.append_rows(name, r, cols, &mut m, at)?;
            at += r;
        }
        Ok(m)
    }
}

impl Model {
    /// Loads a GGUF model file with `threads` compute threads.
    pub fn load(path: &Path, threads: usize) -> Result<LoadedModel, ModelError> {
        Self::load_sized(path, None, threads)
    }

    /// Loads a GGUF model of `len` bytes (the whole file when `None`) from a file or a
    /// block device such as a dm-verity model disk, whose size `fstat` does not give.
    pub fn load_sized(
        path: &Path,
        len: Option<u64>,
        threads: usize,
    ) -> Result<LoadedModel, ModelError> {
        let file = MappedFile::open(path, len).map_err(ModelError::Io)?;
        let gguf = Gguf::parse(file.bytes()).map_err(ModelError::Gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(ModelError::Tokenizer)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("compute-{i}"))
            .build()
            .map_err(|e| ModelError::Io(std::io::Error::other(e)))?;
        let src = TensorSource {
            gguf: &gguf,
            bytes: file.bytes(),
        };
        let model = pool.install(|| Model::from_tensors(&src, config, threads))?;
        let name = gguf
            .get("general.name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        Ok(LoadedModel {
            model: std::sync::Arc::new(model),
            tokenizer: std::sync::Arc::new(tokenizer),
            name,
        })
    }

    fn from_tensors(
        src: &TensorSource,
        c: ModelConfig,
        threads: usize,
    ) -> Result<Model, ModelError> {
        let (d, hd) = (c.hidden, c.head_dim);
        let q_rows = c.heads * hd;
        let kv_rows = c.kv_heads * hd;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let qkv = src.matrix(
                &[
                    (&n("attn_q.weight"), q_rows),
                    (&n("attn_k.weight"), kv_rows),
                    (&n("attn_v.weight"), kv_rows),
                ],
                d,
            )?;
            let qkv_bias = if src.has(&n("attn_q.bias")) {
                let mut b = src.vector(&n("attn_q.bias"), q_rows)?;
                b.extend(src.vector(&n("attn_k.bias"), kv_rows)?);
                b.extend(src.vector(&n("attn_v.bias"), kv_rows)?);
                Some(b)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: src.vector(&n("attn_norm.weight"), d)?,
                qkv,
                qkv_bias,
                wo: src.matrix(&[(&n("attn_output.weight"), d)], q_rows)?,
                ffn_norm: src.vector(&n("ffn_norm.weight"), d)?,
                gate_up: src.matrix(
                    &[(&n("ffn_gate.weight"), c.ffn), (&n("ffn_up.weight"), c.ffn)],
                    d,
                )?,
                down: src.matrix(&[(&n("ffn_down.weight"), d)], c.ffn)?,
            });
        }
        let embed = src.matrix(&[("token_embd.weight", c.vocab)], d)?;
        let output = if src.has("output.weight") {
            Some(src.matrix(&[("output.weight", c.vocab)], d)?)
        } else {
            None
        };
        let half = hd / 2;
        let mut rope_cos = vec![0.0; c.context * half];
        let mut rope_sin = vec![0.0; c.context * half];
        for p in 0..c.context {
            for i in 0..half {
                let freq = (c.rope_base as f64).powf(-2.0 * i as f64 / hd as f64);
                let angle = p as f64 * freq;
                rope_cos[p * half + i] = angle.cos() as f32;
                rope_sin[p * half + i] = angle.sin() as f32;
            }
        }
        Ok(Model {
            kernel: Kernel::detect(),
            output_norm: src.vector("output_norm.weight", d)?,
            config: c,
            embed,
            output,
            layers,
            rope_cos,
            rope_sin,
            pool: ComputePool::new(threads).map_err(ModelError::Io)?,
        })
    }

    /// Compute threads in use.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs `tokens` at `positions` through the model, storing their keys and values
    /// through `kv`, and returns the logits of the tokens listed in `logit_rows`
    /// (`logit_rows.len() * vocab` values).
    pub fn forward(
        &self,
        tokens: &[u32],
        positions: &[usize],
        kv: &mut dyn KvAccess,
        logit_rows: &[usize],
        s: &mut Scratch,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        for &t in tokens {
            if t as usize >= c.vocab {
                return Err(ModelError::BadToken(t));
            }
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= c.context) {
            return Err(ModelError::TooLong(p));
        }
        self.forward_inner(tokens, positions, kv, logit_rows, s)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        positions: &[usize],
        kv: &mut dyn KvAccess,
        logit_rows: &[usize],
        s: &mut Scratch,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (n, d, hd) = (tokens.len(), c.hidden, c.head_dim);
        let q_width = c.heads * hd;
        let kv_width = c.kv_heads * hd;
        let qkv_width = q_width + 2 * kv_width;
        s.x.resize(n * d, 0.0);
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed
                .row_f32(tok as usize, &mut s.x[t * d..(t + 1) * d]);
        }
        if s.xq.cols == 0 {
            s.xq = Q8Matrix::with_shape(0, d).map_err(|source| ModelError::Quant {
                name: "activations".into(),
                source,
            })?;
        }
        let mut trace = s.trace.take();
        record(&mut trace, "embedding", &s.x);
        for (l, layer) in self.layers.iter().enumerate() {
            // Layer 0's stages are recorded when tracing.
            let mut no_trace = None;
            let tr = if l == 0 { &mut trace } else { &mut no_trace };
            // Attention.
            let x = &s.x;
            let norm = |t: usize, out: &mut [f32]| {
                rms_norm_row(&x[t * d..(t + 1) * d], &layer.attn_norm, c.rms_eps, out)
            };
            record_rows(tr, "attn_norm", n, d, norm);
            self.matmul(
                &layer.qkv,
                d,
                n,
                norm,
                &mut s.qkv,
                &mut s.xq,
                &mut s.transposed,
            );
            record_q8(tr, "attn_norm", &s.xq, n);
            if let Some(b) = &layer.qkv_bias {
                for row in s.qkv.chunks_exact_mut(qkv_width) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
            record(tr, "qkv", &s.qkv);
            for (t, row) in s.qkv.chunks_exact_mut(qkv_width).enumerate() {
                let p = positions[t];
                let (q, rest) = row.split_at_mut(q_width);
                self.rope(q, p);
                self.rope(&mut rest[..kv_width], p);
            }
            record(tr, "rope", &s.qkv);
            for (t, row) in s.qkv.chunks_exact(qkv_width).enumerate() {
                kv.write(
                    l,
                    t,
                    &row[q_width..q_width + kv_width],
                    &row[q_width + kv_width..],
                );
            }
            s.attn.resize(n * q_width, 0.0);
            let kv_ref: &dyn KvAccess = &*kv;
            let group = c.heads / c.kv_heads;
            let scale = 1.0 / (hd as f32).sqrt();
            let qkv = &s.qkv;
            let kernel = self.kernel;
            // One chunk per (token, kv head): the query heads sharing those keys and values.
            self.pool
                .for_each_chunk_mut(&mut s.attn, group * hd, |i, out| {
                    let (t, kv_head) = (i / c.kv_heads, i % c.kv_heads);
                    let mut runs = Vec::new();
                    let mut scores = Vec::new();
                    kv_ref.runs(l, t, kv_head, &mut runs);
                    for (g, out) in out.chunks_exact_mut(hd).enumerate() {
                        let head = kv_head * group + g;
                        let q = &qkv[t * qkv_width + head * hd..t * qkv_width + (head + 1) * hd];
                        attend(kernel, q, scale, &runs, &mut scores, out);
                    }
                });
            record(tr, "attention", &s.attn);
            let attn = &s.attn;
            let copy = |t: usize, out: &mut [f32]| {
                out.copy_from_slice(&attn[t * q_width..(t + 1) * q_width])
            };
            self.matmul(
                &layer.wo,
                q_width,
                n,
                copy,
                &mut s.big,
                &mut s.xq,
                &mut s.transposed,
            );
            record_q8(tr, "attention", &s.xq, n);
            record(tr, "attn_output", &s.big);
            s.x.iter_mut().zip(&s.big).for_each(|(x, o)| *x += o);
            record(tr, "attn_residual", &s.x);
            // Feed-forward.
            let x = &s.x;
            let norm = |t: usize, out: &mut [f32]| {
                rms_norm_row(&x[t * d..(t + 1) * d], &layer.ffn_norm, c.rms_eps, out)
            };
            record_rows(tr, "ffn_norm", n, d, norm);
            self.matmul(
                &layer.gate_up,
                d,
                n,
                norm,
                &mut s.act,
                &mut s.xq,
                &mut s.transposed,
            );
            record_q8(tr, "ffn_norm", &s.xq, n);
            record(tr, "gate_up", &s.act);
            // SwiGLU, fused into the quantization of the down projection's input.
            let gate_up = &s.act;
            let ffn = c.ffn;
            let swiglu = |t: usize, out: &mut [f32]| {
                let (g, u) = gate_up[t * 2 * ffn..(t + 1) * 2 * ffn].split_at(ffn);
                swiglu_row(g, u, out);
            };
            record_rows(tr, "swiglu", n, ffn, swiglu);
            self.matmul(
                &layer.down,
                ffn,
                n,
                swiglu,
                &mut s.big,
                &mut s.xq,
                &mut s.transposed,
            );
            record_q8(tr, "swiglu", &s.xq, n);
            record(tr, "down", &s.big);
            s.x.iter_mut().zip(&s.big).for_each(|(x, o)| *x += o);
            record(tr, "ffn_residual", &s.x);
        }
        // Only the rows that need logits go through the (large) output projection.
        let mut last = Vec::with_capacity(logit_rows.len() * d);
        for &r in logit_rows {
            last.extend_from_slice(&s.x[r * d..(r + 1) * d]);
        }
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = Vec::new();
        let norm = |t: usize, out: &mut [f32]| {
            rms_norm_row(&last[t * d..(t + 1) * d], &self.output_norm, c.rms_eps, out)
        };
        let rows = logit_rows.len();
        record_rows(&mut trace, "output_norm", rows, d, norm);
        self.matmul(
            head,
            d,
            rows,
            norm,
            &mut logits,
            &mut s.xq,
            &mut s.transposed,
        );
        record_q8(&mut trace, "output_norm", &s.xq, rows);
        record(&mut trace, "logits", &logits);
        s.trace = trace;
        Ok(logits)
    }

    /// `out[t][j] = sum_k w[j][k] * x[t][k]` where `input(t, row)` fills token `t`'s input
    /// row `x[t]` (`cols` values: a norm, a copy, SwiGLU) just before it is quantized. Input
    /// rows are prepared on the pool by token, the products split across it by rows of `w`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        w: &Weights,
        cols: usize,
        tokens: usize,
        input: impl Fn(usize, &mut [f32]) + Sync,
        out: &mut Vec<f32>,
        xq: &mut Q8Matrix,
        transposed: &mut Vec<f32>,
    ) {
        xq.cols = cols;
        let mut rows = xq.activation_rows(tokens);
        let fill = |t: usize, (q, sc, sums): &mut (&mut [i8], &mut [f32], &mut [f32])| {
            let mut buf = vec![0.0f32; cols];
            input(t, &mut buf);
            quantize_activation_row(&buf, q, sc, sums);
        };
        if tokens < PARALLEL_INPUT_TOKENS {
            rows.iter_mut().enumerate().for_each(|(t, r)| fill(t, r));
        } else {
            self.pool
                .for_each_chunk_mut(&mut rows, 1, |t, r| fill(t, &mut r[0]));
        }
        drop(rows);
        let w_rows = w.rows();
        transposed.resize(w_rows * tokens, 0.0);
        out.resize(w_rows * tokens, 0.0);
        if tokens == 0 {
            return;
        }
        let threads = self.pool.threads();
        // Rows per task: a multiple of 4, about 4 tasks per thread for balance.
        let rows_per_task = (w_rows.div_ceil(threads * 4)).div_ceil(4) * 4;
        let kernel = self.kernel;
        let xq = &*xq;
        self.pool
            .for_each_chunk_mut(transposed, rows_per_task * tokens, |i, chunk| {
                let start = i * rows_per_task;
                let end = (start + rows_per_task).min(w_rows);
                matmul_rows(kernel, w, xq, start..end, chunk);
            });
        for j in 0..w_rows {
            for t in 0..tokens {
                out[t * w_rows + j] = transposed[j * tokens + t];
            }
        }
    }

    fn rope(&self, x: &mut [f32], pos: usize) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = if self.config.rope_neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// Below this many tokens a matrix product's input rows are prepared on the calling
/// thread: handing them out costs more than the work.
const PARALLEL_INPUT_TOKENS: usize = 4;

/// `e^x` in f32, taken in f64 and rounded once: the correctly rounded value (but for
/// vanishingly rare cases), which the CUDA kernels compute too, so the two paths agree bit for
/// bit (f32's own `exp` differs from the GPU's in the last bit now and then).
pub(crate) fn exp_f32(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

/// SwiGLU of one token: `silu(gate) * up`.
fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_f32(-g)) * u;
    }
}

fn rms_norm_row(row: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
        *o = v * inv * w;
    }
}

/// Scaled dot-product attention of one query head over runs of cached keys and values, in
/// position order. The paged and contiguous paths both end here, so they agree exactly.
pub(crate) fn attend(
    kernel: Kernel,
    q: &[f32],
    scale: f32,
    runs: &[(&[f32], &[f32])],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    scores.clear();
    for (keys, _) in runs {
        for k in keys.chunks_exact(hd) {
            scores.push(dot_f32(kernel, q, k) * scale);
        }
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = exp_f32(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    let mut i = 0;
    for (_, values) in runs {
        for v in values.chunks_exact(hd) {
            axpy_f32(kernel, scores[i] * inv, v, out);
            i += 1;
        }
    }
}
