//! Embeds a file of sentences with the transformer (f32), for `loadtests/tokenlearn.py fit`.
//!
//! Usage: `embed-corpus MODEL_DIR SENTENCES.txt OUT.f32 [LIMIT]`: the first LIMIT lines (all by
//! default), each a sentence, embedded as the gateway embeds a prompt (word pieces truncated at
//! 256, mean pooling, L2 norm); OUT gets 384 little-endian f32 a line, in the file's order.
//! Texts are batched by length so that padding stays short. Progress goes to stderr.

use std::io::Write;
use std::path::Path;
use switchyard::embedding::{Embedder, Precision};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, input, output, rest @ ..] = args.as_slice() else {
        eprintln!("usage: embed-corpus MODEL_DIR SENTENCES.txt OUT.f32 [LIMIT]");
        std::process::exit(2);
    };
    let limit = rest
        .first()
        .map_or(usize::MAX, |s| s.parse().expect("LIMIT is a count"));
    let text = std::fs::read_to_string(input).expect("reading the sentences");
    let lines: Vec<&str> = text.lines().take(limit).collect();
    let embedder = Embedder::load_dir_with(Path::new(dir), Precision::F32).expect("the model");
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by_key(|i| lines[*i].len());
    let mut vectors = vec![Vec::new(); lines.len()];
    let started = std::time::Instant::now();
    for (n, chunk) in order.chunks(256).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|i| lines[*i]).collect();
        for (i, v) in chunk.iter().zip(embedder.embed(&texts).expect("embedding")) {
            vectors[*i] = v;
        }
        if n % 20 == 19 {
            eprintln!(
                "{} of {} in {:.0} s",
                (n + 1) * 256,
                lines.len(),
                started.elapsed().as_secs_f32()
            );
        }
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(output).expect("the output"));
    for x in vectors.iter().flatten() {
        out.write_all(&x.to_le_bytes()).expect("writing");
    }
    out.flush().expect("writing");
}
