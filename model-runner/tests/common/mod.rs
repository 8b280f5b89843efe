//! Finds the test model: `CLOISTER_MODEL`, else the cache that scripts/fetch-model.sh fills.
//! Without it, model tests fail under CI (CI=true) and are skipped, loudly, elsewhere.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cloister_model_runner::model::{LoadedModel, Model};

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CLOISTER_MODEL") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var("CLOISTER_CACHE").unwrap_or_else(|_| "/var/cache/cloister".into());
    let p = PathBuf::from(cache).join("models").join(MODEL_FILE);
    p.exists().then_some(p)
}

/// The model, loaded once per test binary; None (skip) only outside CI.
pub fn model() -> Option<Arc<LoadedModel>> {
    static MODEL: OnceLock<Option<Arc<LoadedModel>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let Some(path) = model_path() else {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("the test model is missing: run model-runner/scripts/fetch-model.sh");
                }
                eprintln!("SKIPPED: no test model; run model-runner/scripts/fetch-model.sh");
                return None;
            };
            Some(Arc::new(
                Model::load(&path, 2).expect("the test model loads"),
            ))
        })
        .clone()
}
