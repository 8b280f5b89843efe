//! The CUDA path (cargo feature `cuda`): the same llama-family forward pass as
//! [`Model::forward`](crate::model::Model::forward), over the same flat varlen batch, on an
//! NVIDIA GPU, with the KV cache in GPU memory in the same paged layout and with the same
//! block ids as the CPU [`KvStore`](crate::kv::KvStore).
//!
//! The driver and NVRTC libraries are loaded with `dlopen` when a GPU is asked for, so the
//! binary builds and runs without a CUDA toolkit; the kernels (`kernels.cu`) are compiled at
//! start-up for the device's compute capability. Weights are uploaded once, in the blocks the
//! CPU engine holds them in (4-bit blocks as GGUF stores them, or 8-bit ones), and
//! dequantized inside the matrix kernels. Only logits come back to the host: sampling stays
//! on the CPU. A missing driver, library or device is an error, never a panic and never a
//! silent fallback to the CPU. This module never sees text and logs no token ids.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::kv::{BlockId, KvShape};
use crate::model::{Model, ModelConfig, ModelError};
use crate::quant::{Q8_BLOCK, Weights};

/// The kernels' CUDA C source, compiled by NVRTC at start-up.
pub const KERNELS_SOURCE: &str = include_str!("kernels.cu");

/// Largest head dimension the attention kernel handles (it keeps a query head in registers).
pub const MAX_HEAD_DIM: usize = 256;
/// Tokens one matrix-kernel warp multiplies at once (`MM_TOKENS` in kernels.cu).
const MM_TOKENS: u32 = 8;
/// Weight rows per matrix-kernel thread block (`MM_WARPS` in kernels.cu).
const MM_WARPS: u32 = 4;
/// Query heads per attention thread block (one warp each).
const ATTENTION_HEADS_PER_BLOCK: u32 = 4;
const THREADS_PER_ROW_KERNEL: u32 = 256;

/// Why the GPU cannot be used, or failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(
        "the NVIDIA driver library (libcuda.so) cannot be loaded: no NVIDIA driver on this machine"
    )]
    NoDriver,
    #[error(
        "the NVRTC library (libnvrtc.so) cannot be loaded: install the CUDA runtime compiler, or add its folder to LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error("no CUDA device {ordinal} (this machine has {count})")]
    NoDevice { ordinal: usize, count: usize },
    #[error("the CUDA driver failed: {0}")]
    Driver(#[from] DriverError),
    #[error("NVRTC could not compile the kernels for compute capability {arch}: {message}")]
    Compile { arch: String, message: String },
    #[error("the CUDA library panicked: {0}")]
    Panicked(String),
    #[error("the model's shape is not supported on the GPU: {0}")]
    Unsupported(String),
    #[error("the batch is inconsistent: {0}")]
    BadBatch(String),
}

impl From<CudaError> for ModelError {
    fn from(e: CudaError) -> ModelError {
        ModelError::Device(e.to_string())
    }
}

/// Runs `f`, turning a panic inside the CUDA bindings (they panic on a missing symbol) into
/// an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(CudaError::Panicked(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into()),
        )),
    }
}

/// How many CUDA devices this machine has; an error when the driver is missing.
pub fn device_count() -> Result<usize, CudaError> {
    // SAFETY: only tries to dlopen the driver library; nothing is called in it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    guarded(|| Ok(CudaContext::device_count()?.max(0) as usize))
}

fn compile(arch: &str) -> Result<Ptx, CudaError> {
    let opts = CompileOptions {
        // No fused multiply-adds: the CPU's arithmetic has none (see kernels.cu).
        options: vec![format!("--gpu-architecture={arch}"), "--fmad=false".into()],
        name: Some("kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS_SOURCE, opts).map_err(|e| CudaError::Compile {
        arch: arch.into(),
        message: e.to_string(),
    })
}

/// Compiles the kernels with NVRTC for `arch` (e.g. `compute_90`) without any device or
/// driver, returning the PTX text: checks the CUDA source where there is no GPU.
pub fn compile_kernels(arch: &str) -> Result<String, CudaError> {
    // SAFETY: only tries to dlopen the NVRTC library; nothing is called in it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    guarded(|| Ok(compile(arch)?.to_src()))
}

/// The kernels, compiled and loaded on one device.
struct Kernels {
    embed_q8: CudaFunction,
    embed_q4: CudaFunction,
    rms_norm: CudaFunction,
    quantize_q8: CudaFunction,
    matmul_q8: CudaFunction,
    matmul_q4: CudaFunction,
    add_bias: CudaFunction,
    rope: CudaFunction,
    kv_write: CudaFunction,
    paged_attention: CudaFunction,
    silu_mul: CudaFunction,
    copy_block: CudaFunction,
}

/// One CUDA device with the kernels compiled for it and the stream everything runs on.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    /// Compute capability, e.g. (9, 0).
    pub compute_capability: (i32, i32),
    /// The device's name as the driver gives it.
    pub name: String,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .finish()
    }
}

impl CudaDevice {
    /// Opens device `ordinal` and compiles the kernels for it.
    pub fn open(ordinal: usize) -> Result<Arc<CudaDevice>, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        // SAFETY: only tries to dlopen the NVRTC library; nothing is called in it.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NoNvrtc);
        }
        guarded(|| {
            let ctx = CudaContext::new(ordinal)?;
            let compute_capability = ctx.compute_capability()?;
            let name = ctx.name()?;
            let arch = format!("compute_{}{}", compute_capability.0, compute_capability.1);
            let ptx = compile(&arch)?;
            let module = ctx.load_module(ptx)?;
            let f = |name: &str| module.load_function(name);
            let k = Kernels {
                embed_q8: f("embed_q8")?,
                embed_q4: f("embed_q4")?,
                rms_norm: f("rms_norm")?,
                quantize_q8: f("quantize_q8")?,
                matmul_q8: f("matmul_q8")?,
                matmul_q4: f("matmul_q4")?,
                add_bias: f("add_bias")?,
                rope: f("rope")?,
                kv_write: f("kv_write")?,
                paged_attention: f("paged_attention")?,
                silu_mul: f("silu_mul")?,
                copy_block: f("copy_block")?,
            };
            // One stream (the default one): kernels run in order, no cross-stream events.
            let stream = ctx.default_stream();
            Ok(Arc::new(CudaDevice {
                ctx,
                stream,
                k,
                compute_capability,
                name,
            }))
        })
    }

    /// Waits for the stream, surfacing any error a kernel or copy left behind.
    fn finish(&self) -> Result<(), CudaError> {
        self.stream.synchronize()?;
        self.ctx.check_err()?;
        Ok(())
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    fn upload<T: cudarc::driver::DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, CudaError> {
        if v.is_empty() {
            // A zero-length allocation is refused by some drivers; keep one element.
            // SAFETY: never read: every kernel is given the real length, zero.
            return Ok(unsafe { self.stream.alloc::<T>(1) }?);
        }
        Ok(self.stream.clone_htod(v)?)
    }

    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, CudaError> {
        Ok(self.stream.alloc_zeros::<f32>(n.max(1))?)
    }

    /// Runs the paged-attention kernel alone: `q` is `[tokens][heads * head_dim]`, token
    /// `t` belongs to sequence `token_seq[t]` whose block table is `tables[seq]`, and
    /// attends to positions `0..ctx_lens[t]` of `layer`. Returns `[tokens][heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        kv: &CudaKvStore,
        layer: usize,
        q: &[f32],
        heads: usize,
        token_seq: &[u32],
        ctx_lens: &[usize],
        tables: &[&[BlockId]],
    ) -> Result<Vec<f32>, CudaError> {
        let shape = kv.shape;
        let hd = shape.head_dim;
        let n = token_seq.len();
        if q.len() != n * heads * hd || ctx_lens.len() != n {
            return Err(CudaError::BadBatch(
                "q, token_seq and ctx_lens disagree".into(),
            ));
        }
        let (flat, max_blocks) = flatten_tables(tables, kv.blocks)?;
        for (t, (&s, &c)) in token_seq.iter().zip(ctx_lens).enumerate() {
            let table = tables
                .get(s as usize)
                .ok_or_else(|| CudaError::BadBatch(format!("token {t}: no sequence {s}")))?;
            if c == 0 || c > table.len() * kv.block_tokens {
                return Err(CudaError::BadBatch(format!(
                    "token {t}: context {c} is outside its block table"
                )));
            }
        }
        let dq = self.upload(q)?;
        let dseq = self.upload(&token_seq.iter().map(|&s| s as i32).collect::<Vec<_>>())?;
        let dctx = self.upload(&ctx_lens.iter().map(|&c| c as i32).collect::<Vec<_>>())?;
        let dtables = self.upload(&flat)?;
        let mut out = self.zeros(n * heads * hd)?;
        self.launch_attention(
            kv,
            layer,
            &dq,
            heads * hd,
            &mut out,
            &dseq.slice(..),
            &dctx.slice(..),
            &dtables.slice(..),
            max_blocks,
            heads,
            n,
        )?;
        let mut host = self.stream.clone_dtoh(&out)?;
        self.finish()?;
        host.truncate(n * heads * hd);
        Ok(host)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_attention(
        &self,
        kv: &CudaKvStore,
        layer: usize,
        q: &CudaSlice<f32>,
        q_stride: usize,
        out: &mut CudaSlice<f32>,
        token_seq: &CudaView<'_, i32>,
        ctx_lens: &CudaView<'_, i32>,
        tables: &CudaView<'_, i32>,
        max_blocks: usize,
        heads: usize,
        n: usize,
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let s = kv.shape;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let cfg = LaunchConfig {
            grid_dim: (
                n as u32,
                (heads as u32).div_ceil(ATTENTION_HEADS_PER_BLOCK),
                1,
            ),
            block_dim: (32 * ATTENTION_HEADS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (q_stride, layer, blocks, bt) = (
            q_stride as i32,
            layer as i32,
            kv.blocks as i32,
            kv.block_tokens as i32,
        );
        let (max_blocks, heads, kvh, hd) = (
            max_blocks as i32,
            heads as i32,
            s.kv_heads as i32,
            s.head_dim as i32,
        );
        let mut b = self.stream.launch_builder(&self.k.paged_attention);
        b.arg(q)
            .arg(&q_stride)
            .arg(out)
            .arg(&kv.keys)
            .arg(&kv.values)
            .arg(&layer)
            .arg(&blocks)
            .arg(&bt)
            .arg(token_seq)
            .arg(ctx_lens)
            .arg(tables)
            .arg(&max_blocks)
            .arg(&heads)
            .arg(&kvh)
            .arg(&hd)
            .arg(&scale);
        // SAFETY: the arguments match paged_attention's signature in kernels.cu; every index
        // the kernel forms was checked on the host: tables hold block ids below `blocks`,
        // contexts fit their tables, and q/out hold `n` rows.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

/// Block tables as one `[seqs][max_blocks]` array of i32, checking every id.
fn flatten_tables(tables: &[&[BlockId]], blocks: usize) -> Result<(Vec<i32>, usize), CudaError> {
    let max_blocks = tables.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut flat = vec![0i32; tables.len() * max_blocks];
    for (s, t) in tables.iter().enumerate() {
        for (i, &b) in t.iter().enumerate() {
            if b as usize >= blocks {
                return Err(CudaError::BadBatch(format!(
                    "block id {b} is outside the pool of {blocks}"
                )));
            }
            flat[s * max_blocks + i] = b as i32;
        }
    }
    Ok((flat, max_blocks))
}

/// The paged KV cache in GPU memory: kv.rs's layout (per layer and block,
/// `[kv_head][token in block][head_dim]`) and block ids, so the CPU
/// [`BlockPool`](crate::kv::BlockPool) hands out blocks for it unchanged.
pub struct CudaKvStore {
    pub shape: KvShape,
    pub block_tokens: usize,
    pub blocks: usize,
    keys: CudaSlice<f32>,
    values: CudaSlice<f32>,
    dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for CudaKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKvStore")
            .field("shape", &self.shape)
            .field("block_tokens", &self.block_tokens)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl CudaKvStore {
    /// Allocates `blocks` blocks of `block_tokens` tokens in GPU memory (zeroed).
    pub fn new(
        dev: &Arc<CudaDevice>,
        shape: KvShape,
        block_tokens: usize,
        blocks: usize,
    ) -> Result<CudaKvStore, CudaError> {
        let n = shape.layers * blocks * shape.kv_heads * block_tokens * shape.head_dim;
        Ok(CudaKvStore {
            shape,
            block_tokens,
            blocks,
            keys: dev.zeros(n)?,
            values: dev.zeros(n)?,
            dev: dev.clone(),
        })
    }

    fn block_len(&self) -> usize {
        self.shape.kv_heads * self.block_tokens * self.shape.head_dim
    }

    /// Uploads the whole cache from host `keys` and `values` in the same layout (tests).
    pub fn upload(&mut self, keys: &[f32], values: &[f32]) -> Result<(), CudaError> {
        let n = self.shape.layers * self.blocks * self.block_len();
        if keys.len() != n || values.len() != n {
            return Err(CudaError::BadBatch(format!(
                "the cache holds {n} values per side"
            )));
        }
        self.dev.stream.memcpy_htod(keys, &mut self.keys)?;
        self.dev.stream.memcpy_htod(values, &mut self.values)?;
        Ok(())
    }

    /// The whole cache back on the host: (keys, values), kv.rs's layout (tests).
    pub fn download(&self) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
        let n = self.shape.layers * self.blocks * self.block_len();
        let mut k = self.dev.stream.clone_dtoh(&self.keys)?;
        let mut v = self.dev.stream.clone_dtoh(&self.values)?;
        self.dev.finish()?;
        k.truncate(n);
        v.truncate(n);
        Ok((k, v))
    }

    /// Copies block `from` to block `to` in every layer, for copy-on-write (as
    /// [`KvStore::copy_block`](crate::kv::KvStore::copy_block)).
    pub fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<(), CudaError> {
        if from as usize >= self.blocks || to as usize >= self.blocks {
            return Err(CudaError::BadBatch("block id outside the pool".into()));
        }
        if from == to || self.shape.layers == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (self.shape.layers as u32, 1, 1),
            block_dim: (THREADS_PER_ROW_KERNEL, 1, 1),
            shared_mem_bytes: 0,
        };
        let (blocks, len, from, to) = (
            self.blocks as i32,
            self.block_len() as i64,
            from as i32,
            to as i32,
        );
        let dev = self.dev.clone();
        let mut b = dev.stream.launch_builder(&dev.k.copy_block);
        b.arg(&mut self.keys)
            .arg(&mut self.values)
            .arg(&blocks)
            .arg(&len)
            .arg(&from)
            .arg(&to);
        // SAFETY: matches copy_block's signature; both ids were checked against the pool.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

/// A weight matrix on the GPU, in the CPU engine's blocks.
enum GpuMatrix {
    Q8 {
        rows: usize,
        cols: usize,
        quants: CudaSlice<i8>,
        scales: CudaSlice<f32>,
    },
    Q4 {
        rows: usize,
        cols: usize,
        nibbles: CudaSlice<u8>,
        scales: CudaSlice<f32>,
        mins: CudaSlice<f32>,
    },
}

impl GpuMatrix {
    fn upload(dev: &CudaDevice, w: &Weights) -> Result<GpuMatrix, CudaError> {
        Ok(match w {
            Weights::Q8(m) => GpuMatrix::Q8 {
                rows: m.rows,
                cols: m.cols,
                quants: dev.upload(&m.quants)?,
                scales: dev.upload(&m.scales)?,
            },
            Weights::Q4(m) => GpuMatrix::Q4 {
                rows: m.rows,
                cols: m.cols,
                nibbles: dev.upload(&m.nibbles)?,
                scales: dev.upload(&m.scales)?,
                mins: dev.upload(&m.mins)?,
            },
        })
    }

    fn rows(&self) -> usize {
        match self {
            GpuMatrix::Q8 { rows, .. } | GpuMatrix::Q4 { rows, .. } => *rows,
        }
    }
}

struct GpuLayer {
    attn_norm: CudaSlice<f32>,
    qkv: GpuMatrix,
    qkv_bias: Option<CudaSlice<f32>>,
    wo: GpuMatrix,
    ffn_norm: CudaSlice<f32>,
    gate_up: GpuMatrix,
    down: GpuMatrix,
}

/// Activation buffers, grown to the largest batch seen and then reused.
#[derive(Default)]
struct Buffers {
    tokens: usize,
    x: Option<CudaSlice<f32>>,
    normed: Option<CudaSlice<f32>>,
    qkv: Option<CudaSlice<f32>>,
    attn: Option<CudaSlice<f32>>,
    gate_up: Option<CudaSlice<f32>>,
    act: Option<CudaSlice<f32>>,
    xq: Option<CudaSlice<i8>>,
    xs: Option<CudaSlice<f32>>,
    xsum: Option<CudaSlice<f32>>,
    logits_rows: usize,
    logits: Option<CudaSlice<f32>>,
}

/// One flat varlen batch, as the engine builds it: per token its id, position, slot
/// (`block * block_tokens + offset`) and sequence; per sequence its block table. Each token
/// attends to positions `0..=position` of its sequence.
#[derive(Debug, Clone, Copy)]
pub struct FlatBatch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [usize],
    pub slots: &'a [usize],
    pub token_seq: &'a [u32],
    pub tables: &'a [&'a [BlockId]],
}

/// A model's weights on a GPU and the forward pass there.
pub struct CudaModel {
    dev: Arc<CudaDevice>,
    config: ModelConfig,
    embed: GpuMatrix,
    output: Option<GpuMatrix>,
    output_norm: CudaSlice<f32>,
    layers: Vec<GpuLayer>,
    rope_cos: CudaSlice<f32>,
    rope_sin: CudaSlice<f32>,
    buf: Buffers,
    /// When set, the stages of layer 0 and of the output are recorded here (diagnostics).
    trace: Option<Vec<(String, Vec<f32>)>>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("device", &self.dev)
            .field("layers", &self.layers.len())
            .finish()
    }
}

fn cfg_rows(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn buf<T>(b: &mut Option<CudaSlice<T>>) -> &mut CudaSlice<T> {
    b.as_mut()
        .expect("buffers are allocated by ensure_buffers before use")
}

impl CudaModel {
    /// Uploads `model`'s weights to `dev`, once.
    pub fn upload(dev: &Arc<CudaDevice>, model: &Model) -> Result<CudaModel, CudaError> {
        let c = &model.config;
        if !c.head_dim.is_multiple_of(32) || c.head_dim > MAX_HEAD_DIM {
            return Err(CudaError::Unsupported(format!(
                "head dimension {} (a multiple of 32, at most {MAX_HEAD_DIM}, is)",
                c.head_dim
            )));
        }
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            layers.push(GpuLayer {
                attn_norm: dev.upload(&l.attn_norm)?,
                qkv: GpuMatrix::upload(dev, &l.qkv)?,
                qkv_bias: l.qkv_bias.as_ref().map(|b| dev.upload(b)).transpose()?,
                wo: GpuMatrix::upload(dev, &l.wo)?,
                ffn_norm: dev.upload(&l.ffn_norm)?,
                gate_up: GpuMatrix::upload(dev, &l.gate_up)?,
                down: GpuMatrix::upload(dev, &l.down)?,
            });
        }
        Ok(CudaModel {
            config: c.clone(),
            embed: GpuMatrix::upload(dev, &model.embed)?,
            output: model
                .output
                .as_ref()
                .map(|w| GpuMatrix::upload(dev, w))
                .transpose()?,
            output_norm: dev.upload(&model.output_norm)?,
            layers,
            rope_cos: dev.upload(&model.rope_cos)?,
            rope_sin: dev.upload(&model.rope_sin)?,
            buf: Buffers::default(),
            trace: None,
            dev: dev.clone(),
        })
    }

    /// The device this model runs on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// A KV cache for this model on its device.
    pub fn new_kv(&self, block_tokens: usize, blocks: usize) -> Result<CudaKvStore, CudaError> {
        CudaKvStore::new(&self.dev, self.config.kv_shape(), block_tokens, blocks)
    }

    fn ensure_buffers(&mut self, n: usize, logit_rows: usize) -> Result<(), CudaError> {
        let c = &self.config;
        let dev = &self.dev;
        let b = &mut self.buf;
        if n > b.tokens || b.x.is_none() {
            let n = n.max(1).next_power_of_two();
            let qkv_w = (c.heads + 2 * c.kv_heads) * c.head_dim;
            let widest = c.hidden.max(c.heads * c.head_dim).max(c.ffn);
            b.x = Some(dev.zeros(n * c.hidden)?);
            b.normed = Some(dev.zeros(n * widest)?);
            b.qkv = Some(dev.zeros(n * qkv_w)?);
            b.attn = Some(dev.zeros(n * c.heads * c.head_dim)?);
            b.gate_up = Some(dev.zeros(n * 2 * c.ffn)?);
            b.act = Some(dev.zeros(n * c.ffn)?);
            b.xq = Some(dev.stream.alloc_zeros::<i8>(n * widest)?);
            b.xs = Some(dev.zeros(n * widest / Q8_BLOCK)?);
            b.xsum = Some(dev.zeros(n * widest / Q8_BLOCK)?);
            b.tokens = n;
        }
        if logit_rows > b.logits_rows || b.logits.is_none() {
            let r = logit_rows.max(1).next_power_of_two();
            b.logits = Some(dev.zeros(r * c.vocab)?);
            b.logits_rows = r;
        }
        Ok(())
    }

    /// Runs the batch through the model, storing keys and values in `kv`, and returns the
    /// logits of the tokens listed in `logit_rows` (`logit_rows.len() * vocab` values), as
    /// [`Model::forward`] does.
    pub fn forward(
        &mut self,
        kv: &mut CudaKvStore,
        batch: &FlatBatch,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let n = batch.tokens.len();
        if let Some(&t) = batch.tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(ModelError::BadToken(t));
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p >= c.context) {
            return Err(ModelError::TooLong(p));
        }
        self.check(kv, batch, logit_rows)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        guarded(|| self.run(kv, batch, logit_rows)).map_err(ModelError::from)
    }

    /// As [`CudaModel::forward`], also returning the stages of layer 0 and of the output
    /// under the names and in the layout [`Scratch::tracing`](crate::model::Scratch::tracing)
    /// gives them on the CPU, to find the first stage where the two paths part.
    #[allow(clippy::type_complexity)]
    pub fn forward_traced(
        &mut self,
        kv: &mut CudaKvStore,
        batch: &FlatBatch,
        logit_rows: &[usize],
    ) -> Result<(Vec<f32>, Vec<(String, Vec<f32>)>), ModelError> {
        self.trace = Some(Vec::new());
        let logits = self.forward(kv, batch, logit_rows);
        let trace = self.trace.take().unwrap_or_default();
        Ok((logits?, trace))
    }

    fn check(
        &self,
        kv: &CudaKvStore,
        batch: &FlatBatch,
        logit_rows: &[usize],
    ) -> Result<(), CudaError> {
        let n = batch.tokens.len();
        if batch.positions.len() != n || batch.slots.len() != n || batch.token_seq.len() != n {
            return Err(CudaError::BadBatch(
                "tokens, positions, slots and sequences differ in length".into(),
            ));
        }
        if kv.shape != self.config.kv_shape() {
            return Err(CudaError::BadBatch(
                "the KV cache is for another model".into(),
            ));
        }
        if let Some(&r) = logit_rows.iter().find(|&&r| r >= n) {
            return Err(CudaError::BadBatch(format!(
                "logit row {r} is past the batch"
            )));
        }
        let bt = kv.block_tokens;
        for t in 0..n {
            let table = batch
                .tables
                .get(batch.token_seq[t] as usize)
                .ok_or_else(|| CudaError::BadBatch(format!("token {t} has no block table")))?;
            let p = batch.positions[t];
            if p / bt >= table.len() {
                return Err(CudaError::BadBatch(format!(
                    "token {t}: position {p} is past its block table"
                )));
            }
            if batch.slots[t] != table[p / bt] as usize * bt + p % bt {
                return Err(CudaError::BadBatch(format!(
                    "token {t}: its slot is not where its block table puts position {p}"
                )));
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        kv: &mut CudaKvStore,
        batch: &FlatBatch,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, CudaError> {
        let n = batch.tokens.len();
        let rows = logit_rows.len();
        self.ensure_buffers(n, rows)?;
        let c = self.config.clone();
        let dev = self.dev.clone();
        let st = &dev.stream;
        let k = &dev.k;
        let (d, hd) = (c.hidden, c.head_dim);
        let q_width = c.heads * hd;
        let kv_width = c.kv_heads * hd;
        let qkv_width = q_width + 2 * kv_width;

        // Per-step integers, in one upload: tokens, positions, slots, sequences, contexts,
        // logit rows, then the block tables.
        let (flat_tables, max_blocks) = flatten_tables(batch.tables, kv.blocks)?;
        let mut ints: Vec<i32> = Vec::with_capacity(5 * n + rows + flat_tables.len());
        ints.extend(batch.tokens.iter().map(|&t| t as i32));
        ints.extend(batch.positions.iter().map(|&p| p as i32));
        ints.extend(batch.slots.iter().map(|&s| s as i32));
        ints.extend(batch.token_seq.iter().map(|&s| s as i32));
        ints.extend(batch.positions.iter().map(|&p| p as i32 + 1));
        ints.extend(logit_rows.iter().map(|&r| r as i32));
        ints.extend_from_slice(&flat_tables);
        let dints = dev.upload(&ints)?;
        let part = |i: usize| dints.slice(i * n..(i + 1) * n);
        let (d_tokens, d_pos, d_slots, d_seq, d_ctx) =
            (part(0), part(1), part(2), part(3), part(4));
        let d_rows = dints.slice(5 * n..5 * n + rows.max(1).min(ints.len() - 5 * n));
        let d_tables = dints.slice(5 * n + rows..);

        let b = &mut self.buf;
        let di = d as i32;
        let eps = c.rms_eps;
        let mut trace = self.trace.take();

        // Embedding rows.
        {
            let x = buf(&mut b.x);
            let mut l = match &self.embed {
                GpuMatrix::Q8 { quants, scales, .. } => {
                    let mut l = st.launch_builder(&k.embed_q8);
                    l.arg(quants).arg(scales);
                    l
                }
                GpuMatrix::Q4 {
                    nibbles,
                    scales,
                    mins,
                    ..
                } => {
                    let mut l = st.launch_builder(&k.embed_q4);
                    l.arg(nibbles).arg(scales).arg(mins);
                    l
                }
            };
            l.arg(&d_tokens).arg(x).arg(&di);
            // SAFETY: matches embed_q8/embed_q4; token ids were checked against the vocabulary.
            unsafe { l.launch(cfg_rows(n, THREADS_PER_ROW_KERNEL)) }?;
        }
        snap(st, &mut trace, "embedding", &b.x, n * d)?;

        for (li, layer) in self.layers.iter().enumerate() {
            // Layer 0's stages are recorded when tracing.
            let mut no_trace = None;
            let tr = if li == 0 { &mut trace } else { &mut no_trace };
            // Attention: norm, QKV, bias, RoPE, cache write, paged attention, output + residual.
            norm(
                st,
                k,
                buf(&mut b.x),
                &layer.attn_norm,
                &d_slots,
                false,
                buf(&mut b.normed),
                n,
                d,
                eps,
            )?;
            snap(st, tr, "attn_norm", &b.normed, n * d)?;
            quantize_activations(st, k, b, Activations::Normed, n * d, tr, "attn_norm")?;
            matmul(st, k, &layer.qkv, d, b, n, Target::Qkv, 0, false)?;
            if let Some(bias) = &layer.qkv_bias {
                let w = qkv_width as i32;
                let mut l = st.launch_builder(&k.add_bias);
                l.arg(buf(&mut b.qkv)).arg(bias).arg(&w);
                // SAFETY: matches add_bias; the bias holds qkv_width values.
                unsafe { l.launch(cfg_rows(n, THREADS_PER_ROW_KERNEL)) }?;
            }
            snap(st, tr, "qkv", &b.qkv, n * qkv_width)?;
            {
                let (rw, rh, hdi, neox) = (
                    qkv_width as i32,
                    (c.heads + c.kv_heads) as i32,
                    hd as i32,
                    i32::from(c.rope_neox),
                );
                let mut l = st.launch_builder(&k.rope);
                l.arg(buf(&mut b.qkv))
                    .arg(&d_pos)
                    .arg(&self.rope_cos)
                    .arg(&self.rope_sin)
                    .arg(&rw)
                    .arg(&rh)
                    .arg(&hdi)
                    .arg(&neox);
                // SAFETY: matches rope; positions were checked below the context, which
                // the tables cover.
                unsafe { l.launch(cfg_rows(n, 128)) }?;
            }
            snap(st, tr, "rope", &b.qkv, n * qkv_width)?;
            {
                let (lay, blocks, bt, kvh, hdi, rw, koff, voff) = (
                    li as i32,
                    kv.blocks as i32,
                    kv.block_tokens as i32,
                    c.kv_heads as i32,
                    hd as i32,
                    qkv_width as i32,
                    q_width as i32,
                    (q_width + kv_width) as i32,
                );
                let mut l = st.launch_builder(&k.kv_write);
                l.arg(buf(&mut b.qkv))
                    .arg(&d_slots)
                    .arg(&mut kv.keys)
                    .arg(&mut kv.values)
                    .arg(&lay)
                    .arg(&blocks)
                    .arg(&bt)
                    .arg(&kvh)
                    .arg(&hdi)
                    .arg(&rw)
                    .arg(&koff)
                    .arg(&voff);
                // SAFETY: matches kv_write; every slot was checked against its table, and
                // tables against the pool.
                unsafe { l.launch(cfg_rows(n, 128)) }?;
            }
            dev.launch_attention(
                kv,
                li,
                buf(&mut b.qkv),
                qkv_width,
                buf(&mut b.attn),
                &d_seq,
                &d_ctx,
                &d_tables,
                max_blocks,
                c.heads,
                n,
            )?;
            snap(st, tr, "attention", &b.attn, n * q_width)?;
            quantize_activations(
                st,
                k,
                b,
                Activations::Attention,
                n * q_width,
                tr,
                "attention",
            )?;
            if tr.is_some() {
                // The output projection alone, into a buffer free at this point.
                matmul(st, k, &layer.wo, q_width, b, n, Target::GateUp, 0, false)?;
                snap(st, tr, "attn_output", &b.gate_up, n * d)?;
            }
            matmul(st, k, &layer.wo, q_width, b, n, Target::X, 0, true)?;
            snap(st, tr, "attn_residual", &b.x, n * d)?;
            // Feed-forward: norm, gate and up, SwiGLU, down + residual.
            norm(
                st,
                k,
                buf(&mut b.x),
                &layer.ffn_norm,
                &d_slots,
                false,
                buf(&mut b.normed),
                n,
                d,
                eps,
            )?;
            snap(st, tr, "ffn_norm", &b.normed, n * d)?;
            quantize_activations(st, k, b, Activations::Normed, n * d, tr, "ffn_norm")?;
            matmul(st, k, &layer.gate_up, d, b, n, Target::GateUp, 0, false)?;
            snap(st, tr, "gate_up", &b.gate_up, n * 2 * c.ffn)?;
            {
                let f = c.ffn as i32;
                let mut l = st.launch_builder(&k.silu_mul);
                l.arg(buf(&mut b.gate_up)).arg(buf(&mut b.act)).arg(&f);
                // SAFETY: matches silu_mul; both buffers hold n rows.
                unsafe { l.launch(cfg_rows(n, THREADS_PER_ROW_KERNEL)) }?;
            }
            snap(st, tr, "swiglu", &b.act, n * c.ffn)?;
            quantize_activations(st, k, b, Activations::SwiGlu, n * c.ffn, tr, "swiglu")?;
            if tr.is_some() {
                // The down projection alone, into a buffer free at this point.
                matmul(st, k, &layer.down, c.ffn, b, n, Target::Qkv, 0, false)?;
                snap(st, tr, "down", &b.qkv, n * d)?;
            }
            matmul(st, k, &layer.down, c.ffn, b, n, Target::X, 0, true)?;
            snap(st, tr, "ffn_residual", &b.x, n * d)?;
        }
        if rows == 0 {
            dev.finish()?;
            self.trace = trace;
            return Ok(Vec::new());
        }
        // Logits for the requested rows only: gather + norm, quantize, output projection.
        norm(
            st,
            k,
            buf(&mut b.x),
            &self.output_norm,
            &d_rows,
            true,
            buf(&mut b.normed),
            rows,
            d,
            eps,
        )?;
        snap(st, &mut trace, "output_norm", &b.normed, rows * d)?;
        quantize_activations(
            st,
            k,
            b,
            Activations::Normed,
            rows * d,
            &mut trace,
            "output_norm",
        )?;
        let head = self.output.as_ref().unwrap_or(&self.embed);
        matmul(st, k, head, d, b, rows, Target::Logits, 0, false)?;
        let logits = buf(&mut b.logits);
        let mut host = vec![0.0f32; rows * c.vocab];
        st.memcpy_dtoh(&logits.slice(..rows * c.vocab), &mut host)?;
        dev.finish()?;
        if let Some(t) = &mut trace {
            t.push(("logits".to_owned(), host.clone()));
        }
        self.trace = trace;
        Ok(host)
    }
}

type Trace = Option<Vec<(String, Vec<f32>)>>;

/// Records the first `len` values of `src` under `name` when tracing.
fn snap(
    st: &Arc<CudaStream>,
    trace: &mut Trace,
    name: &str,
    src: &Option<CudaSlice<f32>>,
    len: usize,
) -> Result<(), CudaError> {
    if let (Some(t), Some(src)) = (trace.as_mut(), src) {
        let mut host = vec![0.0f32; len];
        st.memcpy_dtoh(&src.slice(..len), &mut host)?;
        st.synchronize()?;
        t.push((name.to_owned(), host));
    }
    Ok(())
}

/// Records the 8-bit activations of `len` values (quants, scales, block sums) when tracing,
/// as the CPU's trace does.
fn snap_q8(
    st: &Arc<CudaStream>,
    trace: &mut Trace,
    name: &str,
    b: &Buffers,
    len: usize,
) -> Result<(), CudaError> {
    let (Some(t), Some(xq)) = (trace.as_mut(), &b.xq) else {
        return Ok(());
    };
    let mut q = vec![0i8; len];
    st.memcpy_dtoh(&xq.slice(..len), &mut q)?;
    st.synchronize()?;
    t.push((
        format!("{name}.q8"),
        q.iter().map(|&v| f32::from(v)).collect(),
    ));
    snap(
        st,
        trace,
        &format!("{name}.q8_scales"),
        &b.xs,
        len / Q8_BLOCK,
    )?;
    snap(
        st,
        trace,
        &format!("{name}.q8_sums"),
        &b.xsum,
        len / Q8_BLOCK,
    )
}

#[derive(Clone, Copy)]
enum Target {
    Qkv,
    X,
    GateUp,
    Logits,
}

#[allow(clippy::too_many_arguments)]
fn norm(
    st: &Arc<CudaStream>,
    k: &Kernels,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rows: &CudaView<'_, i32>,
    use_rows: bool,
    out: &mut CudaSlice<f32>,
    n: usize,
    d: usize,
    eps: f32,
) -> Result<(), CudaError> {
    let (ur, di) = (i32::from(use_rows), d as i32);
    let mut l = st.launch_builder(&k.rms_norm);
    l.arg(x)
        .arg(w)
        .arg(rows)
        .arg(&ur)
        .arg(out)
        .arg(&di)
        .arg(&eps);
    // SAFETY: matches rms_norm; `rows` (when used) holds n row indices below the batch size.
    unsafe { l.launch(cfg_rows(n, THREADS_PER_ROW_KERNEL)) }?;
    Ok(())
}

/// Which buffer of activations is quantized for the next matrix product.
#[derive(Clone, Copy)]
enum Activations {
    /// A norm's output.
    Normed,
    /// The attention's output.
    Attention,
    /// SwiGLU's output.
    SwiGlu,
}

/// Quantizes the first `len` values of `from` into the 8-bit activation buffers, and records
/// them under `name` when tracing.
fn quantize_activations(
    st: &Arc<CudaStream>,
    k: &Kernels,
    b: &mut Buffers,
    from: Activations,
    len: usize,
    trace: &mut Trace,
    name: &str,
) -> Result<(), CudaError> {
    let x = match from {
        Activations::Normed => buf(&mut b.normed),
        Activations::Attention => buf(&mut b.attn),
        Activations::SwiGlu => buf(&mut b.act),
    };
    quantize(
        st,
        k,
        x,
        buf(&mut b.xq),
        buf(&mut b.xs),
        buf(&mut b.xsum),
        len,
    )?;
    snap_q8(st, trace, name, b, len)
}

/// Quantizes the first `len` values of `x` (a whole number of 32-value blocks).
fn quantize(
    st: &Arc<CudaStream>,
    k: &Kernels,
    x: &CudaSlice<f32>,
    q: &mut CudaSlice<i8>,
    s: &mut CudaSlice<f32>,
    sums: &mut CudaSlice<f32>,
    len: usize,
) -> Result<(), CudaError> {
    let blocks = (len / Q8_BLOCK) as i64;
    let cfg = LaunchConfig {
        grid_dim: ((len as u32).div_ceil(THREADS_PER_ROW_KERNEL), 1, 1),
        block_dim: (THREADS_PER_ROW_KERNEL, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = st.launch_builder(&k.quantize_q8);
    l.arg(x).arg(q).arg(s).arg(sums).arg(&blocks);
    // SAFETY: matches quantize_q8; every buffer holds `len` values (or len / 32 blocks).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// `target[t][j] (+)= dot(w row j, xq row t)` for the `n` quantized rows in the buffers.
#[allow(clippy::too_many_arguments)]
fn matmul(
    st: &Arc<CudaStream>,
    k: &Kernels,
    w: &GpuMatrix,
    cols: usize,
    b: &mut Buffers,
    n: usize,
    target: Target,
    out_off: usize,
    accumulate: bool,
) -> Result<(), CudaError> {
    let rows = w.rows();
    let out = match target {
        Target::Qkv => buf(&mut b.qkv),
        Target::X => buf(&mut b.x),
        Target::GateUp => buf(&mut b.gate_up),
        Target::Logits => buf(&mut b.logits),
    };
    let cfg = LaunchConfig {
        grid_dim: (
            (rows as u32).div_ceil(MM_WARPS),
            (n as u32).div_ceil(MM_TOKENS),
            1,
        ),
        block_dim: (32 * MM_WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (ri, ci, ni, stride, off, acc) = (
        rows as i32,
        cols as i32,
        n as i32,
        rows as i32,
        out_off as i32,
        i32::from(accumulate),
    );
    let (xq, xs, xsum) = (
        b.xq.as_ref().expect("allocated"),
        b.xs.as_ref().expect("allocated"),
        b.xsum.as_ref().expect("allocated"),
    );
    match w {
        GpuMatrix::Q8 {
            quants,
            scales,
            cols: wc,
            ..
        } => {
            debug_assert_eq!(*wc, cols);
            let mut l = st.launch_builder(&k.matmul_q8);
            l.arg(quants)
                .arg(scales)
                .arg(&ri)
                .arg(&ci)
                .arg(xq)
                .arg(xs)
                .arg(&ni)
                .arg(out)
                .arg(&stride)
                .arg(&off)
                .arg(&acc);
            // SAFETY: matches matmul_q8; the weights hold rows x cols, the activations n x
            // cols, the output n rows of `rows` values.
            unsafe { l.launch(cfg) }?;
        }
        GpuMatrix::Q4 {
            nibbles,
            scales,
            mins,
            cols: wc,
            ..
        } => {
            debug_assert_eq!(*wc, cols);
            let mut l = st.launch_builder(&k.matmul_q4);
            l.arg(nibbles)
                .arg(scales)
                .arg(mins)
                .arg(&ri)
                .arg(&ci)
                .arg(xq)
                .arg(xs)
                .arg(xsum)
                .arg(&ni)
                .arg(out)
                .arg(&stride)
                .arg(&off)
                .arg(&acc);
            // SAFETY: as for matmul_q8, plus per-block minimums and activation sums.
            unsafe { l.launch(cfg) }?;
        }
    }
    Ok(())
}

/// The CPU's paged attention over a [`KvStore`](crate::kv::KvStore), the reference the GPU
/// kernel is tested against: the arithmetic of [`Model::forward`]'s attention.
pub fn cpu_paged_attention(
    store: &mut crate::kv::KvStore,
    layer: usize,
    q: &[f32],
    heads: usize,
    positions: &[usize],
    token_tables: Vec<&[BlockId]>,
) -> Vec<f32> {
    use crate::model::KvAccess;
    let hd = store.shape.head_dim;
    let kv_heads = store.shape.kv_heads;
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // The portable kernel: the one whose arithmetic the GPU kernels reproduce.
    let kernel = crate::quant::Kernel::Portable;
    let paged = crate::model::PagedKv {
        store,
        positions,
        tables: token_tables,
    };
    let mut out = vec![0.0f32; positions.len() * heads * hd];
    let mut runs = Vec::new();
    let mut scores = Vec::new();
    for t in 0..positions.len() {
        for h in 0..heads {
            runs.clear();
            paged.runs(layer, t, h / group, &mut runs);
            let at = (t * heads + h) * hd;
            crate::model::attend(
                kernel,
                &q[at..at + hd],
                scale,
                &runs,
                &mut scores,
                &mut out[at..at + hd],
            );
        }
    }
    out
}
