//! The forward pass on the GPU: a model's weights uploaded once, and each flat varlen batch
//! run through them with the keys and values written to the paged cache.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::buffers::{Activations, Buffers, Target, buf};
use super::device::flatten_tables;
use super::launch::{cfg_rows, matmul, norm, quantize_activations};
use super::trace::snap;
use super::weights::{GpuLayer, GpuMatrix};
use super::{CudaDevice, CudaError, CudaKvStore, MAX_HEAD_DIM, THREADS_PER_ROW_KERNEL, guarded};
use crate::kv::BlockId;
use crate::model::{Model, ModelConfig, ModelError};
use crate::quant::Q8_BLOCK;

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
