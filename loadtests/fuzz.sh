#!/usr/bin/env bash
# Runs every fuzz target (the randomized tests built on src/fuzz.rs) for a set time each, with
# a fresh random seed per run. A failure prints the seed: replay it with
#   SWITCHYARD_FUZZ_SEED=<seed> cargo test --release --lib <test name>
# and turn the input into a regression test.
#
# Usage: loadtests/fuzz.sh [SECONDS_PER_TARGET]   (default 600, the bar in issue 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
targets=(
    "api::tests::mutated_bodies_never_panic_and_accepted_ones_rewrite_cleanly"
    "api::stream::tests::any_split_relays_the_same_events_and_garbage_never_panics"
    "providers::openai::tests::first_event_errors_are_found_in_every_shape_and_garbage_never_panics"
    "error::tests::account_ids_are_redacted_and_nothing_else_changes"
    "api::codec::tests::mutated_bodies_never_panic_in_either_codec"
    "providers::gemini::stream::tests::random_splits_give_the_same_events"
    "providers::gemini::stream::tests::error_events_truncation_and_garbage_are_errors"
    "providers::gemini::tests::project_numbers_are_redacted_from_google_messages"
    "providers::bedrock::tests::the_stream_decodes_the_same_however_it_is_split"
    "providers::bedrock::tests::exceptions_truncation_and_garbage_are_errors"
)
cargo test --release --locked --lib --no-run
failed=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    echo "== $t (${secs}s)"
    start=$(date +%s)
    rc=0
    SWITCHYARD_FUZZ_SECS="$secs" cargo test --release --locked --lib -q "$t" -- --exact --nocapture \
        >"$log" 2>&1 || rc=$?
    grep -E "^fuzz |test result|panicked" "$log" || true
    echo "   ran $(( $(date +%s) - start )) s, exit $rc"
    if ((rc != 0)); then failed=$((failed + 1)); fi
done
echo "fuzz: ${#targets[@]} targets, $failed failed"
exit $((failed > 0))
