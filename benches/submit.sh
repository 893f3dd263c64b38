#!/usr/bin/env bash
# End-to-end submission benchmark: a 3-node scheduler cluster on loopback (fsync on: every acknowledged
# submission is on disk on a quorum), then `aidos bench submit` in three shapes:
#   1. client batching (SubmitBatch, 500 per RPC): durable submissions per second
#   2. single submissions from many clients: the leader's group commit batches them into Raft entries
#   3. open loop at 1,000 submissions/s: p50/p99 latency at a fixed load
# (benches/submit_vs_etcd.sh compares single submissions with a 3-member etcd.)
#
#   bash benches/submit.sh            (builds the release binary first; AIDOS_BIN=path skips that)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
aidos_bin
bench_dir
start_aidos_cluster
"$AIDOS" cluster status

echo; echo "== 1. client batching: 100,000 jobs, 8 clients, 500 per SubmitBatch"
"$AIDOS" bench submit --jobs 100000 --concurrency 8 --batch 500
echo; echo "== 2. single submissions: 20,000 jobs, 64 concurrent clients (server-side group commit)"
"$AIDOS" bench submit --jobs 20000 --concurrency 64
echo; echo "== 3. open loop: 10,000 single submissions at 1,000/s, 32 clients"
"$AIDOS" bench submit --jobs 10000 --concurrency 32 --rate 1000

