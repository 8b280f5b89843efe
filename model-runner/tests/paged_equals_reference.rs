//! The paged engine's greedy output equals, token for token, the contiguous-cache
//! reference path: for several prompts, in one batch of different lengths, after
//! preemptions, and on prefix-cache hits. Plus: the same seed gives the same sampled text.
mod common;

use std::collections::HashMap;

use cloister_model_runner::engine::{Engine, EngineConfig, FinishReason};
use cloister_model_runner::model::{ContiguousKv, LoadedModel, Scratch};
use cloister_model_runner::sampling::{SamplingParams, argmax};
use cloister_model_runner::tokenizer::ChatMessage;

const NEW_TOKENS: usize = 10;

fn prompts(m: &LoadedModel) -> Vec<Vec<u32>> {
    [
        "Hi",
        "What is the capital of France?",
        "Write a haiku about the sea and the wind over the old harbour at night.",
        "2+2=",
    ]
    .iter()
    .map(|q| {
        let text = m
            .tokenizer
            .apply_chat_template(&[ChatMessage {
                role: "user".into(),
                content: (*q).into(),
            }])
            .unwrap();
        m.tokenizer.encode(&text).unwrap()
    })
    .collect()
}

/// Greedy tokens from the contiguous reference path: whole prompt, then one token a step.
fn reference(m: &LoadedModel, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let model = &m.model;
    let mut kv = ContiguousKv::new(model.config.kv_shape(), prompt.len() + max_new + 1);
    let mut scratch = Scratch::default();
    let positions: Vec<usize> = (0..prompt.len()).collect();
    kv.set_positions(&positions);
    let mut logits = model
        .forward(
            prompt,
            &positions,
            &mut kv,
            &[prompt.len() - 1],
            &mut scratch,
        )
        .unwrap();
    let mut out = Vec::new();
    let mut pos = prompt.len();
    loop {
        let next = argmax(&logits);
        if m.tokenizer.stop_tokens.contains(&next) || out.len() == max_new {
            return out;
        }
        out.push(next);
        kv.set_positions(&[pos]);
        logits = model
            .forward(&[next], &[pos], &mut kv, &[0], &mut scratch)
            .unwrap();
        pos += 1;
    }
}

/// Runs every prompt through one engine, all queued at once; returns each one's tokens.
fn run_engine(
    engine: &mut Engine,
    prompts: &[Vec<u32>],
    salt: [u8; 32],
    params: &SamplingParams,
) -> Vec<Vec<u32>> {
    for (i, p) in prompts.iter().enumerate() {
        engine
            .add(i as u64, p.clone(), params.clone(), salt, None)
            .unwrap();
    }
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut finished = 0;
    while engine.has_work() {
        for o in engine.step().unwrap() {
            if let Some(t) = o.token {
                out.entry(o.seq).or_default().push(t);
            }
            if o.finished.is_some() {
                assert!(matches!(
                    o.finished,
                    Some(FinishReason::Stop | FinishReason::Length)
                ));
                finished += 1;
            }
        }
    }
    assert_eq!(finished, prompts.len());
    (0..prompts.len() as u64)
        .map(|i| out.remove(&i).unwrap_or_default())
        .collect()
}

fn engine(m: &LoadedModel, blocks: usize, batch_tokens: usize) -> Engine {
    let config = EngineConfig {
        block_tokens: 16,
        kv_blocks: blocks,
        max_batch_tokens: batch_tokens,
        max_running: 16,
    };
    Engine::new(m.model.clone(), m.tokenizer.stop_tokens.clone(), config)
}

#[test]
fn paged_batch_of_different_lengths_equals_reference() {
    let Some(m) = common::model() else { return };
    let prompts = prompts(&m);
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| reference(&m, p, NEW_TOKENS))
        .collect();
    assert!(expected.iter().all(|e| !e.is_empty()));
    // A small token budget per step forces chunked prefill mixed with decodes.
    let mut e = engine(&m, 256, 24);
    let got = run_engine(
        &mut e,
        &prompts,
        [0; 32],
        &SamplingParams::greedy(NEW_TOKENS),
    );
    assert_eq!(got, expected);
    assert_eq!(
        e.pool().used_blocks(),
        0,
        "finished sequences free their blocks"
    );
}

#[test]
fn paged_equals_reference_after_preemption() {
    let Some(m) = common::model() else { return };
    let prompts = prompts(&m);
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| reference(&m, p, NEW_TOKENS))
        .collect();
    // Room for the longest sequence, but not for all of them at once.
    let longest = prompts.iter().map(Vec::len).max().unwrap() + NEW_TOKENS;
    let blocks = longest.div_ceil(16) + 3;
    let mut e = engine(&m, blocks, 512);
    let got = run_engine(
        &mut e,
        &prompts,
        [0; 32],
        &SamplingParams::greedy(NEW_TOKENS),
    );
    assert!(e.stats.preemptions > 0, "the pool was meant to run short");
    assert_eq!(got, expected);
}

#[test]
fn prefix_cache_hit_equals_reference_and_is_salted() {
    let Some(m) = common::model() else { return };
    let prompts = prompts(&m);
    let long = vec![prompts[2].clone()];
    let expected = vec![reference(&m, &long[0], NEW_TOKENS)];
    let mut e = engine(&m, 256, 512);
    let params = SamplingParams::greedy(NEW_TOKENS);
    assert_eq!(run_engine(&mut e, &long, [1; 32], &params), expected);
    let hits_before = e.pool().prefix_hit_tokens;
    assert_eq!(hits_before, 0);
    // The same prompt again, same user: its full blocks come from the cache.
    assert_eq!(run_engine(&mut e, &long, [1; 32], &params), expected);
    let hits = e.pool().prefix_hit_tokens - hits_before;
    assert!(hits >= 16, "expected a prefix hit, got {hits} tokens");
    // Another user's salt: no hit, same answer.
    assert_eq!(run_engine(&mut e, &long, [2; 32], &params), expected);
    assert_eq!(e.pool().prefix_hit_tokens - hits_before, hits);
}

#[test]
fn same_seed_gives_same_sampled_tokens() {
    let Some(m) = common::model() else { return };
    let prompts = vec![prompts(&m)[1].clone()];
    let params = |seed| SamplingParams {
        max_tokens: NEW_TOKENS,
        temperature: 1.2,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let run = |seed| run_engine(&mut engine(&m, 64, 512), &prompts, [0; 32], &params(seed));
    let a = run(7);
    assert_eq!(a, run(7));
    let others: Vec<_> = (8..12).map(run).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds never differ"
    );
}
