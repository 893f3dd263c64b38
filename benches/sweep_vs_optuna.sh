#!/usr/bin/env bash
# A hyperparameter sweep on MNIST, aidos against Optuna + PyTorch, in one script on this machine (issue #16): the
# search space of examples/mnist-sweep.toml (lr, batch size, dropout, MLP width or CNN channels), 24 trials of at most
# 8 epochs, TPE + successive halving (rungs at epochs 1 and 3, keep the top third), 2 trials at once on one core each.
# aidos runs one scheduler node and one 2-core worker; then benches/optuna_mnist.py runs the same study. Prints one
# JSON line per side: best test accuracy, wall seconds, epochs run of the full budget.
#
#   AIDOS_TORCH_PYTHON=/path/to/venv/bin/python bash benches/sweep_vs_optuna.sh
#
# PRUNER_MODE=stopping|promotion sets aidos' ASHA mode (default: the example's). Optuna's SuccessiveHalvingPruner is
# the stopping variant either way (Optuna has no pause/resume of trials).
#
# The Python needs `torch` and `optuna` (PyPI). AIDOS_BIN: the aidos binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${AIDOS_TORCH_PYTHON:-python3}"
"$PY" -c 'import torch, optuna' 2>/dev/null || { echo "no torch or optuna in $PY: set AIDOS_TORCH_PYTHON" >&2; exit 1; }
source benches/lib.sh
aidos_bin
bench_dir
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%FT%TZ)"
start_aidos_node 2
"$AIDOS" dataset push mnist data/mnist10k --split train=8000,test=2000 >/dev/null
t0=$(date +%s.%N)
SPEC=examples/mnist-sweep.toml
if [ -n "${PRUNER_MODE:-}" ]; then
  SPEC="$DIR/mnist-sweep.toml"
  grep -v '^mode = ' examples/mnist-sweep.toml | sed "s/^\[sweep.pruner\]\$/[sweep.pruner]\nmode = \"$PRUNER_MODE\"/" >"$SPEC"
fi
grep -A5 '^\[sweep.pruner\]' "$SPEC" >&2
ID=$("$AIDOS" sweep submit "$SPEC")
until "$AIDOS" -o json sweep status "$ID" | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["state"]!="RUNNING" and all(t["state"]!="RUNNING" for t in s["trials"]) else 1)'; do sleep 1; done
t1=$(date +%s.%N)
"$AIDOS" sweep status "$ID" >&2
"$AIDOS" -o json sweep status "$ID" >"$DIR/sweep.json"
"$AIDOS" -o json model show "mnist-sweep@best-$ID" >"$DIR/model.json"
python3 - "$DIR/sweep.json" "$DIR/model.json" "$t0" "$t1" <<'PY'
import json, sys
s, m = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
b = s["trials"][s["best_trial"]]
print(json.dumps({
    "side": "aidos", "best": m["metrics"].get("test_accuracy"), "best_val": b["value"], "params": b["params"],
    "wall_s": round(float(sys.argv[4]) - float(sys.argv[3]), 1),
    "pruned": sum(t["state"] == "PRUNED" for t in s["trials"]),
    "epochs_run": s["resource_used"], "epochs_full": s["resource_full"],
}))
PY
"$PY" benches/optuna_mnist.py
