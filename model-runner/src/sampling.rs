//! Choosing the next token from logits: penalties, temperature, top-k, top-p, and a seeded
//! random generator so that the same seed gives the same text.
//!
//! Pure functions over numbers; never sees text.

use std::collections::HashMap;

/// How one request wants its tokens chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (1 = all).
    pub top_p: f32,
    /// Keep this many most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> SamplingParams {
        SamplingParams {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> SamplingParams {
        SamplingParams {
            max_tokens,
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn seeded(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform float in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The index of the largest logit (the lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Chooses the next token. `counts` holds how often each token was generated so far.
pub fn sample(
    logits: &mut [f32],
    params: &SamplingParams,
    counts: &HashMap<u32, u32>,
    rng: &mut Rng,
) -> u32 {
    for (&tok, &n) in counts {
        if let Some(l) = logits.get_mut(tok as usize) {
            *l -= params.presence_penalty + params.frequency_penalty * n as f32;
        }
    }
    if params.temperature <= 0.0 || !params.temperature.is_finite() {
        return argmax(logits);
    }
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / params.temperature))
        .collect();
    // Descending by logit, ties by index, so the order is the same on every run.
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 && params.top_k < cand.len() {
        cand.truncate(params.top_k);
    }
    let max = cand[0].1;
    let mut total = 0.0f32;
    for c in cand.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += c.1;
    }
    if params.top_p < 1.0 {
        let mut kept = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            kept += c.1 / total;
            if kept >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        total = cand.iter().map(|c| c.1).sum();
    }
    let mut r = rng.next_f32() * total;
    for c in &cand {
        if r < c.1 {
            return c.0;
        }
        r -= c.1;
    }
    cand[cand.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut l = vec![0.1, 3.0, -1.0, 3.0];
        let p = SamplingParams::greedy(1);
        assert_eq!(sample(&mut l, &p, &HashMap::new(), &mut Rng::seeded(1)), 1);
    }

    #[test]
    fn penalties_move_the_choice() {
        let mut l = vec![0.0, 2.0, 1.5];
        let p = SamplingParams {
            frequency_penalty: 0.4,
            ..SamplingParams::greedy(1)
        };
        let counts = HashMap::from([(1, 2)]);
        assert_eq!(sample(&mut l, &p, &counts, &mut Rng::seeded(1)), 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 / 4.0).collect();
        let p = SamplingParams {
            top_k: 1,
            ..SamplingParams::default()
        };
        let got = sample(
            &mut logits.clone(),
            &p,
            &HashMap::new(),
            &mut Rng::seeded(9),
        );
        assert_eq!(got, argmax(&logits));
        let free = SamplingParams::default();
        let draw = |seed| {
            let mut rng = Rng::seeded(seed);
            (0..20)
                .map(|_| sample(&mut logits.clone(), &free, &HashMap::new(), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn top_p_keeps_only_the_likely_head() {
        // One token holds almost all the mass; top_p 0.5 must always pick it.
        let mut logits = vec![0.0f32; 50];
        logits[7] = 20.0;
        let p = SamplingParams {
            top_p: 0.5,
            ..SamplingParams::default()
        };
        let mut rng = Rng::seeded(3);
        for _ in 0..50 {
            assert_eq!(
                sample(&mut logits.clone(), &p, &HashMap::new(), &mut rng),
                7
            );
        }
    }
}
