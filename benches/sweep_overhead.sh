#!/usr/bin/env bash
# Control-plane overhead of sweeps (issue #16): 1,000 trials of a trivial `process` objective, max_concurrent = 8,
# on one scheduler node and one worker on this machine. Each trial reports its objective at step 1 (through
# `aidos report`, the SDK's report path), waits 0.3 s and reports step 2; the median pruner stops the trials
# worse than the median at step 1. Prints trials per second and, per trial:
#   start   = the trial's job submitted (right after the searcher's suggestion) -> its task started on the worker
#   stop    = the prune decision committed -> the pruned task's attempt ended on the worker
#
#   bash benches/sweep_overhead.sh            (AIDOS_BIN=target/release/aidos to skip the release build)
# TRIALS (default 1000), CONCURRENT (8).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
aidos_bin
bench_dir
TRIALS="${TRIALS:-1000}"
CONCURRENT="${CONCURRENT:-8}"
start_aidos_node 16
BIN_ABS="$(cd "$(dirname "$AIDOS")" && pwd)/$(basename "$AIDOS")"
cat >"$DIR/sweep.toml" <<TOML
name = "overhead"
[sweep]
metric = "objective"
searcher = "random"
seed = 1
max_trials = $TRIALS
max_concurrent = $CONCURRENT
[sweep.pruner]
kind = "median"
startup_trials = 5
warmup_steps = 1
[sweep.params]
x = { uniform = [-1.0, 1.0] }
[trial]
[trial.resources]
cpu = "100m"
memory = "16Mi"
[trial.process]
executable = "sh"
args = ["-c", '"\$B" report --step 1 objective=\$X && sleep 0.3 && "\$B" report --step 2 objective=\$X']
env = { X = "\${x}", B = "$BIN_ABS" }
TOML
t0=$(date +%s.%N)
ID=$("$AIDOS" sweep submit "$DIR/sweep.toml")
until "$AIDOS" -o json sweep status "$ID" | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["state"]!="RUNNING" and all(t["state"]!="RUNNING" for t in s["trials"]) else 1)'; do sleep 0.5; done
t1=$(date +%s.%N)
"$AIDOS" -o json sweep status "$ID" >"$DIR/sweep.json"
"$AIDOS" -o json job list --label "aidos.sweep=$ID" >"$DIR/jobs.json"
python3 - "$DIR/sweep.json" "$DIR/jobs.json" "$t0" "$t1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); jobs = {j["id"]: j for j in json.load(open(sys.argv[2]))["jobs"]}
wall = float(sys.argv[4]) - float(sys.argv[3])
def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
start, stop = [], []
for t in s["trials"]:
    j = jobs.get(t["job_id"]);
    if not j: continue
    a = j["tasks"][0]["attempts"][0]
    if a.get("started_at_ms"): start.append(a["started_at_ms"] - j["created_at_ms"])
    if t["state"] == "PRUNED" and a.get("finished_at_ms") and t.get("finished_at_ms"):
        stop.append(a["finished_at_ms"] - t["finished_at_ms"])
n = len(s["trials"]); pruned = sum(t["state"] == "PRUNED" for t in s["trials"])
print(f"trials {n} ({pruned} pruned), state {s['state']}, wall {wall:.1f} s, {n / wall:.1f} trials/s")
print(f"start (submitted -> task started): p50 {pct(start, .5)} ms, p99 {pct(start, .99)} ms")
print(f"stop  (prune decision -> task ended): p50 {pct(stop, .5)} ms, p99 {pct(stop, .99)} ms")
PY
