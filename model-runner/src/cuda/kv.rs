//! The paged KV cache in GPU memory, in the CPU cache's layout and block ids.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{CudaDevice, CudaError, THREADS_PER_ROW_KERNEL};
use crate::kv::{BlockId, KvShape};

/// The paged KV cache in GPU memory: kv.rs's layout (per layer and block,
/// `[kv_head][token in block][head_dim]`) and block ids, so the CPU
/// [`BlockPool`](crate::kv::BlockPool) hands out blocks for it unchanged.
pub struct CudaKvStore {
    pub shape: KvShape,
    pub block_tokens: usize,
    pub blocks: usize,
    pub(super) keys: CudaSlice<f32>,
    pub(super) values: CudaSlice<f32>,
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
