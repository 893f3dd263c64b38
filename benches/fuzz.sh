#!/usr/bin/env bash
# Runs every fuzz target (crates/fuzz: each decoder that takes outside input) under libFuzzer for a fixed budget
# and records, per target, the executions, the corpus it grew and the crashes it found. Needs a nightly toolchain
# (`cargo +nightly`) and cargo-fuzz (installed from crates.io when missing). A crash stops that target's run; its
# input is left in fuzz/artifacts/<target>/ — fix it, copy the input to crates/fuzz/regressions/<target>/ (the
# stable tests replay it) and run again.
#   FUZZ_SECS=60 bash benches/fuzz.sh            # every target, 60 s each
#   FUZZ_SECS=600 bash benches/fuzz.sh onnx csv  # some targets
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECS:-60}
OUT=${FUZZ_RECORD:-target/fuzz-record.md}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
rustup toolchain list | grep -q '^nightly' || { echo "benches/fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }

# The starting corpus: every target's seeds (valid inputs of its format), written by the targets crate itself.
cargo run -q -p aidos-fuzz-targets --bin fuzz-seeds -- fuzz/seeds > target/fuzz-targets.tsv
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cut -f1 target/fuzz-targets.tsv)
fi

cd fuzz
# -s none: no sanitizer (the decoders are safe Rust; a full ASan build of tract and tokio does not fit the budget
# of a 2-core machine); -a: debug assertions, so integer overflow is a crash too.
FLAGS=(-s none -a)
cargo +nightly fuzz build "${FLAGS[@]}"

{
    echo "| target | what | seconds | executions | exec/s | corpus | crashes |"
    echo "|---|---|---|---|---|---|---|"
} > "../$OUT.tmp"
status=0
for t in "${targets[@]}"; do
    what=$(awk -F'\t' -v t="$t" '$1 == t { print $2 }' ../target/fuzz-targets.tsv)
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/run.log"
    set +e
    cargo +nightly fuzz run "${FLAGS[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
    corpus=$(ls "corpus/$t" | wc -l)
    crashes=$(ls "artifacts/$t" | grep -c -E '^(crash|leak|timeout|oom|slow-unit)-' || true)
    [[ $rc -ne 0 || $crashes -ne 0 ]] && status=1
    echo "| $t | $what | $SECS | ${execs:-?} | ${rate:-?} | $corpus | $crashes$([[ $rc -ne 0 ]] && echo " (exit $rc, see fuzz/$log)") |" >> "../$OUT.tmp"
    echo "$t: ${execs:-?} executions, $crashes crashes (exit $rc)" >&2
done
mv "../$OUT.tmp" "../$OUT"
cat "../$OUT"
exit $status
