//! The scheduler: continuous batching over the paged KV cache.
//!
//! Each step builds one flat batch from the running sequences (first come, first served:
//! decodes and the rest of chunked prefills) and then from the waiting queue (new prompts,
//! after a prefix-cache lookup), under a budget of tokens per step. When a running sequence
//! needs a block and none is free, the most recently admitted sequence is preempted: its
//! blocks are freed and it waits again, to be recomputed from its tokens later. Nothing here
//! allocates KV memory: the pool was sized once at start.
//!
//! The engine sees token ids, never text, and logs nothing about them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::kv::{BlockHash, BlockId, BlockPool, KvStore, block_hash, prefix_hashes};
use crate::model::{Model, ModelError, PagedKv, Scratch};
use crate::sampling::{Rng, SamplingParams, sample};

/// Names one sequence (one request) for its whole life.
pub type SeqId = u64;

/// Sizes the engine works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_tokens: usize,
    /// Blocks in the KV pool.
    pub kv_blocks: usize,
    /// Most tokens in one forward pass (prefill chunks are cut to fit).
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            block_tokens: crate::kv::DEFAULT_BLOCK_TOKENS,
            kv_blocks: 1024,
            max_batch_tokens: 512,
            max_running: 64,
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU kernels (always built).
    #[default]
    Cpu,
    /// The CUDA device with this ordinal (needs the cargo feature `cuda`).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why the engine cannot run on the device asked for.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "this model-runner was built without CUDA support: rebuild with `--features cuda`, or use --device cpu"
    )]
    CudaNotBuilt,
    #[cfg(feature = "cuda")]
    #[error("cannot run on the GPU")]
    Cuda(#[from] crate::cuda::CudaError),
}

/// Where the engine's forward passes run, with the KV memory they use.
#[derive(Debug)]
enum Backend {
    Cpu {
        store: KvStore,
        scratch: Scratch,
    },
    #[cfg(feature = "cuda")]
    Cuda {
        model: Box<crate::cuda::CudaModel>,
        store: crate::cuda::CudaKvStore,
    },
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced a stop token.
    Stop,
    /// max_tokens, or the end of the context, was reached.
    Length,
}

/// What one step produced for one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    pub seq: SeqId,
    /// The new token; None when the sequence ended on a stop token (not shown to users).
    pub token: Option<u32>,
    pub finished: Option<FinishReason>,
}

/// Why a request cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "prompt ({prompt} tokens) plus max_tokens ({max_tokens}) is over the {limit}-token limit"
    )]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
}

#[derive(Debug)]
struct Sequence {
    id: SeqId,
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    table: Vec<BlockId>,
    /// Prefix-cache keys of the full blocks registered so far.
    hashes: Vec<BlockHash>,
    params: SamplingParams,
    rng: Rng,
    counts: HashMap<u32, u32>,
    salt: [u8; 32],
    /// Dropped when the sequence first runs: it frees its place in the admission queue.
    ticket: Option<Box<dyn std::any::Any + Send>>,
}

impl Sequence {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub preemptions: u64,
    pub steps: u64,
    pub computed_tokens: u64,
    pub generated_tokens: u64,
}

/// The scheduler and everything it owns: the KV pool, the queues and the model's scratch.
#[derive(Debug)]
pub struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    stop_tokens: Vec<u32>,
    backend: Backend,
    pool: BlockPool,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    pub stats: EngineStats,
}

impl Engine {
    /// An engine over `model` with its KV pool allocated now.
    pub fn new(model: Arc<Model>, stop_tokens: Vec<u32>, config: EngineConfig) -> Engine {
        let store = KvStore::new(
            model.config.kv_shape(),
            config.block_tokens,
            config.kv_blocks,
        );
        let backend = Backend::Cpu {
            store,
            scratch: Scratch::default(),
        };
        Engine::with_backend(model, stop_tokens, config, backend)
    }

    /// An engine running on `device`, its KV pool allocated there now. A GPU that cannot be
    /// used is an error, never a fall back to the CPU.
    pub fn on_device(
        model: Arc<Model>,
        stop_tokens: Vec<u32>,
        config: EngineConfig,
        device: Device,
    ) -> Result<Engine, DeviceError> {
        match device {
            Device::Cpu => Ok(Engine::new(model, stop_tokens, config)),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => {
                let dev = crate::cuda::CudaDevice::open(ordinal)?;
                let gpu = crate::cuda::CudaModel::upload(&dev, &model)?;
                let store = gpu.new_kv(config.block_tokens, config.kv_blocks)?;
                tracing::info!(device = %dev.name, ordinal, "the model runs on the GPU");
                let backend = Backend::Cuda {
                    model: Box::new(gpu),
                    store,
                };
                Ok(Engine::with_backend(model, stop_tokens, config, backend))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(DeviceError::CudaNotBuilt),
        }
    }

    fn with_backend(
        model: Arc<Model>,
        stop_tokens: Vec<u32>,
        config: EngineConfig,
        backend: Backend,
    ) -> Engine {
        Engine {
            pool: BlockPool::new(config.kv_blocks, config.block_tokens),
            backend,
            model,
            config,
            stop_tokens,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    /// The device the forward passes run on.
    pub fn device(&self) -> Device {
        match &self.backend {
            Backend::Cpu { .. } => Device::Cpu,
            #[cfg(feature = "cuda")]
            Backend::Cuda { model, .. } => Device::Cuda(model.device().ordinal()),
        }
    }

    /// Most tokens (prompt plus generated) one sequence may ever hold: the model's context,
    /// or the whole KV pool if that is smaller.
    pub fn max_sequence_tokens(&self) -> usize {
        self.model
            .config
            .context
            .min(self.config.kv_blocks * self.config.block_tokens)
    }

    /// Checks that a request could ever run, whatever else is running.
    pub fn check_fits(&self, prompt: &[u32], max_tokens: usize) -> Result<(), AdmitError> {
        if prompt.is_empty() {
            return Err(AdmitError::EmptyPrompt);
        }
        if let Some(&t) = prompt
            .iter()
            .find(|&&t| t as usize >= self.model.config.vocab)
        {
            return Err(AdmitError::BadToken(t));
        }
        let limit = self.max_sequence_tokens();
        if prompt.len().saturating_add(max_tokens) > limit {
            return Err(AdmitError::TooLong {
                prompt: prompt.len(),
                max_tokens,
                limit,
            });
        }
        Ok(())
    }

    /// Queues a request. `salt` keys its prefix-cache blocks (derived per user by the
    /// server); `ticket` is dropped when the sequence starts running.
    pub fn add(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        params: SamplingParams,
        salt: [u8; 32],
        ticket: Option<Box<dyn std::any::Any + Send>>,
    ) -> Result<(), AdmitError> {
        self.check_fits(&prompt, params.max_tokens)?;
        let seed = params.seed.unwrap_or_else(random_seed);
        self.waiting.push_back(Sequence {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            table: Vec::new(),
            hashes: Vec::new(),
            rng: Rng::seeded(seed),
            params,
            counts: HashMap::new(),
            salt,
            ticket,
        });
        Ok(())
    }

    /// Cancels a sequence and frees its blocks now. False when it is unknown (finished).
    pub fn abort(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let mut seq = self.running.remove(i);
            self.pool.release_table(&mut seq.table);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            if let Some(mut seq) = self.waiting.remove(i) {
                self.pool.release_table(&mut seq.table);
            }
            return true;
        }
        false
    }

    /// Whether any sequence waits or runs.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Sequences waiting to start (or to restart after preemption).
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences running.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Every sequence the engine holds.
    pub fn sequence_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.running.iter().chain(self.waiting.iter()).map(|s| s.id)
    }

    /// The KV block pool, for its counters.
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Blocks needed to hold `tokens` tokens.
    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_tokens)
    }

    /// Gives running[i] blocks for `tokens` tokens. False when the pool is short.
    fn reserve(&mut self, i: usize, tokens: usize) -> bool {
        let need = self
            .blocks_for(tokens)
            .saturating_sub(self.running[i].table.len());
        if need > self.pool.free_blocks() {
            return false;
        }
        for _ in 0..need {
            match self.pool.allocate() {
                Some(b) => self.running[i].table.push(b),
                None => return false,
            }
        }
        true
    }

    /// Frees running[i]'s blocks and puts it first in the waiting queue, to be recomputed.
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        self.pool.release_table(&mut seq.table);
        seq.hashes.clear();
        seq.computed = 0;
        self.stats.preemptions += 1;
        tracing::debug!(seq = seq.id, "preempted for lack of KV blocks");
        self.waiting.push_front(seq);
    }

    /// Looks a fresh sequence's full blocks up in the prefix cache, taking a reference on
    /// each hit. At least one token is always left to compute, to produce logits.
    fn match_prefix(&mut self, seq: &mut Sequence) {
        let bt = self.config.block_tokens;
        let matchable = (seq.tokens.len() - 1) / bt;
        let keys = prefix_hashes(&seq.tokens[..matchable * bt], bt, &seq.salt);
        for key in keys {
            let Some(block) = self.pool.lookup(&key) else {
                break;
            };
            self.pool.retain(block);
            seq.table.push(block);
            seq.hashes.push(key);
        }
        seq.computed = seq.table.len() * bt;
        self.pool.prefix_queried_tokens += seq.tokens.len() as u64;
        self.pool.prefix_hit_tokens += seq.computed as u64;
    }

    /// Chooses this step's work: (index in running, tokens to compute).
    fn schedule(&mut self) -> Vec<(usize, usize)> {
        let mut budget = self.config.max_batch_tokens;
        let mut plan = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let n = (seq.tokens.len() - seq.computed).min(budget);
            let target = seq.computed + n;
            while !self.reserve(i, target) {
                preempted = true;
                let victim = self.running.len() - 1;
                self.preempt(victim);
                if victim == i {
                    break;
                }
            }
            if i >= self.running.len() {
                break;
            }
            plan.push((i, n));
            budget -= n;
            i += 1;
        }
        while !preempted && budget > 0 && self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if seq.computed == 0 && seq.table.is_empty() {
                self.match_prefix(&mut seq);
            }
            let n = (seq.tokens.len() - seq.computed).min(budget);
            let need = self.blocks_for(seq.computed + n) - seq.table.len();
            if need > self.pool.free_blocks() {
                // Not now: give back the prefix hits and wait for blocks to free.
                self.pool.release_table(&mut seq.table);
                seq.hashes.clear();
                seq.computed = 0;
                self.waiting.push_front(seq);
                break;
            }
            for _ in 0..need {
                if let Some(b) = self.pool.allocate() {
                    seq.table.push(b);
                }
            }
            seq.ticket = None;
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
            budget -= n;
        }
        plan
    }

    /// Runs one step: schedule, one forward pass over the flat batch, sampling.
    pub fn step(&mut self) -> Result<Vec<StepOutput>, ModelError> {
        let plan = self.schedule();
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut token_seq = Vec::new();
        let mut logit_rows = Vec::new();
        let mut logit_owner = Vec::new();
        for &(i, n) in &plan {
            let seq = &self.running[i];
            for pos in seq.computed..seq.computed + n {
                tokens.push(seq.tokens[pos]);
                positions.push(pos);
                token_seq.push(i);
            }
            if seq.computed + n == seq.tokens.len() {
                logit_rows.push(tokens.len() - 1);
                logit_owner.push(i);
            }
        }
        let logits = match &mut self.backend {
            Backend::Cpu { store, scratch } => {
                let tables: Vec<&[BlockId]> = token_seq
                    .iter()
                    .map(|&i| self.running[i].table.as_slice())
                    .collect();
                let mut kv = PagedKv {
                    store,
                    positions: &positions,
                    tables,
                };
                self.model
                    .forward(&tokens, &positions, &mut kv, &logit_rows, scratch)?
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda { model, store } => {
                // The same flat batch: per token its slot and sequence, per sequence its table.
                let bt = self.config.block_tokens;
                let seq_tables: Vec<&[BlockId]> = plan
                    .iter()
                    .map(|&(i, _)| self.running[i].table.as_slice())
                    .collect();
                let mut seq_of_plan = vec![0u32; self.running.len()];
                for (k, &(i, _)) in plan.iter().enumerate() {
                    seq_of_plan[i] = k as u32;
                }
                let token_seq: Vec<u32> = token_seq.iter().map(|&i| seq_of_plan[i]).collect();
                let slots: Vec<usize> = positions
                    .iter()
                    .zip(&token_seq)
                    .map(|(&p, &s)| seq_tables[s as usize][p / bt] as usize * bt + p % bt)
                    .collect();
                let batch = crate::cuda::FlatBatch {
                    tokens: &tokens,
                    positions: &positions,
                    slots: &slots,
                    token_seq: &token_seq,
                    tables: &seq_tables,
                };
                model.forward(store, &batch, &logit_rows)?
            }
        };
        self.stats.steps += 1;
        self.stats.computed_tokens += tokens.len() as u64;
        let bt = self.config.block_tokens;
        for &(i, n) in &plan {
            let seq = &mut self.running[i];
            seq.computed += n;
            while seq.hashes.len() < seq.computed / bt {
                let k = seq.hashes.len();
                let key = block_hash(
                    seq.hashes.last(),
                    &seq.tokens[k * bt..(k + 1) * bt],
                    &seq.salt,
                );
                self.pool.register(seq.table[k], key);
                seq.hashes.push(key);
            }
        }
        let vocab = self.model.config.vocab;
        let mut outputs = Vec::with_capacity(logit_owner.len());
        for (row, &i) in logit_owner.iter().enumerate() {
            let seq = &mut self.running[i];
            let mut l = logits[row * vocab..(row + 1) * vocab].to_vec();
            let token = sample(&mut l, &seq.params, &seq.counts, &mut seq.rng);
            if self.stop_tokens.contains(&token) {
                outputs.push(StepOutput {
                    seq: seq.id,
                    token: None,
                    finished: Some(FinishReason::Stop),
                });
                continue;
            }
            seq.tokens.push(token);
            *seq.counts.entry(token).or_default() += 1;
            self.stats.generated_tokens += 1;
            let full = seq.generated() >= seq.params.max_tokens
                || seq.tokens.len() >= self.model.config.context;
            outputs.push(StepOutput {
                seq: seq.id,
                token: Some(token),
                finished: full.then_some(FinishReason::Length),
            });
        }
        for out in &outputs {
            if out.finished.is_some() {
                self.abort(out.seq);
            }
        }
        Ok(outputs)
    }
}

/// A seed for requests that give none.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}
