//! Accuracy of a two-stage decision on a labelled suite file: the static encoder decides, and a
//! prompt goes to the transformer only when the static verdict is near the threshold or near
//! ambiguity. Prints, per band, the share of prompts that would need the transformer and the
//! accuracy per class. A measurement for docs/semantic-routing.md, not a gateway feature.
//!
//! Run: `cargo run --release --example semantic-cascade -- [SUITE_FILE] [--model DIR]
//! [--cache-dir DIR]`

use std::path::PathBuf;
use switchyard::actors::embedder::DiskCache;
use switchyard::embedding::{Encoder, EncoderKind};
use switchyard::routing::semantic::eval::{self, Tally};
use switchyard::routing::semantic::scoring::{self, Aggregation, Outcome, Scoring};

fn rule(kind: EncoderKind, margin_extra: f32) -> Scoring {
    Scoring {
        aggregation: Aggregation::Centroid,
        threshold: kind.default_threshold(),
        margin: kind.default_margin() + margin_extra,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = PathBuf::from("../shared/semantic-eval/semantic_eval_val.json");
    let mut model = switchyard::embedding::test_model_dir();
    let mut cache = DiskCache::default_root();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = PathBuf::from(args.next().expect("--model DIR")),
            "--cache-dir" => cache = Some(PathBuf::from(args.next().expect("--cache-dir DIR"))),
            other => file = PathBuf::from(other),
        }
    }
    let suites = eval::load(&file).expect("suite file");
    let prepare = |kind| {
        let enc = Encoder::load(kind, &model, cache.as_deref()).expect("encoder");
        eval::prepare(&suites, |t| enc.embed(t).map_err(|e| e.to_string())).expect("prepared")
    };
    let fast = prepare(EncoderKind::Static);
    let slow = prepare(EncoderKind::Transformer);
    println!("| band | to the transformer | pooled | in-topic | deny | default |");
    println!("|---|---|---|---|---|---|");
    for band in [0.0f32, 0.02, 0.04, 0.06, 0.08, 0.10, 0.15, 0.20, 1.0] {
        let mut t = Tally::default();
        let (mut escalated, mut total) = (0usize, 0usize);
        for (f, s) in fast.iter().zip(&slow) {
            for ((qf, expect), (qs, _)) in f.cases.iter().zip(&s.cases) {
                let v = scoring::decide(&f.index, qf, rule(EncoderKind::Static, 0.0));
                let best = v.best.map_or(0.0, |b| v.scores[b]);
                let near = (best - rule(EncoderKind::Static, 0.0).threshold).abs() < band;
                let wide = scoring::decide(&f.index, qf, rule(EncoderKind::Static, band));
                let escalate = band >= 1.0 || near || wide.outcome == Outcome::Ambiguous;
                let label = if escalate {
                    escalated += 1;
                    let v = scoring::decide(&s.index, qs, rule(EncoderKind::Transformer, 0.0));
                    eval::label(&s.index, v.outcome).to_owned()
                } else {
                    eval::label(&f.index, v.outcome).to_owned()
                };
                total += 1;
                let ok = usize::from(&label == expect);
                let class = match expect.as_str() {
                    "deny" => &mut t.deny,
                    "default" => &mut t.default,
                    _ => &mut t.topic,
                };
                class.0 += ok;
                class.1 += 1;
            }
        }
        let pct = |(c, n): (usize, usize)| c as f64 * 100.0 / n.max(1) as f64;
        println!(
            "| {band:.2} | {:.1}% | {:.1} | {:.1} | {:.1} | {:.1} |",
            escalated as f64 * 100.0 / total.max(1) as f64,
            pct((t.correct(), t.total())),
            pct(t.topic),
            pct(t.deny),
            pct(t.default)
        );
    }
}
