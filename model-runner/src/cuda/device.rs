//! One CUDA device: the context, the stream every kernel runs on, and the kernels compiled
//! for its compute capability; uploads, and the paged-attention launch.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};

use super::{ATTENTION_HEADS_PER_BLOCK, CudaError, CudaKvStore, compile, device_count, guarded};
use crate::kv::BlockId;

/// The kernels, compiled and loaded on one device.
pub(super) struct Kernels {
    pub(super) embed_q8: CudaFunction,
    pub(super) embed_q4: CudaFunction,
    pub(super) rms_norm: CudaFunction,
    pub(super) quantize_q8: CudaFunction,
    pub(super) matmul_q8: CudaFunction,
    pub(super) matmul_q4: CudaFunction,
    pub(super) add_bias: CudaFunction,
    pub(super) rope: CudaFunction,
    pub(super) kv_write: CudaFunction,
    pub(super) paged_attention: CudaFunction,
    pub(super) silu_mul: CudaFunction,
    pub(super) copy_block: CudaFunction,
}

/// One CUDA device with the kernels compiled for it and the stream everything runs on.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) k: Kernels,
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
    pub(super) fn finish(&self) -> Result<(), CudaError> {
        self.stream.synchronize()?;
        self.ctx.check_err()?;
        Ok(())
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    pub(super) fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>, CudaError> {
        if v.is_empty() {
            // A zero-length allocation is refused by some drivers; keep one element.
            // SAFETY: never read: every kernel is given the real length, zero.
            return Ok(unsafe { self.stream.alloc::<T>(1) }?);
        }
        Ok(self.stream.clone_htod(v)?)
    }

    pub(super) fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, CudaError> {
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
    pub(super) fn launch_attention(
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
pub(super) fn flatten_tables(
    tables: &[&[BlockId]],
    blocks: usize,
) -> Result<(Vec<i32>, usize), CudaError> {
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
