//! The BERT encoder's forward pass (embeddings, then the layers of self-attention and
//! feed-forward), written out with candle ops so that its linear layers can hold 8-bit weights.
//!
//! It owns loading the weights of a `BertModel` checkpoint (the safetensors names of
//! sentence-transformers' MiniLM) and the forward pass, in one of two [`Precision`]s: `F32`, the
//! checkpoint as is (the reference; the static encoder is distilled from it), and `Q8`, where
//! three of the four matrix products of each layer (attention output, feed-forward in and out)
//! are quantized once at load to GGML's Q8_0 (blocks of 32 weights sharing one scale) and run
//! through candle's `QMatMul`, which quantizes the activations to 8 bits too and runs integer
//! dot products (VNNI); query, key and value stay f32. Everything else (embeddings, biases,
//! layer norms, softmax, erf GELU as the config says `"gelu"`) stays in f32 in both. The
//! query, key and value matrices are concatenated into one product per layer (exact). Pooling
//! and normalisation live in the parent module.

use super::weights::{RowsOnDisk, SafetensorsFile};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

/// How the linear layers' weights are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The checkpoint's f32 weights.
    F32,
    /// Q8_0 weights and 8-bit activations in the layers' matrix products.
    Q8,
}

impl Precision {
    /// `Q8` where the CPU has 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI: candle's
    /// tiled 8-bit kernels), else `F32`: without them candle's 8-bit products are slower than
    /// its f32 ones.
    pub fn fastest() -> Self {
        #[cfg(target_arch = "x86_64")]
        if (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || is_x86_feature_detected!("avxvnni")
        {
            return Self::Q8;
        }
        Self::F32
    }
}

/// `x · Φ(x)` with the exact (erf) GELU the checkpoint was trained with, through a rational
/// approximation of erf (the one of Eigen and XLA, within about one f32 rounding step) that the compiler
/// vectorises: candle's `gelu_erf` calls a scalar erf per element, about a seventh of a forward
/// pass.
struct GeluErf;

impl GeluErf {
    fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = -2.726_142_3e-10_f32;
        for a in [
            2.770_681_4e-8,
            -2.101_024e-6,
            -5.692_506_4e-5,
            -7.349_906_3e-4,
            -2.954_6e-3,
            -1.609_603_3e-2,
        ] {
            p = p * x2 + a;
        }
        let mut q = -1.456_607_2e-5_f32;
        for b in [
            -2.133_740_6e-4,
            -1.682_827e-3,
            -7.373_329_2e-3,
            -1.426_474e-2,
        ] {
            q = q * x2 + b;
        }
        x * p / q
    }

    fn gelu(x: f32) -> f32 {
        0.5 * x * (1.0 + Self::erf(x * std::f32::consts::FRAC_1_SQRT_2))
    }
}

impl candle_core::CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-rational"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(v), Some((start, end))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("gelu: contiguous f32 only");
        };
        let out: Vec<f32> = v[start..end].iter().map(|&x| Self::gelu(x)).collect();
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// A linear layer `x · Wᵀ + b`.
struct Dense {
    weight: QMatMul,
    bias: Tensor,
    /// Zero columns appended to the inputs (and the weights): candle's tiled 8-bit kernels
    /// need the inner dimension to be a multiple of 256, and 384 is not.
    pad: usize,
    /// `1 / s` per input channel when the weights' columns were multiplied by `s` (smoothing).
    smooth: Option<Tensor>,
}

/// The inner-dimension multiple candle's tiled (VNNI) 8-bit kernels take.
const Q8_TILE_K: usize = 256;

impl Dense {
    /// `weight` is `(out, in)` as stored in the checkpoint. `input_norm`, the layer norm whose
    /// output this layer reads, lets 8-bit weights be smoothed: the activations of a layer
    /// norm's output have a few channels far larger than the rest (where `|γ| + |β|` is large),
    /// and candle quantizes activations with one scale per 256 values, so those channels would
    /// flatten all others to a few levels. As in SmoothQuant (Xiao et al. 2023, α = 0.5), the
    /// inputs are divided by `s = sqrt(a / w)` per channel and the weights' columns multiplied
    /// by it (the product is unchanged), with `a = |γ| + |β|` standing for the activations' range
    /// and `w` the column's largest weight.
    fn new(
        weight: Tensor,
        bias: Tensor,
        precision: Precision,
        input_norm: Option<&LayerNorm>,
    ) -> Result<Self> {
        let inputs = weight.dim(1)?;
        let (weight, pad, smooth) = match precision {
            Precision::F32 => (QMatMul::Tensor(weight), 0, None),
            Precision::Q8 => {
                let (weight, smooth) = match input_norm {
                    Some(norm) => {
                        let a = (norm.weight.abs()? + norm.bias.abs()?)?.clamp(1e-5, f32::MAX)?;
                        let w = weight.abs()?.max(0)?.clamp(1e-5, f32::MAX)?;
                        let s = (a / w)?.sqrt()?;
                        (weight.broadcast_mul(&s)?, Some(s.recip()?))
                    }
                    None => (weight, None),
                };
                let pad = inputs.next_multiple_of(Q8_TILE_K) - inputs;
                let padded = weight.pad_with_zeros(1, 0, pad)?;
                let q = QTensor::quantize(&padded, GgmlDType::Q8_0)?;
                (QMatMul::from_qtensor(q)?, pad, smooth)
            }
        };
        Ok(Self {
            weight,
            bias,
            pad,
            smooth,
        })
    }

    fn load(
        vb: VarBuilder,
        (inputs, outputs): (usize, usize),
        precision: Precision,
        input_norm: Option<&LayerNorm>,
    ) -> Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?;
        let bias = vb.get(outputs, "bias")?;
        Self::new(weight, bias, precision, input_norm)
    }

    /// `x`: `(rows, in)`, contiguous.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let smoothed;
        let x = match &self.smooth {
            Some(inv) => {
                smoothed = x.broadcast_mul(inv)?;
                &smoothed
            }
            None => x,
        };
        let y = if self.pad > 0 {
            self.weight.forward(&x.pad_with_zeros(1, 0, self.pad)?)?
        } else {
            self.weight.forward(x)?
        };
        y.broadcast_add(&self.bias)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    /// Query, key and value in one `(3·hidden, hidden)` product.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

impl Layer {
    /// `input_norm`: the layer norm whose output this layer reads (the previous layer's last).
    fn load(
        vb: VarBuilder,
        c: &Config,
        precision: Precision,
        input_norm: &LayerNorm,
    ) -> Result<Self> {
        let h = c.hidden_size;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        let (mut weights, mut biases) = (Vec::with_capacity(3), Vec::with_capacity(3));
        for name in ["query", "key", "value"] {
            weights.push(own.pp(name).get((h, h), "weight")?);
            biases.push(own.pp(name).get(h, "bias")?);
        }
        // Query, key and value stay f32 in both precisions: in 8 bits, even smoothed, they
        // moved short texts' embeddings to a cosine of 0.996 from the f32 ones ("hello"); every
        // other product in 8 bits keeps all test prompts at 0.999 or above.
        let qkv = Dense::new(
            Tensor::cat(&weights, 0)?,
            Tensor::cat(&biases, 0)?,
            Precision::F32,
            Some(input_norm),
        )?;
        let attention_norm =
            LayerNorm::load(attention.pp("output.LayerNorm"), h, c.layer_norm_eps)?;
        let i = c.intermediate_size;
        Ok(Self {
            qkv,
            attention_out: Dense::load(attention.pp("output.dense"), (h, h), precision, None)?,
            intermediate: Dense::load(
                vb.pp("intermediate.dense"),
                (h, i),
                precision,
                Some(&attention_norm),
            )?,
            attention_norm,
            output: Dense::load(vb.pp("output.dense"), (i, h), precision, None)?,
            output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
        })
    }
}

/// A loaded BERT encoder.
pub struct Bert {
    /// Left in the checkpoint and read by row: a text needs a few dozen of its 30,522 rows.
    word_embeddings: RowsOnDisk,
    /// Position embeddings plus the token-type-0 embedding (every text is one segment).
    position_embeddings: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    pub precision: Precision,
}

impl Bert {
    /// Loads the checkpoint `weights` (f32) described by `c`; only `"gelu"` (erf) is supported,
    /// the activation every sentence-transformers BERT uses.
    pub fn load(weights: SafetensorsFile, c: &Config, precision: Precision) -> Result<Self> {
        if c.hidden_act != HiddenAct::Gelu {
            candle_core::bail!("hidden_act {:?}: only \"gelu\" is supported", c.hidden_act);
        }
        // Both layouts of the checkpoint: with and without the `bert.` prefix.
        let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let h = c.hidden_size;
        let word_embeddings = weights.rows_on_disk(
            &format!("{prefix}embeddings.word_embeddings.weight"),
            (c.vocab_size, h),
        )?;
        let vb = VarBuilder::from_backend(Box::new(weights), DType::F32, Device::Cpu);
        let vb = if prefix.is_empty() { vb } else { vb.pp("bert") };
        let e = vb.pp("embeddings");
        let types = e
            .pp("token_type_embeddings")
            .get((c.type_vocab_size, h), "weight")?;
        let position_embeddings = e
            .pp("position_embeddings")
            .get((c.max_position_embeddings, h), "weight")?
            .broadcast_add(&types.narrow(0, 0, 1)?)?;
        let embedding_norm = LayerNorm::load(e.pp("LayerNorm"), h, c.layer_norm_eps)?;
        let mut layers: Vec<Layer> = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let input_norm = layers.last().map_or(&embedding_norm, |l| &l.output_norm);
            let layer = Layer::load(
                vb.pp(format!("encoder.layer.{i}")),
                c,
                precision,
                input_norm,
            )?;
            layers.push(layer);
        }
        Ok(Self {
            word_embeddings,
            position_embeddings,
            embedding_norm,
            layers,
            heads: c.num_attention_heads,
            hidden: h,
            precision,
        })
    }

    /// The last hidden states, `(batch, tokens, hidden)`, of `ids` (`(batch, tokens)`, u32).
    /// `mask` (`(batch, tokens)`, 1 for a real token, 0 for padding) is needed only when some
    /// row is padded.
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let (h, heads) = (self.hidden, self.heads);
        let head = h / heads;
        let rows = batch * tokens;
        let x = self
            .word_embeddings
            .select(&ids.flatten_all()?.to_vec1::<u32>()?, ids.device())?
            .reshape((batch, tokens, h))?
            .broadcast_add(&self.position_embeddings.narrow(0, 0, tokens)?)?
            .reshape((rows, h))?;
        let mut x = self.embedding_norm.forward(&x)?;
        // Padding gets a large negative score before the softmax: (batch, 1, 1, tokens).
        let bias = match mask {
            Some(m) => Some(
                ((m.to_dtype(DType::F32)? - 1.0)? * f64::from(f32::MAX))?
                    .reshape((batch, 1, 1, tokens))?,
            ),
            None => None,
        };
        let scale = 1.0 / (head as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            // (batch, heads, tokens, head) for each of the three.
            let split = |i: usize| {
                qkv.narrow(1, i * h, h)?
                    .reshape((batch, tokens, heads, head))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            if let Some(bias) = &bias {
                scores = scores.broadcast_add(bias)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((rows, h))?;
            let attended = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context)? + &x)?)?;
            let inner = layer
                .intermediate
                .forward(&attended)?
                .apply_op1_no_bwd(&GeluErf)?;
            x = layer
                .output_norm
                .forward(&(layer.output.forward(&inner)? + &attended)?)?;
        }
        x.reshape((batch, tokens, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised GELU is the erf GELU (computed in f64) to within 2e-6, relative above 1:
    /// about one f32 rounding step. The tanh approximation is 1e-3 away.
    #[test]
    fn rational_gelu_matches_the_erf_gelu() {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 / 1000.0).collect();
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).expect("candle");
        let ours = t
            .apply_op1_no_bwd(&GeluErf)
            .expect("candle")
            .to_vec1::<f32>()
            .expect("candle");
        let mut worst = 0.0f64;
        for (x, got) in xs.iter().zip(&ours) {
            let x = f64::from(*x);
            let exact = 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()));
            worst = worst.max((f64::from(*got) - exact).abs() / exact.abs().max(1.0));
        }
        assert_eq!(ours.len(), 24_001);
        assert!(worst < 2e-6, "largest error {worst}");
    }
}
