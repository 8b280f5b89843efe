//! The paged KV cache: a pool of fixed-size blocks allocated once, up front, from a memory
//! budget; the free-block allocator with reference counts; and automatic prefix caching.
//!
//! A sequence's keys and values live in blocks named by its block table, so memory is
//! reserved a block at a time as a sequence grows, never for the whole context. A full block
//! is keyed by a hash of its parent's key, its tokens and a per-user salt that the server
//! derives (never the client), so a shared system prompt is computed once per user while one
//! user can never hit, and so time, another user's blocks. Freed blocks keep their contents
//! and key until they are reused, least recently freed first.
//!
//! This module never allocates after start-up and never reads token contents beyond hashing.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

/// Index of a block in the pool.
pub type BlockId = u32;
/// Key of a full block for prefix caching.
pub type BlockHash = [u8; 32];
/// Tokens per block unless configured otherwise.
pub const DEFAULT_BLOCK_TOKENS: usize = 16;

/// The shape of one cached token: what a block holds per token per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one token takes across all layers, keys and values.
    pub fn bytes_per_token(&self) -> usize {
        self.layers * self.kv_heads * self.head_dim * 2 * std::mem::size_of::<f32>()
    }
}

/// The memory holding every block's keys and values.
///
/// Layout, per layer and per block: `[kv_head][token in block][head_dim]`, so attention for
/// one head reads each block as one contiguous run.
#[derive(Debug)]
pub struct KvStore {
    pub shape: KvShape,
    pub block_tokens: usize,
    pub blocks: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvStore {
    /// Allocates `blocks` blocks of `block_tokens` tokens each.
    pub fn new(shape: KvShape, block_tokens: usize, blocks: usize) -> KvStore {
        let n = shape.layers * blocks * shape.kv_heads * block_tokens * shape.head_dim;
        KvStore {
            shape,
            block_tokens,
            blocks,
            keys: vec![0.0; n],
            values: vec![0.0; n],
        }
    }

    /// How many blocks fit in `budget_bytes`.
    pub fn blocks_for_budget(shape: KvShape, block_tokens: usize, budget_bytes: usize) -> usize {
        budget_bytes / (shape.bytes_per_token() * block_tokens)
    }

    fn block_len(&self) -> usize {
        self.shape.kv_heads * self.block_tokens * self.shape.head_dim
    }

    fn offset(&self, layer: usize, block: BlockId, head: usize, token: usize) -> usize {
        ((layer * self.blocks + block as usize) * self.shape.kv_heads + head)
            * self.block_tokens
            * self.shape.head_dim
            + token * self.shape.head_dim
    }

    /// Writes one token's keys and values (all kv heads) for `layer` into `slot`
    /// (`block * block_tokens + offset`).
    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let block = (slot / self.block_tokens) as BlockId;
        let token = slot % self.block_tokens;
        let hd = self.shape.head_dim;
        for h in 0..self.shape.kv_heads {
            let at = self.offset(layer, block, h, token);
            self.keys[at..at + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            self.values[at..at + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    /// The keys and values of `tokens` tokens of one head in one block.
    pub fn head_run(
        &self,
        layer: usize,
        block: BlockId,
        head: usize,
        tokens: usize,
    ) -> (&[f32], &[f32]) {
        let at = self.offset(layer, block, head, 0);
        let n = tokens * self.shape.head_dim;
        (&self.keys[at..at + n], &self.values[at..at + n])
    }

    /// Copies a whole block (every layer), for copy-on-write.
    pub fn copy_block(&mut self, from: BlockId, to: BlockId) {
        let len = self.block_len();
        for layer in 0..self.shape.layers {
            let src = self.offset(layer, from, 0, 0);
            let dst = self.offset(layer, to, 0, 0);
            self.keys.copy_within(src..src + len, dst);
            self.values.copy_within(src..src + len, dst);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    ref_count: u32,
    hash: Option<BlockHash>,
    /// Bumped whenever the block leaves the free queue, so stale queue entries are skipped.
    free_stamp: u64,
}

/// The free-block allocator with reference counts and the prefix-cache index.
#[derive(Debug)]
pub struct BlockPool {
    block_tokens: usize,
    meta: Vec<BlockMeta>,
    /// Blocks with no reference, least recently freed first; entries whose stamp no longer
    /// matches the block's are stale.
    free_queue: VecDeque<(BlockId, u64)>,
    free_count: usize,
    cached: HashMap<BlockHash, BlockId>,
    /// Prompt tokens looked up in the prefix cache, and how many of them hit.
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
}

impl BlockPool {
    /// A pool of `blocks` free blocks of `block_tokens` tokens.
    pub fn new(blocks: usize, block_tokens: usize) -> BlockPool {
        BlockPool {
            block_tokens,
            meta: vec![BlockMeta::default(); blocks],
            free_queue: (0..blocks as BlockId).map(|b| (b, 0)).collect(),
            free_count: blocks,
            cached: HashMap::new(),
            prefix_queried_tokens: 0,
            prefix_hit_tokens: 0,
        }
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.meta.len()
    }

    /// Blocks no sequence references (some may still hold cached prefixes).
    pub fn free_blocks(&self) -> usize {
        self.free_count
    }

    /// Blocks referenced by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.meta.len() - self.free_count
    }

    /// References held on `block`.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.meta[block as usize].ref_count
    }

    /// Takes a free block, evicting whatever prefix it cached. None when the pool is empty.
    pub fn allocate(&mut self) -> Option<BlockId> {
        while let Some((block, stamp)) = self.free_queue.pop_front() {
            let m = &mut self.meta[block as usize];
            if m.ref_count != 0 || m.free_stamp != stamp {
                continue;
            }
            if let Some(h) = m.hash.take()
                && self.cached.get(&h) == Some(&block)
            {
                self.cached.remove(&h);
            }
            m.ref_count = 1;
            m.free_stamp += 1;
            self.free_count -= 1;
            return Some(block);
        }
        None
    }

    /// Adds a reference to `block` (a prefix hit or a fork).
    pub fn retain(&mut self, block: BlockId) {
        let m = &mut self.meta[block as usize];
        if m.ref_count == 0 {
            m.free_stamp += 1;
            self.free_count -= 1;
        }
        m.ref_count += 1;
    }

    /// Drops a reference; the block becomes free (keeping its cached prefix) at zero.
    pub fn release(&mut self, block: BlockId) {
        let m = &mut self.meta[block as usize];
        debug_assert!(m.ref_count > 0, "release of a free block");
        if m.ref_count == 0 {
            return;
        }
        m.ref_count -= 1;
        if m.ref_count == 0 {
            self.free_queue.push_back((block, m.free_stamp));
            self.free_count += 1;
        }
    }

    /// Releases every block of a table, tail first, so that a sequence's last blocks are
    /// evicted before its (more shareable) first ones.
    pub fn release_table(&mut self, table: &mut Vec<BlockId>) {
        for &b in table.iter().rev() {
            self.release(b);
        }
        table.clear();
    }

    /// The block caching `hash`, if any.
    pub fn lookup(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    /// Records that full block `block` holds the prefix keyed by `hash`.
    pub fn register(&mut self, block: BlockId, hash: BlockHash) {
        self.meta[block as usize].hash = Some(hash);
        self.cached.entry(hash).or_insert(block);
    }

    /// Makes `table[index]` safe to write: when another sequence shares it, copies it into
    /// a fresh block first. False when no block is free for the copy.
    pub fn make_writable(
        &mut self,
        store: &mut KvStore,
        table: &mut [BlockId],
        index: usize,
    ) -> bool {
        let old = table[index];
        if self.ref_count(old) <= 1 {
            return true;
        }
        let Some(new) = self.allocate() else {
            return false;
        };
        store.copy_block(old, new);
        self.release(old);
        table[index] = new;
        true
    }
}

/// The prefix-cache key of a full block: SHA-256 over the parent's key, the salt and the
/// block's token ids.
pub fn block_hash(parent: Option<&BlockHash>, tokens: &[u32], salt: &[u8; 32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"cloister-kv-block-v1");
    h.update(salt);
    h.update(parent.unwrap_or(&[0u8; 32]));
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// Keys of every full block of `tokens`, in order.
pub fn prefix_hashes(tokens: &[u32], block_tokens: usize, salt: &[u8; 32]) -> Vec<BlockHash> {
    let mut out: Vec<BlockHash> = Vec::with_capacity(tokens.len() / block_tokens);
    for chunk in tokens.chunks_exact(block_tokens) {
        let h = block_hash(out.last(), chunk, salt);
        out.push(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_and_release_keep_counts() {
        let mut p = BlockPool::new(3, 16);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let c = p.allocate().unwrap();
        assert_eq!(p.allocate(), None);
        assert_eq!(p.used_blocks(), 3);
        p.retain(b);
        p.release(b);
        assert_eq!(p.free_blocks(), 0);
        let mut table = vec![a, b, c];
        p.release_table(&mut table);
        assert_eq!(p.free_blocks(), 3);
        assert!(table.is_empty());
    }

    #[test]
    fn a_freed_cached_block_can_be_hit_until_it_is_reused() {
        let salt = [7u8; 32];
        let mut p = BlockPool::new(2, 4);
        let a = p.allocate().unwrap();
        let h = block_hash(None, &[1, 2, 3, 4], &salt);
        p.register(a, h);
        p.release(a);
        assert_eq!(p.lookup(&h), Some(a));
        // A hit revives it without allocating.
        p.retain(a);
        assert_eq!(p.free_blocks(), 1);
        p.release(a);
        // Allocating both blocks evicts the cached prefix.
        let x = p.allocate().unwrap();
        let y = p.allocate().unwrap();
        assert!(x == a || y == a);
        assert_eq!(p.lookup(&h), None);
    }

    #[test]
    fn the_salt_and_the_parent_change_the_key() {
        let t = [5u32; 16];
        let s1 = [1u8; 32];
        let s2 = [2u8; 32];
        assert_ne!(block_hash(None, &t, &s1), block_hash(None, &t, &s2));
        let parent = block_hash(None, &t, &s1);
        assert_ne!(
            block_hash(Some(&parent), &t, &s1),
            block_hash(None, &t, &s1)
        );
        let keys = prefix_hashes(&[5u32; 40], 16, &s1);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], block_hash(Some(&keys[0]), &t, &s1));
    }

    #[test]
    fn copy_on_write_copies_a_shared_block_only() {
        let shape = KvShape {
            layers: 2,
            kv_heads: 1,
            head_dim: 2,
        };
        let mut store = KvStore::new(shape, 2, 3);
        let mut p = BlockPool::new(3, 2);
        let a = p.allocate().unwrap();
        store.write(1, a as usize * 2 + 1, &[3.0, 4.0], &[5.0, 6.0]);
        let mut mine = vec![a];
        assert!(p.make_writable(&mut store, &mut mine, 0));
        assert_eq!(mine[0], a, "an unshared block is written in place");
        p.retain(a); // a fork shares it
        let mut theirs = vec![a];
        assert!(p.make_writable(&mut store, &mut theirs, 0));
        assert_ne!(theirs[0], a);
        assert_eq!(p.ref_count(a), 1);
        let (k, v) = store.head_run(1, theirs[0], 0, 2);
        assert_eq!(&k[2..4], &[3.0, 4.0]);
        assert_eq!(&v[2..4], &[5.0, 6.0]);
    }
}
