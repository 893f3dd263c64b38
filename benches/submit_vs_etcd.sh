#!/usr/bin/env bash
# Single durable writes at 256 concurrent clients: a fresh 3-node aidos cluster (`aidos bench submit`: one job per
# Submit RPC, each client its own connection) side by side with a fresh 3-member etcd (Debian etcd-server) doing
# 256-byte puts through its native gRPC API in the same shape (benches/etcd_put.rs). Same machine, same loopback,
# same run; the two run one after the other so they never share the cores. Both acknowledge a write only once it
# is fsynced on a quorum.
#
#   bash benches/submit_vs_etcd.sh          (builds the release binary and the etcd client; AIDOS_BIN=path skips
#   WRITES=20000 CLIENTS=256 ...             the aidos build)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd not installed (apt-get install etcd-server)"; exit 1; }
source benches/lib.sh
aidos_bin
cargo build --release --bench etcd_put >/dev/null
ETCD_PUT="$(ls -t target/release/deps/etcd_put-* | grep -v '\.d$' | head -n1)"
WRITES=${WRITES:-20000}
CLIENTS=${CLIENTS:-256}
bench_dir

echo "== aidos: $WRITES single submissions, $CLIENTS concurrent clients (3 nodes)"
start_aidos_cluster
"$AIDOS" bench submit --jobs "$WRITES" --concurrency "$CLIENTS"
for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
PIDS=()

echo; echo "== etcd $(etcd --version | head -n1 | awk '{print $3}'): $WRITES puts of 256 B, $CLIENTS concurrent clients (3 members)"
E1=$(port); E2=$(port); E3=$(port); Q1=$(port); Q2=$(port); Q3=$(port)
CLUSTER="e1=http://127.0.0.1:$Q1,e2=http://127.0.0.1:$Q2,e3=http://127.0.0.1:$Q3"
for i in 1 2 3; do
    c=E$i; q=Q$i
    etcd --name e$i --data-dir "$DIR/etcd$i" --listen-client-urls "http://127.0.0.1:${!c}" \
        --advertise-client-urls "http://127.0.0.1:${!c}" --listen-peer-urls "http://127.0.0.1:${!q}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${!q}" --initial-cluster "$CLUSTER" \
        --initial-cluster-state new --initial-cluster-token aidos-bench --log-level error >"$DIR/etcd$i.log" 2>&1 &
    PIDS+=($!); disown $!
done
deadline=$((SECONDS + 60))
until etcdctl --endpoints "127.0.0.1:$E1" put warmup x >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { echo "etcd did not start"; cat "$DIR"/etcd*.log; exit 1; }
    sleep 0.3
done
ALL="127.0.0.1:$E1,127.0.0.1:$E2,127.0.0.1:$E3"
# Clients spread over the members (etcd's own benchmark does this; followers forward to the leader) ...
ETCD_ENDPOINTS="$ALL" ETCD_PUTS="$WRITES" ETCD_CONCURRENCY="$CLIENTS" ETCD_VALUE_BYTES=256 "$ETCD_PUT"
# ... and every client on the leader, as aidos's leader-following client does.
ETCD_LEADER=$(etcdctl --endpoints "$ALL" endpoint status -w json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]:
        print(e["Endpoint"])')
ETCD_ENDPOINTS="$ETCD_LEADER" ETCD_PUTS="$WRITES" ETCD_CONCURRENCY="$CLIENTS" ETCD_VALUE_BYTES=256 "$ETCD_PUT"
