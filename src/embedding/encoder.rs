//! Which sentence encoder a gateway uses: the transformer or the static table distilled from it.
//!
//! It owns the choice ([`EncoderKind`], the `--embedding-encoder` setting), the one interface
//! both encoders are used through ([`Encoder`]), and each encoder's measured decision defaults
//! (threshold and margin: cosine scores differ between encoders, so each is calibrated on
//! `semantic_eval_val.json` on its own, docs/semantic-routing.md). Loading and encoding live in
//! the parent module (transformer) and `static_model`.

use super::static_model::{DistillParams, StaticEncoder};
use super::{EmbedError, Embedder};

/// The encoder that turns texts into vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EncoderKind {
    /// all-MiniLM-L6-v2 on candle: the reference, about 9 ms per short prompt on one core (8-bit
    /// layers where the CPU has VNNI, else f32 and about 15 ms).
    #[default]
    Transformer,
    /// A table of word-piece vectors distilled from the transformer (model2vec method):
    /// microseconds per prompt.
    Static,
}

impl EncoderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transformer => "transformer",
            Self::Static => "static",
        }
    }

    /// The threshold a proxy uses unless it sets its own (`switchyard calibrate` on
    /// semantic_eval_val.json with this encoder).
    pub fn default_threshold(self) -> f32 {
        match self {
            Self::Transformer => crate::routing::semantic::scoring::DEFAULT_THRESHOLD,
            Self::Static => STATIC_THRESHOLD,
        }
    }

    /// The ambiguity margin (measured with this encoder on the same file).
    pub fn default_margin(self) -> f32 {
        match self {
            Self::Transformer => crate::routing::semantic::scoring::DEFAULT_MARGIN,
            Self::Static => STATIC_MARGIN,
        }
    }
}

/// The static encoder's threshold, chosen by `switchyard calibrate --embedding-encoder static`
/// (docs/semantic-routing.md).
pub const STATIC_THRESHOLD: f32 = 0.48;
/// The static encoder's margin (docs/semantic-routing.md).
pub const STATIC_MARGIN: f32 = 0.01;

/// A loaded encoder of either kind. Immutable and shareable across pool threads.
#[derive(Debug)]
pub enum Encoder {
    Transformer(Embedder),
    Static(StaticEncoder),
}

impl Encoder {
    /// One unit vector per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        match self {
            Self::Transformer(e) => e.embed(texts),
            Self::Static(e) => e.embed(texts),
        }
    }

    /// Identifies the vectors this encoder makes (the utterance cache's directory).
    pub fn model_key(&self) -> &str {
        match self {
            Self::Transformer(e) => &e.model_key,
            Self::Static(e) => &e.model_key,
        }
    }

    pub fn kind(&self) -> EncoderKind {
        match self {
            Self::Transformer(_) => EncoderKind::Transformer,
            Self::Static(_) => EncoderKind::Static,
        }
    }

    /// Loads the encoder of `kind` for the model in `dir`; the static one from its cached table
    /// under `cache_root`, else distilled (and cached) first.
    pub fn load(
        kind: EncoderKind,
        dir: &std::path::Path,
        cache_root: Option<&std::path::Path>,
    ) -> Result<Self, EmbedError> {
        match kind {
            EncoderKind::Transformer => Embedder::load_dir(dir).map(Self::Transformer),
            EncoderKind::Static => {
                StaticEncoder::load_or_distill(dir, &DistillParams::from_env(), cache_root)
                    .map(Self::Static)
            }
        }
    }
}
