#!/usr/bin/env bash
# End-to-end submission benchmark: a 3-node scheduler cluster on loopback (fsync on: every acknowledged
# submission is on disk on a quorum), then `aidos bench submit` in three shapes:
#   1. client batching (SubmitBatch, 500 per RPC): durable submissions per second
#   2. single submissions from many clients: the leader's group commit batches them into Raft entries
#   3. open loop at 1,000 submissions/s: p50/p99 latency at a fixed load
#
#   bash benches/submit.sh            (builds the release binary first; AIDOS_BIN=path skips that)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${AIDOS_BIN:-}" ]]; then AIDOS="$AIDOS_BIN"; else cargo build --release --bin aidos; AIDOS=target/release/aidos; fi

DIR="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port)
PEERS="1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3"
for i in 1 2 3; do
    p=P$i
    RUST_LOG=warn "$AIDOS" server --id $i --listen "127.0.0.1:${!p}" --peers "$PEERS" --data-dir "$DIR/n$i" >"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
done
export AIDOS_SCHEDULER="127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3"
deadline=$((SECONDS + 60))
until "$AIDOS" cluster status 2>/dev/null | grep -q '^leader: *[1-3]'; do
    (( SECONDS < deadline )) || { echo "no leader"; cat "$DIR"/n*.log; exit 1; }
    sleep 0.3
done
"$AIDOS" cluster status

echo; echo "== 1. client batching: 100,000 jobs, 8 clients, 500 per SubmitBatch"
"$AIDOS" bench submit --jobs 100000 --concurrency 8 --batch 500
echo; echo "== 2. single submissions: 20,000 jobs, 64 concurrent clients (server-side group commit)"
"$AIDOS" bench submit --jobs 20000 --concurrency 64
echo; echo "== 3. open loop: 10,000 single submissions at 1,000/s, 32 clients"
"$AIDOS" bench submit --jobs 10000 --concurrency 32 --rate 1000
