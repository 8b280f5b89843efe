//! The CPU reference for the GPU's paged attention.

use crate::kv::BlockId;

/// The CPU's paged attention over a [`KvStore`](crate::kv::KvStore), the reference the GPU
/// kernel is tested against: the arithmetic of [`Model::forward`](crate::model::Model::forward)'s attention.
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
