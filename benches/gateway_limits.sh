#!/usr/bin/env bash
# Per-key limits at the gateway (issue #17): does a client over its rate limit slow down another client? One node,
# one worker, the reference MLP (one epoch) deployed as one replica; two gateways in front of it, A with per-key
# limits (--key-rate-limit-per-sec KEY_LIMIT, default 200, bursts of twice that) and B without. A calm client (its
# own inference key, 100 requests/s paced, single-sample KServe v2 JSON over one keep-alive connection) measures its
# latency alone, then beside a flooder (another key, wrk -t1 -c32, ignoring refusals) through A, then through B.
# Same run, same machine.
#
#   bash benches/gateway_limits.sh      # needs wrk (apt install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
command -v wrk >/dev/null || { echo "wrk not found: apt install wrk" >&2; exit 1; }
aidos_bin
bench_dir
SECS="${CALM_SECONDS:-10}"
KEY_LIMIT="${KEY_LIMIT:-200}"
start_aidos_node 2
export AIDOS_BLOB_DIR="$DIR/blobs"

"$AIDOS" dataset push mnist data/mnist10k --split train=8000,test=2000 >/dev/null
sed 's/^epochs = 10/epochs = 1/' examples/mnist-mlp.toml >"$DIR/mlp.toml"
"$AIDOS" train "$DIR/mlp.toml" --wait >/dev/null
"$AIDOS" serve deploy mnist-mlp:1 --name mlp --replicas 1 --cpus 500m --memory 256Mi --wait-secs 120 >/dev/null
CALM=$("$AIDOS" token create --name calm --role infer 2>/dev/null)
FLOOD=$("$AIDOS" token create --name flood --role infer 2>/dev/null)
A_HTTP="127.0.0.1:$(port)"; B_HTTP="127.0.0.1:$(port)"
"$AIDOS" serve gateway --http "$A_HTTP" --grpc "127.0.0.1:$(port)" --key-rate-limit-per-sec "$KEY_LIMIT" \
    --key-rate-limit-burst "$((KEY_LIMIT * 2))" --log-level warn >"$DIR/gw-a.log" 2>&1 &
PIDS+=($!)
"$AIDOS" serve gateway --http "$B_HTTP" --grpc "127.0.0.1:$(port)" --log-level warn >"$DIR/gw-b.log" 2>&1 &
PIDS+=($!)

python3 - "$DIR/body.json" <<'PYEOF'
import gzip, json, sys
with gzip.open("data/mnist10k/images-idx3-ubyte.gz") as f:
    px = list(f.read()[16 + 784 * 8000:16 + 784 * 8001])
json.dump({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": px}]}, open(sys.argv[1], "w"))
PYEOF
cat >"$DIR/flood.lua" <<LUAEOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $FLOOD"
wrk.body = io.open("$DIR/body.json"):read("*a")
LUAEOF
for gw in "$A_HTTP" "$B_HTTP"; do
    deadline=$((SECONDS + 60))
    until curl -sf -o /dev/null -H "Authorization: Bearer $CALM" -d @"$DIR/body.json" "http://$gw/v2/models/mlp/infer"; do
        (( SECONDS < deadline )) || { echo "$gw never answered"; cat "$DIR"/gw-*.log; exit 1; }
        sleep 0.3
    done
done

# The calm client: RATE requests/s for SECS seconds on one keep-alive connection; prints p50 and p99.
calm() { # label gateway
    python3 - "$1" "$2" "$CALM" "$DIR/body.json" "$SECS" <<'PYEOF'
import http.client, sys, time
label, addr, key, body, secs = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4], "rb").read(), float(sys.argv[5])
host, port = addr.split(":")
c = http.client.HTTPConnection(host, int(port))
hdr = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
rate, lat, bad = 100.0, [], 0
start = time.perf_counter()
n = int(secs * rate)
for i in range(n):
    due = start + i / rate
    while time.perf_counter() < due:
        time.sleep(max(0.0, due - time.perf_counter()))
    t = time.perf_counter()
    c.request("POST", "/v2/models/mlp/infer", body, hdr)
    r = c.getresponse(); r.read()
    lat.append(time.perf_counter() - t)
    bad += r.status != 200
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3
print(f"{label:<40} calm client p50 {q(0.5):6.2f} ms  p99 {q(0.99):6.2f} ms  non-200 {bad}")
PYEOF
}
flood() { # gateway: wrk for the calm client's duration (+1 s), its summary on stdout
    wrk -t1 -c32 -d"$((${SECS%.*} + 1))s" -s "$DIR/flood.lua" "http://$1/v2/models/mlp/infer" >"$DIR/wrk.out" &
    FLOOD_PID=$!
    sleep 0.5
}
flood_summary() {
    wait "$FLOOD_PID" || true
    python3 - "$DIR/wrk.out" "$1" <<'PYEOF'
import re, sys
t = open(sys.argv[1]).read()
n = int(re.search(r"(\d+) requests in ([\d.]+)s", t).group(1))
secs = float(re.search(r"requests in ([\d.]+)s", t).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
bad = int(bad.group(1)) if bad else 0
print(f"{'':<40} flooder: {(n - bad) / secs:8.0f} answered/s, {bad / secs:8.0f} refused/s ({sys.argv[2]})")
PYEOF
}

echo "Per-key limits at the gateway: MNIST MLP, one replica, calm client 100 req/s, flooder wrk -t1 -c32 ($(nproc) cores, $(date -u +%F))"
calm "alone, gateway A (limits on)" "$A_HTTP"
calm "alone, gateway B (limits off)" "$B_HTTP"
flood "$A_HTTP"; calm "beside a flooder, gateway A (limits on)" "$A_HTTP"; flood_summary "limit $KEY_LIMIT/s, bursts of $((KEY_LIMIT * 2))"
flood "$B_HTTP"; calm "beside a flooder, gateway B (limits off)" "$B_HTTP"; flood_summary "no limit"
