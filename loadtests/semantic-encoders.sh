#!/usr/bin/env bash
# The transformer and the static encoder side by side, in one run: accuracy on the validation
# suites (each encoder with its calibrated default threshold and margin), then the in-process
# benchmark (loadtests/semantic_bench.rs) once per encoder: decision latency pinned to one core
# with one candle thread, cache-miss decisions per second on two cores at concurrency 16, and
# the process's RSS with that encoder loaded.
#
# Usage: loadtests/semantic-encoders.sh [SUITE_FILE] [ITERATIONS]
# The static table is read from (or distilled into) $SWITCHYARD_STATIC_CACHE_DIR, default
# target/sem-cache.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:-../shared/semantic-eval/semantic_eval_val.json}
iterations=${2:-200}
export SWITCHYARD_STATIC_CACHE_DIR=${SWITCHYARD_STATIC_CACHE_DIR:-$PWD/target/sem-cache}
cargo build --release --bin switchyard --example semantic-bench >&2
bin=target/release/switchyard
bench=target/release/examples/semantic-bench
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for enc in transformer static; do
  echo
  echo "## $enc: accuracy (eval-routing, default threshold and margin)"
  "$bin" eval-routing --embedding-encoder "$enc" "$suite" 2>/dev/null
done
for enc in transformer static; do
  echo
  echo "## $enc: latency on one core (taskset -c 0, RAYON_NUM_THREADS=1)"
  RAYON_NUM_THREADS=1 taskset -c 0 "$bench" --encoder "$enc" --iterations "$iterations" \
    --cache-dir "$SWITCHYARD_STATIC_CACHE_DIR" --no-cold-start 2>/dev/null \
    | grep -v -E "^\| warm-up|decisions/s"
  # The static encoder answers thousands of misses a second: give it enough texts to time.
  n=$iterations
  [ "$enc" = static ] && n=$((iterations * 50))
  echo "## $enc: throughput ($((n * 2)) distinct texts) and memory on two cores (taskset -c 0,1, RAYON_NUM_THREADS=1)"
  RAYON_NUM_THREADS=1 taskset -c 0,1 "$bench" --encoder "$enc" --iterations "$n" \
    --cache-dir "$SWITCHYARD_STATIC_CACHE_DIR" --no-cold-start 2>/dev/null \
    | grep -E "decisions/s|memory"
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
