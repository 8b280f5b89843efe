//! Greedy generation through the contiguous reference path: a quick check that a model
//! loads and talks. `cargo run --release --example generate -- MODEL.gguf "question"`
use std::time::Instant;

use cloister_model_runner::model::{ContiguousKv, Model, Scratch};
use cloister_model_runner::tokenizer::ChatMessage;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: generate MODEL.gguf TEXT"))?;
    let text = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "What is the capital of France?".into());
    let t0 = Instant::now();
    let loaded = Model::load(path.as_ref(), 2)?;
    eprintln!(
        "loaded in {:?}, kernel {:?}, {:?}",
        t0.elapsed(),
        loaded.model.kernel,
        loaded.model.config
    );
    let prompt = loaded.tokenizer.apply_chat_template(&[ChatMessage {
        role: "user".into(),
        content: text,
    }])?;
    let mut tokens = loaded.tokenizer.encode(&prompt)?;
    eprintln!("{} prompt tokens: {:?}", tokens.len(), tokens);
    let model = &loaded.model;
    let mut kv = ContiguousKv::new(model.config.kv_shape(), 1024);
    let mut scratch = Scratch::default();
    let t1 = Instant::now();
    let positions: Vec<usize> = (0..tokens.len()).collect();
    kv.set_positions(&positions);
    let mut logits = model.forward(
        &tokens,
        &positions,
        &mut kv,
        &[tokens.len() - 1],
        &mut scratch,
    )?;
    let prefill = t1.elapsed();
    let mut top: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    for &(i, v) in &top[..5] {
        eprintln!("top {i} {v} {:?}", loaded.tokenizer.decode(&[i as u32])?);
    }
    let t2 = Instant::now();
    let mut generated = Vec::new();
    for _ in 0..64 {
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0 as u32;
        if loaded.tokenizer.stop_tokens.contains(&next) {
            break;
        }
        generated.push(next);
        tokens.push(next);
        let pos = [tokens.len() - 1];
        kv.set_positions(&pos);
        logits = model.forward(&[next], &pos, &mut kv, &[0], &mut scratch)?;
    }
    let decode_time = t2.elapsed();
    println!("{}", loaded.tokenizer.decode(&generated)?);
    eprintln!(
        "prefill {:.1} tok/s, decode {:.1} tok/s ({} tokens)",
        positions.len() as f64 / prefill.as_secs_f64(),
        generated.len() as f64 / decode_time.as_secs_f64(),
        generated.len()
    );
    Ok(())
}
