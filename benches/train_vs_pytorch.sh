#!/usr/bin/env bash
# Single-worker training throughput, aidos against PyTorch, side by side in one run on this machine (issue #15):
# the reference MLP and CNN, batch 64, Adam, 2 threads, the same data; ROUNDS rounds, each running aidos' bench
# (`crates/train/benches/train_throughput.rs`) and then `benches/pytorch_reference.py`, so both sides see the same
# machine state. Prints every round and the ratio per round.
#
#   AIDOS_TORCH_PYTHON=/path/to/venv/bin/python bash benches/train_vs_pytorch.sh
#
# The Python must have `torch` (the PyPI wheel; it runs on the CPU). ROUNDS (default 3), RAYON_NUM_THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${AIDOS_TORCH_PYTHON:-python3}"
ROUNDS="${ROUNDS:-3}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
"$PY" -c 'import torch' 2>/dev/null || { echo "no torch in $PY: set AIDOS_TORCH_PYTHON" >&2; exit 1; }
cargo bench -p aidos-train --bench train_throughput --no-run -q 2>/dev/null
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $("$PY" -c 'import torch; print(torch.__version__)'), $RAYON_NUM_THREADS threads"
printf '%-6s %-6s %12s %12s %8s\n' round model aidos pytorch ratio
for r in $(seq 1 "$ROUNDS"); do
  a=$(cargo bench -q -p aidos-train --bench train_throughput 2>/dev/null)
  p=$("$PY" benches/pytorch_reference.py)
  for m in mlp cnn; do
    av=$(awk -v m="$m" '$1 == m {print $5}' <<<"$a")
    pv=$(awk -v m="$m" '$1 == m {print $5}' <<<"$p")
    printf '%-6s %-6s %12s %12s %8s\n' "$r" "$m" "$av" "$pv" "$(awk -v a="$av" -v p="$pv" 'BEGIN {printf "%.2fx", a / p}')"
  done
done
