#!/usr/bin/env bash
# A control plane that runs for months: short `true` jobs pass through a 3-node cluster (fsync on) with two workers
# and retention on, window after window; after each window it prints the submission rate and latency (p50/p99) of
# that window, the jobs left in the replicated state, the leader's newest snapshot (bytes, build time) and the size
# of its redb file. Bounded means: those columns stop growing once retention catches up.
#
#   bash benches/retention.sh                    (builds the release binary first; AIDOS_BIN=path skips that)
#   JOBS=1000000 WINDOW=50000 KEEP=10000 bash benches/retention.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
aidos_bin
JOBS=${JOBS:-100000}
WINDOW=${WINDOW:-10000}
KEEP=${KEEP:-5000}
bench_dir
NODE_LOG=warn,aidos_scheduler::store=info start_aidos_cluster --retain-finished-jobs "$KEEP" --retention-interval-secs 2
for w in a b; do
    RUST_LOG=warn "$AIDOS" worker --data-dir "$DIR/w$w" --id "w$w" --cpus 64 --memory 64Gi --blob-dir "$DIR/blobs" \
        >"$DIR/w$w.log" 2>&1 &
    PIDS+=($!)
done
echo "3 nodes (leader $LEADER), 2 workers; $JOBS jobs in windows of $WINDOW; retention keeps $KEEP finished jobs"
printf '%8s %10s %9s %9s %8s %12s %14s %13s %12s\n' jobs "submit/s" "p50 ms" "p99 ms" "ran/s" "in state" "snapshot B" "snapshot ms" "redb MB"
done_jobs=0
while (( done_jobs < JOBS )); do
    started=$(date +%s.%N)
    out=$("$AIDOS" -o json bench submit --jobs "$WINDOW" --concurrency 32)
    done_jobs=$((done_jobs + WINDOW))
    # Let the window's jobs run (the backlog drains before the next window), bounded.
    deadline=$((SECONDS + 600))
    while (( $("$AIDOS" -o json job list --state pending,running --limit 100 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["jobs"]))') > 0 )); do
        (( SECONDS < deadline )) || { echo "backlog did not drain in 600 s"; exit 1; }
        sleep 1
    done
    ran=$(python3 -c "import sys; print(f'{$WINDOW / ($(date +%s.%N) - $started):.0f}')")
    sleep 3 # one retention round (2 s interval) after the last job finished
    in_state=$("$AIDOS" -o json job list --limit 0 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["jobs"]))')
    snap=$(grep 'built a snapshot' "$DIR/n$LEADER.log" | tail -n1)
    bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$snap"); millis=$(sed -n 's/.*millis=\([0-9]*\).*/\1/p' <<<"$snap")
    redb=$(du -m "$DIR/n$LEADER"/*.redb 2>/dev/null | awk '{s+=$1} END {print s+0}')
    python3 - "$out" "$done_jobs" "$in_state" "${bytes:--}" "${millis:--}" "$redb" "$ran" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
print(f"{int(sys.argv[2]):>8} {r['submissions_per_sec']:>10.0f} {r['latency_ms']['p50']:>9.1f} {r['latency_ms']['p99']:>9.1f} "
      f"{sys.argv[7]:>8} {int(sys.argv[3]):>12} {sys.argv[4]:>14} {sys.argv[5]:>13} {sys.argv[6]:>12}", flush=True)
EOF
done
