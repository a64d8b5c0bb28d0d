//! The embedding pool and the caches in front of it.
//!
//! [`EmbedderActor`]s run on a `SyncArbiter`: dedicated threads doing the CPU-bound candle
//! inference, so no HTTP worker and no actor's event loop ever runs the model. [`EmbedService`]
//! is what proxy actors hold: request texts go through a bounded in-memory cache (moka, by
//! text) before the pool, and misses that arrive while every pool thread is busy are embedded
//! together in one batch; utterances go through a disk cache keyed by model and text hash, read
//! and written on the pool threads, so a restart or reload with unchanged utterances computes
//! nothing. [`Readiness`] counts the indexes still building, for `/readyz`, and the encoder
//! itself while it loads: the static encoder may have to be distilled first (about a minute),
//! so [`EmbedService::start_loading`] loads it on its own thread while the gateway already
//! answers (`/readyz` 503), and the pool threads wait for it in [`EncoderCell`].

use super::messages::{Embed, EmbedUtterances};
use crate::embedding::{EmbedError, Encoder, EncoderKind};
use crate::error::GatewayError;
use crate::routing::semantic::text_hash;
use actix::{Actor, Addr, Handler, SyncArbiter, SyncContext};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Memory for cached request texts and their vectors, in bytes: each entry weighs its text plus
/// its 384 floats, so long prompts cannot blow the bound (about 30,000 short prompts).
pub const QUERY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The encoder once it is loaded, or why it could not be. Pool threads block on it (they are
/// dedicated threads, so waiting there holds up no event loop).
#[derive(Default)]
pub struct EncoderCell {
    state: std::sync::Mutex<Option<Result<Arc<Encoder>, String>>>,
    loaded: std::sync::Condvar,
}

impl EncoderCell {
    fn ready(encoder: Arc<Encoder>) -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new(Some(Ok(encoder))),
            loaded: std::sync::Condvar::new(),
        })
    }

    fn set(&self, outcome: Result<Arc<Encoder>, String>) {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some(outcome);
        self.loaded.notify_all();
    }

    /// The encoder, waiting until it is loaded.
    pub fn wait(&self) -> Result<Arc<Encoder>, String> {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        loop {
            if let Some(outcome) = g.as_ref() {
                return outcome.clone();
            }
            g = match self.loaded.wait(g) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }
}

/// One pool thread.
pub struct EmbedderActor {
    encoder: Arc<EncoderCell>,
    /// The utterance cache's root; the directory under it is the encoder's key.
    disk_root: Option<PathBuf>,
}

impl EmbedderActor {
    fn encoder(&self) -> Result<Arc<Encoder>, EmbedError> {
        self.encoder.wait().map_err(EmbedError::Inference)
    }
}

impl Actor for EmbedderActor {
    type Context = SyncContext<Self>;
}

impl Handler<Embed> for EmbedderActor {
    type Result = Result<Vec<Vec<f32>>, EmbedError>;

    fn handle(&mut self, msg: Embed, _ctx: &mut Self::Context) -> Self::Result {
        let texts: Vec<&str> = msg.texts.iter().map(String::as_str).collect();
        self.encoder()?.embed(&texts)
    }
}

impl Handler<EmbedUtterances> for EmbedderActor {
    type Result = Result<(Vec<Vec<f32>>, usize), EmbedError>;

    /// Disk hits first; the misses are embedded in one batch and written back.
    fn handle(&mut self, msg: EmbedUtterances, _ctx: &mut Self::Context) -> Self::Result {
        let encoder = self.encoder()?;
        let disk = self
            .disk_root
            .as_deref()
            .map(|r| DiskCache::new(r, encoder.model_key()));
        let mut out: Vec<Option<Vec<f32>>> = msg
            .texts
            .iter()
            .map(|t| disk.as_ref().and_then(|d| d.get(t)))
            .collect();
        let missing: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
        if !missing.is_empty() {
            let texts: Vec<&str> = missing.iter().map(|i| msg.texts[*i].as_str()).collect();
            let vectors = encoder.embed(&texts)?;
            for (i, v) in missing.iter().zip(vectors) {
                if let Some(d) = &disk {
                    d.put(&msg.texts[*i], &v);
                }
                out[*i] = Some(v);
            }
        }
        let vectors = out.into_iter().flatten().collect();
        Ok((vectors, missing.len()))
    }
}

/// Utterance embeddings on disk: `<dir>/<model key>/<sha256 of text>.f32`, little-endian floats.
/// A corrupt or unreadable entry is a miss, never an error.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    pub fn new(root: &Path, model_key: &str) -> Self {
        Self {
            dir: root.join(model_key),
        }
    }

    /// `$SWITCHYARD_CACHE_DIR`, else `$XDG_CACHE_HOME/switchyard`, else `~/.cache/switchyard`.
    pub fn default_root() -> Option<PathBuf> {
        let env = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("SWITCHYARD_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("switchyard")))
            .or_else(|| env("HOME").map(|d| d.join(".cache/switchyard")))
    }

    fn path(&self, text: &str) -> PathBuf {
        self.dir.join(format!("{}.f32", text_hash(text)))
    }

    pub fn get(&self, text: &str) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(text)).ok()?;
        if bytes.is_empty() || bytes.len() % 4 != 0 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// Best effort: a failed write costs a recomputation later, nothing else. Written to a
    /// temporary name and renamed, so a reader never sees half a vector.
    pub fn put(&self, text: &str, vector: &[f32]) {
        let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        let path = self.path(text);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, &bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(err) = written {
            tracing::warn!(error = %err, dir = %self.dir.display(), "embedding disk cache write failed");
        }
    }
}

/// Indexes not yet built; `/readyz` answers ready only at zero.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicUsize>);

impl Readiness {
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub fn done(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn pending(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Request texts per inference at most: one forward pass of this many short prompts costs far
/// less than as many passes, and bounds the wait of the first text in a batch.
pub const MAX_QUERY_BATCH: usize = 16;

type Waiter = tokio::sync::oneshot::Sender<Result<Arc<[f32]>, String>>;

/// Request misses waiting for a pool thread. While every thread is busy, misses gather here and
/// the next free thread embeds them together in one batch.
#[derive(Default)]
struct Batcher {
    waiting: Vec<(String, Waiter)>,
    /// Batches sent to the pool and not yet answered (at most one per pool thread).
    in_flight: usize,
}

impl Batcher {
    fn take(&mut self) -> Vec<(String, Waiter)> {
        let n = self.waiting.len().min(MAX_QUERY_BATCH);
        self.waiting.drain(..n).collect()
    }
}

/// The pool and its caches, shared by every proxy actor.
#[derive(Clone)]
pub struct EmbedService {
    pool: Addr<EmbedderActor>,
    threads: usize,
    batcher: Arc<std::sync::Mutex<Batcher>>,
    /// Request batches sent to the pool so far.
    batches: Arc<AtomicUsize>,
    queries: moka::sync::Cache<Arc<str>, Arc<[f32]>>,
    /// The encoder in use (its defaults decide a proxy's threshold and margin).
    pub kind: EncoderKind,
    pub readiness: Readiness,
}

impl std::fmt::Debug for EmbedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedService")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl EmbedService {
    /// Starts `threads` pool threads sharing `encoder` (call inside an actix system).
    pub fn start(encoder: Arc<Encoder>, threads: usize, disk_root: Option<&Path>) -> Self {
        let kind = encoder.kind();
        Self::with_cell(EncoderCell::ready(encoder), kind, threads, disk_root)
    }

    /// Starts the pool at once and loads the encoder with `load` on a thread of its own (the
    /// static encoder may be distilled first): until it is loaded the pool's work waits and
    /// [`Readiness`] counts it pending, so `/readyz` answers 503. A failed load stays pending
    /// (never ready) and every embedding answers why.
    pub fn start_loading<F>(
        kind: EncoderKind,
        load: F,
        threads: usize,
        disk_root: Option<&Path>,
    ) -> Self
    where
        F: FnOnce() -> Result<Encoder, EmbedError> + Send + 'static,
    {
        let cell = Arc::new(EncoderCell::default());
        let service = Self::with_cell(cell.clone(), kind, threads, disk_root);
        let readiness = service.readiness.clone();
        readiness.add();
        std::thread::spawn(move || match load() {
            Ok(encoder) => {
                cell.set(Ok(Arc::new(encoder)));
                readiness.done();
            }
            Err(err) => {
                tracing::error!(error = %err, encoder = kind.as_str(), "the embedding encoder could not be loaded");
                cell.set(Err(err.to_string()));
            }
        });
        service
    }

    fn with_cell(
        cell: Arc<EncoderCell>,
        kind: EncoderKind,
        threads: usize,
        disk_root: Option<&Path>,
    ) -> Self {
        let disk_root = disk_root.map(Path::to_path_buf);
        let pool = SyncArbiter::start(threads.max(1), move || EmbedderActor {
            encoder: cell.clone(),
            disk_root: disk_root.clone(),
        });
        Self {
            pool,
            threads: threads.max(1),
            batcher: Arc::default(),
            batches: Arc::default(),
            queries: moka::sync::Cache::builder()
                .weigher(|k: &Arc<str>, v: &Arc<[f32]>| {
                    u32::try_from(k.len() + v.len() * 4 + 64).unwrap_or(u32::MAX)
                })
                .max_capacity(QUERY_CACHE_BYTES)
                .build(),
            kind,
            readiness: Readiness::default(),
        }
    }

    /// A request text's vector: from memory, else from the pool (then remembered). Misses that
    /// arrive while every pool thread is busy are embedded together (see [`Batcher`]).
    pub async fn query(&self, text: &str) -> Result<Arc<[f32]>, GatewayError> {
        if let Some(v) = self.queries.get(text) {
            return Ok(v);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let batch = {
            let mut b = self.lock();
            b.waiting.push((text.to_owned(), tx));
            if b.in_flight < self.threads {
                b.in_flight += 1;
                Some(b.take())
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            self.run_batches(batch);
        }
        let v = rx
            .await
            .map_err(|_| GatewayError::Internal("the embedding batch was dropped".into()))?
            .map_err(GatewayError::Internal)?;
        self.queries.insert(text.into(), v.clone());
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batcher> {
        match self.batcher.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sends `batch` to the pool and, as long as misses keep waiting, the next batches; on the
    /// caller's arbiter, detached, so no request waits for another's batch to be answered.
    fn run_batches(&self, mut batch: Vec<(String, Waiter)>) {
        let this = self.clone();
        actix::spawn(async move {
            loop {
                this.batches.fetch_add(1, Ordering::Relaxed);
                let texts = batch.iter().map(|(t, _)| t.clone()).collect();
                let answer = this.pool.send(Embed { texts }).await;
                match answer {
                    Ok(Ok(vectors)) if vectors.len() == batch.len() => {
                        for ((_, tx), v) in batch.drain(..).zip(vectors) {
                            let _ = tx.send(Ok(v.into()));
                        }
                    }
                    other => {
                        let reason = match other {
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => format!("embedding pool unavailable: {e}"),
                            Ok(Ok(v)) => format!("{} vectors for {} texts", v.len(), batch.len()),
                        };
                        for (_, tx) in batch.drain(..) {
                            let _ = tx.send(Err(reason.clone()));
                        }
                    }
                }
                let mut b = this.lock();
                if b.waiting.is_empty() {
                    b.in_flight -= 1;
                    return;
                }
                batch = b.take();
            }
        });
    }

    /// Utterance vectors in order, through the disk cache; also says how many were computed.
    pub async fn utterances(&self, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, usize), String> {
        self.pool
            .send(EmbedUtterances { texts })
            .await
            .map_err(|e| format!("embedding pool unavailable: {e}"))?
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedding::{Embedder, test_model_dir};

    fn embedder() -> Arc<Encoder> {
        match Embedder::load_dir(&test_model_dir()) {
            Ok(e) => Arc::new(Encoder::Transformer(e)),
            Err(err) => panic!("{err}"),
        }
    }

    #[actix_web::test]
    async fn a_restart_with_unchanged_utterances_computes_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = embedder();
        let texts: Vec<String> = ["what is my balance", "book a flight", "tell me a joke"]
            .map(String::from)
            .to_vec();
        let first = EmbedService::start(model.clone(), 1, Some(root.path()));
        let (cold, computed) = first.utterances(texts.clone()).await.expect("cold");
        assert_eq!(computed, 3);
        let files = std::fs::read_dir(root.path().join(model.model_key()))
            .expect("cache dir")
            .count();
        assert_eq!(files, 3);
        // A new pool, as after a restart: every vector comes from disk, bit for bit.
        let second = EmbedService::start(model.clone(), 1, Some(root.path()));
        let (warm, computed) = second.utterances(texts.clone()).await.expect("warm");
        assert_eq!(computed, 0);
        assert_eq!(warm, cold);
        // One new utterance: only that one is computed.
        let mut more = texts.clone();
        more.push("play some jazz".into());
        let (_, computed) = second.utterances(more).await.expect("one new");
        assert_eq!(computed, 1);
        // Without a disk cache everything is computed every time.
        let none = EmbedService::start(model, 1, None);
        assert_eq!(none.utterances(texts).await.expect("no disk").1, 3);
    }

    #[actix_web::test]
    async fn concurrent_misses_are_embedded_in_batches() {
        let service = EmbedService::start(embedder(), 1, None);
        let texts: Vec<String> = (0..17)
            .map(|i| format!("question number {i} about my bill"))
            .collect();
        let alone: Vec<Arc<[f32]>> = {
            let single = EmbedService::start(embedder(), 1, None);
            let mut out = Vec::new();
            for t in &texts {
                out.push(single.query(t).await.expect("alone"));
            }
            assert_eq!(single.batches.load(Ordering::Relaxed), 17);
            out
        };
        let together = futures_util::future::join_all(texts.iter().map(|t| service.query(t))).await;
        // The first miss finds the pool idle and goes alone; the other 16 gather meanwhile and
        // go as one batch.
        assert_eq!(service.batches.load(Ordering::Relaxed), 2);
        for (a, b) in alone.iter().zip(together) {
            let b = b.expect("batched");
            let cos: f32 = a.iter().zip(b.iter()).map(|(x, y)| x * y).sum();
            assert!(cos > 0.9999, "batched vector differs: cosine {cos}");
        }
        assert_eq!(service.lock().in_flight, 0);
    }

    #[actix_web::test]
    async fn request_texts_are_embedded_once_then_served_from_memory() {
        let service = EmbedService::start(embedder(), 1, None);
        let a = service.query("what is my balance").await.expect("miss");
        assert_eq!(a.len(), 384);
        service.queries.run_pending_tasks();
        assert_eq!(service.queries.entry_count(), 1);
        let b = service.query("what is my balance").await.expect("hit");
        assert!(Arc::ptr_eq(&a, &b), "the cached vector itself");
    }

    #[actix_web::test]
    async fn work_waits_for_an_encoder_loading_in_the_background_and_readiness_says_so() {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let service = EmbedService::start_loading(
            EncoderKind::Transformer,
            move || {
                gate.recv()
                    .map_err(|e| EmbedError::Inference(e.to_string()))?;
                Embedder::load_dir(&test_model_dir()).map(Encoder::Transformer)
            },
            1,
            None,
        );
        assert_eq!(service.readiness.pending(), 1);
        let asked = actix_web::rt::spawn({
            let s = service.clone();
            async move { s.query("what is my balance").await }
        });
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !asked.is_finished(),
            "answered before the encoder was loaded"
        );
        assert_eq!(service.readiness.pending(), 1);
        release.send(()).expect("release");
        let v = asked.await.expect("join").expect("vector");
        assert_eq!(v.len(), 384);
        assert_eq!(service.readiness.pending(), 0);

        // A load that fails keeps the service not ready and answers why.
        let broken = EmbedService::start_loading(
            EncoderKind::Static,
            || Err(EmbedError::Missing("no weights here".into())),
            1,
            None,
        );
        let err = broken.query("anything").await.expect_err("no encoder");
        assert!(err.to_string().contains("no weights here"), "{err}");
        assert_eq!(broken.readiness.pending(), 1);
    }

    #[test]
    fn disk_cache_round_trips_and_treats_garbage_as_a_miss() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = DiskCache::new(root.path(), "m-1");
        assert_eq!(cache.get("hello"), None);
        cache.put("hello", &[0.5, -1.25, 3.0]);
        assert_eq!(cache.get("hello"), Some(vec![0.5, -1.25, 3.0]));
        assert_eq!(cache.get("hello "), None);
        std::fs::write(cache.path("bad"), [1u8, 2, 3]).expect("write");
        assert_eq!(cache.get("bad"), None);
        // Another model never sees these vectors.
        assert_eq!(DiskCache::new(root.path(), "m-2").get("hello"), None);
    }
}
