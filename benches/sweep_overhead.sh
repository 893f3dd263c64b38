#!/usr/bin/env bash
# Control-plane overhead of sweeps (issue #16): 1,000 trials of a trivial `process` objective, max_concurrent = 8,
# on one scheduler node and one worker on this machine. Each trial reports its objective at step 1 (through
# `aidos report`, the SDK's report path), waits 0.3 s and reports step 2; the median pruner stops the trials
# worse than the median at step 1. Prints trials per second and, per trial:
#   start   = the trial's job submitted (right after the searcher's suggestion) -> its task started on the worker
#             (the worker's RUNNING report committed)
#   decide  = a pruned trial's last report sent (`aidos report`'s clock) -> the prune decided (the sweep round's
#             clock, as the trial records it)
#   stop    = the prune decided -> the pruned task's process ended (the worker's log); includes the commits of the
#             trial's update and of its job's cancel
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
# The worker logs each task's start and end at info (`stop` is read from its log).
NODE_LOG="${NODE_LOG:-warn,aidos_worker::runner=info}"
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
# The reports of the last 100 pruned trials (one CLI call each). Not the first ones: until the median pruner's
# startup trials completed, a trial is pruned only later, on others' results, long after its own report.
mkdir "$DIR/metrics"
python3 -c 'import json,sys; print("\n".join([t["job_id"] for t in json.load(open(sys.argv[1]))["trials"] if t["state"] == "PRUNED"][-100:]))' \
    "$DIR/sweep.json" | while read -r job; do "$AIDOS" -o json run metrics "$job" >"$DIR/metrics/$job.json"; done
python3 - "$DIR/sweep.json" "$DIR/jobs.json" "$DIR/metrics" "$DIR/w1.log" "$t0" "$t1" <<'PY'
import datetime, json, os, re, sys
s = json.load(open(sys.argv[1])); jobs = {j["id"]: j for j in json.load(open(sys.argv[2]))["jobs"]}
reported = {}
for f in os.listdir(sys.argv[3]):
    m = json.load(open(os.path.join(sys.argv[3], f)))
    times = [p["time_ms"] for p in m["metrics"] if p["name"] == "objective"]
    if times: reported[f[:-len(".json")]] = max(times)
ended = {}
for line in open(sys.argv[4]):
    m = re.match(r"(\S+?)Z?\s+INFO aidos_worker::runner: (job-\d+)/\S+ ended: ", line)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000
        ended[m.group(2)] = t
wall = float(sys.argv[6]) - float(sys.argv[5])
def pct(v, q):
    v = sorted(v); return round(v[min(len(v) - 1, int(q * len(v)))], 1) if v else float("nan")
start, decide, stop = [], [], []
for t in s["trials"]:
    j = jobs.get(t["job_id"])
    if not j: continue
    a = j["tasks"][0]["attempts"][0]
    if a.get("started_at_ms"): start.append(a["started_at_ms"] - j["created_at_ms"])
    if t["state"] == "PRUNED" and t.get("finished_at_ms"):
        if j["id"] in reported: decide.append(t["finished_at_ms"] - reported[j["id"]])
        if j["id"] in ended: stop.append(ended[j["id"]] - t["finished_at_ms"])
n = len(s["trials"]); pruned = sum(t["state"] == "PRUNED" for t in s["trials"])
print(f"trials {n} ({pruned} pruned), state {s['state']}, wall {wall:.1f} s, {n / wall:.1f} trials/s")
print(f"start  (submitted -> task started):        p50 {pct(start, .5)} ms, p99 {pct(start, .99)} ms ({len(start)} trials)")
print(f"decide (report sent -> prune decided):     p50 {pct(decide, .5)} ms, p99 {pct(decide, .99)} ms ({len(decide)} trials)")
print(f"stop   (prune decided -> process ended):   p50 {pct(stop, .5)} ms, p99 {pct(stop, .99)} ms ({len(stop)} trials)")
PY
