//! The engine as a service: one thread runs the scheduler; requests reach it through a
//! channel and get their tokens back through their own channel. Admission control, the
//! per-user prefix-cache salt, cancellation and the metrics live here.
//!
//! A [`Generation`] is one request's handle: dropping it (a client that went away) cancels
//! the sequence, and the engine frees its blocks before its next step. This module never
//! logs prompts or completions, nor the user names it derives salts from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc as tmpsc;

use crate::engine::{AdmitError, Engine, EngineConfig, FinishReason, SeqId};
use crate::model::LoadedModel;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Upper bounds of the time-to-first-token histogram, in seconds.
pub const TTFT_BUCKETS_S: [f64; 10] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Counters and gauges exported at /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_free: AtomicUsize,
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generated_tokens_total: AtomicU64,
    pub requests_total: AtomicU64,
    pub rejected_total: AtomicU64,
    pub preemptions_total: AtomicU64,
    /// Generated tokens per second over the last busy steps, times 1000.
    pub tokens_per_second_milli: AtomicU64,
    pub ttft_buckets: [AtomicU64; TTFT_BUCKETS_S.len()],
    pub ttft_count: AtomicU64,
    pub ttft_sum_micros: AtomicU64,
}

impl Metrics {
    fn observe_ttft(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, &b) in TTFT_BUCKETS_S.iter().enumerate() {
            if s <= b {
                self.ttft_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.ttft_sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let g = |o: &mut String, name: &str, kind: &str, help: &str, v: String| {
            let _ = write!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        let ld = |a: &AtomicUsize| a.load(Ordering::Relaxed).to_string();
        let l64 = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        g(
            &mut o,
            "cloister_queue_depth",
            "gauge",
            "Requests waiting to start.",
            ld(&self.waiting),
        );
        g(
            &mut o,
            "cloister_running_sequences",
            "gauge",
            "Sequences running.",
            ld(&self.running),
        );
        g(
            &mut o,
            "cloister_kv_blocks_used",
            "gauge",
            "KV blocks referenced by sequences.",
            ld(&self.kv_blocks_used),
        );
        g(
            &mut o,
            "cloister_kv_blocks_free",
            "gauge",
            "KV blocks free (some hold cached prefixes).",
            ld(&self.kv_blocks_free),
        );
        let q = self.prefix_queried_tokens.load(Ordering::Relaxed);
        let h = self.prefix_hit_tokens.load(Ordering::Relaxed);
        let rate = if q == 0 { 0.0 } else { h as f64 / q as f64 };
        g(
            &mut o,
            "cloister_prefix_cache_hit_rate",
            "gauge",
            "Share of prompt tokens served from the prefix cache.",
            format!("{rate:.4}"),
        );
        g(
            &mut o,
            "cloister_prefix_cache_queried_tokens_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            q.to_string(),
        );
        g(
            &mut o,
            "cloister_prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            h.to_string(),
        );
        g(
            &mut o,
            "cloister_prompt_tokens_total",
            "counter",
            "Prompt tokens admitted.",
            l64(&self.prompt_tokens_total),
        );
        g(
            &mut o,
            "cloister_generated_tokens_total",
            "counter",
            "Tokens generated.",
            l64(&self.generated_tokens_total),
        );
        g(
            &mut o,
            "cloister_requests_total",
            "counter",
            "Requests admitted.",
            l64(&self.requests_total),
        );
        g(
            &mut o,
            "cloister_rejected_requests_total",
            "counter",
            "Requests refused with 503 for a full queue.",
            l64(&self.rejected_total),
        );
        g(
            &mut o,
            "cloister_preemptions_total",
            "counter",
            "Sequences preempted for lack of KV blocks.",
            l64(&self.preemptions_total),
        );
        let tps = self.tokens_per_second_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        g(
            &mut o,
            "cloister_tokens_per_second",
            "gauge",
            "Generated tokens per second over recent steps.",
            format!("{tps:.3}"),
        );
        let _ = writeln!(
            o,
            "# HELP cloister_time_to_first_token_seconds Time from admission to the first token."
        );
        let _ = writeln!(o, "# TYPE cloister_time_to_first_token_seconds histogram");
        for (i, b) in TTFT_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                o,
                "cloister_time_to_first_token_seconds_bucket{{le=\"{b}\"}} {}",
                self.ttft_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.ttft_count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "cloister_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.ttft_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "cloister_time_to_first_token_seconds_sum {sum:.6}");
        let _ = writeln!(o, "cloister_time_to_first_token_seconds_count {count}");
        o
    }
}

/// Bounds on the waiting queue, in requests and in prompt tokens, counted atomically.
#[derive(Debug)]
pub struct Admission {
    max_requests: usize,
    max_tokens: usize,
    requests: AtomicUsize,
    tokens: AtomicUsize,
}

/// A place in the waiting queue; dropping it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    tokens: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.requests.fetch_sub(1, Ordering::AcqRel);
        self.admission
            .tokens
            .fetch_sub(self.tokens, Ordering::AcqRel);
    }
}

impl Admission {
    /// A queue of at most `max_requests` requests and `max_tokens` prompt tokens.
    pub fn new(max_requests: usize, max_tokens: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_requests,
            max_tokens,
            requests: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
        })
    }

    /// Takes a place for a prompt of `tokens` tokens, or None when the queue is full.
    /// Increments first and checks after, so two racing requests can never both pass the
    /// bound (at worst both are refused).
    pub fn try_admit(self: &Arc<Self>, tokens: usize) -> Option<Ticket> {
        let r = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let t = self.tokens.fetch_add(tokens, Ordering::AcqRel) + tokens;
        let ticket = Ticket {
            admission: self.clone(),
            tokens,
        };
        (r <= self.max_requests && t <= self.max_tokens).then_some(ticket)
    }
}

/// What a request hears from the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Token(u32),
    Finished(FinishReason),
    Failed,
}

enum Command {
    Add {
        id: SeqId,
        prompt: Vec<u32>,
        params: SamplingParams,
        salt: [u8; 32],
        ticket: Ticket,
        events: tmpsc::UnboundedSender<Event>,
    },
    Abort(SeqId),
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] AdmitError),
    #[error("the server is busy; retry shortly")]
    Busy,
    #[error("the engine has stopped")]
    Stopped,
}

/// Settings of the service around the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    pub engine: EngineConfig,
    pub max_queued_requests: usize,
    pub max_queued_tokens: usize,
}

/// The running engine, shared by every request handler.
#[derive(Debug)]
pub struct Runner {
    pub tokenizer: Arc<Tokenizer>,
    pub model_name: String,
    pub metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    commands: mpsc::Sender<Command>,
    next_id: AtomicU64,
    salt_key: [u8; 32],
    vocab: usize,
    max_sequence_tokens: usize,
    stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints prompt tokens.
        match self {
            Command::Add { id, .. } => write!(f, "Add({id})"),
            Command::Abort(id) => write!(f, "Abort({id})"),
        }
    }
}

impl Runner {
    /// Starts the engine thread over a loaded model.
    pub fn start(loaded: &LoadedModel, config: ServiceConfig) -> Arc<Runner> {
        let engine = Engine::new(
            loaded.model.clone(),
            loaded.tokenizer.stop_tokens.clone(),
            config.engine,
        );
        Runner::start_engine(loaded, config, engine)
    }

    /// As [`Runner::start`], with the engine on `device`; an error when that device cannot
    /// be used (never a fall back to the CPU).
    pub fn start_on(
        loaded: &LoadedModel,
        config: ServiceConfig,
        device: crate::engine::Device,
    ) -> Result<Arc<Runner>, crate::engine::DeviceError> {
        let engine = Engine::on_device(
            loaded.model.clone(),
            loaded.tokenizer.stop_tokens.clone(),
            config.engine,
            device,
        )?;
        Ok(Runner::start_engine(loaded, config, engine))
    }

    fn start_engine(loaded: &LoadedModel, config: ServiceConfig, engine: Engine) -> Arc<Runner> {
        let metrics = Arc::new(Metrics::default());
        metrics
            .kv_blocks_free
            .store(config.engine.kv_blocks, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let runner = Arc::new(Runner {
            tokenizer: loaded.tokenizer.clone(),
            model_name: loaded.name.clone(),
            metrics: metrics.clone(),
            admission: Admission::new(config.max_queued_requests, config.max_queued_tokens),
            commands: tx,
            next_id: AtomicU64::new(1),
            salt_key: random_key(),
            vocab: loaded.model.config.vocab,
            max_sequence_tokens: engine.max_sequence_tokens(),
            stopped: stopped.clone(),
        });
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                engine_loop(engine, rx, &metrics);
                stopped.store(true, Ordering::Release);
            })
            .expect("spawning the engine thread");
        runner
    }

    /// Most tokens one sequence may hold (prompt plus completion).
    pub fn max_sequence_tokens(&self) -> usize {
        self.max_sequence_tokens
    }

    /// Whether the engine thread still runs.
    pub fn is_alive(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
    }

    /// The prefix-cache salt of a user: a keyed hash of the name the front end vouches
    /// for, with a key made at start and never shown. Clients never choose it.
    pub fn salt_for(&self, user: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"cloister-prefix-salt-v1");
        h.update(self.salt_key);
        h.update(user.as_bytes());
        h.finalize().into()
    }

    /// Admits a request, or refuses it: 400-type errors when it can never run, Busy when
    /// the queue is full.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        user: &str,
    ) -> Result<Generation, SubmitError> {
        if prompt.is_empty() {
            return Err(AdmitError::EmptyPrompt.into());
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(AdmitError::BadToken(t).into());
        }
        if prompt.len().saturating_add(params.max_tokens) > self.max_sequence_tokens {
            return Err(AdmitError::TooLong {
                prompt: prompt.len(),
                max_tokens: params.max_tokens,
                limit: self.max_sequence_tokens,
            }
            .into());
        }
        let Some(ticket) = self.admission.try_admit(prompt.len()) else {
            self.metrics.rejected_total.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Busy);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tmpsc::unbounded_channel();
        let prompt_tokens = prompt.len();
        self.commands
            .send(Command::Add {
                id,
                prompt,
                params,
                salt: self.salt_for(user),
                ticket,
                events: tx,
            })
            .map_err(|_| SubmitError::Stopped)?;
        self.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .prompt_tokens_total
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        Ok(Generation {
            id,
            events: rx,
            commands: self.commands.clone(),
            started: Instant::now(),
            first_token_seen: false,
            metrics: self.metrics.clone(),
            prompt_tokens,
        })
    }
}

/// One admitted request's stream of events. Dropping it cancels the sequence.
#[derive(Debug)]
pub struct Generation {
    id: SeqId,
    events: tmpsc::UnboundedReceiver<Event>,
    commands: mpsc::Sender<Command>,
    started: Instant,
    first_token_seen: bool,
    metrics: Arc<Metrics>,
    pub prompt_tokens: usize,
}

impl Generation {
    /// The next event; None when the engine is gone.
    pub async fn next(&mut self) -> Option<Event> {
        let ev = self.events.recv().await;
        if !self.first_token_seen && matches!(ev, Some(Event::Token(_))) {
            self.first_token_seen = true;
            self.metrics.observe_ttft(self.started.elapsed());
        }
        ev
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // A finished sequence is already gone; aborting it again is harmless.
        let _ = self.commands.send(Command::Abort(self.id));
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut key).is_ok() {
            return key;
        }
    }
    // No /dev/urandom: fall back to the std hasher's per-process random keys.
    use std::hash::{BuildHasher, Hasher};
    for chunk in key.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    key
}

fn engine_loop(mut engine: Engine, rx: mpsc::Receiver<Command>, metrics: &Metrics) {
    let mut listeners: HashMap<SeqId, tmpsc::UnboundedSender<Event>> = HashMap::new();
    let handle = |engine: &mut Engine, cmd: Command, listeners: &mut HashMap<SeqId, _>| match cmd {
        Command::Add {
            id,
            prompt,
            params,
            salt,
            ticket,
            events,
        } => {
            if engine
                .add(id, prompt, params, salt, Some(Box::new(ticket)))
                .is_ok()
            {
                listeners.insert(id, events);
            } else {
                let _ = events.send(Event::Failed);
            }
        }
        Command::Abort(id) => {
            engine.abort(id);
            listeners.remove(&id);
        }
    };
    let mut tps_ewma = 0.0f64;
    loop {
        if !engine.has_work() {
            publish(&engine, metrics);
            metrics.tokens_per_second_milli.store(0, Ordering::Relaxed);
            match rx.recv() {
                Ok(cmd) => handle(&mut engine, cmd, &mut listeners),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => handle(&mut engine, cmd, &mut listeners),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        // Requests whose receiver is gone are cancelled before they cost another step.
        let gone: Vec<SeqId> = engine
            .sequence_ids()
            .filter(|id| listeners.get(id).is_none_or(|l| l.is_closed()))
            .collect();
        for id in gone {
            engine.abort(id);
            listeners.remove(&id);
        }
        if !engine.has_work() {
            continue;
        }
        let started = Instant::now();
        let outputs = match engine.step() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "engine step failed; failing its requests");
                let ids: Vec<SeqId> = engine.sequence_ids().collect();
                for id in ids {
                    engine.abort(id);
                    if let Some(l) = listeners.remove(&id) {
                        let _ = l.send(Event::Failed);
                    }
                }
                continue;
            }
        };
        let mut generated = 0u64;
        for out in outputs {
            let Some(l) = listeners.get(&out.seq) else {
                engine.abort(out.seq);
                continue;
            };
            let mut alive = true;
            if let Some(t) = out.token {
                generated += 1;
                alive = l.send(Event::Token(t)).is_ok();
            }
            if let Some(reason) = out.finished {
                let _ = l.send(Event::Finished(reason));
                listeners.remove(&out.seq);
            } else if !alive {
                engine.abort(out.seq);
                listeners.remove(&out.seq);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 {
            tps_ewma = 0.8 * tps_ewma + 0.2 * (generated as f64 / secs);
        }
        metrics
            .tokens_per_second_milli
            .store((tps_ewma * 1000.0) as u64, Ordering::Relaxed);
        metrics
            .generated_tokens_total
            .fetch_add(generated, Ordering::Relaxed);
        publish(&engine, metrics);
    }
}

fn publish(engine: &Engine, m: &Metrics) {
    let pool = engine.pool();
    m.waiting.store(engine.waiting_len(), Ordering::Relaxed);
    m.running.store(engine.running_len(), Ordering::Relaxed);
    m.kv_blocks_used
        .store(pool.used_blocks(), Ordering::Relaxed);
    m.kv_blocks_free
        .store(pool.free_blocks(), Ordering::Relaxed);
    m.prefix_queried_tokens
        .store(pool.prefix_queried_tokens, Ordering::Relaxed);
    m.prefix_hit_tokens
        .store(pool.prefix_hit_tokens, Ordering::Relaxed);
    m.preemptions_total
        .store(engine.stats.preemptions, Ordering::Relaxed);
}

/// Turns a growing list of token ids into text deltas, holding back what could still turn
/// out to be the start of a stop string or an incomplete UTF-8 character.
#[derive(Debug)]
pub struct TextStream {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    emitted: usize,
    stop: Vec<String>,
    text: String,
}

impl TextStream {
    pub fn new(tokenizer: Arc<Tokenizer>, stop: Vec<String>) -> TextStream {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
        }
    }

    /// Tokens taken so far.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Adds a token; returns the new text that is safe to show, and whether a stop string
    /// was reached (the text then ends just before it).
    pub fn push(&mut self, token: u32) -> (String, bool) {
        self.ids.push(token);
        self.text = self.tokenizer.decode(&self.ids).unwrap_or_default();
        let search_from = self
            .emitted
            .saturating_sub(self.stop.iter().map(String::len).max().unwrap_or(0));
        let search_from = floor_char_boundary(&self.text, search_from);
        let hit = self
            .stop
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| i + search_from)
            })
            .min();
        if let Some(at) = hit {
            let at = at.max(self.emitted);
            let delta = self.text.get(self.emitted..at).unwrap_or("").to_owned();
            self.emitted = at;
            return (delta, true);
        }
        let mut safe = self.text.len();
        if self.text.ends_with('\u{fffd}') {
            safe -= '\u{fffd}'.len_utf8();
        }
        // Hold back the longest tail that begins some stop string.
        for (i, _) in self.text[..safe].char_indices().rev().take(64) {
            if i < self.emitted {
                break;
            }
            let tail = &self.text[i..safe];
            if self.stop.iter().any(|s| s.starts_with(tail)) {
                safe = i;
            }
        }
        if safe <= self.emitted {
            return (String::new(), false);
        }
        let delta = self.text[self.emitted..safe].to_owned();
        self.emitted = safe;
        (delta, false)
    }

    /// The text still held back, at the end of generation.
    pub fn flush(&mut self) -> String {
        let rest = self.text.get(self.emitted..).unwrap_or("").to_owned();
        self.emitted = self.text.len();
        rest
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_in_requests_and_tokens() {
        let a = Admission::new(2, 100);
        let t1 = a.try_admit(10).unwrap();
        let t2 = a.try_admit(10).unwrap();
        assert!(
            a.try_admit(1).is_none(),
            "a third request passes a bound of 2"
        );
        drop(t1);
        assert!(
            a.try_admit(200).is_none(),
            "a prompt over the token bound passes"
        );
        let _t3 = a.try_admit(80).unwrap();
        drop(t2);
        assert_eq!(a.requests.load(Ordering::Relaxed), 1);
        assert_eq!(a.tokens.load(Ordering::Relaxed), 80);
    }

    #[test]
    fn metrics_render_every_family() {
        let m = Metrics::default();
        m.observe_ttft(Duration::from_millis(70));
        let text = m.render();
        for name in [
            "cloister_queue_depth ",
            "cloister_running_sequences ",
            "cloister_kv_blocks_used ",
            "cloister_kv_blocks_free ",
            "cloister_prefix_cache_hit_rate ",
            "cloister_tokens_per_second ",
            "cloister_time_to_first_token_seconds_bucket{le=\"0.1\"} 1",
            "cloister_time_to_first_token_seconds_bucket{le=\"0.05\"} 0",
            "cloister_time_to_first_token_seconds_count 1",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
