//! The static sentence encoder: one vector per word piece, distilled from the transformer.
//!
//! It owns distilling the table (every word piece of the model's vocabulary through the
//! transformer once), its post-processing (PCA, Zipf/SIF weighting), its file on disk (keyed by
//! a digest of the model's files and the distillation parameters, so a restart reads it instead
//! of distilling again), and encoding: a sentence vector is the mean of its word pieces' rows,
//! L2-normalised. It does not decide where encoding runs (`actors::embedder`) nor which encoder
//! a gateway uses (`embedding::encoder`).
//!
//! What is taken from the model2vec method (MinishLab/model2vec, `distill/inference.py` and
//! `distill/distillation.py`), and where this differs:
//! - each vocabulary id is run through the model alone as `[SEP] id [CLS]` (model2vec reverses
//!   the usual `[CLS] id [SEP]`, "works better on our benchmarks") with every position attended,
//!   and its row is the mean of the last hidden state over the three positions;
//! - `[unused…]` word pieces are dropped before post-processing (their regex default);
//! - PCA (centred, components by decreasing variance) to 256 dimensions by default;
//! - SIF weighting with word frequencies estimated by Zipf's law from the vocabulary order:
//!   `p(rank) = (1 / (rank + 2)) / Σ`, row `*= a / (a + p)` with `a = 1e-4`; the weight is baked
//!   into the row, so the plain mean of rows is the weighted mean;
//! - encoding: word pieces without special tokens, `[UNK]` dropped, at most 512 pieces, mean of
//!   rows, L2 norm (their `StaticModel.encode` with `normalize = true`).
//!
//! Differences: PCA here is an exact eigendecomposition (Jacobi) of the covariance instead of
//! sklearn's SVD, which gives the same components up to sign; a text with no known word piece
//! gets the zero vector (it scores 0 against every topic, so it goes to the fallback).

use super::{EmbedError, Embedder};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// Word pieces per text at most (model2vec's default `max_length`).
const MAX_TOKENS: usize = 512;
/// Vocabulary ids per forward pass while distilling (model2vec's batch size).
const DISTILL_BATCH: usize = 1024;
/// The table file's first bytes, with its format version.
const MAGIC: &[u8; 8] = b"SYSTAT01";

/// How the table is distilled. Part of the table's cache key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillParams {
    /// PCA dimensions (`None`: the transformer's rows as they are, not centred).
    pub pca_dims: Option<usize>,
    /// The SIF coefficient `a` (`None`: no weighting).
    pub sif_coefficient: Option<f32>,
    /// Run each id as `[CLS] id [SEP]` instead of model2vec's reversed `[SEP] id [CLS]`.
    pub natural_order: bool,
}

impl Default for DistillParams {
    /// model2vec's defaults.
    fn default() -> Self {
        Self {
            pca_dims: Some(256),
            sif_coefficient: Some(1e-4),
            natural_order: false,
        }
    }
}

impl DistillParams {
    /// A short stable name of the parameters, for cache keys.
    pub fn key(&self) -> String {
        let pca = self
            .pca_dims
            .map_or_else(|| "none".to_owned(), |d| d.to_string());
        let sif = self
            .sif_coefficient
            .map_or_else(|| "none".to_owned(), |a| format!("{a:e}"));
        let order = if self.natural_order { "-cls" } else { "" };
        format!("pca{pca}-sif{sif}{order}")
    }

    /// The defaults, overridden by `SWITCHYARD_STATIC_DISTILL` (for measuring alternatives:
    /// comma-separated `pca=N|none`, `sif=A|none`, `order=cls|sep`). Unknown parts are ignored.
    pub fn from_env() -> Self {
        let mut p = Self::default();
        let spec = std::env::var("SWITCHYARD_STATIC_DISTILL").unwrap_or_default();
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("pca", "none")) => p.pca_dims = None,
                Some(("pca", n)) => p.pca_dims = n.parse().ok().or(p.pca_dims),
                Some(("sif", "none")) => p.sif_coefficient = None,
                Some(("sif", a)) => p.sif_coefficient = a.parse().ok().or(p.sif_coefficient),
                Some(("order", o)) => p.natural_order = o == "cls",
                _ => {}
            }
        }
        p
    }
}

/// The distilled rows, one per vocabulary id; `skip` rows are never used in a sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct StaticTable {
    pub dim: usize,
    /// `skip.len() × dim` floats, row-major.
    pub vectors: Vec<f32>,
    pub skip: Vec<bool>,
}

impl StaticTable {
    pub fn rows(&self) -> usize {
        self.skip.len()
    }

    pub fn row(&self, id: usize) -> &[f32] {
        &self.vectors[id * self.dim..(id + 1) * self.dim]
    }

    /// Writes the table (temporary name, then rename: a reader never sees half a table).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(16 + self.vectors.len() * 4 + self.skip.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&u32::try_from(self.rows()).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(self.dim).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend(self.skip.iter().map(|s| u8::from(*s)));
        for f in &self.vectors {
            bytes.extend_from_slice(&f.to_le_bytes());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a table written by [`StaticTable::save`]; anything else (missing, truncated, another
    /// format) is `None`, and the caller distills again.
    pub fn load(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        let header = bytes.get(..16)?;
        if &header[..8] != MAGIC {
            return None;
        }
        let rows = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
        let dim = u32::from_le_bytes(header[12..16].try_into().ok()?) as usize;
        let skip_end = 16usize.checked_add(rows)?;
        let floats = rows.checked_mul(dim)?;
        if bytes.len() != skip_end.checked_add(floats.checked_mul(4)?)? || dim == 0 {
            return None;
        }
        let skip = bytes[16..skip_end].iter().map(|b| *b != 0).collect();
        let vectors = bytes[skip_end..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(Self { dim, vectors, skip })
    }
}

/// Where a distilled table lives: `<root>/static/<model dir name>-<digest of the model's
/// files>-<parameters>.table`.
pub fn table_path(
    root: &Path,
    model_name: &str,
    files_digest: &str,
    params: &DistillParams,
) -> PathBuf {
    root.join("static").join(format!(
        "{model_name}-{}-{}.table",
        &files_digest[..files_digest.len().min(16)],
        params.key()
    ))
}

/// SHA-256 over the model's three files (config, tokenizer, weights), streamed: the table's key,
/// so new weights or a new vocabulary never meet an old table.
pub fn files_digest(dir: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in super::MODEL_FILES {
        let mut file = std::fs::File::open(dir.join(f))?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hasher.update(f.as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Ids the table keeps no row for: `[unused…]` (model2vec's removal pattern) and `[UNK]`.
fn skipped_ids(tokenizer: &Tokenizer) -> Vec<bool> {
    let rows = tokenizer.get_vocab_size(true);
    let mut skip = vec![false; rows];
    for (token, id) in tokenizer.get_vocab(true) {
        let unused = token.starts_with("[unused") && token.ends_with(']');
        if let Some(s) = skip.get_mut(id as usize) {
            *s = unused || token == "[UNK]";
        }
    }
    skip
}

/// The id a model's tokenizer starts (`[CLS]`) and ends (`[SEP]`) a text with.
fn boundary_ids(tokenizer: &Tokenizer) -> Result<(u32, u32), EmbedError> {
    let enc = tokenizer
        .encode("a", true)
        .map_err(|e| EmbedError::Inference(e.to_string()))?;
    match (enc.get_ids().first(), enc.get_ids().last()) {
        (Some(b), Some(e)) if enc.get_ids().len() >= 3 => Ok((*b, *e)),
        _ => Err(EmbedError::Inference(
            "the tokenizer adds no [CLS]/[SEP] around a text".into(),
        )),
    }
}

/// The transformer's row for each id: `[SEP] id [CLS]` through the model, mean over the three
/// positions (model2vec's `create_output_embeddings_from_model`). Not normalised.
pub fn transformer_rows(
    transformer: &Embedder,
    ids: &[u32],
    natural_order: bool,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let (cls, sep) = boundary_ids(&transformer.tokenizer)?;
    let (first, last) = if natural_order {
        (cls, sep)
    } else {
        (sep, cls)
    };
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(DISTILL_BATCH) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|id| vec![first, *id, last]).collect();
        out.extend(transformer.id_vectors(&rows)?);
    }
    Ok(out)
}

/// Distills the table for `vocab` ids of the transformer's vocabulary (`None`: all of it).
/// Skipped ids get zero rows. `progress` hears (done, total) after each batch.
pub fn distill(
    transformer: &Embedder,
    params: &DistillParams,
    vocab: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StaticTable, EmbedError> {
    let mut skip = skipped_ids(&transformer.tokenizer);
    if let Some(n) = vocab {
        skip.truncate(n);
    }
    let kept: Vec<u32> = (0..skip.len())
        .filter(|i| !skip[*i])
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    if kept.is_empty() {
        return Err(EmbedError::Inference("no word piece to distill".into()));
    }
    let mut raw: Vec<f32> = Vec::new();
    let mut dim = 0;
    for (done, chunk) in kept.chunks(DISTILL_BATCH).enumerate() {
        for row in transformer_rows(transformer, chunk, params.natural_order)? {
            dim = row.len();
            raw.extend(row);
        }
        progress(((done + 1) * DISTILL_BATCH).min(kept.len()), kept.len());
    }
    let n = kept.len();
    let (mut reduced, dim) = match params.pca_dims {
        Some(k) if k < n => {
            let k = k.min(dim);
            (pca(&raw, n, dim, k)?, k)
        }
        _ => (raw, dim),
    };
    if let Some(a) = params.sif_coefficient {
        let w = sif_weights(n, a);
        for (row, w) in reduced.chunks_exact_mut(dim).zip(w) {
            row.iter_mut().for_each(|x| *x *= w);
        }
    }
    let mut vectors = vec![0f32; skip.len() * dim];
    for (r, id) in kept.iter().enumerate() {
        let id = *id as usize;
        vectors[id * dim..(id + 1) * dim].copy_from_slice(&reduced[r * dim..(r + 1) * dim]);
    }
    Ok(StaticTable { dim, vectors, skip })
}

/// SIF weights `a / (a + p)` with `p` the Zipf probability of each rank (0 = most frequent):
/// `p(rank) ∝ 1 / (rank + 2)`.
pub fn sif_weights(n: usize, a: f32) -> Vec<f32> {
    let inv: Vec<f64> = (0..n).map(|r| 1.0 / (r as f64 + 2.0)).collect();
    let total: f64 = inv.iter().sum();
    let a = f64::from(a);
    inv.iter().map(|i| (a / (a + i / total)) as f32).collect()
}

/// Centred projection of `n × d` rows onto the `k` directions of largest variance, by
/// decreasing variance. The covariance is a candle matrix product; its eigenvectors come from
/// [`jacobi_eigen`] in f64.
pub fn pca(x: &[f32], n: usize, d: usize, k: usize) -> Result<Vec<f32>, EmbedError> {
    let err = |e: candle_core::Error| EmbedError::Inference(format!("PCA: {e}"));
    let dev = Device::Cpu;
    let t = Tensor::from_slice(x, (n, d), &dev).map_err(err)?;
    let centred = t
        .broadcast_sub(&t.mean_keepdim(0).map_err(err)?)
        .map_err(err)?;
    let cov = centred
        .t()
        .and_then(|c| c.contiguous())
        .and_then(|c| c.matmul(&centred))
        .and_then(|c| c.to_vec2::<f32>())
        .map_err(err)?;
    let scale = 1.0 / (n.max(2) - 1) as f64;
    let a: Vec<f64> = cov
        .iter()
        .flatten()
        .map(|v| f64::from(*v) * scale)
        .collect();
    let (values, vectors) = jacobi_eigen(a, d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|i, j| values[*j].total_cmp(&values[*i]));
    // d × k, column c = eigenvector order[c]
    let mut comp = vec![0f32; d * k];
    for (c, &e) in order.iter().take(k).enumerate() {
        for r in 0..d {
            comp[r * k + c] = vectors[r * d + e] as f32;
        }
    }
    let comp = Tensor::from_vec(comp, (d, k), &dev).map_err(err)?;
    centred
        .matmul(&comp)
        .and_then(|p| p.flatten_all())
        .and_then(|p| p.to_vec1::<f32>())
        .map_err(err)
}

/// Eigenvalues and eigenvectors (columns of the row-major `d × d` result) of a symmetric
/// matrix, by cyclic Jacobi rotations.
pub fn jacobi_eigen(mut a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let mut off = 0.0;
        for p in 0..d {
            for q in p + 1..d {
                off += a[p * d + q] * a[p * d + q];
            }
        }
        if off <= scale * 1e-26 {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// A loaded static encoder: a tokenizer and a table. Immutable and shareable.
pub struct StaticEncoder {
    tokenizer: Tokenizer,
    table: StaticTable,
    /// Identifies the encoder (for the utterance cache): the transformer's key, "static" and the
    /// distillation parameters.
    pub model_key: String,
}

impl std::fmt::Debug for StaticEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEncoder")
            .field("model_key", &self.model_key)
            .field("rows", &self.table.rows())
            .field("dim", &self.table.dim)
            .finish_non_exhaustive()
    }
}

/// The utterance-cache key of a static encoder distilled from `transformer_key` with `params`.
pub fn static_key(transformer_key: &str, params: &DistillParams) -> String {
    format!("{transformer_key}-static-{}", params.key())
}

impl StaticEncoder {
    /// An encoder over `table` with `tokenizer` (its padding and truncation are replaced).
    pub fn new(
        mut tokenizer: Tokenizer,
        table: StaticTable,
        model_key: String,
    ) -> Result<Self, EmbedError> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Inference(format!("tokenizer truncation: {e}")))?;
        Ok(Self {
            tokenizer,
            table,
            model_key,
        })
    }

    /// The table (for tests and benchmarks).
    pub fn table(&self) -> &StaticTable {
        &self.table
    }

    /// Loads the table for the model in `dir` from `<cache_root>/static/…` when it is there,
    /// else distills it with the transformer (about a minute for 30,000 word pieces on one core)
    /// and writes it there (best effort). Says on the log which it did.
    pub fn load_or_distill(
        dir: &Path,
        params: &DistillParams,
        cache_root: Option<&Path>,
    ) -> Result<Self, EmbedError> {
        let fail = |reason: String| EmbedError::Load {
            dir: dir.display().to_string(),
            reason,
        };
        if !super::MODEL_FILES.iter().all(|f| dir.join(f).is_file()) {
            return Err(EmbedError::Missing(super::how_to_get(dir)));
        }
        let started = std::time::Instant::now();
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| fail(format!("config.json: {e}")))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = static_key(&super::model_key(&name, &config_text), params);
        let path = match cache_root {
            Some(root) => {
                let digest =
                    files_digest(dir).map_err(|e| fail(format!("reading the model: {e}")))?;
                Some(table_path(root, &name, &digest, params))
            }
            None => None,
        };
        if let Some(table) = path.as_deref().and_then(StaticTable::load) {
            let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
                .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
            if table.rows() == tokenizer.get_vocab_size(true) {
                tracing::info!(
                    rows = table.rows(),
                    dim = table.dim,
                    ms = started.elapsed().as_millis() as u64,
                    "static encoder loaded from its cache"
                );
                return Self::new(tokenizer, table, key);
            }
        }
        tracing::info!(params = %params.key(), "distilling the static encoder from the transformer (once; cached on disk)");
        let transformer = Embedder::load_dir_with(dir, super::Precision::F32)?;
        let mut last = std::time::Instant::now();
        let table = distill(&transformer, params, None, &mut |done, total| {
            if last.elapsed() >= std::time::Duration::from_secs(5) || done == total {
                last = std::time::Instant::now();
                tracing::info!(done, total, "distilling word pieces");
            }
        })?;
        tracing::info!(
            rows = table.rows(),
            dim = table.dim,
            secs = started.elapsed().as_secs_f32(),
            "static encoder distilled"
        );
        if let Some(p) = &path
            && let Err(err) = table.save(p)
        {
            tracing::warn!(error = %err, path = %p.display(), "the distilled table could not be cached");
        }
        Self::new(transformer.tokenizer.clone(), table, key)
    }

    /// One unit vector per text (the zero vector for a text with no known word piece).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        texts.iter().map(|t| self.embed_one(t)).collect()
    }

    /// The normalised mean of the text's word pieces' rows.
    pub fn embed_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EmbedError::Inference(e.to_string()))?;
        let mut sum = vec![0f32; self.table.dim];
        for id in enc.get_ids() {
            let id = *id as usize;
            if id < self.table.rows() && !self.table.skip[id] {
                for (s, x) in sum.iter_mut().zip(self.table.row(id)) {
                    *s += x;
                }
            }
        }
        // Mean then L2 norm is the sum's direction: dividing by the count changes nothing.
        let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            sum.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedding::test_model_dir;

    fn transformer() -> Embedder {
        match Embedder::load_dir(&test_model_dir()) {
            Ok(e) => e,
            Err(err) => panic!("{err}"),
        }
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn a_tiny_vocabulary_distills_to_the_transformers_own_vectors() {
        let t = transformer();
        let raw = DistillParams {
            pca_dims: None,
            sif_coefficient: None,
            natural_order: false,
        };
        // Ids 0..1200: [PAD], [unused0..], [UNK] (100), [CLS], [SEP], [MASK] and real pieces.
        let table = distill(&t, &raw, Some(1200), &mut |_, _| {}).expect("distill");
        assert_eq!(table.rows(), 1200);
        assert_eq!(table.dim, 384);
        let vocab = t.tokenizer.get_vocab(true);
        let unk = vocab["[UNK]"] as usize;
        let unused = vocab["[unused5]"] as usize;
        assert!(table.skip[unk] && table.skip[unused]);
        assert!(table.row(unk).iter().all(|x| *x == 0.0));
        // Each kept row is the model's output for that id alone, computed one id at a time
        // without batching: the batched distillation put every vector in its id's row.
        let (cls, sep) = boundary_ids(&t.tokenizer).expect("ids");
        assert_eq!((cls, sep), (vocab["[CLS]"], vocab["[SEP]"]));
        let kept: Vec<usize> = (0..1200).filter(|i| !table.skip[*i]).collect();
        assert!(kept.len() > 150, "{} kept", kept.len());
        for &id in kept.iter().step_by(37).chain([kept[kept.len() - 1]].iter()) {
            let alone = t
                .id_vectors(&[vec![sep, id as u32, cls]])
                .expect("alone")
                .remove(0);
            assert!(close(table.row(id), &alone, 1e-4), "row {id} differs");
        }
    }

    fn toy_encoder(dim: usize, rows: Vec<Vec<f32>>, skip: Vec<bool>) -> StaticEncoder {
        let t = Tokenizer::from_file(test_model_dir().join("tokenizer.json")).expect("tokenizer");
        let n = t.get_vocab_size(true);
        let mut vectors = vec![0f32; n * dim];
        let mut all_skip = vec![false; n];
        for (i, (r, s)) in rows.iter().zip(skip).enumerate() {
            vectors[i * dim..(i + 1) * dim].copy_from_slice(r);
            all_skip[i] = s;
        }
        StaticEncoder::new(
            t,
            StaticTable {
                dim,
                vectors,
                skip: all_skip,
            },
            "toy".into(),
        )
        .expect("encoder")
    }

    #[test]
    fn a_sentence_is_the_normalised_weighted_mean_of_its_pieces() {
        let t = Tokenizer::from_file(test_model_dir().join("tokenizer.json")).expect("tokenizer");
        let vocab = t.get_vocab(true);
        let (hello, world) = (vocab["hello"] as usize, vocab["world"] as usize);
        let mut rows = vec![vec![0f32; 3]; hello.max(world) + 1];
        // Weights baked into rows: "hello" counts 3, "world" 1 (as SIF scales rows).
        rows[hello] = vec![3.0, 0.0, 0.0];
        rows[world] = vec![0.0, 1.0, 0.0];
        let skip = vec![false; rows.len()];
        let enc = toy_encoder(3, rows, skip);
        let v = enc.embed_one("Hello world").expect("embed");
        let n = 10f32.sqrt();
        assert!(close(&v, &[3.0 / n, 1.0 / n, 0.0], 1e-6), "{v:?}");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        // A repeated piece counts twice.
        let v = enc.embed_one("world world hello").expect("embed");
        let n = 13f32.sqrt();
        assert!(close(&v, &[3.0 / n, 2.0 / n, 0.0], 1e-6), "{v:?}");
    }

    #[test]
    fn sif_weights_follow_zipf_ranks() {
        let w = sif_weights(4, 0.5);
        // p ∝ 1/2, 1/3, 1/4, 1/5; Σ = 77/60.
        let total = 0.5 + 1.0 / 3.0 + 0.25 + 0.2;
        for (r, w) in w.iter().enumerate() {
            let p = (1.0 / (r as f64 + 2.0)) / total;
            assert!(
                (f64::from(*w) - 0.5 / (0.5 + p)).abs() < 1e-6,
                "rank {r}: {w}"
            );
        }
        // Frequent (low rank) pieces weigh less.
        assert!(w.windows(2).all(|p| p[0] < p[1]), "{w:?}");
    }

    #[test]
    fn a_text_of_unknown_pieces_is_the_zero_vector() {
        let t = Tokenizer::from_file(test_model_dir().join("tokenizer.json")).expect("tokenizer");
        let vocab = t.get_vocab(true);
        let unk = vocab["[UNK]"] as usize;
        let mut rows = vec![vec![1f32, 1.0]; unk + 1];
        let mut skip = vec![false; unk + 1];
        skip[unk] = true;
        let enc = toy_encoder(2, rows.split_off(0), skip);
        // Characters outside the vocabulary become [UNK], which has no row.
        let enc_ids = enc.tokenizer.encode("😀 🙃", false).expect("encode");
        assert!(
            enc_ids.get_ids().iter().all(|i| *i as usize == unk),
            "{:?}",
            enc_ids.get_ids()
        );
        assert_eq!(enc.embed_one("😀 🙃").expect("embed"), vec![0.0, 0.0]);
        assert_eq!(enc.embed_one("").expect("embed"), vec![0.0, 0.0]);
        let v = enc.embed(&["😀", "[PAD]"]).expect("batch");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], vec![0.0, 0.0]);
    }

    #[test]
    fn jacobi_finds_the_eigenvalues_of_a_known_matrix() {
        let (mut vals, vecs) = jacobi_eigen(vec![2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0], 3);
        let order = {
            let mut o: Vec<usize> = (0..3).collect();
            o.sort_by(|i, j| vals[*i].total_cmp(&vals[*j]));
            o
        };
        // The eigenvector of 3 is (1, 1, 0)/√2 up to sign.
        let e3 = order[1];
        let v3 = [vecs[e3], vecs[3 + e3], vecs[6 + e3]];
        assert!(
            (v3[0].abs() - 0.5f64.sqrt()).abs() < 1e-9 && v3[0] * v3[1] > 0.0,
            "{v3:?}"
        );
        vals.sort_by(f64::total_cmp);
        for (got, want) in vals.iter().zip([1.0, 3.0, 5.0]) {
            assert!((got - want).abs() < 1e-9, "{vals:?}");
        }
    }

    #[test]
    fn pca_keeps_the_direction_of_largest_variance() {
        // Points spread along (1, 1, 0)/√2 by ±k, with a small wobble along z, offset by 7.
        let mut x = Vec::new();
        for k in -5..=5 {
            let k = k as f32;
            x.extend([7.0 + k, 7.0 + k, 7.0 + 0.01 * (k * 3.0).sin()]);
        }
        let p = pca(&x, 11, 3, 1).expect("pca");
        assert_eq!(p.len(), 11);
        let sign = p[10].signum();
        for (i, got) in p.iter().enumerate() {
            let want = (i as f32 - 5.0) * 2f32.sqrt();
            assert!(
                (got * sign - want).abs() < 1e-3,
                "point {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn the_table_round_trips_on_disk_and_its_key_follows_the_parameters() {
        let root = tempfile::tempdir().expect("tempdir");
        let table = StaticTable {
            dim: 2,
            vectors: vec![0.5, -1.25, 3.0, 0.0, 1e-7, 2.0],
            skip: vec![false, true, false],
        };
        let params = DistillParams::default();
        let path = table_path(root.path(), "m", "abcdef0123456789ffff", &params);
        assert_eq!(StaticTable::load(&path), None);
        table.save(&path).expect("save");
        assert_eq!(StaticTable::load(&path), Some(table.clone()));
        // Every parameter and the model's digest are in the key.
        let other_pca = DistillParams {
            pca_dims: Some(128),
            ..params
        };
        let no_sif = DistillParams {
            sif_coefficient: None,
            ..params
        };
        let other_sif = DistillParams {
            sif_coefficient: Some(1e-3),
            ..params
        };
        let paths = [
            path.clone(),
            table_path(root.path(), "m", "abcdef0123456789ffff", &other_pca),
            table_path(root.path(), "m", "abcdef0123456789ffff", &no_sif),
            table_path(root.path(), "m", "abcdef0123456789ffff", &other_sif),
            table_path(root.path(), "m", "0bcdef0123456789ffff", &params),
        ];
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(StaticTable::load(&paths[1]), None);
        // A truncated or foreign file is a miss, not an error.
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("truncate");
        assert_eq!(StaticTable::load(&path), None);
        std::fs::write(&path, b"not a table at all, no").expect("garbage");
        assert_eq!(StaticTable::load(&path), None);
        // The model's digest changes with any of its files.
        let model = tempfile::tempdir().expect("model dir");
        for f in crate::embedding::MODEL_FILES {
            std::fs::write(model.path().join(f), f).expect("write");
        }
        let d1 = files_digest(model.path()).expect("digest");
        std::fs::write(model.path().join("model.safetensors"), "other weights").expect("write");
        assert_ne!(d1, files_digest(model.path()).expect("digest"));
    }

    #[test]
    fn load_or_distill_reads_a_cached_table_instead_of_distilling() {
        // A table planted under the key of the real model's files is used as is: were the
        // encoder distilled instead, its rows would not be these.
        let root = tempfile::tempdir().expect("tempdir");
        let dir = test_model_dir();
        let t = Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
        let n = t.get_vocab_size(true);
        let vocab = t.get_vocab(true);
        let params = DistillParams::default();
        let mut vectors = vec![0f32; n * 2];
        let hello = vocab["hello"] as usize;
        vectors[hello * 2] = 4.0;
        let table = StaticTable {
            dim: 2,
            vectors,
            skip: vec![false; n],
        };
        let digest = files_digest(&dir).expect("digest");
        table
            .save(&table_path(
                root.path(),
                "all-MiniLM-L6-v2",
                &digest,
                &params,
            ))
            .expect("save");
        let enc = StaticEncoder::load_or_distill(&dir, &params, Some(root.path())).expect("load");
        assert_eq!(enc.table(), &table);
        assert_eq!(enc.embed_one("hello").expect("embed"), vec![1.0, 0.0]);
        assert!(
            enc.model_key.ends_with("-static-pca256-sif1e-4"),
            "{}",
            enc.model_key
        );
    }
}
